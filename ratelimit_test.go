package m2mauth_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// countingStore counts lookups, to show that locked-out requests never
// reach the store.
type countingStore struct {
	m2mauth.ClientStore
	n atomic.Int64
}

func (c *countingStore) Client(ctx context.Context, id string) (*m2mauth.Client, error) {
	c.n.Add(1)
	return c.ClientStore.Client(ctx, id)
}

// limited is a token handler over the standard fixture's clients with a
// counting store and the default limiter on the fixture's clock.
func newLimited(t testing.TB, edit ...func(*m2mauth.TokenHandlerConfig)) (*fixture, *countingStore) {
	t.Helper()
	f := newFixture(t)
	cs := &countingStore{ClientStore: f.store}
	cfg := m2mauth.TokenHandlerConfig{
		Issuer: testIssuer, DefaultAudience: testAudience,
		Auditor: m2mauth.AuditorFunc(f.audit), Now: f.clock,
	}
	for _, e := range edit {
		e(&cfg)
	}
	var err error
	f.handler, err = m2mauth.NewTokenHandler(cs, f.keys, cfg)
	require.NoError(t, err)
	return f, cs
}

// try sends one token request for id/secret from remote and returns the
// status and Retry-After.
func (f *fixture) try(t testing.TB, id, secret, remote string, headers ...string) (int, string) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader("grant_type=client_credentials"))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Authorization", basic(id, secret))
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Add(headers[i], headers[i+1])
	}
	r.RemoteAddr = remote
	w := httptest.NewRecorder()
	f.handler.ServeHTTP(w, r)
	if w.Code == http.StatusTooManyRequests {
		// RFC 6749 §5.2-shaped, uncached, and silent on whether the
		// client exists.
		assert.JSONEq(t, `{"error":"temporarily_unavailable","error_description":"too many failed authentication attempts; retry later"}`, w.Body.String())
		assert.Equal(t, "no-store", w.Header().Get("Cache-Control"))
		assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
	}
	return w.Code, w.Header().Get("Retry-After")
}

const (
	ipA = "198.51.100.7:40000"
	ipB = "203.0.113.9:40000"
)

// TestRateLimitLockout: RFC 6749 §2.3.1 requires brute-force protection.
// Five failures for a client from one address lock that pair out for 12s,
// a correct secret included; another address is unaffected.
func TestRateLimitLockout(t *testing.T) {
	f, store := newLimited(t)
	for i := range 5 {
		code, _ := f.try(t, "svc", "wrong", ipA)
		require.Equal(t, 401, code, "failure %d", i+1)
	}
	before := store.n.Load()
	code, retry := f.try(t, "svc", "wrong", ipA)
	assert.Equal(t, 429, code)
	assert.Equal(t, "12", retry)
	code, retry = f.try(t, "svc", f.secret, ipA)
	assert.Equal(t, 429, code, "locked out even with the right secret")
	assert.Equal(t, "12", retry)
	assert.Equal(t, before, store.n.Load(), "a locked-out request never reaches the store")
	assert.Equal(t, m2mauth.EventRateLimited, f.lastEvent(t).Type)
	assert.Equal(t, "svc", f.lastEvent(t).ClientID)
	assert.Equal(t, "198.51.100.7", f.lastEvent(t).RemoteIP)

	code, _ = f.try(t, "svc", f.secret, ipB)
	assert.Equal(t, 200, code, "another address with the right secret still works")

	f.advance(5 * time.Second)
	_, retry = f.try(t, "svc", f.secret, ipA)
	assert.Equal(t, "7", retry, "Retry-After counts down")

	f.advance(7 * time.Second) // one failure forgiven
	code, _ = f.try(t, "svc", f.secret, ipA)
	assert.Equal(t, 200, code)
	code, _ = f.try(t, "svc", "wrong", ipA)
	assert.Equal(t, 401, code)
	code, retry = f.try(t, "svc", "wrong", ipA)
	assert.Equal(t, 429, code)
	assert.Equal(t, "12", retry)

	f.advance(time.Minute) // bucket full again
	for range 5 {
		code, _ = f.try(t, "svc", "wrong", ipA)
		require.Equal(t, 401, code)
	}
}

// TestRateLimitSuccessIsFree: successes take nothing from any bucket.
func TestRateLimitSuccessIsFree(t *testing.T) {
	f, _ := newLimited(t)
	for range 100 {
		code, _ := f.try(t, "svc", f.secret, ipA)
		require.Equal(t, 200, code)
	}
	for i := range 5 {
		code, _ := f.try(t, "svc", "wrong", ipA)
		require.Equal(t, 401, code, "failure %d", i+1)
	}
	code, _ := f.try(t, "svc", "wrong", ipA)
	assert.Equal(t, 429, code)
}

// TestRateLimitClockStepsBack: a wall clock stepped back (by NTP, or a
// virtual machine resumed) neither refills nor drains a bucket. A client
// that never failed keeps getting tokens, and neither a client nor an
// address locked out before the step gets its guesses back.
func TestRateLimitClockStepsBack(t *testing.T) {
	tests := []struct {
		name string
		step time.Duration
	}{
		{"a second", -time.Second},
		{"past the burst's refill", -10 * time.Minute},
		{"a day", -24 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, _ := newLimited(t)
			code, _ := f.try(t, "svc", f.secret, ipA)
			require.Equal(t, 200, code)
			code, _ = f.try(t, "svc", f.secret, ipB)
			require.Equal(t, 200, code)
			for i := range 5 {
				code, _ = f.try(t, "guess", "wrong", ipB)
				require.Equal(t, 401, code, "failure %d", i+1)
			}
			f.advance(tt.step)
			code, _ = f.try(t, "svc", f.secret, ipA)
			assert.Equal(t, 200, code, "a client that never failed")
			code, _ = f.try(t, "svc", f.secret, ipB)
			assert.Equal(t, 200, code, "a client that never failed, beside a guesser")
			code, _ = f.try(t, "guess", "wrong", ipB)
			assert.Equal(t, 429, code, "a locked-out guesser stays locked out")
		})
	}
	// Through the limiter's own API, the step also falls between a
	// grant and its release, as sqlstore's limiter is tested too.
	for name, during := range map[string]bool{"the limiter's own API, between requests": false, "the limiter's own API, during a request": true} {
		t.Run(name, func(t *testing.T) {
			now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
			l, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{Now: func() time.Time { return now }})
			require.NoError(t, err)
			ctx := context.Background()
			for _, id := range []string{"svc", "svc", "other"} {
				wait, err := l.Reserve(ctx, id, "192.0.2.1")
				require.NoError(t, err)
				require.Zero(t, wait, "client %q", id)
				if during {
					now = now.Add(-time.Hour)
				}
				require.NoError(t, l.Release(ctx, id, "192.0.2.1", m2mauth.OutcomeAuthenticated))
				if !during {
					now = now.Add(-time.Hour)
				}
			}
		})
	}
}

// TestRateLimitUnknownClients: an unknown id is limited exactly like a
// known one, so the limiter cannot be used to find which ids exist; and an
// address trying many ids is stopped by its own bucket.
func TestRateLimitUnknownClients(t *testing.T) {
	known, _ := newLimited(t)
	unknown, _ := newLimited(t)
	for i := range 7 {
		k1, r1 := known.try(t, "svc", "wrong", ipA)
		k2, r2 := unknown.try(t, "no-such-client", "wrong", ipA)
		assert.Equal(t, k1, k2, "attempt %d", i+1)
		assert.Equal(t, r1, r2, "attempt %d", i+1)
	}

	f, store := newLimited(t)
	for i := range 20 {
		code, _ := f.try(t, fmt.Sprintf("guess-%d", i), "x", ipA)
		require.Equal(t, 401, code)
	}
	n := store.n.Load()
	code, retry := f.try(t, "guess-new", "x", ipA)
	assert.Equal(t, 429, code, "20 failures lock the address out")
	assert.Equal(t, "3", retry)
	code, _ = f.try(t, "svc", f.secret, ipA)
	assert.Equal(t, 429, code)
	assert.Equal(t, n, store.n.Load())
	code, _ = f.try(t, "svc", f.secret, ipB)
	assert.Equal(t, 200, code)
}

// TestRateLimitForwarded: forwarding headers name the client only when
// the peer is a trusted proxy, and only the one header the operator named
// is read.
func TestRateLimitForwarded(t *testing.T) {
	proxy := "10.0.0.5:5555"
	tenNet := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	xff, fwd := m2mauth.HeaderXForwardedFor, m2mauth.HeaderForwarded
	tests := []struct {
		name    string
		trusted []netip.Prefix
		header  string
		headers []string
		want    string // the address the audit event records
	}{
		{"untrusted peer: header ignored", nil, "", []string{"X-Forwarded-For", "192.0.2.99"}, "10.0.0.5"},
		{"trusted proxy: X-Forwarded-For", tenNet, xff, []string{"X-Forwarded-For", "192.0.2.99"}, "192.0.2.99"},
		{"rightmost untrusted hop wins over spoofed left hops", tenNet, xff, []string{"X-Forwarded-For", "1.2.3.4, 192.0.2.99, 10.0.0.4"}, "192.0.2.99"},
		{"hops on several header lines", tenNet, xff, []string{"X-Forwarded-For", "1.2.3.4", "X-Forwarded-For", "192.0.2.98"}, "192.0.2.98"},
		{"Forwarded, RFC 7239", tenNet, fwd, []string{"Forwarded", `for="[2001:db8::17]:4711";proto=https`}, "2001:db8::17"},
		// The proxy appends to X-Forwarded-For and passes the client's
		// own Forwarded through: the proxy's view must win.
		{"client's Forwarded ignored when the proxy writes X-Forwarded-For", tenNet, xff, []string{"Forwarded", "for=192.0.2.60", "X-Forwarded-For", "192.0.2.61"}, "192.0.2.61"},
		{"client's X-Forwarded-For ignored when the proxy writes Forwarded", tenNet, fwd, []string{"Forwarded", "for=192.0.2.60", "X-Forwarded-For", "192.0.2.61"}, "192.0.2.60"},
		{"garbage hop stops the walk", tenNet, xff, []string{"X-Forwarded-For", "192.0.2.99, garbage"}, "10.0.0.5"},
		{"zone id refused", tenNet, xff, []string{"X-Forwarded-For", "fe80::1%" + strings.Repeat("z", 2000)}, "10.0.0.5"},
		{"bracketed zone id refused", tenNet, fwd, []string{"Forwarded", `for="[fe80::1%eth0]:80"`}, "10.0.0.5"},
		{"other trusted network", []netip.Prefix{netip.MustParsePrefix("172.16.0.0/12")}, xff, []string{"X-Forwarded-For", "192.0.2.99"}, "10.0.0.5"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, _ := newLimited(t, func(c *m2mauth.TokenHandlerConfig) {
				c.TrustedProxies, c.ForwardedHeader, c.AllowInsecureHTTP = tc.trusted, tc.header, true
			})
			code, _ := f.try(t, "svc", f.secret, proxy, tc.headers...)
			require.Equal(t, 200, code)
			assert.Equal(t, tc.want, f.lastEvent(t).RemoteIP)
		})
	}

	// Behind a trusted proxy, each forwarded client has its own bucket.
	f, _ := newLimited(t, func(c *m2mauth.TokenHandlerConfig) {
		c.TrustedProxies, c.ForwardedHeader, c.AllowInsecureHTTP = tenNet, xff, true
	})
	for range 5 {
		code, _ := f.try(t, "svc", "wrong", proxy, "X-Forwarded-For", "192.0.2.1")
		require.Equal(t, 401, code)
	}
	code, _ := f.try(t, "svc", f.secret, proxy, "X-Forwarded-For", "192.0.2.1")
	assert.Equal(t, 429, code)
	code, _ = f.try(t, "svc", f.secret, proxy, "X-Forwarded-For", "192.0.2.2")
	assert.Equal(t, 200, code)

	// A spoofed Forwarded header behind a proxy that writes
	// X-Forwarded-For does not buy a fresh bucket either.
	for i := range 5 {
		code, _ := f.try(t, "svc", f.secret+"x", proxy, "Forwarded", fmt.Sprintf("for=198.51.100.%d", i), "X-Forwarded-For", "192.0.2.3")
		require.Equal(t, 401, code)
	}
	code, _ = f.try(t, "svc", f.secret, proxy, "Forwarded", "for=198.51.100.99", "X-Forwarded-For", "192.0.2.3")
	assert.Equal(t, 429, code)

	// Without trust, a spoofed header does not buy a fresh bucket.
	g, _ := newLimited(t, func(c *m2mauth.TokenHandlerConfig) { c.AllowInsecureHTTP = true })
	for i := range 5 {
		code, _ := g.try(t, "svc", "wrong", ipA, "X-Forwarded-For", fmt.Sprintf("192.0.2.%d", i))
		require.Equal(t, 401, code)
	}
	code, _ = g.try(t, "svc", g.secret, ipA, "X-Forwarded-For", "192.0.2.200")
	assert.Equal(t, 429, code)
}

// TestRateLimitIPv6Prefix: addresses in one /64 share buckets.
func TestRateLimitIPv6Prefix(t *testing.T) {
	f, _ := newLimited(t)
	for i := range 5 {
		code, _ := f.try(t, "svc", "wrong", fmt.Sprintf("[2001:db8:1:2::%x]:443", i+1))
		require.Equal(t, 401, code)
	}
	code, _ := f.try(t, "svc", f.secret, "[2001:db8:1:2:ffff::1]:443")
	assert.Equal(t, 429, code, "same /64")
	code, _ = f.try(t, "svc", f.secret, "[2001:db8:1:3::1]:443")
	assert.Equal(t, 200, code, "next /64")

	g, _ := newLimited(t, func(c *m2mauth.TokenHandlerConfig) { c.IPv6Prefix = 128 })
	for i := range 5 {
		code, _ := g.try(t, "svc", "wrong", fmt.Sprintf("[2001:db8:1:2::%x]:443", i+1))
		require.Equal(t, 401, code)
	}
	code, _ = g.try(t, "svc", g.secret, "[2001:db8:1:2::99]:443")
	assert.Equal(t, 200, code, "with /128 each address stands alone")
}

// TestRateLimiterBoundedMemory: a million distinct (client, address)
// failures leave at most MaxKeys buckets and a bounded heap.
func TestRateLimiterBoundedMemory(t *testing.T) {
	// Ten times MaxKeys shows the bound as well as a million would.
	n := 100_000
	if raceEnabled || testing.Short() {
		n = 30_000
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const maxKeys = 10_000
	l, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{MaxKeys: maxKeys, Now: func() time.Time { return now }})
	require.NoError(t, err)
	ctx := t.Context()
	for i := range n {
		id := fmt.Sprintf("client-%d", i)
		ip := fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		if wait, err := l.Reserve(ctx, id, ip); err != nil || wait > 0 {
			require.NoError(t, err)
			require.Zero(t, wait)
		}
		require.NoError(t, l.Release(ctx, id, ip, m2mauth.OutcomeFailed))
		if i%50_000 == 0 {
			require.LessOrEqual(t, l.Len(), maxKeys)
		}
	}
	assert.LessOrEqual(t, l.Len(), maxKeys)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	runtime.KeepAlive(l)
	// 10,000 buckets of ~150 bytes each plus their keys: a few MB.
	assert.Less(t, ms.HeapAlloc, uint64(32<<20))
	t.Logf("%d failures: %d buckets, heap in use %d KiB", n, l.Len(), ms.HeapAlloc>>10)
}

// TestRateLimitConcurrent: many goroutines fail and succeed at once; every
// request is answered, the right secret from a fresh address always works,
// and the failures that reached the store stay within the bucket size
// plus the requests in flight.
func TestRateLimitConcurrent(t *testing.T) {
	f, store := newLimited(t)
	const workers, each = 8, 50
	var wg sync.WaitGroup
	var got401, got429, got200, other atomic.Int64
	for w := range workers {
		wg.Add(2)
		go func() { // attacker: one address, wrong secrets
			defer wg.Done()
			for range each {
				switch code, _ := f.try(t, "svc", "wrong", ipA); code {
				case 401:
					got401.Add(1)
				case 429:
					got429.Add(1)
				default:
					other.Add(1)
				}
			}
		}()
		go func() { // the real client, from its own addresses
			defer wg.Done()
			for i := range each {
				if code, _ := f.try(t, "svc", f.secret, fmt.Sprintf("192.0.2.%d:1", w*each+i)); code == 200 {
					got200.Add(1)
				} else {
					other.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	assert.Zero(t, other.Load())
	assert.Equal(t, int64(workers*each), got200.Load())
	assert.Equal(t, int64(workers*each), got401.Load()+got429.Load(), "every attack request answered")
	assert.Equal(t, int64(5), got401.Load(), "exactly the burst is verified, however many are in flight")
	assert.Equal(t, got401.Load()+got200.Load(), store.n.Load(), "only non-limited requests reach the store")
}

func TestNewRateLimiterValidates(t *testing.T) {
	for _, cfg := range []m2mauth.RateLimiterConfig{
		{ClientIPBurst: -1}, {IPBurst: -1}, {MaxKeys: -1}, {ClientIPEvery: time.Nanosecond}, {IPEvery: -time.Second},
	} {
		_, err := m2mauth.NewRateLimiter(cfg)
		assert.Error(t, err, "%+v", cfg)
	}
	_, err := m2mauth.NewTokenHandler(newFixture(t).store, newFixture(t).keys, m2mauth.TokenHandlerConfig{Issuer: "x", IPv6Prefix: 129})
	assert.Error(t, err)
	_, err = m2mauth.NewTokenHandler(newFixture(t).store, newFixture(t).keys, m2mauth.TokenHandlerConfig{Issuer: "x", TrustedProxies: []netip.Prefix{{}}, ForwardedHeader: "Forwarded"})
	assert.Error(t, err)
	_, err = m2mauth.NewTokenHandler(newFixture(t).store, newFixture(t).keys, m2mauth.TokenHandlerConfig{Issuer: "x", TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	assert.ErrorContains(t, err, "ForwardedHeader", "the operator must name the header the proxy writes")
	_, err = m2mauth.NewTokenHandler(newFixture(t).store, newFixture(t).keys, m2mauth.TokenHandlerConfig{Issuer: "x", TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, ForwardedHeader: "X-Real-IP"})
	assert.Error(t, err)
}

// BenchmarkRateLimiterReserve is the limiter's cost on the hot path: a
// reservation released by a successful authentication.
func BenchmarkRateLimiterReserve(b *testing.B) {
	l, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{})
	require.NoError(b, err)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if wait, _ := l.Reserve(ctx, "bench-client", "192.0.2.1"); wait != 0 {
			b.Fatal("locked out")
		}
		if err := l.Release(ctx, "bench-client", "192.0.2.1", m2mauth.OutcomeAuthenticated); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRateLimiterLongKeys: client ids and addresses too long to be held as
// they are count like short ones, each in its own bucket.
func TestRateLimiterLongKeys(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{Now: func() time.Time { return now }})
	require.NoError(t, err)
	ctx := t.Context()
	long := strings.Repeat("c", 250)
	ids := []string{long + "a", long + "b", "short"}
	ips := []string{"192.0.2.1", strings.Repeat("2001:db8:", 20) + "/64"}
	for _, ip := range ips {
		for i := range 5 {
			wait, err := l.Reserve(ctx, ids[0], ip)
			require.NoError(t, err)
			require.Zero(t, wait, "attempt %d", i+1)
			require.NoError(t, l.Release(ctx, ids[0], ip, m2mauth.OutcomeFailed))
		}
		wait, err := l.Reserve(ctx, ids[0], ip)
		require.NoError(t, err)
		assert.Equal(t, 12*time.Second, wait, "locked out at %.20s", ip)
		for _, id := range ids[1:] {
			wait, err := l.Reserve(ctx, id, ip)
			require.NoError(t, err)
			assert.Zero(t, wait, "%.20s… is another client", id)
			require.NoError(t, l.Release(ctx, id, ip, m2mauth.OutcomeAuthenticated))
		}
	}
	assert.Equal(t, 8, l.Len(), "three pairs and an address, at each address")
}

// TestRateLimiterFullKeepsReservations: however many new keys arrive at a
// full limiter, a reservation in flight keeps its buckets, so its release
// finds them, and the limiter holds at most MaxKeys buckets besides
// those.
func TestRateLimiterFullKeepsReservations(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const maxKeys = 64
	l, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{MaxKeys: maxKeys, Now: func() time.Time { return now }})
	require.NoError(t, err)
	ctx := t.Context()
	for i := range 40 {
		wait, err := l.Reserve(ctx, "held", fmt.Sprintf("192.0.2.%d", i))
		require.NoError(t, err)
		require.Zero(t, wait)
	}
	for i := range 10_000 {
		id, ip := fmt.Sprintf("client-%d", i), fmt.Sprintf("10.0.%d.%d", i>>8&255, i&255)
		wait, err := l.Reserve(ctx, id, ip)
		require.NoError(t, err)
		require.Zero(t, wait)
		require.NoError(t, l.Release(ctx, id, ip, m2mauth.OutcomeFailed))
		require.LessOrEqual(t, l.Len(), maxKeys+80)
	}
	for i := range 40 {
		require.NoError(t, l.Release(ctx, "held", fmt.Sprintf("192.0.2.%d", i), m2mauth.OutcomeAbandoned))
	}
}

package m2mauth_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"

	"github.com/m2mauth/m2mauth"
)

// argon2Hash hashes secret with argon2id at the given memory (KiB) and
// time cost, as a hash imported from another system would be.
func argon2Hash(t testing.TB, secret string, memory, time uint32) string {
	t.Helper()
	salt := make([]byte, 16)
	_, err := rand.Read(salt)
	require.NoError(t, err)
	key := argon2.IDKey([]byte(secret), salt, time, memory, 1, 32)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=1$%s$%s", memory, time, enc.EncodeToString(salt), enc.EncodeToString(key))
}

// addClient adds a client with one secret hashed as given.
func (f *fixture) addClient(t testing.TB, id, hash string) {
	t.Helper()
	require.NoError(t, f.store.CreateClient(context.Background(), &m2mauth.Client{
		ID: id, Secrets: []m2mauth.Secret{{ID: "s1", Hash: hash}},
		Grants: map[string]m2mauth.Scopes{testAudience: {"read"}},
	}))
}

// burst sends one request per address, all released at once, and counts
// the answers by status.
func (f *fixture) burst(t *testing.T, id, secret string, addrs []string) map[int]int {
	t.Helper()
	start := make(chan struct{})
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for _, a := range addrs {
		wg.Go(func() {
			<-start
			code, _ := f.try(t, id, secret, a)
			mu.Lock()
			codes[code]++
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	return codes
}

func repeatAddr(a string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = a
	}
	return out
}

// TestSimultaneousGuesses: RFC 6749 §2.3.1 and §10.10 ask for protection
// against brute force. However many wrong guesses arrive at once, at most
// the burst (5 per client and address) have their secret verified; the
// rest are refused with 429 before the store is asked.
func TestSimultaneousGuesses(t *testing.T) {
	tests := []struct {
		name string
		hash func(t testing.TB) string
	}{
		{"salted SHA-256", func(t testing.TB) string { h, err := m2mauth.HashSecret("right"); require.NoError(t, err); return h }},
		{"argon2id", func(t testing.TB) string {
			h, err := m2mauth.HashSecretArgon2id("right")
			require.NoError(t, err)
			return h
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, store := newLimited(t, func(c *m2mauth.TokenHandlerConfig) { c.StoreTimeout = 5 * time.Minute })
			f.addClient(t, "target", tc.hash(t))
			before := store.n.Load()
			codes := f.burst(t, "target", "wrong", repeatAddr(ipA, 200))
			assert.Equal(t, map[int]int{401: 5, 429: 195}, codes)
			assert.Equal(t, int64(5), store.n.Load()-before, "only the burst reached the store")

			// An unknown id gets the same answers.
			codes = f.burst(t, "nobody", "wrong", repeatAddr(ipB, 200))
			assert.Equal(t, map[int]int{401: 5, 429: 195}, codes)
		})
	}
}

// TestSlowHashesRationed: guesses from many addresses each get their own
// bucket, so they all reach the hasher; slow hashes are verified a few at
// a time, so memory stays bounded (each verification below holds 64 MiB).
func TestSlowHashesRationed(t *testing.T) {
	n := 24
	if raceEnabled {
		n = 12
	}
	// Verifications wait their turn for as long as the test needs: on a
	// loaded machine under the race detector, a round of 64 MiB hashes
	// takes seconds.
	f, _ := newLimited(t, func(c *m2mauth.TokenHandlerConfig) { c.StoreTimeout = 5 * time.Minute })
	f.addClient(t, "imported", argon2Hash(t, "right", 64*1024, 1))
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("198.51.100.%d:1", i+1)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	codes := f.burst(t, "imported", "wrong", addrs)
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	assert.Equal(t, map[int]int{401: n}, codes)
	// HeapSys never shrinks, so it records the peak. Unrationed, n
	// verifications at once would need n*64 MiB (1.5 GiB for 24); four at
	// a time need 256 MiB, and the GC may let as much again pile up.
	// (The runtime may hand a few pages of it to other uses meanwhile, so
	// the difference can be slightly negative.)
	grown := int64(after.HeapSys) - int64(before.HeapSys)
	t.Logf("%d simultaneous argon2id (64 MiB) verifications: heap grew %d MiB", n, grown>>20)
	assert.Less(t, grown, int64(700<<20))
}

// TestNeighbourLockout: many clients share an address behind a NAT or a
// proxy. Failures for one client lock the address out for clients it has
// not seen authenticate, but not for a client that authenticated from
// there recently; and another address is unaffected.
func TestNeighbourLockout(t *testing.T) {
	f, _ := newLimited(t)
	const x, y = "198.51.100.20:1", "203.0.113.30:1"
	code, _ := f.try(t, "rotated", f.newSecret, x)
	require.Equal(t, 200, code, "B authenticates from X")
	f.addClient(t, "other", mustHash(t, "c-secret"))

	got := map[int]int{}
	for range 30 {
		code, _ := f.try(t, "svc", "wrong", x)
		got[code]++
	}
	assert.Equal(t, map[int]int{401: 5, 429: 25}, got, "A from X")

	code, _ = f.try(t, "rotated", f.newSecret, x)
	assert.Equal(t, 200, code, "B, which authenticated from X before, still gets in from X")
	code, retry := f.try(t, "other", "c-secret", x)
	assert.Equal(t, 429, code, "a client never seen from X is refused while X is locked out")
	assert.NotEmpty(t, retry)
	code, _ = f.try(t, "svc", f.secret, y)
	assert.Equal(t, 200, code, "A from another address")

	// The exemption ends KnownWindow (24h) after B's last success; by
	// then X's bucket has long refilled.
	f.advance(25 * time.Hour)
	code, _ = f.try(t, "other", "c-secret", x)
	assert.Equal(t, 200, code)
}

func mustHash(t testing.TB, secret string) string {
	t.Helper()
	h, err := m2mauth.HashSecret(secret)
	require.NoError(t, err)
	return h
}

// faultyLimiter fails on demand.
type faultyLimiter struct {
	m2mauth.Limiter
	reserveErr, releaseErr error
	released               []m2mauth.Outcome
	mu                     sync.Mutex
}

func (l *faultyLimiter) Reserve(ctx context.Context, id, ip string) (time.Duration, error) {
	if l.reserveErr != nil {
		return 0, l.reserveErr
	}
	return l.Limiter.Reserve(ctx, id, ip)
}

func (l *faultyLimiter) Release(ctx context.Context, id, ip string, o m2mauth.Outcome) error {
	l.mu.Lock()
	l.released = append(l.released, o)
	l.mu.Unlock()
	if err := l.Limiter.Release(ctx, id, ip, o); err != nil {
		return err
	}
	return l.releaseErr
}

// prefetchingLimiter is a ClientLimiter over a RateLimiter that reads
// clients from its own store, not the token handler's, or fails to.
type prefetchingLimiter struct {
	m2mauth.Limiter
	clients          m2mauth.ClientStore
	lookupErr        error
	prefetches, bare atomic.Int64
	mu               sync.Mutex
	released         []m2mauth.Outcome
}

func (l *prefetchingLimiter) Reserve(ctx context.Context, id, ip string) (time.Duration, error) {
	l.bare.Add(1)
	return l.Limiter.Reserve(ctx, id, ip)
}

func (l *prefetchingLimiter) ReserveClient(ctx context.Context, _ m2mauth.ClientStore, id, ip string) (time.Duration, *m2mauth.Client, error, error) {
	l.prefetches.Add(1)
	wait, err := l.Limiter.Reserve(ctx, id, ip)
	if err != nil || wait > 0 {
		return wait, nil, nil, err
	}
	if l.lookupErr != nil {
		return 0, nil, l.lookupErr, nil
	}
	c, lerr := l.clients.Client(ctx, id)
	return 0, c, lerr, nil
}

func (l *prefetchingLimiter) Release(ctx context.Context, id, ip string, o m2mauth.Outcome) error {
	l.mu.Lock()
	l.released = append(l.released, o)
	l.mu.Unlock()
	return l.Limiter.Release(ctx, id, ip, o)
}

// TestClientLimiterLookup: with a ClientLimiter, the token handler takes
// the client the reservation read (RFC 6749 §2.3.1: the attempt is
// reserved before anything is verified) and does not look it up again;
// an id no client can have is reserved the plain way, and a lookup's
// failure is answered as the store's own would be.
func TestClientLimiterLookup(t *testing.T) {
	tests := []struct {
		name             string
		id, secret       string
		lookupErr        error
		status           int
		code             string
		prefetches, bare int64
		outcome          m2mauth.Outcome
	}{
		{"authenticated", "svc", "", nil, 200, "", 1, 0, m2mauth.OutcomeAuthenticated},
		{"wrong secret", "svc", "wrong", nil, 401, "invalid_client", 1, 0, m2mauth.OutcomeFailed},
		{"unknown client", "nobody", "wrong", nil, 401, "invalid_client", 1, 0, m2mauth.OutcomeFailed},
		{"not found", "svc", "", fmt.Errorf("lookup: %w", m2mauth.ErrClientNotFound), 401, "invalid_client", 1, 0, m2mauth.OutcomeFailed},
		{"store down", "svc", "", errors.New("db down"), 500, "server_error", 1, 0, m2mauth.OutcomeAbandoned},
		{"malformed id", "svc\x7f", "wrong", nil, 401, "invalid_client", 0, 1, m2mauth.OutcomeFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inner, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{})
			require.NoError(t, err)
			l := &prefetchingLimiter{Limiter: inner, lookupErr: tc.lookupErr}
			f, handlerStore := newLimited(t, func(c *m2mauth.TokenHandlerConfig) { c.Limiter = l; c.Logger = discardLogger() })
			l.clients = f.store
			secret := tc.secret
			if secret == "" {
				secret = f.secret
			}
			w, resp := f.do(t, request{body: "grant_type=client_credentials", headers: auth(basic(tc.id, secret))})
			assert.Equal(t, tc.status, w.Code, w.Body.String())
			assert.Equal(t, tc.code, resp.Error)
			assert.Equal(t, tc.prefetches, l.prefetches.Load(), "ReserveClient calls")
			assert.Equal(t, tc.bare, l.bare.Load(), "Reserve calls")
			assert.Zero(t, handlerStore.n.Load(), "lookups by the handler")
			assert.Equal(t, []m2mauth.Outcome{tc.outcome}, l.released)
		})
	}
}

// TestLimiterFailsClosed: when the limiter cannot reserve or cannot record
// an outcome, the request gets a server error, never a verdict on its
// secret.
func TestLimiterFailsClosed(t *testing.T) {
	tests := []struct {
		name                   string
		reserveErr, releaseErr error
		secret                 string
		status                 int
		code                   string
		outcomes               []m2mauth.Outcome
	}{
		{"reserve fails", errors.New("db down"), nil, "wrong", 500, "server_error", nil},
		{"reserve times out", context.DeadlineExceeded, nil, "wrong", 503, "temporarily_unavailable", nil},
		{"failure not recorded", nil, errors.New("db down"), "wrong", 500, "server_error", []m2mauth.Outcome{m2mauth.OutcomeFailed}},
		{"success not recorded", nil, errors.New("db down"), "", 500, "server_error", []m2mauth.Outcome{m2mauth.OutcomeAuthenticated}},
		{"healthy: failure", nil, nil, "wrong", 401, "invalid_client", []m2mauth.Outcome{m2mauth.OutcomeFailed}},
		{"healthy: success", nil, nil, "", 200, "", []m2mauth.Outcome{m2mauth.OutcomeAuthenticated}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inner, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{})
			require.NoError(t, err)
			l := &faultyLimiter{Limiter: inner, reserveErr: tc.reserveErr, releaseErr: tc.releaseErr}
			f := newFixture(t, func(c *m2mauth.TokenHandlerConfig) { c.Limiter = l; c.Logger = discardLogger() })
			secret := tc.secret
			if secret == "" {
				secret = f.secret
			}
			w, resp := f.do(t, request{body: "grant_type=client_credentials", headers: auth(basic("svc", secret))})
			assert.Equal(t, tc.status, w.Code)
			assert.Equal(t, tc.code, resp.Error)
			assert.Equal(t, tc.status == 200, resp.AccessToken != "")
			if tc.status == 503 {
				assert.Equal(t, "1", w.Header().Get("Retry-After"))
			}
			assert.Equal(t, tc.outcomes, l.released)
		})
	}
}

// blockingStore answers only when released, or when the request's
// context ends.
type blockingStore struct {
	m2mauth.ClientStore
	entered chan struct{}
	release chan struct{}
}

func (s *blockingStore) Client(ctx context.Context, id string) (*m2mauth.Client, error) {
	s.entered <- struct{}{}
	select {
	case <-s.release:
		return s.ClientStore.Client(ctx, id)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestStoreTimeout: a stalled store is given StoreTimeout, then the
// request gets 503 with Retry-After, and the attempt is not counted as a
// failure.
func TestStoreTimeout(t *testing.T) {
	f := newFixture(t)
	bs := &blockingStore{ClientStore: f.store, entered: make(chan struct{}, 10), release: make(chan struct{})}
	h, err := m2mauth.NewTokenHandler(bs, f.keys, m2mauth.TokenHandlerConfig{
		Issuer: testIssuer, DefaultAudience: testAudience, Auditor: m2mauth.AuditorFunc(f.audit),
		Now: f.clock, StoreTimeout: 20 * time.Millisecond, Logger: discardLogger(),
	})
	require.NoError(t, err)
	f.handler = h
	for range 8 { // more than the burst: timeouts cost no attempt
		w, resp := f.do(t, request{body: "grant_type=client_credentials", headers: auth(basic("svc", f.secret))})
		require.Equal(t, 503, w.Code)
		assert.Equal(t, "temporarily_unavailable", resp.Error)
		assert.Equal(t, "1", w.Header().Get("Retry-After"))
	}
	assert.Equal(t, m2mauth.ReasonOverloaded, f.lastEvent(t).Reason)
	close(bs.release)
	w, _ := f.do(t, request{body: "grant_type=client_credentials", headers: auth(basic("svc", f.secret))})
	assert.Equal(t, 200, w.Code)
}

// TestCanceledRequest: a caller that goes away while its request waits
// for the store is not a store failure: no ERROR in the log, no
// server_error in the audit trail, but an event of its own reason; and
// the attempt costs the client no failed authentication.
func TestCanceledRequest(t *testing.T) {
	f := newFixture(t)
	bs := &blockingStore{ClientStore: f.store, entered: make(chan struct{}, 10), release: make(chan struct{})}
	var logged strings.Builder
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logged.Write(p)
	}), nil))
	h, err := m2mauth.NewTokenHandler(bs, f.keys, m2mauth.TokenHandlerConfig{
		Issuer: testIssuer, DefaultAudience: testAudience, Auditor: m2mauth.AuditorFunc(f.audit),
		Now: f.clock, StoreTimeout: time.Minute, Logger: logger,
	})
	require.NoError(t, err)
	for i := range 8 { // more than the limiter's burst
		ctx, cancel := context.WithCancel(context.Background())
		r := httptest.NewRequestWithContext(ctx, http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader("grant_type=client_credentials"))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Authorization", basic("svc", f.secret))
		done := make(chan int)
		go func() {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			done <- w.Code
		}()
		<-bs.entered
		cancel() // the caller hangs up
		assert.Equal(t, http.StatusServiceUnavailable, <-done, "request %d", i)
		e := f.lastEvent(t)
		assert.Equal(t, m2mauth.EventRequestRejected, e.Type)
		assert.Equal(t, m2mauth.ReasonCanceled, e.Reason)
		assert.Equal(t, m2mauth.CodeTemporarilyUnavailable, e.Error)
	}
	mu.Lock()
	assert.NotContains(t, logged.String(), "ERROR")
	mu.Unlock()
	close(bs.release)
	w, _ := f.do(t, request{body: "grant_type=client_credentials", headers: auth(basic("svc", f.secret))})
	assert.Equal(t, http.StatusOK, w.Code, "no failed authentication was counted")
}

// hangUpLimiter is a Limiter whose next Release hangs the caller up and
// waits a moment, as a release on a database may wait for a lock, then
// ends the reservation only if its context is still live, as a database
// would roll back a transaction whose context ended.
type hangUpLimiter struct {
	m2mauth.Limiter
	hangUp atomic.Pointer[context.CancelFunc]
}

func (l *hangUpLimiter) Release(ctx context.Context, clientID, ip string, o m2mauth.Outcome) error {
	if cancel := l.hangUp.Swap(nil); cancel != nil {
		(*cancel)()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return l.Limiter.Release(ctx, clientID, ip, o)
}

// TestCanceledDuringRelease: a caller that hangs up while the limiter
// ends its reservation leaves no reservation in flight and no attempt
// uncounted. Its secret was checked, so it is answered, audited and
// counted as the check found; the client, back with its secret, is not
// locked out; a guesser who hangs up this way still runs out of guesses.
func TestCanceledDuringRelease(t *testing.T) {
	tests := []struct {
		name   string
		secret func(f *fixture) string
		codes  []int // of the hang-ups, in turn
		after  int   // the status of the client with its secret, afterwards
	}{
		{"the right secret", func(f *fixture) string { return f.secret },
			[]int{200, 200, 200, 200, 200, 200, 200, 200}, http.StatusOK},
		{"a wrong secret", func(*fixture) string { return "wrong" },
			[]int{401, 401, 401, 401, 401, 429, 429, 429}, http.StatusTooManyRequests},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			rl, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{Now: f.clock})
			require.NoError(t, err)
			l := &hangUpLimiter{Limiter: rl}
			var logged syncBuffer
			h, err := m2mauth.NewTokenHandler(f.store, f.keys, m2mauth.TokenHandlerConfig{
				Issuer: testIssuer, DefaultAudience: testAudience, Auditor: m2mauth.AuditorFunc(f.audit),
				Now: f.clock, StoreTimeout: time.Second, Limiter: l,
				Logger: slog.New(slog.NewTextHandler(&logged, nil)),
			})
			require.NoError(t, err)
			for i, want := range tt.codes {
				ctx, cancel := context.WithCancel(context.Background())
				l.hangUp.Store(&cancel)
				r := httptest.NewRequestWithContext(ctx, http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader("grant_type=client_credentials"))
				r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				r.Header.Set("Authorization", basic("svc", tt.secret(f)))
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				require.Equal(t, want, w.Code, "hang-up %d: %s", i+1, w.Body)
				require.NotEqual(t, m2mauth.CodeServerError, f.lastEvent(t).Error)
				l.hangUp.Store(nil)
			}
			require.NotContains(t, logged.String(), "ERROR")
			r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader("grant_type=client_credentials"))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			r.Header.Set("Authorization", basic("svc", f.secret))
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			require.Equal(t, tt.after, w.Code, "%s", w.Body)
		})
	}
}

// liveReleaseLimiter is a Limiter that, as one on a database would,
// cannot end a reservation on a context that has ended.
type liveReleaseLimiter struct{ m2mauth.Limiter }

func (l liveReleaseLimiter) Release(ctx context.Context, clientID, ip string, o m2mauth.Outcome) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return l.Limiter.Release(ctx, clientID, ip, o)
}

// slowOnceStore is a ClientStore whose next lookup takes wait, heedless
// of its context's deadline.
type slowOnceStore struct {
	m2mauth.ClientStore
	wait atomic.Int64
}

func (s *slowOnceStore) Client(ctx context.Context, id string) (*m2mauth.Client, error) {
	time.Sleep(time.Duration(s.wait.Swap(0)))
	return s.ClientStore.Client(ctx, id)
}

// TestReleaseAfterSlowAttempt: an attempt that ran past its StoreTimeout
// (a store that does not heed it, secrets slow to check) still ends its
// reservation: the release has a StoreTimeout of its own from then. So
// the client is not locked out by the attempts it made.
func TestReleaseAfterSlowAttempt(t *testing.T) {
	f := newFixture(t)
	rl, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{Now: f.clock})
	require.NoError(t, err)
	store := &slowOnceStore{ClientStore: f.store}
	h, err := m2mauth.NewTokenHandler(store, f.keys, m2mauth.TokenHandlerConfig{
		Issuer: testIssuer, DefaultAudience: testAudience, Auditor: m2mauth.AuditorFunc(f.audit),
		Now: f.clock, StoreTimeout: 50 * time.Millisecond, Limiter: liveReleaseLimiter{rl},
		Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	for i := range 6 { // more than the burst of a client and address
		store.wait.Store(int64(150 * time.Millisecond)) // three StoreTimeouts
		w := httptest.NewRecorder()
		h.ServeHTTP(w, tokenPost(basic("svc", f.secret)))
		require.NotEqual(t, http.StatusTooManyRequests, w.Code, "attempt %d: %s", i+1, w.Body)
		require.NotEqual(t, m2mauth.CodeServerError, f.lastEvent(t).Error, "attempt %d", i+1)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, tokenPost(basic("svc", f.secret)))
	require.Equal(t, http.StatusOK, w.Code, "%s", w.Body)
}

// tokenPost is a token request with the given Authorization header.
func tokenPost(authorization string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader("grant_type=client_credentials"))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Authorization", authorization)
	return r
}

// TestCanceledAfterRefusal: a caller that hangs up once its secret has
// been checked is answered, audited and counted as the check found: a
// wrong secret is a failed authentication (so hanging up hides no guess
// from the audit trail and the alerts), and a rate-limited request stays
// rate limited. Only a wait that the hang-up interrupted is "canceled".
func TestCanceledAfterRefusal(t *testing.T) {
	f := newFixture(t)
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	try := func(secret string) (int, m2mauth.AuditEvent) {
		r := httptest.NewRequestWithContext(gone, http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader("grant_type=client_credentials"))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Authorization", basic("svc", secret))
		w := httptest.NewRecorder()
		f.handler.ServeHTTP(w, r)
		return w.Code, f.lastEvent(t)
	}
	for i := range 5 { // the limiter's burst for a client and address
		code, e := try("wrong")
		assert.Equal(t, http.StatusUnauthorized, code, "guess %d", i+1)
		assert.Equal(t, m2mauth.EventAuthFailed, e.Type, "guess %d", i+1)
		assert.Equal(t, m2mauth.ReasonBadSecret, e.Reason, "guess %d", i+1)
	}
	code, e := try(f.secret)
	assert.Equal(t, http.StatusTooManyRequests, code, "the five guesses were counted")
	assert.Equal(t, m2mauth.EventRateLimited, e.Type)
}

// writerFunc adapts a function to io.Writer.
type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestMaxConcurrentRequests: past MaxConcurrentRequests, a request waits
// up to StoreTimeout for a turn, then gets 503 with Retry-After.
func TestMaxConcurrentRequests(t *testing.T) {
	f := newFixture(t)
	bs := &blockingStore{ClientStore: f.store, entered: make(chan struct{}, 10), release: make(chan struct{})}
	h, err := m2mauth.NewTokenHandler(bs, f.keys, m2mauth.TokenHandlerConfig{
		Issuer: testIssuer, DefaultAudience: testAudience, Auditor: m2mauth.AuditorFunc(f.audit),
		Now: f.clock, StoreTimeout: time.Minute, MaxConcurrentRequests: 1, Logger: discardLogger(),
	})
	require.NoError(t, err)
	first := make(chan int)
	go func() {
		r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader("grant_type=client_credentials"))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Authorization", basic("svc", f.secret))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		first <- w.Code
	}()
	<-bs.entered // the first request holds the only turn

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	r := httptest.NewRequestWithContext(ctx, http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader("grant_type=client_credentials"))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Authorization", basic("svc", f.secret))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	assert.Equal(t, 503, w.Code)
	assert.Equal(t, "1", w.Header().Get("Retry-After"))
	assert.Contains(t, w.Body.String(), `"temporarily_unavailable"`)

	close(bs.release)
	assert.Equal(t, 200, <-first)
}

// stalledBody is a request body that gives its first bytes, then waits
// until release is closed before it ends; reading tells that the handler
// has begun to read it.
type stalledBody struct {
	first            io.Reader
	reading, release chan struct{}
	once             sync.Once
}

func (b *stalledBody) Read(p []byte) (int, error) {
	if n, _ := b.first.Read(p); n > 0 {
		return n, nil
	}
	b.once.Do(func() { b.reading <- struct{}{} })
	<-b.release
	return 0, io.ErrUnexpectedEOF
}

// TestSlowBodyHoldsNoTurn: requests whose bodies arrive slowly (a
// slowloris) do not take the turns of MaxConcurrentRequests, so they
// cannot keep a client that sends its request at once from a token.
func TestSlowBodyHoldsNoTurn(t *testing.T) {
	f := newFixture(t)
	h, err := m2mauth.NewTokenHandler(f.store, f.keys, m2mauth.TokenHandlerConfig{
		Issuer: testIssuer, DefaultAudience: testAudience, Auditor: m2mauth.AuditorFunc(f.audit),
		Now: f.clock, StoreTimeout: 50 * time.Millisecond, MaxConcurrentRequests: 2, Logger: discardLogger(),
	})
	require.NoError(t, err)
	// As many as there are turns: were they taken, the next request
	// would wait StoreTimeout for one and get 503.
	const slow = 2
	reading, release := make(chan struct{}, slow), make(chan struct{})
	codes := make(chan int, slow)
	for range slow {
		go func() {
			body := &stalledBody{first: strings.NewReader("grant_type=client"), reading: reading, release: release}
			r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", body)
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			r.Header.Set("Authorization", basic("svc", f.secret))
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			codes <- w.Code
		}()
	}
	for range slow {
		<-reading
	}

	f.handler = h
	w, resp := f.do(t, request{body: "grant_type=client_credentials", headers: auth(basic("svc", f.secret))})
	assert.Equal(t, http.StatusOK, w.Code, "%+v", resp)
	assert.NotEmpty(t, resp.AccessToken)

	close(release)
	for range slow {
		assert.Equal(t, http.StatusBadRequest, <-codes, "a body cut short")
	}
}

// healthAuditor records events and reports a health that tests set.
type healthAuditor struct {
	m2mauth.AuditorFunc
	err atomic.Pointer[error]
}

func (a *healthAuditor) AuditHealth() error {
	if p := a.err.Load(); p != nil {
		return *p
	}
	return nil
}

// TestRequireAudit: a host that must not issue unaudited tokens gets 503
// while its auditor cannot record events.
func TestRequireAudit(t *testing.T) {
	f := newFixture(t)
	a := &healthAuditor{AuditorFunc: f.audit}
	_, err := m2mauth.NewTokenHandler(f.store, f.keys, m2mauth.TokenHandlerConfig{Issuer: testIssuer, RequireAudit: true, Auditor: m2mauth.AuditorFunc(f.audit)})
	require.ErrorContains(t, err, "AuditHealthChecker")
	f.handler, err = m2mauth.NewTokenHandler(f.store, f.keys, m2mauth.TokenHandlerConfig{
		Issuer: testIssuer, DefaultAudience: testAudience, Auditor: a, Now: f.clock, RequireAudit: true,
	})
	require.NoError(t, err)
	ok := request{body: "grant_type=client_credentials", headers: auth(basic("svc", f.secret))}

	w, _ := f.do(t, ok)
	require.Equal(t, 200, w.Code)
	down := errors.New("audit table unavailable")
	a.err.Store(&down)
	w, resp := f.do(t, ok)
	assert.Equal(t, 503, w.Code)
	assert.Equal(t, "temporarily_unavailable", resp.Error)
	assert.Empty(t, resp.AccessToken)
	assert.NotEmpty(t, w.Header().Get("Retry-After"))
	assert.Equal(t, m2mauth.ReasonAuditUnavailable, f.lastEvent(t).Reason)
	a.err.Store(nil)
	w, _ = f.do(t, ok)
	assert.Equal(t, 200, w.Code)
}

// TestRequireAuditThroughMetrics: the metrics' Auditor, and a Detector
// over it, report the health of the auditor they pass events to, so that
// RequireAudit still refuses tokens while it cannot record them; over an
// auditor without a health to report, RequireAudit is refused at once.
func TestRequireAuditThroughMetrics(t *testing.T) {
	m, _ := newTestMetrics(t, m2mauth.MetricsConfig{})
	f := newFixture(t)
	_, err := m2mauth.NewTokenHandler(f.store, f.keys, m2mauth.TokenHandlerConfig{Issuer: testIssuer, RequireAudit: true, Auditor: m.Auditor(m2mauth.AuditorFunc(f.audit))})
	require.ErrorContains(t, err, "AuditHealthChecker", "metrics over an auditor without health")

	a := &healthAuditor{AuditorFunc: f.audit}
	d, err := m2mauth.NewDetector(m.Auditor(a), m2mauth.AlertSinkFunc(func(context.Context, m2mauth.Alert) {}), m2mauth.DetectorConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	for name, auditor := range map[string]m2mauth.Auditor{"metrics": m.Auditor(a), "detector over metrics": d} {
		t.Run(name, func(t *testing.T) {
			h, err := m2mauth.NewTokenHandler(f.store, f.keys, m2mauth.TokenHandlerConfig{
				Issuer: testIssuer, DefaultAudience: testAudience, Auditor: auditor, Now: f.clock, RequireAudit: true,
			})
			require.NoError(t, err)
			ok := request{body: "grant_type=client_credentials", headers: auth(basic("svc", f.secret))}
			down := errors.New("audit table unavailable")
			a.err.Store(&down)
			assert.Equal(t, http.StatusServiceUnavailable, send(t, h, ok).Code)
			a.err.Store(nil)
			assert.Equal(t, http.StatusOK, send(t, h, ok).Code)
		})
	}
}

// TestUnknownClientCostsLikeKnown: an unknown client id is verified
// against the hashes of a client the store returned, so it costs what a
// known client costs, even when that one's hash is argon2id.
func TestUnknownClientCostsLikeKnown(t *testing.T) {
	f, _ := newLimited(t)
	f.addClient(t, "imported", argon2Hash(t, "right", 16*1024, 2))
	timeOf := func(id string, i int) time.Duration {
		start := time.Now()
		code, _ := f.try(t, id, "wrong", fmt.Sprintf("198.51.100.%d:1", i))
		require.Equal(t, 401, code)
		return time.Since(start)
	}
	timeOf("imported", 200) // the store returns it once: it is the profile now
	const n = 5
	var known, unknown []time.Duration
	for i := range n {
		known = append(known, timeOf("imported", i))
		unknown = append(unknown, timeOf(fmt.Sprintf("nobody-%d", i), 100+i))
	}
	slices.Sort(known)
	slices.Sort(unknown)
	t.Logf("median: known %v, unknown %v", known[n/2], unknown[n/2])
	// Unequalised, the unknown id would take a few microseconds against
	// the known one's milliseconds.
	assert.Greater(t, unknown[n/2], known[n/2]/4)
}

// TestBcryptSecretLength: bcrypt reads only the first 72 bytes of a
// secret. RFC 6749 §2.3.1 authenticates a client by its secret, all of
// it, so a longer secret never matches a bcrypt hash: otherwise any
// string beginning with a client's 72 bytes would get its tokens.
func TestBcryptSecretLength(t *testing.T) {
	s72 := strings.Repeat("0123456789abcdef", 5)[:72]
	s100 := strings.Repeat("fedcba9876543210", 7)[:100]
	h72, err := bcrypt.GenerateFromPassword([]byte(s72), bcrypt.MinCost)
	require.NoError(t, err)
	// What an implementation that cuts long secrets short without a word
	// stores for s100.
	hCut, err := bcrypt.GenerateFromPassword([]byte(s100[:72]), bcrypt.MinCost)
	require.NoError(t, err)
	tests := []struct {
		name   string
		hash   []byte
		secret string
		status int
		reason string
	}{
		{"72 bytes, the secret", h72, s72, http.StatusOK, ""},
		{"72 bytes and more", h72, s72 + "-not-the-secret", http.StatusUnauthorized, m2mauth.ReasonBadSecret},
		{"72 bytes and one more", h72, s72 + "x", http.StatusUnauthorized, m2mauth.ReasonBadSecret},
		{"71 bytes of it", h72, s72[:71], http.StatusUnauthorized, m2mauth.ReasonBadSecret},
		{"a long secret hashed cut short", hCut, s100, http.StatusUnauthorized, m2mauth.ReasonBadSecret},
		{"its first 72 bytes", hCut, s100[:72], http.StatusOK, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, _ := newLimited(t)
			f.addClient(t, "imported", string(tc.hash))
			code, _ := f.try(t, "imported", tc.secret, ipA)
			require.Equal(t, tc.status, code)
			ev := f.lastEvent(t)
			require.Equal(t, tc.reason, ev.Reason)
			ok, err := m2mauth.VerifySecret(string(tc.hash), tc.secret)
			require.NoError(t, err)
			require.Equal(t, tc.status == http.StatusOK, ok)
		})
	}
}

// stallingLimiter is a Limiter whose Reserve or Release, when told to
// stall, waits for its context to end, as one over a database that
// stopped answering does.
type stallingLimiter struct {
	m2mauth.Limiter
	stallReserve, stallRelease bool
}

func (l *stallingLimiter) Reserve(ctx context.Context, id, ip string) (time.Duration, error) {
	if l.stallReserve {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	return l.Limiter.Reserve(ctx, id, ip)
}

func (l *stallingLimiter) Release(ctx context.Context, id, ip string, o m2mauth.Outcome) error {
	if l.stallRelease {
		<-ctx.Done()
		return ctx.Err()
	}
	return l.Limiter.Release(ctx, id, ip, o)
}

// TestStalledLimiter: a limiter that stops answering holds a request no
// longer than the docs say (StoreTimeout; twice that when it stalls
// after granting the attempt, whose end gets a StoreTimeout of its own),
// then the answer is 503 with Retry-After, whichever the secret.
func TestStalledLimiter(t *testing.T) {
	const storeTimeout = 400 * time.Millisecond
	const slack = time.Second // a loaded machine
	tests := []struct {
		name                       string
		stallReserve, stallRelease bool
		wrong                      bool
		within                     time.Duration
	}{
		{"stalled reserve", true, false, false, storeTimeout},
		{"stalled release, right secret", false, true, false, 2 * storeTimeout},
		{"stalled release, wrong secret", false, true, true, 2 * storeTimeout},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			rl, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{})
			require.NoError(t, err)
			h, err := m2mauth.NewTokenHandler(f.store, f.keys, m2mauth.TokenHandlerConfig{
				Issuer: testIssuer, DefaultAudience: testAudience, Auditor: m2mauth.AuditorFunc(f.audit),
				StoreTimeout: storeTimeout, Logger: discardLogger(),
				Limiter: &stallingLimiter{Limiter: rl, stallReserve: tc.stallReserve, stallRelease: tc.stallRelease},
			})
			require.NoError(t, err)
			srv := httptest.NewServer(h)
			defer srv.Close()
			secret := f.secret
			if tc.wrong {
				secret = "wrong"
			}
			req, err := http.NewRequest(http.MethodPost, srv.URL+"/oauth/token", strings.NewReader("grant_type=client_credentials"))
			require.NoError(t, err)
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Authorization", basic("svc", secret))
			start := time.Now()
			resp, err := srv.Client().Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			took := time.Since(start)
			require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
			require.NotEmpty(t, resp.Header.Get("Retry-After"))
			require.GreaterOrEqual(t, took, tc.within-storeTimeout/4, "answered before the limiter's time was up")
			require.Less(t, took, tc.within+slack)
		})
	}
}

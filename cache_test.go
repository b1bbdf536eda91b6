package m2mauth_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// fastMinter signs HS256 access tokens that differ only in jti, cheaply
// enough to make a million of them.
type fastMinter struct {
	header string
	key    []byte
	iat    int64
}

func newFastMinter(now time.Time) *fastMinter {
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","kid":"k2","typ":"at+jwt"}`))
	return &fastMinter{header: h + ".", key: keyB, iat: now.Unix()}
}

func (m *fastMinter) mint(i int, ttl time.Duration) string {
	payload := fmt.Sprintf(`{"iss":%q,"sub":"svc","client_id":"svc","aud":%q,"iat":%d,"exp":%d,"jti":"j%d","scope":"read"}`,
		testIssuer, testAudience, m.iat, m.iat+int64(ttl/time.Second), i)
	in := m.header + base64.RawURLEncoding.EncodeToString([]byte(payload))
	mac := hmac.New(sha256.New, m.key)
	mac.Write([]byte(in))
	return in + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// TestTokenCache: hits and misses are counted, a hit still honours expiry,
// invalid tokens are never cached, and the entry count never exceeds the
// bound however many distinct tokens arrive.
func TestTokenCache(t *testing.T) {
	p := newProtected(t, func(c *m2mauth.ValidatorConfig) { c.CacheSize = 1024 })
	m := newFastMinter(p.clock())
	ctx := t.Context()

	tok := m.mint(0, time.Minute)
	for range 3 {
		_, err := p.v.Validate(ctx, tok)
		require.NoError(t, err)
	}
	st := p.v.CacheStats()
	assert.Equal(t, uint64(2), st.Hits)
	assert.Equal(t, uint64(1), st.Misses)
	assert.Equal(t, 1, st.Entries)
	assert.Equal(t, 1024, st.Capacity)

	// Invalid tokens: never cached, every one a miss.
	for i := range 100 {
		_, err := p.v.Validate(ctx, tok[:len(tok)-4]+fmt.Sprintf("%04d", i))
		require.Error(t, err)
	}
	st = p.v.CacheStats()
	assert.Equal(t, 1, st.Entries, "invalid tokens are not cached")
	assert.Equal(t, uint64(2), st.Hits)

	// Expiry honoured on a hit: exp is 60s away, leeway 30s.
	p.advance(89 * time.Second)
	_, err := p.v.Validate(ctx, tok)
	require.NoError(t, err)
	assert.Equal(t, uint64(3), p.v.CacheStats().Hits)
	p.advance(time.Second)
	_, err = p.v.Validate(ctx, tok)
	require.ErrorIs(t, err, &m2mauth.Error{Code: m2mauth.CodeInvalidToken})
	assert.Equal(t, m2mauth.ReasonTokenExpired, m2mauth.RejectionReason(err))
	assert.Equal(t, uint64(3), p.v.CacheStats().Hits, "an expired entry is not a hit")
	assert.Equal(t, 0, p.v.CacheStats().Entries, "an expired entry is dropped")
}

// TestTokenCacheCanonicalOnly: the cache is keyed by the exact token
// string, and only the canonical spelling of a token verifies (RFC 7515 §2,
// RFC 4648 §3.5), so a twin whose signature differs only in the unused
// bits of its last character is never served from the cache, whether the
// canonical token was cached before it or not, and never enters it.
func TestTokenCacheCanonicalOnly(t *testing.T) {
	p := newProtected(t)
	m := newFastMinter(p.clock())
	ctx := t.Context()
	tok := m.mint(0, time.Hour)
	sig := tok[strings.LastIndexByte(tok, '.')+1:]
	prefix := tok[:len(tok)-len(sig)]
	twins := []string{prefix + twin(t, sig, 0b01), prefix + twin(t, sig, 0b10), prefix + twin(t, sig, 0b11)}

	for _, tw := range twins {
		_, err := p.v.Validate(ctx, tw)
		require.ErrorIs(t, err, &m2mauth.Error{Code: m2mauth.CodeInvalidToken}, "twin before the canonical token")
		assert.Equal(t, m2mauth.ReasonTokenSignature, m2mauth.RejectionReason(err))
	}
	assert.Equal(t, 0, p.v.CacheStats().Entries, "a twin never enters the cache")

	for range 2 {
		_, err := p.v.Validate(ctx, tok)
		require.NoError(t, err)
	}
	require.Equal(t, uint64(1), p.v.CacheStats().Hits, "the canonical token is cached")

	for _, tw := range twins {
		_, err := p.v.Validate(ctx, tw)
		require.ErrorIs(t, err, &m2mauth.Error{Code: m2mauth.CodeInvalidToken}, "twin after the canonical token")
		assert.Equal(t, m2mauth.ReasonTokenSignature, m2mauth.RejectionReason(err))
	}
	st := p.v.CacheStats()
	assert.Equal(t, uint64(1), st.Hits, "no twin is a hit")
	assert.Equal(t, 1, st.Entries, "only the canonical token is cached")
}

// TestTokenCacheBound floods the cache with distinct valid tokens: the
// entry count reaches its capacity and stays there, and the heap stays
// bounded.
func TestTokenCacheBound(t *testing.T) {
	// Ten times the capacity shows the bound as well as a million would.
	n := 100_000
	if raceEnabled || testing.Short() {
		n = 30_000
	}
	p := newProtected(t, func(c *m2mauth.ValidatorConfig) { c.CacheSize = 10000 })
	m := newFastMinter(p.clock())
	ctx := t.Context()
	var ms runtime.MemStats
	for i := range n {
		_, err := p.v.Validate(ctx, m.mint(i, time.Hour))
		if err != nil {
			require.NoError(t, err)
		}
		if i%100_000 == 99_999 {
			require.LessOrEqual(t, p.v.CacheStats().Entries, 10000)
		}
	}
	st := p.v.CacheStats()
	assert.LessOrEqual(t, st.Entries, st.Capacity)
	assert.Equal(t, 10000, st.Capacity)
	// The shards share the tokens evenly, so the cache fills up.
	assert.GreaterOrEqual(t, st.Entries, st.Capacity*98/100, "entries of a full cache")
	assert.Equal(t, uint64(n), st.Misses)
	runtime.GC()
	runtime.ReadMemStats(&ms)
	runtime.KeepAlive(p)
	// 10,000 entries of a ~300-byte token and its claims: a few MB.
	assert.Less(t, ms.HeapAlloc, uint64(64<<20), "heap in use after %d tokens", n)
	t.Logf("%d tokens: %d entries, heap in use %d KiB", n, st.Entries, ms.HeapAlloc>>10)
}

// TestTokenCacheParallel hammers the cache from many goroutines with a mix
// of repeated and fresh tokens; run with -race.
func TestTokenCacheParallel(t *testing.T) {
	p := newProtected(t, func(c *m2mauth.ValidatorConfig) { c.CacheSize = 64 })
	m := newFastMinter(p.clock())
	shared := make([]string, 16)
	for i := range shared {
		shared[i] = m.mint(i, time.Hour)
	}
	h := p.v.RequireScopes("read")(echo)
	const workers, each = 8, 300
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				tok := shared[(w+i)%len(shared)]
				if i%3 == 0 {
					tok = m.mint(100000+w*each+i, time.Hour)
				}
				if rec := call(h, "Bearer "+tok); rec.Code != 200 {
					errs <- errors.New(rec.Body.String())
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	checkConcurrent(t, p.v, workers*each, errs)
}

// checkConcurrent reports the errors of concurrent requests, then checks
// that each of the requests was counted once, as a hit or a miss, and that
// the cache kept within its capacity.
func checkConcurrent(t *testing.T, v *m2mauth.Validator, requests int, errs <-chan error) {
	t.Helper()
	for err := range errs {
		t.Error(err)
	}
	st := v.CacheStats()
	assert.Equal(t, uint64(requests), st.Hits+st.Misses, "every request counted once")
	assert.Positive(t, st.Hits)
	assert.LessOrEqual(t, st.Entries, st.Capacity)
}

// TestTokenCacheBurst sends 200 requests at once over real HTTP, again
// and again, with hot tokens and fresh ones through a cache too small for
// them, so that lock-free hits meet puts, evictions and growing tables:
// every request gets its own token's claims (its jti), and every one is
// counted once. Run with -race.
func TestTokenCacheBurst(t *testing.T) {
	p := newProtected(t, func(c *m2mauth.ValidatorConfig) { c.CacheSize = 64 })
	m := newFastMinter(p.clock())
	hot := make([]string, 16)
	for i := range hot {
		hot[i] = m.mint(i, time.Hour)
	}
	srv := httptest.NewServer(p.v.RequireScopes("read")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := m2mauth.ClaimsFromContext(r.Context())
		w.Write([]byte(c.ID))
	})))
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 200}}
	defer client.CloseIdleConnections()

	const workers, rounds = 200, 5
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, workers*rounds)
	for w := range workers {
		wg.Go(func() {
			<-start
			for i := range rounds {
				n := (w + i) % len(hot)
				tok := hot[n]
				if (w+i)%3 == 0 {
					n = 1000 + w*rounds + i
					tok = m.mint(n, time.Hour)
				}
				req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/builders", nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := fmt.Sprintf("j%d", n); resp.StatusCode != http.StatusOK || string(body) != want {
					errs <- fmt.Errorf("status %d, jti %q, want %q", resp.StatusCode, body, want)
				}
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	checkConcurrent(t, p.v, workers*rounds, errs)
}

// BenchmarkValidateCacheHotSet measures Validator.Validate of HS256 tokens
// taken in turn from a hot set, with the default cache of 10,000 tokens
// (on) and without a cache (off). A hot set that fits is answered from the
// cache; one five times larger misses every time, and must then cost no
// more than no cache at all. hits/op is the share answered from the cache.
func BenchmarkValidateCacheHotSet(b *testing.B) {
	ctx := context.Background()
	for _, hot := range []int{5_000, 10_000, 50_000} {
		for _, size := range []int{0, -1} {
			name := fmt.Sprintf("hot=%dk/cache=on", hot/1000)
			if size < 0 {
				name = fmt.Sprintf("hot=%dk/cache=off", hot/1000)
			}
			b.Run(name, func(b *testing.B) {
				p := newProtected(b, func(c *m2mauth.ValidatorConfig) { c.CacheSize = size })
				m := newFastMinter(p.clock())
				tokens := make([]string, hot)
				for i := range tokens {
					tokens[i] = m.mint(i, time.Hour)
				}
				for _, tok := range tokens { // one pass to warm the cache
					_, err := p.v.Validate(ctx, tok)
					require.NoError(b, err)
				}
				before := p.v.CacheStats()
				i := 0
				b.ReportAllocs()
				for b.Loop() {
					if _, err := p.v.Validate(ctx, tokens[i]); err != nil {
						b.Fatal(err)
					}
					if i++; i == hot {
						i = 0
					}
				}
				b.ReportMetric(float64(p.v.CacheStats().Hits-before.Hits)/float64(b.N), "hits/op")
			})
		}
	}
}

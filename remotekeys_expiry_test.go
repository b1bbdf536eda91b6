package m2mauth_test

// RemoteKeys past a set's expiry: fetched again before it is trusted
// while the server answers, served as it was while fetches fail or a
// refresh is under way.

import (
	"context"
	"crypto/ecdsa"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// remoteMint signs an access token with priv under kid, valid at now.
func remoteMint(t testing.TB, priv *ecdsa.PrivateKey, kid string, now time.Time) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: priv, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("at+jwt"))
	require.NoError(t, err)
	tok, err := jwt.Signed(sig).Claims(map[string]any{
		"iss": testIssuer, "aud": testAudience, "sub": "svc", "client_id": "svc",
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(), "jti": fmt.Sprintf("j-%d", now.UnixNano()),
		"scope": "read",
	}).Serialize()
	require.NoError(t, err)
	return tok
}

// TestRemoteKeysIdleAfterOldFailure: one failed refresh (a blip, a
// restart) long ago does not make an expired set trusted: a verifier idle
// past the expiry, whose server answers again (with a key removed),
// fetches the set before it verifies the next token.
func TestRemoteKeysIdleAfterOldFailure(t *testing.T) {
	leaked, next := remoteEC(t), remoteEC(t)
	srv := newRemoteServer(t, remoteSet(t, remoteJWK("leaked", "ES256", &leaked.PublicKey)))
	srv.cacheControl = "max-age=600"
	clock := newRemoteClock()
	rk := newRemote(t, srv.jwksURL(), remoteConfig(clock))
	v, err := m2mauth.NewValidator(rk, m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: testAudience, Now: clock.Now})
	require.NoError(t, err)

	_, err = v.Validate(t.Context(), remoteMint(t, leaked, "leaked", clock.Now()))
	require.NoError(t, err, "the key set fetched, the token verifies")

	// Shortly before expiry, the background refresh meets a blip.
	srv.serve(http.StatusServiceUnavailable, []byte("restarting"))
	at := clock.Add(9*time.Minute + 30*time.Second)
	_, err = rk.VerificationKeys(t.Context())
	require.NoError(t, err)
	remoteWaitAttempt(t, rk, at, true)

	// The server is back at once, and the leaked key is revoked: it
	// leaves the JWKS. The verifier is idle for an hour.
	srv.serve(http.StatusOK, remoteSet(t, remoteJWK("next", "ES256", &next.PublicKey)))
	clock.Add(time.Hour)
	hits := srv.hits.Load()

	// A token of the revoked key arrives: the set expired 50 minutes ago
	// and the server answers; the set must be fetched before it is trusted.
	_, err = v.Validate(t.Context(), remoteMint(t, leaked, "leaked", clock.Now()))
	assert.Error(t, err, "a token of a key the answering server removed 50 minutes ago is accepted")
	st := rk.Status()
	t.Logf("after the call: fetches %d -> %d, held kids %v, last error %v", hits, srv.hits.Load(), st.KeyIDs, st.LastError)
}

// TestRemoteKeysRefreshKeysExpiredSet: RefreshKeys does not return an
// expired set that has the kid without asking the answering server.
func TestRemoteKeysRefreshKeysExpiredSet(t *testing.T) {
	k1, k2 := remoteEC(t), remoteEC(t)
	srv := newRemoteServer(t, remoteSet(t, remoteJWK("k1", "ES256", &k1.PublicKey)))
	srv.cacheControl = "max-age=60"
	clock := newRemoteClock()
	rk := newRemote(t, srv.jwksURL(), remoteConfig(clock))
	_, err := rk.VerificationKeys(t.Context())
	require.NoError(t, err)
	srv.serve(http.StatusOK, remoteSet(t, remoteJWK("k2", "ES256", &k2.PublicKey)))
	clock.Add(time.Hour)
	set, err := rk.RefreshKeys(t.Context(), "k1")
	require.NoError(t, err)
	assert.NotContains(t, remoteKids(set), "k1", "an hour past expiry, the server answering without k1")
}

// TestRemoteKeysBusyVerifierDoesNotWait: a busy verifier (a call just
// before expiry starts the background refresh) whose server answers
// slowly does not wait on the network past the expiry, nor fails a
// caller with a deadline: the set is served as it is until the refresh
// ends.
func TestRemoteKeysBusyVerifierDoesNotWait(t *testing.T) {
	k1 := remoteEC(t)
	body := remoteSet(t, remoteJWK("k1", "ES256", &k1.PublicKey))
	var slow atomic.Bool
	release := make(chan struct{})
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if slow.Load() {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Cache-Control", "max-age=5")
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	clock := newRemoteClock()
	rk := newRemote(t, srv.URL, remoteConfig(clock))
	first, err := rk.VerificationKeys(t.Context())
	require.NoError(t, err)

	slow.Store(true)
	// Busy: a call at 4.6s (past refreshAt, 4.5s) starts the refresh.
	clock.Add(4600 * time.Millisecond)
	got, err := rk.VerificationKeys(t.Context())
	require.NoError(t, err)
	require.Same(t, first, got)
	require.Eventually(t, func() bool { return hits.Load() == 2 }, 5*time.Second, time.Millisecond)

	// The next requests, 0.5s later, past expiry. The refresh does not
	// end before the test does: a call that waited for it would fail
	// with its deadline.
	clock.Add(500 * time.Millisecond)
	var wg sync.WaitGroup
	var errs atomic.Int64
	for range 20 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_, err := rk.VerificationKeys(ctx)
			if err != nil {
				errs.Add(1)
				if errs.Load() == 1 {
					t.Logf("error: %v", err)
				}
			}
		})
	}
	wg.Wait()
	assert.Zero(t, errs.Load(), "calls that waited for the refresh, with a good set held and no fetch failed")
}

// TestRemoteKeysHangingServerAtExpiry: an idle verifier whose server
// hangs past the expiry: every concurrent caller waits, up to Timeout,
// for the one fetch; a caller hanging up does not cancel it for the
// others; once it failed, the stale set is served at once.
func TestRemoteKeysHangingServerAtExpiry(t *testing.T) {
	srv, clock, rk, first := stalledRemote(t, "max-age=5", func(cfg *m2mauth.RemoteKeysConfig) {
		cfg.Timeout = 500 * time.Millisecond
	})
	clock.Add(6 * time.Second)

	impatient, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		_, err := rk.VerificationKeys(impatient)
		assert.ErrorIs(t, err, context.Canceled)
	})
	time.Sleep(50 * time.Millisecond)
	cancel()
	start := time.Now()
	var waited [10]time.Duration
	for i := range waited {
		wg.Go(func() {
			s := time.Now()
			got, err := rk.VerificationKeys(context.Background())
			waited[i] = time.Since(s)
			if assert.NoError(t, err) {
				assert.Same(t, first, got)
			}
		})
	}
	wg.Wait()
	t.Logf("waits %v (total %v), fetches %d", waited, time.Since(start), srv.hits.Load())
	assert.EqualValues(t, 2, srv.hits.Load(), "one fetch shared, not canceled by the caller who hung up")
	for _, w := range waited {
		assert.Less(t, w, 5*time.Second, "bounded by the fetch's Timeout")
	}
	// The server still stalls: a call that fetched would wait for it.
	for range 100 {
		clock.Add(100 * time.Millisecond) // 10s, within the cooldown
		got, err := rk.VerificationKeys(context.Background())
		require.NoError(t, err)
		require.Same(t, first, got)
	}
	assert.EqualValues(t, 2, srv.hits.Load(), "stale served, without a fetch, after the failure")
}

// TestRemoteKeysLifetimeFromRequest: a set's lifetime counts from the
// request that fetched it, not from the answer (RFC 9111 §4.2.3): a
// slow answer does not make the set trusted longer than its max-age.
func TestRemoteKeysLifetimeFromRequest(t *testing.T) {
	body := remoteSet(t, remoteJWK("k1", "ES256", &remoteEC(t).PublicKey))
	hit, release := make(chan struct{}), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=1")
		close(hit)
		<-release
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	clock := newRemoteClock()
	rk := newRemote(t, srv.URL, remoteConfig(clock))
	asked := clock.Now()
	done := make(chan error)
	go func() { _, err := rk.VerificationKeys(context.Background()); done <- err }()
	<-hit
	clock.Add(3 * time.Second) // the response takes 3s
	close(release)
	require.NoError(t, <-done)
	st := rk.Status()
	assert.False(t, st.Expires.After(asked.Add(time.Second)), "expires %v after the request", st.Expires.Sub(asked))
}

// gatedServer serves a JWKS; while gated, each request waits for a value
// on release (or its own end) before it is answered.
type gatedServer struct {
	*httptest.Server
	hits    atomic.Int64
	arrived chan struct{}
	release chan struct{}

	mu     sync.Mutex
	status int
	body   []byte
	cc     string
	gated  bool
}

func newGatedServer(t *testing.T, body []byte, cc string) *gatedServer {
	t.Helper()
	s := &gatedServer{status: http.StatusOK, body: body, cc: cc,
		arrived: make(chan struct{}, 100), release: make(chan struct{}, 100)}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		status, body, cc, gated := s.status, s.body, s.cc, s.gated
		s.mu.Unlock()
		if gated {
			s.arrived <- struct{}{}
			select {
			case <-s.release:
			case <-r.Context().Done():
				return
			}
		}
		if cc != "" {
			w.Header().Set("Cache-Control", cc)
		}
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *gatedServer) set(status int, body []byte, gated bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body, s.gated = status, body, gated
}

// TestRemoteKeysCallersDuringOverdueFetch: a verifier whose last refresh
// failed long ago (a blip), whose server is back and has removed a key,
// and that was idle past the set's expiry: the first call fetches and
// waits, and so does a call that comes while that fetch is under way; a
// token of the removed key verifies for neither.
func TestRemoteKeysCallersDuringOverdueFetch(t *testing.T) {
	for _, via := range []string{"Validate", "VerificationKeys", "RefreshKeys"} {
		t.Run(via, func(t *testing.T) {
			leaked, next := remoteEC(t), remoteEC(t)
			srv := newGatedServer(t, remoteSet(t, remoteJWK("leaked", "ES256", &leaked.PublicKey)), "max-age=600")
			clock := newRemoteClock()
			rk := newRemote(t, srv.URL, remoteConfig(clock))
			v, err := m2mauth.NewValidator(rk, m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: testAudience, Now: clock.Now, CacheSize: -1})
			require.NoError(t, err)
			_, err = v.Validate(t.Context(), remoteMint(t, leaked, "leaked", clock.Now()))
			require.NoError(t, err)

			// A blip at the background refresh, shortly before expiry.
			srv.set(http.StatusServiceUnavailable, []byte("restarting"), false)
			at := clock.Add(9*time.Minute + 30*time.Second)
			_, err = rk.VerificationKeys(t.Context())
			require.NoError(t, err)
			remoteWaitAttempt(t, rk, at, true)

			// Back at once, with the leaked key revoked; answers take a
			// moment (held until released). Idle for an hour.
			srv.set(http.StatusOK, remoteSet(t, remoteJWK("next", "ES256", &next.PublicKey)), true)
			clock.Add(time.Hour)

			// The first caller: fetches and waits.
			first := make(chan error, 1)
			go func() {
				_, err := v.Validate(context.Background(), remoteMint(t, leaked, "leaked", clock.Now()))
				first <- err
			}()
			select {
			case <-srv.arrived:
			case <-time.After(5 * time.Second):
				t.Fatal("the first call did not fetch")
			}

			// A second caller while that fetch is under way.
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			switch via {
			case "Validate":
				_, err = v.Validate(ctx, remoteMint(t, leaked, "leaked", clock.Now()))
				assert.Error(t, err, "a token of a key the answering server removed verifies, an hour past the set's expiry, while the fetch is under way")
			case "VerificationKeys":
				set, err := rk.VerificationKeys(ctx)
				if err == nil {
					assert.NotContains(t, remoteKids(set), "leaked", "the expired set served without waiting for the overdue fetch")
				}
			case "RefreshKeys":
				set, err := rk.RefreshKeys(ctx, "leaked")
				if err == nil {
					assert.NotContains(t, remoteKids(set), "leaked", "the expired set served without waiting for the overdue fetch")
				}
			}
			srv.release <- struct{}{}
			require.Error(t, <-first, "the first caller, which waited, refuses the token")
		})
	}
}

// TestRemoteKeysHangingServerCallsDoNotWait: while a blackholed server
// makes fetches fail, a verifier that calls every 7s (several calls in
// each cooldown of 30s) has no call wait for a fetch: each cooldown's
// fetch starts in the background.
func TestRemoteKeysHangingServerCallsDoNotWait(t *testing.T) {
	srv, clock, rk, _ := stalledRemote(t, "max-age=600", func(cfg *m2mauth.RemoteKeysConfig) {
		cfg.Timeout = 400 * time.Millisecond
	})

	// A call that waited for a fetch would end with its deadline: the
	// server answers nothing within Timeout.
	waits := 0
	clock.Add(9*time.Minute + 50*time.Second) // refreshAt passed: background refresh
	for range 40 {                            // 280s of calls every 7s
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		if _, err := rk.VerificationKeys(ctx); err != nil {
			waits++
		}
		cancel()
		waitNoFlight(t, rk) // 7s pass between calls: any fetch has ended
		clock.Add(7 * time.Second)
	}
	t.Logf("%d of 40 calls waited for a fetch; fetches %d", waits, srv.hits.Load())
	assert.Zero(t, waits, "a verifier calling every 7s (4 calls per cooldown) waited on a blackholed server")
}

// TestRemoteKeysAnsweredSetWithoutUsableKeys: the server answers 200 with
// a well-formed JWKS from which the revoked key is gone, but which holds
// no key RemoteKeys accepts (empty, or only an RSA key without alg, which
// RFC 7517 §4.4 allows): the set held before is dropped with it, and the
// removed key's tokens are refused.
func TestRemoteKeysAnsweredSetWithoutUsableKeys(t *testing.T) {
	rsaKey, err := remoteRSA()
	require.NoError(t, err)
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"empty keys", []byte(`{"keys":[]}`)},
		{"only an RSA key without alg", remoteRaw(remoteMarshal(t, remoteJWK("rsa1", "RS256", &rsaKey.PublicKey), map[string]any{"alg": nil}))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaked := remoteEC(t)
			srv := newRemoteServer(t, remoteSet(t, remoteJWK("leaked", "ES256", &leaked.PublicKey)))
			srv.cacheControl = "max-age=60"
			clock := newRemoteClock()
			rk := newRemote(t, srv.jwksURL(), remoteConfig(clock))
			v, err := m2mauth.NewValidator(rk, m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: testAudience, Now: clock.Now})
			require.NoError(t, err)
			_, err = v.Validate(t.Context(), remoteMint(t, leaked, "leaked", clock.Now()))
			require.NoError(t, err)

			srv.serve(http.StatusOK, tc.body) // the leaked key revoked
			for _, d := range []time.Duration{2 * time.Minute, time.Hour, 12 * time.Hour} {
				clock.Add(d)
				_, err = v.Validate(t.Context(), remoteMint(t, leaked, "leaked", clock.Now()))
				assert.Error(t, err, "a token of the key the server removed, %v after the removal; the server answers 200", d)
			}
			t.Logf("status: %+v", rk.Status().LastError)
		})
	}
}

// TestRemoteKeysNoGoroutineOutlivesFetch: callers that give up, hanging
// and failing servers: no fetch goroutine is left once Timeout has passed.
func TestRemoteKeysNoGoroutineOutlivesFetch(t *testing.T) {
	_, clock, rk, _ := stalledRemote(t, "max-age=5", func(cfg *m2mauth.RemoteKeysConfig) {
		cfg.Timeout = 300 * time.Millisecond
		cfg.RefreshCooldown = time.Second
	})
	for i := range 50 {
		clock.Add(700 * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%3)*time.Millisecond)
		_, _ = rk.VerificationKeys(ctx)
		_, _ = rk.RefreshKeys(ctx, "nope")
		cancel()
	}
	require.Eventually(t, func() bool { return runGoroutines() == 0 }, 10*time.Second, 10*time.Millisecond)
}

// TestRemoteKeysConcurrentClockJumps: concurrent VerificationKeys,
// RefreshKeys, Validate and Status while the fake clock jumps forward and
// back and the server fails, hangs, recovers and rotates; for -race, and
// for panics.
func TestRemoteKeysConcurrentClockJumps(t *testing.T) {
	k1, k2 := remoteEC(t), remoteEC(t)
	sets := [][]byte{remoteSet(t, remoteJWK("k1", "ES256", &k1.PublicKey)), remoteSet(t, remoteJWK("k2", "ES256", &k2.PublicKey))}
	srv := newRemoteServer(t, sets[0])
	srv.cacheControl = "max-age=2"
	clock := newRemoteClock()
	cfg := remoteConfig(clock)
	cfg.RefreshCooldown = time.Second
	cfg.Timeout = 50 * time.Millisecond
	cfg.MaxStale = 5 * time.Second
	rk := newRemote(t, srv.jwksURL(), cfg)
	v, err := m2mauth.NewValidator(rk, m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: testAudience, Now: clock.Now})
	require.NoError(t, err)
	toks := []string{remoteMint(t, k1, "k1", clock.Now()), remoteMint(t, k2, "k2", clock.Now())}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%4)*time.Millisecond)
				switch g % 3 {
				case 0:
					_, _ = rk.VerificationKeys(ctx)
				case 1:
					_, _ = rk.RefreshKeys(ctx, []string{"k1", "k2", "zz"}[i%3])
				default:
					_, _ = v.Validate(ctx, toks[i%2])
				}
				cancel()
				_ = rk.Status()
			}
		})
	}
	for i := range 300 {
		switch i % 30 {
		case 5:
			srv.serve(http.StatusInternalServerError, nil)
		case 10:
			srv.mu.Lock()
			srv.stall = true
			srv.mu.Unlock()
		case 15:
			srv.mu.Lock()
			srv.stall = false
			srv.mu.Unlock()
			srv.serve(http.StatusOK, sets[(i/30)%2])
		}
		if i%17 == 0 {
			clock.Add(-3 * time.Second)
		} else {
			clock.Add(300 * time.Millisecond)
		}
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	require.Eventually(t, func() bool { return runGoroutines() == 0 }, 10*time.Second, 10*time.Millisecond)
}

// waitNoFlight waits until no fetch is under way (Status cannot say it;
// the run goroutine is looked for in the stacks).
func waitNoFlight(t *testing.T, rk *m2mauth.RemoteKeys) {
	t.Helper()
	require.Eventually(t, func() bool { return runGoroutines() == 0 }, 10*time.Second, time.Millisecond)
}

func runGoroutines() int {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), "m2mauth.(*RemoteKeys).run(")
}

// TestRemoteKeysFreshCallsWhileFailing: while fetches of a blackholed
// server fail, calls served the still fresh set count against a quiet
// spell too: the first call past the expiry, with no gap of the cooldown
// and Timeout before it, does not wait for a fetch.
func TestRemoteKeysFreshCallsWhileFailing(t *testing.T) {
	srv, clock, rk, _ := stalledRemote(t, "max-age=600", func(cfg *m2mauth.RemoteKeysConfig) {
		cfg.Timeout = 400 * time.Millisecond // quiet spell: 30.4s
	})
	start := clock.Now() // of the fetch

	// Calls at 540s (refresh, fails), 565s, 571s (fetch, fails), 596s,
	// 602s (set expired at 600s): gaps 25s, 6s, 25s, 6s.
	var waited []string
	for _, at := range []time.Duration{540, 565, 571, 596, 602} {
		clock.Add(start.Add(at * time.Second).Sub(clock.Now()))
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		_, err := rk.VerificationKeys(ctx)
		cancel()
		if err != nil {
			waited = append(waited, fmt.Sprintf("%ds: %v", at, err))
		}
		waitNoFlight(t, rk)
	}
	assert.Empty(t, waited, "calls that waited on the blackholed server with no quiet spell (fetches %d)", srv.hits.Load())
}

// stalledRemote returns a RemoteKeys on a fake clock, its config edited,
// that has fetched a set of one key with Cache-Control cacheControl, and
// its server, which from then on answers nothing.
func stalledRemote(t *testing.T, cacheControl string, edit func(*m2mauth.RemoteKeysConfig)) (*remoteServer, *remoteClock, *m2mauth.RemoteKeys, *jose.JSONWebKeySet) {
	t.Helper()
	srv := newRemoteServer(t, remoteSet(t, remoteJWK("k1", "ES256", &remoteEC(t).PublicKey)))
	srv.cacheControl = cacheControl
	clock := newRemoteClock()
	cfg := remoteConfig(clock)
	edit(&cfg)
	rk := newRemote(t, srv.jwksURL(), cfg)
	set, err := rk.VerificationKeys(t.Context())
	require.NoError(t, err)
	srv.mu.Lock()
	srv.stall = true
	srv.mu.Unlock()
	return srv, clock, rk, set
}

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

// TestRemoteKeysConcurrentExpiryFailRecover: concurrent VerificationKeys
// and RefreshKeys across expiry, failures and recovery, for -race.
func TestRemoteKeysConcurrentExpiryFailRecover(t *testing.T) {
	k1, k2 := remoteEC(t), remoteEC(t)
	sets := [][]byte{remoteSet(t, remoteJWK("k1", "ES256", &k1.PublicKey)), remoteSet(t, remoteJWK("k2", "ES256", &k2.PublicKey))}
	srv := newRemoteServer(t, sets[0])
	srv.cacheControl = "max-age=1"
	clock := newRemoteClock()
	cfg := remoteConfig(clock)
	cfg.RefreshCooldown = time.Second
	cfg.MaxStale = 3 * time.Second
	rk := newRemote(t, srv.jwksURL(), cfg)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%5)*time.Millisecond)
				if g%2 == 0 {
					_, _ = rk.VerificationKeys(ctx)
				} else {
					_, _ = rk.RefreshKeys(ctx, fmt.Sprintf("k%d", i%3))
				}
				cancel()
				_ = rk.Status()
			}
		})
	}
	for i := range 400 {
		switch i % 40 {
		case 10:
			srv.serve(http.StatusInternalServerError, nil)
		case 25:
			srv.serve(http.StatusOK, sets[(i/40)%2])
		}
		clock.Add(200 * time.Millisecond)
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
}

// TestRemoteKeysHangingServerAtExpiry: an idle verifier whose server
// hangs past the expiry: every concurrent caller waits, up to Timeout,
// for the one fetch; a caller hanging up does not cancel it for the
// others; once it failed, the stale set is served at once.
func TestRemoteKeysHangingServerAtExpiry(t *testing.T) {
	srv := newRemoteServer(t, remoteSet(t, remoteJWK("k1", "ES256", &remoteEC(t).PublicKey)))
	srv.cacheControl = "max-age=5"
	clock := newRemoteClock()
	cfg := remoteConfig(clock)
	cfg.Timeout = 500 * time.Millisecond
	rk := newRemote(t, srv.jwksURL(), cfg)
	first, err := rk.VerificationKeys(t.Context())
	require.NoError(t, err)
	srv.mu.Lock()
	srv.stall = true
	srv.mu.Unlock()
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

package m2mauth_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
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
	"github.com/m2mauth/m2mauth/memstore"
)

// remoteClock is a settable clock.
type remoteClock struct {
	mu sync.Mutex
	t  time.Time
}

func newRemoteClock() *remoteClock {
	return &remoteClock{t: time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)}
}

func (c *remoteClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *remoteClock) Add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// remoteServer serves a JWKS (or anything else) and counts requests.
type remoteServer struct {
	*httptest.Server
	hits atomic.Int64

	mu           sync.Mutex
	status       int
	body         []byte
	cacheControl string
	age          string
	stall        bool // hold the response until the request ends
}

func newRemoteServer(t *testing.T, body []byte) *remoteServer {
	t.Helper()
	s := &remoteServer{status: http.StatusOK, body: body}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		status, body, cc, age, stall := s.status, s.body, s.cacheControl, s.age, s.stall
		s.mu.Unlock()
		if stall {
			<-r.Context().Done()
			return
		}
		if cc != "" {
			w.Header().Set("Cache-Control", cc)
		}
		if age != "" {
			w.Header().Set("Age", age)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *remoteServer) serve(status int, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body = status, body
}

func (s *remoteServer) jwksURL() string { return s.URL + "/jwks" }

// remoteBuffer is a log destination the background fetches may write to
// concurrently.
type remoteBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *remoteBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *remoteBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func remoteConfig(clock *remoteClock) m2mauth.RemoteKeysConfig {
	return m2mauth.RemoteKeysConfig{Now: clock.Now, Logger: slog.New(slog.DiscardHandler)}
}

func newRemote(t *testing.T, url string, cfg m2mauth.RemoteKeysConfig) *m2mauth.RemoteKeys {
	t.Helper()
	rk, err := m2mauth.NewRemoteKeys(url, cfg)
	require.NoError(t, err)
	return rk
}

func remoteEC(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return k
}

// remoteJWK is the public JWK of priv, as a server would publish it.
func remoteJWK(kid, alg string, pub any) jose.JSONWebKey {
	return jose.JSONWebKey{Key: pub, KeyID: kid, Algorithm: alg, Use: "sig"}
}

func remoteSet(t testing.TB, keys ...jose.JSONWebKey) []byte {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	require.NoError(t, err)
	return b
}

// remoteRaw builds a JWKS from raw JSON members, for keys go-jose would
// not marshal.
func remoteRaw(keys ...string) []byte {
	return []byte(`{"keys":[` + strings.Join(keys, ",") + `]}`)
}

// remoteMarshal is the JSON of one key, with extra members merged in.
func remoteMarshal(t testing.TB, k jose.JSONWebKey, extra map[string]any) string {
	t.Helper()
	b, err := json.Marshal(k)
	require.NoError(t, err)
	m := map[string]any{}
	require.NoError(t, json.Unmarshal(b, &m))
	for name, v := range extra {
		if v == nil {
			delete(m, name)
		} else {
			m[name] = v
		}
	}
	b, err = json.Marshal(m)
	require.NoError(t, err)
	return string(b)
}

func remoteKids(set *jose.JSONWebKeySet) []string {
	var kids []string
	for _, k := range set.Keys {
		kids = append(kids, k.KeyID)
	}
	return kids
}

// remoteWaitAttempt waits until the fetch started at at has ended.
func remoteWaitAttempt(t *testing.T, rk *m2mauth.RemoteKeys, at time.Time, failed bool) m2mauth.RemoteKeysStatus {
	t.Helper()
	var st m2mauth.RemoteKeysStatus
	require.Eventually(t, func() bool {
		st = rk.Status()
		if !st.LastAttempt.Equal(at) {
			return false
		}
		if failed {
			return st.LastError != nil
		}
		return st.LastError == nil && !st.FetchedAt.Before(at)
	}, 10*time.Second, 2*time.Millisecond)
	return st
}

var remoteRSA = sync.OnceValues(func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 2048) })

func TestRemoteKeysNewChecksURLAndConfig(t *testing.T) {
	srv := newRemoteServer(t, nil)
	cases := []struct {
		name string
		url  string
		edit func(*m2mauth.RemoteKeysConfig)
		ok   bool
	}{
		{"https", "https://auth.example.com/jwks", nil, true},
		{"http on 127.0.0.1", "http://127.0.0.1:8080/jwks", nil, true},
		{"http on 127.1.2.3", "http://127.1.2.3/jwks", nil, true},
		{"http on ::1", "http://[::1]:8080/jwks", nil, true},
		{"http on localhost", "http://LocalHost:8080/jwks", nil, true},
		{"http elsewhere", "http://auth.example.com/jwks", nil, false},
		{"http on a private address", "http://10.0.0.1/jwks", nil, false},
		{"http on localhost-lookalike", "http://localhost.example.com/jwks", nil, false},
		{"http with AllowInsecureHTTP", "http://auth.example.com/jwks", func(c *m2mauth.RemoteKeysConfig) { c.AllowInsecureHTTP = true }, true},
		{"other scheme", "ftp://auth.example.com/jwks", nil, false},
		{"relative", "/jwks", nil, false},
		{"empty", "", nil, false},
		{"no host", "https:///jwks", nil, false},
		{"user information", "https://user:pass@auth.example.com/jwks", nil, false},
		{"fragment", "https://auth.example.com/jwks#x", nil, false},
		{"unparsable", "https://auth.example.com/%zz", nil, false},
		{"negative timeout", "https://auth.example.com/jwks", func(c *m2mauth.RemoteKeysConfig) { c.Timeout = -time.Second }, false},
		{"negative body bound", "https://auth.example.com/jwks", func(c *m2mauth.RemoteKeysConfig) { c.MaxBodyBytes = -1 }, false},
		{"cooldown under 1s", "https://auth.example.com/jwks", func(c *m2mauth.RemoteKeysConfig) { c.RefreshCooldown = 10 * time.Millisecond }, false},
		{"negative MaxStale means none", "https://auth.example.com/jwks", func(c *m2mauth.RemoteKeysConfig) { c.MaxStale = -1 }, true},
		{"test server", srv.jwksURL(), nil, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := remoteConfig(newRemoteClock())
			if tc.edit != nil {
				tc.edit(&cfg)
			}
			rk, err := m2mauth.NewRemoteKeys(tc.url, cfg)
			if tc.ok {
				require.NoError(t, err)
				assert.NotNil(t, rk)
			} else {
				assert.Error(t, err)
				assert.Nil(t, rk)
			}
		})
	}
	assert.Zero(t, srv.hits.Load(), "construction does no I/O")
}

func TestRemoteKeysSigningKey(t *testing.T) {
	rk := newRemote(t, "https://auth.example.com/jwks", remoteConfig(newRemoteClock()))
	k, err := rk.SigningKey(t.Context())
	require.ErrorIs(t, err, m2mauth.ErrNoSigningKey)
	assert.Nil(t, k)
}

func TestRemoteKeysSteadyStateDoesNoIO(t *testing.T) {
	priv := remoteEC(t)
	srv := newRemoteServer(t, remoteSet(t, remoteJWK("k1", "ES256", &priv.PublicKey)))
	clock := newRemoteClock()
	rk := newRemote(t, srv.jwksURL(), remoteConfig(clock))

	first, err := rk.VerificationKeys(t.Context())
	require.NoError(t, err)
	require.Equal(t, []string{"k1"}, remoteKids(first))
	for i := range 10000 {
		if i%1000 == 0 {
			clock.Add(time.Second) // time passes, within the set's lifetime
		}
		set, err := rk.VerificationKeys(t.Context())
		require.NoError(t, err)
		require.Same(t, first, set)
		set, err = rk.RefreshKeys(t.Context(), "k1")
		require.NoError(t, err)
		require.Same(t, first, set)
	}
	assert.EqualValues(t, 1, srv.hits.Load())
}

func TestRemoteKeysFirstCallersShareOneFetch(t *testing.T) {
	priv := remoteEC(t)
	srv := newRemoteServer(t, remoteSet(t, remoteJWK("k1", "ES256", &priv.PublicKey)))
	rk := newRemote(t, srv.jwksURL(), remoteConfig(newRemoteClock()))

	var wg sync.WaitGroup
	sets := make([]*jose.JSONWebKeySet, 64)
	for i := range sets {
		wg.Go(func() {
			set, err := rk.VerificationKeys(context.Background())
			assert.NoError(t, err)
			sets[i] = set
		})
	}
	wg.Wait()
	assert.EqualValues(t, 1, srv.hits.Load())
	for _, s := range sets {
		assert.Same(t, sets[0], s)
	}
}

func TestRemoteKeysRotationByRefreshKeys(t *testing.T) {
	a, b := remoteEC(t), remoteEC(t)
	srv := newRemoteServer(t, remoteSet(t, remoteJWK("a", "ES256", &a.PublicKey)))
	clock := newRemoteClock()
	rk := newRemote(t, srv.jwksURL(), remoteConfig(clock))
	old, err := rk.VerificationKeys(t.Context())
	require.NoError(t, err)

	srv.serve(http.StatusOK, remoteSet(t, remoteJWK("a", "ES256", &a.PublicKey), remoteJWK("b", "ES256", &b.PublicKey)))

	// Within the cooldown of the first fetch nothing is fetched.
	clock.Add(29 * time.Second)
	set, err := rk.RefreshKeys(t.Context(), "b")
	require.NoError(t, err)
	assert.Same(t, old, set)
	assert.EqualValues(t, 1, srv.hits.Load())

	clock.Add(time.Second)
	set, err = rk.RefreshKeys(t.Context(), "b")
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b"}, remoteKids(set))
	assert.EqualValues(t, 2, srv.hits.Load())

	again, err := rk.RefreshKeys(t.Context(), "b")
	require.NoError(t, err)
	assert.Same(t, set, again)
	current, err := rk.VerificationKeys(t.Context())
	require.NoError(t, err)
	assert.Same(t, set, current)
	assert.EqualValues(t, 2, srv.hits.Load())
}

func TestRemoteKeysUnknownKidFloodCostsOneFetch(t *testing.T) {
	priv := remoteEC(t)
	srv := newRemoteServer(t, remoteSet(t, remoteJWK("k1", "ES256", &priv.PublicKey)))
	clock := newRemoteClock()
	rk := newRemote(t, srv.jwksURL(), remoteConfig(clock))
	first, err := rk.VerificationKeys(t.Context())
	require.NoError(t, err)

	flood := func() {
		var wg sync.WaitGroup
		var calls atomic.Int64
		for g := range 50 {
			wg.Go(func() {
				for i := range 200 {
					set, err := rk.RefreshKeys(context.Background(), fmt.Sprintf("forged-%d-%d-%x", g, i, time.Now().UnixNano()))
					calls.Add(1)
					if assert.NoError(t, err) {
						assert.Equal(t, first.Keys, set.Keys)
					}
				}
			})
		}
		wg.Wait()
		require.EqualValues(t, 10000, calls.Load())
	}

	flood() // within the first fetch's cooldown
	assert.EqualValues(t, 1, srv.hits.Load())
	clock.Add(30 * time.Second)
	flood() // one refresh allowed
	assert.EqualValues(t, 2, srv.hits.Load())
	flood() // its cooldown
	assert.EqualValues(t, 2, srv.hits.Load())
}

func TestRemoteKeysServerDownServesStaleUntilMaxStale(t *testing.T) {
	cases := []struct {
		name string
		down func(*remoteServer)
		idle bool // no call between the last good fetch and the expiry
	}{
		{"500", func(s *remoteServer) { s.serve(http.StatusInternalServerError, []byte("SECRET-ERROR-PAGE")) }, false},
		{"404", func(s *remoteServer) { s.serve(http.StatusNotFound, []byte("SECRET-ERROR-PAGE")) }, false},
		{"closed", func(s *remoteServer) { s.Close() }, false},
		{"500, idle past the expiry", func(s *remoteServer) { s.serve(http.StatusInternalServerError, []byte("SECRET-ERROR-PAGE")) }, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			priv := remoteEC(t)
			good := remoteSet(t, remoteJWK("k1", "ES256", &priv.PublicKey))
			srv := newRemoteServer(t, good)
			srv.cacheControl = "max-age=600"
			clock := newRemoteClock()
			logs := &remoteBuffer{}
			cfg := remoteConfig(clock)
			cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
			rk := newRemote(t, srv.jwksURL(), cfg)
			set, err := rk.VerificationKeys(t.Context())
			require.NoError(t, err)
			st := rk.Status()
			require.Equal(t, clock.Now().Add(10*time.Minute), st.Expires)
			require.Equal(t, st.Expires.Add(24*time.Hour), st.StaleUntil)

			tc.down(srv)

			if tc.idle {
				// Past expiry, after a good fetch: the set is fetched
				// again, and the call waits; the fetch fails, so the
				// last good set is served.
				at := clock.Add(10*time.Minute + time.Second)
				got, err := rk.VerificationKeys(t.Context())
				require.NoError(t, err)
				assert.Same(t, set, got)
				st = rk.Status()
				assert.Equal(t, at, st.LastAttempt)
				require.Error(t, st.LastError)
			} else {
				// Shortly before expiry: the set is returned at once
				// and a refresh starts in the background; it fails.
				at := clock.Add(9*time.Minute + 30*time.Second)
				got, err := rk.VerificationKeys(t.Context())
				require.NoError(t, err)
				assert.Same(t, set, got)
				st = remoteWaitAttempt(t, rk, at, true)
			}
			assert.Equal(t, []string{"k1"}, st.KeyIDs)

			// Expired, but within MaxStale: still served.
			for _, d := range []time.Duration{time.Hour, 12 * time.Hour, 10*time.Hour + 29*time.Minute} {
				at := clock.Add(d)
				got, err := rk.VerificationKeys(t.Context())
				require.NoError(t, err)
				assert.Same(t, set, got)
				got, err = rk.RefreshKeys(t.Context(), "unknown")
				require.NoError(t, err)
				assert.Same(t, set, got)
				remoteWaitAttempt(t, rk, at, true)
			}
			require.True(t, clock.Now().Before(st.StaleUntil))

			// Past MaxStale: refused, and the validator fails closed.
			clock.Add(time.Hour)
			require.True(t, clock.Now().After(st.StaleUntil))
			_, err = rk.VerificationKeys(t.Context())
			require.ErrorIs(t, err, m2mauth.ErrKeysUnavailable)
			assert.NotContains(t, err.Error(), "SECRET")
			_, err = rk.RefreshKeys(t.Context(), "k1")
			require.ErrorIs(t, err, m2mauth.ErrKeysUnavailable)

			assert.Contains(t, logs.String(), "JWKS fetch failed")
			assert.NotContains(t, logs.String(), "SECRET")

			if tc.name == "closed" {
				return
			}
			// Back up: the next call after the cooldown fetches again.
			srv.serve(http.StatusOK, good)
			clock.Add(30 * time.Second)
			got, err := rk.VerificationKeys(t.Context())
			require.NoError(t, err)
			assert.Same(t, set, got, "the same keys keep their pointer")
			assert.Nil(t, rk.Status().LastError)
		})
	}
}

func TestRemoteKeysFailedFirstFetch(t *testing.T) {
	priv := remoteEC(t)
	srv := newRemoteServer(t, nil)
	srv.serve(http.StatusServiceUnavailable, nil)
	clock := newRemoteClock()
	rk := newRemote(t, srv.jwksURL(), remoteConfig(clock))

	_, err := rk.VerificationKeys(t.Context())
	require.ErrorIs(t, err, m2mauth.ErrKeysUnavailable)
	assert.Contains(t, err.Error(), "503")
	// Within the cooldown, callers get the error without a fetch.
	for range 100 {
		_, err = rk.VerificationKeys(t.Context())
		require.ErrorIs(t, err, m2mauth.ErrKeysUnavailable)
		_, err = rk.RefreshKeys(t.Context(), "k1")
		require.ErrorIs(t, err, m2mauth.ErrKeysUnavailable)
	}
	assert.EqualValues(t, 1, srv.hits.Load())

	srv.serve(http.StatusOK, remoteSet(t, remoteJWK("k1", "ES256", &priv.PublicKey)))
	clock.Add(30 * time.Second)
	set, err := rk.VerificationKeys(t.Context())
	require.NoError(t, err)
	assert.Equal(t, []string{"k1"}, remoteKids(set))
	assert.EqualValues(t, 2, srv.hits.Load())
}

func TestRemoteKeysSlowServerTimesOut(t *testing.T) {
	srv := newRemoteServer(t, nil)
	srv.stall = true
	cfg := remoteConfig(newRemoteClock())
	cfg.Timeout = 100 * time.Millisecond
	rk := newRemote(t, srv.jwksURL(), cfg)

	start := time.Now()
	_, err := rk.VerificationKeys(t.Context())
	require.ErrorIs(t, err, m2mauth.ErrKeysUnavailable)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 3*time.Second)

	// A caller's own deadline ends its wait sooner.
	cfg.Timeout = time.Second
	rk = newRemote(t, srv.jwksURL(), cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = rk.VerificationKeys(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 3*time.Second)
}

func TestRemoteKeysRefusesBadResponses(t *testing.T) {
	good, other := remoteEC(t), remoteEC(t)
	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	goodKey := remoteMarshal(t, remoteJWK("good", "ES256", &good.PublicKey), nil)
	huge := append(append(bytes.Repeat([]byte(" "), 10<<20), remoteRaw(goodKey)...), '\n')

	cases := []struct {
		name   string
		status int
		body   []byte
		want   string
		// drops: an answer that leaves nothing to trust, so the set
		// held before is dropped; the others keep it.
		drops bool
	}{
		{"10 MiB body", 200, huge, "larger than 65536 bytes", false},
		{"body just over the bound", 200, append(bytes.Repeat([]byte(" "), 64<<10), remoteRaw(goodKey)...), "larger than", false},
		{"status 500", 500, remoteRaw(goodKey), "500", false},
		{"status 302 without Location", 302, remoteRaw(goodKey), "302", false},
		{"not JSON", 200, []byte("<html>login</html>"), "not a JWK Set", false},
		{"JSON array", 200, []byte(`[` + goodKey + `]`), "not a JWK Set", false},
		{"keys not an array", 200, []byte(`{"keys":{"kty":"EC"}}`), "not a JWK Set", false},
		{"no keys member", 200, []byte(`{}`), `no "keys"`, false},
		{"keys null", 200, []byte(`{"keys":null}`), `no "keys"`, false},
		{"empty set", 200, remoteRaw(), "no usable key", true},
		{"EC private key", 200, remoteSet(t, remoteJWK("good", "ES256", &good.PublicKey), remoteJWK("leak", "ES256", other)), "private key material", true},
		{"Ed25519 private key", 200, remoteSet(t, remoteJWK("good", "ES256", &good.PublicKey), remoteJWK("leak", "EdDSA", edPriv)), "private key material", true},
		{"RSA prime", 200, remoteRaw(goodKey, remoteMarshal(t, remoteJWK("rsa", "ES256", &other.PublicKey), map[string]any{"p": "AQAB"})), "private key material", true},
		{"private member null", 200, remoteRaw(goodKey, remoteMarshal(t, remoteJWK("x", "ES256", &other.PublicKey), map[string]any{"d": json.RawMessage("null")})), "private key material", true},
		{"HS256 oct key", 200, remoteSet(t, remoteJWK("good", "ES256", &good.PublicKey), remoteJWK("hmac", "HS256", []byte("0123456789abcdef0123456789abcdef"))), "symmetric", true},
		{"only unusable keys", 200, remoteRaw(remoteMarshal(t, remoteJWK("", "ES256", &good.PublicKey), nil)), "no usable key", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// At first use: refused, nothing to serve.
			srv := newRemoteServer(t, tc.body)
			srv.serve(tc.status, tc.body)
			clock := newRemoteClock()
			logs := &remoteBuffer{}
			cfg := remoteConfig(clock)
			cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
			rk := newRemote(t, srv.jwksURL(), cfg)
			_, err := rk.VerificationKeys(t.Context())
			require.ErrorIs(t, err, m2mauth.ErrKeysUnavailable)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), "login")
			assert.NotContains(t, logs.String(), "login")

			// After a good set: refused; the good set kept, or, when the
			// answer leaves nothing to trust, dropped (fail closed).
			srv.serve(http.StatusOK, remoteRaw(goodKey))
			clock.Add(30 * time.Second)
			set, err := rk.VerificationKeys(t.Context())
			require.NoError(t, err)
			require.Equal(t, []string{"good"}, remoteKids(set))
			srv.serve(tc.status, tc.body)
			clock.Add(30 * time.Second)
			got, err := rk.RefreshKeys(t.Context(), "leak")
			if tc.drops {
				require.ErrorIs(t, err, m2mauth.ErrKeysUnavailable)
			} else {
				require.NoError(t, err)
				assert.Same(t, set, got)
			}
			assert.Contains(t, rk.Status().LastError.Error(), tc.want)
			got, err = rk.VerificationKeys(t.Context())
			if tc.drops {
				require.ErrorIs(t, err, m2mauth.ErrKeysUnavailable)
				assert.Contains(t, err.Error(), tc.want)
			} else {
				require.NoError(t, err)
				assert.Same(t, set, got)
			}
			assert.EqualValues(t, 3, srv.hits.Load(), "no fetch within the cooldown")
		})
	}
}

func TestRemoteKeysKeyFilter(t *testing.T) {
	rsaKey, err := remoteRSA()
	require.NoError(t, err)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	ec := remoteEC(t)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	require.NoError(t, err)
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)

	body := remoteRaw(
		remoteMarshal(t, remoteJWK("ec-no-alg", "", &ec.PublicKey), nil),
		remoteMarshal(t, remoteJWK("ed-no-alg", "", edPub), map[string]any{"use": nil}),
		remoteMarshal(t, remoteJWK("rsa-rs256", "RS256", &rsaKey.PublicKey), nil),
		remoteMarshal(t, remoteJWK("rsa-ps256", "PS256", &rsaKey.PublicKey), map[string]any{"key_ops": []string{"verify"}}),
		remoteMarshal(t, remoteJWK("rsa-no-alg", "", &rsaKey.PublicKey), nil),
		remoteMarshal(t, remoteJWK("rsa-rs512", "RS512", &rsaKey.PublicKey), nil),
		remoteMarshal(t, remoteJWK("rsa-1024", "RS256", &small.PublicKey), nil),
		remoteMarshal(t, remoteJWK("p384", "ES384", &p384.PublicKey), nil),
		remoteMarshal(t, remoteJWK("ec-as-rs256", "RS256", &ec.PublicKey), nil),
		remoteMarshal(t, remoteJWK("ec-as-hs256", "HS256", &ec.PublicKey), nil),
		remoteMarshal(t, remoteJWK("ed-as-es256", "ES256", edPub), nil),
		remoteMarshal(t, remoteJWK("enc", "ES256", &ec.PublicKey), map[string]any{"use": "enc"}),
		remoteMarshal(t, remoteJWK("ops", "ES256", &ec.PublicKey), map[string]any{"key_ops": []string{"encrypt"}}),
		remoteMarshal(t, remoteJWK("", "ES256", &ec.PublicKey), nil),
		remoteMarshal(t, remoteJWK("ec-no-alg", "ES256", &ec.PublicKey), nil), // duplicate kid
		`{"kty":"XYZ","kid":"unknown-type"}`,
		`{"kty":"OKP","crv":"X25519","kid":"x25519","x":"hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"}`,
		`{"kty":"EC","crv":"P-256","kid":"off-curve","x":"AQ","y":"AQ"}`,
		`"not an object"`,
	)
	srv := newRemoteServer(t, body)
	logs := &remoteBuffer{}
	cfg := remoteConfig(newRemoteClock())
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	rk := newRemote(t, srv.jwksURL(), cfg)
	set, err := rk.VerificationKeys(t.Context())
	require.NoError(t, err)

	got := map[string]string{}
	for _, k := range set.Keys {
		got[k.KeyID] = k.Algorithm
		assert.True(t, k.IsPublic(), k.KeyID)
	}
	assert.Equal(t, map[string]string{
		"ec-no-alg": "ES256",
		"ed-no-alg": "EdDSA",
		"rsa-rs256": "RS256",
		"rsa-ps256": "PS256",
	}, got)
	for _, dropped := range []string{"rsa-no-alg", "rsa-rs512", "rsa-1024", "p384", "ec-as-rs256", "ec-as-hs256", "ed-as-es256", "enc", "ops", "unknown-type", "x25519", "off-curve", "already used"} {
		assert.Contains(t, logs.String(), dropped)
	}
}

func TestRemoteKeysMaxAge(t *testing.T) {
	cases := []struct {
		cacheControl, age string
		want              time.Duration
	}{
		{"", "", 10 * time.Minute},
		{"max-age=0", "", time.Second},
		{"max-age=5", "", 5 * time.Second},
		{"max-age=300", "", 5 * time.Minute},
		{"public, max-age=300, must-revalidate", "", 5 * time.Minute},
		{`Max-Age="300"`, "", 5 * time.Minute},
		{"max-age=172800", "", 24 * time.Hour},
		{"max-age=99999999999999999999", "", 24 * time.Hour},
		{"max-age=600", "120", 8 * time.Minute},
		{"max-age=600", "3600", time.Second},
		{"max-age=600", "junk", 10 * time.Minute},
		{"max-age=300, max-age=120", "", 2 * time.Minute},
		{"no-store", "", time.Second},
		{"no-cache, max-age=3600", "", time.Second},
		{"max-age=-5", "", 10 * time.Minute},
		{"max-age=abc", "", 10 * time.Minute},
		{"s-maxage=3600", "", 10 * time.Minute},
	}
	priv := remoteEC(t)
	body := remoteSet(t, remoteJWK("k1", "ES256", &priv.PublicKey))
	for _, tc := range cases {
		t.Run(tc.cacheControl+"/"+tc.age, func(t *testing.T) {
			srv := newRemoteServer(t, body)
			srv.cacheControl, srv.age = tc.cacheControl, tc.age
			clock := newRemoteClock()
			rk := newRemote(t, srv.jwksURL(), remoteConfig(clock))
			_, err := rk.VerificationKeys(t.Context())
			require.NoError(t, err)
			st := rk.Status()
			assert.Equal(t, clock.Now(), st.FetchedAt)
			assert.Equal(t, tc.want, st.Expires.Sub(st.FetchedAt))
		})
	}
}

func TestRemoteKeysBackgroundRefresh(t *testing.T) {
	a, b := remoteEC(t), remoteEC(t)
	srv := newRemoteServer(t, remoteSet(t, remoteJWK("a", "ES256", &a.PublicKey)))
	srv.cacheControl = "max-age=600"
	clock := newRemoteClock()
	rk := newRemote(t, srv.jwksURL(), remoteConfig(clock))
	first, err := rk.VerificationKeys(t.Context())
	require.NoError(t, err)

	// Until a minute before expiry, nothing is fetched.
	clock.Add(8*time.Minute + 59*time.Second)
	for range 1000 {
		got, err := rk.VerificationKeys(t.Context())
		require.NoError(t, err)
		require.Same(t, first, got)
	}
	require.EqualValues(t, 1, srv.hits.Load())

	// Then the first call starts one refresh; the same keys keep their
	// pointer.
	at := clock.Add(time.Second)
	for range 1000 {
		got, err := rk.VerificationKeys(t.Context())
		require.NoError(t, err)
		require.Same(t, first, got)
	}
	st := remoteWaitAttempt(t, rk, at, false)
	assert.Equal(t, at, st.FetchedAt)
	assert.Equal(t, at.Add(10*time.Minute), st.Expires)
	assert.EqualValues(t, 2, srv.hits.Load())
	got, err := rk.VerificationKeys(t.Context())
	require.NoError(t, err)
	assert.Same(t, first, got)

	// A rotation on the server is picked up by the next refresh.
	srv.serve(http.StatusOK, remoteSet(t, remoteJWK("b", "ES256", &b.PublicKey)))
	at = clock.Add(9 * time.Minute)
	_, err = rk.VerificationKeys(t.Context())
	require.NoError(t, err)
	remoteWaitAttempt(t, rk, at, false)
	got, err = rk.VerificationKeys(t.Context())
	require.NoError(t, err)
	assert.Equal(t, []string{"b"}, remoteKids(got))
	assert.EqualValues(t, 3, srv.hits.Load())
}

func TestRemoteKeysRedirects(t *testing.T) {
	priv := remoteEC(t)
	body := remoteSet(t, remoteJWK("k1", "ES256", &priv.PublicKey))
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path == "/away" {
			http.Redirect(w, r, "http://keys.example.com/jwks", http.StatusFound)
			return
		}
		if n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/hop/")); err == nil && n > 0 {
			http.Redirect(w, r, "/hop/"+strconv.Itoa(n-1), http.StatusFound)
			return
		}
		_, _ = w.Write(body)
	}))
	defer srv.Close()

	cases := []struct {
		path string
		ok   bool
	}{
		{"/hop/0", true},
		{"/hop/3", true},
		{"/hop/4", false},
		{"/away", false},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			rk := newRemote(t, srv.URL+tc.path, remoteConfig(newRemoteClock()))
			_, err := rk.VerificationKeys(t.Context())
			if tc.ok {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, m2mauth.ErrKeysUnavailable)
			}
		})
	}
}

func TestRemoteKeysDiscover(t *testing.T) {
	priv := remoteEC(t)
	jwks := remoteSet(t, remoteJWK("k1", "ES256", &priv.PublicKey))

	type meta = map[string]any
	cases := []struct {
		name     string
		issuer   string // appended to the server URL
		metadata func(base string) any
		wantPath string // the metadata request's path
		err      string
	}{
		{"root issuer", "", func(base string) any { return meta{"issuer": base, "jwks_uri": base + "/jwks"} }, "/.well-known/oauth-authorization-server", ""},
		{"path inserted", "/tenant1", func(base string) any { return meta{"issuer": base + "/tenant1", "jwks_uri": base + "/jwks"} }, "/.well-known/oauth-authorization-server/tenant1", ""},
		{"trailing slash removed", "/tenant1/", func(base string) any { return meta{"issuer": base + "/tenant1/", "jwks_uri": base + "/jwks"} }, "/.well-known/oauth-authorization-server/tenant1", ""},
		{"escaped path kept", "/tenant%20one", func(base string) any { return meta{"issuer": base + "/tenant%20one", "jwks_uri": base + "/jwks"} }, "/.well-known/oauth-authorization-server/tenant one", ""},
		{"issuer mismatch", "/tenant1", func(base string) any { return meta{"issuer": base + "/tenant2", "jwks_uri": base + "/jwks"} }, "/.well-known/oauth-authorization-server/tenant1", "names issuer"},
		{"issuer differs by a slash", "", func(base string) any { return meta{"issuer": base + "/", "jwks_uri": base + "/jwks"} }, "/.well-known/oauth-authorization-server", "names issuer"},
		{"issuer missing", "", func(base string) any { return meta{"jwks_uri": base + "/jwks"} }, "/.well-known/oauth-authorization-server", "names issuer none"},
		{"jwks_uri missing", "", func(base string) any { return meta{"issuer": base} }, "/.well-known/oauth-authorization-server", "no jwks_uri"},
		{"jwks_uri over http", "", func(base string) any { return meta{"issuer": base, "jwks_uri": "http://keys.example.com/jwks"} }, "/.well-known/oauth-authorization-server", "not https"},
		{"jwks_uri relative", "", func(base string) any { return meta{"issuer": base, "jwks_uri": "/jwks"} }, "/.well-known/oauth-authorization-server", "absolute"},
		{"not JSON", "", func(string) any { return "<html>" }, "/.well-known/oauth-authorization-server", "malformed"},
		{"issuer not a string", "", func(string) any { return meta{"issuer": 7} }, "/.well-known/oauth-authorization-server", "malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var mdPath atomic.Value
			var srv *httptest.Server
			srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/jwks" {
					_, _ = w.Write(jwks)
					return
				}
				mdPath.Store(r.URL.Path)
				md := tc.metadata(srv.URL)
				if s, ok := md.(string); ok {
					_, _ = w.Write([]byte(s))
					return
				}
				_ = json.NewEncoder(w).Encode(md)
			}))
			defer srv.Close()

			rk, err := m2mauth.DiscoverRemoteKeys(t.Context(), srv.URL+tc.issuer, remoteConfig(newRemoteClock()))
			assert.Equal(t, tc.wantPath, mdPath.Load())
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				assert.Nil(t, rk)
				return
			}
			require.NoError(t, err)
			set, err := rk.VerificationKeys(t.Context())
			require.NoError(t, err)
			assert.Equal(t, []string{"k1"}, remoteKids(set))
		})
	}
}

// remoteNoNetwork is an HTTP transport that fails the test if used.
type remoteNoNetwork struct{ t *testing.T }

func (n remoteNoNetwork) RoundTrip(r *http.Request) (*http.Response, error) {
	n.t.Errorf("unexpected request to %s", r.URL)
	return nil, errors.New("no network in this test")
}

func TestRemoteKeysDiscoverRefusesBeforeIO(t *testing.T) {
	cases := []struct{ name, issuer string }{
		{"http", "http://auth.example.com"},
		{"query", "https://auth.example.com/?tenant=1"},
		{"fragment", "https://auth.example.com/#x"},
		{"relative", "auth.example.com"},
		{"empty", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := remoteConfig(newRemoteClock())
			cfg.HTTPClient = &http.Client{Transport: remoteNoNetwork{t}}
			rk, err := m2mauth.DiscoverRemoteKeys(t.Context(), tc.issuer, cfg)
			assert.Error(t, err)
			assert.Nil(t, rk)
		})
	}
}

func TestRemoteKeysDiscoverBounded(t *testing.T) {
	stall := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/oauth-authorization-server/slow":
			select {
			case <-r.Context().Done():
			case <-stall:
			}
		case "/.well-known/oauth-authorization-server/huge":
			_, _ = w.Write(bytes.Repeat([]byte(" "), 1<<20))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	defer close(stall)

	cfg := remoteConfig(newRemoteClock())
	cfg.Timeout = 100 * time.Millisecond
	start := time.Now()
	_, err := m2mauth.DiscoverRemoteKeys(t.Context(), srv.URL+"/slow", cfg)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 3*time.Second)

	_, err = m2mauth.DiscoverRemoteKeys(t.Context(), srv.URL+"/huge", cfg)
	require.ErrorContains(t, err, "larger than")

	_, err = m2mauth.DiscoverRemoteKeys(t.Context(), srv.URL+"/missing", cfg)
	require.ErrorContains(t, err, "404")
}

// TestRemoteKeysEndToEnd signs tokens with go-jose and verifies them with
// the keys RemoteKeys fetched.
func TestRemoteKeysEndToEnd(t *testing.T) {
	ec := remoteEC(t)
	edPub, edPriv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	cases := []struct {
		name string
		alg  jose.SignatureAlgorithm
		priv any
		pub  any
	}{
		{"ES256", jose.ES256, ec, &ec.PublicKey},
		{"EdDSA", jose.EdDSA, edPriv, edPub},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Published without alg: inferred for these key types.
			srv := newRemoteServer(t, remoteSet(t, remoteJWK("2026-11", "", tc.pub)))
			rk := newRemote(t, srv.jwksURL(), remoteConfig(newRemoteClock()))

			sign := func(priv any, kid string) string {
				opts := (&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", kid)
				s, err := jose.NewSigner(jose.SigningKey{Algorithm: tc.alg, Key: priv}, opts)
				require.NoError(t, err)
				tok, err := jwt.Signed(s).Claims(map[string]any{"iss": "https://auth.example.com", "sub": "svc", "scope": "read:builders"}).Serialize()
				require.NoError(t, err)
				return tok
			}
			verify := func(raw string) (map[string]any, error) {
				set, err := rk.VerificationKeys(t.Context())
				if err != nil {
					return nil, err
				}
				tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{tc.alg})
				if err != nil {
					return nil, err
				}
				keys := set.Key(tok.Headers[0].KeyID)
				if len(keys) != 1 || keys[0].Algorithm != string(tc.alg) {
					return nil, errors.New("no key for this kid and alg")
				}
				var claims map[string]any
				return claims, tok.Claims(&keys[0], &claims)
			}

			claims, err := verify(sign(tc.priv, "2026-11"))
			require.NoError(t, err)
			assert.Equal(t, "read:builders", claims["scope"])

			var forged any = remoteEC(t)
			if tc.alg == jose.EdDSA {
				_, forged, _ = ed25519.GenerateKey(rand.Reader)
			}
			_, err = verify(sign(forged, "2026-11"))
			assert.Error(t, err, "a token signed by another key")
			_, err = verify(sign(forged, "unknown"))
			assert.Error(t, err)
		})
	}
}

// ExampleRemoteKeys verifies, in a resource server, tokens signed by an
// authorization server in another process, with the keys it publishes.
func ExampleRemoteKeys() {
	// Stands in for the authorization server's JWKS endpoint.
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &priv.PublicKey, KeyID: "2026-11", Algorithm: "ES256", Use: "sig"},
	}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Header().Set("Cache-Control", "max-age=3600")
		_, _ = w.Write(jwks)
	}))
	defer srv.Close()

	// https only, except on loopback hosts like this test server. With
	// discovery: m2mauth.DiscoverRemoteKeys(ctx, "https://auth.example.com", cfg).
	keys, err := m2mauth.NewRemoteKeys(srv.URL+"/jwks", m2mauth.RemoteKeysConfig{
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	// Hand keys to m2mauth.NewValidator; it calls VerificationKeys (the
	// first call fetches) and RefreshKeys for a kid it does not know.
	set, err := keys.VerificationKeys(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	for _, k := range set.Keys {
		fmt.Println(k.KeyID, k.Algorithm, k.IsPublic())
	}
	st := keys.Status()
	fmt.Println("fresh for", st.Expires.Sub(st.FetchedAt))
	_, err = keys.SigningKey(context.Background())
	fmt.Println(errors.Is(err, m2mauth.ErrNoSigningKey))
	// Output:
	// 2026-11 ES256 true
	// fresh for 1h0m0s
	// true
}

// TestValidatorWithRemoteKeys runs the fleet end to end: an authorization
// server signing with ES256 and publishing its JWKS, and a resource
// server's Validator holding only RemoteKeys. The resource server starts
// while the authorization server is down and refuses tokens until keys
// arrive; a key rotation is picked up by one fetch; forged kids cost at
// most one fetch per cooldown; a set offering an HS256 key is refused
// (RFC 8725 §3.1: a symmetric key from a remote set would let anyone who
// read it mint tokens).
func TestValidatorWithRemoteKeys(t *testing.T) {
	clock := newRemoteClock()
	ctx := context.Background()
	store := memstore.New()
	plain, sec, err := m2mauth.NewSecret(clock.Now(), time.Time{})
	require.NoError(t, err)
	require.NoError(t, store.CreateClient(ctx, &m2mauth.Client{ID: "svc", Secrets: []m2mauth.Secret{sec},
		Grants: map[string]m2mauth.Scopes{"https://api.example.com": {"read"}}}))
	first, err := m2mauth.GenerateSigningKey(jose.ES256)
	require.NoError(t, err)

	// The authorization server: its keys can change while it runs.
	var keys atomic.Pointer[m2mauth.StaticKeys]
	setKeys := func(signing jose.JSONWebKey, previous ...jose.JSONWebKey) {
		k, err := m2mauth.NewStaticKeys(signing, previous...)
		require.NoError(t, err)
		keys.Store(k)
	}
	setKeys(first)
	var down atomic.Bool
	var fetches atomic.Int64
	jwksBody := func() []byte {
		h, err := m2mauth.NewJWKSHandler(keys.Load(), m2mauth.JWKSConfig{})
		require.NoError(t, err)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/jwks", nil))
		return w.Body.Bytes()
	}
	var override atomic.Pointer[[]byte]
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		body := jwksBody()
		if o := override.Load(); o != nil {
			body = *o
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Write(body)
	}))
	defer as.Close()
	mint := func() string {
		h, err := m2mauth.NewTokenHandler(store, keys.Load(), m2mauth.TokenHandlerConfig{
			Issuer: "https://auth.example.com", DefaultAudience: "https://api.example.com", Now: clock.Now,
			Auditor: m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {}),
		})
		require.NoError(t, err)
		r := httptest.NewRequest(http.MethodPost, "https://auth.example.com/oauth/token", strings.NewReader("grant_type=client_credentials"))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.SetBasicAuth("svc", plain)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		require.Equal(t, 200, w.Code, w.Body.String())
		var resp struct {
			AccessToken string `json:"access_token"`
		}
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &resp))
		return resp.AccessToken
	}

	// The resource server starts while the authorization server is down.
	down.Store(true)
	remote := newRemote(t, as.URL+"/jwks", remoteConfig(clock))
	v, err := m2mauth.NewValidator(remote, m2mauth.ValidatorConfig{Issuer: "https://auth.example.com", Audience: "https://api.example.com", Now: clock.Now})
	require.NoError(t, err, "no I/O at construction")
	route := v.RequireScopes("read")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	call := func(tok string) int {
		r := httptest.NewRequest(http.MethodGet, "/api", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		w := httptest.NewRecorder()
		route.ServeHTTP(w, r)
		return w.Code
	}
	tok := mint()
	assert.Equal(t, 500, call(tok), "no keys yet: refused, fail closed")

	down.Store(false)
	clock.Add(31 * time.Second) // past the cooldown after the failed fetch
	assert.Equal(t, 200, call(tok))
	n := fetches.Load()
	for range 100 {
		require.Equal(t, 200, call(tok))
	}
	assert.Equal(t, n, fetches.Load(), "steady state: no fetch per request")

	// Rotation: a new signing key, the old one still published.
	clock.Add(31 * time.Second)
	second, err := m2mauth.GenerateSigningKey(jose.EdDSA)
	require.NoError(t, err)
	setKeys(second, first)
	newTok := mint()
	assert.Equal(t, 200, call(newTok), "the new kid is fetched")
	assert.Equal(t, n+1, fetches.Load(), "by one fetch")
	assert.Equal(t, 200, call(tok), "the old key still verifies")

	// Forged kids: at most one fetch per cooldown.
	parts := strings.SplitN(newTok, ".", 2)
	n = fetches.Load()
	for i := range 1000 {
		hdr := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"alg":"EdDSA","kid":"forged-%d","typ":"at+jwt"}`, i)))
		require.Equal(t, 401, call(hdr+"."+parts[1]))
	}
	assert.LessOrEqual(t, fetches.Load()-n, int64(1))

	// A set offering an HS256 key is refused whole, and shows the
	// server broken: the last good set is dropped too, and every token
	// refused (500: the fault is the server's) until usable keys return.
	oct := []byte(`{"keys":[{"kty":"oct","kid":"h","alg":"HS256","k":"` + base64.RawURLEncoding.EncodeToString(make([]byte, 32)) + `"}]}`)
	override.Store(&oct)
	clock.Add(31 * time.Second)
	hsKey, err := m2mauth.NewHS256Key("h", make([]byte, 32))
	require.NoError(t, err)
	setKeys(hsKey)
	assert.Equal(t, 500, call(mint()), "an HS256 token is not verified with a key from a remote set")
	assert.Equal(t, 500, call(newTok), "the last good set is dropped")
	override.Store(nil)
	clock.Add(31 * time.Second)
	setKeys(second, first)
	assert.Equal(t, 200, call(newTok), "back once the server publishes usable keys")
}

// TestValidatorCallerGoneWhileKeysFetched: a caller that hangs up while
// RequireScopes waits for the key set is no failure of the server's: the
// interrupted fetch is audited as ReasonCanceled and counted with
// m2mauth.requests.canceled, as the token handler does, not as a
// server_error validation, while a key set that is unavailable to a
// caller who waits is still a server_error (RFC 6750 §3.1 defines no
// code for it; no challenge).
func TestValidatorCallerGoneWhileKeysFetched(t *testing.T) {
	for _, tt := range []struct {
		name        string
		hangUp      bool
		code, event string
		metric      string
		value       map[string]int64
	}{
		{"the caller hangs up", true, "", m2mauth.CodeTemporarilyUnavailable, "m2mauth.requests.canceled", map[string]int64{"": 1}},
		{"the key server fails", false, "500", m2mauth.CodeServerError, "m2mauth.validations", map[string]int64{"m2mauth.validation.result=server_error": 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			release, fetching := make(chan struct{}), make(chan struct{}, 1)
			jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !tt.hangUp {
					http.Error(w, "down", http.StatusInternalServerError)
					return
				}
				select {
				case fetching <- struct{}{}:
				default:
				}
				select { // until the test ends
				case <-release:
				case <-r.Context().Done():
				}
			}))
			defer jwks.Close()
			defer close(release)
			m, reader := newTestMetrics(t, m2mauth.MetricsConfig{})
			var mu sync.Mutex
			var events []m2mauth.AuditEvent
			v, err := m2mauth.NewValidator(newRemote(t, jwks.URL, m2mauth.RemoteKeysConfig{Logger: slog.New(slog.DiscardHandler)}), m2mauth.ValidatorConfig{
				Issuer: "https://issuer.test", Audience: "https://api.test",
				Auditor: m.Auditor(m2mauth.AuditorFunc(func(_ context.Context, e m2mauth.AuditEvent) {
					mu.Lock()
					defer mu.Unlock()
					events = append(events, e)
				})),
			})
			require.NoError(t, err)
			api := v.RequireScopes("read")(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("reached") }))
			var hangUp <-chan struct{}
			if tt.hangUp {
				hangUp = fetching // once the validator waits for the keys
			}
			resp, err := getHangingUp(t, api, "Bearer eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.e30.c2ln", hangUp, make(chan struct{}))
			if tt.hangUp {
				require.ErrorIs(t, err, context.Canceled)
			} else {
				require.NoError(t, err)
				assert.Equal(t, tt.code, strconv.Itoa(resp.StatusCode))
				assert.Empty(t, resp.Header.Get("WWW-Authenticate"))
			}
			mu.Lock()
			defer mu.Unlock()
			require.Len(t, events, 1)
			assert.Equal(t, m2mauth.EventTokenRejected, events[0].Type)
			assert.Equal(t, tt.event, events[0].Error)
			got := collect(t, reader)
			assert.Equal(t, tt.value, got.values(tt.metric))
			if tt.hangUp {
				assert.Equal(t, m2mauth.ReasonCanceled, events[0].Reason)
				assert.Empty(t, got.values("m2mauth.validations"))
			}
		})
	}
}

// TestRemoteKeysCooldownLongerThanLifetime: a RefreshCooldown longer than
// a set's lifetime must neither refuse tokens nor keep an expired set
// while the server answers: the set is fetched again once it expires, no
// more often. A fetch that fails puts the cooldown back in force.
func TestRemoteKeysCooldownLongerThanLifetime(t *testing.T) {
	tests := []struct {
		name            string
		cacheControl    string
		cooldown, stale time.Duration
		lifetime        time.Duration // the set's lifetime: one fetch each
		usable          time.Duration // the set's lifetime plus MaxStale
	}{
		{"never stale", "max-age=300", 10 * time.Minute, -1, 5 * time.Minute, 5 * time.Minute},
		{"a little stale", "max-age=60", time.Hour, 30 * time.Second, time.Minute, 90 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			clock := newRemoteClock()
			srv := newRemoteServer(t, remoteSet(t, remoteJWK("k1", "ES256", &remoteEC(t).PublicKey)))
			srv.cacheControl = tc.cacheControl
			cfg := remoteConfig(clock)
			cfg.RefreshCooldown, cfg.MaxStale = tc.cooldown, tc.stale
			rk := newRemote(t, srv.jwksURL(), cfg)
			_, err := rk.VerificationKeys(ctx)
			require.NoError(t, err)

			const steps = 30
			for i := 1; i <= steps; i++ {
				clock.Add(time.Minute)
				_, err := rk.VerificationKeys(ctx)
				require.NoError(t, err, "t+%dm, the server answering", i)
			}
			assert.LessOrEqual(t, srv.hits.Load(), int64(steps*time.Minute/tc.lifetime)+1, "one fetch per lifetime")

			// The server fails: the stale set is tried once, then the
			// cooldown holds.
			srv.serve(http.StatusInternalServerError, []byte("{}"))
			clock.Add(tc.usable)
			_, err = rk.VerificationKeys(ctx)
			require.ErrorIs(t, err, m2mauth.ErrKeysUnavailable)
			hits := srv.hits.Load()
			for range 5 {
				clock.Add(tc.cooldown / 10)
				_, err = rk.VerificationKeys(ctx)
				require.ErrorIs(t, err, m2mauth.ErrKeysUnavailable)
			}
			assert.Equal(t, hits, srv.hits.Load(), "no fetch within the cooldown after a failure")
		})
	}
}

// TestRemoteFetchesBoundHeaders: the default clients of RemoteKeys and
// RemoteRevocations refuse a response whose headers pass 64 KiB, which a
// hostile server could otherwise make cost some 64 MiB a fetch; headers
// within the bound are read as usual.
func TestRemoteFetchesBoundHeaders(t *testing.T) {
	good := remoteEC(t)
	set := remoteRaw(remoteMarshal(t, remoteJWK("good", "ES256", &good.PublicKey), nil))
	list := listDoc(t, time.Now(), nil)
	for _, tc := range []struct {
		name   string
		header int
		ok     bool
	}{
		{"32 KiB of headers", 32 << 10, true},
		{"1 MiB of headers", 1 << 20, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Padding", strings.Repeat("x", tc.header))
				if strings.HasSuffix(r.URL.Path, "/revocations") {
					w.Header().Set("Content-Type", "application/jwt")
					w.Write([]byte(list))
					return
				}
				w.Header().Set("Content-Type", "application/jwk-set+json")
				w.Write(set)
			}))
			defer srv.Close()

			rk := newRemote(t, srv.URL+"/jwks.json", m2mauth.RemoteKeysConfig{Logger: slog.New(slog.DiscardHandler)})
			_, err := rk.VerificationKeys(t.Context())
			feed, ferr := m2mauth.NewRemoteRevocations(srv.URL+"/revocations", listVerifier(), m2mauth.RemoteRevocationsConfig{Issuer: testIssuer})
			require.NoError(t, ferr)
			_, lerr := feed.RevocationsSince(t.Context(), -1)
			if tc.ok {
				require.NoError(t, err)
				require.NoError(t, lerr)
				return
			}
			require.ErrorContains(t, err, "headers exceeded")
			require.ErrorContains(t, lerr, "headers exceeded")
		})
	}
}

// TestRemoteKeysFollowManagedKeys: a resource server verifying with
// RemoteKeys keeps up with the key changes of an authorization server
// with managed keys, within the JWKS max-age the server sends (RFC 9111
// §4.2): a key published a propagation delay before it signs is known
// when its first token arrives, and a revoked key, gone from the JWKS,
// is no longer trusted once the set that had it expired, even by a
// verifier that was idle meanwhile (RFC 7517 §5: the set is the server's
// current keys).
func TestRemoteKeysFollowManagedKeys(t *testing.T) {
	tests := []struct {
		name     string
		maxAge   time.Duration // the JWKS's
		delay    time.Duration // the propagation delay: max-age plus the refresh interval, and more
		act      func(t *testing.T, mk *m2mauth.ManagedKeys) string
		then     time.Duration // from the change to the token
		accepted bool
	}{
		{"a key published before it signs", 5 * time.Second, 10 * time.Second, func(t *testing.T, mk *m2mauth.ManagedKeys) string {
			info, err := mk.Rotate(t.Context())
			require.NoError(t, err)
			return info.KID
		}, 11 * time.Second, true},
		{"a revoked key, the verifier idle past the max-age", 5 * time.Minute, 10 * time.Minute, func(t *testing.T, mk *m2mauth.ManagedKeys) string {
			leaked, err := mk.SigningKey(t.Context())
			require.NoError(t, err)
			require.NoError(t, mk.Revoke(t.Context(), leaked.KeyID))
			require.NotContains(t, verificationKIDs(t, mk), leaked.KeyID, "the key left the JWKS")
			return leaked.KeyID
		}, 10 * time.Minute, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newMKFixture(t)
			mk := f.replica(t, func(c *m2mauth.ManagedKeysConfig) {
				c.PropagationDelay = tt.delay
				c.RefreshInterval = time.Second
			})
			as := newMKServer(t, f, mk)
			jwks, err := m2mauth.NewJWKSHandler(mk, m2mauth.JWKSConfig{MaxAge: tt.maxAge, Now: f.clock})
			require.NoError(t, err)
			jsrv := httptest.NewServer(jwks)
			t.Cleanup(jsrv.Close)
			rk, err := m2mauth.NewRemoteKeys(jsrv.URL, m2mauth.RemoteKeysConfig{Now: f.clock, Logger: discardLogger()})
			require.NoError(t, err)
			v, err := m2mauth.NewValidator(rk, m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: testAudience, Now: f.clock})
			require.NoError(t, err)
			mux := http.NewServeMux()
			mux.Handle("GET /api", v.RequireScopes("read")(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})))
			rs := &mkServer{Server: httptest.NewServer(mux)} // the resource server: no token endpoint
			t.Cleanup(rs.Close)

			tok, _ := as.token(t)
			require.Equal(t, http.StatusOK, rs.call(t, tok), "the JWKS fetched")
			signer, err := mk.SigningKey(t.Context()) // before the change
			require.NoError(t, err)
			forger, err := m2mauth.NewStaticKeys(*signer)
			require.NoError(t, err)

			f.advance(time.Second)
			kid := tt.act(t, mk)
			f.advance(tt.then)
			src := as
			if !tt.accepted {
				src = newMKServer(t, f, forger) // the leaked key's holder
			}
			tok, got := src.token(t)
			require.Equal(t, kid, got)
			want := http.StatusUnauthorized
			if tt.accepted {
				want = http.StatusOK
			}
			assert.Equal(t, want, as.call(t, tok), "the authorization server's own answer")
			assert.Equal(t, want, rs.call(t, tok), "the RemoteKeys verifier's answer")
		})
	}
}

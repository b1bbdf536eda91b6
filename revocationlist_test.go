package m2mauth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

// listKeys is the ES256 provider of the revocation list tests: it signs
// with kid "kid-ES256".
func listKeys(t testing.TB) *m2mauth.StaticKeys {
	t.Helper()
	k, err := m2mauth.NewStaticKeys(signingJWK(jose.ES256))
	require.NoError(t, err)
	return k
}

// listVerifier is what a resource server holds: the public half only.
func listVerifier() m2mauth.KeyProvider {
	return verifyOnly{&jose.JSONWebKeySet{Keys: []jose.JSONWebKey{verifyingJWK(jose.ES256)}}}
}

func getList(h http.Handler, method string, header ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, "/oauth/revocations", nil)
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Add(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// parseList verifies a list with go-jose, an independent implementation,
// and returns its typ header and its claims as JSON.
func parseList(t *testing.T, body string) (typ string, claims string) {
	t.Helper()
	tok, err := jwt.ParseSigned(body, []jose.SignatureAlgorithm{jose.ES256})
	require.NoError(t, err)
	require.Len(t, tok.Headers, 1)
	assert.Equal(t, "kid-ES256", tok.Headers[0].KeyID)
	var raw json.RawMessage
	require.NoError(t, tok.Claims(verifyingJWK(jose.ES256).Key, &raw))
	typ, _ = tok.Headers[0].ExtraHeaders["typ"].(string)
	return typ, string(raw)
}

// TestRevocationListHandler: the list is a JWS (RFC 7515) with typ
// revocations+jwt (RFC 8725 §3.11) signed with the current signing key,
// served as application/jwt (RFC 7519 §10.3.1) with a weak ETag of its
// version, signing period and key (RFC 9110 §8.8.3) and conditional GET
// (RFC 9110 §13.1.2).
func TestRevocationListHandler(t *testing.T) {
	clock := newPollClock()
	now := clock.Now()
	src := &fakeRevocations{}
	src.set(&m2mauth.Revocations{
		Version: 7,
		Before:  now.Add(-time.Hour),
		Clients: map[string]time.Time{"svc": now.Add(-time.Minute)},
		Tokens:  map[string]time.Time{"j1": now.Add(time.Hour), "j\"2": now.Add(2 * time.Hour)},
	}, nil)
	h, err := m2mauth.NewRevocationListHandler(src, listKeys(t), m2mauth.RevocationListConfig{
		Issuer: testIssuer, Now: clock.Now, Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)

	w := getList(h, http.MethodGet)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	assert.Equal(t, "application/jwt", w.Header().Get("Content-Type"))
	etag := w.Header().Get("ETag")
	require.Regexp(t, `^W/"7\.\d+\.[A-Za-z0-9_-]+"$`, etag)
	assert.Equal(t, "public, max-age=5", w.Header().Get("Cache-Control"))
	typ, claims := parseList(t, w.Body.String())
	assert.Equal(t, "revocations+jwt", typ)
	assert.JSONEq(t, fmt.Sprintf(`{
		"iss": %q, "iat": %d, "exp": %d, "ver": 7, "before": %d,
		"clients": {"svc": %d},
		"jtis": {"j1": %d, "j\"2": %d}
	}`, testIssuer, now.Unix(), now.Add(5*time.Minute).Unix(), now.Add(-time.Hour).Unix(),
		now.Add(-time.Minute).Unix(), now.Add(time.Hour).Unix(), now.Add(2*time.Hour).Unix()), claims)

	t.Run("conditional GET, RFC 9110 §13.1.2", func(t *testing.T) {
		tests := []struct {
			inm    string
			status int
		}{
			{etag, http.StatusNotModified},
			{strings.TrimPrefix(etag, "W/"), http.StatusNotModified},
			{`"6", ` + etag, http.StatusNotModified},
			{`*`, http.StatusNotModified},
			{`"7"`, http.StatusOK},
			{`"6"`, http.StatusOK},
			{etag[:len(etag)-1] + `x"`, http.StatusOK},
		}
		for _, tc := range tests {
			w := getList(h, http.MethodGet, "If-None-Match", tc.inm)
			assert.Equal(t, tc.status, w.Code, tc.inm)
			assert.Equal(t, etag, w.Header().Get("ETag"), tc.inm)
			if tc.status == http.StatusNotModified {
				assert.Empty(t, w.Body.String())
			}
		}
	})

	t.Run("HEAD has no body; other methods are 405", func(t *testing.T) {
		w := getList(h, http.MethodHead)
		assert.Equal(t, http.StatusOK, w.Code)
		assert.Empty(t, w.Body.String())
		w = getList(h, http.MethodPost)
		assert.Equal(t, http.StatusMethodNotAllowed, w.Code)
		assert.Equal(t, "GET, HEAD", w.Header().Get("Allow"))
	})

	t.Run("the same bytes until half the validity has passed, then a new ETag, RFC 9110 §8.8.1", func(t *testing.T) {
		first := getList(h, http.MethodGet).Body.String()
		clock.Add(2*time.Minute + 29*time.Second)
		assert.Equal(t, first, getList(h, http.MethodGet).Body.String())
		assert.Equal(t, http.StatusNotModified, getList(h, http.MethodGet, "If-None-Match", etag).Code)
		clock.Add(2 * time.Second)
		// A client holding the list signed before, which expires in 2.5
		// minutes, is given the new one, not told its copy is current.
		w := getList(h, http.MethodGet, "If-None-Match", etag)
		require.Equal(t, http.StatusOK, w.Code)
		again := w.Body.String()
		assert.NotEqual(t, first, again, "signed again")
		assert.NotEqual(t, etag, w.Header().Get("ETag"))
		assert.Equal(t, http.StatusNotModified, getList(h, http.MethodGet, "If-None-Match", w.Header().Get("ETag")).Code)
		_, claims := parseList(t, again)
		var c struct{ Iat, Exp int64 }
		require.NoError(t, json.Unmarshal([]byte(claims), &c))
		assert.Equal(t, clock.Now().Unix(), c.Iat)
		assert.Equal(t, clock.Now().Add(5*time.Minute).Unix(), c.Exp)
	})

	t.Run("no before without a store-wide watermark; nil is nothing revoked", func(t *testing.T) {
		src.set(&m2mauth.Revocations{Version: 8, Clients: map[string]time.Time{"svc": now}}, nil)
		w := getList(h, http.MethodGet)
		require.Equal(t, http.StatusOK, w.Code)
		_, claims := parseList(t, w.Body.String())
		assert.NotContains(t, claims, `"before"`)
		assert.NotEqual(t, etag, w.Header().Get("ETag"))

		src.set(nil, nil)
		w = getList(h, http.MethodGet)
		require.Equal(t, http.StatusOK, w.Code)
		_, claims = parseList(t, w.Body.String())
		assert.Contains(t, claims, `"ver":0`)
		assert.Contains(t, claims, `"clients":{}`)
		assert.Contains(t, claims, `"jtis":{}`)
	})

	t.Run("a stale source is 503, RFC 9110 §15.6.4", func(t *testing.T) {
		src.set(&m2mauth.Revocations{Version: 9}, fmt.Errorf("%w: test", m2mauth.ErrRevocationsStale))
		w := getList(h, http.MethodGet)
		assert.Equal(t, http.StatusServiceUnavailable, w.Code)
		assert.Equal(t, "no-store", w.Header().Get("Cache-Control"))
		assert.JSONEq(t, `{"error":"server_error","error_description":"the revocation list is unavailable"}`, w.Body.String())
		w = getList(h, http.MethodGet, "If-None-Match", `"9"`)
		assert.Equal(t, http.StatusServiceUnavailable, w.Code, "not even a 304")
	})
}

// TestRevocationListETagAcrossReplicas: replicas publishing one version
// with one key answer 304 to each other's ETag within a signing period,
// though each signs its own bytes (ES256 signatures are random, iat
// differs); in the next period, or under another key, the tag changes.
func TestRevocationListETagAcrossReplicas(t *testing.T) {
	src := &fakeRevocations{}
	src.set(&m2mauth.Revocations{Version: 4}, nil)
	clock := newPollClock()
	keys := listKeys(t)
	replica := func(skew time.Duration) *m2mauth.RevocationListHandler {
		h, err := m2mauth.NewRevocationListHandler(src, keys, m2mauth.RevocationListConfig{
			Issuer: testIssuer, Now: func() time.Time { return clock.Now().Add(skew) },
		})
		require.NoError(t, err)
		return h
	}
	a, b := replica(0), replica(3*time.Second)
	wa := getList(a, http.MethodGet)
	require.Equal(t, http.StatusOK, wa.Code)
	wb := getList(b, http.MethodGet)
	require.Equal(t, http.StatusOK, wb.Code)
	require.NotEqual(t, wa.Body.String(), wb.Body.String(), "each replica signs its own bytes")
	etag := wa.Header().Get("ETag")
	assert.Equal(t, etag, wb.Header().Get("ETag"))
	assert.Equal(t, http.StatusNotModified, getList(b, http.MethodGet, "If-None-Match", etag).Code)

	clock.Add(2*time.Minute + 30*time.Second) // the next period
	w := getList(b, http.MethodGet, "If-None-Match", etag)
	require.Equal(t, http.StatusOK, w.Code, "signed again, with a later exp")
	assert.NotEqual(t, etag, w.Header().Get("ETag"))
	assert.Equal(t, http.StatusNotModified, getList(a, http.MethodGet, "If-None-Match", w.Header().Get("ETag")).Code)
}

// TestRevocationListHandlerKeyRotation: a new signing key signs the list
// at once, even when the revocations did not change.
func TestRevocationListHandlerKeyRotation(t *testing.T) {
	keys := &swapKeys{}
	keys.set(t, hsKey(t, "k1", keyA))
	src := &fakeRevocations{}
	src.set(&m2mauth.Revocations{Version: 3}, nil)
	h, err := m2mauth.NewRevocationListHandler(src, keys, m2mauth.RevocationListConfig{Issuer: testIssuer})
	require.NoError(t, err)
	var etag string
	kid := func() string {
		// Asked with the ETag of the list held: a list signed with
		// another key is another representation (RFC 9110 §8.8.1).
		w := getList(h, http.MethodGet, "If-None-Match", etag)
		require.Equal(t, http.StatusOK, w.Code)
		tok, err := jwt.ParseSigned(w.Body.String(), []jose.SignatureAlgorithm{jose.HS256})
		require.NoError(t, err)
		etag = w.Header().Get("ETag")
		return tok.Headers[0].KeyID
	}
	assert.Equal(t, "k1", kid())
	assert.Equal(t, http.StatusNotModified, getList(h, http.MethodGet, "If-None-Match", etag).Code)
	keys.set(t, hsKey(t, "k2", keyB), hsKey(t, "k1", keyA))
	assert.Equal(t, "k2", kid())
}

func TestNewRevocationListHandlerValidates(t *testing.T) {
	src := &fakeRevocations{}
	keys := listKeys(t)
	base := m2mauth.RevocationListConfig{Issuer: testIssuer}
	tests := []struct {
		name string
		src  m2mauth.RevocationSource
		keys m2mauth.KeyProvider
		edit func(*m2mauth.RevocationListConfig)
	}{
		{"nil source", nil, keys, nil},
		{"nil keys", src, nil, nil},
		{"keys that cannot sign", src, listVerifier(), nil},
		{"no issuer", src, keys, func(c *m2mauth.RevocationListConfig) { c.Issuer = "" }},
		{"validity under a minute", src, keys, func(c *m2mauth.RevocationListConfig) { c.Validity = 30 * time.Second }},
		{"negative validity", src, keys, func(c *m2mauth.RevocationListConfig) { c.Validity = -time.Minute }},
		{"validity over a day", src, keys, func(c *m2mauth.RevocationListConfig) { c.Validity = 25 * time.Hour }},
		{"max-age over a minute", src, keys, func(c *m2mauth.RevocationListConfig) { c.MaxAge = 2 * time.Minute }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			if tc.edit != nil {
				tc.edit(&cfg)
			}
			h, err := m2mauth.NewRevocationListHandler(tc.src, tc.keys, cfg)
			require.Error(t, err)
			assert.Nil(t, h)
		})
	}
}

// listServer serves whatever revocation list the test sets, with an
// ETag, answering 304 to a matching If-None-Match.
type listServer struct {
	*httptest.Server
	mu     sync.Mutex
	status int
	body   string
	etag   string
	inm    []string // the If-None-Match of each request
}

func newListServer(t *testing.T) *listServer {
	s := &listServer{status: http.StatusOK}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		status, body, etag := s.status, s.body, s.etag
		s.inm = append(s.inm, r.Header.Get("If-None-Match"))
		s.mu.Unlock()
		if etag != "" {
			w.Header().Set("ETag", etag)
			if r.Header.Get("If-None-Match") == etag {
				w.WriteHeader(http.StatusNotModified)
				return
			}
		}
		w.Header().Set("Content-Type", "application/jwt")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *listServer) serve(status int, body, etag string) {
	s.mu.Lock()
	s.status, s.body, s.etag = status, body, etag
	s.mu.Unlock()
}

func (s *listServer) lastINM() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inm[len(s.inm)-1]
}

// listDoc signs a revocation list by hand with the ES256 test key: the
// header and claims of a good list issued at now, version 5, revoking
// jti "j5", after edit.
func listDoc(t *testing.T, now time.Time, edit func(hdr, claims map[string]any)) string {
	t.Helper()
	hdr := map[string]any{"alg": "ES256", "kid": "kid-ES256", "typ": "revocations+jwt"}
	claims := map[string]any{
		"iss": testIssuer, "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(), "ver": 5,
		"clients": map[string]any{}, "jtis": map[string]any{"j5": now.Add(time.Hour).Unix()},
	}
	if edit != nil {
		edit(hdr, claims)
	}
	h, err := json.Marshal(hdr)
	require.NoError(t, err)
	return signRaw(t, jose.ES256, privateKey(jose.ES256), string(h), claims)
}

// TestRemoteRevocationsRefuses: a list is accepted only when its
// signature verifies with the key its kid names, with that key's
// algorithm (RFC 8725 §3.1), its typ is revocations+jwt (RFC 8725
// §3.11), its iss is the configured issuer, it has not expired
// (RFC 7519 §4.1.4), its version does not go back and it fits the body
// limit. A refused list leaves the poller's last good state in place.
func TestRemoteRevocationsRefuses(t *testing.T) {
	clock := newPollClock()
	now := clock.Now()
	srv := newListServer(t)
	feed, err := m2mauth.NewRemoteRevocations(srv.URL+"/oauth/revocations", listVerifier(), m2mauth.RemoteRevocationsConfig{
		Issuer: testIssuer, Now: clock.Now, MaxBodyBytes: 16 << 10,
	})
	require.NoError(t, err)
	p := newTestPoller(t, feed, clock, nil)
	srv.serve(http.StatusOK, listDoc(t, now, nil), "")
	require.NoError(t, p.Refresh(t.Context()))
	good, err := p.CurrentRevocations()
	require.NoError(t, err)
	require.Equal(t, int64(5), good.Version)
	require.True(t, good.Revoked("svc", "j5", now))

	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	goodDoc := listDoc(t, now, func(_, c map[string]any) { c["ver"] = 6 })
	parts := strings.Split(goodDoc, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	require.NoError(t, err)
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(payload), `"j5"`, `"j6"`, 1))) + "." + parts[2]
	many := map[string]any{}
	for i := range 1000 {
		many[fmt.Sprintf("jti-%04d-aaaaaaaaaaaaaaaaaaaa", i)] = now.Add(time.Hour).Unix()
	}
	hdrJSON := func(h string) string { return base64.RawURLEncoding.EncodeToString([]byte(h)) }

	tests := []struct {
		name   string
		status int
		body   string
		want   string // in the error
	}{
		{name: "tampered claims, RFC 7515 §5.2", body: tampered, want: "invalid signature"},
		{name: "signature stripped, RFC 7515 §5.2", body: parts[0] + "." + parts[1] + ".", want: "invalid signature"},
		{name: "signed by another key under the same kid", body: signRaw(t, jose.ES256, otherKey, `{"alg":"ES256","kid":"kid-ES256","typ":"revocations+jwt"}`, map[string]any{"iss": testIssuer, "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(), "ver": 6}), want: "invalid signature"},
		{name: "unknown kid", body: listDoc(t, now, func(h, c map[string]any) { h["kid"] = "kid-nope"; c["ver"] = 6 }), want: "unknown key"},
		{name: "HS256 header on an ES256 key, RFC 8725 §3.1", body: signRaw(t, jose.HS256, keyA, `{"alg":"HS256","kid":"kid-ES256","typ":"revocations+jwt"}`, map[string]any{"iss": testIssuer, "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(), "ver": 6}), want: "does not match key"},
		{name: "alg none, RFC 8725 §3.1", body: hdrJSON(`{"alg":"none","kid":"kid-ES256","typ":"revocations+jwt"}`) + "." + parts[1] + ".", want: "not allowed"},
		{name: "crit header, RFC 7515 §4.1.11", body: listDoc(t, now, func(h, c map[string]any) { h["crit"] = []string{"exp"}; c["ver"] = 6 }), want: "critical"},
		{name: "foreign issuer, RFC 7519 §4.1.1", body: listDoc(t, now, func(_, c map[string]any) { c["iss"] = "https://evil.example.com"; c["ver"] = 6 }), want: "issuer"},
		{name: "access token typ, RFC 8725 §3.11", body: listDoc(t, now, func(h, c map[string]any) { h["typ"] = "at+jwt"; c["ver"] = 6 }), want: "typ"},
		{name: "no typ, RFC 8725 §3.11", body: listDoc(t, now, func(h, c map[string]any) { delete(h, "typ"); c["ver"] = 6 }), want: "typ"},
		{name: "expired beyond the leeway, RFC 7519 §4.1.4", body: listDoc(t, now, func(_, c map[string]any) { c["exp"] = now.Add(-31 * time.Second).Unix(); c["ver"] = 6 }), want: "expired"},
		{name: "issued in the future, RFC 7519 §4.1.6", body: listDoc(t, now, func(_, c map[string]any) { c["iat"] = now.Add(time.Minute).Unix(); c["ver"] = 6 }), want: "future"},
		{name: "no ver", body: listDoc(t, now, func(_, c map[string]any) { delete(c, "ver") }), want: "missing"},
		{name: "no exp", body: listDoc(t, now, func(_, c map[string]any) { delete(c, "exp"); c["ver"] = 6 }), want: "missing"},
		{name: "ver as a string", body: listDoc(t, now, func(_, c map[string]any) { c["ver"] = "6" }), want: "malformed claims"},
		{name: "a token expiry out of range", body: listDoc(t, now, func(_, c map[string]any) { c["jtis"] = map[string]any{"j6": -1}; c["ver"] = 6 }), want: "out of range"},
		{name: "a lower version, replayed", body: listDoc(t, now, func(_, c map[string]any) { c["ver"] = 4; c["jtis"] = map[string]any{} }), want: "older than version 5"},
		{name: "not a JWS", body: "hello", want: "compact serialization"},
		{name: "body over the limit", body: listDoc(t, now, func(_, c map[string]any) { c["jtis"] = many; c["ver"] = 6 }), want: "larger than"},
		{name: "server error", status: http.StatusInternalServerError, body: "oops", want: "500"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status := tc.status
			if status == 0 {
				status = http.StatusOK
			}
			srv.serve(status, tc.body, "")
			err := p.Refresh(t.Context())
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			if len(tc.body) > 20 {
				assert.NotContains(t, err.Error(), tc.body[len(tc.body)-20:], "the body is not quoted")
			}
			got, err := p.CurrentRevocations()
			require.NoError(t, err, "within MaxStale")
			assert.Same(t, good, got, "the last good state is kept")
		})
	}

	// The good list of version 6 is still taken after all that.
	srv.serve(http.StatusOK, goodDoc, "")
	require.NoError(t, p.Refresh(t.Context()))
	got, err := p.CurrentRevocations()
	require.NoError(t, err)
	assert.Equal(t, int64(6), got.Version)
}

// TestRemoteRevocationsConditional: the ETag of the list held goes in
// If-None-Match (RFC 9110 §13.1.2); 304 means unchanged, and so does a
// 200 of the same version from a server without ETags.
func TestRemoteRevocationsConditional(t *testing.T) {
	clock := newPollClock()
	srv := newListServer(t)
	feed, err := m2mauth.NewRemoteRevocations(srv.URL, listVerifier(), m2mauth.RemoteRevocationsConfig{Issuer: testIssuer, Now: clock.Now})
	require.NoError(t, err)
	doc := listDoc(t, clock.Now(), nil)
	srv.serve(http.StatusOK, doc, `"5"`)

	r, err := feed.RevocationsSince(t.Context(), -1)
	require.NoError(t, err)
	require.Equal(t, int64(5), r.Version)
	assert.Empty(t, srv.lastINM(), "nothing held, nothing to match")

	r, err = feed.RevocationsSince(t.Context(), 5)
	require.NoError(t, err)
	assert.Nil(t, r, "304: unchanged")
	assert.Equal(t, `"5"`, srv.lastINM())

	srv.serve(http.StatusOK, doc, "")
	r, err = feed.RevocationsSince(t.Context(), 5)
	require.NoError(t, err)
	assert.Nil(t, r, "the same version: unchanged")

	r, err = feed.RevocationsSince(t.Context(), 6)
	require.Error(t, err, "older than what the caller holds")
	assert.Nil(t, r)
}

// TestRemoteRevocationsHeldListExpires: a 304 vouches for the list held
// only until that list's exp (RFC 7519 §4.1.4). Once it has passed, the
// list is asked for whole, so a server, proxy or cache that answers 304
// forever cannot keep an expired list in force; a fresh list signed
// again for the same version is then taken, and the old one refused.
func TestRemoteRevocationsHeldListExpires(t *testing.T) {
	clock := newPollClock()
	srv := newListServer(t)
	feed, err := m2mauth.NewRemoteRevocations(srv.URL, listVerifier(), m2mauth.RemoteRevocationsConfig{Issuer: testIssuer, Now: clock.Now})
	require.NoError(t, err)
	first := listDoc(t, clock.Now(), nil) // valid for 5 minutes, leeway 30s
	srv.serve(http.StatusOK, first, `"v5"`)
	r, err := feed.RevocationsSince(t.Context(), -1)
	require.NoError(t, err)
	require.Equal(t, int64(5), r.Version)

	clock.Add(5*time.Minute + 29*time.Second)
	r, err = feed.RevocationsSince(t.Context(), 5)
	require.NoError(t, err)
	assert.Nil(t, r, "304 while the list held is valid")
	assert.Equal(t, `"v5"`, srv.lastINM())

	// Past exp and leeway: no If-None-Match, so the server's 304 is not
	// asked for, and the expired list it sends again is refused.
	clock.Add(time.Second)
	_, err = feed.RevocationsSince(t.Context(), 5)
	require.ErrorContains(t, err, "expired")
	assert.Empty(t, srv.lastINM())
	_, err = feed.RevocationsSince(t.Context(), 5)
	require.ErrorContains(t, err, "expired", "a refused list is not held")
	assert.Empty(t, srv.lastINM())

	// The list signed again, same version: taken, and held for its exp.
	srv.serve(http.StatusOK, listDoc(t, clock.Now(), nil), `"v5b"`)
	r, err = feed.RevocationsSince(t.Context(), 5)
	require.NoError(t, err)
	assert.Nil(t, r, "the same version")
	assert.Empty(t, srv.lastINM())
	r, err = feed.RevocationsSince(t.Context(), 5)
	require.NoError(t, err)
	assert.Nil(t, r)
	assert.Equal(t, `"v5b"`, srv.lastINM())
}

// TestRemoteRevocationsRedirects: a redirect within the list's host is
// followed; one to another host is not.
func TestRemoteRevocationsRedirects(t *testing.T) {
	clock := newPollClock()
	list := newListServer(t)
	list.serve(http.StatusOK, listDoc(t, clock.Now(), nil), "")
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/old":
			http.Redirect(w, r, "/new", http.StatusMovedPermanently)
		case "/new":
			w.Write([]byte(listDoc(t, clock.Now(), nil)))
		default:
			http.Redirect(w, r, list.URL, http.StatusFound)
		}
	}))
	t.Cleanup(redirector.Close)

	for _, client := range []*http.Client{nil, {}} {
		same, err := m2mauth.NewRemoteRevocations(redirector.URL+"/old", listVerifier(), m2mauth.RemoteRevocationsConfig{Issuer: testIssuer, Now: clock.Now, HTTPClient: client})
		require.NoError(t, err)
		r, err := same.RevocationsSince(t.Context(), -1)
		require.NoError(t, err)
		assert.Equal(t, int64(5), r.Version)

		other, err := m2mauth.NewRemoteRevocations(redirector.URL+"/elsewhere", listVerifier(), m2mauth.RemoteRevocationsConfig{Issuer: testIssuer, Now: clock.Now, HTTPClient: client})
		require.NoError(t, err)
		_, err = other.RevocationsSince(t.Context(), -1)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "another host")
	}
}

func TestNewRemoteRevocationsValidates(t *testing.T) {
	keys := listVerifier()
	base := m2mauth.RemoteRevocationsConfig{Issuer: testIssuer}
	tests := []struct {
		name string
		url  string
		keys m2mauth.KeyProvider
		edit func(*m2mauth.RemoteRevocationsConfig)
	}{
		{"nil keys", "https://auth.example.com/oauth/revocations", nil, nil},
		{"no issuer", "https://auth.example.com/oauth/revocations", keys, func(c *m2mauth.RemoteRevocationsConfig) { c.Issuer = "" }},
		{"http on a public host", "http://auth.example.com/oauth/revocations", keys, nil},
		{"another scheme", "ftp://auth.example.com/oauth/revocations", keys, nil},
		{"relative", "/oauth/revocations", keys, nil},
		{"user information", "https://u:p@auth.example.com/oauth/revocations", keys, nil},
		{"fragment", "https://auth.example.com/oauth/revocations#x", keys, nil},
		{"negative timeout", "https://auth.example.com/oauth/revocations", keys, func(c *m2mauth.RemoteRevocationsConfig) { c.Timeout = -time.Second }},
		{"negative body limit", "https://auth.example.com/oauth/revocations", keys, func(c *m2mauth.RemoteRevocationsConfig) { c.MaxBodyBytes = -1 }},
		{"leeway over 5 minutes", "https://auth.example.com/oauth/revocations", keys, func(c *m2mauth.RemoteRevocationsConfig) { c.Leeway = time.Hour }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			if tc.edit != nil {
				tc.edit(&cfg)
			}
			r, err := m2mauth.NewRemoteRevocations(tc.url, tc.keys, cfg)
			require.Error(t, err)
			assert.Nil(t, r)
		})
	}
	for _, ok := range []string{"https://auth.example.com/oauth/revocations", "http://127.0.0.1:8080/r", "http://localhost/r", "http://[::1]/r"} {
		_, err := m2mauth.NewRemoteRevocations(ok, keys, base)
		assert.NoError(t, err, ok)
	}
	insecure := base
	insecure.AllowInsecureHTTP = true
	_, err := m2mauth.NewRemoteRevocations("http://auth.internal/r", keys, insecure)
	assert.NoError(t, err)
}

// listAS is an authorization server in another process: a memstore, a
// token endpoint, a JWKS and a revocation list over HTTP, on a settable
// clock.
type listAS struct {
	*httptest.Server
	store  *memstore.Store
	keys   *swapKeys
	secret string
	mu     sync.Mutex
	list   []int // status of each revocation list response
}

func newListAS(t *testing.T, clock *pollClock) *listAS {
	t.Helper()
	as := &listAS{keys: &swapKeys{}}
	as.keys.set(t, signingJWK(jose.ES256))
	as.store = memstore.New(memstore.WithClock(clock.Now))
	plain, sec, err := m2mauth.NewSecret(clock.Now(), time.Time{})
	require.NoError(t, err)
	as.secret = plain
	require.NoError(t, as.store.CreateClient(t.Context(), &m2mauth.Client{
		ID: "svc", Secrets: []m2mauth.Secret{sec}, Grants: map[string]m2mauth.Scopes{testAudience: {"read"}},
	}))
	th, err := m2mauth.NewTokenHandler(as.store, as.keys, m2mauth.TokenHandlerConfig{
		Issuer: testIssuer, DefaultAudience: testAudience, Now: clock.Now,
		Auditor: m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {}),
	})
	require.NoError(t, err)
	jwks, err := m2mauth.NewJWKSHandler(as.keys, m2mauth.JWKSConfig{Now: clock.Now})
	require.NoError(t, err)
	src, ok := any(as.store).(m2mauth.RevocationSource)
	require.True(t, ok, "memstore is a RevocationSource")
	list, err := m2mauth.NewRevocationListHandler(src, as.keys, m2mauth.RevocationListConfig{Issuer: testIssuer, Now: clock.Now})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("POST /oauth/token", th)
	mux.Handle("GET /.well-known/jwks.json", jwks)
	mux.Handle("GET /oauth/revocations", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		list.ServeHTTP(rec, r)
		as.mu.Lock()
		as.list = append(as.list, rec.Code)
		as.mu.Unlock()
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
	}))
	as.Server = httptest.NewServer(mux)
	t.Cleanup(as.Close)
	return as
}

func (as *listAS) revoker(t *testing.T) m2mauth.Revoker {
	t.Helper()
	r, ok := any(as.store).(m2mauth.Revoker)
	require.True(t, ok, "memstore is a Revoker")
	return r
}

// listRequests returns how many times the list was asked for.
func (as *listAS) listRequests() int {
	as.mu.Lock()
	defer as.mu.Unlock()
	return len(as.list)
}

func (as *listAS) lastListStatus() int {
	as.mu.Lock()
	defer as.mu.Unlock()
	return as.list[len(as.list)-1]
}

// token gets a token for svc from the token endpoint, and its jti and
// expiry.
func (as *listAS) token(t *testing.T) (tok, jti string, exp time.Time) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, as.URL+"/oauth/token",
		strings.NewReader(url.Values{"grant_type": {"client_credentials"}}.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("svc", as.secret)
	resp, err := as.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var tr tokenResponse
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&tr))
	require.Equal(t, http.StatusOK, resp.StatusCode, tr.Error)
	parsed, err := jwt.ParseSigned(tr.AccessToken, m2mauth.SupportedAlgorithms())
	require.NoError(t, err)
	var c jwt.Claims
	require.NoError(t, parsed.UnsafeClaimsWithoutVerification(&c))
	return tr.AccessToken, c.ID, c.Expiry.Time()
}

// TestRevocationListEndToEnd: a resource server in another process
// learns revocations from the authorization server's signed list with
// the keys it fetches from its JWKS: RemoteKeys, RemoteRevocations, a
// RevocationPoller and a Validator over real HTTP. A token revoked at
// the authorization server (RFC 7009 §2) is refused after one poll.
func TestRevocationListEndToEnd(t *testing.T) {
	clock := newPollClock()
	as := newListAS(t, clock)

	keys, err := m2mauth.NewRemoteKeys(as.URL+"/.well-known/jwks.json", m2mauth.RemoteKeysConfig{Now: clock.Now, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	feed, err := m2mauth.NewRemoteRevocations(as.URL+"/oauth/revocations", keys, m2mauth.RemoteRevocationsConfig{Issuer: testIssuer, Now: clock.Now})
	require.NoError(t, err)
	poller := newTestPoller(t, feed, clock, nil)
	v, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{
		Issuer: testIssuer, Audience: testAudience, Now: clock.Now, Revocations: poller,
	})
	require.NoError(t, err)
	rs := httptest.NewServer(v.RequireScopes("read")(echo))
	t.Cleanup(rs.Close)
	get := func(tok string) (int, string) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, rs.URL, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := rs.Client().Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Header.Get("WWW-Authenticate")
	}

	require.NoError(t, poller.Refresh(t.Context()))
	// The poller's own first poll runs in the background at once; wait
	// for it, or on a loaded machine it may come after the revocation
	// below and take the change before the Refresh that expects it.
	require.Eventually(t, func() bool { return as.listRequests() >= 2 }, 10*time.Second, time.Millisecond)
	tok1, jti1, exp1 := as.token(t)
	tok2, _, _ := as.token(t)
	code, _ := get(tok1)
	require.Equal(t, http.StatusOK, code)
	code, _ = get(tok1)
	require.Equal(t, http.StatusOK, code, "cached")

	// Revoke one token at the authorization server.
	require.NoError(t, as.revoker(t).RevokeToken(t.Context(), "svc", jti1, exp1))
	code, _ = get(tok1)
	assert.Equal(t, http.StatusOK, code, "not polled yet: the bound is the poll interval")
	require.NoError(t, poller.Refresh(t.Context()))
	assert.Equal(t, http.StatusOK, as.lastListStatus())
	code, challenge := get(tok1)
	assert.Equal(t, http.StatusUnauthorized, code)
	assert.Contains(t, challenge, `error_description="token has been revoked"`)
	code, _ = get(tok2)
	assert.Equal(t, http.StatusOK, code, "another token of the same client")

	// Nothing changed: a 304.
	require.NoError(t, poller.Refresh(t.Context()))
	assert.Equal(t, http.StatusNotModified, as.lastListStatus())

	// Every token of the client, after a key rotation the resource
	// server learns of through the list's unknown kid.
	clock.Add(time.Minute) // past the JWKS refetch cooldown
	newKey := signingJWK(jose.EdDSA)
	as.keys.set(t, newKey, signingJWK(jose.ES256))
	require.NoError(t, as.revoker(t).RevokeClientTokens(t.Context(), "svc"))
	require.NoError(t, poller.Refresh(t.Context()))
	code, _ = get(tok2)
	assert.Equal(t, http.StatusUnauthorized, code)
	clock.Add(2 * time.Second) // past the watermark's second
	tok3, _, _ := as.token(t)
	code, _ = get(tok3)
	assert.Equal(t, http.StatusOK, code, "a token issued after the watermark")

	// The list itself is no access token.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, as.URL+"/oauth/revocations", nil)
	require.NoError(t, err)
	resp, err := as.Client().Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	code, challenge = get(string(body))
	assert.Equal(t, http.StatusUnauthorized, code)
	assert.Contains(t, challenge, "typ must be at+jwt")

	// The authorization server goes away: the last list holds, until
	// MaxStale.
	as.Close()
	require.Error(t, poller.Refresh(t.Context()))
	code, _ = get(tok3)
	assert.Equal(t, http.StatusOK, code)
	code, _ = get(tok2)
	assert.Equal(t, http.StatusUnauthorized, code)
}

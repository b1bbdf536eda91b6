package m2mauth_test

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

const (
	benchIssuer   = "https://auth.example.com"
	benchAudience = "https://api.example.com"
	benchBody     = "grant_type=client_credentials&scope=read"
)

var benchKey = []byte("0123456789abcdef0123456789abcdef")

// benchTokenHandler returns m2mauth's token handler over a memstore with
// one client, and that client's Basic Authorization header value.
func benchTokenHandler(b testing.TB) (http.Handler, string) {
	b.Helper()
	store := memstore.New()
	plain, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
	require.NoError(b, err)
	require.NoError(b, store.CreateClient(context.Background(), &m2mauth.Client{
		ID:      "bench-client",
		Secrets: []m2mauth.Secret{sec},
		Grants:  map[string]m2mauth.Scopes{benchAudience: {"read", "write"}},
	}))
	key, err := m2mauth.NewHS256Key("k1", benchKey)
	require.NoError(b, err)
	keys, err := m2mauth.NewStaticKeys(key)
	require.NoError(b, err)
	h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer:          benchIssuer,
		DefaultAudience: benchAudience,
		Auditor:         m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {}),
	})
	require.NoError(b, err)
	return h, "Basic " + base64.StdEncoding.EncodeToString([]byte("bench-client:"+plain))
}

// runTokenBench serves the benchmark token request to h b.N times.
func runTokenBench(b *testing.B, h http.Handler, auth string) {
	b.Helper()
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader(benchBody))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Authorization", auth)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != http.StatusOK {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}

// BenchmarkTokenHandler measures one client credentials token request
// through m2mauth's handler, in process.
func BenchmarkTokenHandler(b *testing.B) {
	h, auth := benchTokenHandler(b)
	runTokenBench(b, h, auth)
}

// BenchmarkTokenHandlerBare is the harness cost: a handler that only
// writes 200.
func BenchmarkTokenHandlerBare(b *testing.B) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	runTokenBench(b, h, "Basic Yjpj")
}

// BenchmarkTokenHandlerFloor is a minimal hand-written token endpoint doing
// the same work with go-jose's JWT builder: parse the form, compare a
// plaintext secret in constant time, sign the same claims.
func BenchmarkTokenHandlerFloor(b *testing.B) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: benchKey},
		(&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", "k1"))
	require.NoError(b, err)
	const id, secret = "bench-client", "floor-secret-floor-secret-floor-secret-xx"
	type claims struct {
		jwt.Claims
		ClientID string `json:"client_id"`
		Scope    string `json:"scope"`
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if err := r.ParseForm(); err != nil || !ok || u != id ||
			subtle.ConstantTimeCompare([]byte(p), []byte(secret)) != 1 ||
			r.PostForm.Get("grant_type") != "client_credentials" {
			http.Error(w, `{"error":"invalid_request"}`, http.StatusBadRequest)
			return
		}
		var jti [16]byte
		rand.Read(jti[:])
		now := time.Now()
		c := claims{
			Claims: jwt.Claims{
				Issuer: benchIssuer, Subject: id, Audience: jwt.Audience{benchAudience},
				IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now),
				Expiry: jwt.NewNumericDate(now.Add(time.Hour)),
				ID:     base64.RawURLEncoding.EncodeToString(jti[:]),
			},
			ClientID: id,
			Scope:    r.PostForm.Get("scope"),
		}
		tok, err := jwt.Signed(signer).Claims(c).Serialize()
		if err != nil {
			http.Error(w, `{"error":"server_error"}`, http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(map[string]any{
			"access_token": tok, "token_type": "Bearer", "expires_in": 3600, "scope": c.Scope,
		})
	})
	runTokenBench(b, h, "Basic "+base64.StdEncoding.EncodeToString([]byte(id+":"+secret)))
}

// TestTokenHandlerRetainsNothing issues many tokens and checks that the
// live heap does not grow with them: issuing stores nothing.
func TestTokenHandlerRetainsNothing(t *testing.T) {
	h, auth := benchTokenHandler(t)
	serve := func() {
		r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader(benchBody))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Authorization", auth)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		require.Equal(t, http.StatusOK, w.Code)
	}
	for range 100 { // warm pools and lazily built state
		serve()
	}
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	const n = 20000
	for range n {
		serve()
	}
	after := heap()
	grown := int64(after) - int64(before)
	// A stored token would cost hundreds of bytes each (megabytes here);
	// allow a little noise from the runtime.
	require.Less(t, grown, int64(256<<10), "heap grew by %d bytes over %d tokens", grown, n)
}

// benchRoute is the protected route of the validation benchmarks.
var benchRoute = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })

// runRouteBench serves GET /api/builders with the bearer token to h b.N
// times.
func runRouteBench(b *testing.B, h http.Handler, token string) {
	b.Helper()
	r := httptest.NewRequest(http.MethodGet, "/api/builders", nil)
	r.Header.Set("Authorization", "Bearer "+token)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusNoContent {
		b.Fatalf("status %d: %s", w.Code, w.Body)
	}
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
	}
}

// benchToken issues a real token through the token handler.
func benchToken(b *testing.B) (string, *m2mauth.StaticKeys) {
	b.Helper()
	h, auth := benchTokenHandler(b)
	r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader(benchBody))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Authorization", auth)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var resp struct {
		AccessToken string `json:"access_token"`
	}
	require.NoError(b, json.Unmarshal(w.Body.Bytes(), &resp))
	key, err := m2mauth.NewHS256Key("k1", benchKey)
	require.NoError(b, err)
	keys, err := m2mauth.NewStaticKeys(key)
	require.NoError(b, err)
	return resp.AccessToken, keys
}

func benchValidator(b *testing.B, cacheSize int) (http.Handler, string) {
	tok, keys := benchToken(b)
	v, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{
		Issuer: benchIssuer, Audience: benchAudience, CacheSize: cacheSize,
	})
	require.NoError(b, err)
	return v.RequireScopes("read")(benchRoute), tok
}

// BenchmarkRequireScopes is the hot path: a token seen before, answered
// from the verified-token cache.
func BenchmarkRequireScopes(b *testing.B) {
	h, tok := benchValidator(b, 0)
	runRouteBench(b, h, tok)
}

// BenchmarkRequireScopesUncached verifies the token from scratch each time.
func BenchmarkRequireScopesUncached(b *testing.B) {
	h, tok := benchValidator(b, -1)
	runRouteBench(b, h, tok)
}

// BenchmarkRequireScopesBare is the harness cost: the 204 route alone.
func BenchmarkRequireScopesBare(b *testing.B) {
	tok, _ := benchToken(b)
	runRouteBench(b, benchRoute, tok)
}

// BenchmarkRequireScopesFloor is a minimal hand-written check with go-jose:
// ParseSigned, Claims, Expected validation and a scope check.
func BenchmarkRequireScopesFloor(b *testing.B) {
	tok, _ := benchToken(b)
	type claims struct {
		jwt.Claims
		Scope string `json:"scope"`
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		t, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.HS256})
		if err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var c claims
		if err := t.Claims(benchKey, &c); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if err := c.Claims.Validate(jwt.Expected{Issuer: benchIssuer, AnyAudience: jwt.Audience{benchAudience}, Time: time.Now()}); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if !strings.Contains(" "+c.Scope+" ", " read ") {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		benchRoute.ServeHTTP(w, r)
	})
	runRouteBench(b, h, tok)
}

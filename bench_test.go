package m2mauth_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
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

// benchAlgorithms are the algorithms benchmarked; PS256 costs what RS256
// does, give or take the padding.
var benchAlgorithms = []jose.SignatureAlgorithm{jose.HS256, jose.ES256, jose.EdDSA, jose.RS256}

// benchSigningKey is the signing key of alg in the benchmarks: HS256 with
// benchKey as kid "k1", else the test key of alg.
func benchSigningKey(b testing.TB, alg jose.SignatureAlgorithm) jose.JSONWebKey {
	b.Helper()
	if alg != jose.HS256 {
		return signingJWK(alg)
	}
	key, err := m2mauth.NewHS256Key("k1", benchKey)
	require.NoError(b, err)
	return key
}

// benchVerifyingKey is the public half of benchSigningKey (HS256: the
// secret).
func benchVerifyingKey(b testing.TB, alg jose.SignatureAlgorithm) jose.JSONWebKey {
	k := benchSigningKey(b, alg)
	if s, ok := k.Key.(crypto.Signer); ok {
		k.Key = s.Public()
	}
	return k
}

// benchTokenHandler returns m2mauth's token handler over a memstore with
// one client, signing with alg, and that client's Basic Authorization
// header value.
func benchTokenHandler(b testing.TB, alg jose.SignatureAlgorithm) (http.Handler, string) {
	b.Helper()
	store := memstore.New()
	plain, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
	require.NoError(b, err)
	require.NoError(b, store.CreateClient(context.Background(), &m2mauth.Client{
		ID:      "bench-client",
		Secrets: []m2mauth.Secret{sec},
		Grants:  map[string]m2mauth.Scopes{benchAudience: {"read", "write"}},
	}))
	keys, err := m2mauth.NewStaticKeys(benchSigningKey(b, alg))
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
// through m2mauth's handler, in process, for each algorithm.
func BenchmarkTokenHandler(b *testing.B) {
	for _, alg := range benchAlgorithms {
		b.Run(string(alg), func(b *testing.B) {
			h, auth := benchTokenHandler(b, alg)
			runTokenBench(b, h, auth)
		})
	}
}

// BenchmarkTokenHandlerAlone is the handler's own cost: the same token
// request served again and again, with its body rewound, to a
// ResponseWriter that keeps nothing. Beside BenchmarkTokenHandler, which
// builds a request and a recorder each time like a server, it shows how
// much of a token is the handler's work and how much is what a fresh
// request's memory and the collector cost around it.
func BenchmarkTokenHandlerAlone(b *testing.B) {
	h, auth := benchTokenHandler(b, jose.HS256)
	body := strings.NewReader(benchBody)
	r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", body)
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Authorization", auth)
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		body.Reset(benchBody)
		clear(w.h)
		h.ServeHTTP(w, r)
		if w.code != http.StatusOK {
			b.Fatalf("status %d", w.code)
		}
	}
}

// discardWriter is a ResponseWriter that keeps the status and headers
// and drops the body.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }

// BenchmarkTokenHandlerBare is the harness cost: a handler that only
// writes 200.
func BenchmarkTokenHandlerBare(b *testing.B) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	runTokenBench(b, h, "Basic Yjpj")
}

// BenchmarkTokenHandlerFloor is a minimal hand-written token endpoint doing
// the same work with go-jose's JWT builder: parse the form, compare a
// plaintext secret in constant time, sign the same claims, for each
// algorithm.
func BenchmarkTokenHandlerFloor(b *testing.B) {
	for _, alg := range benchAlgorithms {
		b.Run(string(alg), func(b *testing.B) { benchTokenHandlerFloor(b, alg) })
	}
}

func benchTokenHandlerFloor(b *testing.B, alg jose.SignatureAlgorithm) {
	key := benchSigningKey(b, alg)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key.Key},
		(&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", key.KeyID))
	require.NoError(b, err)
	const id, secret = "bench-client", "floor-secret-floor-secret-floor-secret-xx"
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if err := r.ParseForm(); err != nil || !ok || u != id ||
			subtle.ConstantTimeCompare([]byte(p), []byte(secret)) != 1 ||
			r.PostForm.Get("grant_type") != "client_credentials" {
			http.Error(w, `{"error":"invalid_request"}`, http.StatusBadRequest)
			return
		}
		scope := r.PostForm.Get("scope")
		tok, err := floorSign(signer, id, scope)
		if err != nil {
			http.Error(w, `{"error":"server_error"}`, http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(map[string]any{
			"access_token": tok, "token_type": "Bearer", "expires_in": 3600, "scope": scope,
		})
	})
	runTokenBench(b, h, "Basic "+base64.StdEncoding.EncodeToString([]byte(id+":"+secret)))
}

// floorClaims are the claims the go-jose floors sign and read.
type floorClaims struct {
	jwt.Claims
	ClientID string `json:"client_id"`
	Scope    string `json:"scope"`
}

// floorSign makes a token with go-jose's JWT builder: the claims of an
// access token for id, marshalled by go-jose, signed by signer.
func floorSign(signer jose.Signer, id, scope string) (string, error) {
	var jti [16]byte
	rand.Read(jti[:])
	now := time.Now()
	c := floorClaims{
		Claims: jwt.Claims{
			Issuer: benchIssuer, Subject: id, Audience: jwt.Audience{benchAudience},
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now),
			Expiry: jwt.NewNumericDate(now.Add(time.Hour)),
			ID:     base64.RawURLEncoding.EncodeToString(jti[:]),
		},
		ClientID: id,
		Scope:    scope,
	}
	return jwt.Signed(signer).Claims(c).Serialize()
}

// floorVerify checks a token with go-jose: ParseSigned with alg pinned,
// Claims with key, Expected validation.
func floorVerify(raw string, alg jose.SignatureAlgorithm, key any) (*floorClaims, error) {
	t, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{alg})
	if err != nil {
		return nil, err
	}
	var c floorClaims
	if err := t.Claims(key, &c); err != nil {
		return nil, err
	}
	if err := c.Claims.Validate(jwt.Expected{Issuer: benchIssuer, AnyAudience: jwt.Audience{benchAudience}, Time: time.Now()}); err != nil {
		return nil, err
	}
	return &c, nil
}

// BenchmarkJoseSign is the crypto cost of the issuance floor, without
// HTTP: go-jose's JWT builder marshalling and signing the claims.
func BenchmarkJoseSign(b *testing.B) {
	for _, alg := range benchAlgorithms {
		b.Run(string(alg), func(b *testing.B) {
			key := benchSigningKey(b, alg)
			signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key.Key},
				(&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", key.KeyID))
			require.NoError(b, err)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := floorSign(signer, "bench-client", "read"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkJoseVerify is the crypto cost of the validation floor, without
// HTTP: go-jose parsing, verifying and unmarshalling the claims.
func BenchmarkJoseVerify(b *testing.B) {
	for _, alg := range benchAlgorithms {
		b.Run(string(alg), func(b *testing.B) {
			tok, _ := benchToken(b, alg)
			key := benchVerifyingKey(b, alg).Key
			b.ReportAllocs()
			for b.Loop() {
				if _, err := floorVerify(tok, alg, key); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestTokenHandlerRetainsNothing issues many tokens and checks that the
// live heap does not grow with them: issuing stores nothing.
func TestTokenHandlerRetainsNothing(t *testing.T) {
	h, auth := benchTokenHandler(t, jose.HS256)
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

// benchToken issues a real token signed with alg through the token
// handler, and returns it with a provider of its verification key.
func benchToken(b *testing.B, alg jose.SignatureAlgorithm) (string, m2mauth.KeyProvider) {
	b.Helper()
	h, auth := benchTokenHandler(b, alg)
	r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader(benchBody))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Authorization", auth)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var resp struct {
		AccessToken string `json:"access_token"`
	}
	require.NoError(b, json.Unmarshal(w.Body.Bytes(), &resp))
	return resp.AccessToken, verifyOnly{&jose.JSONWebKeySet{Keys: []jose.JSONWebKey{benchVerifyingKey(b, alg)}}}
}

func benchValidator(b *testing.B, alg jose.SignatureAlgorithm, cacheSize int) (http.Handler, string) {
	tok, keys := benchToken(b, alg)
	v, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{
		Issuer: benchIssuer, Audience: benchAudience, CacheSize: cacheSize,
	})
	require.NoError(b, err)
	return v.RequireScopes("read")(benchRoute), tok
}

// BenchmarkRequireScopes is the hot path: a token seen before, answered
// from the verified-token cache, whatever its algorithm.
func BenchmarkRequireScopes(b *testing.B) {
	for _, alg := range benchAlgorithms {
		b.Run(string(alg), func(b *testing.B) {
			h, tok := benchValidator(b, alg, 0)
			runRouteBench(b, h, tok)
		})
	}
}

// BenchmarkRequireScopesAlone is a cache hit with nothing around it: the
// same request again and again, to a writer that keeps nothing. What is
// left is the middleware's own work and the copy of the request that
// hands the claims on, without the recorder and its garbage, which vary
// more from run to run than the hit itself.
func BenchmarkRequireScopesAlone(b *testing.B) {
	h, tok := benchValidator(b, jose.HS256, 0)
	r := httptest.NewRequest(http.MethodGet, "/api/builders", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, r)
		if w.code != http.StatusNoContent {
			b.Fatalf("status %d", w.code)
		}
	}
}

// BenchmarkRequireScopesUncached verifies the token from scratch each
// time, for each algorithm.
func BenchmarkRequireScopesUncached(b *testing.B) {
	for _, alg := range benchAlgorithms {
		b.Run(string(alg), func(b *testing.B) {
			h, tok := benchValidator(b, alg, -1)
			runRouteBench(b, h, tok)
		})
	}
}

// BenchmarkValidateUncached is Validator.Validate of an HS256 token from
// scratch, without a request around it: the verification alone, which
// varies less from run to run than the route.
func BenchmarkValidateUncached(b *testing.B) {
	tok, keys := benchToken(b, jose.HS256)
	v, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{Issuer: benchIssuer, Audience: benchAudience, CacheSize: -1})
	require.NoError(b, err)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Validate(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRequireScopesBare is the harness cost: the 204 route alone.
func BenchmarkRequireScopesBare(b *testing.B) {
	tok, _ := benchToken(b, jose.HS256)
	runRouteBench(b, benchRoute, tok)
}

// BenchmarkRequireScopesFloor is a minimal hand-written check with go-jose:
// ParseSigned, Claims, Expected validation and a scope check, for each
// algorithm.
func BenchmarkRequireScopesFloor(b *testing.B) {
	for _, alg := range benchAlgorithms {
		b.Run(string(alg), func(b *testing.B) { benchRequireScopesFloor(b, alg) })
	}
}

func benchRequireScopesFloor(b *testing.B, alg jose.SignatureAlgorithm) {
	tok, _ := benchToken(b, alg)
	key := benchVerifyingKey(b, alg).Key
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		c, err := floorVerify(raw, alg, key)
		if err != nil {
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

// benchRevocations is a realistic revocation snapshot: 1,000 client
// watermarks, the token's client among them with a watermark before the
// token, and 10,000 revoked token ids, the token's not among them.
func benchRevocations(clientID string, iat time.Time) *m2mauth.Revocations {
	r := &m2mauth.Revocations{
		Version: 1,
		Clients: make(map[string]time.Time, 1000),
		Tokens:  make(map[string]time.Time, 10000),
	}
	for i := range 999 {
		r.Clients[fmt.Sprintf("client-%04d", i)] = iat.Add(-time.Minute)
	}
	r.Clients[clientID] = iat.Add(-time.Hour)
	for i := range 10000 {
		r.Tokens[fmt.Sprintf("revoked-jti-%06d-xxxxxxxx", i)] = iat.Add(time.Hour)
	}
	return r
}

// benchRevocationPoller returns a poller holding benchRevocations.
func benchRevocationPoller(b *testing.B, clientID string, iat time.Time) *m2mauth.RevocationPoller {
	b.Helper()
	p, err := m2mauth.NewRevocationPoller(&fakeFeed{revs: benchRevocations(clientID, iat)}, m2mauth.RevocationPollerConfig{Interval: time.Hour})
	require.NoError(b, err)
	b.Cleanup(func() { p.Close() })
	require.NoError(b, p.Refresh(context.Background()))
	return p
}

// BenchmarkValidateRevocations measures Validator.Validate, without
// HTTP, from the cache and from scratch, without a revocation source and
// with a RevocationPoller holding 1,000 client watermarks and 10,000
// revoked token ids: the difference is the cost of the revocation check.
func BenchmarkValidateRevocations(b *testing.B) {
	for _, alg := range []jose.SignatureAlgorithm{jose.HS256, jose.ES256} {
		tok, keys := benchToken(b, alg)
		parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{alg})
		require.NoError(b, err)
		var c jwt.Claims
		require.NoError(b, parsed.UnsafeClaimsWithoutVerification(&c))
		for _, cached := range []bool{true, false} {
			for _, revoking := range []bool{false, true} {
				name := string(alg) + "/uncached"
				if cached {
					name = string(alg) + "/cached"
				}
				name += map[bool]string{false: "/none", true: "/poller"}[revoking]
				b.Run(name, func(b *testing.B) {
					cfg := m2mauth.ValidatorConfig{Issuer: benchIssuer, Audience: benchAudience}
					if !cached {
						cfg.CacheSize = -1
					}
					if revoking {
						cfg.Revocations = benchRevocationPoller(b, "bench-client", c.IssuedAt.Time())
					}
					v, err := m2mauth.NewValidator(keys, cfg)
					require.NoError(b, err)
					ctx := context.Background()
					_, err = v.Validate(ctx, tok)
					require.NoError(b, err)
					b.ReportAllocs()
					for b.Loop() {
						if _, err := v.Validate(ctx, tok); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}

// BenchmarkValidateRevocationsParallel is the cache hit with the
// revocation check on every core: the snapshot is shared read-only.
func BenchmarkValidateRevocationsParallel(b *testing.B) {
	tok, keys := benchToken(b, jose.HS256)
	for _, revoking := range []bool{false, true} {
		b.Run(map[bool]string{false: "none", true: "poller"}[revoking], func(b *testing.B) {
			cfg := m2mauth.ValidatorConfig{Issuer: benchIssuer, Audience: benchAudience}
			if revoking {
				cfg.Revocations = benchRevocationPoller(b, "bench-client", time.Now())
			}
			v, err := m2mauth.NewValidator(keys, cfg)
			require.NoError(b, err)
			ctx := context.Background()
			_, err = v.Validate(ctx, tok)
			require.NoError(b, err)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := v.Validate(ctx, tok); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// BenchmarkValidateRevocationsCheck is the revocation check alone, as
// the validator makes it: the poller's snapshot, then Revoked against
// 1,000 client watermarks and 10,000 revoked token ids.
func BenchmarkValidateRevocationsCheck(b *testing.B) {
	iat := time.Now()
	p := benchRevocationPoller(b, "bench-client", iat)
	var src m2mauth.RevocationSource = p
	b.ReportAllocs()
	for b.Loop() {
		revs, err := src.CurrentRevocations()
		if err != nil || revs.Revoked("bench-client", "EpB3knDcxoU9flg8sya8ZA", iat) {
			b.Fatal("revoked")
		}
	}
}

// BenchmarkTokenHandlerManagedKeys compares token issuance signing with
// ManagedKeys (over a memstore KeyStore, real clock) against StaticKeys
// holding a key of the same algorithm: the managed keys are read from
// an in-memory snapshot, so the two should cost the same.
func BenchmarkTokenHandlerManagedKeys(b *testing.B) {
	for _, alg := range []jose.SignatureAlgorithm{jose.HS256, jose.ES256} {
		b.Run("static/"+string(alg), func(b *testing.B) {
			h, auth := benchTokenHandler(b, alg)
			runTokenBench(b, h, auth)
		})
		b.Run("managed/"+string(alg), func(b *testing.B) {
			store := memstore.New()
			kek := make([]byte, m2mauth.KEKSize)
			rand.Read(kek)
			sealer, err := m2mauth.NewAESKeySealer(kek)
			require.NoError(b, err)
			keys, err := m2mauth.NewManagedKeys(context.Background(), store, sealer, m2mauth.ManagedKeysConfig{
				Algorithm: alg,
				Logger:    slog.New(slog.DiscardHandler),
			})
			require.NoError(b, err)
			b.Cleanup(func() { keys.Close() })
			plain, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
			require.NoError(b, err)
			require.NoError(b, store.CreateClient(context.Background(), &m2mauth.Client{
				ID:      "bench-client",
				Secrets: []m2mauth.Secret{sec},
				Grants:  map[string]m2mauth.Scopes{benchAudience: {"read", "write"}},
			}))
			h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
				Issuer:          benchIssuer,
				DefaultAudience: benchAudience,
				Auditor:         m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {}),
			})
			require.NoError(b, err)
			runTokenBench(b, h, "Basic "+base64.StdEncoding.EncodeToString([]byte("bench-client:"+plain)))
		})
	}
}

package m2mauth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

// TestIssuedTokenClaims decodes an issued token with go-jose alone and
// checks the header (RFC 9068 §2.1) and every claim (RFC 9068 §2.2).
func TestIssuedTokenClaims(t *testing.T) {
	f := newFixture(t)
	w, resp := f.do(t, request{body: "grant_type=client_credentials&scope=write+read", headers: auth(basic("svc", f.secret))})
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())

	tok, err := jwt.ParseSigned(resp.AccessToken, []jose.SignatureAlgorithm{jose.HS256})
	require.NoError(t, err)
	require.Len(t, tok.Headers, 1)
	h := tok.Headers[0]
	assert.Equal(t, "HS256", h.Algorithm)
	assert.Equal(t, "k1", h.KeyID)
	assert.Equal(t, "at+jwt", h.ExtraHeaders[jose.HeaderType])

	var raw map[string]any
	var std jwt.Claims
	require.NoError(t, tok.Claims([]byte("0123456789abcdef0123456789abcdef"), &raw, &std))
	now := f.clock().Unix()
	assert.Equal(t, map[string]any{
		"iss":       testIssuer,
		"sub":       "svc",
		"client_id": "svc",
		"aud":       testAudience,
		"iat":       float64(now),
		"nbf":       float64(now),
		"exp":       float64(now + 3600),
		"jti":       raw["jti"],
		"scope":     "write read",
	}, raw)
	assert.Len(t, raw["jti"], 22, "128 random bits, base64url")
	require.NoError(t, std.ValidateWithLeeway(jwt.Expected{
		Issuer: testIssuer, AnyAudience: jwt.Audience{testAudience}, Time: f.clock(),
	}, 0))
	assert.Equal(t, "write read", resp.Scope)

	_, err = jwt.ParseSigned(resp.AccessToken, []jose.SignatureAlgorithm{jose.HS256})
	require.NoError(t, err)
	err = tok.Claims([]byte("another-key-another-key-another-key!"), &raw)
	assert.Error(t, err, "signature must not verify under another key")
}

// TestIssuedTokenEscaping: client ids may contain any printable ASCII,
// including characters JSON must escape.
func TestIssuedTokenEscaping(t *testing.T) {
	store := memstore.New()
	plain, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
	require.NoError(t, err)
	id := `we"ird\id<&>`
	aud := "urn:aud:ünïcode"
	require.NoError(t, store.CreateClient(t.Context(), &m2mauth.Client{
		ID: id, Secrets: []m2mauth.Secret{sec}, Grants: map[string]m2mauth.Scopes{aud: {"x"}},
	}))
	key, err := m2mauth.NewHS256Key("", []byte("0123456789abcdef0123456789abcdef"))
	require.NoError(t, err)
	keys, err := m2mauth.NewStaticKeys(key)
	require.NoError(t, err)
	h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer: "https://iss.example/\u2028", DefaultAudience: aud, Auditor: m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {}),
	})
	require.NoError(t, err)
	r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/", strings.NewReader("grant_type=client_credentials"))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Authorization", basic(id, plain))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	var resp tokenResponse
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &resp))
	tok, err := jwt.ParseSigned(resp.AccessToken, []jose.SignatureAlgorithm{jose.HS256})
	require.NoError(t, err)
	assert.Equal(t, key.KeyID, tok.Headers[0].KeyID)
	var c struct {
		jwt.Claims
		ClientID string `json:"client_id"`
	}
	require.NoError(t, tok.Claims(key.Key, &c))
	assert.Equal(t, id, c.ClientID)
	assert.Equal(t, id, c.Subject)
	assert.Equal(t, jwt.Audience{aud}, c.Audience)
	assert.Equal(t, "https://iss.example/\u2028", c.Issuer)
}

// TestJTIUnique: 10,000 tokens carry 10,000 distinct jti values.
func TestJTIUnique(t *testing.T) {
	f := newFixture(t, func(c *m2mauth.TokenHandlerConfig) {
		c.Auditor = m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {})
	})
	seen := make(map[string]bool, 10000)
	for range 10000 {
		w, resp := f.do(t, request{body: "grant_type=client_credentials", headers: auth(basic("svc", f.secret))})
		require.Equal(t, http.StatusOK, w.Code)
		tok, err := jwt.ParseSigned(resp.AccessToken, []jose.SignatureAlgorithm{jose.HS256})
		require.NoError(t, err)
		var c jwt.Claims
		require.NoError(t, tok.UnsafeClaimsWithoutVerification(&c))
		require.False(t, seen[c.ID], "jti %q repeated", c.ID)
		seen[c.ID] = true
	}
	assert.Len(t, seen, 10000)
}

// TestNoSecretsInAuditOrLogs runs hostile and normal requests with the slog
// auditor and logger writing to one buffer, and checks that no secret and
// no issued token appears in it, nor in any error description.
func TestNoSecretsInAuditOrLogs(t *testing.T) {
	var logs bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f := newFixture(t, func(c *m2mauth.TokenHandlerConfig) {
		c.Auditor = m2mauth.NewSlogAuditor(logger)
		c.Logger = logger
	})
	secrets := []string{f.secret, f.oldSecret, f.newSecret, f.disSecret, f.weirdSecret, "guessed-secret-value"}
	cc := "grant_type=client_credentials"
	reqs := []request{
		{body: cc, headers: auth(basic("svc", f.secret))},
		{body: cc, headers: auth(basic("svc", "guessed-secret-value"))},
		{body: cc, headers: auth(basic("nobody", f.secret))},
		{body: cc, headers: auth(basic("rotated", f.oldSecret))},
		{body: cc, headers: auth(basic("disabled", f.disSecret))},
		{body: cc + "&client_id=svc&client_secret=" + url.QueryEscape(f.secret), headers: auth(basic("svc", f.secret))},
		{body: cc + "&client_id=svc&client_secret=" + url.QueryEscape(f.secret) + "&client_secret=" + url.QueryEscape(f.newSecret)},
		{body: cc + "&client_secret=" + url.QueryEscape(f.secret)},
		{body: cc + "&scope=admin", headers: auth(basic("weird:id+1", f.weirdSecret))},
		{body: cc + "&audience=nope", headers: auth(basic("svc", f.secret))},
		{contentType: "application/json", body: `{"grant_type":"client_credentials","client_id":"svc","client_secret":"` + f.secret + `","scope":7}`},
		{contentType: "application/json", body: `{"client_secret":"` + f.secret + `","client_secret":"` + f.secret + `"}`},
		{method: http.MethodGet, target: "/oauth/token?client_secret=" + url.QueryEscape(f.secret), contentType: "-"},
		{contentType: "text/plain", body: "client_secret=" + f.secret},
		{body: cc, headers: auth("Bearer " + f.secret)},
		{body: cc, headers: map[string][]string{"Authorization": {basic("svc", f.secret)}, "User-Agent": {"curl/8.0"}}},
	}
	var tokens []string
	for _, rq := range reqs {
		w, resp := f.do(t, rq)
		for _, s := range secrets {
			require.NotContains(t, resp.ErrorDescription, s)
		}
		if resp.AccessToken != "" {
			tokens = append(tokens, resp.AccessToken)
		}
		_ = w
	}
	require.NotEmpty(t, tokens)
	out := logs.String()
	require.Contains(t, out, `"event":"token_issued"`, "the auditor did write")
	require.Contains(t, out, `"event":"client_auth_failed"`)
	for _, s := range secrets[:5] {
		assert.NotContains(t, out, s, "a secret appears in the logs")
	}
	for _, tok := range tokens {
		assert.NotContains(t, out, tok)
		sig := tok[strings.LastIndexByte(tok, '.')+1:]
		assert.NotContains(t, out, sig, "a token signature appears in the logs")
	}
	for _, rq := range reqs {
		for _, v := range rq.headers["Authorization"] {
			_, cred, _ := strings.Cut(v, " ")
			assert.NotContains(t, out, cred, "an Authorization header appears in the logs")
		}
	}
}

package m2mauth_test

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
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

var (
	keyA = []byte("0123456789abcdef0123456789abcdef")
	keyB = []byte("fedcba9876543210fedcba9876543210")
)

// swapKeys is a KeyProvider whose keys can be replaced, as a rotating
// provider's would be.
type swapKeys struct {
	p atomic.Pointer[m2mauth.StaticKeys]
}

func (s *swapKeys) set(t testing.TB, signing jose.JSONWebKey, previous ...jose.JSONWebKey) {
	t.Helper()
	k, err := m2mauth.NewStaticKeys(signing, previous...)
	require.NoError(t, err)
	s.p.Store(k)
}

func (s *swapKeys) SigningKey(ctx context.Context) (*jose.JSONWebKey, error) {
	return s.p.Load().SigningKey(ctx)
}

func (s *swapKeys) VerificationKeys(ctx context.Context) (*jose.JSONWebKeySet, error) {
	return s.p.Load().VerificationKeys(ctx)
}

func hsKey(t testing.TB, kid string, secret []byte) jose.JSONWebKey {
	t.Helper()
	k, err := m2mauth.NewHS256Key(kid, secret)
	require.NoError(t, err)
	return k
}

// mint signs claims with go-jose, independently of the token handler.
// typ "" leaves the typ header out.
func mint(t testing.TB, secret []byte, kid, typ string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithHeader("kid", kid)
	if typ != "" {
		opts = opts.WithType(jose.ContentType(typ))
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: secret}, opts)
	require.NoError(t, err)
	tok, err := jwt.Signed(sig).Claims(claims).Serialize()
	require.NoError(t, err)
	return tok
}

// validClaims returns the claims of a good token issued at now.
func validClaims(now time.Time) map[string]any {
	return map[string]any{
		"iss": testIssuer, "sub": "svc", "client_id": "svc", "aud": testAudience,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"jti": "jti-1", "scope": "read write",
	}
}

func with(c map[string]any, kv ...any) map[string]any {
	out := map[string]any{}
	for k, v := range c {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
			continue
		}
		out[kv[i].(string)] = kv[i+1]
	}
	return out
}

// protected builds a validator over keys and a route needing scopes, whose
// handler echoes the client id from the context.
type protected struct {
	v      *m2mauth.Validator
	keys   *swapKeys
	now    atomic.Pointer[time.Time]
	mu     sync.Mutex
	events []m2mauth.AuditEvent
}

func newProtected(t testing.TB, edit ...func(*m2mauth.ValidatorConfig)) *protected {
	t.Helper()
	p := &protected{keys: &swapKeys{}}
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	p.now.Store(&now)
	p.keys.set(t, hsKey(t, "k2", keyB), hsKey(t, "k1", keyA))
	cfg := m2mauth.ValidatorConfig{
		Issuer:   testIssuer,
		Audience: testAudience,
		Now:      func() time.Time { return *p.now.Load() },
		Auditor: m2mauth.AuditorFunc(func(_ context.Context, e m2mauth.AuditEvent) {
			p.mu.Lock()
			p.events = append(p.events, e)
			p.mu.Unlock()
		}),
	}
	for _, e := range edit {
		e(&cfg)
	}
	var err error
	p.v, err = m2mauth.NewValidator(p.keys, cfg)
	require.NoError(t, err)
	return p
}

func (p *protected) clock() time.Time { return *p.now.Load() }

func (p *protected) advance(d time.Duration) {
	n := p.clock().Add(d)
	p.now.Store(&n)
}

func (p *protected) lastEvent(t testing.TB) m2mauth.AuditEvent {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	require.NotEmpty(t, p.events)
	return p.events[len(p.events)-1]
}

// echo is the protected handler: it answers 200 with the client id and
// scopes it finds in the context.
var echo = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	c, ok := m2mauth.ClaimsFromContext(r.Context())
	if !ok {
		http.Error(w, "no claims", http.StatusInternalServerError)
		return
	}
	w.Write([]byte(c.ClientID + " " + c.Scopes.String()))
})

// getHangingUp serves h over HTTP and sends it one GET, with authz as
// its Authorization header when set, whose client hangs up once hangUp
// delivers, if hangUp is not nil. It returns once h has returned, and
// closes served then. The response's body is closed.
func getHangingUp(t *testing.T, h http.Handler, authz string, hangUp <-chan struct{}, served chan struct{}) (*http.Response, error) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(served)
		h.ServeHTTP(w, r)
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if hangUp != nil {
		go func() {
			<-hangUp
			cancel()
		}()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	require.NoError(t, err)
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := srv.Client().Do(req)
	if err == nil {
		resp.Body.Close()
	}
	<-served
	return resp, err
}

func call(h http.Handler, authz ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, "/api/builders", nil)
	for _, a := range authz {
		r.Header.Add("Authorization", a)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestRequireScopes(t *testing.T) {
	p := newProtected(t)
	now := p.clock()
	good := mint(t, keyB, "k2", "at+jwt", validClaims(now))
	realm := `Bearer realm="m2mauth"`
	invalid := func(desc string) string {
		return realm + `, error="invalid_token", error_description="` + desc + `"`
	}
	badReq := func(desc string) string {
		return realm + `, error="invalid_request", error_description="` + desc + `"`
	}
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","kid":"k2","typ":"at+jwt"}`)) + "." +
		strings.Split(good, ".")[1] + "."
	parts := strings.Split(good, ".")
	tamperedPayload := base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(
		string(mustDecode(t, parts[1])), `"read write"`, `"read write admin"`, 1)))
	tampered := parts[0] + "." + tamperedPayload + "." + parts[2]
	// An HS256 token whose header claims the key decides nothing: the
	// signature is made with the kid's bytes but alg HS384.
	hs384, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS384, Key: append(append([]byte{}, keyB...), keyB[:16]...)},
		(&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", "k2"))
	require.NoError(t, err)
	hs384Tok, err := jwt.Signed(hs384).Claims(validClaims(now)).Serialize()
	require.NoError(t, err)

	tests := []struct {
		name      string
		authz     []string
		scopes    []string
		any       bool
		status    int
		challenge string
		code      string
	}{
		{name: "valid token", authz: []string{"Bearer " + good}, scopes: []string{"read"}, status: 200},
		{name: "all of two scopes", authz: []string{"Bearer " + good}, scopes: []string{"read", "write"}, status: 200},
		{name: "lowercase bearer, RFC 6750 §2.1 / RFC 7235 §2.1", authz: []string{"bearer " + good}, scopes: []string{"read"}, status: 200},
		{name: "uppercase BEARER", authz: []string{"BEARER " + good}, scopes: []string{"read"}, status: 200},
		{name: "two spaces after the scheme, RFC 7235 §2.1 (1*SP)", authz: []string{"Bearer  " + good}, scopes: []string{"read"}, status: 200},
		{name: "typ application/at+jwt, RFC 9068 §4", authz: []string{"Bearer " + mint(t, keyB, "k2", "application/at+jwt", validClaims(now))}, scopes: []string{"read"}, status: 200},
		{name: "previous key still in the set", authz: []string{"Bearer " + mint(t, keyA, "k1", "at+jwt", validClaims(now))}, scopes: []string{"read"}, status: 200},
		{name: "aud array containing this API, RFC 7519 §4.1.3", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "aud", []string{"other", testAudience}))}, scopes: []string{"read"}, status: 200},
		{name: "expired within leeway", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "exp", now.Add(-20*time.Second).Unix()))}, scopes: []string{"read"}, status: 200},
		{name: "nbf within leeway", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "nbf", now.Add(20*time.Second).Unix()))}, scopes: []string{"read"}, status: 200},
		{name: "exp a second inside the leeway, RFC 7519 §4.1.4", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "exp", now.Add(-29*time.Second).Unix()))}, scopes: []string{"read"}, status: 200},
		{name: "nbf at the leeway's end, RFC 7519 §4.1.5", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "nbf", now.Add(30*time.Second).Unix()))}, scopes: []string{"read"}, status: 200},
		{name: "iat at the leeway's end, RFC 7519 §4.1.6", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "iat", now.Add(30*time.Second).Unix()))}, scopes: []string{"read"}, status: 200},

		{name: "missing header, RFC 6750 §3.1: no error code, in the challenge or the body", status: 401, challenge: realm},
		{name: "Basic scheme is no bearer token, RFC 6750 §3.1", authz: []string{"Basic c3ZjOnNlY3JldA=="}, status: 401, challenge: realm},
		{name: "two Authorization headers, RFC 6750 §3.1", authz: []string{"Bearer " + good, "Bearer " + good}, status: 400, challenge: badReq("more than one Authorization header"), code: "invalid_request"},
		{name: "empty token", authz: []string{"Bearer "}, status: 400, challenge: badReq("malformed bearer token"), code: "invalid_request"},
		{name: "scheme only", authz: []string{"Bearer"}, status: 400, challenge: badReq("malformed bearer token"), code: "invalid_request"},
		{name: "not token68, RFC 6750 §2.1", authz: []string{"Bearer a b"}, status: 400, challenge: badReq("malformed bearer token"), code: "invalid_request"},
		{name: "token with quote", authz: []string{`Bearer "abc"`}, status: 400, challenge: badReq("malformed bearer token"), code: "invalid_request"},
		{name: "garbage", authz: []string{"Bearer garbage"}, status: 401, challenge: invalid("token is not a JWS compact serialization"), code: "invalid_token"},
		{name: "garbage with dots", authz: []string{"Bearer a.b.c"}, status: 401, challenge: invalid("malformed token header"), code: "invalid_token"},
		{name: "alg none, RFC 8725 §3.1", authz: []string{"Bearer " + none}, status: 401, challenge: invalid("token algorithm not allowed"), code: "invalid_token"},
		{name: "HS384 not allowed", authz: []string{"Bearer " + hs384Tok}, status: 401, challenge: invalid("token algorithm not allowed"), code: "invalid_token"},
		{name: "signed with a wrong key", authz: []string{"Bearer " + mint(t, []byte("wrong-key-wrong-key-wrong-key-!!"), "k2", "at+jwt", validClaims(now))}, status: 401, challenge: invalid("invalid token signature"), code: "invalid_token"},
		{name: "tampered payload", authz: []string{"Bearer " + tampered}, status: 401, challenge: invalid("invalid token signature"), code: "invalid_token"},
		{name: "signature stripped", authz: []string{"Bearer " + parts[0] + "." + parts[1] + "."}, status: 401, challenge: invalid("invalid token signature"), code: "invalid_token"},
		{name: "unknown kid", authz: []string{"Bearer " + mint(t, keyB, "k9", "at+jwt", validClaims(now))}, status: 401, challenge: invalid("token signed by an unknown key"), code: "invalid_token"},
		{name: "wrong typ, RFC 9068 §4", authz: []string{"Bearer " + mint(t, keyB, "k2", "JWT", validClaims(now))}, status: 401, challenge: invalid("token is not an access token (typ must be at+jwt)"), code: "invalid_token"},
		{name: "missing typ, RFC 9068 §4", authz: []string{"Bearer " + mint(t, keyB, "k2", "", validClaims(now))}, status: 401, challenge: invalid("token is not an access token (typ must be at+jwt)"), code: "invalid_token"},
		{name: "wrong iss, RFC 9068 §4", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "iss", "https://evil.example.com"))}, status: 401, challenge: invalid("token issuer is not trusted"), code: "invalid_token"},
		{name: "wrong aud, RFC 9068 §4", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "aud", otherAud))}, status: 401, challenge: invalid("token is not for this audience"), code: "invalid_token"},
		{name: "expired, RFC 7519 §4.1.4", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "exp", now.Add(-31*time.Second).Unix()))}, status: 401, challenge: invalid("token expired"), code: "invalid_token"},
		{name: "nbf in the future, RFC 7519 §4.1.5", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "nbf", now.Add(time.Minute).Unix()))}, status: 401, challenge: invalid("token is not valid yet"), code: "invalid_token"},
		{name: "iat in the future", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "iat", now.Add(time.Minute).Unix()))}, status: 401, challenge: invalid("token issued in the future"), code: "invalid_token"},
		{name: "exp at the leeway's end, RFC 7519 §4.1.4: valid only before it", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "exp", now.Add(-30*time.Second).Unix()))}, status: 401, challenge: invalid("token expired"), code: "invalid_token"},
		{name: "nbf a second past the leeway, RFC 7519 §4.1.5", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "nbf", now.Add(31*time.Second).Unix()))}, status: 401, challenge: invalid("token is not valid yet"), code: "invalid_token"},
		{name: "iat a second past the leeway", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "iat", now.Add(31*time.Second).Unix()))}, status: 401, challenge: invalid("token issued in the future"), code: "invalid_token"},
		{name: "wrong iss and expired: the issuer is told", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "iss", "https://evil.example.com", "exp", now.Add(-time.Hour).Unix()))}, status: 401, challenge: invalid("token issuer is not trusted"), code: "invalid_token"},
		{name: "wrong aud and not yet valid: the audience is told", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "aud", otherAud, "nbf", now.Add(time.Hour).Unix()))}, status: 401, challenge: invalid("token is not for this audience"), code: "invalid_token"},
		{name: "expired and issued in the future: expiry is told", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "exp", now.Add(-time.Hour).Unix(), "iat", now.Add(time.Hour).Unix()))}, status: 401, challenge: invalid("token expired"), code: "invalid_token"},
		{name: "no exp, RFC 9068 §2.2", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "exp", nil))}, status: 401, challenge: invalid("token lacks a required claim"), code: "invalid_token"},
		{name: "no client_id, RFC 9068 §2.2", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "client_id", nil))}, status: 401, challenge: invalid("token lacks a required claim"), code: "invalid_token"},
		{name: "no sub, RFC 9068 §2.2", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "sub", nil))}, status: 401, challenge: invalid("token lacks a required claim"), code: "invalid_token"},
		{name: "malformed scope", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "scope", "read  write"))}, status: 401, challenge: invalid("token scope claim is malformed"), code: "invalid_token"},
		{name: "scope as array", authz: []string{"Bearer " + mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "scope", []string{"read"}))}, status: 401, challenge: invalid("malformed token claims"), code: "invalid_token"},

		{name: "insufficient scope, RFC 6750 §3.1", authz: []string{"Bearer " + good}, scopes: []string{"admin"}, status: 403,
			challenge: realm + `, error="insufficient_scope", error_description="the access token lacks a required scope", scope="admin"`, code: "insufficient_scope"},
		{name: "one of two scopes missing", authz: []string{"Bearer " + good}, scopes: []string{"read", "admin"}, status: 403,
			challenge: realm + `, error="insufficient_scope", error_description="the access token lacks a required scope", scope="read admin"`, code: "insufficient_scope"},
		{name: "any-of satisfied by one", authz: []string{"Bearer " + good}, scopes: []string{"admin", "write"}, any: true, status: 200},
		{name: "any-of satisfied by none", authz: []string{"Bearer " + good}, scopes: []string{"admin", "root"}, any: true, status: 403,
			challenge: realm + `, error="insufficient_scope", error_description="the access token lacks a required scope", scope="admin root"`, code: "insufficient_scope"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mw := p.v.RequireScopes(tc.scopes...)
			if tc.any {
				mw = p.v.RequireAnyScope(tc.scopes...)
			}
			w := call(mw(echo), tc.authz...)
			assert.Equal(t, tc.status, w.Code, "body: %s", w.Body)
			assert.Equal(t, tc.challenge, w.Header().Get("WWW-Authenticate"))
			if tc.status == http.StatusOK {
				assert.Equal(t, "svc read write", w.Body.String())
				return
			}
			assert.Equal(t, "no-store", w.Header().Get("Cache-Control"))
			if tc.code == "" {
				assert.Empty(t, w.Body.String())
				assert.Empty(t, w.Header().Get("Content-Type"))
				return
			}
			assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
			var body map[string]string
			require.NoError(t, json.Unmarshal(w.Body.Bytes(), &body))
			assert.Equal(t, tc.code, body["error"])
			assert.NotEmpty(t, body["error_description"])
			for _, a := range tc.authz {
				_, tok, _ := strings.Cut(a, " ")
				if len(tok) > 8 {
					assert.NotContains(t, w.Body.String(), tok, "the token is echoed")
					assert.NotContains(t, w.Header().Get("WWW-Authenticate"), tok)
				}
			}
		})
	}
}

func mustDecode(t testing.TB, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	require.NoError(t, err)
	return b
}

// assertRefused checks a refusal rendered by the default error handler:
// the status, the exact challenge and the exact JSON body.
func assertRefused(t *testing.T, w *httptest.ResponseRecorder, status int, challenge, body string) {
	t.Helper()
	assert.Equal(t, status, w.Code, "body: %s", w.Body)
	assert.Equal(t, challenge, w.Header().Get("WWW-Authenticate"))
	assert.Equal(t, "no-store", w.Header().Get("Cache-Control"))
	if body == "" {
		assert.Empty(t, w.Body.String())
		return
	}
	assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
	assert.JSONEq(t, body, w.Body.String())
}

// signHS256 completes a signing input (header.payload, encoded by hand)
// into a token signed with secret, whatever the input's encoding.
func signHS256(secret []byte, input string) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(input))
	return input + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// twin returns s, a canonical base64url string whose last character has
// unused bits, with those bits set to bits: the same bytes under a
// non-canonical spelling (RFC 4648 §3.5).
func twin(t testing.TB, s string, bits byte) string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	unused := map[int]byte{2: 0b1111, 3: 0b11}[len(s)%4]
	require.NotZero(t, unused&bits, "%q has no unused bits to set", s)
	v := strings.IndexByte(alphabet, s[len(s)-1])
	require.GreaterOrEqual(t, v, 0)
	require.Zero(t, byte(v)&unused, "%q is not canonical", s)
	return s[:len(s)-1] + string(alphabet[byte(v)|bits&unused])
}

// TestRequireScopesNumericDate: exp, nbf and iat are NumericDates
// (RFC 7519 §2): seconds since the epoch, fractions allowed. Values a
// time.Time cannot hold, or that arithmetic on it overflows, are refused
// as malformed before any date is compared; the range accepted is
// [0, 253402300799], 1970 to the end of year 9999.
func TestRequireScopesNumericDate(t *testing.T) {
	p := newProtected(t)
	now := p.clock()
	h := p.v.RequireScopes("read")(echo)
	malformed := `Bearer realm="m2mauth", error="invalid_token", error_description="malformed token claims"`
	malformedBody := `{"error":"invalid_token","error_description":"malformed token claims"}`

	tests := []struct {
		name      string
		claim     string
		value     string // raw JSON
		status    int
		challenge string
		body      string
		reason    string
	}{
		{name: "exp int64 max, RFC 7519 §4.1.4", claim: "exp", value: "9223372036854775807", status: 401, challenge: malformed, body: malformedBody, reason: m2mauth.ReasonTokenMalformed},
		{name: "nbf int64 max overflows time, RFC 7519 §4.1.5", claim: "nbf", value: "9223372036854775807", status: 401, challenge: malformed, body: malformedBody, reason: m2mauth.ReasonTokenMalformed},
		{name: "iat int64 max overflows time, RFC 7519 §4.1.6", claim: "iat", value: "9223372036854775807", status: 401, challenge: malformed, body: malformedBody, reason: m2mauth.ReasonTokenMalformed},
		{name: "nbf int64 min, RFC 7519 §4.1.5", claim: "nbf", value: "-9223372036854775808", status: 401, challenge: malformed, body: malformedBody, reason: m2mauth.ReasonTokenMalformed},
		{name: "exp beyond int64 as an integer, RFC 7519 §2", claim: "exp", value: "92233720368547758070", status: 401, challenge: malformed, body: malformedBody, reason: m2mauth.ReasonTokenMalformed},
		{name: "exp 1e30, exponent form, RFC 7519 §2", claim: "exp", value: "1e30", status: 401, challenge: malformed, body: malformedBody, reason: m2mauth.ReasonTokenMalformed},
		{name: "nbf 9.3e18, exponent form past int64, RFC 7519 §2", claim: "nbf", value: "9.3e18", status: 401, challenge: malformed, body: malformedBody, reason: m2mauth.ReasonTokenMalformed},
		{name: "exp year 10000, RFC 7519 §2", claim: "exp", value: "253402300800", status: 401, challenge: malformed, body: malformedBody, reason: m2mauth.ReasonTokenMalformed},
		{name: "exp year 10000 in exponent form, RFC 7519 §2", claim: "exp", value: "2.534023008E+11", status: 401, challenge: malformed, body: malformedBody, reason: m2mauth.ReasonTokenMalformed},
		{name: "exp half a second past year 9999, RFC 7519 §2", claim: "exp", value: "253402300799.5", status: 401, challenge: malformed, body: malformedBody, reason: m2mauth.ReasonTokenMalformed},
		{name: "nbf -1, before the epoch, RFC 7519 §2", claim: "nbf", value: "-1", status: 401, challenge: malformed, body: malformedBody, reason: m2mauth.ReasonTokenMalformed},
		{name: "iat -1, before the epoch, RFC 7519 §2", claim: "iat", value: "-1", status: 401, challenge: malformed, body: malformedBody, reason: m2mauth.ReasonTokenMalformed},
		{name: "iat -0.5, fraction before the epoch, RFC 7519 §2", claim: "iat", value: "-0.5", status: 401, challenge: malformed, body: malformedBody, reason: m2mauth.ReasonTokenMalformed},
		{name: "exp -1e3, RFC 7519 §2", claim: "exp", value: "-1e3", status: 401, challenge: malformed, body: malformedBody, reason: m2mauth.ReasonTokenMalformed},

		{name: "exp last second of year 9999, RFC 7519 §2", claim: "exp", value: "253402300799", status: 200},
		{name: "nbf 0, the epoch", claim: "nbf", value: "0", status: 200},
		{name: "iat -0 is zero", claim: "iat", value: "-0", status: 200},
		{name: "nbf 1.5, fractional, RFC 7519 §2", claim: "nbf", value: "1.5", status: 200},
		{name: "iat in exponent form", claim: "iat", value: fmt.Sprintf("%de0", now.Unix()), status: 200},
		{name: "exp 1.5 is a date, long past, RFC 7519 §4.1.4", claim: "exp", value: "1.5", status: 401,
			challenge: `Bearer realm="m2mauth", error="invalid_token", error_description="token expired"`,
			body:      `{"error":"invalid_token","error_description":"token expired"}`, reason: m2mauth.ReasonTokenExpired},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok := mint(t, keyB, "k2", "at+jwt", with(validClaims(now), tc.claim, json.RawMessage(tc.value)))
			require.Contains(t, string(mustDecode(t, strings.Split(tok, ".")[1])), `"`+tc.claim+`":`+tc.value)
			w := call(h, "Bearer "+tok)
			if tc.status == http.StatusOK {
				assert.Equal(t, tc.status, w.Code, "body: %s", w.Body)
				assert.Equal(t, "svc read write", w.Body.String())
				return
			}
			assertRefused(t, w, tc.status, tc.challenge, tc.body)
			assert.Equal(t, tc.reason, p.lastEvent(t).Reason)
		})
	}
}

// TestRequireScopesCanonicalBase64: each part of a JWS is base64url
// without padding (RFC 7515 §2), and only its canonical spelling is
// accepted (RFC 4648 §3.5): the unused bits of the last character must be
// zero. Otherwise a token has other string forms that verify too
// (signature malleability, RFC 7515 §7.1), each a fresh token to a cache,
// a replay check or a log.
func TestRequireScopesCanonicalBase64(t *testing.T) {
	p := newProtected(t)
	now := p.clock()
	h := p.v.RequireScopes("read")(echo)
	good := mint(t, keyB, "k2", "at+jwt", validClaims(now))
	parts := strings.Split(good, ".")
	require.Len(t, parts[2], 43) // 256 bits in 258: the last character has 2 unused bits

	// A header and a payload whose encodings end with unused bits, signed
	// over their non-canonical spellings: the signature is good, only the
	// encoding is wrong.
	hdr := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","kid":"k2","typ":"at+jwt"}`))
	payloadJSON, err := json.Marshal(validClaims(now))
	require.NoError(t, err)
	for len(payloadJSON)%3 != 1 { // 4 unused bits in the last character
		payloadJSON = append(payloadJSON[:len(payloadJSON)-1], ' ', '}')
	}
	payload := base64.RawURLEncoding.EncodeToString(payloadJSON)
	require.Equal(t, 200, call(h, "Bearer "+signHS256(keyB, hdr+"."+payload)).Code, "the canonical hand-made token is good")

	realm := `Bearer realm="m2mauth"`
	invalid := func(desc string) (string, string) {
		return realm + `, error="invalid_token", error_description="` + desc + `"`,
			`{"error":"invalid_token","error_description":"` + desc + `"}`
	}
	tests := []struct {
		name  string
		token string
		desc  string
	}{
		{name: "signature, low unused bit set, RFC 7515 §7.1 / RFC 4648 §3.5", token: parts[0] + "." + parts[1] + "." + twin(t, parts[2], 0b01), desc: "invalid token signature"},
		{name: "signature, high unused bit set, RFC 4648 §3.5", token: parts[0] + "." + parts[1] + "." + twin(t, parts[2], 0b10), desc: "invalid token signature"},
		{name: "signature, both unused bits set, RFC 4648 §3.5", token: parts[0] + "." + parts[1] + "." + twin(t, parts[2], 0b11), desc: "invalid token signature"},
		{name: "signature padded with =, RFC 7515 §2", token: good + "=", desc: "invalid token signature"},
		{name: "signature in the standard alphabet, RFC 4648 §5", token: parts[0] + "." + parts[1] + ".+" + parts[2][1:], desc: "invalid token signature"},
		{name: "header with unused bits set, signed, RFC 4648 §3.5", token: signHS256(keyB, twin(t, hdr, 0b01)+"."+payload), desc: "malformed token header"},
		{name: "payload with unused bits set, signed, RFC 4648 §3.5", token: signHS256(keyB, hdr+"."+twin(t, payload, 0b1000)), desc: "malformed token claims"},
		{name: "payload with unused bits set, signed, RFC 4648 §3.5 (low bit)", token: signHS256(keyB, hdr+"."+twin(t, payload, 0b0001)), desc: "malformed token claims"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, 200, call(h, "Bearer "+good).Code, "the canonical token is good, and cached")
			hits := p.v.CacheStats().Hits
			challenge, body := invalid(tc.desc)
			assertRefused(t, call(h, "Bearer "+tc.token), 401, challenge, body)
			assert.Equal(t, hits, p.v.CacheStats().Hits, "a twin is never a cache hit")
		})
	}
}

// TestValidateStrictBase64: Validate, which takes any string, refuses the
// characters encoding/base64 would skip (CR and LF) and padding, even when
// the signature covers them: outside the base64url alphabet (RFC 7515 §2).
func TestValidateStrictBase64(t *testing.T) {
	p := newProtected(t)
	now := p.clock()
	hdr := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","kid":"k2","typ":"at+jwt"}`))
	payloadJSON, err := json.Marshal(validClaims(now))
	require.NoError(t, err)
	payload := base64.RawURLEncoding.EncodeToString(payloadJSON)
	_, err = p.v.Validate(t.Context(), signHS256(keyB, hdr+"."+payload))
	require.NoError(t, err, "the canonical hand-made token is good")

	tests := []struct {
		name, input, desc, reason string
	}{
		{name: "LF in the header, RFC 7515 §2", input: hdr[:8] + "\n" + hdr[8:] + "." + payload, desc: "malformed token header", reason: m2mauth.ReasonTokenMalformed},
		{name: "CRLF in the header, RFC 7515 §2", input: hdr[:8] + "\r\n" + hdr[8:] + "." + payload, desc: "malformed token header", reason: m2mauth.ReasonTokenMalformed},
		{name: "CR at the end of the payload, RFC 7515 §2", input: hdr + "." + payload + "\r", desc: "malformed token claims", reason: m2mauth.ReasonTokenMalformed},
		{name: "LF inside the payload, RFC 7515 §2", input: hdr + "." + payload[:20] + "\n" + payload[20:], desc: "malformed token claims", reason: m2mauth.ReasonTokenMalformed},
		{name: "padded header, RFC 7515 §2", input: base64.URLEncoding.EncodeToString([]byte(`{"alg":"HS256","kid":"k2","typ":"at+jwt"}`)) + "." + payload, desc: "malformed token header", reason: m2mauth.ReasonTokenMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.v.Validate(t.Context(), signHS256(keyB, tc.input))
			var e *m2mauth.Error
			require.ErrorAs(t, err, &e)
			assert.Equal(t, m2mauth.CodeInvalidToken, e.Code)
			assert.Equal(t, tc.desc, e.Description)
			assert.Equal(t, tc.reason, m2mauth.RejectionReason(err))
		})
	}
}

// TestRequireScopesOneBearerMethod: a client must not send the token by
// more than one method (RFC 6750 §2). A token in the Authorization header
// plus an access_token in the query (§2.3) or in a form body (§2.2) is
// 400 invalid_request. The query and body are never a source of tokens:
// without the header such requests get the bare challenge (§3.1). The
// body reaches the protected handler unchanged.
func TestRequireScopesOneBearerMethod(t *testing.T) {
	p := newProtected(t)
	good := mint(t, keyB, "k2", "at+jwt", validClaims(p.clock()))
	other := mint(t, keyA, "k1", "at+jwt", validClaims(p.clock()))
	const form = "application/x-www-form-urlencoded"
	twoMethods := `Bearer realm="m2mauth", error="invalid_request", error_description="more than one method used to send the access token"`
	twoMethodsBody := `{"error":"invalid_request","error_description":"more than one method used to send the access token"}`
	bare := `Bearer realm="m2mauth"`
	// RFC 6750 §3.1: no error code or other error information.
	bareBody := ``
	big := strings.Repeat("x", 64<<10)

	tests := []struct {
		name      string
		method    string
		target    string
		ct        string
		body      string
		authz     string
		status    int
		challenge string
		respBody  string
	}{
		{name: "header only", target: "/api/builders", authz: "Bearer " + good, status: 200},
		{name: "header and access_token in the query, RFC 6750 §2 / §2.3", target: "/api/builders?access_token=" + other, authz: "Bearer " + good, status: 400, challenge: twoMethods, respBody: twoMethodsBody},
		{name: "header and the same token in the query, RFC 6750 §2", target: "/api/builders?access_token=" + good, authz: "Bearer " + good, status: 400, challenge: twoMethods, respBody: twoMethodsBody},
		{name: "header and access_token among other query parameters, RFC 6750 §2", target: "/api/builders?page=2&access_token=" + other + "&q=x", authz: "Bearer " + good, status: 400, challenge: twoMethods, respBody: twoMethodsBody},
		{name: "header and a percent-encoded access_token name, RFC 6750 §2", target: "/api/builders?access%5Ftoken=" + other, authz: "Bearer " + good, status: 400, challenge: twoMethods, respBody: twoMethodsBody},
		{name: "header and an empty access_token in the query, RFC 6750 §2", target: "/api/builders?access_token=", authz: "Bearer " + good, status: 400, challenge: twoMethods, respBody: twoMethodsBody},
		{name: "header and access_token after a semicolon, RFC 6750 §2", target: "/api/builders?a=1;access_token=" + other, authz: "Bearer " + good, status: 400, challenge: twoMethods, respBody: twoMethodsBody},
		{name: "header and a form body token, RFC 6750 §2 / §2.2", method: http.MethodPost, target: "/api/builders", ct: form, body: "access_token=" + other, authz: "Bearer " + good, status: 400, challenge: twoMethods, respBody: twoMethodsBody},
		{name: "header and a form body token after other fields, RFC 6750 §2.2", method: http.MethodPost, target: "/api/builders", ct: "Application/X-WWW-Form-URLEncoded; charset=utf-8", body: "name=b1&access_token=" + other, authz: "Bearer " + good, status: 400, challenge: twoMethods, respBody: twoMethodsBody},
		{name: "header and a form body token within the first 64 KiB, RFC 6750 §2.2", method: http.MethodPut, target: "/api/builders", ct: form, body: "a=" + big[:64<<10-len("a=&access_token=x")] + "&access_token=x&b=" + big, authz: "Bearer " + good, status: 400, challenge: twoMethods, respBody: twoMethodsBody},

		{name: "other query parameters", target: "/api/builders?page=2&q=access_token&access_tokens=1", authz: "Bearer " + good, status: 200},
		{name: "form body without access_token reaches the handler whole", method: http.MethodPost, target: "/api/builders", ct: form, body: "name=b1&token=x", authz: "Bearer " + good, status: 200},
		{name: "large form body reaches the handler whole", method: http.MethodPost, target: "/api/builders", ct: form, body: "a=" + big + big + "&b=2", authz: "Bearer " + good, status: 200},
		{name: "form body token past the 64 KiB looked at is not seen", method: http.MethodPost, target: "/api/builders", ct: form, body: "a=" + big + "&access_token=" + other, authz: "Bearer " + good, status: 200},
		{name: "access_token in a JSON body is not a form parameter, RFC 6750 §2.2", method: http.MethodPost, target: "/api/builders", ct: "application/json", body: `{"access_token":"x"}`, authz: "Bearer " + good, status: 200},
		{name: "access_token in a multipart body is not looked at, RFC 6750 §2.2", method: http.MethodPost, target: "/api/builders", ct: "multipart/form-data; boundary=b", body: "--b\r\nContent-Disposition: form-data; name=\"access_token\"\r\n\r\nx\r\n--b--\r\n", authz: "Bearer " + good, status: 200},

		{name: "query token alone is not accepted, RFC 6750 §2.3 / §3.1", target: "/api/builders?access_token=" + good, status: 401, challenge: bare, respBody: bareBody},
		{name: "form body token alone is not accepted, RFC 6750 §2.2 / §3.1", method: http.MethodPost, target: "/api/builders", ct: form, body: "access_token=" + good, status: 401, challenge: bare, respBody: bareBody},
		{name: "Basic credentials and a query token, RFC 6750 §3.1", target: "/api/builders?access_token=" + good, authz: "Basic c3ZjOnNlY3JldA==", status: 401, challenge: bare, respBody: bareBody},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			var seen []byte
			var readErr error
			h := p.v.RequireScopes("read")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen, readErr = io.ReadAll(r.Body)
				w.WriteHeader(http.StatusNoContent)
			}))
			r := httptest.NewRequest(method, tc.target, strings.NewReader(tc.body))
			if tc.ct != "" {
				r.Header.Set("Content-Type", tc.ct)
			}
			if tc.authz != "" {
				r.Header.Set("Authorization", tc.authz)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if tc.status == http.StatusOK {
				assert.Equal(t, http.StatusNoContent, w.Code, "body: %s", w.Body)
				require.NoError(t, readErr)
				assert.Equal(t, tc.body, string(seen), "the handler reads the body unchanged")
				return
			}
			assertRefused(t, w, tc.status, tc.challenge, tc.respBody)
			for _, tok := range []string{good, other} {
				assert.NotContains(t, w.Body.String(), tok, "the token is echoed")
				assert.NotContains(t, w.Header().Get("WWW-Authenticate"), tok)
			}
		})
	}
}

// TestKeyRotation: a token signed by the previous key works while that key
// is in the set, and stops — cached or not — once it is removed.
func TestKeyRotation(t *testing.T) {
	p := newProtected(t)
	old := mint(t, keyA, "k1", "at+jwt", validClaims(p.clock()))
	h := p.v.RequireScopes("read")(echo)
	require.Equal(t, 200, call(h, "Bearer "+old).Code)
	require.Equal(t, 200, call(h, "Bearer "+old).Code, "served from the cache")
	assert.Equal(t, uint64(1), p.v.CacheStats().Hits)

	p.keys.set(t, hsKey(t, "k2", keyB)) // k1 retired
	w := call(h, "Bearer "+old)
	assert.Equal(t, 401, w.Code)
	assert.Contains(t, w.Header().Get("WWW-Authenticate"), `error_description="token signed by an unknown key"`)
	e := p.lastEvent(t)
	assert.Equal(t, m2mauth.EventTokenRejected, e.Type)
	assert.Equal(t, m2mauth.ReasonTokenUnknownKey, e.Reason)
}

// TestValidatorAudit: rejections and scope denials are audited with the
// reason and, once the signature is good, the client and jti — never the
// token.
func TestValidatorAudit(t *testing.T) {
	p := newProtected(t)
	now := p.clock()
	expired := mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "exp", now.Add(-time.Hour).Unix(), "jti", "old-jti"))
	h := p.v.RequireScopes("read")(echo)
	call(h, "Bearer "+expired)
	e := p.lastEvent(t)
	assert.Equal(t, m2mauth.EventTokenRejected, e.Type)
	assert.Equal(t, m2mauth.ReasonTokenExpired, e.Reason)
	assert.Equal(t, "old-jti", e.JTI)
	assert.Equal(t, "svc", e.ClientID)
	assert.Equal(t, "invalid_token", e.Error)

	call(h, "Bearer "+mint(t, []byte("wrong-key-wrong-key-wrong-key-!!"), "k2", "at+jwt", validClaims(now)))
	e = p.lastEvent(t)
	assert.Equal(t, m2mauth.ReasonTokenSignature, e.Reason)
	assert.Empty(t, e.JTI, "claims of a forged token are not trusted")

	call(p.v.RequireScopes("admin")(echo), "Bearer "+mint(t, keyB, "k2", "at+jwt", validClaims(now)))
	e = p.lastEvent(t)
	assert.Equal(t, m2mauth.EventScopeDenied, e.Type)
	assert.Equal(t, m2mauth.Scopes{"admin"}, e.Scopes)
	assert.Equal(t, "jti-1", e.JTI)

	n := len(p.events)
	call(h) // no credentials: not an attack, not audited
	assert.Len(t, p.events, n)
}

func TestValidatorErrorHandler(t *testing.T) {
	var got *m2mauth.Error
	p := newProtected(t, func(c *m2mauth.ValidatorConfig) {
		c.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err *m2mauth.Error) {
			got = err
			w.WriteHeader(err.Status)
			w.Write([]byte("custom"))
		}
	})
	w := call(p.v.RequireScopes("read")(echo), "Bearer x.y.z")
	assert.Equal(t, 401, w.Code)
	assert.Equal(t, "custom", w.Body.String())
	assert.Contains(t, w.Header().Get("WWW-Authenticate"), `error="invalid_token"`)
	require.NotNil(t, got)
	assert.ErrorIs(t, got, &m2mauth.Error{Code: m2mauth.CodeInvalidToken})
}

func TestValidate(t *testing.T) {
	p := newProtected(t)
	tok := mint(t, keyB, "k2", "at+jwt", validClaims(p.clock()))
	c, err := p.v.Validate(t.Context(), tok)
	require.NoError(t, err)
	assert.Equal(t, "svc", c.ClientID)
	assert.Equal(t, "svc", c.Subject)
	assert.Equal(t, "jti-1", c.ID)
	assert.Equal(t, m2mauth.Scopes{"read", "write"}, c.Scopes)
	assert.Equal(t, jwt.Audience{testAudience}, c.Audience)

	_, err = p.v.Validate(t.Context(), "nope")
	require.ErrorIs(t, err, &m2mauth.Error{Code: m2mauth.CodeInvalidToken})
	assert.Equal(t, m2mauth.ReasonTokenMalformed, m2mauth.RejectionReason(err))
}

func TestNewValidatorValidates(t *testing.T) {
	keys := &swapKeys{}
	keys.set(t, hsKey(t, "k1", keyA))
	base := m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: testAudience}
	tests := []struct {
		name string
		keys m2mauth.KeyProvider
		edit func(*m2mauth.ValidatorConfig)
	}{
		{"nil keys", nil, nil},
		{"no issuer", keys, func(c *m2mauth.ValidatorConfig) { c.Issuer = "" }},
		{"no audience", keys, func(c *m2mauth.ValidatorConfig) { c.Audience = "" }},
		{"alg none", keys, func(c *m2mauth.ValidatorConfig) { c.Algorithms = []jose.SignatureAlgorithm{"none"} }},
		{"HS384 not implemented", keys, func(c *m2mauth.ValidatorConfig) { c.Algorithms = []jose.SignatureAlgorithm{jose.HS384} }},
		{"unknown algorithm name", keys, func(c *m2mauth.ValidatorConfig) { c.Algorithms = []jose.SignatureAlgorithm{"hs256"} }},
		{"allowed algorithms without a key", keys, func(c *m2mauth.ValidatorConfig) { c.Algorithms = []jose.SignatureAlgorithm{jose.RS256} }},
		{"huge leeway", keys, func(c *m2mauth.ValidatorConfig) { c.Leeway = time.Hour }},
		{"quote in realm", keys, func(c *m2mauth.ValidatorConfig) { c.Realm = `"` }},
		{"backslash in realm", keys, func(c *m2mauth.ValidatorConfig) { c.Realm = `a\b` }},
		{"control character in realm", keys, func(c *m2mauth.ValidatorConfig) { c.Realm = "a\x00b" }},
		{"tab in realm", keys, func(c *m2mauth.ValidatorConfig) { c.Realm = "a\tb" }},
		{"non-ASCII realm", keys, func(c *m2mauth.ValidatorConfig) { c.Realm = "réalm" }},
		// Up front, before anything is allocated for it.
		{"cache too large", keys, func(c *m2mauth.ValidatorConfig) { c.CacheSize = math.MaxInt }},
		{"no usable key", badKeys{}, nil},
		{"insecure stale revocations without revocations", keys, func(c *m2mauth.ValidatorConfig) { c.InsecureAcceptStaleRevocations = true }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			if tc.edit != nil {
				tc.edit(&cfg)
			}
			v, err := m2mauth.NewValidator(tc.keys, cfg)
			require.Error(t, err)
			assert.Nil(t, v)
		})
	}
	assert.Panics(t, func() { (&m2mauth.Validator{}).RequireScopes("bad scope") })
}

// TestLeeway checks the tolerance on exp and nbf (RFC 7519 §4.1.4,
// §4.1.5): the default 30s, a set one, and none when it is negative.
func TestLeeway(t *testing.T) {
	tests := []struct {
		name   string
		leeway time.Duration
		// the longest expired and the furthest not-yet-valid token let through
		through time.Duration
	}{
		{"default", 0, 30 * time.Second},
		{"set", 5 * time.Second, 5 * time.Second},
		{"none", -1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newProtected(t, func(c *m2mauth.ValidatorConfig) { c.Leeway = tc.leeway; c.CacheSize = -1 })
			now := p.clock()
			h := p.v.RequireScopes("read")(echo)
			for _, d := range []time.Duration{0, time.Second, tc.through - time.Second, tc.through, tc.through + time.Second} {
				if d < 0 {
					continue
				}
				// exp is the first instant the token is invalid: one
				// that expired d ago passes while d < leeway.
				expired := mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "exp", now.Add(-d).Unix()))
				assert.Equal(t, d < tc.through, call(h, "Bearer "+expired).Code == http.StatusOK, "expired %v ago", d)
				early := mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "nbf", now.Add(d).Unix(), "iat", now.Add(d).Unix()))
				assert.Equal(t, d <= tc.through, call(h, "Bearer "+early).Code == http.StatusOK, "valid in %v", d)
			}
		})
	}
}

// TestEndToEnd: a token from the token handler over a real HTTP server is
// accepted by a protected route, refused for a scope it lacks, and refused
// after it expires.
func TestEndToEnd(t *testing.T) {
	f := newFixture(t)
	v, err := m2mauth.NewValidator(f.keys, m2mauth.ValidatorConfig{
		Issuer: testIssuer, Audience: testAudience, Now: f.clock,
	})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("POST /oauth/token", f.handler)
	mux.Handle("GET /api/builders", v.RequireScopes("read")(echo))
	mux.Handle("GET /api/admin", v.RequireScopes("admin")(echo))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"read"}}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+"/oauth/token", strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("svc", f.secret)
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	var tok tokenResponse
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&tok))
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	get := func(path string) (int, string, string) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+path, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, resp.Header.Get("WWW-Authenticate"), string(b)
	}
	code, _, body := get("/api/builders")
	assert.Equal(t, 200, code)
	assert.Equal(t, "svc read", body, "claims reach the handler through the context")

	code, challenge, _ := get("/api/admin")
	assert.Equal(t, 403, code)
	assert.Contains(t, challenge, `error="insufficient_scope"`)
	assert.Contains(t, challenge, `scope="admin"`)

	f.advance(time.Hour + 31*time.Second) // past exp and the 30s leeway
	code, challenge, _ = get("/api/builders")
	assert.Equal(t, 401, code)
	assert.Contains(t, challenge, `error="invalid_token", error_description="token expired"`)
}

// fakeRevocations is a RevocationSource whose answer the test sets.
type fakeRevocations struct {
	mu   sync.Mutex
	revs *m2mauth.Revocations
	err  error
}

func (f *fakeRevocations) CurrentRevocations() (*m2mauth.Revocations, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.revs, f.err
}

func (f *fakeRevocations) set(revs *m2mauth.Revocations, err error) {
	f.mu.Lock()
	f.revs, f.err = revs, err
	f.mu.Unlock()
}

// TestValidatorRevocations: every token is checked against the
// revocation source, those answered from the verified-token cache
// included (RFC 7009 §2: a revoked token is invalid at once for the
// resource servers that see the revocation). A revoked token is 401
// invalid_token (RFC 6750 §3.1), audited with the client and jti.
func TestValidatorRevocations(t *testing.T) {
	src := &fakeRevocations{}
	p := newProtected(t, func(c *m2mauth.ValidatorConfig) { c.Revocations = src })
	now := p.clock() // 12:00:00
	h := p.v.RequireScopes("read")(echo)
	tokA := mint(t, keyB, "k2", "at+jwt", with(validClaims(now.Add(-time.Minute)), "jti", "jti-a"))
	tokB := mint(t, keyB, "k2", "at+jwt", with(validClaims(now.Add(-time.Minute)), "jti", "jti-b"))
	tokOther := mint(t, keyB, "k2", "at+jwt", with(validClaims(now.Add(-time.Minute)), "jti", "jti-o", "client_id", "other", "sub", "other"))
	// Issued in the watermark's second, and the second after.
	tokSame := mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "jti", "jti-s"))
	tokNext := mint(t, keyB, "k2", "at+jwt", with(validClaims(now.Add(time.Second)), "jti", "jti-n"))
	p.advance(2 * time.Second)

	tokens := []string{tokA, tokB, tokOther, tokSame, tokNext}
	for _, tok := range tokens { // nothing revoked yet; all cached now
		require.Equal(t, http.StatusOK, call(h, "Bearer "+tok).Code)
	}
	watermark := now.Add(400 * time.Millisecond)

	tests := []struct {
		name    string
		revs    *m2mauth.Revocations
		refused []bool // for tokA, tokB, tokOther, tokSame, tokNext
	}{
		{name: "nothing revoked", revs: nil, refused: []bool{false, false, false, false, false}},
		{name: "one jti on the deny-list, RFC 7009 §2", revs: &m2mauth.Revocations{Version: 1, Tokens: map[string]time.Time{"jti-a": now.Add(time.Hour)}}, refused: []bool{true, false, false, false, false}},
		{name: "the client's watermark, whole seconds", revs: &m2mauth.Revocations{Version: 2, Clients: map[string]time.Time{"svc": watermark}}, refused: []bool{true, true, false, true, false}},
		{name: "the store-wide watermark", revs: &m2mauth.Revocations{Version: 3, Before: watermark}, refused: []bool{true, true, true, true, false}},
		{name: "another client's watermark", revs: &m2mauth.Revocations{Version: 4, Clients: map[string]time.Time{"other": watermark}}, refused: []bool{false, false, true, false, false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src.set(tc.revs, nil)
			for i, tok := range tokens {
				hits := p.v.CacheStats().Hits
				w := call(h, "Bearer "+tok)
				assert.Equal(t, hits+1, p.v.CacheStats().Hits, "token %d is answered from the cache", i)
				if !tc.refused[i] {
					assert.Equal(t, http.StatusOK, w.Code, "token %d: %s", i, w.Body)
					continue
				}
				assertRefused(t, w, http.StatusUnauthorized,
					`Bearer realm="m2mauth", error="invalid_token", error_description="token has been revoked"`,
					`{"error":"invalid_token","error_description":"token has been revoked"}`)
				e := p.lastEvent(t)
				assert.Equal(t, m2mauth.EventTokenRejected, e.Type)
				assert.Equal(t, m2mauth.ReasonTokenRevoked, e.Reason)
				assert.Equal(t, m2mauth.CodeInvalidToken, e.Error)
				assert.NotEmpty(t, e.JTI)
				assert.NotEmpty(t, e.ClientID)
			}
		})
	}

	// A token verified from scratch is checked too, and Validate says why.
	src.set(&m2mauth.Revocations{Version: 5, Tokens: map[string]time.Time{"jti-fresh": now.Add(time.Hour)}}, nil)
	fresh := mint(t, keyB, "k2", "at+jwt", with(validClaims(now), "jti", "jti-fresh"))
	misses := p.v.CacheStats().Misses
	_, err := p.v.Validate(t.Context(), fresh)
	require.ErrorIs(t, err, &m2mauth.Error{Code: m2mauth.CodeInvalidToken})
	assert.Equal(t, m2mauth.ReasonTokenRevoked, m2mauth.RejectionReason(err))
	assert.Equal(t, misses+1, p.v.CacheStats().Misses)
	src.set(nil, nil)
	_, err = p.v.Validate(t.Context(), fresh)
	assert.NoError(t, err, "a revocation taken back (a test-only move) frees the token")
}

// TestValidatorStaleRevocations: a source that cannot vouch for its
// snapshot makes the validator refuse every token with 503 and a
// server_error, without a Bearer challenge (the fault is the server's,
// RFC 6750 §3.1 does not apply); InsecureAcceptStaleRevocations applies
// the last snapshot instead.
func TestValidatorStaleRevocations(t *testing.T) {
	stale := fmt.Errorf("%w: test", m2mauth.ErrRevocationsStale)
	revoked := &m2mauth.Revocations{Version: 1, Tokens: map[string]time.Time{"jti-a": time.Now().Add(time.Hour)}}

	tests := []struct {
		name     string
		insecure bool
		before   *m2mauth.Revocations // returned without error before the source fails
		withErr  *m2mauth.Revocations // returned with the error
		status   []int                // for jti-a, jti-b
	}{
		{name: "refused when stale", status: []int{503, 503}},
		{name: "refused when stale, whatever was seen before", before: revoked, status: []int{503, 503}},
		{name: "insecure: nothing ever seen, all pass", insecure: true, status: []int{200, 200}},
		{name: "insecure: the last snapshot seen is applied", insecure: true, before: revoked, status: []int{401, 200}},
		{name: "insecure: the snapshot returned with the error is applied", insecure: true, withErr: revoked, status: []int{401, 200}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := &fakeRevocations{}
			p := newProtected(t, func(c *m2mauth.ValidatorConfig) {
				c.Revocations, c.InsecureAcceptStaleRevocations = src, tc.insecure
			})
			h := p.v.RequireScopes("read")(echo)
			tokA := mint(t, keyB, "k2", "at+jwt", with(validClaims(p.clock()), "jti", "jti-a"))
			tokB := mint(t, keyB, "k2", "at+jwt", with(validClaims(p.clock()), "jti", "jti-b"))
			if tc.before != nil {
				src.set(tc.before, nil)
				call(h, "Bearer "+tokB)
			}
			src.set(tc.withErr, stale)
			for i, tok := range []string{tokA, tokB} {
				w := call(h, "Bearer "+tok)
				switch tc.status[i] {
				case http.StatusServiceUnavailable:
					assertRefused(t, w, http.StatusServiceUnavailable, "",
						`{"error":"server_error","error_description":"token revocations are unavailable"}`)
					_, err := p.v.Validate(t.Context(), tok)
					require.ErrorIs(t, err, m2mauth.ErrRevocationsStale)
					assert.NotContains(t, err.Error(), tok)
				default:
					assert.Equal(t, tc.status[i], w.Code, "token %d: %s", i, w.Body)
				}
			}
			if !tc.insecure {
				// A caller that went away did not cause it: still a
				// server_error, not a canceled request.
				ctx, cancel := context.WithCancel(t.Context())
				cancel()
				r := httptest.NewRequestWithContext(ctx, http.MethodGet, "/api/builders", nil)
				r.Header.Set("Authorization", "Bearer "+tokA)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				assert.Equal(t, http.StatusServiceUnavailable, w.Code)
				e := p.lastEvent(t)
				assert.Equal(t, m2mauth.CodeServerError, e.Error)
				assert.Empty(t, e.Reason)
			}
		})
	}
}

// TestValidatorRefusesRevocationList: a signed revocation list is not an
// access token, even with an access token's claims (RFC 8725 §3.11,
// RFC 9068 §4: typ must be at+jwt).
func TestValidatorRefusesRevocationList(t *testing.T) {
	p := newProtected(t)
	for _, typ := range []string{m2mauth.RevocationListType, "application/" + m2mauth.RevocationListType} {
		tok := mint(t, keyB, "k2", typ, validClaims(p.clock()))
		_, err := p.v.Validate(t.Context(), tok)
		require.ErrorIs(t, err, &m2mauth.Error{Code: m2mauth.CodeInvalidToken}, typ)
		assert.Equal(t, m2mauth.ReasonTokenType, m2mauth.RejectionReason(err), typ)
	}
}

// TestContextWithClaims checks the context the middleware hands on: the
// claims are found, every other value and the parent's cancellation and
// deadline pass through, and a nil claims leaves the context as it was.
func TestContextWithClaims(t *testing.T) {
	type key struct{}
	parent, cancel := context.WithTimeout(context.WithValue(context.Background(), key{}, "v"), time.Hour)
	claims := &m2mauth.Claims{ClientID: "c1"}
	ctx := m2mauth.ContextWithClaims(parent, claims)

	got, ok := m2mauth.ClaimsFromContext(ctx)
	require.True(t, ok)
	require.Same(t, claims, got)
	require.Equal(t, "v", ctx.Value(key{}))
	dl, ok := ctx.Deadline()
	require.True(t, ok)
	pdl, _ := parent.Deadline()
	require.Equal(t, pdl, dl)
	require.Contains(t, fmt.Sprint(ctx), "WithValue")

	_, ok = m2mauth.ClaimsFromContext(parent)
	require.False(t, ok)
	require.Equal(t, parent, m2mauth.ContextWithClaims(parent, nil))

	// Contexts derived from it see the claims and its cancellation.
	child, stop := context.WithCancel(ctx)
	defer stop()
	got, ok = m2mauth.ClaimsFromContext(child)
	require.True(t, ok)
	require.Same(t, claims, got)
	cancel()
	<-child.Done()
	require.ErrorIs(t, ctx.Err(), context.Canceled)
	require.ErrorIs(t, context.Cause(child), context.Canceled)
}

// TestValidateHeaderForms: the header a TokenHandler writes and any other
// spelling of the same header are judged alike (RFC 7515 §4: a header is
// a JSON object, whatever its member order or spacing), and a header
// that is byte for byte the one of a known key still has its signature,
// its algorithm and its key checked (RFC 8725 §3.1).
func TestValidateHeaderForms(t *testing.T) {
	p := newProtected(t)
	claims, err := json.Marshal(validClaims(p.clock()))
	require.NoError(t, err)
	payload := base64.RawURLEncoding.EncodeToString(claims)
	enc := func(hdr string) string { return base64.RawURLEncoding.EncodeToString([]byte(hdr)) }
	const ours = `{"alg":"HS256","kid":"k2","typ":"at+jwt"}`
	tests := []struct {
		name   string
		hdr    string
		secret []byte
		reason string // "" when accepted
	}{
		{"the handler's header", ours, keyB, ""},
		{"the handler's header, previous key", `{"alg":"HS256","kid":"k1","typ":"at+jwt"}`, keyA, ""},
		{"members reordered", `{"typ":"at+jwt","kid":"k2","alg":"HS256"}`, keyB, ""},
		{"spaces", `{ "alg": "HS256", "kid": "k2", "typ": "at+jwt" }`, keyB, ""},
		{"media type form", `{"alg":"HS256","kid":"k2","typ":"application/at+jwt"}`, keyB, ""},
		{"the handler's header, another key's signature", ours, keyA, m2mauth.ReasonTokenSignature},
		{"the previous key's header, the current key's signature", `{"alg":"HS256","kid":"k1","typ":"at+jwt"}`, keyB, m2mauth.ReasonTokenSignature},
		{"another type", `{"alg":"HS256","kid":"k2","typ":"JWT"}`, keyB, m2mauth.ReasonTokenType},
		{"no type", `{"alg":"HS256","kid":"k2"}`, keyB, m2mauth.ReasonTokenType},
		{"another algorithm", `{"alg":"HS384","kid":"k2","typ":"at+jwt"}`, keyB, m2mauth.ReasonTokenAlgorithm},
		{"unknown kid", `{"alg":"HS256","kid":"k9","typ":"at+jwt"}`, keyB, m2mauth.ReasonTokenUnknownKey},
		{"critical extension", `{"alg":"HS256","kid":"k2","typ":"at+jwt","crit":["x"],"x":1}`, keyB, m2mauth.ReasonTokenMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := signHS256(tt.secret, enc(tt.hdr)+"."+payload)
			c, err := p.v.Validate(t.Context(), tok)
			if tt.reason == "" {
				require.NoError(t, err)
				require.Equal(t, "svc", c.ClientID)
				return
			}
			require.ErrorIs(t, err, &m2mauth.Error{Code: m2mauth.CodeInvalidToken})
			require.Equal(t, tt.reason, m2mauth.RejectionReason(err))
		})
	}
}

// TestRequireScopesHandsOnRequest checks the request the next handler
// gets, from a verified token and from the cache: a copy of the caller's
// request (method, target, headers and body unchanged) whose context
// carries the claims, every value of the caller's context, and the
// connection's cancellation, while the caller's own request is left
// without the claims.
func TestRequireScopesHandsOnRequest(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cache int
	}{
		{"verified", -1},
		{"cache hit", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProtected(t, func(c *m2mauth.ValidatorConfig) { c.CacheSize = tc.cache })
			tok := mint(t, keyB, "k2", "at+jwt", validClaims(p.clock()))
			type outerKey struct{}
			type slotKey struct{}
			type seen struct {
				claims                *m2mauth.Claims
				outer                 any
				method, target, extra string
				body                  string
				canceled              bool
			}
			got := make(chan seen, 1)
			next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				*r.Context().Value(slotKey{}).(**http.Request) = r
				c, _ := m2mauth.ClaimsFromContext(r.Context())
				body, _ := io.ReadAll(r.Body)
				s := seen{claims: c, outer: r.Context().Value(outerKey{}), method: r.Method,
					target: r.URL.RequestURI(), extra: r.Header.Get("X-Extra"), body: string(body)}
				w.WriteHeader(http.StatusNoContent)
				w.(http.Flusher).Flush()
				if r.URL.Query().Has("wait") {
					select {
					case <-r.Context().Done():
						s.canceled = true
					case <-time.After(5 * time.Second):
					}
				}
				got <- s
			})
			protectedRoute := p.v.RequireScopes("read")(next)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				var inner *http.Request
				ctx := context.WithValue(context.WithValue(r.Context(), outerKey{}, "outer"), slotKey{}, &inner)
				r = r.WithContext(ctx)
				protectedRoute.ServeHTTP(w, r)
				_, claimed := m2mauth.ClaimsFromContext(r.Context())
				if inner == r || claimed {
					t.Errorf("the caller's request was changed: same %v, claims %v", inner == r, claimed)
				}
			}))
			defer srv.Close()

			for range 2 { // the second request is a cache hit where the cache is on
				req, err := http.NewRequest(http.MethodPut, srv.URL+"/api/builders/7?x=1", strings.NewReader("payload"))
				require.NoError(t, err)
				req.Header.Set("Authorization", "Bearer "+tok)
				req.Header.Set("X-Extra", "kept")
				resp, err := srv.Client().Do(req)
				require.NoError(t, err)
				resp.Body.Close()
				require.Equal(t, http.StatusNoContent, resp.StatusCode)
				s := <-got
				require.NotNil(t, s.claims)
				require.Equal(t, "svc", s.claims.ClientID)
				require.Equal(t, seen{claims: s.claims, outer: "outer", method: http.MethodPut,
					target: "/api/builders/7?x=1", extra: "kept", body: "payload"}, s)
			}

			// The connection's end reaches the next handler through the
			// context it was handed.
			conn, err := net.Dial("tcp", srv.Listener.Addr().String())
			require.NoError(t, err)
			_, err = fmt.Fprintf(conn, "GET /api/builders?wait HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer %s\r\n\r\n", tok)
			require.NoError(t, err)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			require.NoError(t, err)
			require.Equal(t, http.StatusNoContent, resp.StatusCode)
			require.NoError(t, conn.Close())
			require.True(t, (<-got).canceled)
		})
	}
}

// TestRequireHTTPS: with ValidatorConfig.RequireHTTPS a bearer request
// that did not arrive over TLS (directly, or at a trusted proxy that says
// so) is refused unless it comes from this machine, as the token endpoint
// refuses one (RFC 6749 §1.6, RFC 6750 §5.3); over TLS the answer carries
// Strict-Transport-Security. Without it, plain HTTP is let through.
func TestRequireHTTPS(t *testing.T) {
	proxy := netip.MustParsePrefix("10.0.0.0/8")
	tests := []struct {
		name    string
		require bool
		target  string // https:// makes r.TLS non-nil
		remote  string
		proto   string // X-Forwarded-Proto
		status  int
		hsts    bool
	}{
		{name: "TLS", require: true, target: "https://api.example.com/api/builders", remote: "192.0.2.1:1234", status: 200, hsts: true},
		{name: "plain HTTP from another machine", require: true, target: "/api/builders", remote: "192.0.2.1:1234", status: 400},
		{name: "plain HTTP from this machine", require: true, target: "/api/builders", remote: "127.0.0.1:1234", status: 200},
		{name: "plain HTTP from IPv6 loopback", require: true, target: "/api/builders", remote: "[::1]:1234", status: 200},
		{name: "a trusted proxy that says https", require: true, target: "/api/builders", remote: "10.0.0.7:1234", proto: "https", status: 200, hsts: true},
		{name: "a trusted proxy that says http", require: true, target: "/api/builders", remote: "10.0.0.7:1234", proto: "http", status: 400},
		{name: "a trusted proxy that says http, over TLS to us", require: true, target: "https://api.example.com/api/builders", remote: "10.0.0.7:1234", proto: "http", status: 400},
		{name: "an untrusted address that says https", require: true, target: "/api/builders", remote: "192.0.2.1:1234", proto: "https", status: 400},
		{name: "not required: plain HTTP from another machine", target: "/api/builders", remote: "192.0.2.1:1234", status: 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newProtected(t, func(c *m2mauth.ValidatorConfig) {
				c.RequireHTTPS, c.TrustedProxies, c.ForwardedHeader = tc.require, []netip.Prefix{proxy}, m2mauth.HeaderXForwardedFor
			})
			tok := mint(t, keyB, "k2", "at+jwt", validClaims(p.clock()))
			r := httptest.NewRequest(http.MethodGet, tc.target, nil)
			r.RemoteAddr = tc.remote
			r.Header.Set("Authorization", "Bearer "+tok)
			r.Header.Set("X-Forwarded-For", "192.0.2.9")
			if tc.proto != "" {
				r.Header.Set("X-Forwarded-Proto", tc.proto)
			}
			w := httptest.NewRecorder()
			p.v.RequireScopes("read")(echo).ServeHTTP(w, r)
			require.Equal(t, tc.status, w.Code, w.Body.String())
			assert.Equal(t, tc.hsts, w.Header().Get("Strict-Transport-Security") != "")
			if tc.status == 200 {
				return
			}
			assert.Equal(t, `Bearer realm="m2mauth", error="invalid_request", error_description="this API accepts only HTTPS requests (RFC 6750 section 5.3)"`, w.Header().Get("WWW-Authenticate"))
			assert.JSONEq(t, `{"error":"invalid_request","error_description":"this API accepts only HTTPS requests (RFC 6750 section 5.3)"}`, w.Body.String())
			p.mu.Lock()
			defer p.mu.Unlock()
			require.Len(t, p.events, 1)
			assert.Equal(t, m2mauth.EventTokenRejected, p.events[0].Type)
			assert.Equal(t, m2mauth.ReasonInsecureTransport, p.events[0].Reason)
			assert.Empty(t, p.events[0].ClientID, "the token is not looked at")
		})
	}
}

package bench

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEndpoints issues a token through every implementation, so a broken
// peer set-up fails here rather than in a benchmark.
func TestEndpoints(t *testing.T) {
	for _, m := range Endpoints() {
		t.Run(m.Name, func(t *testing.T) {
			e, err := m.New()
			require.NoError(t, err)
			defer e.Close()
			w := e.Serve()
			require.Equal(t, http.StatusOK, w.Code, w.Body.String())
			if m.Name == EndpointNoop {
				return
			}
			var resp TokenResponse
			require.NoError(t, json.Unmarshal(w.Body.Bytes(), &resp), w.Body.String())
			assert.NotEmpty(t, resp.AccessToken)
			assert.True(t, strings.EqualFold(resp.TokenType, "Bearer"), resp.TokenType)
			assert.InDelta(t, 3600, resp.ExpiresIn, 1)
			assert.Equal(t, Scope, resp.Scope)
			if m.Name == EndpointResponse {
				// A reference that checks nothing: it answers m2mauth's
				// response, headers included, to every request.
				m2m, err := NewM2MAuthEndpoint(EndpointM2MAuth)
				require.NoError(t, err)
				want := m2m.Serve()
				assert.Equal(t, want.Header(), w.Header())
				assert.Len(t, w.Body.Bytes(), want.Body.Len())
				return
			}

			// The same client with a wrong secret is refused.
			bad := e
			bad.Authorization = basicAuth(ClientID, "wrong-secret-wrong-secret-wrong-secret-xxx")
			assert.NotEqual(t, http.StatusOK, bad.Serve().Code)
		})
	}
}

// TestRoutes checks that every protected route lets m2mauth's token
// through and refuses a tampered one, one lacking the scope, and tokens
// that are well signed but fail one of the checks every route makes.
func TestRoutes(t *testing.T) {
	tok, err := IssueToken()
	require.NoError(t, err)
	tampered := tok[:len(tok)-2] + flip(tok[len(tok)-2:])
	noScope := tokenWithScope(t, "write")
	now := time.Now()
	refused := []struct {
		name  string
		token string
	}{
		{"tampered", tampered},
		{"wrong key", forge(t, []byte("another key, another key, 32 B.."), func(map[string]any) {})},
		{"wrong issuer", forge(t, Key(), func(c map[string]any) { c["iss"] = "https://evil.example.com" })},
		{"wrong audience", forge(t, Key(), func(c map[string]any) { c["aud"] = "https://other.example.com" })},
		{"expired", forge(t, Key(), func(c map[string]any) { c["exp"] = now.Add(-time.Hour).Unix() })},
		{"not yet valid", forge(t, Key(), func(c map[string]any) { c["nbf"] = now.Add(time.Hour).Unix() })},
	}
	for _, m := range Routes() {
		t.Run(m.Name, func(t *testing.T) {
			rt, err := m.New()
			require.NoError(t, err)
			for range 2 { // the second time from the cache, if any
				w := rt.Serve(tok)
				require.Equal(t, http.StatusNoContent, w.Code, w.Body.String())
			}
			if m.Name == RouteBare || m.Name == RouteHandoff {
				// References that check nothing.
				return
			}
			for _, bad := range refused {
				assert.Equal(t, http.StatusUnauthorized, rt.Serve(bad.token).Code, bad.name)
			}
			assert.Equal(t, http.StatusForbidden, rt.Serve(noScope).Code)
		})
	}
}

// forge signs, with key, the claims of an m2mauth token for scope read,
// valid now, after mutate has changed them; the header is m2mauth's.
func forge(t *testing.T, key []byte, mutate func(claims map[string]any)) string {
	t.Helper()
	now := time.Now()
	c := map[string]any{
		"iss": Issuer, "sub": ClientID, "client_id": ClientID, "aud": Audience,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"jti": "forged-" + strconv.FormatInt(now.UnixNano(), 36), "scope": Scope,
	}
	mutate(c)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: key},
		(&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", KeyID))
	require.NoError(t, err)
	tok, err := josejwt.Signed(signer).Claims(c).Serialize()
	require.NoError(t, err)
	return tok
}

// flip changes a base64url string so that it decodes differently.
func flip(s string) string {
	if s[0] == 'A' {
		return "B" + s[1:]
	}
	return "A" + s[1:]
}

// tokenWithScope issues an m2mauth token carrying scope.
func tokenWithScope(t *testing.T, scope string) string {
	t.Helper()
	e, err := NewM2MAuthEndpoint(EndpointM2MAuth)
	require.NoError(t, err)
	r := httptest.NewRequest(http.MethodPost, TokenPath, strings.NewReader("grant_type=client_credentials&scope="+scope))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Authorization", e.Authorization)
	w := httptest.NewRecorder()
	e.Handler.ServeHTTP(w, r)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	var resp TokenResponse
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &resp))
	return resp.AccessToken
}

// TestRetainedPerToken checks the measurement: m2mauth keeps nothing per
// token, the peers that store tokens keep something.
func TestRetainedPerToken(t *testing.T) {
	if testing.Short() {
		t.Skip("issues thousands of tokens")
	}
	const n = 2000
	for _, m := range Endpoints() {
		if m.BCrypt || m.Name == EndpointNoop {
			continue
		}
		t.Run(m.Name, func(t *testing.T) {
			e, err := m.New()
			require.NoError(t, err)
			defer e.Close()
			per, err := RetainedPerToken(e, n)
			require.NoError(t, err)
			if m.Stores {
				assert.Greater(t, per, 100.0, "a stored token costs at least its own bytes")
			} else {
				assert.Less(t, per, 64.0)
			}
		})
	}
}

// TestGoOAuth2Close checks that closing go-oauth2's endpoint frees the
// tokens its store holds, so benchmark runs do not inherit them.
func TestGoOAuth2Close(t *testing.T) {
	e, err := NewGoOAuth2Endpoint(false)
	require.NoError(t, err)
	base := liveHeap()
	for range 2000 {
		require.Equal(t, http.StatusOK, e.Serve().Code)
	}
	full := liveHeap()
	require.Greater(t, full, base+1000*100, "the store should hold the tokens")
	e.Close()
	assert.Less(t, liveHeap(), base+(full-base)/10, "closing should free them")
}

// TestLoad runs the loopback load generator briefly.
func TestLoad(t *testing.T) {
	e, err := NewM2MAuthEndpoint(EndpointM2MAuth)
	require.NoError(t, err)
	res, err := Load(context.Background(), e, LoadConfig{Requests: 200, Warmup: 20, Concurrency: 4, MaxDuration: 10 * time.Second})
	require.NoError(t, err)
	assert.Equal(t, 200, res.Requests)
	assert.Zero(t, res.Errors)
	assert.Positive(t, res.PerSecond)
	assert.LessOrEqual(t, res.P50, res.P99)
}

// TestLoadURL drives a token endpoint served apart from the load
// generator, as cmd/drive does: every request is answered 200, a wrong
// secret counts as errors, and only plain HTTP to a loopback address is
// accepted.
func TestLoadURL(t *testing.T) {
	e, err := NewM2MAuthEndpoint(EndpointM2MAuth)
	require.NoError(t, err)
	srv := httptest.NewServer(e.Handler)
	defer srv.Close()
	cfg := LoadConfig{Requests: 200, Warmup: 20, Concurrency: 4, MaxDuration: 10 * time.Second}
	res, err := LoadURL(context.Background(), srv.URL+TokenPath, e.Authorization, Scope, cfg)
	require.NoError(t, err)
	assert.Equal(t, 200, res.Requests)
	assert.Zero(t, res.Errors)
	assert.Zero(t, res.RetainedPerToken)

	cfg.Warmup = 0
	res, err = LoadURL(context.Background(), srv.URL+TokenPath, basicAuth(ClientID, "wrong"), Scope, cfg)
	require.NoError(t, err)
	assert.Equal(t, 200, res.Errors, "every request with a wrong secret fails")

	for _, u := range []string{
		"https://127.0.0.1:8443/oauth/token",
		"http://192.0.2.1:8080/oauth/token",
		"http://localhost:8080/oauth/token",
		"http://[::1",
	} {
		_, err := LoadURL(context.Background(), u, e.Authorization, Scope, cfg)
		assert.Error(t, err, u)
	}
}

// TestLoadRoutes drives every protected route briefly over loopback with
// the shared token: every request must be answered 204.
func TestLoadRoutes(t *testing.T) {
	tok, err := IssueToken()
	require.NoError(t, err)
	for _, m := range Routes() {
		t.Run(m.Name, func(t *testing.T) {
			rt, err := m.New()
			require.NoError(t, err)
			res, err := LoadRoute(context.Background(), rt, tok, LoadConfig{Requests: 100, Warmup: 10, Concurrency: 4, MaxDuration: 10 * time.Second})
			require.NoError(t, err)
			assert.Equal(t, m.Name, res.Name)
			assert.Equal(t, 100, res.Requests)
			assert.Zero(t, res.Errors)
		})
	}
	t.Run("refused", func(t *testing.T) {
		rt, err := NewJWXRoute()
		require.NoError(t, err)
		res, err := LoadRoute(context.Background(), rt, tok[:len(tok)-2]+flip(tok[len(tok)-2:]), LoadConfig{Requests: 10, Concurrency: 2})
		require.NoError(t, err)
		assert.Equal(t, 10, res.Errors, "a 401 is not the 204 expected")
	})
}

// runIssue serves the token request to e b.N times.
func runIssue(b *testing.B, e Endpoint) {
	b.Helper()
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		e.Handler.ServeHTTP(w, NewTokenRequest(e.Authorization))
		if w.Code != http.StatusOK {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}

// BenchmarkIssue measures one client credentials token request through
// each implementation but the bcrypt one, in process.
func BenchmarkIssue(b *testing.B) {
	for _, m := range Endpoints() {
		if m.BCrypt {
			continue
		}
		b.Run(m.Name, func(b *testing.B) {
			e, err := m.New()
			require.NoError(b, err)
			defer e.Close()
			runIssue(b, e)
		})
	}
}

// BenchmarkIssueBCrypt measures the endpoints that check the client
// secret with bcrypt; run it with a small -benchtime such as 20x.
func BenchmarkIssueBCrypt(b *testing.B) {
	for _, m := range Endpoints() {
		if !m.BCrypt {
			continue
		}
		b.Run(m.Name, func(b *testing.B) {
			e, err := m.New()
			require.NoError(b, err)
			defer e.Close()
			runIssue(b, e)
		})
	}
}

// BenchmarkAudit measures what each auditor of the m2mauth endpoints
// takes to record the event of one issued token: the cost the auditor
// adds to a token request, measured alone because it is a few percent of
// the request, less than the spread of BenchmarkIssue on a shared
// machine.
func BenchmarkAudit(b *testing.B) {
	ev, err := IssuedEvent()
	require.NoError(b, err)
	auditors := Auditors()
	for _, name := range []string{EndpointM2MAuthJSON, EndpointM2MAuthSlog} {
		b.Run(name, func(b *testing.B) {
			a := auditors[name]
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				a.Audit(ctx, ev)
			}
		})
	}
}

// BenchmarkValidate measures GET /api/builders with a valid token through
// each protected route, in process.
func BenchmarkValidate(b *testing.B) {
	tok, err := IssueToken()
	require.NoError(b, err)
	for _, m := range Routes() {
		b.Run(m.Name, func(b *testing.B) {
			rt, err := m.New()
			require.NoError(b, err)
			r := NewRouteRequest(tok)
			if w := rt.Serve(tok); w.Code != http.StatusNoContent {
				b.Fatalf("status %d: %s", w.Code, w.Body)
			}
			b.ReportAllocs()
			for b.Loop() {
				w := httptest.NewRecorder()
				rt.Handler.ServeHTTP(w, r)
			}
		})
	}
}

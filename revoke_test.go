package m2mauth_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// endpointFixture is the standard fixture with the revocation and
// introspection endpoints of its token handler, and two more clients:
// "introspector", which may introspect any token, and a resource server
// whose client id is testAudience.
type endpointFixture struct {
	*fixture
	revoke     *m2mauth.RevocationHandler
	introspect *m2mauth.IntrospectionHandler

	introSecret string // of "introspector"
	apiSecret   string // of testAudience
}

// newEndpointFixture builds an endpointFixture whose introspection
// endpoint reads revocations from the store, unless cfg says otherwise.
func newEndpointFixture(t testing.TB, cfg *m2mauth.IntrospectionConfig, edit ...func(*m2mauth.TokenHandlerConfig)) *endpointFixture {
	t.Helper()
	e := &endpointFixture{fixture: newFixture(t, edit...)}
	ctx := context.Background()
	var si, sa m2mauth.Secret
	var err error
	e.introSecret, si, err = m2mauth.NewSecret(e.now, time.Time{})
	require.NoError(t, err)
	e.apiSecret, sa, err = m2mauth.NewSecret(e.now, time.Time{})
	require.NoError(t, err)
	require.NoError(t, e.store.CreateClient(ctx, &m2mauth.Client{ID: "introspector", Secrets: []m2mauth.Secret{si}, CanIntrospect: true}))
	require.NoError(t, e.store.CreateClient(ctx, &m2mauth.Client{ID: testAudience, Secrets: []m2mauth.Secret{sa}}))

	e.revoke, err = e.handler.RevocationHandler(e.store)
	require.NoError(t, err)
	if cfg == nil {
		cfg = &m2mauth.IntrospectionConfig{Revocations: e.store}
	}
	e.introspect, err = e.handler.IntrospectionHandler(*cfg)
	require.NoError(t, err)
	return e
}

// issue gets a token for client id from the token endpoint.
func (e *endpointFixture) issue(t testing.TB, id, secret string) string {
	t.Helper()
	w, resp := e.do(t, request{body: "grant_type=client_credentials", headers: auth(basic(id, secret))})
	require.Equal(t, http.StatusOK, w.Code, "body: %s", w.Body)
	return resp.AccessToken
}

// send posts rq to h, over TLS (r.TLS is set) unless rq.target says
// otherwise.
func send(t testing.TB, h http.Handler, rq request) *httptest.ResponseRecorder {
	t.Helper()
	if rq.method == "" {
		rq.method = http.MethodPost
	}
	if rq.target == "" {
		rq.target = "/oauth/endpoint"
	}
	if strings.HasPrefix(rq.target, "/") {
		rq.target = "https://m2mauth.test" + rq.target
	}
	if rq.contentType == "" {
		rq.contentType = "application/x-www-form-urlencoded"
	}
	r := httptest.NewRequest(rq.method, rq.target, strings.NewReader(rq.body))
	if rq.contentType != "-" {
		r.Header.Set("Content-Type", rq.contentType)
	}
	for k, vs := range rq.headers {
		for _, v := range vs {
			r.Header.Add(k, v)
		}
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// tokenFacts are the claims of a token that tests look at.
type tokenFacts struct {
	ClientID string `json:"client_id"`
	JTI      string `json:"jti"`
	IAT      int64  `json:"iat"`
	EXP      int64  `json:"exp"`
}

// factsOf reads the claims of tok without verifying it.
func factsOf(t testing.TB, tok string) tokenFacts {
	t.Helper()
	parts := strings.Split(tok, ".")
	require.Len(t, parts, 3)
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	require.NoError(t, err)
	var f tokenFacts
	require.NoError(t, json.Unmarshal(payload, &f))
	return f
}

// revoked reports whether the store's revocations revoke tok.
func (e *endpointFixture) revoked(t testing.TB, tok string) bool {
	t.Helper()
	revs, err := e.store.CurrentRevocations()
	require.NoError(t, err)
	f := factsOf(t, tok)
	return revs.Revoked(f.ClientID, f.JTI, time.Unix(f.IAT, 0))
}

// errorBody is an RFC 6749 §5.2 error body.
type errorBody struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

func errorOf(t testing.TB, w *httptest.ResponseRecorder) errorBody {
	t.Helper()
	var b errorBody
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &b), "body: %q", w.Body)
	return b
}

// assertNoTokenOrSecret checks that no audit event holds a token or a
// secret of the fixture.
func (e *endpointFixture) assertNoTokenOrSecret(t *testing.T, tokens ...string) {
	t.Helper()
	e.mu.Lock()
	events := append([]m2mauth.AuditEvent(nil), e.events...)
	e.mu.Unlock()
	require.NotEmpty(t, events)
	for _, ev := range events {
		b, err := json.Marshal(ev)
		require.NoError(t, err)
		for _, s := range append([]string{e.secret, e.newSecret, e.introSecret, e.apiSecret}, tokens...) {
			assert.NotContains(t, string(b), s, "event %s", b)
		}
		for _, tok := range tokens {
			// Nor the signature alone, nor the payload.
			if parts := strings.Split(tok, "."); len(parts) == 3 {
				assert.NotContains(t, string(b), parts[1])
				assert.NotContains(t, string(b), parts[2])
			}
		}
	}
}

func TestRevocationHandler(t *testing.T) {
	e := newEndpointFixture(t, nil)
	other, err := m2mauth.NewTokenHandler(e.store, e.keys, m2mauth.TokenHandlerConfig{Issuer: "https://evil.example.com", DefaultAudience: testAudience, Logger: discardLogger()})
	require.NoError(t, err)
	foreignIssuer := func(t testing.TB) string {
		w := send(t, other, request{body: "grant_type=client_credentials", headers: auth(basic("svc", e.secret))})
		require.Equal(t, http.StatusOK, w.Code)
		var resp tokenResponse
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &resp))
		return resp.AccessToken
	}
	svc := auth(basic("svc", e.secret))
	form := func(tok string, extra ...string) string {
		return "token=" + url.QueryEscape(tok) + strings.Join(extra, "")
	}
	tests := []struct {
		name string
		// token returns the token the request names; default: a fresh
		// token of svc.
		token     func(t testing.TB) string
		req       func(tok string) request
		status    int
		code      string // error code, when status is not 200
		challenge bool   // WWW-Authenticate: Basic expected
		revoked   bool
		event     m2mauth.AuditEventType
		reason    string
	}{
		{
			name:   "RFC 7009 §2.1: the client revokes its own token (client_secret_basic)",
			req:    func(tok string) request { return request{body: form(tok), headers: svc} },
			status: 200, revoked: true, event: m2mauth.EventTokenRevoked,
		},
		{
			name: "RFC 7009 §2.1: client_secret_post",
			req: func(tok string) request {
				return request{body: form(tok) + "&client_id=svc&client_secret=" + url.QueryEscape(e.secret)}
			},
			status: 200, revoked: true, event: m2mauth.EventTokenRevoked,
		},
		{
			name: "RFC 7009 §2.1: token_type_hint=access_token",
			req: func(tok string) request {
				return request{body: form(tok, "&token_type_hint=access_token"), headers: svc}
			},
			status: 200, revoked: true, event: m2mauth.EventTokenRevoked,
		},
		{
			name: "RFC 7009 §2.1: token_type_hint=refresh_token is only a hint",
			req: func(tok string) request {
				return request{body: form(tok, "&token_type_hint=refresh_token"), headers: svc}
			},
			status: 200, revoked: true, event: m2mauth.EventTokenRevoked,
		},
		{
			name:   "RFC 7009 §2.1: an unknown token_type_hint is only a hint",
			req:    func(tok string) request { return request{body: form(tok, "&token_type_hint=id_token"), headers: svc} },
			status: 200, revoked: true, event: m2mauth.EventTokenRevoked,
		},
		{
			name: "a JSON body, as the token endpoint accepts",
			req: func(tok string) request {
				return request{contentType: "application/json", body: `{"token":"` + tok + `"}`, headers: svc}
			},
			status: 200, revoked: true, event: m2mauth.EventTokenRevoked,
		},
		{
			name: "RFC 7009 §2.1: another client's token is answered 200 and not revoked",
			req: func(tok string) request {
				return request{body: form(tok), headers: auth(basic("rotated", e.newSecret))}
			},
			status: 200, event: m2mauth.EventRequestRejected, reason: m2mauth.ReasonForeignToken,
		},
		{
			name:   "RFC 7009 §2.2: a garbage token is answered 200",
			token:  func(testing.TB) string { return "not-a-token" },
			req:    func(tok string) request { return request{body: form(tok), headers: svc} },
			status: 200, event: m2mauth.EventRequestRejected, reason: m2mauth.ReasonTokenMalformed,
		},
		{
			name:   "RFC 7009 §2.2: a token of another issuer is answered 200 and not revoked",
			token:  foreignIssuer,
			req:    func(tok string) request { return request{body: form(tok), headers: svc} },
			status: 200, event: m2mauth.EventRequestRejected, reason: m2mauth.ReasonTokenIssuer,
		},
		{
			name: "RFC 7009 §2.2: a token with a forged signature is answered 200 and not revoked",
			token: func(t testing.TB) string {
				tok := e.issue(t, "svc", e.secret)
				return tok[:len(tok)-4] + "AAAA"
			},
			req:    func(tok string) request { return request{body: form(tok), headers: svc} },
			status: 200, event: m2mauth.EventRequestRejected, reason: m2mauth.ReasonTokenSignature,
		},
		{
			name:   "RFC 7009 §2.1: missing token",
			req:    func(string) request { return request{body: "token_type_hint=access_token", headers: svc} },
			status: 400, code: "invalid_request",
		},
		{
			name:   "RFC 6749 §3.1: an empty token beside a token is omitted",
			req:    func(tok string) request { return request{body: "token=&" + form(tok), headers: svc} },
			status: 200, revoked: true, event: m2mauth.EventTokenRevoked,
		},
		{
			name:   "RFC 7009 §2.1: repeated token",
			req:    func(tok string) request { return request{body: form(tok) + "&" + form(tok), headers: svc} },
			status: 400, code: "invalid_request",
		},
		{
			name: "the token in the URL query is never read",
			req: func(tok string) request {
				return request{target: "/oauth/revoke?" + form(tok), body: "token_type_hint=access_token", headers: svc}
			},
			status: 400, code: "invalid_request",
		},
		{
			name:   "RFC 6749 §5.2: a wrong secret is 401 invalid_client with a Basic challenge",
			req:    func(tok string) request { return request{body: form(tok), headers: auth(basic("svc", "wrong"))} },
			status: 401, code: "invalid_client", challenge: true,
		},
		{
			name:   "RFC 7009 §2.1: no client credentials is 401 invalid_client",
			req:    func(tok string) request { return request{body: form(tok)} },
			status: 401, code: "invalid_client", challenge: true,
		},
		{
			name: "a disabled client cannot authenticate",
			req: func(tok string) request {
				return request{body: form(tok), headers: auth(basic("disabled", e.disSecret))}
			},
			status: 401, code: "invalid_client", challenge: true,
		},
		{
			name: "RFC 7009 §2.1: GET is 405",
			req: func(tok string) request {
				return request{method: http.MethodGet, target: "/oauth/revoke?" + form(tok), contentType: "-", headers: svc}
			},
			status: 405, code: "invalid_request",
		},
		{
			name: "RFC 7009 §2: plain HTTP from another machine is refused",
			req: func(tok string) request {
				return request{target: "http://m2mauth.test/oauth/revoke", body: form(tok), headers: svc}
			},
			status: 400, code: "invalid_request", reason: m2mauth.ReasonInsecureTransport,
		},
	}
	var seen []string
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tok string
			if tc.token != nil {
				tok = tc.token(t)
			} else {
				tok = e.issue(t, "svc", e.secret)
			}
			seen = append(seen, tok)
			w := send(t, e.revoke, tc.req(tok))
			assert.Equal(t, tc.status, w.Code, "body: %s", w.Body)
			assert.Equal(t, "no-store", w.Header().Get("Cache-Control"))
			assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
			if tc.challenge {
				assert.Equal(t, `Basic realm="m2mauth"`, w.Header().Get("WWW-Authenticate"))
			} else {
				assert.Empty(t, w.Header().Get("WWW-Authenticate"))
			}
			if tc.status == http.StatusMethodNotAllowed {
				assert.Equal(t, "POST", w.Header().Get("Allow"))
			}
			if tc.code != "" {
				assert.Equal(t, tc.code, errorOf(t, w).Error)
			} else {
				assert.JSONEq(t, `{}`, w.Body.String())
			}
			if strings.Count(tok, ".") == 2 {
				assert.Equal(t, tc.revoked, e.revoked(t, tok), "revoked")
			}
			ev := e.lastEvent(t)
			if tc.event != "" {
				assert.Equal(t, tc.event, ev.Type)
			}
			if tc.reason != "" {
				assert.Equal(t, tc.reason, ev.Reason)
			}
			if tc.event == m2mauth.EventTokenRevoked {
				assert.Equal(t, "svc", ev.ClientID)
				assert.Equal(t, factsOf(t, tok).JTI, ev.JTI)
				assert.Equal(t, "192.0.2.1", ev.RemoteIP)
			}
		})
	}
	t.Run("audit events hold no token and no secret", func(t *testing.T) {
		e.assertNoTokenOrSecret(t, seen...)
	})
}

// TestRevocationOneToken checks that revoking a token revokes that one
// only (RFC 7009 §2: the request names one token).
func TestRevocationOneToken(t *testing.T) {
	e := newEndpointFixture(t, nil)
	first := e.issue(t, "svc", e.secret)
	second := e.issue(t, "svc", e.secret)
	w := send(t, e.revoke, request{body: "token=" + first, headers: auth(basic("svc", e.secret))})
	require.Equal(t, http.StatusOK, w.Code, "body: %s", w.Body)
	assert.True(t, e.revoked(t, first))
	assert.False(t, e.revoked(t, second), "another token of the same client")
	// Revoking it again is no error.
	w = send(t, e.revoke, request{body: "token=" + first, headers: auth(basic("svc", e.secret))})
	assert.Equal(t, http.StatusOK, w.Code)
	revs, err := e.store.CurrentRevocations()
	require.NoError(t, err)
	assert.Equal(t, 1, revs.Len())
	// The client still gets tokens.
	assert.False(t, e.revoked(t, e.issue(t, "svc", e.secret)))
}

// TestRevocationRate checks that one client can grow the deny-list only
// at RevocationRate (after RevocationBurst at once): a revocation past it
// gets 429 with Retry-After and revokes nothing, tokens that revoke
// nothing do not count, other clients are not held back, and the client
// may revoke again once the rate allows.
func TestRevocationRate(t *testing.T) {
	e := newEndpointFixture(t, nil, func(c *m2mauth.TokenHandlerConfig) { c.RevocationRate, c.RevocationBurst = 0.5, 3 })
	revoke := func(id, secret, tok string) *httptest.ResponseRecorder {
		return send(t, e.revoke, request{body: "token=" + tok, headers: auth(basic(id, secret))})
	}
	for i := range 3 {
		w := revoke("svc", e.secret, e.issue(t, "svc", e.secret))
		require.Equal(t, http.StatusOK, w.Code, "revocation %d: %s", i, w.Body)
	}
	// Revoking nothing does not count: garbage, and another's token.
	for range 5 {
		require.Equal(t, http.StatusOK, revoke("svc", e.secret, "garbage").Code)
		require.Equal(t, http.StatusOK, revoke("svc", e.secret, e.issue(t, "short", e.secret)).Code)
	}

	over := e.issue(t, "svc", e.secret)
	w := revoke("svc", e.secret, over)
	require.Equal(t, http.StatusTooManyRequests, w.Code, "body: %s", w.Body)
	assert.Equal(t, "2", w.Header().Get("Retry-After"))
	assert.Equal(t, "temporarily_unavailable", errorOf(t, w).Error)
	assert.False(t, e.revoked(t, over), "a refused revocation revokes nothing")
	ev := e.lastEvent(t)
	assert.Equal(t, m2mauth.EventRateLimited, ev.Type)
	assert.Equal(t, m2mauth.ReasonRevocationRate, ev.Reason)
	revs, err := e.store.CurrentRevocations()
	require.NoError(t, err)
	assert.Equal(t, 3, revs.Len(), "the burst")

	// Another client has its own allowance.
	require.Equal(t, http.StatusOK, revoke("short", e.secret, e.issue(t, "short", e.secret)).Code)

	// Two seconds later, one more.
	e.advance(2 * time.Second)
	require.Equal(t, http.StatusOK, revoke("svc", e.secret, over).Code)
	assert.True(t, e.revoked(t, over))
	require.Equal(t, http.StatusTooManyRequests, revoke("svc", e.secret, e.issue(t, "svc", e.secret)).Code)

}

// flakyRevoker is a Revoker whose RevokeToken fails with err while it is
// set.
type flakyRevoker struct {
	m2mauth.Revoker
	err atomic.Pointer[error]
}

func (f *flakyRevoker) RevokeToken(ctx context.Context, clientID, jti string, exp time.Time) error {
	if err := f.err.Load(); err != nil {
		return *err
	}
	return f.Revoker.RevokeToken(ctx, clientID, jti, exp)
}

// TestRevocationRateStoreFailure: revocations the store refuses do not
// use the client's allowance; those that time out, which the store may
// still make, do.
func TestRevocationRateStoreFailure(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		status int
		counts bool
	}{
		{"refused", errors.New("connection refused"), http.StatusInternalServerError, false},
		{"timed out", fmt.Errorf("commit: %w", context.DeadlineExceeded), http.StatusServiceUnavailable, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEndpointFixture(t, nil, func(c *m2mauth.TokenHandlerConfig) {
				c.RevocationRate, c.RevocationBurst, c.Logger = 0.5, 2, discardLogger()
			})
			rev := &flakyRevoker{Revoker: e.store}
			rh, err := e.handler.RevocationHandler(rev)
			require.NoError(t, err)
			revoke := func() *httptest.ResponseRecorder {
				return send(t, rh, request{body: "token=" + e.issue(t, "svc", e.secret), headers: auth(basic("svc", e.secret))})
			}
			rev.err.Store(&tc.err)
			require.Equal(t, tc.status, revoke().Code)
			require.Equal(t, tc.status, revoke().Code)
			rev.err.Store(nil)
			w := revoke()
			if tc.counts {
				require.Equal(t, http.StatusTooManyRequests, w.Code, "body: %s", w.Body)
				return
			}
			require.Equal(t, http.StatusOK, w.Code, "body: %s", w.Body)
			require.Equal(t, http.StatusOK, revoke().Code)
			require.Equal(t, http.StatusTooManyRequests, revoke().Code)
		})
	}
}

// TestRevocationExpired checks that an expired token needs no revoking
// (RFC 7009 §2.2), while one that a validator allowing the longest leeway
// would still accept is revoked.
func TestRevocationExpired(t *testing.T) {
	tests := []struct {
		name    string
		after   time.Duration // past the token's expiry
		revoked bool
		reason  string
	}{
		{"expired within the longest validator leeway", time.Minute, true, ""},
		{"expired beyond the longest validator leeway", m2mauth.RevocationGrace + time.Second, false, m2mauth.ReasonTokenExpired},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEndpointFixture(t, nil)
			tok := e.issue(t, "short", e.secret) // 5 minutes
			e.advance(5*time.Minute + tc.after)
			w := send(t, e.revoke, request{body: "token=" + tok, headers: auth(basic("short", e.secret))})
			assert.Equal(t, http.StatusOK, w.Code, "body: %s", w.Body)
			assert.Equal(t, tc.revoked, e.revoked(t, tok))
			if tc.reason != "" {
				ev := e.lastEvent(t)
				assert.Equal(t, m2mauth.EventRequestRejected, ev.Type)
				assert.Equal(t, tc.reason, ev.Reason)
			}
		})
	}
}

// TestRevocationSharesLimiter checks that failed authentications at the
// revocation endpoint count against the client at the token endpoint:
// one limiter guards every endpoint that takes client credentials
// (RFC 6749 §10.10).
func TestRevocationSharesLimiter(t *testing.T) {
	e := newEndpointFixture(t, nil)
	tok := e.issue(t, "svc", e.secret)
	for range 5 { // the default burst of a client id from one address
		w := send(t, e.revoke, request{body: "token=" + tok, headers: auth(basic("svc", "wrong"))})
		require.Equal(t, http.StatusUnauthorized, w.Code)
	}
	w := send(t, e.revoke, request{body: "token=" + tok, headers: auth(basic("svc", e.secret))})
	assert.Equal(t, http.StatusTooManyRequests, w.Code, "body: %s", w.Body)
	assert.NotEmpty(t, w.Header().Get("Retry-After"))
	assert.Equal(t, m2mauth.EventRateLimited, e.lastEvent(t).Type)
	assert.False(t, e.revoked(t, tok))

	w, _ = e.do(t, request{body: "grant_type=client_credentials", headers: auth(basic("svc", e.secret))})
	assert.Equal(t, http.StatusTooManyRequests, w.Code, "the token endpoint shares the limiter")
	w = send(t, e.introspect, request{body: "token=" + tok, headers: auth(basic("svc", e.secret))})
	assert.Equal(t, http.StatusTooManyRequests, w.Code, "the introspection endpoint shares the limiter")
}

// failingRevoker fails every RevokeToken with err.
type failingRevoker struct {
	m2mauth.Revoker
	err error
}

func (f failingRevoker) RevokeToken(context.Context, string, string, time.Time) error { return f.err }

// TestRevocationStoreFailure checks that a token the store could not
// revoke is answered with an error, so the client tries again
// (RFC 7009 §2.2.1), and never with 200.
func TestRevocationStoreFailure(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		status int
		code   string
		retry  bool
	}{
		{"timeout: 503 with Retry-After", context.DeadlineExceeded, 503, "temporarily_unavailable", true},
		{"failure: 500", errors.New("connection refused"), 500, "server_error", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEndpointFixture(t, nil, func(c *m2mauth.TokenHandlerConfig) { c.Logger = discardLogger() })
			rh, err := e.handler.RevocationHandler(failingRevoker{e.store, tc.err})
			require.NoError(t, err)
			tok := e.issue(t, "svc", e.secret)
			w := send(t, rh, request{body: "token=" + tok, headers: auth(basic("svc", e.secret))})
			assert.Equal(t, tc.status, w.Code, "body: %s", w.Body)
			assert.Equal(t, tc.code, errorOf(t, w).Error)
			assert.Equal(t, tc.retry, w.Header().Get("Retry-After") != "")
			assert.False(t, e.revoked(t, tok))
			assert.Equal(t, m2mauth.EventRequestRejected, e.lastEvent(t).Type)
		})
	}
}

func TestRevocationHandlerValidates(t *testing.T) {
	f := newFixture(t)
	_, err := f.handler.RevocationHandler(nil)
	assert.Error(t, err)
}

// TestRevocationOverHTTP revokes a token over a real connection from
// this machine, where plain HTTP is allowed (RFC 6749 §3.2 asks for TLS
// from anywhere else), and checks that the introspection endpoint then
// calls it inactive (RFC 7662 §2.2).
func TestRevocationOverHTTP(t *testing.T) {
	e := newEndpointFixture(t, nil)
	mux := http.NewServeMux()
	mux.Handle("POST /oauth/token", e.handler)
	mux.Handle("POST /oauth/revoke", e.revoke)
	mux.Handle("POST /oauth/introspect", e.introspect)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	post := func(path, id, secret string, form url.Values) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader(form.Encode()))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}
	status, body := post("/oauth/token", "svc", e.secret, url.Values{"grant_type": {"client_credentials"}})
	require.Equal(t, http.StatusOK, status, body)
	var tr tokenResponse
	require.NoError(t, json.Unmarshal([]byte(body), &tr))

	status, body = post("/oauth/introspect", "introspector", e.introSecret, url.Values{"token": {tr.AccessToken}})
	require.Equal(t, http.StatusOK, status, body)
	assert.Contains(t, body, `"active":true`)

	status, body = post("/oauth/revoke", "svc", e.secret, url.Values{"token": {tr.AccessToken}, "token_type_hint": {"access_token"}})
	require.Equal(t, http.StatusOK, status, body)
	assert.JSONEq(t, `{}`, body)

	status, body = post("/oauth/introspect", "introspector", e.introSecret, url.Values{"token": {tr.AccessToken}})
	require.Equal(t, http.StatusOK, status, body)
	assert.JSONEq(t, `{"active":false}`, body)
}

// TestTokenAfterWatermark checks that a token is never born revoked by
// its client's watermark: a request in the watermark's second waits for
// the next one and is issued then (see m2mauth.Revocations).
func TestTokenAfterWatermark(t *testing.T) {
	t.Run("in the watermark's second: issued at the next", func(t *testing.T) {
		e := newEndpointFixture(t, nil)
		e.advance(990 * time.Millisecond) // 12:00:00.990
		require.NoError(t, e.store.RevokeClientTokens(context.Background(), "svc"))
		tok := e.issue(t, "svc", e.secret)
		f := factsOf(t, tok)
		assert.Equal(t, e.clock().Truncate(time.Second).Add(time.Second).Unix(), f.IAT)
		assert.Equal(t, f.IAT+3600, f.EXP)
		assert.False(t, e.revoked(t, tok), "born revoked")
		assert.Equal(t, f.JTI, e.lastEvent(t).JTI)
	})
	t.Run("a client registered again in the second its namesake was deleted", func(t *testing.T) {
		e := newEndpointFixture(t, nil)
		ctx := context.Background()
		e.advance(990 * time.Millisecond)
		c, err := e.store.Client(ctx, "svc")
		require.NoError(t, err)
		require.NoError(t, e.store.DeleteClient(ctx, "svc"))
		require.NoError(t, e.store.CreateClient(ctx, c))
		tok := e.issue(t, "svc", e.secret)
		assert.Equal(t, e.clock().Truncate(time.Second).Add(time.Second).Unix(), factsOf(t, tok).IAT)
		assert.False(t, e.revoked(t, tok), "born revoked")
	})
	t.Run("after the watermark's second: no wait", func(t *testing.T) {
		e := newEndpointFixture(t, nil)
		require.NoError(t, e.store.RevokeClientTokens(context.Background(), "svc"))
		e.advance(time.Second)
		tok := e.issue(t, "svc", e.secret)
		assert.Equal(t, e.clock().Unix(), factsOf(t, tok).IAT)
		assert.False(t, e.revoked(t, tok))
	})
	t.Run("other clients are not delayed", func(t *testing.T) {
		e := newEndpointFixture(t, nil)
		require.NoError(t, e.store.RevokeClientTokens(context.Background(), "svc"))
		tok := e.issue(t, "rotated", e.newSecret)
		assert.Equal(t, e.clock().Unix(), factsOf(t, tok).IAT)
	})

	// A watermark ahead of the handler's clock (set by a replica whose
	// clock runs fast) is not waited for at length.
	ahead := func(d time.Duration) func(*testing.T) {
		return func(t *testing.T) {
			f := newFixture(t)
			store := storeFunc(func(ctx context.Context, id string) (*m2mauth.Client, error) {
				c, err := f.store.Client(ctx, id)
				if err == nil {
					c.TokensRevokedAt = f.clock().Add(d)
				}
				return c, err
			})
			h, err := m2mauth.NewTokenHandler(store, f.keys, m2mauth.TokenHandlerConfig{
				Issuer: testIssuer, DefaultAudience: testAudience, Now: f.clock, Auditor: m2mauth.AuditorFunc(f.audit),
			})
			require.NoError(t, err)
			w := send(t, h, request{body: "grant_type=client_credentials", headers: auth(basic("svc", f.secret))})
			assert.Equal(t, http.StatusServiceUnavailable, w.Code, "body: %s", w.Body)
			assert.Equal(t, "temporarily_unavailable", errorOf(t, w).Error)
			assert.NotEmpty(t, w.Header().Get("Retry-After"))
		}
	}
	t.Run("a watermark seconds ahead: 503 with Retry-After", ahead(5*time.Second))

	t.Run("a change to the client during the wait", testChangeDuringWatermarkWait)

	t.Run("the wait ends with the request", func(t *testing.T) {
		e := newEndpointFixture(t, nil)
		require.NoError(t, e.store.RevokeClientTokens(context.Background(), "svc"))
		// A full second to wait, but the request is gone already.
		ctx, cancel := context.WithCancel(context.Background())
		r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader("grant_type=client_credentials"))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Authorization", basic("svc", e.secret))
		cancel()
		w := httptest.NewRecorder()
		e.handler.ServeHTTP(w, r.WithContext(ctx))
		assert.Equal(t, http.StatusServiceUnavailable, w.Code, "body: %s", w.Body)
		// The caller hung up: answered as a canceled request, not as a
		// failure of the server's.
		assert.Equal(t, "the request was canceled", errorOf(t, w).Description)
	})
}

// TestRevocationReachesProtectedRoute follows tokens of a memstore
// server from the token endpoint to a protected route whose Validator
// reads the store's revocations: revoking one token (RFC 7009 §2.1)
// refuses it at once, cached or not, and leaves the client's other token
// alone; another client cannot revoke it (§2.2: 200, nothing revoked);
// disabling the client refuses all its tokens, and re-enabling it lets
// new tokens through while the old ones stay refused.
func TestRevocationReachesProtectedRoute(t *testing.T) {
	e := newEndpointFixture(t, nil)
	v, err := m2mauth.NewValidator(e.keys, m2mauth.ValidatorConfig{
		Issuer: testIssuer, Audience: testAudience, Revocations: e.store, Now: e.clock,
	})
	require.NoError(t, err)
	route := v.RequireScopes("read")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	call := func(tok string) int {
		t.Helper()
		r := httptest.NewRequest(http.MethodGet, "https://api.example.com/builders", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		w := httptest.NewRecorder()
		route.ServeHTTP(w, r)
		return w.Code
	}
	revoke := func(id, secret, tok string) {
		t.Helper()
		w := send(t, e.revoke, request{body: "token=" + tok, headers: auth(basic(id, secret))})
		require.Equal(t, http.StatusOK, w.Code, "body: %s", w.Body)
	}

	first, second := e.issue(t, "svc", e.secret), e.issue(t, "svc", e.secret)
	require.Equal(t, http.StatusNoContent, call(first), "cached from now on")
	require.Equal(t, http.StatusNoContent, call(second))

	revoke("svc", e.secret, first)
	assert.Equal(t, http.StatusUnauthorized, call(first), "revoked, though cached")
	assert.Equal(t, http.StatusNoContent, call(second), "the client's other token")

	revoke("rotated", e.newSecret, second)
	assert.Equal(t, http.StatusNoContent, call(second), "another client's revocation revokes nothing")

	require.NoError(t, e.store.SetDisabled(t.Context(), "svc", true))
	assert.Equal(t, http.StatusUnauthorized, call(second), "every token of a disabled client")
	require.NoError(t, e.store.SetDisabled(t.Context(), "svc", false))
	e.advance(time.Second)
	third := e.issue(t, "svc", e.secret)
	assert.Equal(t, http.StatusNoContent, call(third), "a token issued after re-enabling")
	assert.Equal(t, http.StatusUnauthorized, call(second), "the old ones stay refused")
	assert.Equal(t, http.StatusUnauthorized, call(first))
}

// testChangeDuringWatermarkWait checks a token request that waits out its
// client's watermark against changes to the client that commit during
// the wait, in the second the request waits out. The token would be
// stamped with the next second, which such a change's watermark does not
// reach, so the client is read again before a token is minted: a
// disabled, deleted or secret-less client gets none (RFC 6749 §5.2
// invalid_client), a narrower grant a narrower answer, and a token that
// is issued is never one the store's revocations refuse.
func testChangeDuringWatermarkWait(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		// change runs against the store on the handler's nth read of
		// the client (from 1): after the first read, as a change that
		// commits once the request has authenticated; before any later
		// one, as a change that committed during a wait.
		change     func(t *testing.T, f *fixture, n int)
		scope      string
		wantStatus int
		wantError  string
		wantReason string
		// wantIAT is the token's iat, as seconds after 12:00:00.
		wantIAT int64
	}{
		{
			name: "disabled", wantStatus: http.StatusUnauthorized, wantError: "invalid_client", wantReason: m2mauth.ReasonClientDisabled,
			change: func(t *testing.T, f *fixture, n int) {
				if n == 1 {
					require.NoError(t, f.store.SetDisabled(ctx, "svc", true))
				}
			},
		},
		{
			name: "deleted", wantStatus: http.StatusUnauthorized, wantError: "invalid_client", wantReason: m2mauth.ReasonUnknownClient,
			change: func(t *testing.T, f *fixture, n int) {
				if n == 1 {
					require.NoError(t, f.store.DeleteClient(ctx, "svc"))
				}
			},
		},
		{
			name: "its secret removed", wantStatus: http.StatusUnauthorized, wantError: "invalid_client", wantReason: m2mauth.ReasonBadSecret,
			change: func(t *testing.T, f *fixture, n int) {
				if n == 1 {
					c, err := f.store.Client(ctx, "svc")
					require.NoError(t, err)
					require.NoError(t, f.store.RemoveSecret(ctx, "svc", c.Secrets[0].ID))
				}
			},
		},
		{
			name: "its secret rotated out", wantStatus: http.StatusUnauthorized, wantError: "invalid_client", wantReason: m2mauth.ReasonExpiredSecret,
			change: func(t *testing.T, f *fixture, n int) {
				if n == 1 {
					_, sec, err := m2mauth.NewSecret(f.clock(), time.Time{})
					require.NoError(t, err)
					require.NoError(t, f.store.RotateSecret(ctx, "svc", sec, f.clock()))
				}
			},
		},
		{
			name: "its secret expired", wantStatus: http.StatusUnauthorized, wantError: "invalid_client", wantReason: m2mauth.ReasonExpiredSecret,
			change: func(t *testing.T, f *fixture, n int) {
				if n == 1 {
					c, err := f.store.Client(ctx, "svc")
					require.NoError(t, err)
					// Expires at the second the request waits for.
					require.NoError(t, f.store.ExpireSecret(ctx, "svc", c.Secrets[0].ID, f.clock().Truncate(time.Second).Add(time.Second)))
				}
			},
		},
		{
			name: "the scope asked for no longer granted", scope: "write", wantStatus: http.StatusBadRequest, wantError: "invalid_scope",
			change: func(t *testing.T, f *fixture, n int) {
				if n == 1 {
					c, err := f.store.Client(ctx, "svc")
					require.NoError(t, err)
					c.Grants = map[string]m2mauth.Scopes{testAudience: {"read"}}
					require.NoError(t, f.store.UpdateClient(ctx, c))
				}
			},
		},
		{
			// Tokens issued after the second watermark are the client's
			// to have: it is still enabled and holds its secret.
			name: "tokens revoked again in the same second", wantStatus: http.StatusOK, wantIAT: 1,
			change: func(t *testing.T, f *fixture, n int) {
				if n == 1 {
					f.advance(5 * time.Millisecond)
					require.NoError(t, f.store.RevokeClientTokens(ctx, "svc"))
				}
			},
		},
		{
			name: "tokens revoked again in the second waited for", wantStatus: http.StatusOK, wantIAT: 2,
			change: func(t *testing.T, f *fixture, n int) {
				if n == 2 {
					f.advance(time.Second) // 12:00:01.990
					require.NoError(t, f.store.RevokeClientTokens(ctx, "svc"))
				}
			},
		},
		{
			name: "tokens revoked again on every wait", wantStatus: http.StatusServiceUnavailable, wantError: "temporarily_unavailable",
			change: func(t *testing.T, f *fixture, n int) {
				if n >= 2 {
					f.advance(time.Second)
					require.NoError(t, f.store.RevokeClientTokens(ctx, "svc"))
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.advance(990 * time.Millisecond) // 12:00:00.990
			require.NoError(t, f.store.RevokeClientTokens(ctx, "svc"))
			var mu sync.Mutex
			reads := 0
			store := storeFunc(func(ctx context.Context, id string) (*m2mauth.Client, error) {
				mu.Lock()
				reads++
				n := reads
				mu.Unlock()
				if n == 1 {
					// The request authenticates, then the change
					// commits.
					c, err := f.store.Client(ctx, id)
					tt.change(t, f, n)
					return c, err
				}
				// Any later read is after a wait, during which the
				// change committed.
				tt.change(t, f, n)
				return f.store.Client(ctx, id)
			})
			h, err := m2mauth.NewTokenHandler(store, f.keys, m2mauth.TokenHandlerConfig{
				Issuer: testIssuer, DefaultAudience: testAudience, Now: f.clock, Auditor: m2mauth.AuditorFunc(f.audit),
			})
			require.NoError(t, err)
			body := "grant_type=client_credentials"
			if tt.scope != "" {
				body += "&scope=" + tt.scope
			}
			w := send(t, h, request{body: body, headers: auth(basic("svc", f.secret))})
			require.Equal(t, tt.wantStatus, w.Code, "body: %s", w.Body)
			if tt.wantStatus != http.StatusOK {
				assert.Equal(t, tt.wantError, errorOf(t, w).Error)
				if tt.wantReason != "" {
					assert.Equal(t, tt.wantReason, f.lastEvent(t).Reason)
					assert.Empty(t, f.lastEvent(t).SecretID)
					assert.True(t, strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Basic "), "a Basic challenge (RFC 6749 §5.2)")
				}
				return
			}
			var tr tokenResponse
			require.NoError(t, json.Unmarshal(w.Body.Bytes(), &tr))
			start := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
			assert.Equal(t, start.Unix()+tt.wantIAT, factsOf(t, tr.AccessToken).IAT)
			f.advance(2 * time.Second)
			v, err := m2mauth.NewValidator(f.keys, m2mauth.ValidatorConfig{
				Issuer: testIssuer, Audience: testAudience, Now: f.clock, Revocations: f.store,
			})
			require.NoError(t, err)
			_, err = v.Validate(ctx, tr.AccessToken)
			assert.NoError(t, err, "born revoked")
		})
	}
}

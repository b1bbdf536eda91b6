package m2mauth_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

const (
	testIssuer   = "https://auth.example.com"
	testAudience = "https://api.example.com"
	otherAud     = "https://reports.example.com"
)

// fixture is a token handler over a memstore with a few clients, a
// settable clock and a recording auditor.
type fixture struct {
	store   *memstore.Store
	keys    *m2mauth.StaticKeys
	handler *m2mauth.TokenHandler

	mu     sync.Mutex
	now    time.Time
	events []m2mauth.AuditEvent

	secret      string // of "svc"
	oldSecret   string // of "rotated", expired
	newSecret   string // of "rotated", current
	weirdSecret string // of "weird", contains + / : % and a space
	disSecret   string // of "disabled"
}

func (f *fixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

func (f *fixture) audit(_ context.Context, e m2mauth.AuditEvent) {
	f.mu.Lock()
	f.events = append(f.events, e)
	f.mu.Unlock()
}

func (f *fixture) lastEvent(t testing.TB) m2mauth.AuditEvent {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	require.NotEmpty(t, f.events, "no audit event")
	return f.events[len(f.events)-1]
}

// newFixture builds the standard fixture; edit may change the handler
// configuration.
func newFixture(t testing.TB, edit ...func(*m2mauth.TokenHandlerConfig)) *fixture {
	t.Helper()
	f := &fixture{now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	f.store = memstore.New(memstore.WithClock(f.clock))
	ctx := context.Background()

	newSecret := func(expires time.Time) (string, m2mauth.Secret) {
		plain, s, err := m2mauth.NewSecret(f.now, expires)
		require.NoError(t, err)
		return plain, s
	}
	grants := map[string]m2mauth.Scopes{
		testAudience: {"read", "write"},
		otherAud:     {"read:reports"},
	}
	var s1, sOld, sNew, sDis m2mauth.Secret
	f.secret, s1 = newSecret(time.Time{})
	f.oldSecret, sOld = newSecret(f.now.Add(-time.Minute))
	f.newSecret, sNew = newSecret(time.Time{})
	f.disSecret, sDis = newSecret(time.Time{})

	f.weirdSecret = "a+b/c:d%e f=g&h"
	weirdHash, err := m2mauth.HashSecret(f.weirdSecret)
	require.NoError(t, err)

	for _, c := range []*m2mauth.Client{
		{ID: "svc", Secrets: []m2mauth.Secret{s1}, Grants: grants},
		{ID: "rotated", Secrets: []m2mauth.Secret{sOld, sNew}, Grants: grants},
		{ID: "disabled", Secrets: []m2mauth.Secret{sDis}, Grants: grants, Disabled: true},
		{ID: "public", Public: true, Grants: grants},
		{ID: "weird:id+1", Secrets: []m2mauth.Secret{{ID: "w1", Hash: weirdHash}}, Grants: grants},
		{ID: "short", Secrets: []m2mauth.Secret{s1}, Grants: grants, TokenTTL: 5 * time.Minute},
	} {
		require.NoError(t, f.store.CreateClient(ctx, c))
	}

	key, err := m2mauth.NewHS256Key("k1", []byte("0123456789abcdef0123456789abcdef"))
	require.NoError(t, err)
	f.keys, err = m2mauth.NewStaticKeys(key)
	require.NoError(t, err)
	cfg := m2mauth.TokenHandlerConfig{
		Issuer:          testIssuer,
		DefaultAudience: testAudience,
		Auditor:         m2mauth.AuditorFunc(f.audit),
		Now:             f.clock,
	}
	for _, e := range edit {
		e(&cfg)
	}
	f.handler, err = m2mauth.NewTokenHandler(f.store, f.keys, cfg)
	require.NoError(t, err)
	return f
}

// basic returns a client_secret_basic header value, form-encoding id and
// secret as RFC 6749 §2.3.1 requires.
func basic(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
}

// tokenResponse is the RFC 6749 §5.1 success body and §5.2 error body.
type tokenResponse struct {
	AccessToken      string `json:"access_token"`
	TokenType        string `json:"token_type"`
	ExpiresIn        int64  `json:"expires_in"`
	Scope            string `json:"scope"`
	RefreshToken     string `json:"refresh_token"`
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
}

// request describes one token request in a test table.
type request struct {
	method      string
	target      string // default /oauth/token
	contentType string // default form
	body        string
	headers     map[string][]string
}

func (f *fixture) do(t testing.TB, rq request) (*httptest.ResponseRecorder, tokenResponse) {
	t.Helper()
	if rq.method == "" {
		rq.method = http.MethodPost
	}
	if rq.target == "" {
		rq.target = "/oauth/token"
	}
	if strings.HasPrefix(rq.target, "/") {
		rq.target = "https://m2mauth.test" + rq.target // r.TLS is set
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
	f.handler.ServeHTTP(w, r)
	var resp tokenResponse
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &resp), "body is not JSON: %q", w.Body.String())
	return w, resp
}

func auth(v ...string) map[string][]string { return map[string][]string{"Authorization": v} }

func TestTokenHandler(t *testing.T) {
	f := newFixture(t)
	cc := "grant_type=client_credentials"
	post := func(id, secret string) string {
		return "&client_id=" + url.QueryEscape(id) + "&client_secret=" + url.QueryEscape(secret)
	}
	tests := []struct {
		name      string
		req       request
		status    int
		code      string // "" for success
		scope     string // expected granted scope on success
		challenge bool   // WWW-Authenticate: Basic expected
	}{
		// Successes.
		{name: "basic auth, RFC 6749 §2.3.1", req: request{body: cc + "&scope=read", headers: auth(basic("svc", f.secret))}, status: 200, scope: "read"},
		{name: "client_secret_post, RFC 6749 §2.3.1", req: request{body: cc + "&scope=read" + post("svc", f.secret)}, status: 200, scope: "read"},
		{name: "basic id and secret with %2B %3A %25 encoded, RFC 6749 §2.3.1", req: request{body: cc, headers: auth(basic("weird:id+1", f.weirdSecret))}, status: 200, scope: "read write"},
		{name: "post with escaped + / : %", req: request{body: cc + post("weird:id+1", f.weirdSecret)}, status: 200, scope: "read write"},
		{name: "omitted scope grants all for audience, RFC 6749 §3.3", req: request{body: cc, headers: auth(basic("svc", f.secret))}, status: 200, scope: "read write"},
		{name: "empty scope is omitted, RFC 6749 §3.1", req: request{body: cc + "&scope=", headers: auth(basic("svc", f.secret))}, status: 200, scope: "read write"},
		{name: "empty scope then a scope, RFC 6749 §3.1", req: request{body: cc + "&scope=&scope=read", headers: auth(basic("svc", f.secret))}, status: 200, scope: "read"},
		{name: "scope then an empty scope, RFC 6749 §3.1", req: request{body: cc + "&scope=write&scope", headers: auth(basic("svc", f.secret))}, status: 200, scope: "write"},
		{name: "empty grant_type then grant_type, RFC 6749 §3.1", req: request{body: "grant_type=&" + cc + "&scope=read", headers: auth(basic("svc", f.secret))}, status: 200, scope: "read"},
		{name: "empty client_secret beside Basic is omitted, RFC 6749 §3.1", req: request{body: cc + "&scope=read&client_secret=", headers: auth(basic("svc", f.secret))}, status: 200, scope: "read"},
		{name: "empty client_id and client_secret beside Basic, RFC 6749 §3.1", req: request{body: cc + "&client_id=&client_secret=&scope=read", headers: auth(basic("svc", f.secret))}, status: 200, scope: "read"},
		{name: "duplicate scope tokens folded", req: request{body: cc + "&scope=read+read", headers: auth(basic("svc", f.secret))}, status: 200, scope: "read"},
		{name: "every scope granted, in order, RFC 6749 §3.3", req: request{body: cc + "&scope=read+write", headers: auth(basic("svc", f.secret))}, status: 200, scope: "read write"},
		{name: "the second scope granted alone, RFC 6749 §3.3", req: request{body: cc + "&scope=write", headers: auth(basic("svc", f.secret))}, status: 200, scope: "write"},
		{name: "scopes in another order keep the order asked, RFC 6749 §3.3", req: request{body: cc + "&scope=write+read", headers: auth(basic("svc", f.secret))}, status: 200, scope: "write read"},
		{name: "many repeated scope tokens folded in the order first asked", req: request{body: cc + "&scope=" + strings.Repeat("write+read+", 6) + "write", headers: auth(basic("svc", f.secret))}, status: 200, scope: "write read"},
		{name: "audience parameter", req: request{body: cc + "&audience=" + url.QueryEscape(otherAud), headers: auth(basic("svc", f.secret))}, status: 200, scope: "read:reports"},
		{name: "resource alias, RFC 8707 §2", req: request{body: cc + "&resource=" + url.QueryEscape(otherAud), headers: auth(basic("svc", f.secret))}, status: 200, scope: "read:reports"},
		{name: "the same resource twice, RFC 8707 §2", req: request{body: cc + "&resource=" + url.QueryEscape(otherAud) + "&resource=" + url.QueryEscape(otherAud), headers: auth(basic("svc", f.secret))}, status: 200, scope: "read:reports"},
		{name: "an empty resource beside one, RFC 6749 §3.1", req: request{body: cc + "&resource=&resource=" + url.QueryEscape(otherAud), headers: auth(basic("svc", f.secret))}, status: 200, scope: "read:reports"},
		{name: "audience and resource agree", req: request{body: cc + "&resource=" + url.QueryEscape(otherAud) + "&audience=" + url.QueryEscape(otherAud), headers: auth(basic("svc", f.secret))}, status: 200, scope: "read:reports"},
		{name: "rotated client, new secret", req: request{body: cc, headers: auth(basic("rotated", f.newSecret))}, status: 200, scope: "read write"},
		{name: "JSON body as in the seeds", req: request{contentType: "application/json", body: `{"grant_type":"client_credentials","client_id":"svc","client_secret":"` + f.secret + `","scope":"read write"}`}, status: 200, scope: "read write"},
		{name: "JSON with charset", req: request{contentType: "application/json; charset=utf-8", body: `{"grant_type":"client_credentials","scope":"read"}`, headers: auth(basic("svc", f.secret))}, status: 200, scope: "read"},
		{name: "form with charset", req: request{contentType: "application/x-www-form-urlencoded; charset=UTF-8", body: cc, headers: auth(basic("svc", f.secret))}, status: 200, scope: "read write"},
		{name: "lowercase basic scheme", req: request{body: cc, headers: auth("basic " + strings.TrimPrefix(basic("svc", f.secret), "Basic "))}, status: 200, scope: "read write"},
		{name: "unknown parameters ignored, RFC 6749 §3.1", req: request{body: cc + "&foo=bar&foo=baz", headers: auth(basic("svc", f.secret))}, status: 200, scope: "read write"},
		{name: "body client_id equal to basic id", req: request{body: cc + "&client_id=svc", headers: auth(basic("svc", f.secret))}, status: 200, scope: "read write"},

		// Method, content type, size, syntax.
		{name: "GET is 405", req: request{method: http.MethodGet, contentType: "-"}, status: 405, code: "invalid_request"},
		{name: "PUT is 405", req: request{method: http.MethodPut, body: cc, headers: auth(basic("svc", f.secret))}, status: 405, code: "invalid_request"},
		{name: "wrong content type", req: request{contentType: "text/plain", body: cc, headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "multipart refused", req: request{contentType: "multipart/form-data; boundary=x", body: cc, headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "missing content type", req: request{contentType: "-", body: cc, headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "non-UTF-8 charset", req: request{contentType: "application/x-www-form-urlencoded; charset=latin1", body: cc, headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "body over the limit", req: request{body: cc + "&pad=" + strings.Repeat("x", 9000), headers: auth(basic("svc", f.secret))}, status: 413, code: "invalid_request"},
		{name: "repeated grant_type, RFC 6749 §3.2", req: request{body: cc + "&" + cc, headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "repeated scope, RFC 6749 §3.2", req: request{body: cc + "&scope=read&scope=write", headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "repeated client_id, RFC 6749 §3.2", req: request{body: cc + post("svc", f.secret) + "&client_id=svc"}, status: 400, code: "invalid_request"},
		{name: "bad percent encoding", req: request{body: cc + "&scope=%zz", headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "malformed JSON", req: request{contentType: "application/json", body: `{"grant_type":`, headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "JSON array", req: request{contentType: "application/json", body: `["client_credentials"]`, headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "JSON non-string value", req: request{contentType: "application/json", body: `{"grant_type":"client_credentials","scope":["read"]}`, headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "JSON number value", req: request{contentType: "application/json", body: `{"grant_type":"client_credentials","client_id":42}`}, status: 400, code: "invalid_request"},
		{name: "JSON repeated key, RFC 6749 §3.2", req: request{contentType: "application/json", body: `{"grant_type":"client_credentials","scope":"read","scope":"write"}`, headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "JSON repeated unknown member is not echoed, RFC 6749 §5.2", req: request{contentType: "application/json", body: `{"grant_type":"client_credentials","a\"b\\c\u00e9":"1","a\"b\\c\u00e9":"2"}`, headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "JSON trailing data", req: request{contentType: "application/json", body: `{"grant_type":"client_credentials"} {}`, headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},

		// Grant type.
		{name: "missing grant_type, RFC 6749 §4.4.2", req: request{body: "scope=read", headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "unknown grant_type, RFC 6749 §5.2", req: request{body: "grant_type=password", headers: auth(basic("svc", f.secret))}, status: 400, code: "unsupported_grant_type"},
		{name: "grant_type case-sensitive", req: request{body: "grant_type=Client_Credentials", headers: auth(basic("svc", f.secret))}, status: 400, code: "unsupported_grant_type"},

		// Client authentication, RFC 6749 §2.3.1 and §5.2.
		{name: "no credentials", req: request{body: cc}, status: 401, code: "invalid_client", challenge: true},
		{name: "unknown client", req: request{body: cc, headers: auth(basic("nobody", f.secret))}, status: 401, code: "invalid_client", challenge: true},
		{name: "unknown client via post", req: request{body: cc + post("nobody", f.secret)}, status: 401, code: "invalid_client", challenge: true},
		{name: "wrong secret", req: request{body: cc, headers: auth(basic("svc", f.secret+"x"))}, status: 401, code: "invalid_client", challenge: true},
		{name: "wrong secret via post", req: request{body: cc + post("svc", "nope")}, status: 401, code: "invalid_client", challenge: true},
		{name: "expired secret", req: request{body: cc, headers: auth(basic("rotated", f.oldSecret))}, status: 401, code: "invalid_client", challenge: true},
		{name: "disabled client with its right secret", req: request{body: cc, headers: auth(basic("disabled", f.disSecret))}, status: 401, code: "invalid_client", challenge: true},
		{name: "client_id without secret", req: request{body: cc + "&client_id=svc"}, status: 401, code: "invalid_client", challenge: true},
		{name: "client_secret without client_id", req: request{body: cc + "&client_secret=" + f.secret}, status: 400, code: "invalid_request"},
		{name: "basic and post at once", req: request{body: cc + post("svc", f.secret), headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "basic and a different body client_id", req: request{body: cc + "&client_id=rotated", headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "two Authorization headers", req: request{body: cc, headers: auth(basic("svc", f.secret), basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "bearer scheme on the token endpoint", req: request{body: cc, headers: auth("Bearer abc")}, status: 401, code: "invalid_client", challenge: true},
		{name: "basic not base64", req: request{body: cc, headers: auth("Basic !!!")}, status: 401, code: "invalid_client", challenge: true},
		{name: "basic without colon", req: request{body: cc, headers: auth("Basic " + base64.StdEncoding.EncodeToString([]byte("svc")))}, status: 401, code: "invalid_client", challenge: true},
		{name: "basic with an empty client id, RFC 6749 §5.2 and RFC 7617 §2", req: request{body: cc, headers: auth("Basic " + base64.StdEncoding.EncodeToString([]byte(":"+f.secret)))}, status: 401, code: "invalid_client", challenge: true},
		{name: "basic with bad escape", req: request{body: cc, headers: auth("Basic " + base64.StdEncoding.EncodeToString([]byte("svc:%zz")))}, status: 401, code: "invalid_client", challenge: true},
		{name: "basic without url-encoding fails for + in secret", req: request{body: cc, headers: auth("Basic " + base64.StdEncoding.EncodeToString([]byte("weird%3Aid%2B1:"+f.weirdSecret)))}, status: 401, code: "invalid_client", challenge: true},
		{name: "client id with control character", req: request{body: cc + "&client_id=a%00b&client_secret=x"}, status: 401, code: "invalid_client", challenge: true},
		// RFC 6749 §4.4: public clients may not use this grant. They are
		// answered like unknown clients, so their ids cannot be told from
		// unused ones.
		{name: "public client, RFC 6749 §4.4", req: request{body: cc + "&client_id=public"}, status: 401, code: "invalid_client", challenge: true},
		{name: "public client with a secret", req: request{body: cc + post("public", "whatever")}, status: 401, code: "invalid_client", challenge: true},
		{name: "credentials in the query string ignored, RFC 6749 §2.3.1", req: request{target: "/oauth/token?client_id=svc&client_secret=" + url.QueryEscape(f.secret), body: cc}, status: 401, code: "invalid_client", challenge: true},
		{name: "grant_type in the query string ignored", req: request{target: "/oauth/token?grant_type=client_credentials", body: "scope=read", headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},

		// Audience, RFC 8707 §2.
		{name: "unknown audience", req: request{body: cc + "&audience=https%3A%2F%2Fevil.example.com", headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_target"},
		{name: "unknown resource", req: request{body: cc + "&resource=https%3A%2F%2Fevil.example.com", headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_target"},
		{name: "relative resource", req: request{body: cc + "&resource=api", headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_target"},
		{name: "resource with fragment", req: request{body: cc + "&resource=" + url.QueryEscape(testAudience+"#x"), headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_target"},
		{name: "audience and resource differ", req: request{body: cc + "&audience=" + url.QueryEscape(testAudience) + "&resource=" + url.QueryEscape(otherAud), headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},
		{name: "two resources, RFC 8707 §2", req: request{body: cc + "&resource=" + url.QueryEscape(otherAud) + "&resource=" + url.QueryEscape(testAudience), headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_target"},
		{name: "a resource, then another, then the first again, RFC 8707 §2", req: request{body: cc + "&resource=" + url.QueryEscape(otherAud) + "&resource=" + url.QueryEscape(testAudience) + "&resource=" + url.QueryEscape(otherAud), headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_target"},
		{name: "repeated audience, RFC 6749 §3.2", req: request{body: cc + "&audience=" + url.QueryEscape(otherAud) + "&audience=" + url.QueryEscape(otherAud), headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_request"},

		// Scope, RFC 6749 §3.3 and §5.2.
		{name: "scope not granted", req: request{body: cc + "&scope=admin", headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_scope"},
		{name: "one of two scopes not granted", req: request{body: cc + "&scope=read+admin", headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_scope"},
		{name: "scope granted for another audience only", req: request{body: cc + "&scope=read:reports", headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_scope"},
		{name: "scope case-sensitive", req: request{body: cc + "&scope=READ", headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_scope"},
		{name: "invalid scope characters", req: request{body: cc + "&scope=" + url.QueryEscape(`re"ad`), headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_scope"},
		{name: "double space in scope", req: request{body: cc + "&scope=" + url.QueryEscape("read  write"), headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_scope"},
		{name: "non-ASCII scope", req: request{body: cc + "&scope=" + url.QueryEscape("lécture"), headers: auth(basic("svc", f.secret))}, status: 400, code: "invalid_scope"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, resp := f.do(t, tc.req)
			assert.Equal(t, tc.status, w.Code, "body: %s", w.Body)
			// RFC 6749 §5.1 and §5.2: never cached, always JSON.
			assert.Equal(t, "no-store", w.Header().Get("Cache-Control"))
			assert.Equal(t, "no-cache", w.Header().Get("Pragma"))
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
				assert.Equal(t, tc.code, resp.Error)
				assert.NotEmpty(t, resp.ErrorDescription)
				for _, c := range []byte(resp.ErrorDescription) {
					assert.True(t, c >= 0x20 && c <= 0x7e && c != '"' && c != '\\', "RFC 6749 §5.2: byte %#x in error_description", c)
				}
				assert.Empty(t, resp.AccessToken)
				return
			}
			assert.Empty(t, resp.Error)
			assert.NotEmpty(t, resp.AccessToken)
			assert.Equal(t, "Bearer", resp.TokenType)
			assert.Equal(t, int64(3600), resp.ExpiresIn)
			assert.Equal(t, tc.scope, resp.Scope)
			assert.Empty(t, resp.RefreshToken, "RFC 6749 §4.4.3: no refresh token")
		})
	}
}

// TestTokenHandlerAudit checks the events behind the identical
// invalid_client answers and the success event.
func TestTokenHandlerAudit(t *testing.T) {
	f := newFixture(t)
	cc := "grant_type=client_credentials"
	tests := []struct {
		name   string
		req    request
		typ    m2mauth.AuditEventType
		reason string
	}{
		{"unknown client", request{body: cc, headers: auth(basic("nobody", "x"))}, m2mauth.EventAuthFailed, m2mauth.ReasonUnknownClient},
		{"wrong secret", request{body: cc, headers: auth(basic("svc", "x"))}, m2mauth.EventAuthFailed, m2mauth.ReasonBadSecret},
		{"another scheme than Basic", request{body: cc, headers: auth("Bearer abc.def.ghi")}, m2mauth.EventAuthFailed, m2mauth.ReasonMalformedCredentials},
		{"Basic not base64", request{body: cc, headers: auth("Basic !!!notbase64")}, m2mauth.EventAuthFailed, m2mauth.ReasonMalformedCredentials},
		{"expired secret", request{body: cc, headers: auth(basic("rotated", f.oldSecret))}, m2mauth.EventAuthFailed, m2mauth.ReasonExpiredSecret},
		{"disabled", request{body: cc, headers: auth(basic("disabled", f.disSecret))}, m2mauth.EventAuthFailed, m2mauth.ReasonClientDisabled},
		{"no credentials", request{body: cc}, m2mauth.EventAuthFailed, m2mauth.ReasonNoCredentials},
		{"public", request{body: cc, headers: auth(basic("public", "whatever"))}, m2mauth.EventAuthFailed, m2mauth.ReasonPublicClient},
		{"scope", request{body: cc + "&scope=admin", headers: auth(basic("svc", f.secret))}, m2mauth.EventScopeDenied, ""},
		{"audience", request{body: cc + "&audience=x", headers: auth(basic("svc", f.secret))}, m2mauth.EventAudienceDenied, ""},
		{"issued", request{body: cc, headers: auth(basic("svc", f.secret)), target: "/oauth/token"}, m2mauth.EventTokenIssued, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.headers = merge(tc.req.headers, map[string][]string{"User-Agent": {"test-agent"}})
			f.do(t, tc.req)
			e := f.lastEvent(t)
			assert.Equal(t, tc.typ, e.Type)
			if tc.reason != "" {
				assert.Equal(t, tc.reason, e.Reason)
			}
			assert.Equal(t, "192.0.2.1", e.RemoteIP) // httptest's RemoteAddr
			assert.Equal(t, "test-agent", e.UserAgent)
			assert.Equal(t, f.clock(), e.Time)
			if tc.typ == m2mauth.EventTokenIssued {
				assert.Equal(t, "svc", e.ClientID)
				assert.Equal(t, testAudience, e.Audience)
				assert.Equal(t, m2mauth.Scopes{"read", "write"}, e.Scopes)
				assert.Len(t, e.JTI, 22)
				c, err := f.store.Client(t.Context(), "svc")
				require.NoError(t, err)
				assert.Equal(t, c.Secrets[0].ID, e.SecretID, "the event names the matching secret")
			}
		})
	}
}

func merge(a, b map[string][]string) map[string][]string {
	out := map[string][]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// TestTokenHandlerSecretRotation: the old secret works until its expiry,
// the new one before and after, and the audit tells them apart.
func TestTokenHandlerSecretRotation(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	plain, sec, err := m2mauth.NewSecret(f.clock(), time.Time{})
	require.NoError(t, err)
	require.NoError(t, f.store.AddSecret(ctx, "svc", sec))
	c, err := f.store.Client(ctx, "svc")
	require.NoError(t, err)
	oldID := c.Secrets[0].ID
	require.NoError(t, f.store.ExpireSecret(ctx, "svc", oldID, f.clock().Add(time.Hour)))

	get := func(secret string) int {
		w, _ := f.do(t, request{body: "grant_type=client_credentials", headers: auth(basic("svc", secret))})
		return w.Code
	}
	require.Equal(t, 200, get(f.secret))
	assert.Equal(t, oldID, f.lastEvent(t).SecretID)
	require.Equal(t, 200, get(plain))
	assert.Equal(t, sec.ID, f.lastEvent(t).SecretID)

	f.advance(time.Hour)
	assert.Equal(t, 401, get(f.secret), "old secret stops at its expiry")
	assert.Equal(t, m2mauth.ReasonExpiredSecret, f.lastEvent(t).Reason)
	assert.Equal(t, 200, get(plain))
}

// TestTokenHandlerStoreFailure: a failing store is a 500 server_error,
// not a failed authentication, and its cause is not sent.
func TestTokenHandlerStoreFailure(t *testing.T) {
	var events []m2mauth.AuditEvent
	failing := storeFunc(func(context.Context, string) (*m2mauth.Client, error) {
		return nil, assert.AnError
	})
	key, err := m2mauth.NewHS256Key("k1", []byte("0123456789abcdef0123456789abcdef"))
	require.NoError(t, err)
	keys, err := m2mauth.NewStaticKeys(key)
	require.NoError(t, err)
	h, err := m2mauth.NewTokenHandler(failing, keys, m2mauth.TokenHandlerConfig{
		Issuer: testIssuer, DefaultAudience: testAudience,
		Auditor: m2mauth.AuditorFunc(func(_ context.Context, e m2mauth.AuditEvent) { events = append(events, e) }),
		Logger:  discardLogger(),
	})
	require.NoError(t, err)
	r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader("grant_type=client_credentials"))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Authorization", basic("svc", "s"))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	assert.Equal(t, http.StatusInternalServerError, w.Code)
	assert.JSONEq(t, `{"error":"server_error","error_description":"the client store is unavailable"}`, w.Body.String())
	assert.Equal(t, "no-store", w.Header().Get("Cache-Control"))
	assert.Empty(t, w.Header().Get("WWW-Authenticate"))
	require.Len(t, events, 1)
	assert.Equal(t, m2mauth.EventRequestRejected, events[0].Type)
	assert.Equal(t, "server_error", events[0].Error)
}

type storeFunc func(ctx context.Context, id string) (*m2mauth.Client, error)

func (f storeFunc) Client(ctx context.Context, id string) (*m2mauth.Client, error) { return f(ctx, id) }

func TestTokenHandlerPerClientTTL(t *testing.T) {
	f := newFixture(t)
	w, resp := f.do(t, request{body: "grant_type=client_credentials", headers: auth(basic("short", f.secret))})
	require.Equal(t, 200, w.Code)
	assert.Equal(t, int64(300), resp.ExpiresIn)
}

// TestMaxTokenTTL: no token lives longer than MaxTokenTTL (at most 24h),
// whatever a client's settings say; stores refuse longer client TTLs and
// the handler refuses a longer default.
func TestMaxTokenTTL(t *testing.T) {
	f := newFixture(t)
	long := &m2mauth.Client{ID: "long", Secrets: []m2mauth.Secret{{ID: "s", Hash: mustHash(t, "x")}}, Grants: map[string]m2mauth.Scopes{testAudience: {"read"}}}
	long.TokenTTL = 10000 * time.Hour
	require.Error(t, long.Validate())
	require.Error(t, f.store.CreateClient(context.Background(), long))
	long.TokenTTL = m2mauth.MaxClientTokenTTL
	require.NoError(t, long.Validate())

	_, err := m2mauth.NewTokenHandler(f.store, f.keys, m2mauth.TokenHandlerConfig{Issuer: testIssuer, TokenTTL: 25 * time.Hour})
	assert.Error(t, err)
	_, err = m2mauth.NewTokenHandler(f.store, f.keys, m2mauth.TokenHandlerConfig{Issuer: testIssuer, MaxTokenTTL: 48 * time.Hour})
	assert.Error(t, err)
	_, err = m2mauth.NewTokenHandler(f.store, f.keys, m2mauth.TokenHandlerConfig{Issuer: testIssuer, MaxTokenTTL: time.Minute, TokenTTL: time.Hour})
	assert.Error(t, err)

	// A store that does not validate hands out a week-long TTL: the
	// handler caps it.
	week := *long
	week.TokenTTL = 7 * 24 * time.Hour
	for _, tc := range []struct {
		max  time.Duration
		want int64
	}{{0, 86400}, {10 * time.Minute, 600}} {
		h, err := m2mauth.NewTokenHandler(storeFunc(func(context.Context, string) (*m2mauth.Client, error) { c := week; return &c, nil }),
			f.keys, m2mauth.TokenHandlerConfig{Issuer: testIssuer, DefaultAudience: testAudience, MaxTokenTTL: tc.max})
		require.NoError(t, err)
		f.handler = h
		w, resp := f.do(t, request{body: "grant_type=client_credentials", headers: auth(basic("long", "x"))})
		require.Equal(t, 200, w.Code, w.Body.String())
		assert.Equal(t, tc.want, resp.ExpiresIn)
	}
}

func TestNewTokenHandlerValidates(t *testing.T) {
	store := memstore.New()
	key, err := m2mauth.NewHS256Key("k1", []byte("0123456789abcdef0123456789abcdef"))
	require.NoError(t, err)
	keys, err := m2mauth.NewStaticKeys(key)
	require.NoError(t, err)
	ok := m2mauth.TokenHandlerConfig{Issuer: testIssuer}
	tests := []struct {
		name  string
		store m2mauth.ClientStore
		keys  m2mauth.KeyProvider
		cfg   func(c m2mauth.TokenHandlerConfig) m2mauth.TokenHandlerConfig
	}{
		{"nil store", nil, keys, nil},
		{"nil keys", store, nil, nil},
		{"no issuer", store, keys, func(c m2mauth.TokenHandlerConfig) m2mauth.TokenHandlerConfig { c.Issuer = ""; return c }},
		{"negative ttl", store, keys, func(c m2mauth.TokenHandlerConfig) m2mauth.TokenHandlerConfig { c.TokenTTL = -time.Second; return c }},
		{"sub-second ttl", store, keys, func(c m2mauth.TokenHandlerConfig) m2mauth.TokenHandlerConfig { c.TokenTTL = time.Millisecond; return c }},
		{"tiny body limit", store, keys, func(c m2mauth.TokenHandlerConfig) m2mauth.TokenHandlerConfig { c.MaxBodyBytes = 10; return c }},
		{"quote in realm", store, keys, func(c m2mauth.TokenHandlerConfig) m2mauth.TokenHandlerConfig { c.Realm = `a"b`; return c }},
		{"control character in realm", store, keys, func(c m2mauth.TokenHandlerConfig) m2mauth.TokenHandlerConfig { c.Realm = "a\x7fb"; return c }},
		{"negative revocation rate", store, keys, func(c m2mauth.TokenHandlerConfig) m2mauth.TokenHandlerConfig { c.RevocationRate = -1; return c }},
		{"NaN revocation rate", store, keys, func(c m2mauth.TokenHandlerConfig) m2mauth.TokenHandlerConfig { c.RevocationRate = math.NaN(); return c }},
		{"negative revocation burst", store, keys, func(c m2mauth.TokenHandlerConfig) m2mauth.TokenHandlerConfig { c.RevocationBurst = -1; return c }},
		{"bad signing key", store, badKeys{}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			if tc.cfg != nil {
				cfg = tc.cfg(cfg)
			}
			h, err := m2mauth.NewTokenHandler(tc.store, tc.keys, cfg)
			require.Error(t, err)
			assert.Nil(t, h)
		})
	}
	h, err := m2mauth.NewTokenHandler(store, keys, ok)
	require.NoError(t, err)
	assert.NotNil(t, h)
}

// badKeys returns a signing key too short for HS256.
type badKeys struct{}

func (badKeys) SigningKey(context.Context) (*jose.JSONWebKey, error) {
	return &jose.JSONWebKey{Key: []byte("short"), KeyID: "k", Algorithm: "HS256"}, nil
}

func (badKeys) VerificationKeys(context.Context) (*jose.JSONWebKeySet, error) {
	return &jose.JSONWebKeySet{}, nil
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestTokenHandlerWithOAuth2Client drives the handler with
// golang.org/x/oauth2/clientcredentials, a real client, over HTTP, with
// both of its ways to send credentials and a secret that needs escaping.
func TestTokenHandlerWithOAuth2Client(t *testing.T) {
	f := newFixture(t)
	srv := httptest.NewServer(f.handler)
	t.Cleanup(srv.Close)
	tests := []struct {
		name   string
		id     string
		secret string
		style  oauth2.AuthStyle
	}{
		{"header", "svc", f.secret, oauth2.AuthStyleInHeader},
		{"params", "svc", f.secret, oauth2.AuthStyleInParams},
		{"header, secret with + / : %", "weird:id+1", f.weirdSecret, oauth2.AuthStyleInHeader},
		{"params, secret with + / : %", "weird:id+1", f.weirdSecret, oauth2.AuthStyleInParams},
		{"auto-detect", "svc", f.secret, oauth2.AuthStyleAutoDetect},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := clientcredentials.Config{
				ClientID:       tc.id,
				ClientSecret:   tc.secret,
				TokenURL:       srv.URL + "/oauth/token",
				Scopes:         []string{"read"},
				EndpointParams: url.Values{"audience": {testAudience}},
				AuthStyle:      tc.style,
			}
			tok, err := cfg.Token(t.Context())
			require.NoError(t, err)
			assert.Equal(t, "Bearer", tok.TokenType)
			assert.NotEmpty(t, tok.AccessToken)
			assert.Empty(t, tok.RefreshToken)
			assert.Equal(t, "read", tok.Extra("scope"))
			assert.WithinDuration(t, time.Now().Add(time.Hour), tok.Expiry, time.Minute)
		})
	}
	t.Run("wrong secret surfaces invalid_client", func(t *testing.T) {
		cfg := clientcredentials.Config{ClientID: "svc", ClientSecret: "wrong", TokenURL: srv.URL, AuthStyle: oauth2.AuthStyleInHeader}
		_, err := cfg.Token(t.Context())
		var re *oauth2.RetrieveError
		require.ErrorAs(t, err, &re)
		assert.Equal(t, "invalid_client", re.ErrorCode)
		assert.Equal(t, http.StatusUnauthorized, re.Response.StatusCode)
	})
}

// TestTokenLengthBound: a client granted more scopes than fit in a token
// a Validator accepts (4096 bytes) is refused such a token with
// invalid_scope (RFC 6749 §5.2), rather than handed one that fails at
// every protected route; asking for fewer scopes gets one that works.
func TestTokenLengthBound(t *testing.T) {
	f := newFixture(t)
	var many m2mauth.Scopes
	for i := range 400 {
		many = append(many, fmt.Sprintf("scope:%04d", i))
	}
	require.NoError(t, f.store.CreateClient(t.Context(), &m2mauth.Client{
		ID: "many", Secrets: []m2mauth.Secret{{ID: "s1", Hash: mustHash(t, "many-secret")}},
		Grants: map[string]m2mauth.Scopes{testAudience: many},
	}))
	v, err := m2mauth.NewValidator(f.keys, m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: testAudience, Now: f.clock})
	require.NoError(t, err)
	tests := []struct {
		name, scope string
		status      int
	}{
		{"every scope granted", "", http.StatusBadRequest},
		{"three hundred scopes", strings.Join(many[:300], " "), http.StatusBadRequest},
		{"ten scopes", strings.Join(many[:10], " "), http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := "grant_type=client_credentials"
			if tt.scope != "" {
				body += "&scope=" + url.QueryEscape(tt.scope)
			}
			w, resp := f.do(t, request{body: body, headers: auth(basic("many", "many-secret"))})
			require.Equal(t, tt.status, w.Code, "body: %s", w.Body)
			if tt.status != http.StatusOK {
				assert.Equal(t, m2mauth.CodeInvalidScope, resp.Error)
				assert.Empty(t, resp.AccessToken)
				assert.Equal(t, m2mauth.EventScopeDenied, f.lastEvent(t).Type)
				return
			}
			_, err := v.Validate(t.Context(), resp.AccessToken)
			require.NoError(t, err)
		})
	}
}

package m2mauth_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
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

// activeBody is the RFC 7662 §2.2 answer for an active token of svc for
// testAudience with scope "read write".
func activeBody(f tokenFacts) string {
	return fmt.Sprintf(`{
		"active": true,
		"scope": "read write",
		"client_id": %q,
		"token_type": "Bearer",
		"exp": %d,
		"iat": %d,
		"nbf": %d,
		"sub": %q,
		"aud": %q,
		"iss": %q,
		"jti": %q
	}`, f.ClientID, f.EXP, f.IAT, f.IAT, f.ClientID, testAudience, testIssuer, f.JTI)
}

func TestIntrospectionHandler(t *testing.T) {
	ctx := context.Background()
	type fx = endpointFixture
	form := func(tok string) string { return "token=" + url.QueryEscape(tok) }
	introspector := func(e *fx) map[string][]string { return auth(basic("introspector", e.introSecret)) }
	tests := []struct {
		name string
		// token returns the token to introspect; default: a fresh token
		// of svc for testAudience.
		token func(t testing.TB, e *fx) string
		// setup changes the state after the token is issued.
		setup func(t testing.TB, e *fx, tok string)
		// req builds the request; default: introspector asks about tok.
		req       func(e *fx, tok string) request
		status    int
		code      string // error code, when status is not 200
		challenge bool
		active    bool
		reason    string // Reason of an inactive answer's event; default ReasonInactive
		caller    string // ClientID of the introspection event; default introspector
	}{
		{
			name:   "RFC 7662 §2.2: a valid token is active, with its claims",
			status: 200, active: true,
		},
		{
			name: "RFC 7662 §2.1: client_secret_post, and token_type_hint is only a hint",
			req: func(e *fx, tok string) request {
				return request{body: form(tok) + "&token_type_hint=refresh_token&client_id=introspector&client_secret=" + url.QueryEscape(e.introSecret)}
			},
			status: 200, active: true,
		},
		{
			name: "RFC 7662 §4: a resource server may introspect tokens for its own audience",
			req: func(e *fx, tok string) request {
				return request{body: form(tok), headers: auth(basic(testAudience, e.apiSecret))}
			},
			status: 200, active: true, caller: testAudience,
		},
		{
			name:   "RFC 7662 §2.2: an expired token is inactive",
			setup:  func(_ testing.TB, e *fx, _ string) { e.advance(2 * time.Hour) },
			status: 200,
		},
		{
			name:   "RFC 7662 §2.2: a token is inactive from its exp on, without leeway (RFC 7519 §4.1.4)",
			setup:  func(_ testing.TB, e *fx, _ string) { e.advance(time.Hour) },
			status: 200,
		},
		{
			name: "RFC 7662 §2.2: a revoked token is inactive (RFC 7009)",
			setup: func(t testing.TB, e *fx, tok string) {
				f := factsOf(t, tok)
				require.NoError(t, e.store.RevokeToken(ctx, f.ClientID, f.JTI, time.Unix(f.EXP, 0)))
			},
			status: 200,
		},
		{
			name: "a token revoked by its client's watermark is inactive",
			setup: func(t testing.TB, e *fx, _ string) {
				require.NoError(t, e.store.RevokeClientTokens(ctx, "svc"))
			},
			status: 200,
		},
		{
			name: "a token revoked by the store-wide watermark is inactive",
			setup: func(t testing.TB, e *fx, _ string) {
				require.NoError(t, e.store.RevokeAllTokens(ctx))
			},
			status: 200,
		},
		{
			name: "a token of a disabled client is inactive",
			setup: func(t testing.TB, e *fx, _ string) {
				require.NoError(t, e.store.SetDisabled(ctx, "svc", true))
			},
			status: 200,
		},
		{
			name: "a token of a client disabled then enabled again stays inactive",
			setup: func(t testing.TB, e *fx, _ string) {
				require.NoError(t, e.store.SetDisabled(ctx, "svc", true))
				require.NoError(t, e.store.SetDisabled(ctx, "svc", false))
			},
			status: 200,
		},
		{
			name: "a token of a deleted client is inactive",
			setup: func(t testing.TB, e *fx, _ string) {
				require.NoError(t, e.store.DeleteClient(ctx, "svc"))
			},
			status: 200,
		},
		{
			name: "RFC 7662 §2.2: a token of another issuer is inactive",
			token: func(t testing.TB, e *fx) string {
				other, err := m2mauth.NewTokenHandler(e.store, e.keys, m2mauth.TokenHandlerConfig{Issuer: "https://evil.example.com", DefaultAudience: testAudience, Logger: discardLogger()})
				require.NoError(t, err)
				w := send(t, other, request{body: "grant_type=client_credentials", headers: auth(basic("svc", e.secret))})
				require.Equal(t, http.StatusOK, w.Code)
				var resp tokenResponse
				require.NoError(t, json.Unmarshal(w.Body.Bytes(), &resp))
				return resp.AccessToken
			},
			status: 200,
		},
		{
			name:   "RFC 7662 §2.2: garbage is inactive",
			token:  func(testing.TB, *fx) string { return "garbage" },
			status: 200,
		},
		{
			name: "RFC 7662 §2.2: a forged signature is inactive",
			token: func(t testing.TB, e *fx) string {
				tok := e.issue(t, "svc", e.secret)
				return tok[:len(tok)-4] + "AAAA"
			},
			status: 200,
		},
		{
			// An error here would tell the caller that the token is
			// genuine, where a forged one is inactive.
			name: "RFC 7662 §2.2: a valid token the caller may not introspect (another audience) is inactive to it",
			req: func(e *fx, tok string) request {
				return request{body: form(tok), headers: auth(basic("svc", e.secret))}
			},
			status: 200, caller: "svc", reason: m2mauth.ReasonNotAllowed,
		},
		{
			name: "RFC 7662 §2.2: a revoked token the caller may not introspect is inactive to it",
			setup: func(t testing.TB, e *fx, tok string) {
				f := factsOf(t, tok)
				require.NoError(t, e.store.RevokeToken(ctx, f.ClientID, f.JTI, time.Unix(f.EXP, 0)))
			},
			req: func(e *fx, tok string) request {
				return request{body: form(tok), headers: auth(basic("svc", e.secret))}
			},
			status: 200, caller: "svc", reason: m2mauth.ReasonNotAllowed,
		},
		{
			name:  "RFC 7662 §2.2: an invalid token is inactive for any caller",
			token: func(testing.TB, *fx) string { return "garbage" },
			req: func(e *fx, tok string) request {
				return request{body: form(tok), headers: auth(basic("svc", e.secret))}
			},
			status: 200, caller: "svc",
		},
		{
			name: "RFC 7662 §2.1: wrong caller credentials: 401 invalid_client",
			req: func(e *fx, tok string) request {
				return request{body: form(tok), headers: auth(basic("introspector", "wrong"))}
			},
			status: 401, code: "invalid_client", challenge: true,
		},
		{
			name:   "RFC 7662 §2.1: no caller credentials: 401 invalid_client",
			req:    func(_ *fx, tok string) request { return request{body: form(tok)} },
			status: 401, code: "invalid_client", challenge: true,
		},
		{
			name: "RFC 7662 §2.1: a bearer token is not client authentication here",
			req: func(_ *fx, tok string) request {
				return request{body: form(tok), headers: auth("Bearer " + tok)}
			},
			status: 401, code: "invalid_client", challenge: true,
		},
		{
			name: "RFC 7662 §2.1: missing token: 400 invalid_request",
			req: func(e *fx, _ string) request {
				return request{body: "token_type_hint=access_token", headers: introspector(e)}
			},
			status: 400, code: "invalid_request",
		},
		{
			name: "RFC 7662 §2.1: repeated token: 400 invalid_request",
			req: func(e *fx, tok string) request {
				return request{body: form(tok) + "&" + form(tok), headers: introspector(e)}
			},
			status: 400, code: "invalid_request",
		},
		{
			name: "RFC 6749 §3.1: an empty token beside a token is omitted",
			req: func(e *fx, tok string) request {
				return request{body: "token=&" + form(tok) + "&token_type_hint=", headers: introspector(e)}
			},
			status: 200, active: true,
		},
		{
			name: "RFC 7662 §2.1: GET is 405",
			req: func(e *fx, tok string) request {
				return request{method: http.MethodGet, target: "/oauth/introspect?" + form(tok), contentType: "-", headers: introspector(e)}
			},
			status: 405, code: "invalid_request",
		},
		{
			name: "RFC 7662 §4: plain HTTP from another machine is refused",
			req: func(e *fx, tok string) request {
				return request{target: "http://m2mauth.test/oauth/introspect", body: form(tok), headers: introspector(e)}
			},
			status: 400, code: "invalid_request",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEndpointFixture(t, nil)
			var tok string
			if tc.token != nil {
				tok = tc.token(t, e)
			} else {
				tok = e.issue(t, "svc", e.secret)
			}
			if tc.setup != nil {
				tc.setup(t, e, tok)
			}
			rq := request{body: form(tok), headers: introspector(e)}
			if tc.req != nil {
				rq = tc.req(e, tok)
			}
			w := send(t, e.introspect, rq)
			assert.Equal(t, tc.status, w.Code, "body: %s", w.Body)
			// RFC 7662 §2.2 (and RFC 6749 §5.1 for errors).
			assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
			assert.Equal(t, "no-store", w.Header().Get("Cache-Control"))
			assert.Equal(t, "no-cache", w.Header().Get("Pragma"))
			if tc.challenge {
				assert.Equal(t, `Basic realm="m2mauth"`, w.Header().Get("WWW-Authenticate"))
			} else {
				assert.Empty(t, w.Header().Get("WWW-Authenticate"))
			}
			ev := e.lastEvent(t)
			if tc.code != "" {
				assert.Equal(t, tc.code, errorOf(t, w).Error)
				assert.NotEqual(t, m2mauth.EventTokenIntrospected, ev.Type)
				return
			}
			caller := tc.caller
			if caller == "" {
				caller = "introspector"
			}
			assert.Equal(t, m2mauth.EventTokenIntrospected, ev.Type)
			assert.Equal(t, caller, ev.ClientID)
			assert.Equal(t, "192.0.2.1", ev.RemoteIP)
			if tc.active {
				assert.JSONEq(t, activeBody(factsOf(t, tok)), w.Body.String())
				assert.Equal(t, m2mauth.ReasonActive, ev.Reason)
				assert.Equal(t, factsOf(t, tok).JTI, ev.JTI)
			} else {
				assert.JSONEq(t, `{"active":false}`, w.Body.String())
				reason := tc.reason
				if reason == "" {
					reason = m2mauth.ReasonInactive
				}
				assert.Equal(t, reason, ev.Reason)
			}
			e.assertNoTokenOrSecret(t, tok)
		})
	}
}

// TestIntrospectionWithoutScope checks that a token without a scope
// claim is answered without "scope", which is optional (RFC 7662 §2.2).
func TestIntrospectionWithoutScope(t *testing.T) {
	e := newEndpointFixture(t, nil)
	require.NoError(t, e.store.CreateClient(context.Background(), &m2mauth.Client{
		ID: "noscope", Secrets: []m2mauth.Secret{{ID: "s", Hash: mustHash(t, "noscope-secret-1234567890")}},
		Grants: map[string]m2mauth.Scopes{testAudience: {}},
	}))
	tok := e.issue(t, "noscope", "noscope-secret-1234567890")
	w := send(t, e.introspect, request{body: "token=" + tok, headers: auth(basic("introspector", e.introSecret))})
	require.Equal(t, http.StatusOK, w.Code, "body: %s", w.Body)
	f := factsOf(t, tok)
	assert.JSONEq(t, fmt.Sprintf(`{"active":true,"client_id":"noscope","token_type":"Bearer","exp":%d,"iat":%d,"nbf":%d,"sub":"noscope","aud":%q,"iss":%q,"jti":%q}`,
		f.EXP, f.IAT, f.IAT, testAudience, testIssuer, f.JTI), w.Body.String())
}

// TestIntrospectionWithoutRevocationSource checks what an introspection
// endpoint without IntrospectionConfig.Revocations sees: its client
// store, so watermarks and disabled clients, but not the deny-list.
func TestIntrospectionWithoutRevocationSource(t *testing.T) {
	ctx := context.Background()
	e := newEndpointFixture(t, &m2mauth.IntrospectionConfig{})
	ask := func(tok string) string {
		w := send(t, e.introspect, request{body: "token=" + tok, headers: auth(basic("introspector", e.introSecret))})
		require.Equal(t, http.StatusOK, w.Code, "body: %s", w.Body)
		return w.Body.String()
	}
	one := e.issue(t, "svc", e.secret)
	f := factsOf(t, one)
	require.NoError(t, e.store.RevokeToken(ctx, "svc", f.JTI, time.Unix(f.EXP, 0)))
	assert.JSONEq(t, activeBody(f), ask(one), "the deny-list is not consulted")

	require.NoError(t, e.store.RevokeClientTokens(ctx, "svc"))
	assert.JSONEq(t, `{"active":false}`, ask(one), "the client's watermark is")

	gone := e.issue(t, "rotated", e.newSecret)
	require.NoError(t, e.store.DeleteClient(ctx, "rotated"))
	assert.JSONEq(t, `{"active":false}`, ask(gone), "and whether the client exists")
}

// TestIntrospectionRateLimit checks the per-caller limit: 429 with
// Retry-After (RFC 6585 §4) once a caller's burst is spent, for that
// caller only, until its bucket refills by the handler's clock.
func TestIntrospectionRateLimit(t *testing.T) {
	e := newEndpointFixture(t, nil)
	ih, err := e.handler.IntrospectionHandler(m2mauth.IntrospectionConfig{Revocations: e.store, Rate: 0.5, Burst: 2})
	require.NoError(t, err)
	tok := e.issue(t, "svc", e.secret)
	retry := "2" // seconds to earn a request
	ask := func(id, secret string) int {
		w := send(t, ih, request{body: "token=" + tok, headers: auth(basic(id, secret))})
		if w.Code == http.StatusTooManyRequests {
			assert.Equal(t, retry, w.Header().Get("Retry-After"))
			assert.Equal(t, "temporarily_unavailable", errorOf(t, w).Error)
		}
		return w.Code
	}
	assert.Equal(t, 200, ask("introspector", e.introSecret))
	assert.Equal(t, 200, ask("introspector", e.introSecret))
	assert.Equal(t, 429, ask("introspector", e.introSecret))
	ev := e.lastEvent(t)
	assert.Equal(t, m2mauth.EventRateLimited, ev.Type)
	assert.Equal(t, "introspector", ev.ClientID)
	assert.Equal(t, 200, ask(testAudience, e.apiSecret), "another caller has its own bucket")

	e.advance(time.Second)
	retry = "1"
	assert.Equal(t, 429, ask("introspector", e.introSecret), "half a request earned")
	e.advance(time.Second)
	assert.Equal(t, 200, ask("introspector", e.introSecret))
	retry = "2"
	assert.Equal(t, 429, ask("introspector", e.introSecret))
	e.assertNoTokenOrSecret(t, tok)
}

// TestIntrospectionRateSimultaneous: 200 introspections from one caller
// at once get exactly its burst; the rest 429 (RFC 6585 §4).
func TestIntrospectionRateSimultaneous(t *testing.T) {
	e := newEndpointFixture(t, nil)
	ih, err := e.handler.IntrospectionHandler(m2mauth.IntrospectionConfig{Revocations: e.store, Rate: 20, Burst: 40})
	require.NoError(t, err)
	tok := e.issue(t, "svc", e.secret)
	start := make(chan struct{})
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for range 200 {
		wg.Go(func() {
			<-start
			code := send(t, ih, request{body: "token=" + tok, headers: auth(basic("introspector", e.introSecret))}).Code
			mu.Lock()
			codes[code]++
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	require.Equal(t, map[int]int{200: 40, 429: 160}, codes)
}

// gateStore is a ClientStore whose lookup, once armed, waits to be let
// through.
type gateStore struct {
	m2mauth.ClientStore
	armed            atomic.Bool
	entered, release chan struct{}
}

func (s *gateStore) Client(ctx context.Context, id string) (*m2mauth.Client, error) {
	if s.armed.CompareAndSwap(true, false) {
		s.entered <- struct{}{}
		<-s.release
	}
	return s.ClientStore.Client(ctx, id)
}

// TestIntrospectionRateLateRequest: a request that arrived before others
// but reached the per-caller limit after them (it waited for its client
// lookup) takes its request at the limit's time, not its arrival's, so
// the caller's bucket does not earn the time between them twice.
func TestIntrospectionRateLateRequest(t *testing.T) {
	e := newEndpointFixture(t, nil)
	gs := &gateStore{ClientStore: e.store, entered: make(chan struct{}), release: make(chan struct{})}
	h, err := m2mauth.NewTokenHandler(gs, e.keys, m2mauth.TokenHandlerConfig{Issuer: testIssuer, DefaultAudience: testAudience, Now: e.clock})
	require.NoError(t, err)
	ih, err := h.IntrospectionHandler(m2mauth.IntrospectionConfig{Revocations: e.store, Rate: 20, Burst: 40})
	require.NoError(t, err)
	tok := e.issue(t, "svc", e.secret)
	ask := func() int {
		return send(t, ih, request{body: "token=" + tok, headers: auth(basic("introspector", e.introSecret))}).Code
	}
	count := func(n int) map[int]int {
		codes := map[int]int{}
		for range n {
			codes[ask()]++
		}
		return codes
	}
	require.Equal(t, map[int]int{200: 40}, count(40), "the burst")
	gs.armed.Store(true)
	late := make(chan int)
	go func() { late <- ask() }()
	<-gs.entered // it arrived; its lookup waits
	e.advance(time.Second)
	require.Equal(t, map[int]int{200: 20, 429: 1}, count(21), "a second's worth")
	close(gs.release)
	require.Equal(t, 429, <-late)
	require.Equal(t, map[int]int{429: 5}, count(5), "nothing earned twice")
	e.advance(time.Second)
	require.Equal(t, map[int]int{200: 20, 429: 1}, count(21), "the next second's worth")
}

// staleSource is a RevocationSource whose snapshot is too old.
type staleSource struct{}

func (staleSource) CurrentRevocations() (*m2mauth.Revocations, error) {
	return nil, fmt.Errorf("last refreshed an hour ago: %w", m2mauth.ErrRevocationsStale)
}

// TestIntrospectionFailsClosed checks that a token whose state cannot be
// read is never answered active: 503 with Retry-After when a store did not
// answer in time or revocations are stale, 500 when a store failed.
func TestIntrospectionFailsClosed(t *testing.T) {
	tests := []struct {
		name     string
		storeErr error // of lookups of svc, the token's client
		source   m2mauth.RevocationSource
		status   int
		code     string
	}{
		{name: "client store timeout", storeErr: context.DeadlineExceeded, status: 503, code: "temporarily_unavailable"},
		{name: "client store failure", storeErr: errors.New("connection refused"), status: 500, code: "server_error"},
		{name: "stale revocations", source: staleSource{}, status: 503, code: "temporarily_unavailable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEndpointFixture(t, nil)
			tok := e.issue(t, "svc", e.secret)
			store := storeFunc(func(ctx context.Context, id string) (*m2mauth.Client, error) {
				if id == "svc" && tc.storeErr != nil {
					return nil, tc.storeErr
				}
				return e.store.Client(ctx, id)
			})
			h, err := m2mauth.NewTokenHandler(store, e.keys, m2mauth.TokenHandlerConfig{
				Issuer: testIssuer, Now: e.clock, Auditor: m2mauth.AuditorFunc(e.audit), Logger: discardLogger(),
			})
			require.NoError(t, err)
			source := tc.source
			if source == nil {
				source = e.store
			}
			ih, err := h.IntrospectionHandler(m2mauth.IntrospectionConfig{Revocations: source})
			require.NoError(t, err)
			w := send(t, ih, request{body: "token=" + tok, headers: auth(basic("introspector", e.introSecret))})
			assert.Equal(t, tc.status, w.Code, "body: %s", w.Body)
			assert.Equal(t, tc.code, errorOf(t, w).Error)
			assert.NotContains(t, w.Body.String(), "active")
			if tc.status == http.StatusServiceUnavailable {
				assert.NotEmpty(t, w.Header().Get("Retry-After"))
			}
			assert.Equal(t, m2mauth.EventRequestRejected, e.lastEvent(t).Type)
		})
	}
}

func TestIntrospectionHandlerValidates(t *testing.T) {
	f := newFixture(t)
	for _, cfg := range []m2mauth.IntrospectionConfig{
		{Rate: -1},
		{Rate: math.NaN()},
		{Rate: math.Inf(1)},
		{Burst: -1},
	} {
		_, err := f.handler.IntrospectionHandler(cfg)
		assert.Error(t, err, "%+v", cfg)
	}
	_, err := f.handler.IntrospectionHandler(m2mauth.IntrospectionConfig{})
	assert.NoError(t, err, "the zero value works")
}

// BenchmarkIntrospectionHandler measures one introspection of an active
// token through the handler, in process: authentication of the caller,
// verification (from the validator's cache after the first), revocations
// and one lookup of the token's client.
func BenchmarkIntrospectionHandler(b *testing.B) {
	e := newEndpointFixture(b, nil, func(c *m2mauth.TokenHandlerConfig) {
		c.Auditor = m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {})
	})
	ih, err := e.handler.IntrospectionHandler(m2mauth.IntrospectionConfig{Revocations: e.store, Rate: 1e9, Burst: 1 << 30})
	require.NoError(b, err)
	body := "token=" + e.issue(b, "svc", e.secret)
	authz := basic("introspector", e.introSecret)
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/introspect", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Authorization", authz)
		w := httptest.NewRecorder()
		ih.ServeHTTP(w, r)
		if w.Code != http.StatusOK {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}

// TestIntrospectionNotYetValid: a token is active from its nbf, less the
// validator's default leeway of 30s (RFC 7519 §4.1.5), by the clock of
// the introspecting server: a replica whose clock lags the issuer's by
// less still answers a fresh token active; one lagging by more answers
// it inactive (RFC 7662 §2.2: not yet "within its given time window of
// validity").
func TestIntrospectionNotYetValid(t *testing.T) {
	tests := []struct {
		name   string
		lag    time.Duration // how far the introspecting clock lags the issuing one
		active bool
	}{
		{name: "same clock", lag: 0, active: true},
		{name: "nbf 1s ahead", lag: time.Second, active: true},
		{name: "nbf 30s ahead", lag: 30 * time.Second, active: true},
		{name: "nbf 31s ahead", lag: 31 * time.Second, active: false},
		{name: "nbf 2m ahead", lag: 2 * time.Minute, active: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEndpointFixture(t, nil)
			tok := e.issue(t, "svc", e.secret)
			e.advance(-tc.lag)
			w := send(t, e.introspect, request{body: "token=" + url.QueryEscape(tok), headers: auth(basic("introspector", e.introSecret))})
			require.Equal(t, http.StatusOK, w.Code, "body: %s", w.Body)
			if tc.active {
				assert.JSONEq(t, activeBody(factsOf(t, tok)), w.Body.String())
			} else {
				assert.JSONEq(t, `{"active":false}`, w.Body.String())
			}
		})
	}
}

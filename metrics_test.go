package m2mauth_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

// newTestMetrics returns metrics recorded by an SDK meter provider with a
// manual reader, and the reader.
func newTestMetrics(t testing.TB, cfg m2mauth.MetricsConfig) (*m2mauth.Metrics, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { provider.Shutdown(context.Background()) })
	m, err := m2mauth.NewMetrics(provider.Meter("github.com/m2mauth/m2mauth"), cfg)
	require.NoError(t, err)
	return m, reader
}

// point is one collected data point: a sum's value, or a histogram's
// count and sum.
type point struct {
	value int64
	sum   float64
}

// collected is what a reader collected: metric name -> encoded attribute
// set ("k=v,k=v", sorted; "" for none) -> point.
type collected map[string]map[string]point

// collect collects the reader's data, checking each metric's unit and
// that every attribute of every point is one its metric documents.
func collect(t testing.TB, reader *sdkmetric.ManualReader) collected {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	out := collected{}
	for _, sm := range rm.ScopeMetrics {
		for _, md := range sm.Metrics {
			spec, ok := instrumentSpecs[md.Name]
			require.True(t, ok, "undocumented instrument %s", md.Name)
			assert.Equal(t, spec.unit, md.Unit, md.Name)
			pts := map[string]point{}
			add := func(set attribute.Set, p point) {
				for _, kv := range set.ToSlice() {
					assert.Contains(t, spec.keys, string(kv.Key), "%s has attribute %s", md.Name, kv.Key)
				}
				pts[set.Encoded(attribute.DefaultEncoder())] = p
			}
			switch d := md.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					add(dp.Attributes, point{value: dp.Value})
				}
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					add(dp.Attributes, point{value: int64(dp.Count), sum: dp.Sum})
				}
			default:
				t.Fatalf("%s: unexpected data %T", md.Name, md.Data)
			}
			out[md.Name] = pts
		}
	}
	return out
}

// values returns the values of the points of name, by attribute set.
func (c collected) values(name string) map[string]int64 {
	v := map[string]int64{}
	for k, p := range c[name] {
		v[k] = p.value
	}
	return v
}

// instrumentSpecs are the documented unit and attribute keys of each
// instrument.
var instrumentSpecs = map[string]struct {
	unit string
	keys []string
}{
	"m2mauth.tokens.issued":     {"{token}", []string{"m2mauth.client.id", "m2mauth.audience"}},
	"m2mauth.auth.failures":     {"{failure}", []string{"m2mauth.reason"}},
	"m2mauth.rate_limited":      {"{request}", nil},
	"m2mauth.token.rejections":  {"{request}", []string{"error.type"}},
	"m2mauth.validations":       {"{token}", []string{"m2mauth.validation.result"}},
	"m2mauth.request.duration":  {"s", []string{"m2mauth.endpoint", "http.response.status_code"}},
	"m2mauth.cache.hits":        {"{token}", []string{"m2mauth.validator"}},
	"m2mauth.cache.misses":      {"{token}", []string{"m2mauth.validator"}},
	"m2mauth.cache.entries":     {"{token}", []string{"m2mauth.validator"}},
	"m2mauth.rate_limiter.keys": {"{key}", []string{"m2mauth.limiter"}},
	"m2mauth.alerts":            {"{alert}", []string{"m2mauth.alert.rule", "m2mauth.alert.severity"}},
	"m2mauth.requests.canceled": {"{request}", nil},
	"m2mauth.alerts.dropped":    {"{alert}", nil},
}

const (
	metricsAudA = "https://api.example.com"
	metricsAudB = "https://reports.example.com"
	ghostClient = "ghost-client-xyz"
	metricsUA   = "metrics-test-agent/1.0"
)

// metricsServer is a token endpoint and a protected API over httptest,
// counted by one Metrics.
type metricsServer struct {
	srv                     *httptest.Server
	validator               *m2mauth.Validator
	limiter                 *m2mauth.RateLimiter
	alphaSecret, betaSecret string
	events                  atomic.Int64 // audit events passed on
}

func newMetricsServer(t *testing.T, m *m2mauth.Metrics) *metricsServer {
	t.Helper()
	ctx := context.Background()
	s := &metricsServer{}
	store := memstore.New()
	now := time.Now()
	newClient := func(id string, grants map[string]m2mauth.Scopes) string {
		plain, sec, err := m2mauth.NewSecret(now, time.Time{})
		require.NoError(t, err)
		require.NoError(t, store.CreateClient(ctx, &m2mauth.Client{ID: id, Secrets: []m2mauth.Secret{sec}, Grants: grants}))
		return plain
	}
	s.alphaSecret = newClient("alpha", map[string]m2mauth.Scopes{metricsAudA: {"read"}})
	s.betaSecret = newClient("beta", map[string]m2mauth.Scopes{metricsAudB: {"read"}})

	key, err := m2mauth.NewHS256Key("k1", benchKey)
	require.NoError(t, err)
	keys, err := m2mauth.NewStaticKeys(key)
	require.NoError(t, err)
	fixed := func() time.Time { return now } // no bucket refills during the test
	s.limiter, err = m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{ClientIPBurst: 2, Now: fixed})
	require.NoError(t, err)
	passOn := m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) { s.events.Add(1) })
	th, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer:          testIssuer,
		DefaultAudience: metricsAudA,
		Auditor:         m.Auditor(passOn),
		Limiter:         s.limiter,
		Logger:          discardLogger(),
	})
	require.NoError(t, err)
	s.validator, err = m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{
		Issuer: testIssuer, Audience: metricsAudA, Auditor: m.Auditor(nil),
	})
	require.NoError(t, err)
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux := http.NewServeMux()
	mux.Handle("POST /oauth/token", m.Handler("token", th))
	mux.Handle("GET /api/read", m.Handler("validation", s.validator.RequireScopes("read")(m.Validated(api))))
	mux.Handle("GET /api/admin", m.Handler("validation", s.validator.RequireScopes("admin")(m.Validated(api))))
	s.srv = httptest.NewServer(mux)
	t.Cleanup(s.srv.Close)
	return s
}

// token asks for a token with form parameters form and, when id is set,
// client_secret_basic; it returns the status and the access token.
func (s *metricsServer) token(t *testing.T, id, secret string, form url.Values) (int, string) {
	t.Helper()
	if form == nil {
		form = url.Values{"grant_type": {"client_credentials"}}
	}
	r, err := http.NewRequest(http.MethodPost, s.srv.URL+"/oauth/token", strings.NewReader(form.Encode()))
	require.NoError(t, err)
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("User-Agent", metricsUA)
	if id != "" {
		r.Header.Set("Authorization", basic(id, secret))
	}
	resp, err := s.srv.Client().Do(r)
	require.NoError(t, err)
	defer resp.Body.Close()
	var body tokenResponse
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	return resp.StatusCode, body.AccessToken
}

// call requests path with the bearer token tok (none when empty) and
// returns the status.
func (s *metricsServer) call(t *testing.T, path, tok string) int {
	t.Helper()
	r, err := http.NewRequest(http.MethodGet, s.srv.URL+path, nil)
	require.NoError(t, err)
	r.Header.Set("User-Agent", metricsUA)
	if tok != "" {
		r.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := s.srv.Client().Do(r)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

// TestMetricsEndToEnd drives a token endpoint and a validator over HTTP
// and checks that the collected data counts exactly what happened, with
// no address and no unknown client id among the attributes.
func TestMetricsEndToEnd(t *testing.T) {
	m, reader := newTestMetrics(t, m2mauth.MetricsConfig{})
	s := newMetricsServer(t, m)
	require.NoError(t, m.ObserveValidator("api", s.validator))
	require.NoError(t, m.ObserveRateLimiter("token", s.limiter))

	// N = 3 issued tokens.
	st, alphaTok := s.token(t, "alpha", s.alphaSecret, nil)
	require.Equal(t, http.StatusOK, st)
	st, _ = s.token(t, "alpha", s.alphaSecret, nil)
	require.Equal(t, http.StatusOK, st)
	st, betaTok := s.token(t, "beta", s.betaSecret, url.Values{"grant_type": {"client_credentials"}, "audience": {metricsAudB}})
	require.Equal(t, http.StatusOK, st)
	// Refusals after authentication.
	st, _ = s.token(t, "alpha", s.alphaSecret, url.Values{"grant_type": {"password"}})
	require.Equal(t, http.StatusBadRequest, st)
	st, _ = s.token(t, "alpha", s.alphaSecret, url.Values{"grant_type": {"client_credentials"}, "scope": {"admin"}})
	require.Equal(t, http.StatusBadRequest, st)
	// M = 4 failed authentications: 2 bad secrets, an unknown client,
	// no credentials.
	for range 2 {
		st, _ = s.token(t, "alpha", "wrong-secret", nil)
		require.Equal(t, http.StatusUnauthorized, st)
	}
	st, _ = s.token(t, ghostClient, "whatever", nil)
	require.Equal(t, http.StatusUnauthorized, st)
	st, _ = s.token(t, "", "", nil)
	require.Equal(t, http.StatusUnauthorized, st)
	// K = 2 rate limited: alpha's bucket from this address is empty,
	// whatever the secret.
	st, _ = s.token(t, "alpha", "wrong-secret", nil)
	require.Equal(t, http.StatusTooManyRequests, st)
	st, _ = s.token(t, "alpha", s.alphaSecret, nil)
	require.Equal(t, http.StatusTooManyRequests, st)

	// Validations: 2 ok (the second from the cache), a scope denied, a
	// token for another audience, a malformed token, and a request
	// without a token, which is no validation.
	require.Equal(t, http.StatusNoContent, s.call(t, "/api/read", alphaTok))
	require.Equal(t, http.StatusNoContent, s.call(t, "/api/read", alphaTok))
	require.Equal(t, http.StatusForbidden, s.call(t, "/api/admin", alphaTok))
	require.Equal(t, http.StatusUnauthorized, s.call(t, "/api/read", betaTok))
	require.Equal(t, http.StatusUnauthorized, s.call(t, "/api/read", "abc.def.ghi"))
	require.Equal(t, http.StatusUnauthorized, s.call(t, "/api/read", ""))

	got := collect(t, reader)
	cache, keys := s.validator.CacheStats(), s.limiter.Len()
	tests := []struct {
		name string
		want map[string]int64
	}{
		{"m2mauth.tokens.issued", map[string]int64{
			"m2mauth.audience=" + metricsAudA + ",m2mauth.client.id=alpha": 2,
			"m2mauth.audience=" + metricsAudB + ",m2mauth.client.id=beta":  1,
		}},
		{"m2mauth.auth.failures", map[string]int64{
			"m2mauth.reason=bad_secret":     2,
			"m2mauth.reason=unknown_client": 1,
			"m2mauth.reason=no_credentials": 1,
		}},
		{"m2mauth.rate_limited", map[string]int64{"": 2}},
		{"m2mauth.token.rejections", map[string]int64{
			"error.type=unsupported_grant_type": 1,
			"error.type=invalid_scope":          1,
		}},
		{"m2mauth.validations", map[string]int64{
			"m2mauth.validation.result=ok":             2,
			"m2mauth.validation.result=scope_denied":   1,
			"m2mauth.validation.result=wrong_audience": 1,
			"m2mauth.validation.result=malformed":      1,
		}},
		{"m2mauth.request.duration", map[string]int64{
			"http.response.status_code=200,m2mauth.endpoint=token":      3,
			"http.response.status_code=400,m2mauth.endpoint=token":      2,
			"http.response.status_code=401,m2mauth.endpoint=token":      4,
			"http.response.status_code=429,m2mauth.endpoint=token":      2,
			"http.response.status_code=204,m2mauth.endpoint=validation": 2,
			"http.response.status_code=403,m2mauth.endpoint=validation": 1,
			"http.response.status_code=401,m2mauth.endpoint=validation": 3,
		}},
		{"m2mauth.cache.hits", map[string]int64{"m2mauth.validator=api": int64(cache.Hits)}},
		{"m2mauth.cache.misses", map[string]int64{"m2mauth.validator=api": int64(cache.Misses)}},
		{"m2mauth.cache.entries", map[string]int64{"m2mauth.validator=api": int64(cache.Entries)}},
		{"m2mauth.rate_limiter.keys", map[string]int64{"m2mauth.limiter=token": int64(keys)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, got.values(tt.name))
		})
	}
	assert.EqualValues(t, 2, cache.Hits, "alpha's token came from the cache after its first use")
	assert.Positive(t, keys)
	assert.EqualValues(t, 11, s.events.Load(), "every token endpoint event passed on")
	for _, p := range got["m2mauth.request.duration"] {
		assert.Positive(t, p.sum)
	}

	t.Run("no address, agent or unknown client", func(t *testing.T) {
		for name, pts := range got {
			for attrs := range pts {
				for _, bad := range []string{"127.0.0.1", "::1", ghostClient, metricsUA, "wrong-secret"} {
					assert.NotContains(t, attrs, bad, name)
				}
				if name != "m2mauth.tokens.issued" {
					assert.NotContains(t, attrs, "client.id", name)
				}
			}
		}
	})
}

// auditAll sends events through m's auditor.
func auditAll(m *m2mauth.Metrics, events ...m2mauth.AuditEvent) {
	a := m.Auditor(nil)
	for _, e := range events {
		a.Audit(context.Background(), e)
	}
}

// issued returns n token_issued events of client for audience.
func issued(n int, client, audience string) []m2mauth.AuditEvent {
	out := make([]m2mauth.AuditEvent, n)
	for i := range out {
		out[i] = m2mauth.AuditEvent{Type: m2mauth.EventTokenIssued, ClientID: client, Audience: audience, RemoteIP: "192.0.2.7"}
	}
	return out
}

// TestMetricsClientAttributeBound checks that issued tokens are labelled
// by client up to MaxClientAttributes pairs, then by audience alone.
func TestMetricsClientAttributeBound(t *testing.T) {
	aud := func(a string) string { return "m2mauth.audience=" + a }
	pair := func(a, c string) string { return aud(a) + ",m2mauth.client.id=" + c }
	tests := []struct {
		name string
		max  int
		want map[string]int64
	}{
		{"default bound", 0, map[string]int64{
			pair(metricsAudA, "c1"): 2, pair(metricsAudA, "c2"): 1, pair(metricsAudB, "c1"): 1,
			pair(metricsAudA, "c3"): 1, pair(metricsAudB, "c4"): 3,
		}},
		{"bound of two pairs", 2, map[string]int64{
			pair(metricsAudA, "c1"): 2, pair(metricsAudA, "c2"): 1,
			aud(metricsAudB): 4, aud(metricsAudA): 1,
		}},
		{"never by client", -1, map[string]int64{aud(metricsAudA): 4, aud(metricsAudB): 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, reader := newTestMetrics(t, m2mauth.MetricsConfig{MaxClientAttributes: tt.max})
			var events []m2mauth.AuditEvent
			events = append(events, issued(1, "c1", metricsAudA)...)
			events = append(events, issued(1, "c2", metricsAudA)...)
			events = append(events, issued(1, "c1", metricsAudA)...) // known pair
			events = append(events, issued(1, "c1", metricsAudB)...) // past a bound of 2
			events = append(events, issued(1, "c3", metricsAudA)...)
			events = append(events, issued(3, "c4", metricsAudB)...)
			auditAll(m, events...)
			assert.Equal(t, tt.want, collect(t, reader).values("m2mauth.tokens.issued"))
		})
	}
}

// TestMetricsBoundedValues checks that values outside an attribute's
// documented set are counted as "other", and that events that are not
// counted are still passed on.
func TestMetricsBoundedValues(t *testing.T) {
	tests := []struct {
		name   string
		event  m2mauth.AuditEvent
		metric string
		attrs  string
	}{
		{"free-text auth failure reason", m2mauth.AuditEvent{Type: m2mauth.EventAuthFailed, ClientID: "x\x00y", Reason: "client sent 'x\x00y'"},
			"m2mauth.auth.failures", "m2mauth.reason=other"},
		{"known auth failure reason", m2mauth.AuditEvent{Type: m2mauth.EventAuthFailed, ClientID: ghostClient, Reason: m2mauth.ReasonClientDisabled},
			"m2mauth.auth.failures", "m2mauth.reason=client_disabled"},
		{"unknown rejection reason", m2mauth.AuditEvent{Type: m2mauth.EventTokenRejected, Error: "invalid_token", Reason: "new_reason"},
			"m2mauth.validations", "m2mauth.validation.result=other"},
		{"rejection without reason", m2mauth.AuditEvent{Type: m2mauth.EventTokenRejected, Error: m2mauth.CodeServerError},
			"m2mauth.validations", "m2mauth.validation.result=server_error"},
		{"malformed Authorization header", m2mauth.AuditEvent{Type: m2mauth.EventTokenRejected, Error: m2mauth.CodeInvalidRequest},
			"m2mauth.validations", "m2mauth.validation.result=invalid_request"},
		{"unknown error code", m2mauth.AuditEvent{Type: m2mauth.EventRequestRejected, Error: "made_up"},
			"m2mauth.token.rejections", "error.type=other"},
		{"audience denied", m2mauth.AuditEvent{Type: m2mauth.EventAudienceDenied, Error: m2mauth.CodeInvalidTarget},
			"m2mauth.token.rejections", "error.type=invalid_target"},
		{"overloaded", m2mauth.AuditEvent{Type: m2mauth.EventRequestRejected, Error: m2mauth.CodeTemporarilyUnavailable, Reason: m2mauth.ReasonOverloaded},
			"m2mauth.token.rejections", "error.type=temporarily_unavailable"},
		{"rate limited unknown client", m2mauth.AuditEvent{Type: m2mauth.EventRateLimited, ClientID: ghostClient, RemoteIP: "192.0.2.7"},
			"m2mauth.rate_limited", ""},
		{"client administration", m2mauth.AuditEvent{Type: m2mauth.EventClientCreated, ClientID: "c1"}, "", ""},
		{"revoked token", m2mauth.AuditEvent{Type: m2mauth.EventTokenRejected, Error: "invalid_token", Reason: m2mauth.ReasonTokenRevoked},
			"m2mauth.validations", "m2mauth.validation.result=revoked"},
		{"caller went away", m2mauth.AuditEvent{Type: m2mauth.EventRequestRejected, Error: m2mauth.CodeTemporarilyUnavailable, Reason: m2mauth.ReasonCanceled},
			"m2mauth.requests.canceled", ""},
		{"caller went away during a validation", m2mauth.AuditEvent{Type: m2mauth.EventTokenRejected, Error: m2mauth.CodeTemporarilyUnavailable, Reason: m2mauth.ReasonCanceled},
			"m2mauth.requests.canceled", ""},
		// RFC 7009 §2.2: answered 200, so not a rejection of the endpoint.
		{"revocation of another client's token", m2mauth.AuditEvent{Type: m2mauth.EventRequestRejected, ClientID: "c1", Reason: m2mauth.ReasonForeignToken}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, reader := newTestMetrics(t, m2mauth.MetricsConfig{})
			var passed []m2mauth.AuditEvent
			m.Auditor(m2mauth.AuditorFunc(func(_ context.Context, e m2mauth.AuditEvent) { passed = append(passed, e) })).
				Audit(context.Background(), tt.event)
			assert.Equal(t, []m2mauth.AuditEvent{tt.event}, passed)
			got := collect(t, reader)
			if tt.metric == "" {
				assert.Empty(t, got)
				return
			}
			assert.Equal(t, map[string]int64{tt.attrs: 1}, got.values(tt.metric))
			assert.Len(t, got, 1, "one instrument counted it")
		})
	}
}

// TestMetricsHandler checks the duration histogram: one point per
// endpoint and status, the times the clock gave, and the writer's
// status seen through however the handler answers.
func TestMetricsHandler(t *testing.T) {
	var ticks atomic.Int64
	clock := func() time.Time { // each reading 1.5ms after the last
		return time.Unix(0, 0).Add(time.Duration(ticks.Add(1)) * 1500 * time.Microsecond)
	}
	m, reader := newTestMetrics(t, m2mauth.MetricsConfig{Now: clock})
	tests := []struct {
		name  string
		h     http.HandlerFunc
		n     int
		attrs string
	}{
		{"writes a body", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }, 3,
			"http.response.status_code=200,m2mauth.endpoint=writes a body"},
		{"writes nothing", func(w http.ResponseWriter, r *http.Request) {}, 1,
			"http.response.status_code=200,m2mauth.endpoint=writes nothing"},
		{"early hints then 201", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(http.StatusCreated)
		}, 2, "http.response.status_code=201,m2mauth.endpoint=early hints then 201"},
		{"uncommon status", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) }, 2,
			"http.response.status_code=418,m2mauth.endpoint=uncommon status"},
		{"flushes through the controller", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusAccepted)
			if err := http.NewResponseController(w).Flush(); err != nil {
				panic(err)
			}
		}, 1, "http.response.status_code=202,m2mauth.endpoint=flushes through the controller"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := m.Handler(tt.name, tt.h)
			for range tt.n {
				h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
			}
		})
	}
	got := collect(t, reader)["m2mauth.request.duration"]
	require.Len(t, got, len(tests))
	for _, tt := range tests {
		p := got[tt.attrs]
		assert.EqualValues(t, tt.n, p.value, tt.name)
		assert.InDelta(t, float64(tt.n)*0.0015, p.sum, 1e-9, tt.name)
	}
	assert.Panics(t, func() { m.Handler("", http.NotFoundHandler()) })
	assert.Panics(t, func() { m.Handler("x", nil) })
}

// metricsClient returns a memstore holding client "alpha", granted
// "read" at metricsAudA, the keys to sign its tokens, and its secret.
func metricsClient(t *testing.T) (*memstore.Store, *m2mauth.StaticKeys, string) {
	t.Helper()
	store := memstore.New()
	plain, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
	require.NoError(t, err)
	require.NoError(t, store.CreateClient(t.Context(), &m2mauth.Client{
		ID: "alpha", Secrets: []m2mauth.Secret{sec}, Grants: map[string]m2mauth.Scopes{metricsAudA: {"read"}},
	}))
	key, err := m2mauth.NewHS256Key("k1", benchKey)
	require.NoError(t, err)
	keys, err := m2mauth.NewStaticKeys(key)
	require.NoError(t, err)
	return store, keys, plain
}

// TestMetricsSelfTimedEndpoints checks the durations of the endpoints
// that time themselves (token, revocation, introspection on the wall
// clock) by the status each answered with, and that a token handler on a
// clock of its own is timed from outside instead, by the metrics' clock.
func TestMetricsSelfTimedEndpoints(t *testing.T) {
	m, reader := newTestMetrics(t, m2mauth.MetricsConfig{})
	store, keys, plain := metricsClient(t)
	newHandler := func(now func() time.Time) *m2mauth.TokenHandler {
		th, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
			Issuer: testIssuer, DefaultAudience: metricsAudA, Auditor: m.Auditor(nil), Logger: discardLogger(), Now: now,
		})
		require.NoError(t, err)
		return th
	}
	th := newHandler(nil)
	revoke, err := th.RevocationHandler(store)
	require.NoError(t, err)
	introspect, err := th.IntrospectionHandler(m2mauth.IntrospectionConfig{Revocations: store})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("POST /token", m.Handler("token", th))
	mux.Handle("POST /own-clock", m.Handler("own-clock", newHandler(time.Now)))
	mux.Handle("POST /revoke", m.Handler("revocation", revoke))
	mux.Handle("POST /introspect", m.Handler("introspection", introspect))

	tests := []struct {
		path, secret, form string
		status             int
	}{
		{"/token", plain, "grant_type=client_credentials", http.StatusOK},
		{"/token", plain, "grant_type=client_credentials", http.StatusOK},
		{"/token", "wrong", "grant_type=client_credentials", http.StatusUnauthorized},
		{"/token", plain, "grant_type=password", http.StatusBadRequest},
		{"/own-clock", plain, "grant_type=client_credentials", http.StatusOK},
		{"/revoke", plain, "token=not-a-token", http.StatusOK},     // RFC 7009 §2.2
		{"/introspect", plain, "token=not-a-token", http.StatusOK}, // active: false
		{"/introspect", "wrong", "token=not-a-token", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test"+tt.path, strings.NewReader(tt.form))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Authorization", basic("alpha", tt.secret))
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, r)
		require.Equal(t, tt.status, w.Code, "%s %s: %s", tt.path, tt.form, w.Body)
	}
	got := collect(t, reader)
	assert.Equal(t, map[string]int64{
		"http.response.status_code=200,m2mauth.endpoint=token":         2,
		"http.response.status_code=401,m2mauth.endpoint=token":         1,
		"http.response.status_code=400,m2mauth.endpoint=token":         1,
		"http.response.status_code=200,m2mauth.endpoint=own-clock":     1,
		"http.response.status_code=200,m2mauth.endpoint=revocation":    1,
		"http.response.status_code=200,m2mauth.endpoint=introspection": 1,
		"http.response.status_code=401,m2mauth.endpoint=introspection": 1,
	}, got.values("m2mauth.request.duration"))
	for attrs, p := range got["m2mauth.request.duration"] {
		assert.Positive(t, p.sum, attrs)
		assert.Less(t, p.sum, 10.0, attrs)
	}
}

// TestMetricsWatermarkWait: a token request that waits for its client's
// revocation watermark's second to pass (see m2mauth.Revocations) is
// timed with the wait.
func TestMetricsWatermarkWait(t *testing.T) {
	ctx := context.Background()
	m, reader := newTestMetrics(t, m2mauth.MetricsConfig{})
	store, keys, plain := metricsClient(t)
	th, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer: testIssuer, DefaultAudience: metricsAudA, Auditor: m.Auditor(nil), Logger: discardLogger(),
	})
	require.NoError(t, err)
	h := m.Handler("token", th)

	// Just after a second begins, the wait is most of a second.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second + 10*time.Millisecond)))
	require.NoError(t, store.RevokeClientTokens(ctx, "alpha"))
	r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/token", strings.NewReader("grant_type=client_credentials"))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Authorization", basic("alpha", plain))
	w := httptest.NewRecorder()
	start := time.Now()
	h.ServeHTTP(w, r)
	elapsed := time.Since(start)
	require.Equal(t, http.StatusOK, w.Code, "%s", w.Body)

	got := collect(t, reader)["m2mauth.request.duration"]
	p, ok := got["http.response.status_code=200,m2mauth.endpoint=token"]
	require.True(t, ok, "%v", got)
	assert.Equal(t, int64(1), p.value, "count")
	assert.GreaterOrEqual(t, p.sum, (elapsed - 100*time.Millisecond).Seconds(), "recorded against %v measured", elapsed)
}

// TestMetricsValidated checks that only requests carrying a validator's
// claims count as accepted tokens.
func TestMetricsValidated(t *testing.T) {
	m, reader := newTestMetrics(t, m2mauth.MetricsConfig{})
	reached := 0
	h := m.Validated(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached++ }))
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	h.ServeHTTP(httptest.NewRecorder(), r) // no claims: misplaced, not counted
	h.ServeHTTP(httptest.NewRecorder(), r.WithContext(m2mauth.ContextWithClaims(r.Context(), &m2mauth.Claims{ClientID: "c1"})))
	assert.Equal(t, 2, reached)
	assert.Equal(t, map[string]int64{"m2mauth.validation.result=ok": 1}, collect(t, reader).values("m2mauth.validations"))
}

// TestMetricsAlertSink checks that fired alerts are counted by rule and
// severity, recoveries are not, every alert is passed on, and rule names
// are bounded.
func TestMetricsAlertSink(t *testing.T) {
	m, reader := newTestMetrics(t, m2mauth.MetricsConfig{})
	var mu sync.Mutex
	var passed []m2mauth.Alert
	sink := m.AlertSink(m2mauth.AlertSinkFunc(func(_ context.Context, a m2mauth.Alert) {
		mu.Lock()
		passed = append(passed, a)
		mu.Unlock()
	}))
	alerts := []m2mauth.Alert{
		{Rule: "client_failures", Severity: m2mauth.AlertCritical, ClientID: ghostClient, Address: "192.0.2.7"},
		{Rule: "client_failures", Severity: m2mauth.AlertCritical, ClientID: "alpha"},
		{Rule: "client_failures", Severity: m2mauth.AlertCritical, Recovered: true},
		{Rule: "new_address", Severity: m2mauth.AlertWarning, Address: "192.0.2.8"},
		{Rule: "custom", Severity: "page-someone"},
	}
	for i := range 150 { // past the bound of rule names
		alerts = append(alerts, m2mauth.Alert{Rule: fmt.Sprintf("rule-%03d", i), Severity: m2mauth.AlertWarning})
	}
	for _, a := range alerts {
		sink.Send(context.Background(), a)
	}
	assert.Len(t, passed, len(alerts))
	got := collect(t, reader).values("m2mauth.alerts")
	key := func(rule, sev string) string { return "m2mauth.alert.rule=" + rule + ",m2mauth.alert.severity=" + sev }
	assert.EqualValues(t, 2, got[key("client_failures", "critical")])
	assert.EqualValues(t, 1, got[key("new_address", "warning")])
	assert.EqualValues(t, 1, got[key("custom", "other")])
	var total int64
	for k, v := range got {
		total += v
		assert.NotContains(t, k, "192.0.2")
	}
	assert.EqualValues(t, len(alerts)-1, total, "every fired alert counted once")
	assert.LessOrEqual(t, len(got), 100+3, "rule names bounded, plus one other per severity")
	assert.Positive(t, got[key("other", "warning")])
}

// TestMetricsObserveErrors checks the registration of observed objects.
func TestMetricsObserveErrors(t *testing.T) {
	key, err := m2mauth.NewHS256Key("k1", benchKey)
	require.NoError(t, err)
	keys, err := m2mauth.NewStaticKeys(key)
	require.NoError(t, err)
	v, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: metricsAudA})
	require.NoError(t, err)
	l, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{})
	require.NoError(t, err)

	for _, tt := range []struct {
		name string
		m    func(t *testing.T) *m2mauth.Metrics
	}{
		{"sdk", func(t *testing.T) *m2mauth.Metrics { m, _ := newTestMetrics(t, m2mauth.MetricsConfig{}); return m }},
		{"off", func(t *testing.T) *m2mauth.Metrics {
			m, err := m2mauth.NewMetrics(nil, m2mauth.MetricsConfig{})
			require.NoError(t, err)
			return m
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.m(t)
			assert.Error(t, m.ObserveValidator("api", nil))
			assert.Error(t, m.ObserveRateLimiter("token", nil))
			require.NoError(t, m.ObserveValidator("api", v))
			require.NoError(t, m.ObserveValidator("", v))
			assert.ErrorContains(t, m.ObserveValidator("api", v), "already observed")
			require.NoError(t, m.ObserveRateLimiter("api", l), "names are per kind")
			assert.Error(t, m.ObserveRateLimiter("api", l))
		})
	}
}

// TestMetricsObserveDetector: the alerts a detector's queue had no room
// for are reported as m2mauth.alerts.dropped, exactly Detector.Dropped.
func TestMetricsObserveDetector(t *testing.T) {
	m, reader := newTestMetrics(t, m2mauth.MetricsConfig{})
	release := make(chan struct{})
	sink := m2mauth.AlertSinkFunc(func(context.Context, m2mauth.Alert) { <-release })
	d, err := m2mauth.NewDetector(nil, sink, m2mauth.DetectorConfig{QueueSize: 4})
	require.NoError(t, err)
	defer func() { close(release); d.Close() }()
	assert.Error(t, m.ObserveDetector(nil))
	require.NoError(t, m.ObserveDetector(d))
	assert.ErrorContains(t, m.ObserveDetector(d), "already observed")
	assert.Equal(t, map[string]int64{"": 0}, collect(t, reader).values("m2mauth.alerts.dropped"))

	// The sink holds the first lockout alert; the queue takes two more
	// of the rule (half of it); the rest are dropped.
	for i := range 10 {
		d.Audit(t.Context(), m2mauth.AuditEvent{Type: m2mauth.EventRateLimited, ClientID: fmt.Sprintf("c%d", i)})
	}
	dropped := d.Dropped()
	require.GreaterOrEqual(t, dropped, uint64(7))
	assert.Equal(t, map[string]int64{"": int64(dropped)}, collect(t, reader).values("m2mauth.alerts.dropped"))
}

// TestMetricsOff checks that without a meter (or with a no-op one) every
// wrapper hands back what it wraps.
func TestMetricsOff(t *testing.T) {
	for _, tt := range []struct {
		name  string
		meter func() *m2mauth.Metrics
	}{
		{"nil meter", func() *m2mauth.Metrics { m, _ := m2mauth.NewMetrics(nil, m2mauth.MetricsConfig{}); return m }},
		{"no-op meter", func() *m2mauth.Metrics {
			m, _ := m2mauth.NewMetrics(noop.NewMeterProvider().Meter("x"), m2mauth.MetricsConfig{})
			return m
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.meter()
			require.NotNil(t, m)
			h := http.NewServeMux()
			assert.Same(t, h, m.Handler("token", h))
			assert.Same(t, h, m.Validated(h))
			n := 0
			a := m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) { n++ })
			m.Auditor(a).Audit(context.Background(), m2mauth.AuditEvent{Type: m2mauth.EventTokenIssued})
			m.Auditor(nil).Audit(context.Background(), m2mauth.AuditEvent{Type: m2mauth.EventTokenIssued})
			m.AlertSink(nil).Send(context.Background(), m2mauth.Alert{})
			assert.Equal(t, 1, n)
		})
	}
}

// metricsBenchHandler is benchTokenHandler's handler over HS256, counted
// by m when it is not nil.
func metricsBenchHandler(b *testing.B, m *m2mauth.Metrics) (http.Handler, string) {
	return observedBenchHandler(b, m, nil, nil, m != nil)
}

// observedBenchHandler is benchTokenHandler's handler over HS256 whose
// events pass through m's counters when m is not nil and then through a
// Detector when d is not nil, as a host that watches its token endpoint
// wires them, and whose requests m times when timed.
func observedBenchHandler(b *testing.B, m *m2mauth.Metrics, d *m2mauth.Detector, auditor m2mauth.Auditor, timed bool) (http.Handler, string) {
	b.Helper()
	store := memstore.New()
	plain, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
	require.NoError(b, err)
	require.NoError(b, store.CreateClient(context.Background(), &m2mauth.Client{
		ID:      "bench-client",
		Secrets: []m2mauth.Secret{sec},
		Grants:  map[string]m2mauth.Scopes{benchAudience: {"read", "write"}},
	}))
	keys, err := m2mauth.NewStaticKeys(benchSigningKey(b, jose.HS256))
	require.NoError(b, err)
	if auditor == nil {
		auditor = m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {})
	}
	if d != nil {
		auditor = d // which passes events to its own next auditor
	}
	if m != nil {
		auditor = m.Auditor(auditor)
	}
	h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer: benchIssuer, DefaultAudience: benchAudience, Auditor: auditor,
	})
	require.NoError(b, err)
	var out http.Handler = h
	if timed {
		out = m.Handler("token", h)
	}
	return out, "Basic " + base64.StdEncoding.EncodeToString([]byte("bench-client:"+plain))
}

// BenchmarkTokenHandlerMetrics measures an HS256 token request without
// metrics, and with them counted and timed by an SDK with a manual
// reader (what an exporter would collect), in the same run.
func BenchmarkTokenHandlerMetrics(b *testing.B) {
	b.Run("off", func(b *testing.B) {
		h, auth := metricsBenchHandler(b, nil)
		runTokenBench(b, h, auth)
	})
	b.Run("on", func(b *testing.B) {
		m, reader := newTestMetrics(b, m2mauth.MetricsConfig{})
		h, auth := metricsBenchHandler(b, m)
		runTokenBench(b, h, auth)
		b.StopTimer()
		got := collect(b, reader).values("m2mauth.tokens.issued")
		require.Len(b, got, 1)
	})
	// Off and on alternating request by request, each timed on its own,
	// so that a machine whose load changes slows both alike; reports the
	// median time of an iteration on each side (robust to the GC pauses
	// and preemptions that land on either) and how much slower "on" is.
	b.Run("paired", func(b *testing.B) {
		off, auth := metricsBenchHandler(b, nil)
		m, _ := newTestMetrics(b, m2mauth.MetricsConfig{})
		on, onAuth := metricsBenchHandler(b, m)
		pairedTokenBench(b, off, auth, on, onAuth)
	})
	// The metrics' own share of "on": a token request's counting and
	// timing around a handler that does nothing else.
	b.Run("overhead", func(b *testing.B) {
		m, _ := newTestMetrics(b, m2mauth.MetricsConfig{})
		a := m.Auditor(m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {}))
		ev := m2mauth.AuditEvent{Type: m2mauth.EventTokenIssued, ClientID: "bench-client", Audience: benchAudience}
		h := m.Handler("token", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			a.Audit(r.Context(), ev)
		}))
		r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", nil)
		w := httptest.NewRecorder()
		b.ReportAllocs()
		for b.Loop() {
			h.ServeHTTP(w, r)
		}
	})
}

// pairedTokenBench serves token requests to off and on alternately, in
// process, as runTokenBench does; see pairedBench.
func pairedTokenBench(b *testing.B, off http.Handler, offAuth string, on http.Handler, onAuth string) {
	serve := func(h http.Handler, auth string) func() time.Duration {
		return func() time.Duration {
			// What one iteration of runTokenBench does.
			start := time.Now()
			r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader(benchBody))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			r.Header.Set("Authorization", auth)
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			d := time.Since(start)
			if w.Code != http.StatusOK {
				b.Fatalf("status %d: %s", w.Code, w.Body)
			}
			return d
		}
	}
	pairedBench(b, serve(off, offAuth), serve(on, onAuth))
}

// pairedLoopbackBench serves token requests to off and on alternately,
// each from its own server on the loopback interface to its own
// keep-alive client, as a service asking for a token sees them; see
// pairedBench.
func pairedLoopbackBench(b *testing.B, off http.Handler, offAuth string, on http.Handler, onAuth string) {
	serve := func(h http.Handler, auth string) func() time.Duration {
		srv := httptest.NewServer(h)
		b.Cleanup(srv.Close)
		client := srv.Client()
		return func() time.Duration {
			start := time.Now()
			r, err := http.NewRequest(http.MethodPost, srv.URL+"/oauth/token", strings.NewReader(benchBody))
			require.NoError(b, err)
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			r.Header.Set("Authorization", auth)
			resp, err := client.Do(r)
			require.NoError(b, err)
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			d := time.Since(start)
			require.NoError(b, err)
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("status %d", resp.StatusCode)
			}
			return d
		}
	}
	pairedBench(b, serve(off, offAuth), serve(on, onAuth))
}

// pairedBench runs off and on alternately, each timed on its own, so
// that a machine whose load changes slows both alike; it reports the
// median time of a request on each side (robust to the GC pauses and
// preemptions that land on either) and how much slower "on" is.
func pairedBench(b *testing.B, off, on func() time.Duration) {
	var offTimes, onTimes []time.Duration
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 { // neither side always goes first
			offTimes = append(offTimes, off())
			onTimes = append(onTimes, on())
		} else {
			onTimes = append(onTimes, on())
			offTimes = append(offTimes, off())
		}
	}
	median := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2].Nanoseconds())
	}
	offMed, onMed := median(offTimes), median(onTimes)
	b.ReportMetric(offMed, "off-ns/req")
	b.ReportMetric(onMed, "on-ns/req")
	b.ReportMetric(100*(onMed/offMed-1), "%slower")
}

// BenchmarkTokenHandlerObserved measures an HS256 token request bare and
// with what watches it on, in the same run, alternating request by
// request: metrics (counters on the audit events, and the request timed
// into the duration histogram, an SDK with a manual reader collecting
// them) and a Detector with every rule.
//
// "bare" has everything on and records the audit events nowhere, the
// cheapest request there is; "default" records them with the default
// auditor, the JSON slog one (to io.Discard), as a host that configures
// no auditor does. "untimed" is "bare" without the duration histogram;
// "counters", "detector" and "durations" each have one of the three on,
// over the bare request, to tell their shares apart.
// "loopback" is "bare" served over HTTP on the loopback interface to a
// keep-alive client, as a service asking for a token sees it.
func BenchmarkTokenHandlerObserved(b *testing.B) {
	bare := func() m2mauth.Auditor { return nil }
	for _, bc := range []struct {
		name                      string
		auditor                   func() m2mauth.Auditor
		counters, detector, timed bool
		loopback                  bool
	}{
		{"bare", bare, true, true, true, false},
		{"default", func() m2mauth.Auditor {
			return m2mauth.NewSlogAuditor(slog.New(slog.NewJSONHandler(io.Discard, nil)))
		}, true, true, true, false},
		{"untimed", bare, true, true, false, false},
		{"counters", bare, true, false, false, false},
		{"detector", bare, false, true, false, false},
		{"durations", bare, false, false, true, false},
		{"loopback", bare, true, true, true, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			off, auth := observedBenchHandler(b, nil, nil, bc.auditor(), false)
			m, _ := newTestMetrics(b, m2mauth.MetricsConfig{})
			var d *m2mauth.Detector
			if bc.detector {
				var err error
				d, err = m2mauth.NewDetector(bc.auditor(), m.AlertSink(nil), m2mauth.DetectorConfig{})
				require.NoError(b, err)
				b.Cleanup(func() { d.Close() })
			}
			counted := m
			if !bc.counters {
				counted = nil
			}
			var auditor m2mauth.Auditor
			if d == nil {
				auditor = bc.auditor()
			}
			on, onAuth := observedBenchHandler(b, counted, d, auditor, false)
			if bc.timed {
				on = m.Handler("token", on)
			}
			if bc.loopback {
				pairedLoopbackBench(b, off, auth, on, onAuth)
				return
			}
			pairedTokenBench(b, off, auth, on, onAuth)
		})
	}
}

// ExampleMetrics counts an issued token. A host would hand NewMetrics a
// meter from its own provider, exported to Prometheus or over OTLP; the
// manual reader here stands in for the exporter.
func ExampleMetrics() {
	ctx := context.Background()
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(ctx)
	metrics, err := m2mauth.NewMetrics(provider.Meter("github.com/m2mauth/m2mauth"), m2mauth.MetricsConfig{})
	if err != nil {
		log.Fatal(err)
	}

	key, err := m2mauth.NewHS256Key("2026-11", []byte("use-32-or-more-random-bytes-here"))
	if err != nil {
		log.Fatal(err)
	}
	keys, err := m2mauth.NewStaticKeys(key)
	if err != nil {
		log.Fatal(err)
	}
	store := memstore.New()
	secret, hashed, err := m2mauth.NewSecret(time.Now(), time.Time{})
	if err != nil {
		log.Fatal(err)
	}
	err = store.CreateClient(ctx, &m2mauth.Client{
		ID:      "reporting-service",
		Secrets: []m2mauth.Secret{hashed},
		Grants:  map[string]m2mauth.Scopes{"https://api.example.com": {"read:builders"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	tokens, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer:          "https://auth.example.com",
		DefaultAudience: "https://api.example.com",
		// Count every event; a host passes on to the auditor that
		// records them, as in metrics.Auditor(sqlAuditor).
		Auditor: metrics.Auditor(nil),
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /oauth/token", metrics.Handler("token", tokens))

	r := httptest.NewRequest(http.MethodPost, "https://auth.example.com/oauth/token",
		strings.NewReader("grant_type=client_credentials"))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.SetBasicAuth("reporting-service", secret)
	mux.ServeHTTP(httptest.NewRecorder(), r)

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	var lines []string
	for _, md := range rm.ScopeMetrics[0].Metrics {
		switch d := md.Data.(type) {
		case metricdata.Sum[int64]:
			for _, p := range d.DataPoints {
				lines = append(lines, fmt.Sprintf("%s{%s} %d", md.Name, p.Attributes.Encoded(attribute.DefaultEncoder()), p.Value))
			}
		case metricdata.Histogram[float64]:
			for _, p := range d.DataPoints {
				lines = append(lines, fmt.Sprintf("%s{%s} count %d", md.Name, p.Attributes.Encoded(attribute.DefaultEncoder()), p.Count))
			}
		}
	}
	sort.Strings(lines)
	fmt.Println(strings.Join(lines, "\n"))
	// Output:
	// m2mauth.request.duration{http.response.status_code=200,m2mauth.endpoint=token} count 1
	// m2mauth.tokens.issued{m2mauth.audience=https://api.example.com,m2mauth.client.id=reporting-service} 1
}

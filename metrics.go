package m2mauth

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// Attribute keys of the instruments of [Metrics].
const (
	attrClientID   = "m2mauth.client.id"
	attrAudience   = "m2mauth.audience"
	attrReason     = "m2mauth.reason"
	attrResult     = "m2mauth.validation.result"
	attrErrorType  = "error.type"
	attrEndpoint   = "m2mauth.endpoint"
	attrStatus     = "http.response.status_code"
	attrValidator  = "m2mauth.validator"
	attrLimiter    = "m2mauth.limiter"
	attrAlertRule  = "m2mauth.alert.rule"
	attrAlertLevel = "m2mauth.alert.severity"
)

// attrOther is the value of an attribute whose real value is not one of
// the bounded set the instrument documents.
const attrOther = "other"

// Validation results of m2mauth.validations besides the token_rejected
// reasons.
const (
	resultOK          = "ok"
	resultScopeDenied = "scope_denied"
)

const (
	defaultMaxClientAttributes = 1000
	// maxAudienceAttributes bounds the audiences that label issued tokens
	// once their client no longer can; audiences are bounded by the
	// grants, so this is only a safety net.
	maxAudienceAttributes = 1000
	// maxAlertRules bounds the alert rule names that label
	// m2mauth.alerts; rules are named in code, so this is a safety net.
	maxAlertRules = 100
)

// durationBoundaries are the bucket boundaries of m2mauth.request.duration,
// in seconds: from 10µs (a validation answered from the cache) through
// milliseconds (an issued token, a database lookup) to 10s (a slow hash
// behind a queue, a store timing out).
var durationBoundaries = []float64{
	0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// MetricsConfig holds the tunables of [Metrics]; every zero value is a
// working default.
type MetricsConfig struct {
	// MaxClientAttributes bounds the distinct (client id, audience) pairs
	// that label m2mauth.tokens.issued. Tokens of pairs past the bound
	// are counted under their audience alone, without a client id, so
	// the series without m2mauth.client.id is "every other client".
	// Negative: issued tokens are never labelled by client.
	// Default: 1000.
	MaxClientAttributes int
	// Now is the clock that times requests in [Metrics.Handler].
	// Default: [time.Now].
	Now func() time.Time
}

// Metrics records what the token endpoint and the validators do as
// OpenTelemetry metrics, through the metrics API only: the host brings
// the SDK and its exporter (Prometheus, OTLP) and hands a [metric.Meter]
// to [NewMetrics]. A host without a meter pays nothing: with a nil (or
// no-op) meter every wrapper returns what it wraps.
//
// Counters hang off the audit stream: [Metrics.Auditor] wraps the
// [Auditor] given to a [TokenHandler] or a [Validator] and counts each
// event before passing it on. [Metrics.Handler] times endpoints,
// [Metrics.Validated] counts the tokens a validator accepted (which it
// does not audit), [Metrics.AlertSink] counts alerts, and
// [Metrics.ObserveValidator] and [Metrics.ObserveRateLimiter] report
// the state of a token cache and of a limiter when metrics are
// collected.
//
// The instruments, with their kinds, units and attributes:
//
//	m2mauth.tokens.issued      counter                     {token}    m2mauth.client.id, m2mauth.audience
//	m2mauth.auth.failures      counter                     {failure}  m2mauth.reason
//	m2mauth.rate_limited       counter                     {request}  (none)
//	m2mauth.token.rejections   counter                     {request}  error.type
//	m2mauth.validations        counter                     {token}    m2mauth.validation.result
//	m2mauth.request.duration   histogram                   s          m2mauth.endpoint, http.response.status_code
//	m2mauth.cache.hits         observable counter          {token}    m2mauth.validator
//	m2mauth.cache.misses       observable counter          {token}    m2mauth.validator
//	m2mauth.cache.entries      observable up-down counter  {token}    m2mauth.validator
//	m2mauth.rate_limiter.keys  observable up-down counter  {key}      m2mauth.limiter
//	m2mauth.alerts             counter                     {alert}    m2mauth.alert.rule, m2mauth.alert.severity
//	m2mauth.alerts.dropped     observable counter          {alert}    (none)
//	m2mauth.requests.canceled  counter                     {request}  (none)
//
// Cache hits and misses only grow, so they are observable counters, of
// which a backend takes rates; the tokens cached and the limiter's
// buckets are sizes that add up across validators and replicas, so they
// are observable up-down counters. The duration histogram's buckets run
// from 10µs to 10s; a host's SDK views may change them.
//
// Every attribute has a bounded set of values, so no request can make a
// series: m2mauth.client.id appears only on issued tokens, whose clients
// exist in the store, and at most MaxClientAttributes (client,
// audience) pairs get one; m2mauth.audience is an audience granted to
// the client; m2mauth.reason is one of the Reason constants of a failed
// authentication (the client id of a failed authentication, which may
// be anything the request sent, is never recorded); error.type is an
// RFC error code; m2mauth.validation.result is "ok", "scope_denied", a
// ReasonToken constant, "insecure_transport" (see
// [ValidatorConfig.RequireHTTPS]), "invalid_request" or "server_error";
// m2mauth.endpoint, m2mauth.validator and m2mauth.limiter are names
// the host chose; alert rules are named in code (past 100 rule names,
// "other"). A value outside its set is recorded as "other"; an issued
// token whose pair is past the bound and whose audience is past the
// first 1000 has no attribute at all. Addresses, user agents, scopes and token
// ids are never attributes: they are in the audit trail.
//
// m2mauth.rate_limited counts requests refused with 429;
// m2mauth.token.rejections counts the token endpoint's other refusals
// (bad requests, denied scopes and audiences, overload) by RFC code;
// m2mauth.requests.canceled counts the requests whose caller went away
// before they were answered ([ReasonCanceled]), which are no failure of
// the server's: token requests, and validations that waited for keys.
// m2mauth.validations counts the tokens a validator accepted (through
// [Metrics.Validated]) or refused; requests that carry no token at all
// are not validations (they are in m2mauth.request.duration as 401s).
//
// The counters are kept in memory and reported when metrics are
// collected (as the SDK's observable counters, cumulative and monotonic
// like any counter), so counting an event is one atomic add on a series
// found without allocating: the series of issued tokens are kept per
// (client, audience) pair, up to the bound. Only the duration histogram
// is recorded through the SDK on the request path.
//
// A Metrics is safe for concurrent use.
type Metrics struct {
	on  bool
	cfg MetricsConfig
	// wallClock: cfg.Now is time.Now.
	wallClock bool
	meter     metric.Meter
	since     func(time.Time) time.Duration // the time elapsed since, by cfg.Now

	issued, authFailures, rateLimited, rejections, validations, alerts, canceledReqs metric.Int64ObservableCounter
	duration                                                                         metric.Float64Histogram
	cacheHits, cacheMisses, cacheEntries, limiterKeys, alertsDropped                 metric.Int64Observable

	// The series of the counters, for the bounded values.
	reasons     map[string]*tally // auth failure reasons
	results     map[string]*tally // validation results
	codes       map[string]*tally // RFC error codes
	limited     *tally            // m2mauth.rate_limited
	canceled    *tally            // m2mauth.requests.canceled
	issuedOther *tally            // issued tokens past both bounds
	pairs       attrCache[issuedKey]
	audience    attrCache[string]
	rules       attrCache[alertKey]
	// otherRules are the series of alerts past the bound of rule names,
	// by severity.
	otherRules map[string]*tally

	tmu     sync.Mutex
	tallies []*tally // every series of every counter, for the callback

	mu       sync.Mutex
	observed map[string]bool // "v:name" / "l:name" already registered
}

// issuedKey is the (client, audience) pair of an issued token.
type issuedKey struct{ client, audience string }

// alertKey labels m2mauth.alerts.
type alertKey struct{ rule, severity string }

// NewMetrics returns metrics recorded with meter, which the host gets from
// its [metric.MeterProvider] (for example
// otel.GetMeterProvider().Meter("github.com/m2mauth/m2mauth")). A nil
// meter records nothing and costs nothing.
func NewMetrics(meter metric.Meter, cfg MetricsConfig) (*Metrics, error) {
	if cfg.MaxClientAttributes == 0 {
		cfg.MaxClientAttributes = defaultMaxClientAttributes
	}
	m := &Metrics{cfg: cfg, meter: meter, observed: make(map[string]bool)}
	if cfg.Now == nil {
		// time.Since reads only the monotonic clock: half of time.Now.
		m.cfg.Now, m.since, m.wallClock = time.Now, time.Since, true
	} else {
		m.since = func(t time.Time) time.Duration { return cfg.Now().Sub(t) }
	}
	if meter == nil {
		return m, nil
	}
	if _, ok := meter.(noop.Meter); ok {
		return m, nil
	}
	m.on = true
	var errs []error
	counter := func(name, unit, desc string) metric.Int64ObservableCounter {
		c, err := meter.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	m.issued = counter("m2mauth.tokens.issued", "{token}", "Access tokens issued by the token endpoint.")
	m.authFailures = counter("m2mauth.auth.failures", "{failure}", "Failed client authentications, by reason.")
	m.rateLimited = counter("m2mauth.rate_limited", "{request}", "Requests refused because of too many failed authentications.")
	m.rejections = counter("m2mauth.token.rejections", "{request}", "Token requests refused for reasons other than authentication and rate limiting, by RFC error code.")
	m.validations = counter("m2mauth.validations", "{token}", "Access tokens accepted or refused by a validator, by result.")
	m.alerts = counter("m2mauth.alerts", "{alert}", "Alerts fired, by rule and severity.")
	m.canceledReqs = counter("m2mauth.requests.canceled", "{request}", "Requests whose caller went away before they were answered.")
	var err error
	m.duration, err = meter.Float64Histogram("m2mauth.request.duration",
		metric.WithUnit("s"), metric.WithDescription("Time taken to answer a request, by endpoint and status."),
		metric.WithExplicitBucketBoundaries(durationBoundaries...))
	errs = append(errs, err)
	m.cacheHits, err = meter.Int64ObservableCounter("m2mauth.cache.hits",
		metric.WithUnit("{token}"), metric.WithDescription("Tokens a validator answered from its verified-token cache."))
	errs = append(errs, err)
	m.cacheMisses, err = meter.Int64ObservableCounter("m2mauth.cache.misses",
		metric.WithUnit("{token}"), metric.WithDescription("Tokens a validator verified from scratch."))
	errs = append(errs, err)
	m.cacheEntries, err = meter.Int64ObservableUpDownCounter("m2mauth.cache.entries",
		metric.WithUnit("{token}"), metric.WithDescription("Tokens held in a validator's verified-token cache."))
	errs = append(errs, err)
	m.limiterKeys, err = meter.Int64ObservableUpDownCounter("m2mauth.rate_limiter.keys",
		metric.WithUnit("{key}"), metric.WithDescription("Buckets held by a rate limiter."))
	errs = append(errs, err)
	m.alertsDropped, err = meter.Int64ObservableCounter("m2mauth.alerts.dropped",
		metric.WithUnit("{alert}"), metric.WithDescription("Alerts a detector dropped because its queue was full."))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("m2mauth: creating instruments: %w", err)
	}

	m.limited = m.newTally(m.rateLimited)
	m.canceled = m.newTally(m.canceledReqs)
	m.issuedOther = m.newTally(m.issued)
	m.reasons = m.tallyTable(m.authFailures, attrReason, ReasonNoCredentials, ReasonUnknownClient, ReasonBadSecret,
		ReasonExpiredSecret, ReasonClientDisabled, ReasonPublicClient, ReasonMalformedCredentials, attrOther)
	m.results = m.tallyTable(m.validations, attrResult, resultOK, resultScopeDenied, CodeInvalidRequest, CodeServerError,
		ReasonTokenMalformed, ReasonTokenAlgorithm, ReasonTokenUnknownKey, ReasonTokenSignature,
		ReasonTokenType, ReasonTokenIssuer, ReasonTokenAudience, ReasonTokenExpired,
		ReasonTokenNotYetValid, ReasonTokenIssuedFuture, ReasonTokenMissingClaims, ReasonTokenRevoked,
		ReasonInsecureTransport, attrOther)
	m.codes = m.tallyTable(m.rejections, attrErrorType, CodeInvalidRequest, CodeInvalidClient, CodeInvalidGrant,
		CodeUnauthorizedClient, CodeUnsupportedGrantType, CodeInvalidScope, CodeInvalidTarget,
		CodeServerError, CodeTemporarilyUnavailable, attrOther)
	// Every accepted request counts here (Validated), on every core.
	m.results[resultOK].perProc = newProcCounter()
	m.pairs.max = max(cfg.MaxClientAttributes, 0)
	m.audience.max = maxAudienceAttributes
	m.rules.max = maxAlertRules
	m.otherRules = make(map[string]*tally, 3)
	for _, sev := range []string{string(AlertWarning), string(AlertCritical), attrOther} {
		m.otherRules[sev] = m.newTally(m.alerts, attribute.String(attrAlertRule, attrOther), attribute.String(attrAlertLevel, sev))
	}
	if _, err := meter.RegisterCallback(m.report, m.issued, m.authFailures, m.rateLimited, m.rejections, m.validations, m.alerts, m.canceledReqs); err != nil {
		return nil, fmt.Errorf("m2mauth: registering a metrics callback: %w", err)
	}
	return m, nil
}

// tally is one series of a counter: a count kept in memory, so that
// counting an event is one atomic add, and reported as an observable
// counter whenever metrics are collected. A series is reported once it
// has counted something, as a synchronous counter's would be.
type tally struct {
	n    atomic.Int64
	inst metric.Int64Observable
	opt  []metric.ObserveOption
	// perProc, when set, holds more of the count, added per processor:
	// for a series counted on every request.
	perProc *procCounter
}

// count returns the series' count.
func (t *tally) count() int64 {
	n := t.n.Load()
	if t.perProc != nil {
		n += int64(t.perProc.load())
	}
	return n
}

// newTally returns a new series of inst with attributes kv.
func (m *Metrics) newTally(inst metric.Int64Observable, kv ...attribute.KeyValue) *tally {
	t := &tally{inst: inst, opt: []metric.ObserveOption{metric.WithAttributeSet(attribute.NewSet(kv...))}}
	m.tmu.Lock()
	m.tallies = append(m.tallies, t)
	m.tmu.Unlock()
	return t
}

// tallyTable returns a series of inst for each value of key.
func (m *Metrics) tallyTable(inst metric.Int64Observable, key string, values ...string) map[string]*tally {
	t := make(map[string]*tally, len(values))
	for _, v := range values {
		t[v] = m.newTally(inst, attribute.String(key, v))
	}
	return t
}

// report observes every series that has counted something.
func (m *Metrics) report(_ context.Context, o metric.Observer) error {
	m.tmu.Lock()
	all := m.tallies[:len(m.tallies):len(m.tallies)]
	m.tmu.Unlock()
	for _, t := range all {
		if n := t.count(); n > 0 {
			o.ObserveInt64(t.inst, n, t.opt...)
		}
	}
	return nil
}

// lookup returns the series of v in t, or of "other".
func lookup(t map[string]*tally, v string) *tally {
	if o, ok := t[v]; ok {
		return o
	}
	return t[attrOther]
}

// attrCache holds the series of up to max keys. Past the bound, get
// reports false and the caller falls back to a coarser series. Readers
// find a key in an immutable map without a lock; a new key copies the
// map, which happens at most max times.
type attrCache[K comparable] struct {
	max int
	cur atomic.Pointer[map[K]*tally]
	mu  sync.Mutex // serializes writers
}

// get returns the series of k, building it with build if k is new and
// the cache has room.
func (c *attrCache[K]) get(k K, build func() *tally) (*tally, bool) {
	if m := c.cur.Load(); m != nil {
		if o, ok := (*m)[k]; ok {
			return o, true
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var old map[K]*tally
	if m := c.cur.Load(); m != nil {
		old = *m
	}
	if o, ok := old[k]; ok {
		return o, true
	}
	if len(old) >= c.max {
		return nil, false
	}
	m := maps.Clone(old)
	if m == nil {
		m = make(map[K]*tally)
	}
	o := build()
	m[k] = o
	c.cur.Store(&m)
	return o, true
}

// issuedTally returns the series of a token issued to client for
// audience: labelled with both, or past MaxClientAttributes with the
// audience alone, or past the audiences' bound with none.
func (m *Metrics) issuedTally(client, audience string) *tally {
	if t, ok := m.pairs.get(issuedKey{client, audience}, func() *tally {
		return m.newTally(m.issued, attribute.String(attrClientID, client), attribute.String(attrAudience, audience))
	}); ok {
		return t
	}
	if t, ok := m.audience.get(audience, func() *tally {
		return m.newTally(m.issued, attribute.String(attrAudience, audience))
	}); ok {
		return t
	}
	return m.issuedOther
}

// Auditor returns an [Auditor] that counts each event it receives, then
// passes it to next (when next is not nil). Give it to a [TokenHandler]
// as [TokenHandlerConfig.Auditor] and to each [Validator] as
// [ValidatorConfig.Auditor]. Events of client administration are passed
// on uncounted. When next implements [AuditHealthChecker], so does the
// Auditor returned, reporting next's health. With metrics off it returns
// next (or, when next is nil, an Auditor that does nothing).
func (m *Metrics) Auditor(next Auditor) Auditor {
	if !m.on {
		if next == nil {
			return AuditorFunc(func(context.Context, AuditEvent) {})
		}
		return next
	}
	counted := AuditorFunc(func(ctx context.Context, e AuditEvent) {
		m.count(&e)
		if next != nil {
			next.Audit(ctx, e)
		}
	})
	if hc, ok := next.(AuditHealthChecker); ok {
		return checkedAuditor{counted, hc}
	}
	return counted
}

// checkedAuditor is an Auditor that reports the health of the one it
// passes events to, so that wrapping that one keeps
// [TokenHandlerConfig].RequireAudit working.
type checkedAuditor struct {
	AuditorFunc
	AuditHealthChecker
}

// count adds e to its counter.
func (m *Metrics) count(e *AuditEvent) {
	switch e.Type {
	case EventTokenIssued:
		m.issuedTally(e.ClientID, e.Audience).n.Add(1)
	case EventAuthFailed:
		// Never the client id: it may be any string a request sent.
		lookup(m.reasons, e.Reason).n.Add(1)
	case EventRateLimited:
		m.limited.n.Add(1)
	case EventRequestRejected, EventAudienceDenied:
		if e.Reason == ReasonCanceled {
			m.canceled.n.Add(1)
		} else if e.Error != "" { // else answered 200: a revocation of a token that was not revocable
			lookup(m.codes, e.Error).n.Add(1)
		}
	case EventScopeDenied:
		if e.Error == CodeInsufficientScope {
			// A validator's 403; the token endpoint's is invalid_scope.
			m.results[resultScopeDenied].n.Add(1)
		} else {
			lookup(m.codes, e.Error).n.Add(1)
		}
	case EventTokenRejected:
		r := e.Reason
		if r == ReasonCanceled {
			m.canceled.n.Add(1)
			return
		}
		if r == "" {
			r = e.Error // invalid_request, server_error
		}
		lookup(m.results, r).n.Add(1)
	}
}

// Validated returns a handler that counts each request reaching it with
// a validator's claims (see [ClaimsFromContext]) as an accepted token in
// m2mauth.validations, then calls next. Put it right behind the
// validator's middleware:
//
//	mux.Handle("GET /api/builders", v.RequireScopes("read:builders")(m.Validated(builders)))
//
// With metrics off it returns next.
func (m *Metrics) Validated(next http.Handler) http.Handler {
	if next == nil {
		panic("m2mauth: Metrics.Validated needs a handler")
	}
	if !m.on {
		return next
	}
	ok := m.results[resultOK].perProc
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, has := ClaimsFromContext(r.Context()); has {
			ok.add()
		}
		next.ServeHTTP(w, r)
	})
}

// commonStatuses are the status codes whose attribute sets
// [Metrics.Handler] builds in advance; others are built per request.
var commonStatuses = [...]int{200, 201, 204, 400, 401, 403, 404, 405, 413, 415, 429, 500, 503}

// Handler returns a handler that calls next and records the time it took
// in m2mauth.request.duration, in seconds, with name as m2mauth.endpoint
// and the response's status code. Name the endpoints after what they
// are, for example "token" for the [TokenHandler] and "validation" for a
// route behind a [Validator] (whose time then includes the route's own).
// The writer next gets unwraps (see [http.ResponseController]) to the
// original [http.ResponseWriter]. Handler panics if name is empty or
// next is nil. With metrics off it returns next.
//
// A [TokenHandler], [RevocationHandler] or [IntrospectionHandler] on the
// wall clock (no TokenHandlerConfig.Now), wrapped by metrics on the
// wall clock, times its own requests: from the moment it reads the
// clock for the request to the moment it has answered and audited it.
// That costs one clock read and no wrapped writer.
func (m *Metrics) Handler(name string, next http.Handler) http.Handler {
	if name == "" || next == nil {
		panic("m2mauth: Metrics.Handler needs a name and a handler")
	}
	if !m.on {
		return next
	}
	d := m.endpointDurations(name)
	if st, ok := next.(selfTimed); ok && m.wallClock && st.wallClock() {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			st.serveTimed(w, r, d)
		})
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := m.cfg.Now()
		sw := statusWriters.Get().(*statusWriter)
		sw.ResponseWriter, sw.status = w, 0
		next.ServeHTTP(sw, r)
		status := sw.status
		*sw = statusWriter{}
		statusWriters.Put(sw)
		if status == 0 {
			status = http.StatusOK
		}
		d.requestDone(r.Context(), start, status)
	})
}

// endpointDurations records the durations of one endpoint's requests.
type endpointDurations struct {
	m        *Metrics
	endpoint attribute.KeyValue
	common   [len(commonStatuses)][]metric.RecordOption
}

func (m *Metrics) endpointDurations(name string) *endpointDurations {
	d := &endpointDurations{m: m, endpoint: attribute.String(attrEndpoint, name)}
	for i, s := range commonStatuses {
		d.common[i] = recordOptions(d.endpoint, s)
	}
	return d
}

// requestDone records a request that started at start, by the metrics'
// clock, and was answered with status.
func (d *endpointDurations) requestDone(ctx context.Context, start time.Time, status int) {
	elapsed := d.m.since(start).Seconds()
	var opts []metric.RecordOption
	for i, s := range commonStatuses {
		if s == status {
			opts = d.common[i]
			break
		}
	}
	if opts == nil {
		opts = recordOptions(d.endpoint, status)
	}
	d.m.duration.Record(ctx, elapsed, opts...)
}

// recordOptions returns the options of a duration of endpoint answered
// with status.
func recordOptions(endpoint attribute.KeyValue, status int) []metric.RecordOption {
	return []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(endpoint, attribute.Int(attrStatus, status)))}
}

// statusWriters reuses the writers of finished requests. A handler must
// not use its ResponseWriter once ServeHTTP has returned (net/http), so
// none still holds one that is handed out again.
var statusWriters = sync.Pool{New: func() any { return new(statusWriter) }}

// statusWriter remembers the status code of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap returns the wrapped writer, for [http.ResponseController].
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// AlertSink returns an [AlertSink] that counts each alert that fires (not
// the notices of recovery) in m2mauth.alerts, by rule and severity, then
// passes every alert to next (when next is not nil). With metrics off it
// returns next (or, when next is nil, a sink that does nothing).
func (m *Metrics) AlertSink(next AlertSink) AlertSink {
	if !m.on {
		if next == nil {
			return AlertSinkFunc(func(context.Context, Alert) {})
		}
		return next
	}
	return AlertSinkFunc(func(ctx context.Context, a Alert) {
		if !a.Recovered {
			m.alertTally(a).n.Add(1)
		}
		if next != nil {
			next.Send(ctx, a)
		}
	})
}

// alertTally returns the series of a, with the rule "other" past the
// bound of rule names.
func (m *Metrics) alertTally(a Alert) *tally {
	sev := string(a.Severity)
	if a.Severity != AlertWarning && a.Severity != AlertCritical {
		sev = attrOther
	}
	build := func() *tally {
		return m.newTally(m.alerts, attribute.String(attrAlertRule, a.Rule), attribute.String(attrAlertLevel, sev))
	}
	if t, ok := m.rules.get(alertKey{a.Rule, sev}, build); ok {
		return t
	}
	return m.otherRules[sev]
}

// ObserveValidator reports v's verified-token cache (see
// [Validator.CacheStats]) whenever metrics are collected: hits and misses
// as m2mauth.cache.hits and m2mauth.cache.misses, the tokens held as
// m2mauth.cache.entries, each with name as m2mauth.validator (no
// attribute when name is empty). Each validator needs a name of its own;
// a name already observed is refused. With metrics off it does nothing.
func (m *Metrics) ObserveValidator(name string, v *Validator) error {
	if v == nil {
		return errors.New("m2mauth: ObserveValidator: nil Validator")
	}
	opt := observeOptions(attrValidator, name)
	return m.observe("v:"+name, func(_ context.Context, o metric.Observer) error {
		st := v.CacheStats()
		o.ObserveInt64(m.cacheHits, int64(st.Hits), opt...)
		o.ObserveInt64(m.cacheMisses, int64(st.Misses), opt...)
		o.ObserveInt64(m.cacheEntries, int64(st.Entries), opt...)
		return nil
	}, m.cacheHits, m.cacheMisses, m.cacheEntries)
}

// ObserveRateLimiter reports the number of buckets l holds (see
// [RateLimiter.Len]) whenever metrics are collected, as
// m2mauth.rate_limiter.keys with name as m2mauth.limiter (no attribute
// when name is empty). Each limiter needs a name of its own; a name
// already observed is refused. With metrics off it does nothing.
func (m *Metrics) ObserveRateLimiter(name string, l *RateLimiter) error {
	if l == nil {
		return errors.New("m2mauth: ObserveRateLimiter: nil RateLimiter")
	}
	opt := observeOptions(attrLimiter, name)
	return m.observe("l:"+name, func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(m.limiterKeys, int64(l.Len()), opt...)
		return nil
	}, m.limiterKeys)
}

// ObserveDetector reports the alerts d dropped (see [Detector.Dropped])
// whenever metrics are collected, as m2mauth.alerts.dropped: alerts the
// sink never saw, so a rate above zero means the sink is too slow or the
// queue too small. One detector per Metrics can be observed. With
// metrics off it does nothing.
func (m *Metrics) ObserveDetector(d *Detector) error {
	if d == nil {
		return errors.New("m2mauth: ObserveDetector: nil Detector")
	}
	return m.observe("d:detector", func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(m.alertsDropped, int64(d.Dropped()))
		return nil
	}, m.alertsDropped)
}

// observeOptions returns the attributes of an observation of the object
// named name, none when name is empty.
func observeOptions(key, name string) []metric.ObserveOption {
	if name == "" {
		return nil
	}
	return []metric.ObserveOption{metric.WithAttributeSet(attribute.NewSet(attribute.String(key, name)))}
}

// observe registers cb for instruments under the unique key.
func (m *Metrics) observe(key string, cb metric.Callback, instruments ...metric.Observable) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.observed[key] {
		return fmt.Errorf("m2mauth: %q is already observed", key[2:])
	}
	if !m.on {
		m.observed[key] = true
		return nil
	}
	if _, err := m.meter.RegisterCallback(cb, instruments...); err != nil {
		return fmt.Errorf("m2mauth: registering a metrics callback: %w", err)
	}
	m.observed[key] = true
	return nil
}

package m2mauth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// GrantTypeClientCredentials is the only grant type the token handler
// issues tokens for (RFC 6749 §4.4).
const GrantTypeClientCredentials = "client_credentials"

// TokenHandlerConfig holds the tunables of a [TokenHandler]. The zero value
// of every field but Issuer is a working default.
type TokenHandlerConfig struct {
	// Issuer is the "iss" claim of every token, normally the base URL of
	// this authorization server. Required.
	Issuer string
	// DefaultAudience is the audience of tokens whose request names none
	// (neither "audience" nor "resource"). Default: none, and such
	// requests are refused with invalid_request.
	DefaultAudience string
	// TokenTTL is the lifetime of issued tokens, in whole seconds; a
	// client's own TokenTTL overrides it. Default: 1h.
	TokenTTL time.Duration
	// MaxTokenTTL caps the lifetime of every token, whatever a client's
	// own TokenTTL says; TokenTTL may not exceed it. Default and upper
	// bound: [MaxClientTokenTTL] (24h).
	MaxTokenTTL time.Duration
	// MaxBodyBytes bounds the request body; larger bodies are refused with
	// 413. Default: 8 KiB.
	MaxBodyBytes int64
	// Realm is the realm of the "WWW-Authenticate: Basic" challenge sent
	// with invalid_client. Default: "m2mauth".
	Realm string
	// Auditor receives an event for every issued token and every refused
	// request, and for every request to the handler's revocation and
	// introspection endpoints. Default: a [SlogAuditor] on Logger when
	// Logger is set or the process has set a default slog handler
	// ([slog.SetDefault]); otherwise a [JSONAuditor] writing where slog's
	// default handler would, to the [log] package's output ([log.Writer],
	// standard error unless changed), the same fields as JSON lines for a
	// fraction of the cost.
	Auditor Auditor
	// Logger receives internal errors (a failing store or key provider),
	// whose details are never sent to clients. Default: [slog.Default].
	Logger *slog.Logger
	// Now is the clock. Default: the system clock, read as [time.Now]
	// reads it but more cheaply: from the monotonic clock, added to a
	// reading of the wall clock at most a second old, so that a step of
	// the system clock shows within a second.
	Now func() time.Time
	// Limiter limits failed client authentications. Default: a
	// [RateLimiter] with its default settings and the clock above.
	Limiter Limiter
	// TrustedProxies are the networks of reverse proxies whose
	// ForwardedHeader names the client's address and scheme. Default:
	// none; the connection's peer address is the client's and forwarding
	// headers, which anyone can send, are ignored.
	TrustedProxies []netip.Prefix
	// ForwardedHeader is the one forwarding header the trusted proxies
	// write: [HeaderXForwardedFor] (then the scheme is read from
	// X-Forwarded-Proto, which they must set) or [HeaderForwarded]
	// (RFC 7239). Required when TrustedProxies is set; every other
	// forwarding header is ignored. The proxies must remove or overwrite
	// what clients send in the headers read: nginx, HAProxy and AWS ALB
	// append to X-Forwarded-For and pass Forwarded through untouched, so
	// behind them name X-Forwarded-For.
	ForwardedHeader string
	// IPv6Prefix is the length of the network prefix that identifies one
	// IPv6 client for rate limiting. Default: 64.
	IPv6Prefix int
	// AllowInsecureHTTP lets clients send credentials over plain HTTP
	// from any address. It is insecure: secrets and tokens cross the
	// network in the clear. By default a request that did not arrive over
	// TLS (directly, or at a trusted proxy that says so) is refused with
	// invalid_request unless it comes from a loopback address, as
	// RFC 6749 §1.6 and §3.2 require. Default: false.
	AllowInsecureHTTP bool
	// RevocationRate is how many tokens per second one client may revoke
	// through the revocation endpoint (RFC 7009) on average, RevocationBurst
	// how many at once above it. A revocation beyond them is answered 429
	// with Retry-After and the token stays valid. They bound the
	// deny-list one client can grow, which every validator holds and
	// every [RevocationListHandler] publishes. They are kept in memory,
	// per process (per replica). Defaults: 1 and 100.
	RevocationRate  float64
	RevocationBurst int
	// StoreTimeout bounds the time one request waits for the client store
	// (and the [Revoker] of a revocation endpoint), the limiter and the
	// rationing of slow hashes; past it the request is answered 503
	// temporarily_unavailable with Retry-After. The limiter's Release of
	// the request's attempt gets StoreTimeout of its own past that
	// deadline (it must run even when the request has run out of time),
	// and a wait for a turn (MaxConcurrentRequests) comes before it: a
	// request waits at most three times StoreTimeout. Default: 5s.
	StoreTimeout time.Duration
	// MaxConcurrentRequests bounds the requests handled at once by the
	// token endpoint and its revocation and introspection endpoints
	// together, from the end of reading the request (so a client that
	// sends its body slowly holds no turn) to the end of its audit
	// event; others wait up to StoreTimeout for a turn, then get 503
	// with Retry-After. Negative means no bound. Default: 512.
	MaxConcurrentRequests int
	// SlowHashConcurrency bounds the argon2id and bcrypt verifications
	// run at once (a quarter of them, at least one, for one client id,
	// except for the secret the client proved from the same address
	// within 24 hours, so that guesses at its id from elsewhere cannot
	// keep it waiting). Each argon2id verification may hold up to 64 MiB.
	// Default: 4.
	SlowHashConcurrency int
	// RequireAudit makes the handler refuse every request with 503
	// temporarily_unavailable while the Auditor reports that it cannot
	// record events, so that no token is issued unaudited. The Auditor
	// must implement [AuditHealthChecker]. Default: false.
	RequireAudit bool
}

// TokenHandler is the token endpoint of an OAuth 2.0 authorization server
// for the client credentials grant (RFC 6749 §4.4). Mount it with
//
//	mux.Handle("/oauth/token", h)
//
// It accepts parameters as application/x-www-form-urlencoded (RFC 6749) or
// as a JSON object of strings, never from the URL query; client
// authentication by HTTP Basic (client_secret_basic, RFC 6749 §2.3.1) or by
// client_id and client_secret in the body (client_secret_post), never both.
// Each successful request gets a fresh JWT access token (RFC 9068) and
// writes nothing to any store. A token longer than a [Validator] accepts
// (4096 bytes: a client granted hundreds of scopes, asking for all) is
// not issued; the request is answered invalid_scope.
//
// [TokenHandler.RevocationHandler] and [TokenHandler.IntrospectionHandler]
// return the revocation (RFC 7009) and introspection (RFC 7662) endpoints
// that go with it: they share its configuration, client authentication
// and limiter.
//
// A TokenHandler is safe for concurrent use.
type TokenHandler struct {
	keys      KeyProvider
	cfg       TokenHandlerConfig
	auth      *clientAuth
	addrs     *addrPolicy
	challenge string // WWW-Authenticate value for invalid_client
	inflight  chan struct{}
	health    AuditHealthChecker // nil unless RequireAudit
	signer    atomic.Pointer[tokenSigner]
	realClock bool // cfg.Now is the system clock
}

const (
	defaultTokenTTL     = time.Hour
	defaultMaxBodyBytes = 8 << 10
)

// NewTokenHandler returns a token handler that finds clients in store and
// signs tokens with the signing key of keys. It checks cfg and the current
// signing key now, so a misconfiguration fails here rather than at the
// first request.
func NewTokenHandler(store ClientStore, keys KeyProvider, cfg TokenHandlerConfig) (*TokenHandler, error) {
	if store == nil {
		return nil, errors.New("m2mauth: nil ClientStore")
	}
	if keys == nil {
		return nil, errors.New("m2mauth: nil KeyProvider")
	}
	if cfg.Issuer == "" {
		return nil, errors.New("m2mauth: TokenHandlerConfig.Issuer is required")
	}
	switch {
	case cfg.MaxTokenTTL == 0:
		cfg.MaxTokenTTL = MaxClientTokenTTL
	case cfg.MaxTokenTTL < time.Second || cfg.MaxTokenTTL > MaxClientTokenTTL:
		return nil, fmt.Errorf("m2mauth: MaxTokenTTL %v outside [1s, %v]", cfg.MaxTokenTTL, MaxClientTokenTTL)
	}
	switch {
	case cfg.TokenTTL == 0:
		cfg.TokenTTL = min(defaultTokenTTL, cfg.MaxTokenTTL)
	case cfg.TokenTTL < time.Second || cfg.TokenTTL > cfg.MaxTokenTTL:
		return nil, fmt.Errorf("m2mauth: TokenTTL %v outside [1s, MaxTokenTTL %v]", cfg.TokenTTL, cfg.MaxTokenTTL)
	}
	switch {
	case cfg.StoreTimeout == 0:
		cfg.StoreTimeout = 5 * time.Second
	case cfg.StoreTimeout < time.Millisecond:
		return nil, fmt.Errorf("m2mauth: StoreTimeout %v is under a millisecond", cfg.StoreTimeout)
	}
	if cfg.MaxConcurrentRequests == 0 {
		cfg.MaxConcurrentRequests = 512
	}
	if err := callerRate("RevocationRate", "RevocationBurst", &cfg.RevocationRate, &cfg.RevocationBurst, 1, 100); err != nil {
		return nil, err
	}
	switch {
	case cfg.SlowHashConcurrency == 0:
		cfg.SlowHashConcurrency = 4
	case cfg.SlowHashConcurrency < 0:
		return nil, errors.New("m2mauth: SlowHashConcurrency must be positive")
	}
	switch {
	case cfg.MaxBodyBytes == 0:
		cfg.MaxBodyBytes = defaultMaxBodyBytes
	case cfg.MaxBodyBytes < 256:
		return nil, fmt.Errorf("m2mauth: MaxBodyBytes %d is too small for a token request", cfg.MaxBodyBytes)
	}
	if cfg.Realm == "" {
		cfg.Realm = defaultRealm
	}
	if !validRealm(cfg.Realm) {
		return nil, errors.New("m2mauth: Realm must be printable ASCII without quotes or backslashes")
	}
	if cfg.Auditor == nil {
		cfg.Auditor = defaultAuditor(cfg.Logger)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	realClock := cfg.Now == nil
	if realClock {
		cfg.Now = systemClock.Now
	}
	if cfg.Limiter == nil {
		var lcfg RateLimiterConfig // on the system clock without a time.Time
		if !realClock {
			lcfg.Now = cfg.Now
		}
		l, err := NewRateLimiter(lcfg)
		if err != nil {
			return nil, err
		}
		cfg.Limiter = l
	}
	addrs, err := newAddrPolicy(cfg.TrustedProxies, cfg.ForwardedHeader, cfg.IPv6Prefix, cfg.Logger)
	if err != nil {
		return nil, err
	}
	h := &TokenHandler{keys: keys, cfg: cfg, addrs: addrs, challenge: `Basic realm="` + cfg.Realm + `"`, realClock: realClock}
	if cfg.RequireAudit {
		hc, ok := cfg.Auditor.(AuditHealthChecker)
		if !ok {
			return nil, errors.New("m2mauth: RequireAudit needs an Auditor that implements AuditHealthChecker")
		}
		h.health = hc
	}
	if cfg.MaxConcurrentRequests > 0 {
		h.inflight = make(chan struct{}, cfg.MaxConcurrentRequests)
	}
	if _, err := h.currentSigner(context.Background()); err != nil {
		return nil, err
	}
	if h.auth, err = newClientAuth(store, cfg.Limiter, cfg.Logger, cfg.StoreTimeout, cfg.SlowHashConcurrency); err != nil {
		return nil, err
	}
	return h, nil
}

// currentSigner returns a signer for the provider's signing key, reusing
// the prepared one while the provider returns the same key.
func (h *TokenHandler) currentSigner(ctx context.Context) (*tokenSigner, error) {
	k, err := h.keys.SigningKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("m2mauth: signing key: %w", err)
	}
	if k == nil {
		return nil, errors.New("m2mauth: KeyProvider returned a nil signing key")
	}
	if s := h.signer.Load(); s != nil && s.jwk == k {
		return s, nil
	}
	s, err := newTokenSigner(k)
	if err != nil {
		return nil, err
	}
	h.signer.Store(s)
	return s, nil
}

// endpoint names an endpoint that authenticates clients; it decides
// which parameters its requests carry.
type endpoint uint8

const (
	endpointToken         endpoint = iota // RFC 6749 §4.4
	endpointRevocation                    // RFC 7009
	endpointIntrospection                 // RFC 7662
)

// ownValidator returns a [Validator] of the tokens h issues, for any
// audience: the authorization server's own view of them, for the
// revocation and introspection endpoints. leeway is the clock skew
// tolerated on exp, nbf and iat; cacheSize as in [ValidatorConfig].
func (h *TokenHandler) ownValidator(leeway time.Duration, cacheSize int) (*Validator, error) {
	v, err := NewValidator(h.keys, ValidatorConfig{
		Issuer:    h.cfg.Issuer,
		Audience:  h.cfg.Issuer, // unused: any audience is accepted
		Leeway:    leeway,
		CacheSize: cacheSize,
		Now:       h.cfg.Now,
	})
	if err != nil {
		return nil, err
	}
	v.anyAudience = true
	return v, nil
}

// tokenRequest is a parsed request to an endpoint that authenticates
// clients: the token endpoint, revocation or introspection.
type tokenRequest struct {
	endpoint                             endpoint
	grantType, scope, audience, resource string
	// token and tokenTypeHint are the parameters of revocation
	// (RFC 7009 §2.1) and introspection (RFC 7662 §2.1) requests.
	token, tokenTypeHint string
	// manyResources is set when "resource" names more than one target.
	manyResources bool
	cred          credentials
	// addrKey is the client's address as the limiter keys it.
	addrKey string
	// now is the time of the request, read once.
	now time.Time
}

// ServeHTTP answers one token request.
func (h *TokenHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.serve(w, r, endpointToken, nil, nil, nil)
}

// requestTimer is told when a request an endpoint answered started, by
// the endpoint's clock, and with what status it was answered, once it
// has been answered and audited. [Metrics.Handler] hands one to the
// endpoints that read the clock anyway, rather than timing them from
// outside with a clock read and a wrapped writer of its own.
type requestTimer interface {
	requestDone(ctx context.Context, start time.Time, status int)
}

// selfTimed is implemented by the endpoints that can time their requests
// for a [requestTimer].
type selfTimed interface {
	// serveTimed answers one request like ServeHTTP and tells t.
	serveTimed(w http.ResponseWriter, r *http.Request, t requestTimer)
	// wallClock reports whether the endpoint reads the wall clock
	// (time.Now), whose monotonic reading time.Since can subtract.
	wallClock() bool
}

func (h *TokenHandler) serveTimed(w http.ResponseWriter, r *http.Request, t requestTimer) {
	h.serve(w, r, endpointToken, nil, nil, t)
}

func (h *TokenHandler) wallClock() bool { return h.realClock }

// serve answers one request to endpoint ep, whose handler is h for the
// token endpoint, rh for revocation and ih for introspection. It is what
// every endpoint that authenticates clients shares: the response
// headers, the client's address, the in-flight bound, admission,
// parsing, client authentication, the endpoint's own step, and the audit
// event of the outcome. The steps are called directly, not through a
// func value, so the request and its event stay on the stack. A non-nil
// t is told when the request is done.
func (h *TokenHandler) serve(w http.ResponseWriter, r *http.Request, ep endpoint, rh *RevocationHandler, ih *IntrospectionHandler, t requestTimer) {
	// The three values in one allocation, under their canonical names
	// (what Header.Set would do, in three allocations and three key
	// checks). Each is its own full slice, so an append by a later
	// handler cannot reach the others.
	vals := make([]string, 3)
	vals[0], vals[1], vals[2] = "application/json", "no-store", "no-cache"
	hdr := w.Header()
	hdr["Content-Type"], hdr["Cache-Control"], hdr["Pragma"] = vals[0:1:1], vals[1:2:2], vals[2:3:3]

	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)

	p := h.addrs.resolve(r)
	// The header map is read with canonical keys directly: what
	// Header.Get and Header.Values do after canonicalising the key.
	ev := AuditEvent{}
	if ua := r.Header["User-Agent"]; len(ua) > 0 {
		ev.UserAgent = auditString(ua[0])
	}
	if p.addr.IsValid() {
		ev.RemoteIP = p.addr.String()
		ev.addr = p.addr.Unmap().WithZone("")
	}
	req := tokenRequest{endpoint: ep, addrKey: h.addrs.key(p.addr, ev.RemoteIP), now: h.cfg.Now()}
	ev.Time = req.now
	status := http.StatusOK
	if t != nil {
		// From req.now as it is now: a wait for a watermark's second
		// to pass moves req.now, and is part of the request's time.
		start := req.now
		defer func() { t.requestDone(r.Context(), start, status) }()
	}
	err := h.admitted(w, r, p, &req, &ev, bp)
	// The turn is taken once the request is read: a client that sends
	// its body slowly holds its own connection, not a turn.
	if err == nil && h.inflight != nil {
		if err = h.enter(r.Context()); err == nil {
			defer func() { <-h.inflight }()
		}
	}
	var body []byte
	if err == nil {
		body, err = h.authenticated(r, &req, &ev, bp, rh, ih)
	}
	if err != nil {
		status = h.fail(w, r, &ev, err)
		return
	}
	w.WriteHeader(status)
	w.Write(body)
	h.cfg.Auditor.Audit(r.Context(), ev)
}

// admitted runs the first steps of the request flow of DESIGN.md: admit
// the request, then read and parse it into req. It fills ev as it
// learns, and returns the error to answer with.
func (h *TokenHandler) admitted(w http.ResponseWriter, r *http.Request, p peer, req *tokenRequest, ev *AuditEvent, bp *[]byte) error {
	if err := h.admit(w, r, p, ev); err != nil {
		return err
	}
	if err := h.parse(r, req, bp); err != nil {
		if asError(err).Code == CodeInvalidClient {
			ev.Reason = ReasonMalformedCredentials
		}
		return err
	}
	ev.ClientID = auditString(req.cred.id)
	return nil
}

// authenticated authenticates the client of the parsed request req, then
// runs the endpoint's own step. Each step returns the response body,
// built in *bp, or the error to answer with, and fills ev as it learns;
// on success it sets ev.Type.
func (h *TokenHandler) authenticated(r *http.Request, req *tokenRequest, ev *AuditEvent, bp *[]byte, rh *RevocationHandler, ih *IntrospectionHandler) ([]byte, error) {
	c, err := h.auth.authenticate(r.Context(), &req.cred, req.addrKey, req.now, ev)
	if err != nil {
		return nil, err
	}
	switch req.endpoint {
	case endpointRevocation:
		return rh.revoke(r.Context(), req, c, ev, bp)
	case endpointIntrospection:
		return ih.introspect(r.Context(), req, c, ev, bp)
	}
	return h.issue(r.Context(), req, c, ev, bp)
}

// issue runs the token endpoint's own steps for an authenticated client:
// check the grant, pick the audience and scopes, wait out the client's
// revocation watermark, then mint.
func (h *TokenHandler) issue(ctx context.Context, req *tokenRequest, c *Client, ev *AuditEvent, bp *[]byte) ([]byte, error) {
	switch req.grantType {
	case GrantTypeClientCredentials:
	case "":
		return nil, NewError(CodeInvalidRequest, "missing grant_type")
	default:
		return nil, NewError(CodeUnsupportedGrantType, "only the client_credentials grant type is supported")
	}
	for pass := 0; ; pass++ {
		audience, scopes, err := h.target(req, c, ev)
		if err != nil {
			return nil, err
		}
		waited, err := afterWatermark(ctx, req, c.TokensRevokedAt)
		if err != nil {
			return nil, err
		}
		if !waited {
			return h.mint(ctx, req, c, audience, scopes, ev, bp)
		}
		if pass == maxWatermarkPasses-1 {
			return nil, errRevokedAgain()
		}
		// The token will be stamped with the second after the wait,
		// which a change to the client committed during the wait does
		// not reach: a disable, a deletion or a secret's removal
		// revokes up to the second it commits in. So the client is
		// read again, as of now, before anything is minted for it.
		if c, err = h.auth.recheck(ctx, c, req.now, ev); err != nil {
			return nil, err
		}
	}
}

// maxWatermarkPasses bounds how many times one token request waits for
// its client's revocation watermark: a client whose tokens are revoked
// again while it waits, every time, is asked to retry later.
const maxWatermarkPasses = 3

// errRevokedAgain is the answer to a token request whose client's tokens
// were revoked again on each of its waits.
func errRevokedAgain() error {
	e := WrapError(CodeTemporarilyUnavailable, "the client's tokens were just revoked; retry later", retryLater{time.Second})
	e.Status = http.StatusServiceUnavailable
	return e
}

// maxWatermarkWait bounds how long a token request waits for its
// client's revocation watermark to pass. A watermark further ahead of
// the clock (another replica's clock running fast) is answered 503.
const maxWatermarkWait = 1100 * time.Millisecond

// afterWatermark makes sure a token issued at req.now is not born revoked
// by its client's watermark at: tokens issued up to the end of the
// watermark's second are revoked (see [Revocations]), so a request made
// in or before that second waits until the next whole second, moves
// req.now there and reports that it waited. The wait ends early, with an
// error, when ctx does.
func afterWatermark(ctx context.Context, req *tokenRequest, at time.Time) (bool, error) {
	if at.IsZero() || req.now.Unix() > at.Unix() {
		return false, nil
	}
	next := time.Unix(at.Unix()+1, 0)
	wait := next.Sub(req.now)
	if wait > maxWatermarkWait {
		e := WrapError(CodeTemporarilyUnavailable, "the client's tokens were just revoked; retry later", retryLater{wait})
		e.Status = http.StatusServiceUnavailable
		return false, e
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return false, unavailable(ctx, "the request ended while waiting for the client's revocation to pass", context.DeadlineExceeded)
	}
	req.now = next.In(req.now.Location())
	return true, nil
}

// admit refuses requests that must not be looked at further: another
// method than POST, no TLS, or an auditor that cannot record.
func (h *TokenHandler) admit(w http.ResponseWriter, r *http.Request, p peer, ev *AuditEvent) error {
	if r.Method != http.MethodPost {
		e := NewError(CodeInvalidRequest, "this endpoint accepts only POST")
		e.Status = http.StatusMethodNotAllowed
		return e
	}
	if err := transport(w, p, h.cfg.AllowInsecureHTTP); err != nil {
		ev.Reason = ReasonInsecureTransport
		return err
	}
	if h.health != nil {
		if err := h.health.AuditHealth(); err != nil {
			ev.Reason = ReasonAuditUnavailable
			e := WrapError(CodeTemporarilyUnavailable, "the audit trail is unavailable; retry later", errors.Join(retryLater{5 * time.Second}, err))
			e.Status = http.StatusServiceUnavailable
			return e
		}
	}
	return nil
}

// target picks the token's audience and scopes, within what c is granted.
func (h *TokenHandler) target(req *tokenRequest, c *Client, ev *AuditEvent) (string, Scopes, error) {
	audience, err := h.audience(req)
	if err != nil {
		return "", nil, err
	}
	ev.Audience = auditString(audience)
	granted, ok := c.Grants[audience]
	if !ok {
		return "", nil, NewError(CodeInvalidTarget, "the client is not granted the requested audience")
	}
	scopes := granted
	if req.scope != "" {
		// Parsed on the stack: a request for the scopes granted, or for
		// one of them (the usual ones), is answered with the client's
		// own and allocates nothing.
		var local [8]string
		asked, err := appendScopes(local[:0], req.scope)
		if err != nil {
			return "", nil, NewError(CodeInvalidScope, "scope is malformed (RFC 6749 section 3.3)")
		}
		if !granted.HasAll(asked) {
			ev.Scopes = slices.Clone(asked)
			return "", nil, NewError(CodeInvalidScope, "requested scope is not granted to the client for this audience")
		}
		if scopes = runOf(granted, asked); scopes == nil {
			scopes = slices.Clone(asked)
		}
	}
	ev.Scopes = scopes
	return audience, scopes, nil
}

// runOf returns the run of consecutive scopes of granted equal to asked,
// capped so that an append cannot reach the rest, or nil if there is
// none.
func runOf(granted, asked Scopes) Scopes {
	for i := 0; i+len(asked) <= len(granted); i++ {
		if run := granted[i : i+len(asked) : i+len(asked)]; slices.Equal(run, asked) {
			return run
		}
	}
	return nil
}

// mint signs a token for c and writes the response body into *bp.
func (h *TokenHandler) mint(ctx context.Context, req *tokenRequest, c *Client, audience string, scopes Scopes, ev *AuditEvent, bp *[]byte) ([]byte, error) {
	signer, err := h.currentSigner(ctx)
	if err != nil {
		return nil, err
	}
	jti, err := newJTI()
	if err != nil {
		return nil, fmt.Errorf("m2mauth: token id: %w", err)
	}
	ev.JTI = jti

	ttl := h.cfg.TokenTTL
	if c.TokenTTL > 0 {
		ttl = min(c.TokenTTL, h.cfg.MaxTokenTTL)
	}
	ttlSeconds := max(int64(ttl/time.Second), 1)
	claims := tokenClaims{
		issuer:   h.cfg.Issuer,
		clientID: c.ID,
		audience: audience,
		jti:      jti,
		scope:    scopes.String(),
		issuedAt: req.now,
		expiry:   req.now.Add(time.Duration(ttlSeconds) * time.Second),
	}

	// The claims JSON goes at the start of the buffer and the response
	// after it, so the token is signed straight into the response.
	buf := (*bp)[:0]
	buf = appendClaimsJSON(buf, &claims)
	n := len(buf)
	buf = append(buf, `{"access_token":"`...)
	start := len(buf)
	if buf, err = signer.appendToken(buf, buf[:n]); err != nil {
		return nil, err
	}
	if len(buf)-start > maxTokenLen {
		// No Validator would take it (nor, behind their header limits,
		// many servers): refused before the client is handed a token
		// that fails everywhere.
		return nil, NewError(CodeInvalidScope, "the token for the scope asked would be longer than validators accept ("+strconv.Itoa(maxTokenLen)+" bytes); ask for fewer scopes")
	}
	buf = append(buf, `","token_type":"Bearer","expires_in":`...)
	buf = strconv.AppendInt(buf, ttlSeconds, 10)
	if claims.scope != "" {
		buf = append(buf, `,"scope":`...)
		buf = appendJSONString(buf, claims.scope)
	}
	buf = append(buf, '}')
	*bp = buf
	ev.Type = EventTokenIssued
	return buf[n:], nil
}

// parse reads the body and the Authorization header into req. Parameters
// in the URL query are never read.
func (h *TokenHandler) parse(r *http.Request, req *tokenRequest, bp *[]byte) error {
	isJSON, err := bodyFormat(r.Header["Content-Type"])
	if err != nil {
		return err
	}
	body, err := readBody(r, h.cfg.MaxBodyBytes, bp)
	if err != nil {
		return err
	}
	if isJSON {
		err = parseJSONParams(body, req)
	} else {
		err = parseFormParams(string(body), req)
	}
	if err != nil {
		return err
	}
	return parseBasic(r.Header["Authorization"], &req.cred)
}

// bodyFormat accepts exactly one Content-Type of
// application/x-www-form-urlencoded or application/json, with at most a
// UTF-8 charset parameter.
func bodyFormat(values []string) (isJSON bool, err error) {
	if len(values) != 1 {
		return false, NewError(CodeInvalidRequest, "Content-Type must be application/x-www-form-urlencoded or application/json")
	}
	ct := values[0]
	switch ct {
	case "application/x-www-form-urlencoded":
		return false, nil
	case "application/json":
		return true, nil
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err == nil {
		for k, v := range params {
			if k != "charset" || !strings.EqualFold(v, "utf-8") {
				err = errors.New("unsupported media type parameter")
			}
		}
	}
	if err == nil {
		switch mt {
		case "application/x-www-form-urlencoded":
			return false, nil
		case "application/json":
			return true, nil
		}
	}
	return false, NewError(CodeInvalidRequest, "Content-Type must be application/x-www-form-urlencoded or application/json")
}

// readBody reads the whole body into *bp, refusing more than limit bytes
// with 413.
func readBody(r *http.Request, limit int64, bp *[]byte) ([]byte, error) {
	tooLarge := func() error {
		e := NewError(CodeInvalidRequest, "request body too large")
		e.Status = http.StatusRequestEntityTooLarge
		return e
	}
	if r.ContentLength > limit {
		return nil, tooLarge()
	}
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	buf := (*bp)[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			*bp = buf
			return nil, tooLarge()
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			*bp = buf
			return nil, WrapError(CodeInvalidRequest, "could not read the request body", err)
		}
	}
	*bp = buf
	return buf, nil
}

// param stores the value of a parameter the request's endpoint
// recognises in req, refusing a repeated one (RFC 6749 §3.2, RFC 7009
// §2.1 and RFC 7662 §2.1 use the same encoding) but "resource", which
// RFC 8707 §2 lets a client repeat. Unrecognised parameters, and any
// sent without a value, are ignored (RFC 6749 §3.1).
func (req *tokenRequest) param(name, value string, seen *uint8) error {
	var dst *string
	var bit uint8
	token := req.endpoint == endpointToken
	switch {
	case name == "client_id":
		dst, bit = &req.cred.id, 1
	case name == "client_secret":
		dst, bit = &req.cred.secret, 2
	case token && name == "grant_type":
		dst, bit = &req.grantType, 4
	case token && name == "scope":
		dst, bit = &req.scope, 8
	case token && name == "audience":
		dst, bit = &req.audience, 16
	case token && name == "resource":
		dst, bit = &req.resource, 32
	case !token && name == "token":
		dst, bit = &req.token, 64
	case !token && name == "token_type_hint":
		dst, bit = &req.tokenTypeHint, 128
	default:
		return nil
	}
	if value == "" {
		// A parameter sent without a value is treated as omitted
		// (RFC 6749 §3.1), so it is not a repeat of one with a value.
		return nil
	}
	if *seen&bit != 0 {
		if bit == 32 {
			// "resource" may be repeated (RFC 8707 §2); a token here
			// is for one resource, which audience checks.
			req.manyResources = req.manyResources || value != *dst
			return nil
		}
		return NewError(CodeInvalidRequest, "parameter "+name+" is repeated")
	}
	*seen |= bit
	*dst = value
	return nil
}

// parseFormParams parses an application/x-www-form-urlencoded body.
func parseFormParams(body string, req *tokenRequest) error {
	var seen uint8
	for body != "" {
		var pair string
		pair, body, _ = strings.Cut(body, "&")
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		key, err1 := formUnescape(k)
		value, err2 := formUnescape(v)
		if err1 != nil || err2 != nil {
			return NewError(CodeInvalidRequest, "malformed form encoding")
		}
		if err := req.param(key, value, &seen); err != nil {
			return err
		}
	}
	return nil
}

// formUnescape is url.QueryUnescape, which looks at s a byte at a time
// even when it has nothing to unescape; such an s, without '%' or '+',
// is answered as it is after two vectorised scans.
func formUnescape(s string) (string, error) {
	if strings.IndexByte(s, '%') < 0 && strings.IndexByte(s, '+') < 0 {
		return s, nil
	}
	return url.QueryUnescape(s)
}

// parseJSONParams parses a JSON object whose values are all strings, with
// no repeated keys and nothing after it.
func parseJSONParams(body []byte, req *tokenRequest) error {
	bad := func(desc string) error { return NewError(CodeInvalidRequest, desc) }
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return bad("body must be a JSON object")
	}
	var seen uint8
	names := make(map[string]bool)
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return bad("malformed JSON")
		}
		name := t.(string) // object keys are always strings
		t, err = dec.Token()
		if err != nil {
			return bad("malformed JSON")
		}
		value, ok := t.(string)
		if !ok {
			return bad("parameter values must be JSON strings")
		}
		// A repeated parameter is named; any other repeated member is
		// not, as its name is the client's text.
		if err := req.param(name, value, &seen); err != nil {
			return err
		}
		if names[name] {
			return bad("a member of the JSON object is repeated")
		}
		names[name] = true
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('}') {
		return bad("malformed JSON")
	}
	if _, err := dec.Token(); err != io.EOF {
		return bad("unexpected data after the JSON object")
	}
	return nil
}

// audience picks the token's audience from "audience", its RFC 8707 alias
// "resource", or the default.
func (h *TokenHandler) audience(req *tokenRequest) (string, error) {
	aud := req.audience
	if req.manyResources {
		return "", NewError(CodeInvalidTarget, "a token is issued for one resource; request one token per resource (RFC 8707 section 2)")
	}
	if req.resource != "" {
		u, err := url.Parse(req.resource)
		if err != nil || !u.IsAbs() || u.Fragment != "" || strings.Contains(req.resource, "#") {
			return "", NewError(CodeInvalidTarget, "resource must be an absolute URI without a fragment (RFC 8707 section 2)")
		}
		if aud != "" && aud != req.resource {
			return "", NewError(CodeInvalidRequest, "audience and resource name different targets")
		}
		aud = req.resource
	}
	if aud == "" {
		aud = h.cfg.DefaultAudience
	}
	if aud == "" {
		return "", NewError(CodeInvalidRequest, "missing audience")
	}
	return aud, nil
}

// fail answers with the protocol error for err, audits the refusal and
// logs internal causes. It returns the response's status code.
func (h *TokenHandler) fail(w http.ResponseWriter, r *http.Request, ev *AuditEvent, err error) int {
	e := asError(err)
	if errors.Is(r.Context().Err(), context.Canceled) && (e.Code == CodeServerError ||
		e.Code == CodeTemporarilyUnavailable && e.Status != http.StatusTooManyRequests) {
		// The caller went away: a store or limiter call it interrupted
		// reports the cancellation as its own failure, which it is not.
		// An answer reached without such a call (a refused secret, a
		// rate limit) stays what it is, audited and counted as such.
		e = &Error{Code: CodeTemporarilyUnavailable, Description: "the request was canceled", Status: http.StatusServiceUnavailable}
		ev.Reason = ReasonCanceled
	}
	if e.Code == CodeServerError {
		h.cfg.Logger.ErrorContext(r.Context(), "m2mauth: request failed", "error", err)
	}
	if e.Code == CodeInvalidClient {
		// RFC 6749 §5.2: 401 with a challenge for the scheme the client
		// used; we also advertise Basic when it sent no credentials.
		w.Header().Set("WWW-Authenticate", h.challenge)
	}
	if e.Status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", http.MethodPost)
	}
	ev.Error = e.Code
	var retry retryLater
	if errors.As(err, &retry) {
		w.Header().Set("Retry-After", strconv.FormatInt(retryAfterSeconds(retry.wait), 10))
		if ev.Reason == "" && e.Status == http.StatusServiceUnavailable {
			ev.Reason = ReasonOverloaded
		}
	}
	switch {
	case e.Status == http.StatusTooManyRequests:
		ev.Type = EventRateLimited
	case e.Code == CodeInvalidClient:
		ev.Type = EventAuthFailed
	case e.Code == CodeInvalidScope:
		ev.Type = EventScopeDenied
	case e.Code == CodeInvalidTarget:
		ev.Type = EventAudienceDenied
	default:
		ev.Type = EventRequestRejected
	}
	if ev.Reason == "" {
		ev.Reason = e.Description
	}
	writeError(w, e)
	h.cfg.Auditor.Audit(r.Context(), *ev)
	return e.Status
}

// enter waits, up to StoreTimeout, for one of the MaxConcurrentRequests
// turns.
func (h *TokenHandler) enter(ctx context.Context) error {
	select {
	case h.inflight <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(h.cfg.StoreTimeout)
	defer t.Stop()
	select {
	case h.inflight <- struct{}{}:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	return unavailable(ctx, "the server is busy", context.DeadlineExceeded)
}

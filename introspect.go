package m2mauth

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// IntrospectionConfig holds the tunables of an [IntrospectionHandler].
// The zero value is a working configuration.
type IntrospectionConfig struct {
	// Revocations is checked for every introspected token: a token it
	// says is revoked is inactive. When it returns an error (its
	// snapshot is stale) the request is answered 503
	// temporarily_unavailable, never active. Default: none, and only the
	// client store is consulted: a token is inactive when its client is
	// disabled or deleted or its tokens were revoked
	// ([Client.TokensRevokedAt]), but single revoked tokens and the
	// store-wide watermark ([Revoker.RevokeAllTokens]) go unseen. Hosts
	// that revoke tokens should set it.
	Revocations RevocationSource
	// Rate is how many introspection requests per second one calling
	// client may make on average; more are refused with 429 and
	// Retry-After. Default: 20.
	Rate float64
	// Burst is how many introspection requests one calling client may
	// make at once, above Rate. Default: 40.
	Burst int
}

// Reasons given in [AuditEvent.Reason] for an [EventTokenIntrospected].
const (
	// ReasonActive: the token was answered active.
	ReasonActive = "active"
	// ReasonInactive: the token was answered inactive.
	ReasonInactive = "inactive"
	// ReasonNotAllowed: the token verified, but the caller may not
	// introspect it, so it was answered inactive (RFC 7662 §2.2).
	ReasonNotAllowed = "not_allowed"
)

// IntrospectionHandler is the token introspection endpoint (RFC 7662) of
// a [TokenHandler], made by [TokenHandler.IntrospectionHandler]. Mount it
// with
//
//	mux.Handle("/oauth/introspect", ih)
//
// and publish it with
// [AuthorizationServerMetadataConfig.IntrospectionEndpoint].
//
// It shares everything but its last step with the token endpoint, as
// [RevocationHandler] does: POST over TLS, parameters from the body only,
// the same client authentication and failed-authentication limiter, the
// in-flight bound, StoreTimeout, RequireAudit, Auditor and Logger. A
// request without client credentials is 401 invalid_client (RFC 7662 §2.1).
// Each calling client may make Rate requests per second (Burst at once);
// beyond that it gets 429 with Retry-After and an [EventRateLimited].
//
// The "token" parameter is required and "token_type_hint" is ignored
// (RFC 7662 §2.1). A caller whose [Client.CanIntrospect] is set may
// introspect any token; any other caller only tokens whose audience
// includes its own client id. The answer is {"active":false} for a token
// the caller may not introspect (RFC 7662 §2.2: an error there would tell
// the caller that the token is genuine), for one
// that does not verify with the token handler's keys and issuer, has
// expired (by the handler's clock, without leeway), is not yet valid
// (its nbf more than the validator's default leeway ahead, RFC 7519
// §4.1.5: a token's nbf is when it was issued, by the clock of the
// replica that issued it, which may run ahead of this one), is revoked (by
// IntrospectionConfig.Revocations, or its client's
// [Client.TokensRevokedAt]), or whose client is disabled or no longer
// exists; else it is active, with the members of RFC 7662 §2.2: active,
// scope (when the token has one), client_id, token_type ("Bearer"), exp,
// iat, nbf, sub, aud, iss and jti. Every answer is application/json with
// Cache-Control: no-store and Pragma: no-cache (RFC 7662 §2.2). When the
// client store or the revocations cannot be read the answer is 503 or
// 500, never active.
//
// Each introspection is audited as an [EventTokenIntrospected] naming the
// caller, the token's jti when it verified, and [ReasonActive],
// [ReasonInactive] or [ReasonNotAllowed]; never the token. An IntrospectionHandler is safe for
// concurrent use.
type IntrospectionHandler struct {
	h     *TokenHandler
	v     *Validator
	revs  RevocationSource // nil: not consulted
	limit *callerLimiter
}

// maxRateCallers bounds the calling clients whose request rates a
// callerLimiter (an introspection or revocation endpoint's) remembers.
const maxRateCallers = 10000

// IntrospectionHandler returns the introspection endpoint of h, which
// finds the clients of introspected tokens in h's client store. It checks
// cfg now.
func (h *TokenHandler) IntrospectionHandler(cfg IntrospectionConfig) (*IntrospectionHandler, error) {
	if err := callerRate("IntrospectionConfig.Rate", "IntrospectionConfig.Burst", &cfg.Rate, &cfg.Burst, 20, 40); err != nil {
		return nil, err
	}
	v, err := h.ownValidator(0, 0)
	if err != nil {
		return nil, err
	}
	return &IntrospectionHandler{
		h:     h,
		v:     v,
		revs:  cfg.Revocations,
		limit: newCallerLimiter(cfg.Rate, cfg.Burst, h.cfg.Now),
	}, nil
}

// ServeHTTP answers one introspection request.
func (ih *IntrospectionHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ih.h.serve(w, r, endpointIntrospection, nil, ih, nil)
}

func (ih *IntrospectionHandler) serveTimed(w http.ResponseWriter, r *http.Request, t requestTimer) {
	ih.h.serve(w, r, endpointIntrospection, nil, ih, t)
}

func (ih *IntrospectionHandler) wallClock() bool { return ih.h.realClock }

// ReasonIntrospectionRate is the Reason of the rate_limited event of an
// introspection refused because its caller exceeded
// [IntrospectionConfig].Rate: a busy caller, not failed authentications.
const ReasonIntrospectionRate = "introspection_rate"

// introspect is the introspection endpoint's own step for an
// authenticated caller c.
func (ih *IntrospectionHandler) introspect(ctx context.Context, req *tokenRequest, c *Client, ev *AuditEvent, bp *[]byte) ([]byte, error) {
	if wait := ih.limit.take(c.ID); wait > 0 {
		ev.Reason = ReasonIntrospectionRate
		e := WrapError(CodeTemporarilyUnavailable, "too many introspection requests; retry later", retryLater{wait})
		e.Status = http.StatusTooManyRequests
		return nil, e
	}
	if req.token == "" {
		return nil, NewError(CodeInvalidRequest, "missing token")
	}
	inactive := func() ([]byte, error) {
		ev.Type, ev.Reason = EventTokenIntrospected, ReasonInactive
		*bp = append((*bp)[:0], `{"active":false}`...)
		return *bp, nil
	}
	claims, err := ih.v.Validate(ctx, req.token)
	if err != nil {
		if asError(err).Code == CodeServerError {
			return nil, err
		}
		return inactive()
	}
	ev.JTI = auditString(claims.ID)
	if !c.CanIntrospect && !claims.Audience.Contains(c.ID) {
		// Inactive to this caller (RFC 7662 §2.2), as a forged token is:
		// an error would tell it which tokens are genuine.
		body, err := inactive()
		ev.Reason = ReasonNotAllowed
		return body, err
	}
	active, err := ih.active(ctx, req.now, claims, c)
	if err != nil {
		return nil, err
	}
	if !active {
		return inactive()
	}
	ev.Type, ev.Reason = EventTokenIntrospected, ReasonActive
	*bp = appendIntrospection((*bp)[:0], claims)
	return *bp, nil
}

// active reports whether the verified token of claims is active at now:
// not expired, not revoked, and of a client that still exists and is
// enabled. caller is the authenticated caller, which need not be looked
// up again when the token is its own.
func (ih *IntrospectionHandler) active(ctx context.Context, now time.Time, claims *Claims, caller *Client) (bool, error) {
	if !now.Before(claims.Expiry.Time()) {
		// The validator tolerates skew with other servers' clocks; here
		// only ours counts (RFC 7519 §4.1.4).
		return false, nil
	}
	iat := claims.IssuedAt.Time()
	if ih.revs != nil {
		revs, err := ih.revs.CurrentRevocations()
		if err != nil {
			e := WrapError(CodeTemporarilyUnavailable, "revocations are unavailable; retry later", errors.Join(retryLater{time.Second}, err))
			e.Status = http.StatusServiceUnavailable
			return false, e
		}
		if revs.Revoked(claims.ClientID, claims.ID, iat) {
			return false, nil
		}
	}
	owner := caller
	if claims.ClientID != caller.ID {
		sctx, cancel := context.WithTimeout(ctx, ih.h.cfg.StoreTimeout)
		defer cancel()
		c, err := ih.h.auth.client(sctx, claims.ClientID)
		switch {
		case errors.Is(err, ErrClientNotFound):
			return false, nil
		case err != nil:
			return false, unavailable(sctx, "the client store is unavailable", err)
		}
		owner = c
	}
	if owner.Disabled || owner.Public {
		return false, nil
	}
	if w := owner.TokensRevokedAt; !w.IsZero() && iat.Unix() <= w.Unix() {
		return false, nil
	}
	return true, nil
}

// appendIntrospection appends the RFC 7662 §2.2 answer for the active
// token of c, members in the order of that section.
func appendIntrospection(dst []byte, c *Claims) []byte {
	dst = append(dst, `{"active":true`...)
	if len(c.Scopes) > 0 {
		dst = append(dst, `,"scope":`...)
		dst = appendJSONString(dst, c.Scopes.String())
	}
	dst = append(dst, `,"client_id":`...)
	dst = appendJSONString(dst, c.ClientID)
	dst = append(dst, `,"token_type":"Bearer","exp":`...)
	dst = strconv.AppendInt(dst, c.Expiry.Time().Unix(), 10)
	dst = append(dst, `,"iat":`...)
	dst = strconv.AppendInt(dst, c.IssuedAt.Time().Unix(), 10)
	if c.NotBefore != nil {
		dst = append(dst, `,"nbf":`...)
		dst = strconv.AppendInt(dst, c.NotBefore.Time().Unix(), 10)
	}
	dst = append(dst, `,"sub":`...)
	dst = appendJSONString(dst, c.Subject)
	dst = append(dst, `,"aud":`...)
	if len(c.Audience) == 1 {
		dst = appendJSONString(dst, c.Audience[0])
	} else {
		dst = append(dst, '[')
		for i, a := range c.Audience {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONString(dst, a)
		}
		dst = append(dst, ']')
	}
	dst = append(dst, `,"iss":`...)
	dst = appendJSONString(dst, c.Issuer)
	dst = append(dst, `,"jti":`...)
	dst = appendJSONString(dst, c.ID)
	return append(dst, '}')
}

// callerRate checks the configured rate and burst of a callerLimiter,
// named rateName and burstName, and sets the defaults for zero values.
func callerRate(rateName, burstName string, rate *float64, burst *int, defRate float64, defBurst int) error {
	switch {
	case *rate == 0:
		*rate = defRate
	case !(*rate > 0) || math.IsInf(*rate, 1):
		return fmt.Errorf("m2mauth: %s %v must be positive and finite", rateName, *rate)
	}
	switch {
	case *burst == 0:
		*burst = defBurst
	case *burst < 0:
		return fmt.Errorf("m2mauth: %s must be positive", burstName)
	}
	return nil
}

// callerLimiter is a token bucket of requests per calling client, in
// memory. It remembers at most max callers: when full, it forgets those
// whose buckets have refilled and, if that frees less than an eighth of
// max, arbitrary others until it does, so that the next new callers find
// room without another pass over them all.
type callerLimiter struct {
	rate  float64 // requests earned per second
	burst float64
	max   int
	// now is the clock, read under mu: requests stamped when they
	// arrived reach the limiter out of that order (one waited for a
	// turn or a database), and a bucket must not earn the time between
	// two stamps twice.
	now func() time.Time

	mu      sync.Mutex
	callers map[string]callerBucket
}

type callerBucket struct {
	tokens float64 // at time at
	at     int64   // unix nanoseconds
}

func newCallerLimiter(rate float64, burst int, now func() time.Time) *callerLimiter {
	return &callerLimiter{rate: rate, burst: float64(burst), max: maxRateCallers, now: now, callers: make(map[string]callerBucket)}
}

// level returns the requests b holds at now.
func (l *callerLimiter) level(b callerBucket, now int64) float64 {
	elapsed := max(now-b.at, 0) // a clock stepping back earns nothing
	return min(b.tokens+float64(elapsed)*l.rate/1e9, l.burst)
}

// take takes one request for id. It returns zero when it did, and how
// long to wait before the next one will be granted when it did not.
func (l *callerLimiter) take(id string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.now().UnixNano()
	b, ok := l.callers[id]
	if ok {
		b.tokens = l.level(b, n)
	} else {
		if len(l.callers) >= l.max {
			l.evict(n)
		}
		b.tokens = l.burst
	}
	b.at = n
	if b.tokens < 1 {
		l.callers[id] = b
		wait := time.Duration((1 - b.tokens) / l.rate * 1e9)
		return max(wait, time.Millisecond)
	}
	b.tokens--
	l.callers[id] = b
	return 0
}

// give returns the request id took, which did not happen after all.
func (l *callerLimiter) give(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b, ok := l.callers[id]; ok {
		b.tokens = min(b.tokens+1, l.burst)
		l.callers[id] = b
	}
}

// evict makes room for an eighth of max more callers, at least one.
// l.mu is held.
func (l *callerLimiter) evict(now int64) {
	for id, b := range l.callers {
		if l.level(b, now) >= l.burst {
			delete(l.callers, id)
		}
	}
	keep := min(l.max-1, l.max-l.max/8)
	for id := range l.callers {
		if len(l.callers) <= keep {
			break
		}
		delete(l.callers, id)
	}
}

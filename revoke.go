package m2mauth

import (
	"context"
	"errors"
	"net/http"
)

// ReasonForeignToken is the Reason of the request_rejected event of a
// revocation request that names a valid token issued to another client.
// Such a request is answered 200 like any other, and revokes nothing: a
// client may revoke only its own tokens (RFC 7009 §2.1).
const ReasonForeignToken = "foreign_token"

// RevocationHandler is the token revocation endpoint (RFC 7009) of a
// [TokenHandler], made by [TokenHandler.RevocationHandler]. Mount it with
//
//	mux.Handle("/oauth/revoke", rh)
//
// and publish it with [AuthorizationServerMetadataConfig.RevocationEndpoint].
//
// It shares everything but its last step with the token endpoint: the
// request must be a POST over TLS (or from a loopback address, unless
// AllowInsecureHTTP), its parameters come from the body (form-encoded or,
// as at the token endpoint, a JSON object of strings), never from the URL
// query, and the client authenticates exactly as it does for a token,
// against the same limiter: failed authentications here count there too.
// The in-flight bound, StoreTimeout, RequireAudit, the Auditor and the
// Logger are the token handler's.
//
// The "token" parameter is required; "token_type_hint" is only a hint
// (RFC 7009 §2.1), and since every token this server issues is an access
// token, every hint leads to the same search. The token is verified with
// the token handler's keys and issuer, tolerating up to [RevocationGrace]
// of clock skew on its expiry, the most any [Validator] tolerates. A
// valid token of the calling client is put on the [Revoker]'s deny-list
// and the request audited as [EventTokenRevoked] with the token's jti.
// A token that does not verify, has expired, or belongs to another client
// revokes nothing and is answered 200 all the same (RFC 7009 §2.2), with
// an [EventRequestRejected] event whose Reason is [ReasonForeignToken]
// or why it did not verify (a ReasonToken… constant).
//
// Each client may revoke [TokenHandlerConfig].RevocationRate tokens a
// second (RevocationBurst at once); a revocation beyond that is answered
// 429 temporarily_unavailable with Retry-After, audited as an
// [EventRateLimited] with [ReasonRevocationRate], and revokes nothing: the
// token stays valid, as after a 503 (RFC 7009 §2.2.1). Every valid token
// of the caller's own counts, one revoked before included; tokens that
// revoke nothing (invalid, expired, another client's) and revocations
// the store refuses do not (one that timed out may still be made, and
// counts). The rate is kept in memory, per
// process: N replicas let a client revoke N times as fast.
//
// Success is 200 with the body {} and Cache-Control: no-store. When the
// Revoker fails the token is not revoked, and the answer is 503
// temporarily_unavailable with Retry-After if it did not answer within
// StoreTimeout, else 500 server_error (RFC 7009 §2.2.1); the client
// should try again. A RevocationHandler is safe for concurrent use.
type RevocationHandler struct {
	h     *TokenHandler
	rev   Revoker
	v     *Validator
	limit *callerLimiter
}

// ReasonRevocationRate is the Reason of the rate_limited event of a
// revocation refused because its client exceeded
// [TokenHandlerConfig].RevocationRate: a busy client, not failed
// authentications.
const ReasonRevocationRate = "revocation_rate"

// RevocationHandler returns the revocation endpoint of h, which records
// revocations in rev (normally the store h reads clients from).
// Validators see a revocation when their [RevocationSource], reading the
// same store, next refreshes. For a [RevocationPoller] in the same
// process to see it before the client is answered, pass a Revoker whose
// RevokeToken calls the poller's Refresh once the store has recorded
// the revocation (the example does).
func (h *TokenHandler) RevocationHandler(rev Revoker) (*RevocationHandler, error) {
	if rev == nil {
		return nil, errors.New("m2mauth: nil Revoker")
	}
	// A token expired within the longest leeway a validator may allow is
	// still accepted somewhere, so it may still be revoked. A token is
	// verified once, so it is not cached.
	v, err := h.ownValidator(RevocationGrace, -1)
	if err != nil {
		return nil, err
	}
	return &RevocationHandler{h: h, rev: rev, v: v,
		limit: newCallerLimiter(h.cfg.RevocationRate, h.cfg.RevocationBurst, h.cfg.Now)}, nil
}

// ServeHTTP answers one revocation request.
func (rh *RevocationHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rh.h.serve(w, r, endpointRevocation, rh, nil, nil)
}

func (rh *RevocationHandler) serveTimed(w http.ResponseWriter, r *http.Request, t requestTimer) {
	rh.h.serve(w, r, endpointRevocation, rh, nil, t)
}

func (rh *RevocationHandler) wallClock() bool { return rh.h.realClock }

// revoke is the revocation endpoint's own step for an authenticated
// client c: verify the token, check that it is c's, and revoke it.
func (rh *RevocationHandler) revoke(ctx context.Context, req *tokenRequest, c *Client, ev *AuditEvent, bp *[]byte) ([]byte, error) {
	if req.token == "" {
		return nil, NewError(CodeInvalidRequest, "missing token")
	}
	ok := append((*bp)[:0], "{}"...)
	*bp = ok
	claims, err := rh.v.Validate(ctx, req.token)
	if err != nil {
		if asError(err).Code == CodeServerError {
			// The keys are unavailable: nothing can be told about the
			// token, and it was not revoked.
			return nil, err
		}
		// RFC 7009 §2.2: an invalid token needs no revoking.
		ev.Type, ev.Reason = EventRequestRejected, RejectionReason(err)
		return ok, nil
	}
	ev.JTI = auditString(claims.ID)
	if claims.ClientID != c.ID {
		ev.Type, ev.Reason = EventRequestRejected, ReasonForeignToken
		return ok, nil
	}
	// Only what may grow the deny-list counts: a revocation of a valid
	// token of the caller's own, unless the store fails to make it.
	if wait := rh.limit.take(c.ID); wait > 0 {
		ev.Reason = ReasonRevocationRate
		e := WrapError(CodeTemporarilyUnavailable, "too many revocations; retry later", retryLater{wait})
		e.Status = http.StatusTooManyRequests
		return nil, e
	}
	sctx, cancel := context.WithTimeout(ctx, rh.h.cfg.StoreTimeout)
	defer cancel()
	if err := rh.rev.RevokeToken(sctx, c.ID, claims.ID, claims.Expiry.Time()); err != nil {
		if sctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			// The store refused: nothing was revoked. A write that
			// timed out may still be made, so it counts.
			rh.limit.give(c.ID)
		}
		return nil, unavailable(sctx, "the revocation store is unavailable", err)
	}
	ev.Type = EventTokenRevoked
	return ok, nil
}

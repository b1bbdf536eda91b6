package m2mauth

import (
	"context"
	"errors"
	"time"
)

// Tokens are stateless, so taking one back means telling every validator
// which ones to refuse. m2mauth keeps that list small:
//
//   - a watermark per client: every token issued to the client up to a
//     moment is revoked (disabling, deleting and "revoke all its tokens"
//     set it);
//   - a store-wide watermark: every token issued up to a moment;
//   - a deny-list of single token ids (jti), each kept only until the
//     token would have expired anyway.
//
// A [Revoker] (memstore, sqlstore) records revocations; a
// [RevocationSource] hands validators an in-memory snapshot of them, so a
// validation never waits for I/O.

// RevocationGrace is how long past a token's expiry its revocation is
// kept: the longest leeway a [Validator] may allow on exp.
const RevocationGrace = maxLeeway

// Revocations is a snapshot of what has been revoked. Values handed out
// by a [RevocationSource] are shared and must not be modified.
//
// Token timestamps (iat) have whole seconds, so a watermark revokes every
// token issued up to the end of its second: a token whose iat is at or
// before the watermark's Unix second is revoked. The [TokenHandler] waits
// out the rest of that second before it issues a client a new token, so
// a fresh token is never born revoked by its client's watermark. It does
// not know the store-wide watermark ([Revoker.RevokeAllTokens]): tokens
// issued in the rest of that second are revoked with the others, and
// their clients must ask again.
type Revocations struct {
	// Version identifies this state; every change to the revocations
	// yields a greater one, never negative, and no Version is given to
	// two states. A store that forgets its revocations when it restarts
	// must start above the Versions it published before, and so must
	// one restored from a backup at its next change (memstore and
	// sqlstore count from the clock): a [RemoteRevocations] refuses a
	// Version lower than one it has seen, and a [RevocationPoller]
	// keeps what it holds until the Version passes it.
	Version int64
	// Before is the store-wide watermark; zero when none is set.
	Before time.Time
	// Clients maps client ids to their watermarks.
	Clients map[string]time.Time
	// Tokens maps the jti of each revoked token to the token's expiry.
	Tokens map[string]time.Time
}

// Revoked reports whether the token of clientID with id jti, issued at
// issuedAt, is revoked. A nil r revokes nothing. It does not allocate.
func (r *Revocations) Revoked(clientID, jti string, issuedAt time.Time) bool {
	if r == nil {
		return false
	}
	iat := issuedAt.Unix()
	if !r.Before.IsZero() && iat <= r.Before.Unix() {
		return true
	}
	if w, ok := r.Clients[clientID]; ok && iat <= w.Unix() {
		return true
	}
	_, ok := r.Tokens[jti]
	return ok
}

// Len returns the number of watermarks and revoked token ids in r.
func (r *Revocations) Len() int {
	if r == nil {
		return 0
	}
	n := len(r.Clients) + len(r.Tokens)
	if !r.Before.IsZero() {
		n++
	}
	return n
}

// Pruned returns a copy of r without the entries that can no longer
// revoke a valid token at now: token ids whose expiry is more than
// [RevocationGrace] past, and watermarks older than [MaxClientTokenTTL]
// plus RevocationGrace (every token issued before them has expired).
// The Version is kept.
func (r *Revocations) Pruned(now time.Time) *Revocations {
	out := &Revocations{Clients: make(map[string]time.Time), Tokens: make(map[string]time.Time)}
	if r == nil {
		return out
	}
	out.Version = r.Version
	if WatermarkLive(r.Before, now) {
		out.Before = r.Before
	}
	for id, at := range r.Clients {
		if WatermarkLive(at, now) {
			out.Clients[id] = at
		}
	}
	for jti, exp := range r.Tokens {
		if DenyLive(exp, now) {
			out.Tokens[jti] = exp
		}
	}
	return out
}

// WatermarkLive reports whether a watermark set at at can still revoke a
// token that would otherwise be valid at now. Stores drop watermarks for
// which it is false.
func WatermarkLive(at, now time.Time) bool {
	return !at.IsZero() && !now.After(at.Add(MaxClientTokenTTL+RevocationGrace))
}

// DenyLive reports whether the deny-list entry of a token expiring at exp
// must still be kept at now. Stores drop entries for which it is false.
func DenyLive(exp, now time.Time) bool {
	return !now.After(exp.Add(RevocationGrace))
}

// Revoker is the optional revocation interface of a [ClientStore]
// (memstore and sqlstore implement it). Every method takes effect for
// every validator whose [RevocationSource] reads this store, within that
// source's refresh interval.
type Revoker interface {
	// RevokeToken puts the token jti of clientID, which expires at exp,
	// on the deny-list until exp plus [RevocationGrace]. Revoking a token
	// twice is not an error.
	RevokeToken(ctx context.Context, clientID, jti string, exp time.Time) error
	// RevokeClientTokens revokes every token issued to clientID until
	// now: it sets the client's watermark (and its TokensRevokedAt). It
	// returns an error wrapping [ErrClientNotFound] for an unknown client.
	// Disabling and deleting a client do the same.
	RevokeClientTokens(ctx context.Context, clientID string) error
	// RevokeAllTokens revokes every token issued until now, for every
	// client: the store-wide watermark. Like every watermark it covers
	// the rest of its second, tokens issued then included (see
	// [Revocations]).
	RevokeAllTokens(ctx context.Context) error
	// Revocations returns the current state, without the entries that
	// can no longer revoke a valid token.
	Revocations(ctx context.Context) (*Revocations, error)
}

// RevocationSource hands a [Validator] the revocations to check every
// token against. CurrentRevocations is called on every validation, so it
// must answer from memory without blocking; it returns an error (wrapping
// [ErrRevocationsStale]) when its snapshot is too old to be relied upon.
type RevocationSource interface {
	CurrentRevocations() (*Revocations, error)
}

// RevocationFeed is where a [RevocationPoller] reads revocations from: a
// store shared by replicas, or another server's published revocation
// list.
type RevocationFeed interface {
	// RevocationsSince returns the current revocations when their
	// Version differs from version, and (nil, nil) when it does not. It
	// should make the unchanged case cheap (one small query or a
	// conditional request).
	RevocationsSince(ctx context.Context, version int64) (*Revocations, error)
}

// ErrRevocationsStale is wrapped by the error of a [RevocationSource]
// whose snapshot could not be refreshed for longer than it may be trusted.
var ErrRevocationsStale = errors.New("m2mauth: revocations are stale")

// Audit event types of revocation and introspection. They name the
// client concerned and, for a single token, its jti; never the token.
const (
	// EventTokenRevoked: a client revoked one of its tokens (RFC 7009).
	EventTokenRevoked AuditEventType = "token_revoked"
	// EventTokensRevoked: a watermark revoked every token of a client
	// (ClientID set) or of every client (ClientID empty) issued until
	// then; Reason says why ("revoke", "disabled", "deleted").
	EventTokensRevoked AuditEventType = "tokens_revoked"
	// EventTokenIntrospected: a client introspected a token (RFC 7662);
	// ClientID is the caller, Reason "active" or "inactive".
	EventTokenIntrospected AuditEventType = "token_introspected"
)

// ReasonTokenRevoked is the Reason of a token_rejected event for a
// revoked token.
const ReasonTokenRevoked = "revoked"

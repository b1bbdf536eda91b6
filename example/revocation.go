package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/m2mauth/m2mauth"
)

// Where serve mounts the revocation side.
const (
	revokePath      = "/oauth/revoke"      // RFC 7009: a client revokes one of its tokens
	introspectPath  = "/oauth/introspect"  // RFC 7662: is this token active?
	revocationsPath = "/oauth/revocations" // the signed revocation list, for resource servers elsewhere
)

// Defaults of -revocation-refresh and -revocation-max-stale.
const (
	defaultRevocationRefresh = 5 * time.Second
	// minRevocationMaxStale is the least default -revocation-max-stale:
	// a short -revocation-refresh makes revocations arrive sooner, not
	// the server give up sooner when its database hiccups.
	minRevocationMaxStale = 30 * time.Second
)

// revocationMaxStale is the default -revocation-max-stale for a
// -revocation-refresh: six polls, and at least 30s.
func revocationMaxStale(refresh time.Duration) time.Duration {
	return max(6*refresh, minRevocationMaxStale)
}

// revocationSource is where serve's validator, its introspection
// endpoint and its revocation list read what has been revoked: an
// in-memory snapshot, so that checking a token does no I/O.
//
// With -db memory it is the memstore itself, which sees a revocation as
// soon as it is made; nothing else can reach that store. With a database
// it is a poller of the store, which every replica sharing the database
// runs: a revocation made on any replica, or by the admin commands, is
// refused everywhere within the refresh interval.
type revocationSource struct {
	m2mauth.RevocationSource
	poller  *m2mauth.RevocationPoller // nil for memory
	refresh time.Duration             // 0 for memory: at once
}

// newRevocationSource returns the revocation source of b. A database's
// poller has read the revocations once when it returns, so the server
// accepts tokens from its first request.
func newRevocationSource(ctx context.Context, b *backend, f *serveFlags, logger *slog.Logger) (*revocationSource, error) {
	if b.mem != nil {
		return &revocationSource{RevocationSource: b.mem}, nil
	}
	p, err := m2mauth.NewRevocationPoller(b.sql, m2mauth.RevocationPollerConfig{
		Interval: f.revocationRefresh,
		MaxStale: f.revocationMaxStale,
		Logger:   logger,
	})
	if err != nil {
		return nil, err
	}
	if err := p.Refresh(ctx); err != nil {
		p.Close()
		return nil, fmt.Errorf("%s: reading the revocations: %w", b.kind, err)
	}
	return &revocationSource{RevocationSource: p, poller: p, refresh: f.revocationRefresh}, nil
}

// close stops the poller, if any.
func (s *revocationSource) close() error {
	if s.poller == nil {
		return nil
	}
	return s.poller.Close()
}

// addCheck adds the poller's readiness check to checks: a replica whose
// snapshot is stale refuses every token, so it leaves the rotation.
func (s *revocationSource) addCheck(checks map[string]func(context.Context) error) {
	if s.poller != nil {
		checks["revocations"] = s.poller.Ping
	}
}

// delay says how soon a revocation reaches serve's validator, for the
// banner and the log.
func (s *revocationSource) delay() string {
	if s.poller == nil {
		return "at once"
	}
	return "within " + s.refresh.String()
}

// revocationHandlers are the endpoints of the revocation side.
type revocationHandlers struct {
	revoke     http.Handler // RFC 7009, any method: it answers 405 itself
	introspect http.Handler // RFC 7662, likewise
	list       http.Handler // GET: the signed revocation list
}

// newRevocationHandlers builds the revocation endpoint of tokens, which
// records revocations in b's store; its introspection endpoint, which
// reads src; and the revocation list of src, signed with keys under
// issuer, which resource servers in other processes poll
// (m2mauth.NewRemoteRevocations).
func newRevocationHandlers(tokens *m2mauth.TokenHandler, b *backend, src *revocationSource, keys m2mauth.KeyProvider, issuer string, logger *slog.Logger) (revocationHandlers, error) {
	rev := b.revoker
	if src.poller != nil {
		rev = refreshingRevoker{rev, src.poller}
	}
	rh, err := tokens.RevocationHandler(rev)
	if err != nil {
		return revocationHandlers{}, err
	}
	ih, err := tokens.IntrospectionHandler(m2mauth.IntrospectionConfig{Revocations: src.RevocationSource})
	if err != nil {
		return revocationHandlers{}, err
	}
	list, err := m2mauth.NewRevocationListHandler(src.RevocationSource, keys, m2mauth.RevocationListConfig{Issuer: issuer, Logger: logger})
	if err != nil {
		return revocationHandlers{}, err
	}
	return revocationHandlers{revoke: rh, introspect: ih, list: list}, nil
}

// refreshingRevoker records a token's revocation, then has the poller
// read it back before the revocation endpoint answers: this server's
// validator, introspection endpoint and revocation list refuse the token
// from the moment its owner is told it is revoked (RFC 7009 §2.2, RFC
// 7662 §2.2), not at the next poll. Other replicas see it at their next
// poll, as before.
type refreshingRevoker struct {
	m2mauth.Revoker
	poller *m2mauth.RevocationPoller
}

// RevokeToken revokes the token and refreshes the poller. The revocation
// stands whether or not the refresh succeeds: a refresh that fails is
// the poller's to report, and its next poll, or its going stale, follows.
func (r refreshingRevoker) RevokeToken(ctx context.Context, clientID, jti string, exp time.Time) error {
	if err := r.Revoker.RevokeToken(ctx, clientID, jti, exp); err != nil {
		return err
	}
	r.poller.Refresh(ctx)
	return nil
}

package memstore

import (
	"context"
	"errors"
	"maps"
	"time"

	"github.com/m2mauth/m2mauth"
)

var (
	_ m2mauth.Revoker          = (*Store)(nil)
	_ m2mauth.RevocationSource = (*Store)(nil)
	_ m2mauth.RevocationFeed   = (*Store)(nil)
)

// maxJTILen bounds the token ids RevokeToken accepts.
const maxJTILen = 255

// minSweep is the number of revocation entries below which writes do not
// sweep out dead ones: a sweep runs when the entries reach twice what the
// last one left, and at least this many.
const minSweep = 1024

// minRepublish is the shortest time between two rebuilds of the published
// snapshot that only drop entries that died: dead entries revoke nothing a
// validator would accept, so keeping them a little longer is harmless, and
// entries dying one by one do not cost a rebuild each.
const minRepublish = time.Minute

// revocations is a Store's revocation state, guarded by Store.mu.
type revocations struct {
	version int64
	before  time.Time            // the store-wide watermark; zero for none
	clients map[string]time.Time // watermarks by client id
	tokens  map[string]time.Time // expiries by jti
	sweepAt int                  // sweep when len(clients)+len(tokens) reaches it
}

// published is the snapshot [Store.CurrentRevocations] hands out. Neither
// it nor its Revocations change once stored.
type published struct {
	r *m2mauth.Revocations
	// until is when the first of r's entries dies; after it, the next
	// read rebuilds r without the dead ones. Zero when r has no entries.
	until time.Time
}

func newRevocations() revocations {
	return revocations{clients: make(map[string]time.Time), tokens: make(map[string]time.Time), sweepAt: minSweep}
}

func emptyPublished() *published {
	return &published{r: &m2mauth.Revocations{Clients: map[string]time.Time{}, Tokens: map[string]time.Time{}}}
}

// RevokeToken puts the token jti of clientID, which expires at exp, on the
// deny-list until exp plus [m2mauth.RevocationGrace]. clientID must be a
// valid client id ([m2mauth.ValidClientID]), though the client need not
// exist (a deleted client's token may be revoked); jti must be 1 to 255
// printable ASCII characters; exp must not be zero. Bad input is an error
// and changes nothing. Revoking a token again is not an error (the later
// expiry is kept), and a token whose deny-list entry would already be dead
// at the Store's clock's now is not stored. It sends no audit event: the
// revocation endpoint (RFC 7009) audits it, with the caller's address.
func (s *Store) RevokeToken(_ context.Context, clientID, jti string, exp time.Time) error {
	switch {
	case !m2mauth.ValidClientID(clientID):
		return errors.New("memstore: revoke token: client id must be 1 to 255 printable ASCII characters")
	case !validJTI(jti):
		return errors.New("memstore: revoke token: token id must be 1 to 255 printable ASCII characters")
	case exp.IsZero():
		return errors.New("memstore: revoke token: zero expiry")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if !m2mauth.DenyLive(exp, now) {
		return nil
	}
	if old, ok := s.rev.tokens[jti]; ok && !exp.After(old) {
		return nil
	}
	s.rev.tokens[jti] = exp
	s.changedLocked(now)
	return nil
}

// RevokeClientTokens revokes every token issued to clientID up to the end
// of the current second of the Store's clock: it sets the client's
// watermark, its TokensRevokedAt and its UpdatedAt. It returns an error
// wrapping [m2mauth.ErrClientNotFound] for an unknown client.
func (s *Store) RevokeClientTokens(ctx context.Context, clientID string) error {
	return s.modify(ctx, clientID, func(c *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		c.TokensRevokedAt = s.watermarkLocked(clientID, now)
		return []m2mauth.AuditEvent{event(now, m2mauth.EventTokensRevoked, clientID, "", "revoke")}, nil
	})
}

// RevokeAllTokens revokes every token issued up to the end of the current
// second of the Store's clock, for every client: the store-wide
// watermark.
func (s *Store) RevokeAllTokens(ctx context.Context) error {
	s.mu.Lock()
	now := s.now()
	if now.After(s.rev.before) {
		s.rev.before = now
	}
	s.changedLocked(now)
	s.mu.Unlock()
	s.audit(ctx, []m2mauth.AuditEvent{event(now, m2mauth.EventTokensRevoked, "", "", "revoke_all")})
	return nil
}

// Revocations returns a copy of the current revocations, the caller's to
// keep, without the entries that can no longer revoke a valid token at the
// Store's clock's now. It never fails.
func (s *Store) Revocations(context.Context) (*m2mauth.Revocations, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rev.pruned(s.now()), nil
}

// RevocationsSince returns what [Store.Revocations] does when the
// revocations' Version differs from version, and (nil, nil) when it does
// not. The Version grows with every change, to at least the clock's Unix
// nanoseconds, so that a Store made again after a restart (which forgets
// what was revoked) starts above every Version the last one published.
func (s *Store) RevocationsSince(_ context.Context, version int64) (*m2mauth.Revocations, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if version == s.rev.version {
		return nil, nil
	}
	return s.rev.pruned(s.now()), nil
}

// CurrentRevocations returns the published snapshot of the revocations,
// shared and not to be modified, for a [m2mauth.Validator] to check every
// token against. It reflects every change that returned before it was
// called, never fails, and neither blocks nor allocates unless something
// changed since the last call: then it rebuilds the snapshot once (in time
// proportional to the number of entries), and so it does, at most once a
// minute, once an entry has died, to drop the dead ones.
func (s *Store) CurrentRevocations() (*m2mauth.Revocations, error) {
	if !s.stale.Load() {
		if p := s.snap.Load(); p.until.IsZero() || !s.clocked || !s.now().After(p.until) {
			return p.r, nil
		}
	}
	return s.publish(), nil
}

// publish rebuilds the published snapshot from the current state, unless
// another caller just did, and returns it.
func (s *Store) publish() *m2mauth.Revocations {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if p := s.snap.Load(); !s.stale.Load() && (p.until.IsZero() || !now.After(p.until)) {
		return p.r
	}
	until := s.rev.sweep(now)
	if next := now.Add(minRepublish); !until.IsZero() && until.Before(next) {
		until = next
	}
	r := &m2mauth.Revocations{
		Version: s.rev.version,
		Before:  s.rev.before,
		Clients: maps.Clone(s.rev.clients),
		Tokens:  maps.Clone(s.rev.tokens),
	}
	s.snap.Store(&published{r: r, until: until})
	s.stale.Store(false)
	if !s.clocked && !until.IsZero() {
		// Real time: the snapshot goes stale when its first entry dies.
		if s.expiry != nil {
			s.expiry.Stop()
		}
		stale := s.stale // not s: a dropped Store is not kept until the timer fires
		s.expiry = time.AfterFunc(until.Sub(now), func() { stale.Store(true) })
	}
	return r
}

// watermarkLocked revokes every token of client id issued until now and
// returns the client's watermark, which never moves back. s.mu must be
// held for writing.
func (s *Store) watermarkLocked(id string, now time.Time) time.Time {
	at := now
	if old := s.rev.clients[id]; old.After(at) {
		at = old
	}
	s.rev.clients[id] = at
	s.changedLocked(now)
	return at
}

// nextVersion returns the Version after v, at now: greater than v, and
// at least the clock's nanoseconds, so that a store made again after a
// restart (which forgets what was revoked) starts above every Version
// the last one published, and readers of a published revocation list
// take its state rather than refuse it as older.
func nextVersion(v int64, now time.Time) int64 {
	return max(v+1, now.UnixNano())
}

// changedLocked records that the revocations changed: a new Version, a
// stale snapshot, and a sweep of dead entries once there are enough of
// them to pay for it. s.mu must be held for writing.
func (s *Store) changedLocked(now time.Time) {
	s.rev.version = nextVersion(s.rev.version, now)
	s.stale.Store(true)
	if len(s.rev.clients)+len(s.rev.tokens) >= s.rev.sweepAt {
		s.rev.sweep(now)
	}
}

// sweep drops the entries that are dead at now, giving their memory back,
// and returns when the first of the remaining ones dies (zero when none
// remain).
func (r *revocations) sweep(now time.Time) time.Time {
	var first time.Time
	dies := func(at time.Time) {
		if first.IsZero() || at.Before(first) {
			first = at
		}
	}
	if !m2mauth.WatermarkLive(r.before, now) {
		r.before = time.Time{}
	} else {
		dies(r.before.Add(m2mauth.MaxClientTokenTTL + m2mauth.RevocationGrace))
	}
	r.clients = sweepMap(r.clients, func(at time.Time) bool { return m2mauth.WatermarkLive(at, now) })
	for _, at := range r.clients {
		dies(at.Add(m2mauth.MaxClientTokenTTL + m2mauth.RevocationGrace))
	}
	r.tokens = sweepMap(r.tokens, func(exp time.Time) bool { return m2mauth.DenyLive(exp, now) })
	for _, exp := range r.tokens {
		dies(exp.Add(m2mauth.RevocationGrace))
	}
	r.sweepAt = max(2*(len(r.clients)+len(r.tokens)), minSweep)
	return first
}

// sweepMap returns m without the entries for which live is false: m
// itself when there are none, else a new map, since a Go map never gives
// back the memory of deleted entries.
func sweepMap(m map[string]time.Time, live func(time.Time) bool) map[string]time.Time {
	dead := 0
	for _, at := range m {
		if !live(at) {
			dead++
		}
	}
	if dead == 0 {
		return m
	}
	out := make(map[string]time.Time, len(m)-dead)
	for k, at := range m {
		if live(at) {
			out[k] = at
		}
	}
	return out
}

// pruned returns a copy of r without the entries dead at now.
func (r *revocations) pruned(now time.Time) *m2mauth.Revocations {
	view := m2mauth.Revocations{Version: r.version, Before: r.before, Clients: r.clients, Tokens: r.tokens}
	return view.Pruned(now)
}

// validJTI reports whether jti is 1 to maxJTILen printable ASCII
// characters.
func validJTI(jti string) bool {
	if jti == "" || len(jti) > maxJTILen {
		return false
	}
	for i := 0; i < len(jti); i++ {
		if jti[i] < 0x20 || jti[i] > 0x7e {
			return false
		}
	}
	return true
}

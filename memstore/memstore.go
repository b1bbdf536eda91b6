// Package memstore provides an in-memory [m2mauth.ClientManager],
// [m2mauth.Revoker] and [m2mauth.KeyStore]: the store for tests, examples
// and single-instance servers whose clients are configured at start-up.
//
// A Store is safe for concurrent use. It never hands out or keeps a
// reference to a Client it shares with a caller: every read returns a deep
// copy and every write stores one, so callers cannot change its state
// behind its back.
//
// A Store is also its own [m2mauth.RevocationSource]: a [m2mauth.Validator]
// given it as its revocation source refuses a revoked token as soon as the
// call that revoked it returns. Nothing is shared between processes; a
// fleet of replicas needs a shared store such as sqlstore.
//
// Given an auditor with [WithAuditor], a Store reports every change made
// through its [m2mauth.ClientManager] and [m2mauth.Revoker] methods;
// [Store] lists the events.
package memstore

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/m2mauth/m2mauth"
)

// Store is an in-memory client store that keeps revocations. The zero
// value is not usable; call [New].
//
// # Concurrency
//
// A Store is safe for concurrent use. Reads of clients share a read lock;
// changes take it exclusively, for a time that does not depend on the
// number of clients or revocations, except for an occasional sweep of dead
// revocations (amortised over the writes that made them). The first
// CurrentRevocations after a change also takes it, to rebuild the
// snapshot in time proportional to the number of revocations.
//
// # Revocations
//
// Every change is immediate within the process: once RevokeToken,
// RevokeClientTokens, RevokeAllTokens, or a SetDisabled, UpdateClient or
// DeleteClient that revokes, returns, [Store.Revocations],
// [Store.RevocationsSince] and [Store.CurrentRevocations] reflect it.
// Every change makes the Version one greater. CurrentRevocations answers
// from an immutable snapshot with two atomic loads and a read of the
// clock, without locking or allocating; the first call after a change
// rebuilds the snapshot, so a burst of revocations costs one rebuild, not
// one each.
//
// The watermark of a client is set to the Store's clock's now by
// [Store.RevokeClientTokens], by SetDisabled(true) (every time, even on a
// client already disabled), by an UpdateClient that turns Disabled on, and
// by DeleteClient; it outlives the client, so tokens issued before a
// deletion stay revoked if the id is registered again. Re-enabling a
// client leaves it: the old tokens stay revoked, and tokens issued from
// the next second on are valid. A client created with a TokensRevokedAt
// gets that watermark (capped at now); UpdateClient leaves TokensRevokedAt
// as stored.
//
// Memory stays bounded by the live entries: token ids whose expiry plus
// [m2mauth.RevocationGrace] has passed, and watermarks older than
// [m2mauth.MaxClientTokenTTL] plus that grace, are dropped when the
// snapshot is rebuilt and, amortised, as more revocations are written.
//
// # Audit events
//
// With [WithAuditor], every successful change sends the auditor the
// events below, after the change is made and before the method returns;
// a call that fails sends none. Each event has the Time of the change
// (the Store's clock, as for UpdatedAt), its Type, the ClientID, the
// SecretID where one is concerned, and a Reason naming the fields whose
// value the call changed, comma-separated in the order of
// [m2mauth.Client]'s fields ("grants", "public", "disabled",
// "token_ttl", "introspect"), or empty when it changed none. No event
// holds a secret, a hash or a token id.
//
//   - CreateClient: [m2mauth.EventClientCreated], Reason naming the
//     fields set to other than their zero value, then one
//     [m2mauth.EventSecretAdded] for each of the client's secrets.
//   - UpdateClient: [m2mauth.EventClientUpdated]; and when Disabled
//     changed, [m2mauth.EventClientDisabled] or [m2mauth.EventClientEnabled]
//     too, with Reason "disabled"; when it turned Disabled on, then
//     [m2mauth.EventTokensRevoked] with Reason "disabled".
//   - AddSecret: [m2mauth.EventSecretAdded].
//   - ExpireSecret: [m2mauth.EventSecretExpiring], Reason "expires_at"
//     when it set a new expiry, "expires_at_removed" when it removed one,
//     empty when the expiry was already as asked.
//   - RemoveSecret: [m2mauth.EventSecretRemoved].
//   - SetDisabled: [m2mauth.EventClientDisabled] or
//     [m2mauth.EventClientEnabled], Reason "disabled" when the client was
//     not already so; when disabling, then [m2mauth.EventTokensRevoked]
//     with Reason "disabled".
//   - DeleteClient: [m2mauth.EventClientDeleted], then
//     [m2mauth.EventTokensRevoked] with Reason "deleted".
//   - RevokeClientTokens: [m2mauth.EventTokensRevoked], Reason "revoke".
//   - RevokeAllTokens: [m2mauth.EventTokensRevoked] with an empty
//     ClientID and Reason "revoke_all".
//   - RevokeToken: none; the revocation endpoint audits it.
//
// The Time of an [m2mauth.EventTokensRevoked] is the watermark it set.
//
// The auditor is called without the Store's lock held, so it may read
// the Store; events of concurrent changes may reach it out of order
// (their Time keeps it).
type Store struct {
	now     func() time.Time
	auditor m2mauth.Auditor // nil for none
	mu      sync.RWMutex
	clients map[string]*m2mauth.Client
	rev     revocations // guarded by mu

	// snap is the snapshot CurrentRevocations hands out; stale is set
	// (with mu held) by every change to rev, and cleared when snap is
	// rebuilt from it (with mu held).
	snap  atomic.Pointer[published]
	stale atomic.Bool
	// clocked is true when the clock is the host's (WithClock): then
	// CurrentRevocations reads it to see dead entries. On the real clock
	// a timer marks the snapshot stale instead, so that a validation
	// reads no clock here.
	clocked bool
	expiry  *time.Timer // guarded by mu

	keys keyring // managed signing keys, under their own lock (keys.go)
}

// Option configures a [Store].
type Option func(*Store)

// WithClock sets the clock used for CreatedAt, UpdatedAt, audit events,
// watermarks, and to tell which revocations are dead. Default: [time.Now].
func WithClock(now func() time.Time) Option {
	return func(s *Store) { s.now, s.clocked = now, true }
}

// WithAuditor sets the auditor that receives an event for every change
// made through the Store's [m2mauth.ClientManager] methods (see [Store]).
// Default: none.
func WithAuditor(a m2mauth.Auditor) Option {
	return func(s *Store) { s.auditor = a }
}

// New returns an empty store.
func New(opts ...Option) *Store {
	s := &Store{now: time.Now, clients: make(map[string]*m2mauth.Client), rev: newRevocations()}
	for _, o := range opts {
		o(s)
	}
	s.snap.Store(emptyPublished())
	// Even with nothing revoked, a Version above any a previous run of
	// this process published (see nextVersion).
	s.rev.version = nextVersion(0, s.now())
	s.stale.Store(true)
	return s
}

var _ m2mauth.ClientManager = (*Store)(nil)

// Client returns a copy of the client with the given id, or an error
// wrapping [m2mauth.ErrClientNotFound].
func (s *Store) Client(_ context.Context, id string) (*m2mauth.Client, error) {
	s.mu.RLock()
	c, ok := s.clients[id]
	if !ok {
		s.mu.RUnlock()
		return nil, fmt.Errorf("memstore: %q: %w", id, m2mauth.ErrClientNotFound)
	}
	out := c.Clone()
	s.mu.RUnlock()
	return out, nil
}

// CreateClient stores a copy of c. A non-zero TokensRevokedAt is kept as
// given, and sets the client's watermark to it (or to now, if it is later)
// unless the watermark is already later.
func (s *Store) CreateClient(ctx context.Context, c *m2mauth.Client) error {
	if c == nil {
		return fmt.Errorf("memstore: nil client")
	}
	if err := c.Validate(); err != nil {
		return err
	}
	cp := c.Clone()
	now := s.now()
	if cp.CreatedAt.IsZero() {
		cp.CreatedAt = now
	}
	if cp.UpdatedAt.IsZero() {
		cp.UpdatedAt = now
	}
	s.mu.Lock()
	if _, ok := s.clients[c.ID]; ok {
		s.mu.Unlock()
		return fmt.Errorf("memstore: %q: %w", c.ID, m2mauth.ErrClientExists)
	}
	s.clients[c.ID] = cp
	if at := cp.TokensRevokedAt; !at.IsZero() {
		if at.After(now) {
			at = now
		}
		if m2mauth.WatermarkLive(at, now) && at.After(s.rev.clients[cp.ID]) {
			s.rev.clients[cp.ID] = at
			s.changedLocked(now)
		}
	}
	s.mu.Unlock()

	events := []m2mauth.AuditEvent{event(now, m2mauth.EventClientCreated, cp.ID, "", m2mauth.ChangedFields(&m2mauth.Client{}, cp))}
	for _, sec := range cp.Secrets {
		events = append(events, event(now, m2mauth.EventSecretAdded, cp.ID, sec.ID, ""))
	}
	s.audit(ctx, events)
	return nil
}

// UpdateClient replaces the grants, Public, Disabled, TokenTTL and
// CanIntrospect of an existing client. When it turns Disabled on, it
// revokes the client's tokens as [Store.RevokeClientTokens] does.
func (s *Store) UpdateClient(ctx context.Context, c *m2mauth.Client) error {
	if c == nil {
		return fmt.Errorf("memstore: nil client")
	}
	return s.modify(ctx, c.ID, func(cur *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		next := c.Clone()
		next.Secrets, next.CreatedAt, next.TokensRevokedAt = cur.Secrets, cur.CreatedAt, cur.TokensRevokedAt
		if err := next.Validate(); err != nil {
			return nil, err
		}
		events := []m2mauth.AuditEvent{event(now, m2mauth.EventClientUpdated, cur.ID, "", m2mauth.ChangedFields(cur, next))}
		if next.Disabled != cur.Disabled {
			events = append(events, event(now, disabledEvent(next.Disabled), cur.ID, "", "disabled"))
		}
		if next.Disabled && !cur.Disabled {
			next.TokensRevokedAt = s.watermarkLocked(cur.ID, now)
			events = append(events, event(now, m2mauth.EventTokensRevoked, cur.ID, "", "disabled"))
		}
		*cur = *next
		return events, nil
	})
}

// AddSecret adds a secret to a client.
func (s *Store) AddSecret(ctx context.Context, clientID string, sec m2mauth.Secret) error {
	return s.modify(ctx, clientID, func(c *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		c.Secrets = append(c.Secrets, sec)
		if err := c.Validate(); err != nil {
			return nil, err
		}
		return []m2mauth.AuditEvent{event(now, m2mauth.EventSecretAdded, clientID, sec.ID, "")}, nil
	})
}

// ExpireSecret sets the expiry of one secret; a zero time removes it.
func (s *Store) ExpireSecret(ctx context.Context, clientID, secretID string, at time.Time) error {
	return s.modify(ctx, clientID, func(c *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		i := secretIndex(c, secretID)
		if i < 0 {
			return nil, fmt.Errorf("memstore: %q: %w", secretID, m2mauth.ErrSecretNotFound)
		}
		reason := m2mauth.ExpiryChange(c.Secrets[i].ExpiresAt, at)
		c.Secrets[i].ExpiresAt = at
		return []m2mauth.AuditEvent{event(now, m2mauth.EventSecretExpiring, clientID, secretID, reason)}, nil
	})
}

// RemoveSecret deletes one secret.
func (s *Store) RemoveSecret(ctx context.Context, clientID, secretID string) error {
	return s.modify(ctx, clientID, func(c *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		i := secretIndex(c, secretID)
		if i < 0 {
			return nil, fmt.Errorf("memstore: %q: %w", secretID, m2mauth.ErrSecretNotFound)
		}
		c.Secrets = append(c.Secrets[:i], c.Secrets[i+1:]...)
		return []m2mauth.AuditEvent{event(now, m2mauth.EventSecretRemoved, clientID, secretID, "")}, nil
	})
}

// SetDisabled disables or re-enables a client. Disabling it, even when it
// is disabled already, also revokes its tokens as
// [Store.RevokeClientTokens] does; re-enabling it leaves them revoked.
func (s *Store) SetDisabled(ctx context.Context, clientID string, disabled bool) error {
	return s.modify(ctx, clientID, func(c *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		reason := ""
		if c.Disabled != disabled {
			reason = "disabled"
		}
		c.Disabled = disabled
		events := []m2mauth.AuditEvent{event(now, disabledEvent(disabled), clientID, "", reason)}
		if disabled {
			c.TokensRevokedAt = s.watermarkLocked(clientID, now)
			events = append(events, event(now, m2mauth.EventTokensRevoked, clientID, "", "disabled"))
		}
		return events, nil
	})
}

// DeleteClient removes a client and revokes every token issued to it so
// far; the revocation outlives the client.
func (s *Store) DeleteClient(ctx context.Context, clientID string) error {
	s.mu.Lock()
	if _, ok := s.clients[clientID]; !ok {
		s.mu.Unlock()
		return fmt.Errorf("memstore: %q: %w", clientID, m2mauth.ErrClientNotFound)
	}
	now := s.now()
	delete(s.clients, clientID)
	s.watermarkLocked(clientID, now)
	s.mu.Unlock()
	s.audit(ctx, []m2mauth.AuditEvent{
		event(now, m2mauth.EventClientDeleted, clientID, "", ""),
		event(now, m2mauth.EventTokensRevoked, clientID, "", "deleted"),
	})
	return nil
}

// ListClients returns up to limit clients with ids greater than after, in
// ascending id order; limit <= 0 means 100.
func (s *Store) ListClients(_ context.Context, after string, limit int) ([]*m2mauth.Client, error) {
	if limit <= 0 {
		limit = 100
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids := make([]string, 0, len(s.clients))
	for id := range s.clients {
		if id > after {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	if len(ids) > limit {
		ids = ids[:limit]
	}
	out := make([]*m2mauth.Client, len(ids))
	for i, id := range ids {
		out[i] = s.clients[id].Clone()
	}
	return out, nil
}

// modify applies f to a copy of the stored client and stores the copy only
// if f succeeds, so a failed change leaves nothing behind; f runs with s.mu
// held, and may change the revocations once it cannot fail. now is the new
// UpdatedAt. The events f returns go to the auditor once the copy is
// stored and the lock released.
func (s *Store) modify(ctx context.Context, id string,
	f func(c *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error)) error {
	s.mu.Lock()
	cur, ok := s.clients[id]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("memstore: %q: %w", id, m2mauth.ErrClientNotFound)
	}
	next := cur.Clone()
	now := s.now()
	events, err := f(next, now)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	next.UpdatedAt = now
	s.clients[id] = next
	s.mu.Unlock()
	s.audit(ctx, events)
	return nil
}

// audit sends events to the auditor, if there is one.
func (s *Store) audit(ctx context.Context, events []m2mauth.AuditEvent) {
	if s.auditor == nil {
		return
	}
	for _, e := range events {
		s.auditor.Audit(ctx, e)
	}
}

// event returns the audit event of one change.
func event(now time.Time, typ m2mauth.AuditEventType, clientID, secretID, reason string) m2mauth.AuditEvent {
	return m2mauth.AuditEvent{Time: now, Type: typ, ClientID: clientID, SecretID: secretID, Reason: reason}
}

// disabledEvent returns the event type of setting Disabled to disabled.
func disabledEvent(disabled bool) m2mauth.AuditEventType {
	if disabled {
		return m2mauth.EventClientDisabled
	}
	return m2mauth.EventClientEnabled
}

func secretIndex(c *m2mauth.Client, secretID string) int {
	for i, sec := range c.Secrets {
		if sec.ID == secretID {
			return i
		}
	}
	return -1
}

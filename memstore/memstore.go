// Package memstore provides an in-memory [m2mauth.ClientManager]: the store
// for tests, examples and single-instance servers whose clients are
// configured at start-up.
//
// A Store is safe for concurrent use. It never hands out or keeps a
// reference to a Client it shares with a caller: every read returns a deep
// copy and every write stores one, so callers cannot change its state
// behind its back.
//
// Given an auditor with [WithAuditor], a Store reports every change made
// through its [m2mauth.ClientManager] methods; [Store] lists the events.
package memstore

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/m2mauth/m2mauth"
)

// Store is an in-memory client store. The zero value is not usable; call
// [New].
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
// "token_ttl"), or empty when it changed none. No event holds a secret or
// a hash.
//
//   - CreateClient: [m2mauth.EventClientCreated], Reason naming the
//     fields set to other than their zero value, then one
//     [m2mauth.EventSecretAdded] for each of the client's secrets.
//   - UpdateClient: [m2mauth.EventClientUpdated]; and when Disabled
//     changed, [m2mauth.EventClientDisabled] or [m2mauth.EventClientEnabled]
//     too, with Reason "disabled".
//   - AddSecret: [m2mauth.EventSecretAdded].
//   - ExpireSecret: [m2mauth.EventSecretExpiring], Reason "expires_at"
//     when it set a new expiry, "expires_at_removed" when it removed one,
//     empty when the expiry was already as asked.
//   - RemoveSecret: [m2mauth.EventSecretRemoved].
//   - SetDisabled: [m2mauth.EventClientDisabled] or
//     [m2mauth.EventClientEnabled], Reason "disabled" when the client was
//     not already so.
//   - DeleteClient: [m2mauth.EventClientDeleted].
//
// The auditor is called without the Store's lock held, so it may read
// the Store; events of concurrent changes may reach it out of order
// (their Time keeps it).
type Store struct {
	now     func() time.Time
	auditor m2mauth.Auditor // nil for none
	mu      sync.RWMutex
	clients map[string]*m2mauth.Client
}

// Option configures a [Store].
type Option func(*Store)

// WithClock sets the clock used for CreatedAt and UpdatedAt.
// Default: [time.Now].
func WithClock(now func() time.Time) Option {
	return func(s *Store) { s.now = now }
}

// WithAuditor sets the auditor that receives an event for every change
// made through the Store's [m2mauth.ClientManager] methods (see [Store]).
// Default: none.
func WithAuditor(a m2mauth.Auditor) Option {
	return func(s *Store) { s.auditor = a }
}

// New returns an empty store.
func New(opts ...Option) *Store {
	s := &Store{now: time.Now, clients: make(map[string]*m2mauth.Client)}
	for _, o := range opts {
		o(s)
	}
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

// CreateClient stores a copy of c.
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
	s.mu.Unlock()

	events := []m2mauth.AuditEvent{event(now, m2mauth.EventClientCreated, cp.ID, "", m2mauth.ChangedFields(&m2mauth.Client{}, cp))}
	for _, sec := range cp.Secrets {
		events = append(events, event(now, m2mauth.EventSecretAdded, cp.ID, sec.ID, ""))
	}
	s.audit(ctx, events)
	return nil
}

// UpdateClient replaces the grants, Public, Disabled and TokenTTL of an
// existing client.
func (s *Store) UpdateClient(ctx context.Context, c *m2mauth.Client) error {
	if c == nil {
		return fmt.Errorf("memstore: nil client")
	}
	return s.modify(ctx, c.ID, func(cur *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		next := c.Clone()
		next.Secrets, next.CreatedAt = cur.Secrets, cur.CreatedAt
		if err := next.Validate(); err != nil {
			return nil, err
		}
		events := []m2mauth.AuditEvent{event(now, m2mauth.EventClientUpdated, cur.ID, "", m2mauth.ChangedFields(cur, next))}
		if next.Disabled != cur.Disabled {
			events = append(events, event(now, disabledEvent(next.Disabled), cur.ID, "", "disabled"))
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

// SetDisabled disables or re-enables a client.
func (s *Store) SetDisabled(ctx context.Context, clientID string, disabled bool) error {
	return s.modify(ctx, clientID, func(c *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		reason := ""
		if c.Disabled != disabled {
			reason = "disabled"
		}
		c.Disabled = disabled
		return []m2mauth.AuditEvent{event(now, disabledEvent(disabled), clientID, "", reason)}, nil
	})
}

// DeleteClient removes a client.
func (s *Store) DeleteClient(ctx context.Context, clientID string) error {
	s.mu.Lock()
	if _, ok := s.clients[clientID]; !ok {
		s.mu.Unlock()
		return fmt.Errorf("memstore: %q: %w", clientID, m2mauth.ErrClientNotFound)
	}
	delete(s.clients, clientID)
	s.mu.Unlock()
	s.audit(ctx, []m2mauth.AuditEvent{event(s.now(), m2mauth.EventClientDeleted, clientID, "", "")})
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
// if f succeeds, so a failed change leaves nothing behind. now is the new
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

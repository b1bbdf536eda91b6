// Package memstore provides an in-memory [m2mauth.ClientManager]: the store
// for tests, examples and single-instance servers whose clients are
// configured at start-up.
//
// A Store is safe for concurrent use. It never hands out or keeps a
// reference to a Client it shares with a caller: every read returns a deep
// copy and every write stores one, so callers cannot change its state
// behind its back.
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
type Store struct {
	now     func() time.Time
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
func (s *Store) CreateClient(_ context.Context, c *m2mauth.Client) error {
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
	defer s.mu.Unlock()
	if _, ok := s.clients[c.ID]; ok {
		return fmt.Errorf("memstore: %q: %w", c.ID, m2mauth.ErrClientExists)
	}
	s.clients[c.ID] = cp
	return nil
}

// UpdateClient replaces the grants, Public, Disabled and TokenTTL of an
// existing client.
func (s *Store) UpdateClient(_ context.Context, c *m2mauth.Client) error {
	if c == nil {
		return fmt.Errorf("memstore: nil client")
	}
	return s.modify(c.ID, func(cur *m2mauth.Client) error {
		next := c.Clone()
		next.Secrets, next.CreatedAt = cur.Secrets, cur.CreatedAt
		if err := next.Validate(); err != nil {
			return err
		}
		*cur = *next
		return nil
	})
}

// AddSecret adds a secret to a client.
func (s *Store) AddSecret(_ context.Context, clientID string, sec m2mauth.Secret) error {
	return s.modify(clientID, func(c *m2mauth.Client) error {
		c.Secrets = append(c.Secrets, sec)
		return c.Validate()
	})
}

// ExpireSecret sets the expiry of one secret; a zero time removes it.
func (s *Store) ExpireSecret(_ context.Context, clientID, secretID string, at time.Time) error {
	return s.modify(clientID, func(c *m2mauth.Client) error {
		i := secretIndex(c, secretID)
		if i < 0 {
			return fmt.Errorf("memstore: %q: %w", secretID, m2mauth.ErrSecretNotFound)
		}
		c.Secrets[i].ExpiresAt = at
		return nil
	})
}

// RemoveSecret deletes one secret.
func (s *Store) RemoveSecret(_ context.Context, clientID, secretID string) error {
	return s.modify(clientID, func(c *m2mauth.Client) error {
		i := secretIndex(c, secretID)
		if i < 0 {
			return fmt.Errorf("memstore: %q: %w", secretID, m2mauth.ErrSecretNotFound)
		}
		c.Secrets = append(c.Secrets[:i], c.Secrets[i+1:]...)
		return nil
	})
}

// SetDisabled disables or re-enables a client.
func (s *Store) SetDisabled(_ context.Context, clientID string, disabled bool) error {
	return s.modify(clientID, func(c *m2mauth.Client) error {
		c.Disabled = disabled
		return nil
	})
}

// DeleteClient removes a client.
func (s *Store) DeleteClient(_ context.Context, clientID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.clients[clientID]; !ok {
		return fmt.Errorf("memstore: %q: %w", clientID, m2mauth.ErrClientNotFound)
	}
	delete(s.clients, clientID)
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
// if f succeeds, so a failed change leaves nothing behind.
func (s *Store) modify(id string, f func(*m2mauth.Client) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.clients[id]
	if !ok {
		return fmt.Errorf("memstore: %q: %w", id, m2mauth.ErrClientNotFound)
	}
	next := cur.Clone()
	if err := f(next); err != nil {
		return err
	}
	next.UpdatedAt = s.now()
	s.clients[id] = next
	return nil
}

func secretIndex(c *m2mauth.Client, secretID string) int {
	for i, sec := range c.Secrets {
		if sec.ID == secretID {
			return i
		}
	}
	return -1
}

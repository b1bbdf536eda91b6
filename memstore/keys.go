package memstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/m2mauth/m2mauth"
)

// keyring holds a Store's managed signing keys. Its zero value is empty
// and ready; it has its own lock, so that key reads never wait for client
// or revocation changes.
type keyring struct {
	mu     sync.Mutex
	keys   []m2mauth.StoredKey // ascending Generation; Sealed never shared
	claims map[keyClaim]struct{}
}

type keyClaim struct {
	kid string
	typ m2mauth.AuditEventType
}

var _ m2mauth.KeyStore = (*Store)(nil)

// SigningKeys returns a copy of every managed signing key the Store holds,
// revoked ones too, in ascending Generation order. It implements
// [m2mauth.KeyStore]; a Store keeps its keys in memory only, so every
// process has its own (see sqlstore for keys shared by a fleet).
func (s *Store) SigningKeys(context.Context) ([]m2mauth.StoredKey, error) {
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	out := make([]m2mauth.StoredKey, len(s.keys.keys))
	for i, k := range s.keys.keys {
		out[i] = cloneKey(k)
	}
	return out, nil
}

// AddSigningKey stores a copy of k unless the Store holds a key of the
// same Generation or KID, and reports whether it did. It refuses, with an
// error and no change, a key with a KID other than 1 to 255 printable
// ASCII characters, an Algorithm not among [m2mauth.SupportedAlgorithms],
// a Generation below 1, an empty Sealed, a zero PublishedAt or ActiveAt,
// or an ActiveAt before PublishedAt.
func (s *Store) AddSigningKey(_ context.Context, k m2mauth.StoredKey) (bool, error) {
	if err := k.Validate(); err != nil {
		return false, err
	}
	k = cloneKey(k)
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	for _, have := range s.keys.keys {
		if have.Generation == k.Generation || have.KID == k.KID {
			return false, nil
		}
	}
	i, _ := slices.BinarySearchFunc(s.keys.keys, k.Generation, func(e m2mauth.StoredKey, g int64) int {
		return cmp.Compare(e.Generation, g)
	})
	s.keys.keys = slices.Insert(s.keys.keys, i, k)
	return true, nil
}

// RevokeSigningKey sets the RevokedAt of the key kid to at, unless it is
// already set (the first revocation's time is kept). It returns an error
// wrapping [m2mauth.ErrKeyNotFound] for a kid the Store does not hold, and
// an error for a zero at.
func (s *Store) RevokeSigningKey(_ context.Context, kid string, at time.Time) error {
	if at.IsZero() {
		return errors.New("memstore: zero revocation time")
	}
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	i := s.keys.index(kid)
	if i < 0 {
		return fmt.Errorf("memstore: signing key %q: %w", kid, m2mauth.ErrKeyNotFound)
	}
	if s.keys.keys[i].RevokedAt.IsZero() {
		s.keys.keys[i].RevokedAt = at.Round(0)
	}
	return nil
}

// DeleteSigningKey removes the key kid and the events claimed for it, and
// reports whether it did.
func (s *Store) DeleteSigningKey(_ context.Context, kid string) (bool, error) {
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	i := s.keys.index(kid)
	if i < 0 {
		return false, nil
	}
	s.keys.keys = slices.Delete(s.keys.keys, i, i+1)
	for c := range s.keys.claims {
		if c.kid == kid {
			delete(s.keys.claims, c)
		}
	}
	return true, nil
}

// ResealSigningKeys replaces the Sealed of every key named in sealed with
// a copy of the new value. When a kid is unknown or a value is empty, it
// returns an error and changes nothing.
func (s *Store) ResealSigningKeys(_ context.Context, sealed map[string][]byte) error {
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	at := make(map[int][]byte, len(sealed))
	for kid, b := range sealed {
		if len(b) == 0 {
			return fmt.Errorf("memstore: signing key %q: empty sealed key", kid)
		}
		i := s.keys.index(kid)
		if i < 0 {
			return fmt.Errorf("memstore: signing key %q: %w", kid, m2mauth.ErrKeyNotFound)
		}
		at[i] = b
	}
	for i, b := range at {
		s.keys.keys[i].Sealed = slices.Clone(b)
	}
	return nil
}

// ClaimKeyEvent records that the event typ happened to the key kid and
// reports whether this call was the first to. The claims of a key are
// deleted with it. It returns an error for a malformed kid or an empty
// typ.
func (s *Store) ClaimKeyEvent(_ context.Context, kid string, typ m2mauth.AuditEventType) (bool, error) {
	if !m2mauth.ValidKeyID(kid) {
		return false, errors.New("memstore: signing key id must be 1 to 255 printable ASCII characters")
	}
	if typ == "" {
		return false, errors.New("memstore: empty key event type")
	}
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	c := keyClaim{kid, typ}
	if _, ok := s.keys.claims[c]; ok {
		return false, nil
	}
	if s.keys.claims == nil {
		s.keys.claims = make(map[keyClaim]struct{})
	}
	s.keys.claims[c] = struct{}{}
	return true, nil
}

// index returns the position of the key kid, or -1. The caller holds mu.
func (r *keyring) index(kid string) int {
	return slices.IndexFunc(r.keys, func(k m2mauth.StoredKey) bool { return k.KID == kid })
}

// cloneKey returns k with its own Sealed and its times without a
// monotonic reading.
func cloneKey(k m2mauth.StoredKey) m2mauth.StoredKey {
	k.Sealed = slices.Clone(k.Sealed)
	k.PublishedAt = k.PublishedAt.Round(0)
	k.ActiveAt = k.ActiveAt.Round(0)
	k.RevokedAt = k.RevokedAt.Round(0)
	return k
}

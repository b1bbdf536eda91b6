package m2mauth

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Managed signing keys live in a [KeyStore] shared by every replica, each
// sealed under a key-encryption key, and go through one life:
//
//	published ──PropagationDelay──▶ active ──next key active──▶ retired ──longest token life──▶ deleted
//	   (in the JWKS, not signing)   (signs)    (in the JWKS, verifies)
//
// Only the publication and the deletion of a key are written; when a key
// becomes active and when it retires follow from the times stored with
// every key, so every replica reading the same rows signs with the same
// key at the same moment. A revoked key leaves the JWKS and stops
// verifying at once.

// StoredKey is one managed signing key as a [KeyStore] keeps it. The key
// material is only ever stored sealed.
type StoredKey struct {
	// KID is the key's "kid": unique, 1 to 255 printable ASCII
	// characters.
	KID string
	// Algorithm is the key's JWS algorithm, one of [SupportedAlgorithms].
	Algorithm string
	// Generation numbers the keys in the order they were published,
	// from 1; it is unique, and a store refuses a second key of a
	// generation it holds (see [KeyStore.AddSigningKey]), so replicas
	// that rotate at once create one key between them.
	Generation int64
	// Sealed is the key material (the private JWK, or the HS256 secret)
	// encrypted by a [KeySealer], bound to KID, Algorithm and
	// Generation.
	Sealed []byte
	// PublishedAt is when the key entered the key set.
	PublishedAt time.Time
	// ActiveAt is when the key starts signing, at least the propagation
	// delay after PublishedAt (the first key of a store signs at once).
	// It signs until a key of a later generation becomes active.
	ActiveAt time.Time
	// RevokedAt, when set, is when the key was revoked: from then on it
	// neither signs nor verifies, and it is out of the key set.
	RevokedAt time.Time
}

// ValidKeyID reports whether kid is a well-formed managed key id: 1 to
// 255 printable ASCII characters, the rule of [ValidClientID].
func ValidKeyID(kid string) bool { return ValidClientID(kid) }

// Validate reports whether k is well-formed: a valid KID, an algorithm
// among [SupportedAlgorithms], a Generation of at least 1, sealed
// material, and publication and activation times, the activation not
// before the publication. Stores call it before writing. Its errors name
// the kid, never key material.
func (k *StoredKey) Validate() error {
	switch {
	case !ValidKeyID(k.KID):
		return errors.New("m2mauth: signing key id must be 1 to 255 printable ASCII characters")
	case !isSupported(jose.SignatureAlgorithm(k.Algorithm)):
		return fmt.Errorf("m2mauth: signing key %q: unsupported algorithm %q", k.KID, k.Algorithm)
	case k.Generation < 1:
		return fmt.Errorf("m2mauth: signing key %q: generation %d is below 1", k.KID, k.Generation)
	case len(k.Sealed) == 0:
		return fmt.Errorf("m2mauth: signing key %q: empty sealed key", k.KID)
	case k.PublishedAt.IsZero() || k.ActiveAt.IsZero():
		return fmt.Errorf("m2mauth: signing key %q: zero publication or activation time", k.KID)
	case k.ActiveAt.Before(k.PublishedAt):
		return fmt.Errorf("m2mauth: signing key %q: activation before publication", k.KID)
	}
	return nil
}

// KeyStore keeps the managed signing keys of a fleet of replicas:
// memstore and sqlstore implement it. Every method must be safe for
// concurrent use by many processes sharing the store.
type KeyStore interface {
	// SigningKeys returns every key the store holds (revoked ones too,
	// until they are deleted), in ascending Generation order.
	SigningKeys(ctx context.Context) ([]StoredKey, error)
	// AddSigningKey stores k unless a key of the same Generation (or
	// KID) exists, and reports whether it did: an insert-or-ignore, so
	// that of replicas racing to add generation n exactly one succeeds
	// and the others get false and no error.
	AddSigningKey(ctx context.Context, k StoredKey) (bool, error)
	// RevokeSigningKey sets the RevokedAt of the key kid, unless it is
	// already set. It returns an error wrapping [ErrKeyNotFound] for an
	// unknown kid.
	RevokeSigningKey(ctx context.Context, kid string, at time.Time) error
	// DeleteSigningKey removes the key kid, reporting whether it did
	// (false when another replica did first).
	DeleteSigningKey(ctx context.Context, kid string) (bool, error)
	// ResealSigningKeys replaces the Sealed of every key named in
	// sealed, all in one transaction: either every key is resealed or
	// none is. Keys not named are left alone.
	ResealSigningKeys(ctx context.Context, sealed map[string][]byte) error
	// ClaimKeyEvent records that the event of type typ happened to the
	// key kid and reports whether this call was the first to: an
	// insert-or-ignore, so that of the replicas that see a key activate
	// or retire exactly one audits it. Claims of a deleted key may be
	// deleted with it.
	ClaimKeyEvent(ctx context.Context, kid string, typ AuditEventType) (bool, error)
}

// ErrKeyNotFound is returned for a kid a [KeyStore] does not hold.
var ErrKeyNotFound = errors.New("m2mauth: signing key not found")

// KeySealer encrypts managed key material at rest under a key-encryption
// key (KEK). An implementation may keep the KEK in a KMS or an HSM.
type KeySealer interface {
	// Seal encrypts plaintext, binding it to additionalData; the
	// result names the KEK that sealed it.
	Seal(plaintext, additionalData []byte) ([]byte, error)
	// Open decrypts what Seal returned for the same additionalData. It
	// fails, without a panic, for a ciphertext sealed under another KEK
	// (naming it, so the error can say which KEK is missing), for other
	// additionalData, and for a ciphertext that was altered.
	Open(ciphertext, additionalData []byte) ([]byte, error)
}

// Audit event types of managed signing keys, emitted by [ManagedKeys].
// ClientID is empty; Reason is the kid. Each transition is recorded once
// for the whole fleet, by the replica that saw it first.
const (
	EventKeyPublished AuditEventType = "key_published"
	EventKeyActivated AuditEventType = "key_activated"
	EventKeyRetired   AuditEventType = "key_retired"
	EventKeyDeleted   AuditEventType = "key_deleted"
	EventKeyRevoked   AuditEventType = "key_revoked"
)

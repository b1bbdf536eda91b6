package m2mauth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// MinHMACKeyLen is the shortest HS256 key accepted: 32 bytes, the output
// size of SHA-256 (RFC 7518 §3.2).
const MinHMACKeyLen = 32

// KeyProvider supplies the keys that sign and verify access tokens.
//
// Keys are go-jose [jose.JSONWebKey] values with KeyID ("kid") and
// Algorithm set; HS256 keys hold a []byte of at least [MinHMACKeyLen]
// bytes. To rotate, make the new key the signing key and keep the old one
// among the verification keys until every token it signed has expired.
//
// Implementations must be safe for concurrent use and should return the
// same pointers while the keys do not change, so callers can cache work
// derived from them.
type KeyProvider interface {
	// SigningKey returns the key new tokens are signed with.
	SigningKey(ctx context.Context) (*jose.JSONWebKey, error)
	// VerificationKeys returns every key a token may be verified with,
	// the signing key included.
	VerificationKeys(ctx context.Context) (*jose.JSONWebKeySet, error)
}

// KeyRefresher is implemented by key providers that can fetch keys they
// do not hold yet, such as a provider reading another server's JWKS. A
// [Validator] that meets a token whose kid none of its keys has calls
// RefreshKeys once for that token, and verifies with the set it returns.
// Implementations bound how often they fetch (many unknown kids must not
// cause many fetches) and never drop the last good set on a failure.
type KeyRefresher interface {
	// RefreshKeys returns a key set that is as fresh as the
	// implementation's limits allow, in the hope that it holds kid.
	RefreshKeys(ctx context.Context, kid string) (*jose.JSONWebKeySet, error)
}

// KeySchedule is implemented by key providers that know when their key
// set will next change (a new key published, an old one removed). A JWKS
// handler never lets verifiers cache the set past that instant.
type KeySchedule interface {
	// NextKeyChange returns the instant of the next planned change of the
	// verification keys, and false when none is planned.
	NextKeyChange(ctx context.Context) (time.Time, bool)
}

// StaticKeys is a [KeyProvider] with a fixed signing key and a fixed set of
// previous keys that still verify. It is immutable and safe for concurrent
// use; to rotate, build a new one and hand it to new handlers, or implement
// [KeyProvider] over your own key store.
type StaticKeys struct {
	signing *jose.JSONWebKey
	set     *jose.JSONWebKeySet
}

// NewStaticKeys returns a provider that signs with signing and verifies with
// signing and every key in previous. Each key must have a unique KeyID, the
// HS256 algorithm and at least [MinHMACKeyLen] bytes; [NewHS256Key] builds
// such keys.
func NewStaticKeys(signing jose.JSONWebKey, previous ...jose.JSONWebKey) (*StaticKeys, error) {
	all := append([]jose.JSONWebKey{signing}, previous...)
	seen := make(map[string]bool, len(all))
	for i := range all {
		if err := checkKey(&all[i]); err != nil {
			return nil, err
		}
		if seen[all[i].KeyID] {
			return nil, fmt.Errorf("m2mauth: duplicate key id %q", all[i].KeyID)
		}
		seen[all[i].KeyID] = true
	}
	return &StaticKeys{signing: &all[0], set: &jose.JSONWebKeySet{Keys: all}}, nil
}

// SigningKey returns the signing key.
func (s *StaticKeys) SigningKey(context.Context) (*jose.JSONWebKey, error) { return s.signing, nil }

// VerificationKeys returns the signing key followed by the previous keys.
func (s *StaticKeys) VerificationKeys(context.Context) (*jose.JSONWebKeySet, error) {
	return s.set, nil
}

// NewHS256Key returns an HS256 signing key holding a copy of secret, which
// must be at least [MinHMACKeyLen] bytes of random data. An empty kid is
// replaced by one derived from a one-way hash of the secret, so the same
// secret always gets the same kid.
func NewHS256Key(kid string, secret []byte) (jose.JSONWebKey, error) {
	if len(secret) < MinHMACKeyLen {
		return jose.JSONWebKey{}, fmt.Errorf("m2mauth: HS256 key must be at least %d bytes, got %d", MinHMACKeyLen, len(secret))
	}
	if kid == "" {
		h := sha256.Sum256(append([]byte("m2mauth key id\x00"), secret...))
		kid = base64.RawURLEncoding.EncodeToString(h[:12])
	}
	return jose.JSONWebKey{
		Key:       append([]byte(nil), secret...),
		KeyID:     kid,
		Algorithm: string(jose.HS256),
		Use:       "sig",
	}, nil
}

// checkKey enforces what every key must have: a kid, an algorithm this
// package implements, and key material of the right type and size for it.
func checkKey(k *jose.JSONWebKey) error {
	if k.KeyID == "" {
		return errors.New("m2mauth: key has no key id (kid)")
	}
	switch jose.SignatureAlgorithm(k.Algorithm) {
	case jose.HS256:
		b, ok := k.Key.([]byte)
		if !ok {
			return fmt.Errorf("m2mauth: key %q: HS256 needs a []byte key, got %T", k.KeyID, k.Key)
		}
		if len(b) < MinHMACKeyLen {
			return fmt.Errorf("m2mauth: key %q: HS256 key must be at least %d bytes", k.KeyID, MinHMACKeyLen)
		}
	default:
		return fmt.Errorf("m2mauth: key %q: unsupported algorithm %q (supported: HS256)", k.KeyID, k.Algorithm)
	}
	if k.Use != "" && k.Use != "sig" {
		return fmt.Errorf("m2mauth: key %q: use %q is not \"sig\"", k.KeyID, k.Use)
	}
	return nil
}

package m2mauth

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// KeyProvider supplies the keys that sign and verify access tokens.
//
// Keys are go-jose [jose.JSONWebKey] values with KeyID ("kid") and
// Algorithm set, one of [SupportedAlgorithms]; each key is used with its
// own algorithm only. HS256 keys hold a []byte of at least
// [MinHMACKeyLen] bytes. ES256 (P-256), EdDSA (Ed25519), RS256 and PS256
// (RSA of at least [MinRSAKeyBits] bits) keys hold a public key, or,
// to sign, a [crypto.Signer] such as *ecdsa.PrivateKey, ed25519.PrivateKey,
// *rsa.PrivateKey or a handle to a key in a KMS or an HSM; a private key
// among the verification keys verifies with its public half.
// [GenerateSigningKey], [ParseKeyPEM], [ParseJWK], [NewSignerKey] and
// [NewHS256Key] build such keys. To rotate, make the new key the signing
// key and keep the old one among the verification keys until every token
// it signed has expired.
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
// signing and every key in previous. Each key must have a unique KeyID, one
// of [SupportedAlgorithms] and key material that fits it (see
// [KeyProvider]); signing must hold a secret or a private key, previous
// keys may be public. The keys are copied, not their material.
func NewStaticKeys(signing jose.JSONWebKey, previous ...jose.JSONWebKey) (*StaticKeys, error) {
	all := append([]jose.JSONWebKey{signing}, previous...)
	seen := make(map[string]bool, len(all))
	for i := range all {
		check := checkKey
		if i == 0 {
			check = checkSigningKey
		}
		if err := check(&all[i]); err != nil {
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

// GenerateSigningKey returns a new random signing key for alg: 32 bytes
// for HS256, a P-256 key for ES256, an Ed25519 key for EdDSA, a 2048-bit
// RSA key for RS256 and PS256. Its kid is the one [NewHS256Key] derives
// for HS256 and the RFC 7638 thumbprint of the public key otherwise, so
// the key gets the same kid when loaded again with [ParseKeyPEM] or
// [ParseJWK]. [MarshalKeyPEM] writes an asymmetric one for storage.
func GenerateSigningKey(alg jose.SignatureAlgorithm) (jose.JSONWebKey, error) {
	key, err := generateKey(alg)
	if err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("m2mauth: generating a %s key: %w", alg, err)
	}
	return newKey(alg, "", key, true)
}

// NewSignerKey returns a signing key for alg whose private key is held by
// signer, for instance a key in a KMS or an HSM, or an *ecdsa.PrivateKey,
// ed25519.PrivateKey or *rsa.PrivateKey. signer.Public() must fit alg
// (see [KeyProvider]). Sign is called as the standard library's keys
// expect: with a SHA-256 digest and crypto.SHA256 for ES256 and RS256,
// with a SHA-256 digest and an *rsa.PSSOptions for PS256, with the whole
// message and crypto.Hash(0) for EdDSA; for ES256 it returns an ASN.1 DER
// signature, as crypto/ecdsa does. An empty kid is replaced by the
// RFC 7638 thumbprint of the public key. Sign is called once for every
// token issued, so a remote signer's latency adds to each token request.
func NewSignerKey(alg jose.SignatureAlgorithm, kid string, signer crypto.Signer) (jose.JSONWebKey, error) {
	if signer == nil {
		return jose.JSONWebKey{}, errors.New("m2mauth: nil crypto.Signer")
	}
	return newKey(alg, kid, signer, true)
}

// ParseKeyPEM returns the key for alg in the PEM data: a signing key from
// a private key block, PKCS #8 ("PRIVATE KEY"), SEC 1 ("EC PRIVATE KEY")
// or PKCS #1 ("RSA PRIVATE KEY"), or a verification key from a PKIX
// "PUBLIC KEY" block. Other blocks, such as "EC PARAMETERS", are skipped;
// there must be exactly one key. Encrypted PEM is not supported. An
// empty kid is replaced by the RFC 7638 thumbprint of the public key.
func ParseKeyPEM(alg jose.SignatureAlgorithm, kid string, data []byte) (jose.JSONWebKey, error) {
	var key any
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			break
		}
		var k any
		var err error
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "PUBLIC KEY":
			k, err = x509.ParsePKIXPublicKey(b.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return jose.JSONWebKey{}, errors.New("m2mauth: encrypted PEM keys are not supported; decrypt the key first")
		default:
			continue
		}
		if _, ok := b.Headers["DEK-Info"]; ok {
			return jose.JSONWebKey{}, errors.New("m2mauth: encrypted PEM keys are not supported; decrypt the key first")
		}
		if err != nil {
			return jose.JSONWebKey{}, fmt.Errorf("m2mauth: PEM %s block: %w", b.Type, err)
		}
		if key != nil {
			return jose.JSONWebKey{}, errors.New("m2mauth: PEM data holds more than one key")
		}
		key = k
	}
	if key == nil {
		return jose.JSONWebKey{}, errors.New("m2mauth: no private or public key block in the PEM data")
	}
	_, signs := key.(crypto.Signer)
	return newKey(alg, kid, key, signs)
}

// ParseJWK returns the key of a JSON Web Key document (RFC 7517 §4): a
// signing key when it holds a private key or an HS256 secret ("oct"), a
// verification key when it holds a public key. The document's "alg",
// when present, must equal alg; an empty alg takes the document's. The
// document's "kid" is kept; without one, the kid is the RFC 7638
// thumbprint of the public key, or the kid [NewHS256Key] derives.
func ParseJWK(alg jose.SignatureAlgorithm, data []byte) (jose.JSONWebKey, error) {
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(data); err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("m2mauth: JWK: %w", err)
	}
	switch {
	case alg == "" && k.Algorithm == "":
		return jose.JSONWebKey{}, errors.New("m2mauth: JWK has no \"alg\" and none was given")
	case alg == "":
		alg = jose.SignatureAlgorithm(k.Algorithm)
	case k.Algorithm != "" && k.Algorithm != string(alg):
		return jose.JSONWebKey{}, fmt.Errorf("m2mauth: JWK is for %q, not %q", k.Algorithm, alg)
	}
	out, err := newKey(alg, k.KeyID, k.Key, false)
	if err != nil {
		return jose.JSONWebKey{}, err
	}
	if k.Use != "" {
		out.Use = k.Use
	}
	return out, checkKey(&out)
}

// newKey returns key as a key for alg with kid, or the default kid, after
// checking it; with signing, key must be able to sign.
func newKey(alg jose.SignatureAlgorithm, kid string, key any, signing bool) (jose.JSONWebKey, error) {
	if b, ok := key.([]byte); ok && alg == jose.HS256 {
		return NewHS256Key(kid, b)
	}
	err := checkMaterial(alg, key)
	if err == nil && signing {
		err = checkSigner(key)
	}
	if err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("m2mauth: %w", err)
	}
	if kid == "" {
		t, err := (&jose.JSONWebKey{Key: publicKey(key)}).Thumbprint(crypto.SHA256)
		if err != nil {
			return jose.JSONWebKey{}, fmt.Errorf("m2mauth: key thumbprint: %w", err)
		}
		kid = base64.RawURLEncoding.EncodeToString(t)
	}
	return jose.JSONWebKey{Key: key, KeyID: kid, Algorithm: string(alg), Use: "sig"}, nil
}

// MarshalKeyPEM returns the key material of k as PEM: a private key as
// PKCS #8 ("PRIVATE KEY"), a public key as PKIX ("PUBLIC KEY"). The kid
// and algorithm are not part of it: pass them to [ParseKeyPEM] when
// loading it (a kid left to its default comes back the same). HS256
// secrets and keys held by another [crypto.Signer] cannot be written.
// The PEM of a private key is a secret: store it readable by its owner
// only.
func MarshalKeyPEM(k jose.JSONWebKey) ([]byte, error) {
	if err := checkKey(&k); err != nil {
		return nil, err
	}
	if _, ok := k.Key.([]byte); ok {
		return nil, fmt.Errorf("m2mauth: key %q: %s secrets are not PEM", k.KeyID, k.Algorithm)
	}
	if _, ok := k.Key.(crypto.Signer); ok {
		der, err := x509.MarshalPKCS8PrivateKey(k.Key)
		if err != nil {
			return nil, fmt.Errorf("m2mauth: key %q: %w", k.KeyID, err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
	}
	der, err := x509.MarshalPKIXPublicKey(k.Key)
	if err != nil {
		return nil, fmt.Errorf("m2mauth: key %q: %w", k.KeyID, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

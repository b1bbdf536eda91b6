package m2mauth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// Secret is one client secret as a store keeps it: a one-way hash, never
// the secret itself. A client may hold several so that a rotation can keep
// the old secret working until its expiry.
type Secret struct {
	// ID names the secret in audit events and administration calls. It is
	// random, not derived from the secret.
	ID string
	// Hash is the self-describing one-way hash made by [HashSecret] or
	// [HashSecretArgon2id], or an imported bcrypt hash ("$2a$", "$2b$",
	// "$2y$").
	Hash string
	// CreatedAt is when the secret was made.
	CreatedAt time.Time
	// ExpiresAt, when not zero, is the instant from which the secret no
	// longer authenticates.
	ExpiresAt time.Time
}

// ActiveAt reports whether the secret authenticates at time t.
func (s Secret) ActiveAt(t time.Time) bool {
	return s.ExpiresAt.IsZero() || t.Before(s.ExpiresAt)
}

// SecretBytes is the number of random bytes in a secret made by
// [GenerateSecret]: 256 bits.
const SecretBytes = 32

// maxSecretLen bounds the secret presented to a hasher, so a huge input
// cannot make verification expensive.
const maxSecretLen = 512

// GenerateSecret returns a new client secret: [SecretBytes] bytes from
// crypto/rand, base64url-encoded without padding (43 characters, none of
// which needs escaping in a URL, a form or a Basic header).
func GenerateSecret() (string, error) {
	var b [SecretBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("m2mauth: generate secret: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// NewSecret generates a client secret and returns it in plaintext together
// with the [Secret] to store: a fresh random ID, the [HashSecret] hash,
// CreatedAt = now and ExpiresAt = expiresAt (zero for none). Show the
// plaintext to the operator once; it cannot be recovered from the store.
func NewSecret(now, expiresAt time.Time) (string, Secret, error) {
	plain, err := GenerateSecret()
	if err != nil {
		return "", Secret{}, err
	}
	hash, err := HashSecret(plain)
	if err != nil {
		return "", Secret{}, err
	}
	id, err := randomID("sec_", 9)
	if err != nil {
		return "", Secret{}, err
	}
	return plain, Secret{ID: id, Hash: hash, CreatedAt: now, ExpiresAt: expiresAt}, nil
}

// randomID returns prefix followed by n random bytes, base64url-encoded.
func randomID(prefix string, n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("m2mauth: random id: %w", err)
	}
	return prefix + base64.RawURLEncoding.EncodeToString(b), nil
}

const (
	sha256Prefix  = "$sha256$"
	sha256SaltLen = 16
	argon2Prefix  = "$argon2id$"
	argon2SaltLen = 16
	argon2KeyLen  = 32
	argon2Memory  = 19 * 1024 // KiB; the OWASP minimum for argon2id
	argon2Time    = 2
	argon2Threads = 1
	// Bounds on imported hashes, so that one verification costs at most
	// about 64 MiB and a few hundred milliseconds.
	maxArgonMemory = 64 * 1024 // KiB
	maxArgonTime   = 4
	maxArgonThread = 4
	maxBcryptCost  = 12
	// maxBcryptSecret is the longest secret bcrypt reads whole.
	maxBcryptSecret = 72
)

// ErrUnknownHash is returned by [VerifySecret] for a hash string it cannot
// read.
var ErrUnknownHash = errors.New("m2mauth: unknown or malformed secret hash")

// HashSecret returns a salted SHA-256 hash of secret in the form
//
//	$sha256$<base64 16-byte salt>$<base64 SHA-256(salt || secret)>
//
// It costs about a microsecond to verify. That is safe only because secrets
// made by [GenerateSecret] carry 256 bits of entropy, which no guessing
// attack can search; hash secrets chosen by people, or imported from other
// systems, with [HashSecretArgon2id] instead.
func HashSecret(secret string) (string, error) {
	if len(secret) > maxSecretLen {
		return "", errors.New("m2mauth: secret too long")
	}
	var salt [sha256SaltLen]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return "", fmt.Errorf("m2mauth: hash secret: %w", err)
	}
	sum := saltedSHA256(salt[:], secret)
	enc := base64.RawStdEncoding
	return sha256Prefix + enc.EncodeToString(salt[:]) + "$" + enc.EncodeToString(sum[:]), nil
}

func saltedSHA256(salt []byte, secret string) [sha256.Size]byte {
	var buf [sha256SaltLen + 128]byte
	b := append(append(buf[:0], salt...), secret...)
	return sha256.Sum256(b)
}

// HashSecretArgon2id returns an argon2id hash of secret in the PHC string
// format ("$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>"), for secrets of
// unknown or low entropy. Verification costs tens of milliseconds by design.
func HashSecretArgon2id(secret string) (string, error) {
	if len(secret) > maxSecretLen {
		return "", errors.New("m2mauth: secret too long")
	}
	var salt [argon2SaltLen]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return "", fmt.Errorf("m2mauth: hash secret: %w", err)
	}
	key := argon2.IDKey([]byte(secret), salt[:], argon2Time, argon2Memory, argon2Threads, argon2KeyLen)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argon2Memory, argon2Time, argon2Threads,
		enc.EncodeToString(salt[:]), enc.EncodeToString(key)), nil
}

// VerifySecret reports whether secret matches hash, comparing in constant
// time. It reads hashes made by [HashSecret] and [HashSecretArgon2id] and
// bcrypt hashes. It returns [ErrUnknownHash] for a hash it cannot read.
//
// bcrypt reads at most 72 bytes of a secret, so a secret longer than that
// never matches a bcrypt hash: otherwise every string beginning with its
// first 72 bytes would. A client whose secret was that long when it was
// hashed with bcrypt elsewhere (some implementations cut it short without
// a word) needs a new secret.
func VerifySecret(hash, secret string) (bool, error) {
	if len(secret) > maxSecretLen {
		// Still spend the work so the length is not a timing oracle for
		// the cheap hash, then refuse.
		secret = secret[:maxSecretLen]
		_, err := VerifySecret(hash, secret)
		return false, err
	}
	switch {
	case strings.HasPrefix(hash, sha256Prefix):
		return verifySHA256(hash[len(sha256Prefix):], secret)
	case strings.HasPrefix(hash, argon2Prefix):
		return verifyArgon2id(hash[len(argon2Prefix):], secret)
	case isBcrypt(hash):
		if cost, err := bcrypt.Cost([]byte(hash)); err != nil || cost > maxBcryptCost {
			return false, ErrUnknownHash
		}
		if len(secret) > maxBcryptSecret {
			// bcrypt reads only a secret's first 72 bytes, so a
			// longer one would match every secret that begins with
			// them. Refused, after the same work.
			err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(secret[:maxBcryptSecret]))
			if err != nil && !errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
				return false, ErrUnknownHash
			}
			return false, nil
		}
		err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(secret))
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, bcrypt.ErrMismatchedHashAndPassword):
			return false, nil
		default:
			return false, ErrUnknownHash
		}
	}
	return false, ErrUnknownHash
}

func verifySHA256(rest, secret string) (bool, error) {
	saltB64, sumB64, ok := strings.Cut(rest, "$")
	enc := base64.RawStdEncoding
	if !ok || enc.DecodedLen(len(saltB64)) != sha256SaltLen || enc.DecodedLen(len(sumB64)) != sha256.Size {
		return false, ErrUnknownHash
	}
	var salt [sha256SaltLen]byte
	var want [sha256.Size]byte
	if _, err := enc.Decode(salt[:], []byte(saltB64)); err != nil {
		return false, ErrUnknownHash
	}
	if _, err := enc.Decode(want[:], []byte(sumB64)); err != nil {
		return false, ErrUnknownHash
	}
	got := saltedSHA256(salt[:], secret)
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1, nil
}

type argon2Params struct {
	m, t, p    uint64
	salt, want []byte
}

// parseArgon2id reads "v=19$m=..,t=..,p=..$salt$hash", refusing parameters
// that would make one verification unreasonably expensive.
func parseArgon2id(rest string) (argon2Params, error) {
	var a argon2Params
	parts := strings.Split(rest, "$")
	if len(parts) != 4 || parts[0] != "v="+strconv.Itoa(argon2.Version) {
		return a, ErrUnknownHash
	}
	for _, kv := range strings.Split(parts[1], ",") {
		k, v, _ := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return a, ErrUnknownHash
		}
		switch k {
		case "m":
			a.m = n
		case "t":
			a.t = n
		case "p":
			a.p = n
		default:
			return a, ErrUnknownHash
		}
	}
	if a.m == 0 || a.m > maxArgonMemory || a.t == 0 || a.t > maxArgonTime || a.p == 0 || a.p > maxArgonThread {
		return a, ErrUnknownHash
	}
	enc := base64.RawStdEncoding
	var err1, err2 error
	a.salt, err1 = enc.DecodeString(parts[2])
	a.want, err2 = enc.DecodeString(parts[3])
	if err1 != nil || err2 != nil || len(a.salt) < 8 || len(a.want) < 16 || len(a.want) > 64 {
		return a, ErrUnknownHash
	}
	return a, nil
}

func verifyArgon2id(rest, secret string) (bool, error) {
	a, err := parseArgon2id(rest)
	if err != nil {
		return false, err
	}
	got := argon2.IDKey([]byte(secret), a.salt, uint32(a.t), uint32(a.m), uint8(a.p), uint32(len(a.want)))
	return subtle.ConstantTimeCompare(got, a.want) == 1, nil
}

// ValidateSecretHash reports whether hash is a hash [VerifySecret] can
// read, without the cost of a verification.
func ValidateSecretHash(hash string) error {
	switch {
	case strings.HasPrefix(hash, sha256Prefix):
		_, err := verifySHA256(hash[len(sha256Prefix):], "")
		return err
	case strings.HasPrefix(hash, argon2Prefix):
		_, err := parseArgon2id(hash[len(argon2Prefix):])
		return err
	case isBcrypt(hash):
		if cost, err := bcrypt.Cost([]byte(hash)); err != nil || cost > maxBcryptCost {
			return ErrUnknownHash
		}
		return nil
	}
	return ErrUnknownHash
}

// hashCost returns the part of hash that decides what verifying it costs:
// the algorithm and its parameters, without salt or digest. Two hashes
// with the same cost take the same time to verify.
func hashCost(hash string) string {
	switch {
	case strings.HasPrefix(hash, sha256Prefix):
		return sha256Prefix
	case strings.HasPrefix(hash, argon2Prefix):
		// "$argon2id$v=19$m=..,t=..,p=..$": up to the salt.
		n := len(argon2Prefix)
		for k := 0; k < 2; k++ {
			i := strings.IndexByte(hash[n:], '$')
			if i < 0 {
				return hash
			}
			n += i + 1
		}
		return hash[:n]
	case isBcrypt(hash) && len(hash) >= 7:
		return hash[:7] // "$2b$12$"
	}
	return ""
}

// slowHash reports whether verifying hash is deliberately expensive
// (argon2id, bcrypt), so that verifications of it must be rationed.
func slowHash(hash string) bool {
	return !strings.HasPrefix(hash, sha256Prefix)
}

func isBcrypt(hash string) bool {
	return strings.HasPrefix(hash, "$2a$") || strings.HasPrefix(hash, "$2b$") || strings.HasPrefix(hash, "$2y$")
}

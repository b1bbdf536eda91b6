package m2mauth

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// KEKSize is the length of a key-encryption key of an [AESKeySealer]:
// 32 bytes, for AES-256.
const KEKSize = 32

const (
	// sealVersion is the first byte of every ciphertext an AESKeySealer
	// writes; another value is another format.
	sealVersion = 1
	// kekIDLen is the length of the KEK id that follows it.
	kekIDLen      = 8
	sealHeaderLen = 1 + kekIDLen
	sealNonceLen  = 12 // the GCM standard nonce
	sealTagLen    = 16
	// kekIDLabel separates the hash that names a KEK from any other use
	// of SHA-256 over the same bytes.
	kekIDLabel = "m2mauth key-encryption key id\x00"
)

// AESKeySealer is a [KeySealer] that encrypts with AES-256-GCM under a
// 32-byte key-encryption key (KEK) held in memory, for instance one read
// from the environment with [ParseKEK].
//
// A ciphertext is a version byte (1), the 8-byte id of the KEK that
// sealed it, a random 12-byte nonce, and the GCM ciphertext and 16-byte
// tag; the version, the KEK id and the caller's additional data are all
// authenticated. The KEK id is the first 8 bytes of SHA-256 over a fixed
// label and the KEK: it names the KEK, safely printable, without
// revealing it (see [AESKeySealer.KEKID]).
//
// To rotate the KEK, give every replica NewAESKeySealer(newKEK, oldKEK),
// which seals under the new KEK and opens under both; reseal the stored
// keys with [ResealKeys]; then drop the old KEK. A replica that cannot
// yet open the new KEK keeps signing with the key it holds while others
// publish keys sealed under it; where the rollout may take as long as
// [ManagedKeysConfig].MaxTokenTTL, give every replica
// NewAESKeySealer(oldKEK, newKEK) first, so that all open both before
// any seals under the new one.
//
// An AESKeySealer is immutable and safe for concurrent use.
type AESKeySealer struct {
	keks []sealKEK // the sealing KEK first, then the previous ones
}

// sealKEK is one KEK, kept only as its AES-GCM cipher.
type sealKEK struct {
	id   [kekIDLen]byte
	aead cipher.AEAD
}

// NewAESKeySealer returns a sealer that seals under kek and opens what
// was sealed under kek or under any of previous. Each KEK must be
// exactly [KEKSize] random bytes; a KEK of zero bytes only is refused as
// a placeholder. A previous KEK equal to kek, or to another one, is
// ignored. The KEKs are not kept: only their AES key schedules are.
func NewAESKeySealer(kek []byte, previous ...[]byte) (*AESKeySealer, error) {
	s := &AESKeySealer{keks: make([]sealKEK, 0, 1+len(previous))}
	for i, k := range append([][]byte{kek}, previous...) {
		name := "KEK"
		if i > 0 {
			name = fmt.Sprintf("previous KEK %d", i)
		}
		if len(k) != KEKSize {
			return nil, fmt.Errorf("m2mauth: %s is %d bytes, not %d", name, len(k), KEKSize)
		}
		if allZero(k) {
			return nil, fmt.Errorf("m2mauth: %s is all zero bytes; use %d random bytes", name, KEKSize)
		}
		id := kekID(k)
		if s.find(id) != nil {
			continue
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, fmt.Errorf("m2mauth: %s: %w", name, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("m2mauth: %s: %w", name, err)
		}
		s.keks = append(s.keks, sealKEK{id: id, aead: aead})
	}
	return s, nil
}

// kekID returns the id of kek.
func kekID(kek []byte) [kekIDLen]byte {
	h := sha256.New()
	h.Write([]byte(kekIDLabel))
	h.Write(kek)
	var sum [sha256.Size]byte
	var id [kekIDLen]byte
	copy(id[:], h.Sum(sum[:0]))
	return id
}

// find returns the KEK of id, or nil.
func (s *AESKeySealer) find(id [kekIDLen]byte) *sealKEK {
	for i := range s.keks {
		if s.keks[i].id == id {
			return &s.keks[i]
		}
	}
	return nil
}

// KEKID returns the id of the KEK s seals under, 16 hexadecimal digits:
// safe to log and print, it tells which KEK a replica holds without
// revealing it.
func (s *AESKeySealer) KEKID() string { return hex.EncodeToString(s.keks[0].id[:]) }

// Seal implements [KeySealer]: it encrypts plaintext under the KEK,
// binding it to additionalData, with a fresh random nonce.
func (s *AESKeySealer) Seal(plaintext, additionalData []byte) ([]byte, error) {
	k := &s.keks[0]
	out := make([]byte, sealHeaderLen+sealNonceLen, sealHeaderLen+sealNonceLen+len(plaintext)+sealTagLen)
	out[0] = sealVersion
	copy(out[1:sealHeaderLen], k.id[:])
	if _, err := rand.Read(out[sealHeaderLen:]); err != nil {
		return nil, fmt.Errorf("m2mauth: sealing: reading a nonce: %w", err)
	}
	nonce := out[sealHeaderLen : sealHeaderLen+sealNonceLen]
	return k.aead.Seal(out, nonce, plaintext, sealAD(out[:sealHeaderLen], additionalData)), nil
}

// Open implements [KeySealer]: it decrypts a ciphertext of Seal under
// any KEK s holds. A ciphertext of another KEK gets an error naming both
// its KEK id and those s holds; an altered ciphertext, or one sealed for
// other additionalData, an error saying so. Errors never hold key
// material.
func (s *AESKeySealer) Open(ciphertext, additionalData []byte) ([]byte, error) {
	if len(ciphertext) < sealHeaderLen+sealNonceLen+sealTagLen {
		return nil, fmt.Errorf("m2mauth: sealed key of %d bytes is too short", len(ciphertext))
	}
	if ciphertext[0] != sealVersion {
		return nil, fmt.Errorf("m2mauth: sealed key of format version %d, not %d", ciphertext[0], sealVersion)
	}
	id := [kekIDLen]byte(ciphertext[1:sealHeaderLen])
	k := s.find(id)
	if k == nil {
		held := make([]string, len(s.keks))
		for i := range s.keks {
			held[i] = hex.EncodeToString(s.keks[i].id[:])
		}
		return nil, fmt.Errorf("m2mauth: key sealed under KEK %x, which is not configured (configured KEKs: %s)",
			id, strings.Join(held, ", "))
	}
	nonce := ciphertext[sealHeaderLen : sealHeaderLen+sealNonceLen]
	plain, err := k.aead.Open(nil, nonce, ciphertext[sealHeaderLen+sealNonceLen:], sealAD(ciphertext[:sealHeaderLen], additionalData))
	if err != nil {
		return nil, fmt.Errorf("m2mauth: sealed key does not open under KEK %x: it was altered, or sealed for another key", id)
	}
	return plain, nil
}

// sealAD returns the additional data GCM authenticates: the header
// (version and KEK id, fixed length) followed by the caller's.
func sealAD(header, additionalData []byte) []byte {
	ad := make([]byte, 0, len(header)+len(additionalData))
	return append(append(ad, header...), additionalData...)
}

// ParseKEK decodes a key-encryption key for [NewAESKeySealer] from
// base64, standard or URL alphabet, padded or not, surrounding white
// space ignored; it must decode to exactly [KEKSize] bytes. Make one with
//
//	openssl rand -base64 32
//
// Errors never repeat s.
func ParseKEK(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("m2mauth: the KEK is empty")
	}
	for _, enc := range [...]*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		b, err := enc.Strict().DecodeString(s)
		if err != nil {
			continue
		}
		if len(b) != KEKSize {
			clear(b)
			return nil, fmt.Errorf("m2mauth: the KEK decodes to %d bytes, not %d", len(b), KEKSize)
		}
		return b, nil
	}
	return nil, errors.New("m2mauth: the KEK is not base64 (standard or URL alphabet, padded or not)")
}

var _ KeySealer = (*AESKeySealer)(nil)

// allZero reports whether b holds zero bytes only: a key or secret that
// was never filled in.
func allZero(b []byte) bool {
	var or byte
	for _, c := range b {
		or |= c
	}
	return or == 0
}

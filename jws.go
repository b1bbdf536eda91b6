package m2mauth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"sync"

	"github.com/go-jose/go-jose/v4"
)

// This file holds every line that depends on the signature algorithm:
// which algorithms exist, which key material each takes, how each signs
// and verifies (RFC 7515 §5, RFC 7518 §3, RFC 8037 §3.1). Adding an
// algorithm means adding a case to the switches here and nothing
// elsewhere: the token handler and the validator see only a jwsSigner
// and a jwsVerifier.

// MinHMACKeyLen is the shortest HS256 key accepted: 32 bytes, the output
// size of SHA-256 (RFC 7518 §3.2).
const MinHMACKeyLen = 32

// MinRSAKeyBits is the shortest RSA modulus accepted for RS256 and PS256:
// 2048 bits (RFC 7518 §3.3 and §3.5).
const MinRSAKeyBits = 2048

// maxRSAKeyBits bounds the cost of one RSA verification.
const maxRSAKeyBits = 16384

// SupportedAlgorithms returns the JWS algorithms this package signs and
// verifies: HS256 (HMAC SHA-256), ES256 (ECDSA P-256 SHA-256), EdDSA
// (Ed25519), RS256 (RSASSA-PKCS1-v1_5 SHA-256) and PS256 (RSASSA-PSS
// SHA-256). The caller may modify the returned slice.
func SupportedAlgorithms() []jose.SignatureAlgorithm {
	return []jose.SignatureAlgorithm{jose.HS256, jose.ES256, jose.EdDSA, jose.RS256, jose.PS256}
}

// isSupported reports whether alg is one of [SupportedAlgorithms].
func isSupported(alg jose.SignatureAlgorithm) bool {
	switch alg {
	case jose.HS256, jose.ES256, jose.EdDSA, jose.RS256, jose.PS256:
		return true
	}
	return false
}

// inferAlgorithm names the one algorithm a public key without "alg" can
// be for: ES256 for a P-256 key, EdDSA for an Ed25519 key. An RSA key fits
// both RS256 and PS256, so it has none.
func inferAlgorithm(key any) (jose.SignatureAlgorithm, bool) {
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		return jose.ES256, k.Curve == elliptic.P256()
	case ed25519.PublicKey:
		return jose.EdDSA, true
	}
	return "", false
}

// checkKey enforces what every key must have: a kid, use "sig" or none,
// an algorithm this package implements, and key material of the type and
// size that algorithm takes. The material may be private (a
// [crypto.Signer]) or public; a verifier uses the public half.
func checkKey(k *jose.JSONWebKey) error {
	if k.KeyID == "" {
		return errors.New("m2mauth: key has no key id (kid)")
	}
	if k.Use != "" && k.Use != "sig" {
		return fmt.Errorf("m2mauth: key %q: use %q is not \"sig\"", k.KeyID, k.Use)
	}
	if err := checkMaterial(jose.SignatureAlgorithm(k.Algorithm), k.Key); err != nil {
		return fmt.Errorf("m2mauth: key %q: %w", k.KeyID, err)
	}
	return nil
}

// checkMaterial checks that key is material alg takes.
func checkMaterial(alg jose.SignatureAlgorithm, key any) error {
	if alg == jose.HS256 {
		b, ok := key.([]byte)
		if !ok {
			return fmt.Errorf("HS256 needs a []byte key, got %T", key)
		}
		if len(b) < MinHMACKeyLen {
			return fmt.Errorf("HS256 key must be at least %d bytes", MinHMACKeyLen)
		}
		return nil
	}
	if !isSupported(alg) {
		return fmt.Errorf("unsupported algorithm %q (supported: %v)", alg, SupportedAlgorithms())
	}
	if priv, ok := key.(ed25519.PrivateKey); ok && len(priv) != ed25519.PrivateKeySize {
		return fmt.Errorf("Ed25519 private key of %d bytes", len(priv))
	}
	pub := publicKey(key)
	if pub == nil {
		return fmt.Errorf("%s needs a public key or a crypto.Signer, got %T", alg, key)
	}
	return checkPublic(alg, pub)
}

// checkPublic checks the public key of an asymmetric algorithm.
func checkPublic(alg jose.SignatureAlgorithm, pub crypto.PublicKey) error {
	switch alg {
	case jose.ES256:
		p, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			return fmt.Errorf("ES256 needs a P-256 ECDSA key, got %T", pub)
		}
		if p.Curve != elliptic.P256() {
			return fmt.Errorf("ES256 needs a P-256 key, got %s", curveName(p.Curve))
		}
		if _, err := p.Bytes(); err != nil { // the point is on the curve
			return fmt.Errorf("invalid P-256 public key: %w", err)
		}
	case jose.EdDSA:
		p, ok := pub.(ed25519.PublicKey)
		if !ok {
			return fmt.Errorf("EdDSA needs an Ed25519 key, got %T", pub)
		}
		if len(p) != ed25519.PublicKeySize {
			return fmt.Errorf("Ed25519 public key of %d bytes", len(p))
		}
	case jose.RS256, jose.PS256:
		p, ok := pub.(*rsa.PublicKey)
		if !ok {
			return fmt.Errorf("%s needs an RSA key, got %T", alg, pub)
		}
		if p.N == nil {
			return errors.New("RSA key has no modulus")
		}
		if n := p.N.BitLen(); n < MinRSAKeyBits || n > maxRSAKeyBits {
			return fmt.Errorf("RSA key of %d bits outside [%d, %d]", n, MinRSAKeyBits, maxRSAKeyBits)
		}
	default:
		return fmt.Errorf("unsupported algorithm %q", alg)
	}
	return nil
}

func curveName(c elliptic.Curve) string {
	if c == nil || c.Params() == nil {
		return "no curve"
	}
	return c.Params().Name
}

// publicKey returns the public half of asymmetric key material: the key
// itself when it is public, Public() when it is a [crypto.Signer], and
// nil otherwise (an HS256 secret, an unknown type).
func publicKey(key any) crypto.PublicKey {
	switch k := key.(type) {
	case *ecdsa.PublicKey, *rsa.PublicKey, ed25519.PublicKey:
		return k
	case crypto.Signer:
		return k.Public()
	}
	return nil
}

// checkSigningKey is checkKey for a key that must also sign.
func checkSigningKey(k *jose.JSONWebKey) error {
	if err := checkKey(k); err != nil {
		return err
	}
	if err := checkSigner(k.Key); err != nil {
		return fmt.Errorf("m2mauth: key %q: %w", k.KeyID, err)
	}
	return nil
}

// checkSigner checks that key material that passed checkMaterial can
// sign: an HS256 secret, or a [crypto.Signer].
func checkSigner(key any) error {
	switch key.(type) {
	case []byte, crypto.Signer:
		return nil
	}
	return fmt.Errorf("a signing key needs a private key or a crypto.Signer, got the public %T", key)
}

// generateKey returns new private key material for alg.
func generateKey(alg jose.SignatureAlgorithm) (any, error) {
	switch alg {
	case jose.HS256:
		b := make([]byte, MinHMACKeyLen)
		_, err := rand.Read(b)
		return b, err
	case jose.ES256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case jose.EdDSA:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		return priv, err
	case jose.RS256, jose.PS256:
		return rsa.GenerateKey(rand.Reader, MinRSAKeyBits)
	}
	return nil, fmt.Errorf("m2mauth: unsupported algorithm %q (supported: %v)", alg, SupportedAlgorithms())
}

// jwsSigner makes the signatures of one key.
type jwsSigner interface {
	// appendSignature appends the base64url signature of input
	// (RFC 7515 §5.1 steps 5 and 6) to dst. input may share dst's
	// array, so it is read in full before anything is appended.
	appendSignature(dst, input []byte) ([]byte, error)
}

// jwsVerifier checks the signatures of one key.
type jwsVerifier interface {
	// sigLen is the length in bytes of every valid signature.
	sigLen() int
	// verify reports whether sig, of sigLen bytes, is a valid signature
	// of input.
	verify(input, sig []byte) bool
}

// newJWSSigner returns the signer of k, which must pass checkSigningKey.
func newJWSSigner(k *jose.JSONWebKey) (jwsSigner, error) {
	if err := checkSigningKey(k); err != nil {
		return nil, err
	}
	alg := jose.SignatureAlgorithm(k.Algorithm)
	if alg == jose.HS256 {
		return newHMACPool(k.Key.([]byte)), nil
	}
	s := &cryptoSigner{kid: k.KeyID, alg: alg, key: k.Key.(crypto.Signer)}
	switch alg {
	case jose.ES256:
		s.opts, s.size = crypto.SHA256, 64
	case jose.EdDSA:
		s.opts, s.size = crypto.Hash(0), ed25519.SignatureSize
	case jose.RS256:
		s.opts, s.size = crypto.SHA256, publicKey(k.Key).(*rsa.PublicKey).Size()
	case jose.PS256:
		// RFC 7518 §3.5: the salt is as long as the hash output.
		s.opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
		s.size = publicKey(k.Key).(*rsa.PublicKey).Size()
	}
	return s, nil
}

// newJWSVerifier returns the verifier of k, which must pass checkKey. A
// private key verifies with its public half.
func newJWSVerifier(k *jose.JSONWebKey) (jwsVerifier, error) {
	if err := checkKey(k); err != nil {
		return nil, err
	}
	switch jose.SignatureAlgorithm(k.Algorithm) {
	case jose.HS256:
		return newHMACPool(k.Key.([]byte)), nil
	case jose.ES256:
		return ecdsaVerifier{publicKey(k.Key).(*ecdsa.PublicKey)}, nil
	case jose.EdDSA:
		return ed25519Verifier(publicKey(k.Key).(ed25519.PublicKey)), nil
	case jose.RS256:
		return &rsaVerifier{pub: publicKey(k.Key).(*rsa.PublicKey)}, nil
	case jose.PS256:
		return &rsaVerifier{
			pub: publicKey(k.Key).(*rsa.PublicKey),
			pss: &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256},
		}, nil
	}
	return nil, fmt.Errorf("m2mauth: key %q: unsupported algorithm %q", k.KeyID, k.Algorithm)
}

// HS256 (RFC 7518 §3.2).

// hmacPool hands out HMAC-SHA256 states keyed with one secret, so signing
// and verifying skip the key schedule and allocate nothing: each
// signature costs one SHA-256 pass over the signing input and one over
// the inner digest.
type hmacPool struct{ p sync.Pool }

type hmacState struct {
	mac hash.Hash
	out [sha256.Size]byte
}

func newHMACPool(key []byte) *hmacPool {
	key = append([]byte(nil), key...)
	hp := &hmacPool{}
	hp.p.New = func() any { return &hmacState{mac: hmac.New(sha256.New, key)} }
	return hp
}

// sum returns HMAC-SHA256(key, msg).
func (hp *hmacPool) sum(msg []byte) [sha256.Size]byte {
	st := hp.p.Get().(*hmacState)
	st.mac.Reset()
	st.mac.Write(msg)
	st.mac.Sum(st.out[:0])
	out := st.out
	hp.p.Put(st)
	return out
}

func (hp *hmacPool) appendSignature(dst, input []byte) ([]byte, error) {
	sig := hp.sum(input)
	return appendBase64URL(dst, sig[:]), nil
}

func (hp *hmacPool) sigLen() int { return sha256.Size }

func (hp *hmacPool) verify(input, sig []byte) bool {
	want := hp.sum(input)
	return hmac.Equal(want[:], sig)
}

// ES256, EdDSA, RS256 and PS256 signing, through crypto.Signer so the
// private key may live in a KMS or an HSM.

type cryptoSigner struct {
	kid  string
	alg  jose.SignatureAlgorithm
	key  crypto.Signer
	opts crypto.SignerOpts
	size int // the length of the JWS signature
}

func (s *cryptoSigner) appendSignature(dst, input []byte) ([]byte, error) {
	msg := input
	if s.alg != jose.EdDSA { // Ed25519 hashes the message itself
		d := sha256.Sum256(input)
		msg = d[:]
	}
	sig, err := s.key.Sign(rand.Reader, msg, s.opts)
	if err != nil {
		return dst, fmt.Errorf("m2mauth: signing with key %q: %w", s.kid, err)
	}
	if s.alg == jose.ES256 {
		// crypto.Signer returns ASN.1 DER; JWS takes R || S, each
		// 32 bytes big-endian (RFC 7518 §3.4).
		var raw [64]byte
		if !ecdsaDERToRaw(raw[:], sig) {
			return dst, fmt.Errorf("m2mauth: signing with key %q: the signer returned a malformed ECDSA signature", s.kid)
		}
		return appendBase64URL(dst, raw[:]), nil
	}
	if len(sig) != s.size {
		return dst, fmt.Errorf("m2mauth: signing with key %q: the signer returned %d bytes, not %d", s.kid, len(sig), s.size)
	}
	return appendBase64URL(dst, sig), nil
}

// ES256 (RFC 7518 §3.4).

// ecdsaVerifier verifies ES256 signatures. ECDSA signatures are
// malleable: (R, n-S) verifies wherever (R, S) does, so the same claims
// signed once can travel as two token strings. Nothing here identifies a
// token by its string beyond the verified-token cache, for which both
// are equally valid.
type ecdsaVerifier struct{ pub *ecdsa.PublicKey }

func (ecdsaVerifier) sigLen() int { return 64 }

func (v ecdsaVerifier) verify(input, sig []byte) bool {
	if len(sig) != 64 { // R || S, never ASN.1 DER
		return false
	}
	d := sha256.Sum256(input)
	var der [72]byte
	return ecdsa.VerifyASN1(v.pub, d[:], ecdsaRawToDER(der[:0], sig[:32], sig[32:]))
}

// ecdsaRawToDER appends the ASN.1 DER ECDSA-Sig-Value SEQUENCE { r
// INTEGER, s INTEGER } of the big-endian unsigned r and s to dst. For
// P-256 every length fits in one byte.
func ecdsaRawToDER(dst, r, s []byte) []byte {
	r, s = trimZeros(r), trimZeros(s)
	dst = append(dst, 0x30, byte(derIntLen(r)+derIntLen(s)))
	return appendDERInt(appendDERInt(dst, r), s)
}

func trimZeros(b []byte) []byte {
	for len(b) > 1 && b[0] == 0 {
		b = b[1:]
	}
	return b
}

func derIntLen(b []byte) int {
	if b[0]&0x80 != 0 {
		return 3 + len(b)
	}
	return 2 + len(b)
}

func appendDERInt(dst, b []byte) []byte {
	if b[0]&0x80 != 0 {
		return append(append(dst, 0x02, byte(len(b)+1), 0), b...)
	}
	return append(append(dst, 0x02, byte(len(b))), b...)
}

// ecdsaDERToRaw writes the r and s of the DER ECDSA-Sig-Value der into
// raw, each left-padded to half of raw. It reports false unless der is
// one SEQUENCE of two positive INTEGERs that fit.
func ecdsaDERToRaw(raw, der []byte) bool {
	if len(der) < 2 || der[0] != 0x30 || der[1] >= 0x80 || int(der[1]) != len(der)-2 {
		return false
	}
	rest := der[2:]
	n := len(raw) / 2
	for i := range 2 {
		if len(rest) < 2 || rest[0] != 0x02 {
			return false
		}
		l := int(rest[1])
		if l == 0 || l >= 0x80 || l > len(rest)-2 {
			return false
		}
		v := rest[2 : 2+l]
		rest = rest[2+l:]
		if v[0]&0x80 != 0 { // negative
			return false
		}
		v = trimZeros(v)
		if len(v) > n {
			return false
		}
		out := raw[i*n : (i+1)*n]
		clear(out)
		copy(out[n-len(v):], v)
	}
	return len(rest) == 0
}

// EdDSA with Ed25519 (RFC 8037 §3.1).

type ed25519Verifier ed25519.PublicKey

func (ed25519Verifier) sigLen() int { return ed25519.SignatureSize }

func (v ed25519Verifier) verify(input, sig []byte) bool {
	return ed25519.Verify(ed25519.PublicKey(v), input, sig)
}

// RS256 (RFC 7518 §3.3) and PS256 (RFC 7518 §3.5).

type rsaVerifier struct {
	pub *rsa.PublicKey
	pss *rsa.PSSOptions // nil for RS256
}

func (v *rsaVerifier) sigLen() int { return v.pub.Size() }

func (v *rsaVerifier) verify(input, sig []byte) bool {
	d := sha256.Sum256(input)
	if v.pss != nil {
		return rsa.VerifyPSS(v.pub, crypto.SHA256, d[:], sig, v.pss) == nil
	}
	return rsa.VerifyPKCS1v15(v.pub, crypto.SHA256, d[:], sig) == nil
}

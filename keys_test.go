package m2mauth_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

func TestNewHS256Key(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	k, err := m2mauth.NewHS256Key("", secret)
	require.NoError(t, err)
	assert.NotEmpty(t, k.KeyID)
	assert.Equal(t, "HS256", k.Algorithm)
	k2, err := m2mauth.NewHS256Key("", secret)
	require.NoError(t, err)
	assert.Equal(t, k.KeyID, k2.KeyID, "derived kid is stable")
	secret[0] = 'X'
	assert.Equal(t, byte('0'), k.Key.([]byte)[0], "the key holds a copy")

	_, err = m2mauth.NewHS256Key("k", secret[:31])
	assert.Error(t, err, "RFC 7518 §3.2: at least 256 bits")
}

func TestNewStaticKeys(t *testing.T) {
	k1, err := m2mauth.NewHS256Key("k1", []byte("0123456789abcdef0123456789abcdef"))
	require.NoError(t, err)
	k2, err := m2mauth.NewHS256Key("k2", []byte("fedcba9876543210fedcba9876543210"))
	require.NoError(t, err)
	ec := privateKeys()[jose.ES256].(*ecdsa.PrivateKey)
	ed := privateKeys()[jose.EdDSA].(ed25519.PrivateKey)
	rsa2048 := privateKeys()[jose.RS256].(*rsa.PrivateKey)
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	p384 := mustECKey(t, elliptic.P384())
	offCurve := ec.PublicKey
	offCurve.Y = new(big.Int).Add(offCurve.Y, big.NewInt(1))

	keys, err := m2mauth.NewStaticKeys(k2, k1)
	require.NoError(t, err)
	sk, err := keys.SigningKey(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "k2", sk.KeyID)
	set, err := keys.VerificationKeys(t.Context())
	require.NoError(t, err)
	assert.Len(t, set.Key("k1"), 1)
	assert.Len(t, set.Key("k2"), 1)

	tests := []struct {
		name string
		keys []jose.JSONWebKey
	}{
		{"duplicate kid", []jose.JSONWebKey{k1, k1}},
		{"no kid", []jose.JSONWebKey{{Key: k1.Key, Algorithm: "HS256"}}},
		{"alg none", []jose.JSONWebKey{{Key: k1.Key, KeyID: "x", Algorithm: "none"}}},
		{"no alg", []jose.JSONWebKey{{Key: k1.Key, KeyID: "x"}}},
		{"short key", []jose.JSONWebKey{{Key: []byte("short"), KeyID: "x", Algorithm: "HS256"}}},
		{"HS256 with an asymmetric key", []jose.JSONWebKey{{Key: ec, KeyID: "x", Algorithm: "HS256"}}},
		{"encryption use", []jose.JSONWebKey{{Key: k1.Key, KeyID: "x", Algorithm: "HS256", Use: "enc"}}},
		{"RSA 1024 for RS256, RFC 7518 §3.3", []jose.JSONWebKey{{Key: rsa1024, KeyID: "x", Algorithm: "RS256"}}},
		{"RSA 1024 for PS256, RFC 7518 §3.5", []jose.JSONWebKey{{Key: rsa1024, KeyID: "x", Algorithm: "PS256"}}},
		{"RSA 1024 public key among previous keys", []jose.JSONWebKey{k1, {Key: rsa1024.Public(), KeyID: "x", Algorithm: "RS256"}}},
		{"P-384 key for ES256, RFC 7518 §3.4", []jose.JSONWebKey{{Key: p384, KeyID: "x", Algorithm: "ES256"}}},
		{"P-384 public key for ES256 among previous keys", []jose.JSONWebKey{k1, {Key: p384.Public(), KeyID: "x", Algorithm: "ES256"}}},
		{"Ed25519 key for ES256", []jose.JSONWebKey{{Key: ed, KeyID: "x", Algorithm: "ES256"}}},
		{"EC key for EdDSA, RFC 8037 §3.1", []jose.JSONWebKey{{Key: ec, KeyID: "x", Algorithm: "EdDSA"}}},
		{"RSA key for ES256", []jose.JSONWebKey{{Key: rsa2048, KeyID: "x", Algorithm: "ES256"}}},
		{"EC key for RS256", []jose.JSONWebKey{{Key: ec, KeyID: "x", Algorithm: "RS256"}}},
		{"secret bytes for ES256", []jose.JSONWebKey{{Key: k1.Key, KeyID: "x", Algorithm: "ES256"}}},
		{"short Ed25519 private key", []jose.JSONWebKey{{Key: ed[:40], KeyID: "x", Algorithm: "EdDSA"}}},
		{"short Ed25519 public key", []jose.JSONWebKey{k1, {Key: ed25519.PublicKey(make([]byte, 31)), KeyID: "x", Algorithm: "EdDSA"}}},
		{"EC point off the curve", []jose.JSONWebKey{k1, {Key: &offCurve, KeyID: "x", Algorithm: "ES256"}}},
		{"ES384 not implemented", []jose.JSONWebKey{{Key: p384, KeyID: "x", Algorithm: "ES384"}}},
		{"asymmetric key without alg", []jose.JSONWebKey{{Key: ec, KeyID: "x"}}},
		{"public key as the signing key", []jose.JSONWebKey{{Key: ec.Public(), KeyID: "x", Algorithm: "ES256"}}},
		{"asymmetric key without kid", []jose.JSONWebKey{{Key: ec, Algorithm: "ES256"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m2mauth.NewStaticKeys(tc.keys[0], tc.keys[1:]...)
			assert.Error(t, err)
		})
	}
}

// TestNewStaticKeysAlgorithms: a static provider takes a signing key of
// every algorithm, previous keys public or private, and a mix of
// algorithms.
func TestNewStaticKeysAlgorithms(t *testing.T) {
	for _, alg := range m2mauth.SupportedAlgorithms() {
		t.Run(string(alg), func(t *testing.T) {
			var previous []jose.JSONWebKey
			for _, other := range m2mauth.SupportedAlgorithms() {
				if other != alg {
					previous = append(previous, verifyingJWK(other))
				}
			}
			keys, err := m2mauth.NewStaticKeys(signingJWK(alg), previous...)
			require.NoError(t, err)
			set, err := keys.VerificationKeys(t.Context())
			require.NoError(t, err)
			assert.Len(t, set.Keys, len(m2mauth.SupportedAlgorithms()))
		})
	}
}

// TestGenerateSigningKey: a new key of each algorithm, with its RFC 7638
// thumbprint as kid, that signs tokens a validator accepts.
func TestGenerateSigningKey(t *testing.T) {
	for _, alg := range m2mauth.SupportedAlgorithms() {
		t.Run(string(alg), func(t *testing.T) {
			k, err := m2mauth.GenerateSigningKey(alg)
			require.NoError(t, err)
			assert.Equal(t, string(alg), k.Algorithm)
			assert.Equal(t, "sig", k.Use)
			if alg == jose.HS256 {
				require.Len(t, k.Key, 32)
				want, err := m2mauth.NewHS256Key("", k.Key.([]byte))
				require.NoError(t, err)
				assert.Equal(t, want.KeyID, k.KeyID)
			} else {
				pub := k.Public()
				tp, err := pub.Thumbprint(crypto.SHA256)
				require.NoError(t, err)
				assert.Equal(t, base64.RawURLEncoding.EncodeToString(tp), k.KeyID, "RFC 7638 thumbprint")
			}
			pub := k
			if s, ok := k.Key.(crypto.Signer); ok {
				pub.Key = s.Public()
			}
			s := newAlgServer(t, k, []jose.JSONWebKey{pub})
			code, tok := s.token(t)
			require.Equal(t, 200, code, tok.ErrorDescription)
			code, _, _ = s.get(t, tok.AccessToken)
			assert.Equal(t, 200, code)
		})
	}
	for _, alg := range []jose.SignatureAlgorithm{"none", "", jose.ES384, jose.HS512, "es256"} {
		_, err := m2mauth.GenerateSigningKey(alg)
		assert.Error(t, err, "%q", alg)
	}
}

// TestKeyPEM: keys written by MarshalKeyPEM come back the same, kid
// included, and the common private key encodings load.
func TestKeyPEM(t *testing.T) {
	for _, alg := range []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA, jose.RS256, jose.PS256} {
		t.Run("round trip "+string(alg), func(t *testing.T) {
			k, err := m2mauth.NewSignerKey(alg, "", privateKeys()[alg])
			require.NoError(t, err)
			data, err := m2mauth.MarshalKeyPEM(k)
			require.NoError(t, err)
			assert.Contains(t, string(data), "-----BEGIN PRIVATE KEY-----")
			back, err := m2mauth.ParseKeyPEM(alg, "", data)
			require.NoError(t, err)
			assert.Equal(t, k.KeyID, back.KeyID)
			assert.Equal(t, string(alg), back.Algorithm)
			assert.True(t, back.Key.(interface{ Equal(crypto.PrivateKey) bool }).Equal(k.Key))

			pub, err := m2mauth.MarshalKeyPEM(verifyingJWK(alg))
			require.NoError(t, err)
			assert.Contains(t, string(pub), "-----BEGIN PUBLIC KEY-----")
			vk, err := m2mauth.ParseKeyPEM(alg, "", pub)
			require.NoError(t, err)
			assert.Equal(t, k.KeyID, vk.KeyID, "the public key has the same thumbprint")
			_, err = m2mauth.NewStaticKeys(vk)
			assert.Error(t, err, "a public key cannot sign")
			_, err = m2mauth.NewStaticKeys(k, func() jose.JSONWebKey { vk.KeyID = "old"; return vk }())
			assert.NoError(t, err, "but it verifies")
		})
	}

	ec := privateKeys()[jose.ES256].(*ecdsa.PrivateKey)
	sec1, err := x509.MarshalECPrivateKey(ec)
	require.NoError(t, err)
	pkcs1 := x509.MarshalPKCS1PrivateKey(privateKeys()[jose.RS256].(*rsa.PrivateKey))
	block := func(typ string, b []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}) }
	ecParams := block("EC PARAMETERS", []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07})
	encrypted := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00"}, Bytes: sec1})

	tests := []struct {
		name string
		alg  jose.SignatureAlgorithm
		kid  string
		data []byte
		ok   bool
	}{
		{"SEC 1 EC PRIVATE KEY after EC PARAMETERS (openssl ecparam -genkey)", jose.ES256, "", append(ecParams, block("EC PRIVATE KEY", sec1)...), true},
		{"PKCS #1 RSA PRIVATE KEY", jose.RS256, "", block("RSA PRIVATE KEY", pkcs1), true},
		{"PKCS #1 RSA PRIVATE KEY for PS256, kid given", jose.PS256, "ps-1", block("RSA PRIVATE KEY", pkcs1), true},
		{"EC key for RS256", jose.RS256, "", block("EC PRIVATE KEY", sec1), false},
		{"RSA key for ES256", jose.ES256, "", block("RSA PRIVATE KEY", pkcs1), false},
		{"HS256 is not PEM", jose.HS256, "", block("EC PRIVATE KEY", sec1), false},
		{"unknown algorithm", jose.ES384, "", block("EC PRIVATE KEY", sec1), false},
		{"two keys", jose.ES256, "", append(block("EC PRIVATE KEY", sec1), block("EC PRIVATE KEY", sec1)...), false},
		{"no key", jose.ES256, "", ecParams, false},
		{"not PEM", jose.ES256, "", []byte("hello"), false},
		{"encrypted PEM", jose.ES256, "", encrypted, false},
		{"encrypted PKCS #8", jose.ES256, "", block("ENCRYPTED PRIVATE KEY", sec1), false},
		{"garbage in a key block", jose.ES256, "", block("PRIVATE KEY", []byte("garbage")), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := m2mauth.ParseKeyPEM(tc.alg, tc.kid, tc.data)
			if !tc.ok {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, string(tc.alg), k.Algorithm)
			if tc.kid != "" {
				assert.Equal(t, tc.kid, k.KeyID)
			}
			_, err = m2mauth.NewStaticKeys(k)
			assert.NoError(t, err)
		})
	}

	_, err = m2mauth.MarshalKeyPEM(signingJWK(jose.HS256))
	assert.Error(t, err, "HS256 secrets are not PEM")
	kms, err := m2mauth.NewSignerKey(jose.ES256, "", signerOnly{ec})
	require.NoError(t, err)
	_, err = m2mauth.MarshalKeyPEM(kms)
	assert.Error(t, err, "a key held by another signer cannot be exported")
}

// TestParseJWK: JWK documents (RFC 7517) of every kind load, and their alg
// must agree with the one asked for.
func TestParseJWK(t *testing.T) {
	doc := func(k jose.JSONWebKey) []byte {
		b, err := json.Marshal(k)
		require.NoError(t, err)
		return b
	}
	es := signingJWK(jose.ES256)
	noAlg := es
	noAlg.Algorithm = ""
	noKid := es
	noKid.KeyID = ""
	enc := es
	enc.Use = "enc"
	tests := []struct {
		name    string
		alg     jose.SignatureAlgorithm
		data    []byte
		kid     string // "" refused
		signing bool
	}{
		{"private EC key with alg", jose.ES256, doc(es), "kid-ES256", true},
		{"alg taken from the document", "", doc(es), "kid-ES256", true},
		{"alg given for a document without one", jose.ES256, doc(noAlg), "kid-ES256", true},
		{"public EC key", jose.ES256, doc(verifyingJWK(jose.ES256)), "kid-ES256", false},
		{"Ed25519 private key, RFC 8037 §2", jose.EdDSA, doc(signingJWK(jose.EdDSA)), "kid-EdDSA", true},
		{"RSA public key", jose.RS256, doc(verifyingJWK(jose.RS256)), "kid-RS256", false},
		{"RSA private key for PS256", jose.PS256, doc(signingJWK(jose.PS256)), "kid-PS256", true},
		{"oct HS256 secret", jose.HS256, doc(signingJWK(jose.HS256)), "kid-HS256", true},
		{"no kid: RFC 7638 thumbprint", jose.ES256, doc(noKid), func() string {
			pub := noKid.Public()
			tp, err := pub.Thumbprint(crypto.SHA256)
			require.NoError(t, err)
			return base64.RawURLEncoding.EncodeToString(tp)
		}(), true},
		{"document for another alg", jose.RS256, doc(es), "", false},
		{"no alg anywhere", "", doc(noAlg), "", false},
		{"encryption key", jose.ES256, doc(enc), "", false},
		{"short oct secret", jose.HS256, []byte(`{"kty":"oct","k":"c2hvcnQ","alg":"HS256"}`), "", false},
		{"not JSON", jose.ES256, []byte("{"), "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := m2mauth.ParseJWK(tc.alg, tc.data)
			if tc.kid == "" {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.kid, k.KeyID)
			_, err = m2mauth.NewStaticKeys(k)
			if tc.signing {
				assert.NoError(t, err)
			} else {
				assert.Error(t, err, "a public key cannot sign")
			}
		})
	}
}

// TestNewSignerKey: the signer's public key must fit the algorithm; the
// kid defaults to its thumbprint.
func TestNewSignerKey(t *testing.T) {
	ec := privateKeys()[jose.ES256]
	k, err := m2mauth.NewSignerKey(jose.ES256, "", signerOnly{ec})
	require.NoError(t, err)
	tp, err := (&jose.JSONWebKey{Key: ec.Public()}).Thumbprint(crypto.SHA256)
	require.NoError(t, err)
	assert.Equal(t, base64.RawURLEncoding.EncodeToString(tp), k.KeyID)

	_, err = m2mauth.NewSignerKey(jose.ES256, "", nil)
	assert.Error(t, err)
	_, err = m2mauth.NewSignerKey(jose.RS256, "", signerOnly{ec})
	assert.Error(t, err)
	_, err = m2mauth.NewSignerKey(jose.ES256, "", signerOnly{mustECKey(t, elliptic.P384())})
	assert.Error(t, err, "P-384 for ES256")
	_, err = m2mauth.NewSignerKey(jose.HS256, "", signerOnly{ec})
	assert.Error(t, err)
}

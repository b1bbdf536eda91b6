package m2mauth_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

// asymmetric lists the public-key algorithms.
var asymmetric = []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA, jose.RS256, jose.PS256}

// privateKeys holds one private key per algorithm, made once: RS256 and
// PS256 share an RSA key, as nothing stops an operator from doing so.
var privateKeys = sync.OnceValue(func() map[jose.SignatureAlgorithm]crypto.Signer {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	rs, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return map[jose.SignatureAlgorithm]crypto.Signer{jose.ES256: ec, jose.EdDSA: ed, jose.RS256: rs, jose.PS256: rs}
})

// privateKey returns the key material that signs alg.
func privateKey(alg jose.SignatureAlgorithm) any {
	if alg == jose.HS256 {
		return keyB
	}
	return privateKeys()[alg]
}

// signingJWK is the signing key of alg, kid "kid-<alg>".
func signingJWK(alg jose.SignatureAlgorithm) jose.JSONWebKey {
	return jose.JSONWebKey{Key: privateKey(alg), KeyID: "kid-" + string(alg), Algorithm: string(alg), Use: "sig"}
}

// verifyingJWK is the verification key of alg: its public half, or the
// secret for HS256.
func verifyingJWK(alg jose.SignatureAlgorithm) jose.JSONWebKey {
	k := signingJWK(alg)
	if s, ok := k.Key.(crypto.Signer); ok {
		k.Key = s.Public()
	}
	return k
}

// allVerifyingJWKs is a mixed verification set: every algorithm's key.
func allVerifyingJWKs() []jose.JSONWebKey {
	var keys []jose.JSONWebKey
	for _, alg := range m2mauth.SupportedAlgorithms() {
		keys = append(keys, verifyingJWK(alg))
	}
	return keys
}

// verifyOnly is a KeyProvider for a validator: it has no signing key of
// its own to offer, only a verification set.
type verifyOnly struct{ set *jose.JSONWebKeySet }

func (verifyOnly) SigningKey(context.Context) (*jose.JSONWebKey, error) {
	return nil, errors.New("this provider does not sign")
}

func (p verifyOnly) VerificationKeys(context.Context) (*jose.JSONWebKeySet, error) {
	return p.set, nil
}

// signRaw signs a token whose header and claims are written by hand, with
// alg's algorithm applied to key, whatever the header says.
func signRaw(t testing.TB, alg jose.SignatureAlgorithm, key any, header string, claims map[string]any) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	require.NoError(t, err)
	input := base64.RawURLEncoding.EncodeToString([]byte(header)) + "." + base64.RawURLEncoding.EncodeToString(payload)
	d := sha256.Sum256([]byte(input))
	var sig []byte
	switch alg {
	case jose.HS256:
		mac := hmac.New(sha256.New, key.([]byte))
		mac.Write([]byte(input))
		sig = mac.Sum(nil)
	case jose.ES256:
		r, s, err := ecdsa.Sign(rand.Reader, key.(*ecdsa.PrivateKey), d[:])
		require.NoError(t, err)
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	case jose.EdDSA:
		sig = ed25519.Sign(key.(ed25519.PrivateKey), []byte(input))
	case jose.RS256:
		sig, err = rsa.SignPKCS1v15(rand.Reader, key.(*rsa.PrivateKey), crypto.SHA256, d[:])
		require.NoError(t, err)
	case jose.PS256:
		sig, err = rsa.SignPSS(rand.Reader, key.(*rsa.PrivateKey), crypto.SHA256, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		require.NoError(t, err)
	default:
		t.Fatalf("signRaw: %s", alg)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// joseToken signs claims with go-jose, an independent implementation.
func joseToken(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key},
		(&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", kid))
	require.NoError(t, err)
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	require.NoError(t, err)
	return tok
}

// algServer is a token endpoint and a route protected by a validator on
// one HTTP server.
type algServer struct {
	srv    *httptest.Server
	secret string
	v      *m2mauth.Validator
}

// newAlgServer signs tokens with signing and verifies them with the
// verification set verify.
func newAlgServer(t testing.TB, signing jose.JSONWebKey, verify []jose.JSONWebKey) *algServer {
	t.Helper()
	store := memstore.New()
	plain, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
	require.NoError(t, err)
	require.NoError(t, store.CreateClient(t.Context(), &m2mauth.Client{
		ID: "svc", Secrets: []m2mauth.Secret{sec}, Grants: map[string]m2mauth.Scopes{testAudience: {"read", "write"}},
	}))
	signKeys, err := m2mauth.NewStaticKeys(signing)
	require.NoError(t, err)
	h, err := m2mauth.NewTokenHandler(store, signKeys, m2mauth.TokenHandlerConfig{
		Issuer: testIssuer, DefaultAudience: testAudience, Logger: discardLogger(),
		Auditor: m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {}),
	})
	require.NoError(t, err)
	v, err := m2mauth.NewValidator(verifyOnly{&jose.JSONWebKeySet{Keys: verify}}, m2mauth.ValidatorConfig{
		Issuer: testIssuer, Audience: testAudience,
	})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("POST /oauth/token", h)
	mux.Handle("GET /api/builders", v.RequireScopes("read")(echo))
	s := &algServer{srv: httptest.NewServer(mux), secret: plain, v: v}
	t.Cleanup(s.srv.Close)
	return s
}

// token asks the token endpoint for a token over HTTP.
func (s *algServer) token(t testing.TB) (int, tokenResponse) {
	t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"read"}}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.srv.URL+"/oauth/token", strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("svc", s.secret)
	resp, err := s.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var tok tokenResponse
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&tok))
	return resp.StatusCode, tok
}

// get calls the protected route with tok.
func (s *algServer) get(t testing.TB, tok string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.srv.URL+"/api/builders", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := s.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate"), string(b)
}

// TestAlgorithms issues a token with each algorithm over HTTP, has a
// validator holding only the public half accept it, checks the header,
// and checks interoperability both ways with go-jose: it verifies our
// tokens, and we accept its.
func TestAlgorithms(t *testing.T) {
	tests := []struct {
		name string
		alg  jose.SignatureAlgorithm
	}{
		{"HS256, RFC 7518 §3.2", jose.HS256},
		{"ES256, RFC 7518 §3.4", jose.ES256},
		{"EdDSA Ed25519, RFC 8037 §3.1", jose.EdDSA},
		{"RS256, RFC 7518 §3.3", jose.RS256},
		{"PS256, RFC 7518 §3.5", jose.PS256},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pub := verifyingJWK(tc.alg)
			s := newAlgServer(t, signingJWK(tc.alg), []jose.JSONWebKey{pub})
			code, tok := s.token(t)
			require.Equal(t, http.StatusOK, code, tok.ErrorDescription)

			code, _, body := s.get(t, tok.AccessToken)
			assert.Equal(t, http.StatusOK, code)
			assert.Equal(t, "svc read", body)

			parsed, err := jwt.ParseSigned(tok.AccessToken, []jose.SignatureAlgorithm{tc.alg})
			require.NoError(t, err)
			h := parsed.Headers[0]
			assert.Equal(t, string(tc.alg), h.Algorithm)
			assert.Equal(t, "kid-"+string(tc.alg), h.KeyID)
			assert.Equal(t, "at+jwt", h.ExtraHeaders[jose.HeaderType])
			var c m2mauth.Claims
			require.NoError(t, parsed.Claims(pub.Key, &c), "go-jose verifies the token")
			assert.Equal(t, "svc", c.ClientID)

			now := time.Now()
			theirs := joseToken(t, tc.alg, privateKey(tc.alg), pub.KeyID, validClaims(now))
			got, err := s.v.Validate(t.Context(), theirs)
			require.NoError(t, err, "a go-jose token is accepted")
			assert.Equal(t, "jti-1", got.ID)
		})
	}
}

// TestAlgorithmConfusion: a key verifies only tokens whose header names
// the key's own algorithm (RFC 8725 §2.1, §3.1), in a verification set
// mixing a symmetric key with asymmetric ones; signatures are checked for
// the algorithm's exact form.
func TestAlgorithmConfusion(t *testing.T) {
	keys := allVerifyingJWKs()
	v, err := m2mauth.NewValidator(verifyOnly{&jose.JSONWebKeySet{Keys: keys}}, m2mauth.ValidatorConfig{
		Issuer: testIssuer, Audience: testAudience, CacheSize: -1,
	})
	require.NoError(t, err)
	now := time.Now()
	claims := validClaims(now)
	hdr := func(alg jose.SignatureAlgorithm, kid string) string {
		return `{"alg":"` + string(alg) + `","kid":"` + kid + `","typ":"at+jwt"}`
	}
	kid := func(alg jose.SignatureAlgorithm) string { return "kid-" + string(alg) }
	pemOf := func(alg jose.SignatureAlgorithm) []byte {
		der, err := x509.MarshalPKIXPublicKey(verifyingJWK(alg).Key)
		require.NoError(t, err)
		return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	}
	jwkOf := func(alg jose.SignatureAlgorithm) []byte {
		b, err := json.Marshal(verifyingJWK(alg))
		require.NoError(t, err)
		return b
	}
	ec := privateKey(jose.ES256).(*ecdsa.PrivateKey)
	good := signRaw(t, jose.ES256, ec, hdr(jose.ES256, kid(jose.ES256)), claims)
	input := good[:strings.LastIndexByte(good, '.')]
	d := sha256.Sum256([]byte(input))
	der, err := ecdsa.SignASN1(rand.Reader, ec, d[:])
	require.NoError(t, err)
	rawSig := mustDecode(t, good[len(input)+1:])

	const (
		mismatch = "token algorithm does not match its key"
		notAllow = "token algorithm not allowed"
		badSig   = "invalid token signature"
		unknown  = "token signed by an unknown key"
	)
	tests := []struct {
		name  string
		token string
		want  string // error_description; "" accepted
	}{
		{"HS256 in a mixed set", signRaw(t, jose.HS256, keyB, hdr(jose.HS256, kid(jose.HS256)), claims), ""},
		{"ES256 in a mixed set", good, ""},
		{"EdDSA in a mixed set", signRaw(t, jose.EdDSA, privateKey(jose.EdDSA), hdr(jose.EdDSA, kid(jose.EdDSA)), claims), ""},
		{"RS256 in a mixed set", signRaw(t, jose.RS256, privateKey(jose.RS256), hdr(jose.RS256, kid(jose.RS256)), claims), ""},
		{"PS256 in a mixed set", signRaw(t, jose.PS256, privateKey(jose.PS256), hdr(jose.PS256, kid(jose.PS256)), claims), ""},

		{"HS256 keyed with the ES256 public key PEM, kid of the ES256 key, RFC 8725 §2.1", signRaw(t, jose.HS256, pemOf(jose.ES256), hdr(jose.HS256, kid(jose.ES256)), claims), mismatch},
		{"HS256 keyed with the RS256 public key PEM, kid of the RS256 key, RFC 8725 §2.1", signRaw(t, jose.HS256, pemOf(jose.RS256), hdr(jose.HS256, kid(jose.RS256)), claims), mismatch},
		{"HS256 keyed with the EdDSA public key PEM, kid of the EdDSA key, RFC 8725 §2.1", signRaw(t, jose.HS256, pemOf(jose.EdDSA), hdr(jose.HS256, kid(jose.EdDSA)), claims), mismatch},
		{"HS256 keyed with the ES256 public JWK, RFC 8725 §3.1", signRaw(t, jose.HS256, jwkOf(jose.ES256), hdr(jose.HS256, kid(jose.ES256)), claims), mismatch},
		{"HS256 keyed with the RS256 public JWK, RFC 8725 §3.1", signRaw(t, jose.HS256, jwkOf(jose.RS256), hdr(jose.HS256, kid(jose.RS256)), claims), mismatch},
		{"HS256 keyed with the raw Ed25519 public key, RFC 8725 §3.1", signRaw(t, jose.HS256, []byte(verifyingJWK(jose.EdDSA).Key.(ed25519.PublicKey)), hdr(jose.HS256, kid(jose.EdDSA)), claims), mismatch},
		{"ES256 signature under header RS256, RFC 8725 §3.1", signRaw(t, jose.ES256, ec, hdr(jose.RS256, kid(jose.ES256)), claims), mismatch},
		{"EdDSA signature under header ES256", signRaw(t, jose.EdDSA, privateKey(jose.EdDSA), hdr(jose.ES256, kid(jose.EdDSA)), claims), mismatch},
		{"RS256 signature under header PS256, same RSA key", signRaw(t, jose.RS256, privateKey(jose.RS256), hdr(jose.PS256, kid(jose.RS256)), claims), mismatch},
		{"PS256 token with the kid of the RS256 key, same RSA key", signRaw(t, jose.PS256, privateKey(jose.PS256), hdr(jose.PS256, kid(jose.RS256)), claims), mismatch},
		{"RS256 token with the kid of the PS256 key, same RSA key", signRaw(t, jose.RS256, privateKey(jose.RS256), hdr(jose.RS256, kid(jose.PS256)), claims), mismatch},
		{"ES256 signature presented as HS256 with the HS256 kid", signRaw(t, jose.ES256, ec, hdr(jose.HS256, kid(jose.HS256)), claims), badSig},

		{"alg none with the ES256 kid, RFC 8725 §3.1", base64.RawURLEncoding.EncodeToString([]byte(hdr("none", kid(jose.ES256)))) + "." + strings.Split(good, ".")[1] + ".", notAllow},
		{"alg none with the RS256 kid, RFC 8725 §3.1", base64.RawURLEncoding.EncodeToString([]byte(hdr("none", kid(jose.RS256)))) + "." + strings.Split(good, ".")[1] + ".", notAllow},
		{"ES384 not implemented", signRaw(t, jose.ES256, ec, hdr(jose.ES384, kid(jose.ES256)), claims), notAllow},
		{"unknown kid", signRaw(t, jose.ES256, ec, hdr(jose.ES256, "kid-nobody"), claims), unknown},
		{"no kid", signRaw(t, jose.ES256, ec, `{"alg":"ES256","typ":"at+jwt"}`, claims), unknown},

		{"ES256 signature in ASN.1 DER form, RFC 7518 §3.4", input + "." + base64.RawURLEncoding.EncodeToString(der), badSig},
		{"ES256 signature with a byte appended", input + "." + base64.RawURLEncoding.EncodeToString(append(rawSig, 0)), badSig},
		{"ES256 signature cut short", input + "." + base64.RawURLEncoding.EncodeToString(rawSig[:63]), badSig},
		{"ES256 signature of another key", signRaw(t, jose.ES256, mustECKey(t, elliptic.P256()), hdr(jose.ES256, kid(jose.ES256)), claims), badSig},
		{"EdDSA signature of another key", signRaw(t, jose.EdDSA, ed25519.NewKeyFromSeed(make([]byte, 32)), hdr(jose.EdDSA, kid(jose.EdDSA)), claims), badSig},
		{"RS256 signature cut short", func() string {
			tok := signRaw(t, jose.RS256, privateKey(jose.RS256), hdr(jose.RS256, kid(jose.RS256)), claims)
			i := strings.LastIndexByte(tok, '.')
			return tok[:i+1] + base64.RawURLEncoding.EncodeToString(mustDecode(t, tok[i+1:])[1:])
		}(), badSig},
		{"PS256 with a salt of 0 bytes, RFC 7518 §3.5", func() string {
			payload, err := json.Marshal(claims)
			require.NoError(t, err)
			in := base64.RawURLEncoding.EncodeToString([]byte(hdr(jose.PS256, kid(jose.PS256)))) + "." + base64.RawURLEncoding.EncodeToString(payload)
			d := sha256.Sum256([]byte(in))
			sig, err := rsa.SignPSS(rand.Reader, privateKey(jose.PS256).(*rsa.PrivateKey), crypto.SHA256, d[:], &rsa.PSSOptions{SaltLength: 0})
			require.NoError(t, err)
			return in + "." + base64.RawURLEncoding.EncodeToString(sig)
		}(), badSig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := v.Validate(t.Context(), tc.token)
			if tc.want == "" {
				require.NoError(t, err)
				assert.Equal(t, "svc", c.ClientID)
				return
			}
			require.ErrorIs(t, err, &m2mauth.Error{Code: m2mauth.CodeInvalidToken})
			var e *m2mauth.Error
			require.ErrorAs(t, err, &e)
			assert.Equal(t, tc.want, e.Description)
		})
	}
}

func mustECKey(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	require.NoError(t, err)
	return k
}

// TestAlgorithmsAllowList: ValidatorConfig.Algorithms narrows the
// algorithms accepted; keys of other algorithms verify nothing.
func TestAlgorithmsAllowList(t *testing.T) {
	set := verifyOnly{&jose.JSONWebKeySet{Keys: allVerifyingJWKs()}}
	v, err := m2mauth.NewValidator(set, m2mauth.ValidatorConfig{
		Issuer: testIssuer, Audience: testAudience, Algorithms: []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA},
	})
	require.NoError(t, err)
	claims := validClaims(time.Now())
	for _, alg := range m2mauth.SupportedAlgorithms() {
		t.Run(string(alg), func(t *testing.T) {
			tok := joseToken(t, alg, privateKey(alg), "kid-"+string(alg), claims)
			_, err := v.Validate(t.Context(), tok)
			if alg == jose.ES256 || alg == jose.EdDSA {
				assert.NoError(t, err)
				return
			}
			assert.Equal(t, m2mauth.ReasonTokenAlgorithm, m2mauth.RejectionReason(err))
		})
	}

	_, err = m2mauth.NewValidator(verifyOnly{&jose.JSONWebKeySet{Keys: []jose.JSONWebKey{verifyingJWK(jose.HS256)}}},
		m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: testAudience, Algorithms: []jose.SignatureAlgorithm{jose.ES256}})
	assert.Error(t, err, "no key of an allowed algorithm")
}

// TestVerificationSetWithPrivateKeys: a private key in a verification set
// verifies with its public half, for every algorithm.
func TestVerificationSetWithPrivateKeys(t *testing.T) {
	var keys []jose.JSONWebKey
	for _, alg := range m2mauth.SupportedAlgorithms() {
		keys = append(keys, signingJWK(alg))
	}
	v, err := m2mauth.NewValidator(verifyOnly{&jose.JSONWebKeySet{Keys: keys}}, m2mauth.ValidatorConfig{
		Issuer: testIssuer, Audience: testAudience,
	})
	require.NoError(t, err)
	for _, alg := range m2mauth.SupportedAlgorithms() {
		t.Run(string(alg), func(t *testing.T) {
			_, err := v.Validate(t.Context(), joseToken(t, alg, privateKey(alg), "kid-"+string(alg), validClaims(time.Now())))
			assert.NoError(t, err)
		})
	}
}

// signerOnly hides every method of a private key but those of
// crypto.Signer, as a KMS or HSM handle would.
type signerOnly struct{ s crypto.Signer }

func (s signerOnly) Public() crypto.PublicKey { return s.s.Public() }

func (s signerOnly) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.s.Sign(r, digest, opts)
}

// TestCryptoSignerKey: a signing key held by a crypto.Signer that is
// nothing else issues tokens a validator holding the public key accepts.
func TestCryptoSignerKey(t *testing.T) {
	for _, alg := range asymmetric {
		t.Run(string(alg), func(t *testing.T) {
			k, err := m2mauth.NewSignerKey(alg, "", signerOnly{privateKeys()[alg]})
			require.NoError(t, err)
			pub := verifyingJWK(alg)
			pub.KeyID = k.KeyID
			s := newAlgServer(t, k, []jose.JSONWebKey{pub})
			for range 8 { // ES256: r and s of every length in a few tries
				code, tok := s.token(t)
				require.Equal(t, http.StatusOK, code, tok.ErrorDescription)
				code, _, body := s.get(t, tok.AccessToken)
				require.Equal(t, http.StatusOK, code)
				assert.Equal(t, "svc read", body)
			}
		})
	}
}

// derSigner returns a fixed ECDSA signature in DER, as a KMS would.
type derSigner struct {
	pub crypto.PublicKey
	der []byte
}

func (s derSigner) Public() crypto.PublicKey { return s.pub }

func (s derSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	if s.der == nil {
		return nil, errors.New("kms unavailable")
	}
	return s.der, nil
}

// TestES256SignerDER: the ASN.1 DER signature of a crypto.Signer becomes
// the 64-byte R || S of RFC 7518 §3.4: leading zero bytes dropped,
// short integers left-padded; malformed DER and a failing signer are
// server errors.
func TestES256SignerDER(t *testing.T) {
	pub := privateKeys()[jose.ES256].Public()
	fill32 := func(first byte) []byte {
		b := make([]byte, 32)
		b[0] = first
		for i := 1; i < 32; i++ {
			b[i] = byte(i)
		}
		return b
	}
	seq := func(parts ...[]byte) []byte {
		var body []byte
		for _, p := range parts {
			body = append(body, p...)
		}
		return append([]byte{0x30, byte(len(body))}, body...)
	}
	integer := func(b []byte) []byte { return append([]byte{0x02, byte(len(b))}, b...) }
	high, low := fill32(0x80), fill32(0x7f)
	short := []byte{0x01, 0x02, 0x03}

	tests := []struct {
		name string
		der  []byte
		raw  []byte // nil: refused
	}{
		{"high bit set: leading zero in DER", seq(integer(append([]byte{0}, high...)), integer(append([]byte{0}, high...))), append(append([]byte{}, high...), high...)},
		{"no leading zero", seq(integer(low), integer(low)), append(append([]byte{}, low...), low...)},
		{"short integers left-padded", seq(integer(short), integer(low)), append(append(make([]byte, 29), short...), low...)},
		{"integer too long", seq(integer(append([]byte{1}, low...)), integer(low)), nil},
		{"negative integer", seq(integer(high), integer(low)), nil},
		{"trailing bytes", append(seq(integer(low), integer(low)), 0), nil},
		{"one integer", seq(integer(low)), nil},
		{"raw signature instead of DER", append(append([]byte{}, low...), low...), nil},
		{"signer error", nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := m2mauth.NewSignerKey(jose.ES256, "kms", derSigner{pub, tc.der})
			require.NoError(t, err)
			s := newAlgServer(t, k, []jose.JSONWebKey{{Key: pub, KeyID: "kms", Algorithm: "ES256"}})
			code, tok := s.token(t)
			if tc.raw == nil {
				assert.Equal(t, http.StatusInternalServerError, code)
				assert.Equal(t, "server_error", tok.Error)
				return
			}
			require.Equal(t, http.StatusOK, code, tok.ErrorDescription)
			parts := strings.Split(tok.AccessToken, ".")
			require.Len(t, parts, 3)
			assert.Equal(t, tc.raw, mustDecode(t, parts[2]))
		})
	}
}

// refreshingKeys is a KeyProvider and KeyRefresher over a remote set it
// can be told to publish more keys into; it counts refreshes.
type refreshingKeys struct {
	mu        sync.Mutex
	current   *jose.JSONWebKeySet
	remote    *jose.JSONWebKeySet // what a refresh finds
	err       error               // what a refresh fails with
	refreshes atomic.Int32
	kids      []string
}

func (p *refreshingKeys) SigningKey(context.Context) (*jose.JSONWebKey, error) {
	return nil, errors.New("this provider does not sign")
}

func (p *refreshingKeys) VerificationKeys(context.Context) (*jose.JSONWebKeySet, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current, nil
}

func (p *refreshingKeys) RefreshKeys(_ context.Context, kid string) (*jose.JSONWebKeySet, error) {
	p.refreshes.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.kids = append(p.kids, kid)
	if p.err != nil {
		return nil, p.err
	}
	p.current = p.remote
	return p.current, nil
}

// TestKeyRefresher: a token whose kid is not in the set makes the
// validator ask a KeyRefresher once, then verify with what it returns.
func TestKeyRefresher(t *testing.T) {
	oldKey := verifyingJWK(jose.ES256)
	newPriv := mustECKey(t, elliptic.P256())
	newKey := jose.JSONWebKey{Key: newPriv.Public(), KeyID: "kid-new", Algorithm: "ES256", Use: "sig"}
	p := &refreshingKeys{
		current: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{oldKey}},
		remote:  &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{oldKey, newKey}},
	}
	v, err := m2mauth.NewValidator(p, m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: testAudience})
	require.NoError(t, err)
	h := v.RequireScopes("read")(echo)
	claims := validClaims(time.Now())
	oldTok := joseToken(t, jose.ES256, privateKey(jose.ES256), oldKey.KeyID, claims)
	newTok := joseToken(t, jose.ES256, newPriv, "kid-new", claims)

	require.Equal(t, http.StatusOK, call(h, "Bearer "+oldTok).Code)
	assert.Zero(t, p.refreshes.Load(), "a known kid needs no refresh")

	w := call(h, "Bearer "+newTok)
	assert.Equal(t, http.StatusOK, w.Code, w.Body.String())
	assert.Equal(t, int32(1), p.refreshes.Load())
	assert.Equal(t, []string{"kid-new"}, p.kids)

	require.Equal(t, http.StatusOK, call(h, "Bearer "+newTok).Code)
	require.Equal(t, http.StatusOK, call(h, "Bearer "+oldTok).Code)
	assert.Equal(t, int32(1), p.refreshes.Load(), "the refreshed set is used from then on")

	w = call(h, "Bearer "+joseToken(t, jose.ES256, newPriv, "kid-nobody", claims))
	assert.Equal(t, http.StatusUnauthorized, w.Code)
	assert.Contains(t, w.Header().Get("WWW-Authenticate"), `error_description="token signed by an unknown key"`)
	assert.Equal(t, int32(2), p.refreshes.Load(), "one refresh per token, not a retry loop")

	w = call(h, "Bearer "+signRaw(t, jose.ES256, newPriv, `{"alg":"ES256","typ":"at+jwt"}`, claims))
	assert.Equal(t, http.StatusUnauthorized, w.Code)
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","kid":"kid-x","typ":"at+jwt"}`)) + "." + strings.Split(newTok, ".")[1] + "."
	w = call(h, "Bearer "+none)
	assert.Equal(t, http.StatusUnauthorized, w.Code)
	assert.Equal(t, int32(2), p.refreshes.Load(), "no refresh for a token without kid or with a refused algorithm")

	p.mu.Lock()
	p.err = errors.New("jwks fetch failed")
	p.mu.Unlock()
	w = call(h, "Bearer "+joseToken(t, jose.ES256, newPriv, "kid-later", claims))
	assert.Equal(t, http.StatusInternalServerError, w.Code, "a failing refresh is the server's fault")
	assert.Empty(t, w.Header().Get("WWW-Authenticate"))
	assert.Equal(t, int32(3), p.refreshes.Load())
	require.Equal(t, http.StatusOK, call(h, "Bearer "+newTok).Code, "the last good set still verifies")
}

// TestResourceMetadata: with ResourceMetadataURL set, every Bearer
// challenge carries resource_metadata once (RFC 9728 §5.1), written when
// the validator is made.
func TestResourceMetadata(t *testing.T) {
	const u = "https://api.example.com/.well-known/oauth-protected-resource"
	p := newProtected(t, func(c *m2mauth.ValidatorConfig) { c.ResourceMetadataURL = u })
	good := mint(t, keyB, "k2", "at+jwt", validClaims(p.clock()))
	base := `Bearer realm="m2mauth", resource_metadata="` + u + `"`
	tests := []struct {
		name      string
		authz     []string
		scope     string
		status    int
		challenge string
	}{
		{"no token: 401 without error code, RFC 6750 §3.1", nil, "read", 401, base},
		{"bad token: 401 invalid_token, RFC 6750 §3.1", []string{"Bearer x.y.z"}, "read", 401,
			base + `, error="invalid_token", error_description="malformed token header"`},
		{"too few scopes: 403 insufficient_scope, RFC 6750 §3.1", []string{"Bearer " + good}, "admin", 403,
			base + `, error="insufficient_scope", error_description="the access token lacks a required scope", scope="admin"`},
		{"malformed request: 400 invalid_request, RFC 6750 §3.1", []string{"Bearer " + good, "Bearer " + good}, "read", 400,
			base + `, error="invalid_request", error_description="more than one Authorization header"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := call(p.v.RequireScopes(tc.scope)(echo), tc.authz...)
			assert.Equal(t, tc.status, w.Code)
			got := w.Header().Get("WWW-Authenticate")
			assert.Equal(t, tc.challenge, got)
			assert.Equal(t, 1, strings.Count(got, "resource_metadata="))
		})
	}

	t.Run("precomputed: no cost per request", func(t *testing.T) {
		plain := newProtected(t)
		allocs := func(v *m2mauth.Validator) float64 {
			h := v.RequireScopes("read")(echo)
			r := httptest.NewRequest(http.MethodGet, "/api/builders", nil)
			return testing.AllocsPerRun(100, func() { h.ServeHTTP(httptest.NewRecorder(), r) })
		}
		assert.Equal(t, allocs(plain.v), allocs(p.v))
	})

	t.Run("URL checked at construction", func(t *testing.T) {
		for _, ok := range []string{u, "http://localhost:8080/.well-known/oauth-protected-resource", "http://127.0.0.1/m", "http://[::1]:9/m", "https://api.example.com/m?x=1"} {
			_, err := m2mauth.NewValidator(p.keys, m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: testAudience, ResourceMetadataURL: ok})
			assert.NoError(t, err, ok)
		}
		for _, bad := range []string{
			"http://api.example.com/m", "/.well-known/oauth-protected-resource", "api.example.com/m",
			`https://api.example.com/"m`, `https://api.example.com/\m`, "https://api.example.com/m\r\nX: y",
			"https://api.example.com/m n", "https://api.example.com/m#f", "https://user@api.example.com/m",
			"ftp://api.example.com/m", "https:///m", "https://api.example.com/ü",
		} {
			_, err := m2mauth.NewValidator(p.keys, m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: testAudience, ResourceMetadataURL: bad})
			assert.Error(t, err, "%q", bad)
		}
	})
}

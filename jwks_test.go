package m2mauth_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// jwksProvider is a KeyProvider whose verification key set can be
// replaced, returning the same pointer until it is.
type jwksProvider struct {
	set atomic.Pointer[jose.JSONWebKeySet]
	err atomic.Pointer[error]
}

func newJWKSProvider(keys ...jose.JSONWebKey) *jwksProvider {
	p := &jwksProvider{}
	p.replace(keys...)
	return p
}

func (p *jwksProvider) replace(keys ...jose.JSONWebKey) *jose.JSONWebKeySet {
	set := &jose.JSONWebKeySet{Keys: keys}
	p.set.Store(set)
	return set
}

func (p *jwksProvider) fail(err error) { p.err.Store(&err) }

func (p *jwksProvider) SigningKey(ctx context.Context) (*jose.JSONWebKey, error) {
	set, err := p.VerificationKeys(ctx)
	if err != nil || len(set.Keys) == 0 {
		return nil, errors.New("no signing key")
	}
	return &set.Keys[0], nil
}

func (p *jwksProvider) VerificationKeys(context.Context) (*jose.JSONWebKeySet, error) {
	if e := p.err.Load(); e != nil {
		return nil, *e
	}
	return p.set.Load(), nil
}

// jwksScheduledProvider is a jwksProvider that knows its next key change.
type jwksScheduledProvider struct {
	*jwksProvider
	next    time.Time
	planned bool
}

func (p *jwksScheduledProvider) NextKeyChange(context.Context) (time.Time, bool) {
	return p.next, p.planned
}

// jwksTestKeys are private keys of each asymmetric type, as a provider
// holding its own signing keys has them.
type jwksTestKeys struct {
	ec  *ecdsa.PrivateKey
	ed  ed25519.PrivateKey
	rsa *rsa.PrivateKey
}

var jwksKeysOnce = sync.OnceValues(func() (*jwksTestKeys, error) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	return &jwksTestKeys{ec: ec, ed: ed, rsa: rk}, nil
})

func jwksKeys(t testing.TB) *jwksTestKeys {
	t.Helper()
	k, err := jwksKeysOnce()
	require.NoError(t, err)
	return k
}

func jwksHMAC(t testing.TB, kid string) jose.JSONWebKey {
	t.Helper()
	k, err := m2mauth.NewHS256Key(kid, []byte("0123456789abcdef0123456789abcdef"))
	require.NoError(t, err)
	return k
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// jwksGet sends one request to h and returns the recorder.
func jwksGet(h http.Handler, method string, header ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, "https://auth.example.com/.well-known/jwks.json", nil)
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Add(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// jwksMembers decodes a JWK Set into its keys' members, by kid.
func jwksMembers(t *testing.T, body []byte) map[string]map[string]any {
	t.Helper()
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	require.NoError(t, json.Unmarshal(body, &set))
	out := make(map[string]map[string]any, len(set.Keys))
	for _, k := range set.Keys {
		kid, _ := k["kid"].(string)
		require.NotContains(t, out, kid, "duplicate kid")
		out[kid] = k
	}
	return out
}

func newTestJWKSHandler(t *testing.T, keys m2mauth.KeyProvider, cfg m2mauth.JWKSConfig) *m2mauth.JWKSHandler {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	h, err := m2mauth.NewJWKSHandler(keys, cfg)
	require.NoError(t, err)
	return h
}

func TestJWKSHandlerPublicMembers(t *testing.T) {
	k := jwksKeys(t)
	ecPoint, err := k.ec.PublicKey.Bytes() // 0x04 || X || Y, 32 bytes each
	require.NoError(t, err)
	ecX, ecY := b64(ecPoint[1:33]), b64(ecPoint[33:])
	edX := b64(k.ed.Public().(ed25519.PublicKey))
	rsaN := b64(k.rsa.N.Bytes())

	tests := []struct {
		name string
		key  jose.JSONWebKey
		want map[string]any // every member, exactly
	}{
		{
			name: "RFC 7518 §6.2.1 EC P-256 private key published as its public half",
			key:  jose.JSONWebKey{Key: k.ec, KeyID: "ec", Algorithm: "ES256", Use: "sig"},
			want: map[string]any{"kid": "ec", "kty": "EC", "alg": "ES256", "use": "sig", "crv": "P-256", "x": ecX, "y": ecY},
		},
		{
			name: "RFC 7518 §6.2.1 EC P-256 public key",
			key:  jose.JSONWebKey{Key: &k.ec.PublicKey, KeyID: "ec", Algorithm: "ES256"},
			want: map[string]any{"kid": "ec", "kty": "EC", "alg": "ES256", "use": "sig", "crv": "P-256", "x": ecX, "y": ecY},
		},
		{
			name: "RFC 7518 §6.2.1 a crypto.Signer go-jose does not know (a KMS handle) published as its public key",
			key:  jose.JSONWebKey{Key: jwksKMSKey{k.ec}, KeyID: "kms", Algorithm: "ES256"},
			want: map[string]any{"kid": "kms", "kty": "EC", "alg": "ES256", "use": "sig", "crv": "P-256", "x": ecX, "y": ecY},
		},
		{
			name: "RFC 8037 §2 OKP Ed25519 private key published as its public half",
			key:  jose.JSONWebKey{Key: k.ed, KeyID: "ed", Algorithm: "EdDSA", Use: "sig"},
			want: map[string]any{"kid": "ed", "kty": "OKP", "alg": "EdDSA", "use": "sig", "crv": "Ed25519", "x": edX},
		},
		{
			name: "RFC 8037 §2 OKP Ed25519 public key",
			key:  jose.JSONWebKey{Key: k.ed.Public(), KeyID: "ed", Algorithm: "EdDSA"},
			want: map[string]any{"kid": "ed", "kty": "OKP", "alg": "EdDSA", "use": "sig", "crv": "Ed25519", "x": edX},
		},
		{
			name: "RFC 7518 §6.3.1 RSA private key published as its public half (RS256)",
			key:  jose.JSONWebKey{Key: k.rsa, KeyID: "rsa", Algorithm: "RS256", Use: "sig"},
			want: map[string]any{"kid": "rsa", "kty": "RSA", "alg": "RS256", "use": "sig", "n": rsaN, "e": "AQAB"},
		},
		{
			name: "RFC 7518 §6.3.1 RSA public key (PS256)",
			key:  jose.JSONWebKey{Key: &k.rsa.PublicKey, KeyID: "rsa", Algorithm: "PS256"},
			want: map[string]any{"kid": "rsa", "kty": "RSA", "alg": "PS256", "use": "sig", "n": rsaN, "e": "AQAB"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestJWKSHandler(t, newJWKSProvider(tc.key), m2mauth.JWKSConfig{})
			w := jwksGet(h, http.MethodGet)
			require.Equal(t, http.StatusOK, w.Code)
			assert.Equal(t, "application/jwk-set+json", w.Header().Get("Content-Type"), "RFC 7517 §8.5.1")
			got := jwksMembers(t, w.Body.Bytes())
			require.Len(t, got, 1)
			assert.Equal(t, tc.want, got[tc.key.KeyID])

			// What a verifier parses is the public key and nothing more.
			var set jose.JSONWebKeySet
			require.NoError(t, json.Unmarshal(w.Body.Bytes(), &set))
			require.Len(t, set.Keys, 1)
			assert.True(t, set.Keys[0].IsPublic())
			if signer, ok := tc.key.Key.(crypto.Signer); ok {
				assert.Equal(t, signer.Public(), set.Keys[0].Key)
			} else {
				assert.Equal(t, tc.key.Key, set.Keys[0].Key)
			}
		})
	}
}

// jwksKMSKey is a crypto.Signer of a type go-jose does not know, as a
// handle to a key in a KMS is.
type jwksKMSKey struct{ *ecdsa.PrivateKey }

func TestJWKSHandlerNeverPublishesPrivateMembers(t *testing.T) {
	k := jwksKeys(t)
	h := newTestJWKSHandler(t, newJWKSProvider(
		jose.JSONWebKey{Key: k.ec, KeyID: "ec", Algorithm: "ES256"},
		jose.JSONWebKey{Key: k.ed, KeyID: "ed", Algorithm: "EdDSA"},
		jose.JSONWebKey{Key: k.rsa, KeyID: "rsa", Algorithm: "RS256"},
		jose.JSONWebKey{Key: jwksKMSKey{k.ec}, KeyID: "kms", Algorithm: "ES256"},
		jwksHMAC(t, "hs"),
	), m2mauth.JWKSConfig{})
	w := jwksGet(h, http.MethodGet)
	require.Equal(t, http.StatusOK, w.Code)
	got := jwksMembers(t, w.Body.Bytes())
	assert.ElementsMatch(t, []string{"ec", "ed", "rsa", "kms"}, keysOf(got))
	// RFC 7518 §6.2.2 (d), §6.3.2 (d, p, q, dp, dq, qi, oth), §6.4.1 (k);
	// RFC 8037 §2 (d).
	for kid, members := range got {
		for _, m := range []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k", "priv"} {
			assert.NotContains(t, members, m, "key %s", kid)
		}
		assert.NotEqual(t, "oct", members["kty"], "key %s", kid)
	}
	assert.NotContains(t, w.Body.String(), b64(k.rsa.D.Bytes()))
	assert.NotContains(t, w.Body.String(), b64(k.ed.Seed()))
	ecD, err := k.ec.Bytes()
	require.NoError(t, err)
	assert.NotContains(t, w.Body.String(), b64(ecD))
}

func keysOf[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestJWKSHandlerOmitsWhatItMustNotPublish(t *testing.T) {
	k := jwksKeys(t)
	ec := jose.JSONWebKey{Key: &k.ec.PublicKey, KeyID: "ec", Algorithm: "ES256"}
	tests := []struct {
		name string
		keys []jose.JSONWebKey
		want string
	}{
		{"RFC 7517 §5: an empty set is {\"keys\":[]}", nil, `{"keys":[]}`},
		{"RFC 7518 §6.4: HS256 keys only", []jose.JSONWebKey{jwksHMAC(t, "a"), jwksHMAC(t, "b")}, `{"keys":[]}`},
		{"RFC 7518 §6.4: HS256 left out beside a public key", []jose.JSONWebKey{jwksHMAC(t, "hs"), ec},
			`{"keys":[{"use":"sig","kty":"EC","kid":"ec","crv":"P-256","alg":"ES256","x":"` + jwksCoord(t, k.ec, 1) + `","y":"` + jwksCoord(t, k.ec, 33) + `"}]}`},
		{"RFC 7517 §4.2: a key for encryption", []jose.JSONWebKey{{Key: &k.ec.PublicKey, KeyID: "enc", Algorithm: "ES256", Use: "enc"}}, `{"keys":[]}`},
		{"RFC 7517 §4.5: a key without kid", []jose.JSONWebKey{{Key: &k.ec.PublicKey, Algorithm: "ES256"}}, `{"keys":[]}`},
		{"RFC 7517 §4.4: a key without alg", []jose.JSONWebKey{{Key: &k.ec.PublicKey, KeyID: "noalg"}}, `{"keys":[]}`},
		{"a key with no key material", []jose.JSONWebKey{{KeyID: "nil", Algorithm: "ES256"}}, `{"keys":[]}`},
		{"a key type go-jose cannot make public", []jose.JSONWebKey{{Key: "secret", KeyID: "str", Algorithm: "ES256"}}, `{"keys":[]}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestJWKSHandler(t, newJWKSProvider(tc.keys...), m2mauth.JWKSConfig{})
			w := jwksGet(h, http.MethodGet)
			require.Equal(t, http.StatusOK, w.Code)
			assert.JSONEq(t, tc.want, w.Body.String())
		})
	}
}

func jwksCoord(t *testing.T, k *ecdsa.PrivateKey, from int) string {
	t.Helper()
	p, err := k.PublicKey.Bytes()
	require.NoError(t, err)
	return b64(p[from : from+32])
}

func TestJWKSHandlerETag(t *testing.T) {
	k := jwksKeys(t)
	ec := jose.JSONWebKey{Key: k.ec, KeyID: "ec", Algorithm: "ES256"}
	ed := jose.JSONWebKey{Key: k.ed, KeyID: "ed", Algorithm: "EdDSA"}
	p := newJWKSProvider(ec)
	h := newTestJWKSHandler(t, p, m2mauth.JWKSConfig{})

	first := jwksGet(h, http.MethodGet)
	etag := first.Header().Get("ETag")
	require.NotEmpty(t, etag)
	assert.False(t, strings.HasPrefix(etag, "W/"), "RFC 9110 §8.8.3: a strong validator")
	assert.Regexp(t, `^"[A-Za-z0-9_-]+"$`, etag, "RFC 9110 §8.8.3: quoted etagc")
	assert.Equal(t, etag, jwksGet(h, http.MethodGet).Header().Get("ETag"), "stable across requests")

	p.replace(ec, ed)
	rotated := jwksGet(h, http.MethodGet)
	assert.NotEqual(t, etag, rotated.Header().Get("ETag"), "a new key, a new ETag")
	assert.Len(t, jwksMembers(t, rotated.Body.Bytes()), 2)

	p.replace(ec)
	assert.Equal(t, etag, jwksGet(h, http.MethodGet).Header().Get("ETag"), "the same keys in a new set: the same ETag")
}

func TestJWKSHandlerBuildsOncePerKeySet(t *testing.T) {
	k := jwksKeys(t)
	p := newJWKSProvider(jose.JSONWebKey{Key: &k.ec.PublicKey, KeyID: "ec", Algorithm: "ES256"})
	h := newTestJWKSHandler(t, p, m2mauth.JWKSConfig{})
	before := jwksGet(h, http.MethodGet).Body.String()

	// A change made in place, behind the same pointer, is not seen: the
	// body was built once for that set, not per request.
	p.set.Load().Keys[0].KeyID = "changed"
	assert.Equal(t, before, jwksGet(h, http.MethodGet).Body.String())

	p.replace(p.set.Load().Keys...)
	assert.Contains(t, jwksGet(h, http.MethodGet).Body.String(), `"kid":"changed"`, "a new set pointer is read")
}

func TestJWKSHandlerIfNoneMatch(t *testing.T) {
	k := jwksKeys(t)
	h := newTestJWKSHandler(t, newJWKSProvider(jose.JSONWebKey{Key: k.ed, KeyID: "ed", Algorithm: "EdDSA"}), m2mauth.JWKSConfig{})
	etag := jwksGet(h, http.MethodGet).Header().Get("ETag")
	opaque := strings.Trim(etag, `"`)

	tests := []struct {
		name   string
		values []string
		want   int
	}{
		{"RFC 9110 §13.1.2: the current ETag", []string{etag}, http.StatusNotModified},
		{"RFC 9110 §13.1.2: in a list", []string{`"old", ` + etag + `, "older"`}, http.StatusNotModified},
		{"RFC 9110 §13.1.2: in a list without spaces", []string{`"old",` + etag}, http.StatusNotModified},
		{"RFC 9110 §13.1.2: in a second field line", []string{`"old"`, etag}, http.StatusNotModified},
		{"RFC 9110 §8.8.3.2: weak comparison matches W/", []string{"W/" + etag}, http.StatusNotModified},
		{"RFC 9110 §13.1.2: * matches the current representation", []string{"*"}, http.StatusNotModified},
		{"RFC 9110 §8.8.3: a comma inside another tag", []string{`"a,b", ` + etag}, http.StatusNotModified},
		{"another ETag", []string{`"old"`}, http.StatusOK},
		{"the opaque tag without quotes", []string{opaque}, http.StatusOK},
		{"a prefix of the ETag", []string{`"` + opaque[:5] + `"`}, http.StatusOK},
		{"the ETag after a malformed member", []string{`bogus, ` + etag}, http.StatusOK},
		{"an unterminated tag", []string{`"` + opaque}, http.StatusOK},
		{"empty", []string{""}, http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			for _, v := range tc.values {
				hdr = append(hdr, "If-None-Match", v)
			}
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				w := jwksGet(h, method, hdr...)
				require.Equal(t, tc.want, w.Code, method)
				assert.Equal(t, etag, w.Header().Get("ETag"), "RFC 9110 §15.4.5: 304 carries the ETag")
				assert.Equal(t, "public, max-age=300", w.Header().Get("Cache-Control"), "RFC 9110 §15.4.5: and Cache-Control")
				if tc.want == http.StatusNotModified {
					assert.Empty(t, w.Body.String(), "RFC 9110 §15.4.5: no content")
				}
			}
		})
	}
}

func TestJWKSHandlerMethods(t *testing.T) {
	k := jwksKeys(t)
	h := newTestJWKSHandler(t, newJWKSProvider(jose.JSONWebKey{Key: k.ed, KeyID: "ed", Algorithm: "EdDSA"}), m2mauth.JWKSConfig{})
	get := jwksGet(h, http.MethodGet)

	t.Run("RFC 9110 §9.3.2 HEAD: GET's headers, no content", func(t *testing.T) {
		w := jwksGet(h, http.MethodHead)
		assert.Equal(t, http.StatusOK, w.Code)
		assert.Empty(t, w.Body.String())
		for _, name := range []string{"Content-Type", "Content-Length", "ETag", "Cache-Control"} {
			assert.Equal(t, get.Header().Get(name), w.Header().Get(name), name)
		}
		assert.Equal(t, fmt.Sprint(get.Body.Len()), w.Header().Get("Content-Length"))
	})
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions} {
		t.Run("RFC 9110 §15.5.6 "+method+" is 405 with Allow", func(t *testing.T) {
			w := jwksGet(h, method)
			assert.Equal(t, http.StatusMethodNotAllowed, w.Code)
			assert.Equal(t, "GET, HEAD", w.Header().Get("Allow"))
			assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
			assert.JSONEq(t, `{"error":"invalid_request","error_description":"the JWK Set accepts only GET and HEAD"}`, w.Body.String())
		})
	}
}

func TestJWKSHandlerCacheControl(t *testing.T) {
	k := jwksKeys(t)
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	tests := []struct {
		name    string
		maxAge  time.Duration
		next    time.Duration // from now
		planned bool
		want    string
	}{
		{"default 5 minutes", 0, 0, false, "public, max-age=300"},
		{"configured", 90 * time.Second, 0, false, "public, max-age=90"},
		{"rounded down to whole seconds", 90*time.Second + 900*time.Millisecond, 0, false, "public, max-age=90"},
		{"negative is max-age=0", -1, 0, false, "public, max-age=0"},
		{"at most 24h", 24 * time.Hour, 0, false, "public, max-age=86400"},
		{"KeySchedule: a change in 60s clamps to 60", 0, time.Minute, true, "public, max-age=60"},
		{"KeySchedule: never past the change (59.9s is 59)", 0, 59*time.Second + 900*time.Millisecond, true, "public, max-age=59"},
		{"KeySchedule: a change due now", 0, 0, true, "public, max-age=0"},
		{"KeySchedule: a change overdue", 0, -time.Hour, true, "public, max-age=0"},
		{"KeySchedule: a change past MaxAge leaves MaxAge", 0, time.Hour, true, "public, max-age=300"},
		{"KeySchedule: a change in exactly MaxAge", 0, 5 * time.Minute, true, "public, max-age=300"},
		{"KeySchedule: no change planned", 0, time.Second, false, "public, max-age=300"},
		{"KeySchedule: clamps a configured MaxAge too", time.Hour, 10 * time.Minute, true, "public, max-age=600"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := &jwksScheduledProvider{
				jwksProvider: newJWKSProvider(jose.JSONWebKey{Key: k.ed, KeyID: "ed", Algorithm: "EdDSA"}),
				next:         now.Add(tc.next),
				planned:      tc.planned,
			}
			h := newTestJWKSHandler(t, p, m2mauth.JWKSConfig{MaxAge: tc.maxAge, Now: clock})
			assert.Equal(t, tc.want, jwksGet(h, http.MethodGet).Header().Get("Cache-Control"))
			etag := jwksGet(h, http.MethodGet).Header().Get("ETag")
			assert.Equal(t, tc.want, jwksGet(h, http.MethodGet, "If-None-Match", etag).Header().Get("Cache-Control"), "304 too")
		})
	}
}

func TestNewJWKSHandlerRefuses(t *testing.T) {
	k := jwksKeys(t)
	failing := newJWKSProvider()
	failing.fail(errors.New("key store down"))
	var nilSet jwksNilSet
	tests := []struct {
		name string
		keys m2mauth.KeyProvider
		cfg  m2mauth.JWKSConfig
		want string
	}{
		{"nil provider", nil, m2mauth.JWKSConfig{}, "nil KeyProvider"},
		{"MaxAge over 24h", newJWKSProvider(), m2mauth.JWKSConfig{MaxAge: 25 * time.Hour}, "exceeds"},
		{"a failing provider", failing, m2mauth.JWKSConfig{}, "key store down"},
		{"a nil key set", nilSet, m2mauth.JWKSConfig{}, "nil key set"},
		{"a key go-jose cannot marshal", newJWKSProvider(jose.JSONWebKey{
			Key: &k.ec.PublicKey, KeyID: "ec", Algorithm: "ES256", CertificateThumbprintSHA256: []byte("short"),
		}), m2mauth.JWKSConfig{}, `key "ec"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := m2mauth.NewJWKSHandler(tc.keys, tc.cfg)
			require.Error(t, err)
			assert.Nil(t, h)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

type jwksNilSet struct{}

func (jwksNilSet) SigningKey(context.Context) (*jose.JSONWebKey, error)          { return nil, nil }
func (jwksNilSet) VerificationKeys(context.Context) (*jose.JSONWebKeySet, error) { return nil, nil }

func TestJWKSHandlerProviderFailure(t *testing.T) {
	k := jwksKeys(t)
	p := newJWKSProvider(jose.JSONWebKey{Key: k.ed, KeyID: "ed", Algorithm: "EdDSA"})
	var logs strings.Builder
	h, err := m2mauth.NewJWKSHandler(p, m2mauth.JWKSConfig{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)
	p.fail(errors.New("key store down"))

	w := jwksGet(h, http.MethodGet)
	assert.Equal(t, http.StatusInternalServerError, w.Code)
	assert.Equal(t, "no-store", w.Header().Get("Cache-Control"))
	assert.Empty(t, w.Header().Get("ETag"))
	assert.JSONEq(t, `{"error":"server_error","error_description":"the key set is unavailable"}`, w.Body.String())
	assert.NotContains(t, w.Body.String(), "key store down", "the cause stays in the log")
	assert.Contains(t, logs.String(), "key store down")
}

func TestJWKSHandlerConcurrentRequests(t *testing.T) {
	k := jwksKeys(t)
	ec := jose.JSONWebKey{Key: k.ec, KeyID: "ec", Algorithm: "ES256"}
	ed := jose.JSONWebKey{Key: k.ed, KeyID: "ed", Algorithm: "EdDSA"}
	p := newJWKSProvider(ec)
	h := newTestJWKSHandler(t, p, m2mauth.JWKSConfig{})
	srv := httptest.NewServer(h)
	defer srv.Close()

	// Each body must be one of the two sets, under that set's own ETag.
	bodies := map[string]string{}
	for _, keys := range [][]jose.JSONWebKey{{ec}, {ec, ed}} {
		p.replace(keys...)
		w := jwksGet(h, http.MethodGet)
		bodies[w.Header().Get("ETag")] = w.Body.String()
	}
	require.Len(t, bodies, 2)

	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if i%2 == 0 {
				p.replace(ec)
			} else {
				p.replace(ec, ed)
			}
		}
	})
	var requests sync.WaitGroup
	for range 8 {
		requests.Go(func() {
			for range 50 {
				resp, err := srv.Client().Get(srv.URL)
				if !assert.NoError(t, err) {
					return
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				assert.NoError(t, err)
				assert.Equal(t, http.StatusOK, resp.StatusCode)
				assert.Equal(t, bodies[resp.Header.Get("ETag")], string(body), "body and ETag of one set")
			}
		})
	}
	requests.Wait()
	close(stop)
	wg.Wait()
}

// ExampleNewJWKSHandler publishes the public half of an Ed25519 signing
// key (the key of RFC 8037 Appendix A) for resource servers to verify
// tokens with.
func ExampleNewJWKSHandler() {
	seed, _ := base64.RawURLEncoding.DecodeString("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
	signing := jose.JSONWebKey{
		Key:       ed25519.NewKeyFromSeed(seed), // the private key: never served
		KeyID:     "2026-11",
		Algorithm: string(jose.EdDSA),
		Use:       "sig",
	}
	jwks, err := m2mauth.NewJWKSHandler(jwksExampleKeys{&jose.JSONWebKeySet{Keys: []jose.JSONWebKey{signing}}}, m2mauth.JWKSConfig{})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /.well-known/jwks.json", jwks)

	w := httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "https://auth.example.com/.well-known/jwks.json", nil))
	fmt.Println(w.Code, w.Header().Get("Content-Type"), w.Header().Get("Cache-Control"))
	fmt.Println(w.Body)
	// Output:
	// 200 application/jwk-set+json public, max-age=300
	// {"keys":[{"use":"sig","kty":"OKP","kid":"2026-11","crv":"Ed25519","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}
}

// jwksExampleKeys is the smallest KeyProvider: one fixed set.
type jwksExampleKeys struct{ set *jose.JSONWebKeySet }

func (k jwksExampleKeys) SigningKey(context.Context) (*jose.JSONWebKey, error) {
	return &k.set.Keys[0], nil
}

func (k jwksExampleKeys) VerificationKeys(context.Context) (*jose.JSONWebKeySet, error) {
	return k.set, nil
}

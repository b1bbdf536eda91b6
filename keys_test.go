package m2mauth_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
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
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)

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
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m2mauth.NewStaticKeys(tc.keys[0], tc.keys[1:]...)
			assert.Error(t, err)
		})
	}
}

package m2mauth_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/m2mauth/m2mauth"
)

func TestGenerateSecret(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		s, err := m2mauth.GenerateSecret()
		require.NoError(t, err)
		require.Len(t, s, 43, "256 bits, base64url without padding")
		require.NotContains(t, s, "+")
		require.NotContains(t, s, "/")
		require.False(t, seen[s])
		seen[s] = true
	}
}

func TestHashAndVerifySecret(t *testing.T) {
	bc, err := bcrypt.GenerateFromPassword([]byte("imported"), bcrypt.MinCost)
	require.NoError(t, err)
	argon, err := m2mauth.HashSecretArgon2id("low-entropy")
	require.NoError(t, err)
	sha, err := m2mauth.HashSecret("s3cret+/:%")
	require.NoError(t, err)
	sha2, err := m2mauth.HashSecret("s3cret+/:%")
	require.NoError(t, err)
	require.NotEqual(t, sha, sha2, "salted")
	require.True(t, strings.HasPrefix(sha, "$sha256$"))
	require.NotContains(t, sha, "s3cret")

	tests := []struct {
		name    string
		hash    string
		secret  string
		ok      bool
		wantErr bool
	}{
		{name: "sha256 match", hash: sha, secret: "s3cret+/:%", ok: true},
		{name: "sha256 mismatch", hash: sha, secret: "s3cret+/:"},
		{name: "sha256 empty", hash: sha, secret: ""},
		{name: "argon2id match", hash: argon, secret: "low-entropy", ok: true},
		{name: "argon2id mismatch", hash: argon, secret: "low-entropY"},
		{name: "bcrypt match", hash: string(bc), secret: "imported", ok: true},
		{name: "bcrypt mismatch", hash: string(bc), secret: "imported!"},
		{name: "plaintext is not a hash", hash: "s3cret", secret: "s3cret", wantErr: true},
		{name: "truncated sha256", hash: sha[:20], secret: "x", wantErr: true},
		{name: "argon2id with huge memory", hash: "$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", secret: "x", wantErr: true},
		{name: "argon2id wrong version", hash: strings.Replace(argon, "v=19", "v=16", 1), secret: "low-entropy", wantErr: true},
		{name: "overlong secret never matches", hash: sha, secret: strings.Repeat("a", 1000)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ok, err := m2mauth.VerifySecret(tc.hash, tc.secret)
			if tc.wantErr {
				require.ErrorIs(t, err, m2mauth.ErrUnknownHash)
				assert.Error(t, m2mauth.ValidateSecretHash(tc.hash))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.ok, ok)
			assert.NoError(t, m2mauth.ValidateSecretHash(tc.hash))
		})
	}
}

func TestNewSecret(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	plain, s, err := m2mauth.NewSecret(now, now.Add(time.Hour))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(s.ID, "sec_"))
	assert.NotContains(t, s.ID, plain[:8], "the id is not derived from the secret")
	ok, err := m2mauth.VerifySecret(s.Hash, plain)
	require.NoError(t, err)
	assert.True(t, ok)
	assert.True(t, s.ActiveAt(now))
	assert.True(t, s.ActiveAt(now.Add(time.Hour-time.Nanosecond)))
	assert.False(t, s.ActiveAt(now.Add(time.Hour)), "expired at ExpiresAt")
	assert.True(t, m2mauth.Secret{}.ActiveAt(now.Add(1000*time.Hour)), "zero expiry never expires")
}

package m2mauth_test

import (
	"fmt"
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

// TestHashCostBounded: imported hashes whose verification would cost more
// than about 64 MiB or a few hundred milliseconds are refused, both when a
// store validates them and when they are verified, so that anyone who
// knows a client id cannot make each guess cost seconds or gigabytes.
func TestHashCostBounded(t *testing.T) {
	const salt, sum = "c2FsdHNhbHRzYWx0c2FsdA", "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"
	argon := func(params string) string { return "$argon2id$v=19$" + params + "$" + salt + "$" + sum }
	// A bcrypt hash with a cost that would take hours, made by editing a
	// real one (computing it would take as long).
	bc, err := bcrypt.GenerateFromPassword([]byte("imported"), bcrypt.MinCost)
	require.NoError(t, err)
	withCost := func(cost string) string { return string(bc[:4]) + cost + string(bc[6:]) }
	tests := []struct {
		name string
		hash string
		ok   bool
	}{
		{"argon2id OWASP default", argon("m=19456,t=2,p=1"), true},
		{"argon2id at the bounds", argon("m=65536,t=4,p=4"), true},
		{"argon2id 256 MiB", argon("m=262144,t=1,p=1"), false},
		{"argon2id t=10", argon("m=19456,t=10,p=1"), false},
		{"argon2id p=16", argon("m=19456,t=1,p=16"), false},
		{"bcrypt cost 12", withCost("12"), true},
		{"bcrypt cost 13", withCost("13"), false},
		{"bcrypt cost 31", withCost("31"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := m2mauth.ValidateSecretHash(tc.hash)
			if tc.ok {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, m2mauth.ErrUnknownHash)
			start := time.Now()
			ok, err := m2mauth.VerifySecret(tc.hash, "guess")
			assert.False(t, ok)
			assert.ErrorIs(t, err, m2mauth.ErrUnknownHash)
			assert.Less(t, time.Since(start), time.Second, "refused before any hashing")
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

// TestVerifySecretUnreadableBcrypt: a bcrypt hash whose cost can be read
// but whose salt cannot is unreadable, whatever the length of the secret
// checked against it, so the token endpoint logs it as such.
func TestVerifySecretUnreadableBcrypt(t *testing.T) {
	bad := "$2a$04$" + strings.Repeat("!", 53)
	for _, n := range []int{5, 72, 73, 600} {
		t.Run(fmt.Sprint(n, " bytes"), func(t *testing.T) {
			ok, err := m2mauth.VerifySecret(bad, strings.Repeat("s", n))
			require.ErrorIs(t, err, m2mauth.ErrUnknownHash)
			require.False(t, ok)
		})
	}
}

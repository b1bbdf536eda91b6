package memstore_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

func TestSigningKeys(t *testing.T) {
	ctx := t.Context()
	s := memstore.New()
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	k := m2mauth.StoredKey{KID: "k2", Algorithm: "ES256", Generation: 2, Sealed: []byte("sealed"), PublishedAt: now, ActiveAt: now.Add(10 * time.Minute)}
	ok, err := s.AddSigningKey(ctx, k)
	require.NoError(t, err)
	assert.True(t, ok)
	k1 := k
	k1.KID, k1.Generation = "k1", 1
	ok, err = s.AddSigningKey(ctx, k1)
	require.NoError(t, err)
	assert.True(t, ok)
	ok, err = s.AddSigningKey(ctx, k)
	require.NoError(t, err)
	assert.False(t, ok)
	got, err := s.SigningKeys(ctx)
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, []string{"k1", "k2"}, []string{got[0].KID, got[1].KID})
	got[1].Sealed[0] = 'X'
	require.NoError(t, s.RevokeSigningKey(ctx, "k2", now))
	require.ErrorIs(t, s.RevokeSigningKey(ctx, "nope", now), m2mauth.ErrKeyNotFound)
	got, err = s.SigningKeys(ctx)
	require.NoError(t, err)
	assert.Equal(t, "sealed", string(got[1].Sealed))
	assert.Equal(t, now, got[1].RevokedAt)
	first, err := s.ClaimKeyEvent(ctx, "k2", m2mauth.EventKeyActivated)
	require.NoError(t, err)
	again, err := s.ClaimKeyEvent(ctx, "k2", m2mauth.EventKeyActivated)
	require.NoError(t, err)
	assert.True(t, first)
	assert.False(t, again)
	require.Error(t, s.ResealSigningKeys(ctx, map[string][]byte{"k1": []byte("new"), "nope": []byte("new")}))
	require.NoError(t, s.ResealSigningKeys(ctx, map[string][]byte{"k1": []byte("new")}))
	deleted, err := s.DeleteSigningKey(ctx, "k1")
	require.NoError(t, err)
	assert.True(t, deleted)
}

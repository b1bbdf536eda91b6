package memstore_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
	"github.com/m2mauth/m2mauth/storetest"
)

func TestKeyStore(t *testing.T) {
	storetest.RunKeyStore(t, func(*testing.T) m2mauth.KeyStore { return memstore.New() })
}

// TestDeleteSigningKeyClaims checks that the claims of a key go with it,
// so that memory stays bounded by the keys held.
func TestDeleteSigningKeyClaims(t *testing.T) {
	ctx := t.Context()
	s := memstore.New()
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	k := m2mauth.StoredKey{KID: "k1", Algorithm: "ES256", Generation: 1, Sealed: []byte("sealed"), PublishedAt: now, ActiveAt: now}
	added, err := s.AddSigningKey(ctx, k)
	require.NoError(t, err)
	require.True(t, added)
	first, err := s.ClaimKeyEvent(ctx, "k1", m2mauth.EventKeyActivated)
	require.NoError(t, err)
	require.True(t, first)

	deleted, err := s.DeleteSigningKey(ctx, "k1")
	require.NoError(t, err)
	require.True(t, deleted)
	assert.Equal(t, 0, memstore.KeyClaims(s))

	added, err = s.AddSigningKey(ctx, k)
	require.NoError(t, err)
	require.True(t, added)
	first, err = s.ClaimKeyEvent(ctx, "k1", m2mauth.EventKeyActivated)
	require.NoError(t, err)
	assert.True(t, first, "a claim of a deleted key outlived it")
}

func TestClaimKeyEventInvalid(t *testing.T) {
	s := memstore.New()
	for name, c := range map[string]struct {
		kid string
		typ m2mauth.AuditEventType
	}{
		"EmptyKID":  {"", m2mauth.EventKeyActivated},
		"BadKID":    {"a\nb", m2mauth.EventKeyActivated},
		"EmptyType": {"k1", ""},
	} {
		t.Run(name, func(t *testing.T) {
			first, err := s.ClaimKeyEvent(t.Context(), c.kid, c.typ)
			require.Error(t, err)
			assert.False(t, first)
			assert.Equal(t, 0, memstore.KeyClaims(s))
		})
	}
}

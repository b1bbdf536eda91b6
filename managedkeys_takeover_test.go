package m2mauth_test

// ActiveAt of a key that took over signing at a revocation.

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

func keyInfoOf(t *testing.T, mk *m2mauth.ManagedKeys, kid string) m2mauth.ManagedKeyInfo {
	t.Helper()
	infos, err := mk.Keys(t.Context())
	require.NoError(t, err)
	i := slices.IndexFunc(infos, func(k m2mauth.ManagedKeyInfo) bool { return k.KID == kid })
	require.GreaterOrEqual(t, i, 0, "kid %s listed", kid)
	return infos[i]
}

func (f *mkFixture) activations(kid string) []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	var at []time.Time
	for _, e := range f.events {
		if e.Type == m2mauth.EventKeyActivated && e.Reason == kid {
			at = append(at, e.Time)
		}
	}
	return at
}

// TestManagedKeysTakeoverActiveAtStable: the key that took over at the active
// key's revocation is listed as active since then (ManagedKeyInfo.ActiveAt
// "is when it starts, or started, signing", and its key_activated event is
// dated then) — also once its scheduled ActiveAt has passed.
func TestManagedKeysTakeoverActiveAtStable(t *testing.T) {
	f := newMKFixture(t)
	mk := f.replica(t)
	first := signingKID(t, mk)
	f.advance(time.Minute)
	next, err := mk.Rotate(t.Context())
	require.NoError(t, err)
	revokedAt := f.advance(time.Minute)
	require.NoError(t, mk.Revoke(t.Context(), first))
	require.Equal(t, next.KID, signingKID(t, mk))
	require.Equal(t, revokedAt, keyInfoOf(t, mk, next.KID).ActiveAt, "before the scheduled activation")
	require.Equal(t, []time.Time{revokedAt}, f.activations(next.KID))

	f.advance(next.ActiveAt.Sub(f.clock()) + time.Second)
	require.NoError(t, mk.Refresh(t.Context()))
	info := keyInfoOf(t, mk, next.KID)
	assert.Equal(t, m2mauth.KeyStateActive, info.State)
	assert.Equal(t, revokedAt, info.ActiveAt, "after the scheduled activation too")
	assert.Equal(t, []time.Time{revokedAt}, f.activations(next.KID), "audited once")
}

// TestManagedKeysSecondTakeoverActiveAt: two keys published ahead (two Rotates
// within the propagation delay); the active key is revoked (the first
// published takes over), then that one is revoked too (the second takes
// over). The second's activation must be dated its own takeover, not the
// first revocation (when the other key was the one signing).
func TestManagedKeysSecondTakeoverActiveAt(t *testing.T) {
	f := newMKFixture(t)
	mk := f.replica(t)
	other := f.replica(t)
	a := signingKID(t, mk)
	f.advance(time.Minute)
	b, err := mk.Rotate(t.Context())
	require.NoError(t, err)
	f.advance(time.Minute)
	c, err := mk.Rotate(t.Context())
	require.NoError(t, err)

	revokeA := f.advance(time.Minute)
	require.NoError(t, mk.Revoke(t.Context(), a))
	require.Equal(t, b.KID, signingKID(t, mk), "b signs from the revocation of a")
	require.Equal(t, []time.Time{revokeA}, f.activations(b.KID))

	revokeB := f.advance(time.Minute)
	require.NoError(t, mk.Revoke(t.Context(), b.KID))
	require.Equal(t, c.KID, signingKID(t, mk), "c signs from the revocation of b")
	require.True(t, revokeB.Before(c.ActiveAt))

	f.advance(time.Second)
	require.NoError(t, other.Refresh(t.Context()))
	for name, r := range map[string]*m2mauth.ManagedKeys{"revoking replica": mk, "other replica": other} {
		assert.Equal(t, revokeB, keyInfoOf(t, r, c.KID).ActiveAt, "%s: Keys' ActiveAt of c", name)
	}
	assert.Equal(t, []time.Time{revokeB}, f.activations(c.KID), "key_activated of c")
}

// TestManagedKeysTakeoverActiveAtClockBehind: a replica whose clock is a
// few seconds behind the one that revoked reads the revocation (RevokedAt
// in its future) and lists the key that took over as active since the
// revocation, as the others do.
func TestManagedKeysTakeoverActiveAtClockBehind(t *testing.T) {
	f := newMKFixture(t)
	mk := f.replica(t)
	behind := f.replica(t, func(c *m2mauth.ManagedKeysConfig) {
		c.Now = func() time.Time { return f.clock().Add(-5 * time.Second) }
	})
	a := signingKID(t, mk)
	f.advance(time.Hour)
	b, err := mk.Rotate(t.Context())
	require.NoError(t, err)
	revokedAt := f.advance(time.Minute)
	require.NoError(t, mk.Revoke(t.Context(), a))
	f.advance(time.Second)
	require.NoError(t, behind.Refresh(t.Context()))
	require.Equal(t, b.KID, signingKID(t, behind))
	info := keyInfoOf(t, behind, b.KID)
	assert.Equal(t, m2mauth.KeyStateActive, info.State)
	assert.Equal(t, revokedAt, info.ActiveAt, "behind replica's Keys")
}

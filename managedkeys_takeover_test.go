package m2mauth_test

// ActiveAt of a key that took over signing at a revocation.

import (
	"fmt"
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

// TestManagedKeysRotationActiveAtAfterPreviousKeyDeleted: an ordinary
// automatic rotation, no revocation. Once the retired key's row is
// deleted (its retirement plus MaxTokenTTL plus Leeway), the key that
// signs is still listed as active since its scheduled ActiveAt: it did
// not sign before it (the previous key did), though the rows no longer
// show that key.
func TestManagedKeysRotationActiveAtAfterPreviousKeyDeleted(t *testing.T) {
	f := newMKFixture(t)
	mk := f.replica(t, dailyRotation)
	a := signingKID(t, mk)
	b := publishedOnSchedule(t, f, mk)
	scheduled := b.ActiveAt

	// B becomes active by its schedule; A retires.
	f.advance(time.Hour)
	require.NoError(t, mk.Refresh(t.Context()))
	require.Equal(t, b.KID, signingKID(t, mk))
	assert.Equal(t, scheduled, keyInfoOf(t, mk, b.KID).ActiveAt, "while A's row is kept")
	assert.Equal(t, []time.Time{scheduled}, f.activations(b.KID))

	// A is deleted 11 minutes after its retirement.
	f.advance(12 * time.Minute)
	require.NoError(t, mk.Refresh(t.Context()))
	infos, err := mk.Keys(t.Context())
	require.NoError(t, err)
	require.Len(t, infos, 1, "A deleted")
	require.NotEqual(t, a, infos[0].KID)
	assert.Equal(t, m2mauth.KeyStateActive, infos[0].State)
	assert.Equal(t, scheduled, infos[0].ActiveAt,
		"B's ActiveAt after A's deletion: scheduled activation, not its publication %v", infos[0].PublishedAt)
}

// TestManagedKeysRotationActivationAuditedAfterDowntime: a single replica, down
// from just after the next key B was published until after the previous
// key A's deletion time (a weekend outage, say). On start it deletes A and
// audits B's activation, which happened while it was down: the
// key_activated event must be dated B's scheduled ActiveAt (when it began
// to sign; A signed until then), not B's publication an hour earlier.
func TestManagedKeysRotationActivationAuditedAfterDowntime(t *testing.T) {
	f := newMKFixture(t)
	mk := f.replica(t, dailyRotation)
	b := publishedOnSchedule(t, f, mk)
	mk.Close()

	f.advance(3 * time.Hour)
	mk2 := f.replica(t, dailyRotation)
	require.Equal(t, b.KID, signingKID(t, mk2))
	assert.Equal(t, []time.Time{b.ActiveAt}, f.activations(b.KID),
		"key_activated of B: its ActiveAt, not its publication %v", b.PublishedAt)
	assert.Equal(t, b.ActiveAt, keyInfoOf(t, mk2, b.KID).ActiveAt)
}

// TestManagedKeysActivationCases: the activation of an emergency key (every
// key revoked), after a clock step back past an ordinary activation, and
// across ResealKeys.
func TestManagedKeysActivationCases(t *testing.T) {
	edit := dailyRotation
	t.Run("emergency", func(t *testing.T) {
		f := newMKFixture(t)
		mk := f.replica(t, edit)
		a := signingKID(t, mk)
		first := keyInfoOf(t, mk, a)
		assert.Equal(t, first.PublishedAt, first.ActiveAt)
		assert.Equal(t, []time.Time{first.ActiveAt}, f.activations(a))
		at := f.advance(time.Hour)
		require.NoError(t, mk.Revoke(t.Context(), a))
		e := signingKID(t, mk)
		require.NotEqual(t, a, e)
		info := keyInfoOf(t, mk, e)
		assert.Equal(t, at, info.ActiveAt)
		assert.Equal(t, m2mauth.KeyStateActive, info.State)
		assert.Equal(t, []time.Time{at}, f.activations(e))
	})
	t.Run("clock back", func(t *testing.T) {
		f := newMKFixture(t)
		mk := f.replica(t, edit)
		f.advance(23*time.Hour + time.Second)
		require.NoError(t, mk.Refresh(t.Context()))
		infos, err := mk.Keys(t.Context())
		require.NoError(t, err)
		b := infos[1]
		f.advance(time.Hour + time.Second)
		require.NoError(t, mk.Refresh(t.Context()))
		f.advance(-30 * time.Minute)
		require.NoError(t, mk.Refresh(t.Context()))
		info := keyInfoOf(t, mk, b.KID)
		assert.Equal(t, b.ActiveAt, info.ActiveAt)
		assert.Equal(t, m2mauth.KeyStatePublished, info.State)
		f.advance(time.Hour)
		require.NoError(t, mk.Refresh(t.Context()))
		assert.Equal(t, []time.Time{b.ActiveAt}, f.activations(b.KID))
	})
	t.Run("reseal", func(t *testing.T) {
		f := newMKFixture(t)
		mk := f.replica(t, edit)
		f.advance(23*time.Hour + time.Second)
		require.NoError(t, mk.Refresh(t.Context()))
		before, err := mk.Keys(t.Context())
		require.NoError(t, err)
		_, err = m2mauth.ResealKeys(t.Context(), f.store, f.sealer, f.sealer)
		require.NoError(t, err)
		after, err := mk.Keys(t.Context())
		require.NoError(t, err)
		assert.Equal(t, before, after)
	})
}

// BenchmarkManagedKeysKeys measures Keys over 150 stored keys (a scripted
// rotation loop, or keys published ahead and revoked, kept for MaxTokenTTL
// plus Leeway): the replay of the rows that tells each key's activation
// is quadratic in them, not worse.
func BenchmarkManagedKeysKeys(b *testing.B) {
	f := newMKFixture(b)
	mk, err := m2mauth.NewManagedKeys(b.Context(), f.store, f.sealer, f.config())
	require.NoError(b, err)
	b.Cleanup(func() { mk.Close() })
	t0 := f.clock()
	const n = 150
	for i := 2; i <= n; i++ {
		pub := t0.Add(time.Duration(i) * time.Second)
		_, err := f.store.AddSigningKey(b.Context(), m2mauth.StoredKey{
			KID: fmt.Sprintf("k-%d", i), Algorithm: "ES256", Generation: int64(i),
			Sealed: []byte("x"), PublishedAt: pub, ActiveAt: pub.Add(time.Hour),
		})
		require.NoError(b, err)
	}
	f.advance(time.Duration(n+1) * time.Second)
	b.ReportAllocs()
	for b.Loop() {
		infos, err := mk.Keys(b.Context())
		if err != nil || len(infos) != n {
			b.Fatal(err, len(infos))
		}
	}
}

// dailyRotation configures a replica to rotate daily, publishing each key
// an hour ahead, with tokens of at most ten minutes (and a minute of
// leeway): a retired key is deleted eleven minutes after its retirement.
func dailyRotation(c *m2mauth.ManagedKeysConfig) {
	c.RotationInterval = 24 * time.Hour
	c.PropagationDelay = time.Hour
	c.MaxTokenTTL = 10 * time.Minute
	c.Leeway = time.Minute
}

// publishedOnSchedule advances f to just past the scheduled rotation of
// mk's first key (dailyRotation: its ActiveAt plus 23h) and returns the
// key mk then publishes, active an hour later.
func publishedOnSchedule(t *testing.T, f *mkFixture, mk *m2mauth.ManagedKeys) m2mauth.ManagedKeyInfo {
	t.Helper()
	f.advance(23*time.Hour + time.Second)
	require.NoError(t, mk.Refresh(t.Context()))
	infos, err := mk.Keys(t.Context())
	require.NoError(t, err)
	require.Len(t, infos, 2)
	require.Equal(t, m2mauth.KeyStatePublished, infos[1].State)
	return infos[1]
}

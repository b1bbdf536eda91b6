package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// RunKeyStore checks the store made by newStore against the
// [m2mauth.KeyStore] contract, one t.Run subtest per property:
//
//	func TestKeyStore(t *testing.T) {
//		storetest.RunKeyStore(t, func(t *testing.T) m2mauth.KeyStore {
//			return mystore.New(openTestDB(t))
//		})
//	}
//
// The contract, on top of the one written on [m2mauth.KeyStore]:
//
//   - A new store holds no key.
//   - SigningKeys returns every field as AddSigningKey was given it
//     (RevokedAt too, when set), in ascending Generation order whatever
//     the order of the adds. Sealed is any bytes (NUL and 0xff included,
//     up to 64 KiB at least), kept exactly. Every time the suite writes
//     is in UTC and truncated to the microsecond, so a store must keep
//     times to the microsecond and may drop anything finer; it may
//     return them in any location. KIDs are compared byte for byte:
//     "k", "K" and "k " are three keys.
//   - AddSigningKey of a Generation or a KID the store holds returns
//     false, no error, and changes nothing; of 8 goroutines adding keys
//     of one Generation at once, or of one KID, exactly one gets true.
//     Once a key is deleted, its Generation and KID may be added again.
//   - AddSigningKey refuses, with an error and no change, a KID other
//     than 1 to 255 printable ASCII characters (%x20-7E), an Algorithm
//     not among [m2mauth.SupportedAlgorithms] (compared exactly), a
//     Generation below 1, an empty Sealed, a zero PublishedAt or
//     ActiveAt, and an ActiveAt before PublishedAt. ActiveAt equal to
//     PublishedAt is valid (the first key of a store signs at once).
//   - RevokeSigningKey sets RevokedAt and leaves every other field and
//     key; revoking again, at another time, keeps the first RevokedAt;
//     an unknown kid is an error wrapping [m2mauth.ErrKeyNotFound]; a
//     zero time is an error. Neither error changes anything.
//   - DeleteSigningKey returns true and removes the key, then false; an
//     unknown kid is false and no error.
//   - ResealSigningKeys replaces the Sealed of the keys named and
//     leaves every other field and key; an empty map is no change; a
//     map naming one unknown kid is an error wrapping
//     [m2mauth.ErrKeyNotFound], and a map with one empty value an error,
//     and neither reseals any key, not even the others named.
//   - ClaimKeyEvent returns true the first time for each (kid, type)
//     and false after, with no error; of 8 goroutines claiming one at
//     once, exactly one gets true.
//   - A store keeps no reference to a Sealed it is given (by
//     AddSigningKey or ResealSigningKeys) and hands out none it keeps.
//
// RunKeyStore calls newStore once per subtest, with that subtest's t, and
// expects a fresh, empty store each time; newStore may register cleanup
// with t.Cleanup.
func RunKeyStore(t *testing.T, newStore func(t *testing.T) m2mauth.KeyStore) {
	t.Helper()
	tests := []struct {
		name string
		test func(*testing.T, m2mauth.KeyStore)
	}{
		{"Empty", testKeysEmpty},
		{"RoundTrip", testKeysRoundTrip},
		{"KIDsAreExact", testKIDsAreExact},
		{"AddExisting", testAddExistingKey},
		{"AddInvalid", testAddInvalidKey},
		{"ConcurrentAdd", testConcurrentAddKey},
		{"Revoke", testRevokeKey},
		{"Delete", testDeleteKey},
		{"Reseal", testReseal},
		{"ResealAllOrNothing", testResealAllOrNothing},
		{"ClaimKeyEvent", testClaimKeyEvent},
		{"ConcurrentClaim", testConcurrentClaim},
		{"SealedIsCopied", testSealedIsCopied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			require.NotNil(t, s, "newStore returned nil")
			tt.test(t, s)
		})
	}
}

// keyTime is the publication time of the keys the suite makes: in UTC, to
// the microsecond.
var keyTime = time.Date(2031, 5, 6, 7, 8, 9, 123456000, time.UTC)

// storedKey returns a valid key of generation gen with kid kid, published
// at keyTime and active ten minutes later.
func storedKey(kid string, gen int64) m2mauth.StoredKey {
	return m2mauth.StoredKey{
		KID:         kid,
		Algorithm:   "ES256",
		Generation:  gen,
		Sealed:      []byte("sealed:" + kid),
		PublishedAt: keyTime.Add(time.Duration(gen) * time.Hour),
		ActiveAt:    keyTime.Add(time.Duration(gen)*time.Hour + 10*time.Minute),
	}
}

func mustAddKey(t *testing.T, s m2mauth.KeyStore, k m2mauth.StoredKey) {
	t.Helper()
	added, err := s.AddSigningKey(t.Context(), k)
	require.NoError(t, err, "AddSigningKey(%q, generation %d)", k.KID, k.Generation)
	require.True(t, added, "AddSigningKey(%q, generation %d) stored nothing", k.KID, k.Generation)
}

func mustKeys(t *testing.T, s m2mauth.KeyStore) []m2mauth.StoredKey {
	t.Helper()
	keys, err := s.SigningKeys(t.Context())
	require.NoError(t, err, "SigningKeys")
	return keys
}

// assertKeys checks that got holds the keys of want, in order, field by
// field.
func assertKeys(t *testing.T, want, got []m2mauth.StoredKey) {
	t.Helper()
	if !assert.Len(t, got, len(want), "keys: %v", kidsOf(got)) {
		return
	}
	for i, w := range want {
		g := got[i]
		assert.Equal(t, w.KID, g.KID, "KID of key %d", i)
		assert.Equal(t, w.Algorithm, g.Algorithm, "Algorithm of %q", w.KID)
		assert.Equal(t, w.Generation, g.Generation, "Generation of %q", w.KID)
		assert.True(t, bytes.Equal(w.Sealed, g.Sealed), "Sealed of %q: want %d bytes, got %d bytes that differ", w.KID, len(w.Sealed), len(g.Sealed))
		assertSameTime(t, w.PublishedAt, g.PublishedAt, "PublishedAt of %q", w.KID)
		assertSameTime(t, w.ActiveAt, g.ActiveAt, "ActiveAt of %q", w.KID)
		assertSameTime(t, w.RevokedAt, g.RevokedAt, "RevokedAt of %q", w.KID)
	}
}

func kidsOf(keys []m2mauth.StoredKey) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.KID
	}
	return out
}

func testKeysEmpty(t *testing.T, s m2mauth.KeyStore) {
	assert.Empty(t, mustKeys(t, s))
}

func testKeysRoundTrip(t *testing.T, s m2mauth.KeyStore) {
	binary := make([]byte, 64<<10)
	for i := range binary {
		binary[i] = byte(i * 7)
	}
	binary[0], binary[1] = 0, 0xff
	want := []m2mauth.StoredKey{
		{KID: "first", Algorithm: "HS256", Generation: 1, Sealed: []byte{0}, PublishedAt: keyTime, ActiveAt: keyTime},
		{KID: "second key, with spaces ~!", Algorithm: "EdDSA", Generation: 2, Sealed: binary,
			PublishedAt: keyTime.Add(time.Hour), ActiveAt: keyTime.Add(time.Hour + 10*time.Minute + time.Microsecond),
			RevokedAt: keyTime.Add(2 * time.Hour)},
		{KID: "third", Algorithm: "RS256", Generation: 7, Sealed: []byte("sealed"),
			PublishedAt: keyTime.Add(-time.Microsecond), ActiveAt: keyTime.Add(90 * 24 * time.Hour)},
		{KID: "fourth", Algorithm: "PS256", Generation: 1 << 40, Sealed: []byte{0xff},
			PublishedAt: keyTime.In(time.FixedZone("east", 5*3600)), ActiveAt: keyTime.Add(time.Second)},
		{KID: strings.Repeat("k", 255), Algorithm: "ES256", Generation: 3, Sealed: []byte("x"),
			PublishedAt: keyTime, ActiveAt: keyTime},
	}
	for _, i := range []int{2, 0, 3, 1, 4} { // not in Generation order
		mustAddKey(t, s, want[i])
	}
	want[3], want[4], want[2] = want[2], want[3], want[4] // generations 1, 2, 3, 7, 1<<40
	assertKeys(t, want, mustKeys(t, s))
}

func testKIDsAreExact(t *testing.T, s m2mauth.KeyStore) {
	var all strings.Builder
	for c := byte(0x20); c <= 0x7e; c++ {
		all.WriteByte(c)
	}
	kids := []string{"Case", "case", "CASE", "pad", "pad ", " pad", "per%cent", "under_score", all.String()}
	var want []m2mauth.StoredKey
	for i, kid := range kids {
		k := storedKey(kid, int64(i+1))
		mustAddKey(t, s, k)
		want = append(want, k)
	}
	assertKeys(t, want, mustKeys(t, s))
	ctx := t.Context()
	for _, kid := range []string{"cASE", "pad  ", "per%", "underXscore", "Ca%"} {
		require.ErrorIs(t, s.RevokeSigningKey(ctx, kid, keyTime), m2mauth.ErrKeyNotFound, "RevokeSigningKey(%q)", kid)
		deleted, err := s.DeleteSigningKey(ctx, kid)
		require.NoError(t, err, "DeleteSigningKey(%q)", kid)
		assert.False(t, deleted, "DeleteSigningKey(%q)", kid)
	}
	assertKeys(t, want, mustKeys(t, s))
}

func testAddExistingKey(t *testing.T, s m2mauth.KeyStore) {
	ctx := t.Context()
	k1, k2 := storedKey("one", 1), storedKey("two", 2)
	mustAddKey(t, s, k1)
	mustAddKey(t, s, k2)
	sameGen := storedKey("other", 1)
	sameGen.Algorithm, sameGen.Sealed = "HS256", []byte("other")
	sameKID := storedKey("one", 3)
	sameKID.Sealed = []byte("other")
	for name, k := range map[string]m2mauth.StoredKey{
		"SameGeneration": sameGen,
		"SameKID":        sameKID,
		"Same":           k1,
		"SameBoth":       {KID: "two", Algorithm: "EdDSA", Generation: 2, Sealed: []byte("x"), PublishedAt: keyTime, ActiveAt: keyTime},
	} {
		t.Run(name, func(t *testing.T) {
			added, err := s.AddSigningKey(ctx, k)
			require.NoError(t, err)
			assert.False(t, added)
			assertKeys(t, []m2mauth.StoredKey{k1, k2}, mustKeys(t, s))
		})
	}
}

func testAddInvalidKey(t *testing.T, s m2mauth.KeyStore) {
	ctx := t.Context()
	held := storedKey("held", 1)
	mustAddKey(t, s, held)
	with := func(f func(k *m2mauth.StoredKey)) m2mauth.StoredKey {
		k := storedKey("new", 2)
		f(&k)
		return k
	}
	tests := []struct {
		name string
		key  m2mauth.StoredKey
	}{
		{"EmptyKID", with(func(k *m2mauth.StoredKey) { k.KID = "" })},
		{"LongKID", with(func(k *m2mauth.StoredKey) { k.KID = strings.Repeat("k", 256) })},
		{"KIDNewline", with(func(k *m2mauth.StoredKey) { k.KID = "a\nb" })},
		{"KIDNUL", with(func(k *m2mauth.StoredKey) { k.KID = "a\x00b" })},
		{"KIDDEL", with(func(k *m2mauth.StoredKey) { k.KID = "a\x7fb" })},
		{"KIDNotASCII", with(func(k *m2mauth.StoredKey) { k.KID = "clé" })},
		{"KIDNotUTF8", with(func(k *m2mauth.StoredKey) { k.KID = "a\xffb" })},
		{"NoAlgorithm", with(func(k *m2mauth.StoredKey) { k.Algorithm = "" })},
		{"AlgorithmNone", with(func(k *m2mauth.StoredKey) { k.Algorithm = "none" })},
		{"AlgorithmHS512", with(func(k *m2mauth.StoredKey) { k.Algorithm = "HS512" })},
		{"AlgorithmLowerCase", with(func(k *m2mauth.StoredKey) { k.Algorithm = "es256" })},
		{"GenerationZero", with(func(k *m2mauth.StoredKey) { k.Generation = 0 })},
		{"GenerationNegative", with(func(k *m2mauth.StoredKey) { k.Generation = -1 })},
		{"NilSealed", with(func(k *m2mauth.StoredKey) { k.Sealed = nil })},
		{"EmptySealed", with(func(k *m2mauth.StoredKey) { k.Sealed = []byte{} })},
		{"ZeroPublishedAt", with(func(k *m2mauth.StoredKey) { k.PublishedAt = time.Time{} })},
		{"ZeroActiveAt", with(func(k *m2mauth.StoredKey) { k.ActiveAt = time.Time{} })},
		{"ActiveBeforePublished", with(func(k *m2mauth.StoredKey) { k.ActiveAt = k.PublishedAt.Add(-time.Microsecond) })},
		// Invalid and clashing with the key held: refused, not ignored.
		{"InvalidSameGeneration", with(func(k *m2mauth.StoredKey) { k.Generation, k.Algorithm = 1, "none" })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			added, err := s.AddSigningKey(ctx, tt.key)
			require.Error(t, err)
			assert.False(t, added)
			assertKeys(t, []m2mauth.StoredKey{held}, mustKeys(t, s))
		})
	}
}

func testConcurrentAddKey(t *testing.T, s m2mauth.KeyStore) {
	const n = 8
	race := func(t *testing.T, key func(i int) m2mauth.StoredKey) (winner int) {
		var wg sync.WaitGroup
		added := make([]bool, n)
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				added[i], errs[i] = s.AddSigningKey(t.Context(), key(i))
			}()
		}
		wg.Wait()
		require.NoError(t, errors.Join(errs...))
		winner = -1
		for i, ok := range added {
			if ok {
				assert.Equal(t, -1, winner, "AddSigningKey returned true more than once: %v", added)
				winner = i
			}
		}
		require.NotEqual(t, -1, winner, "no AddSigningKey returned true")
		return winner
	}
	t.Run("SameGeneration", func(t *testing.T) {
		w := race(t, func(i int) m2mauth.StoredKey { return storedKey(fmt.Sprintf("racer-%d", i), 1) })
		assertKeys(t, []m2mauth.StoredKey{storedKey(fmt.Sprintf("racer-%d", w), 1)}, mustKeys(t, s))
	})
	t.Run("SameKID", func(t *testing.T) {
		w := race(t, func(i int) m2mauth.StoredKey { return storedKey("contested", int64(10+i)) })
		keys := mustKeys(t, s)
		require.Len(t, keys, 2)
		assertKeys(t, []m2mauth.StoredKey{storedKey("contested", int64(10+w))}, keys[1:])
	})
}

func testRevokeKey(t *testing.T, s m2mauth.KeyStore) {
	ctx := t.Context()
	k1, k2 := storedKey("one", 1), storedKey("two", 2)
	mustAddKey(t, s, k1)
	mustAddKey(t, s, k2)
	at := keyTime.Add(3*time.Hour + time.Microsecond)

	require.NoError(t, s.RevokeSigningKey(ctx, "two", at))
	k2.RevokedAt = at
	assertKeys(t, []m2mauth.StoredKey{k1, k2}, mustKeys(t, s))

	require.NoError(t, s.RevokeSigningKey(ctx, "two", at.Add(time.Hour)), "revoking again")
	require.NoError(t, s.RevokeSigningKey(ctx, "two", at.Add(-time.Hour)), "revoking again, earlier")
	assertKeys(t, []m2mauth.StoredKey{k1, k2}, mustKeys(t, s))

	require.ErrorIs(t, s.RevokeSigningKey(ctx, "three", at), m2mauth.ErrKeyNotFound)
	require.Error(t, s.RevokeSigningKey(ctx, "one", time.Time{}), "zero time")
	assertKeys(t, []m2mauth.StoredKey{k1, k2}, mustKeys(t, s))
}

func testDeleteKey(t *testing.T, s m2mauth.KeyStore) {
	ctx := t.Context()
	k1, k2, k3 := storedKey("one", 1), storedKey("two", 2), storedKey("three", 3)
	for _, k := range []m2mauth.StoredKey{k1, k2, k3} {
		mustAddKey(t, s, k)
	}
	require.NoError(t, s.RevokeSigningKey(ctx, "two", keyTime))
	for _, kid := range []string{"one", "two"} {
		deleted, err := s.DeleteSigningKey(ctx, kid)
		require.NoError(t, err)
		assert.True(t, deleted, "first DeleteSigningKey(%q)", kid)
		deleted, err = s.DeleteSigningKey(ctx, kid)
		require.NoError(t, err)
		assert.False(t, deleted, "second DeleteSigningKey(%q)", kid)
	}
	deleted, err := s.DeleteSigningKey(ctx, "never")
	require.NoError(t, err)
	assert.False(t, deleted, "DeleteSigningKey of an unknown kid")
	assertKeys(t, []m2mauth.StoredKey{k3}, mustKeys(t, s))

	// The generation and the kid are free again.
	mustAddKey(t, s, k1)
	mustAddKey(t, s, k2)
	assertKeys(t, []m2mauth.StoredKey{k1, k2, k3}, mustKeys(t, s))
}

func testReseal(t *testing.T, s m2mauth.KeyStore) {
	ctx := t.Context()
	k1, k2, k3 := storedKey("one", 1), storedKey("two", 2), storedKey("three", 3)
	for _, k := range []m2mauth.StoredKey{k1, k2, k3} {
		mustAddKey(t, s, k)
	}
	require.NoError(t, s.RevokeSigningKey(ctx, "two", keyTime))
	k2.RevokedAt = keyTime

	require.NoError(t, s.ResealSigningKeys(ctx, map[string][]byte{}), "empty map")
	require.NoError(t, s.ResealSigningKeys(ctx, nil), "nil map")
	assertKeys(t, []m2mauth.StoredKey{k1, k2, k3}, mustKeys(t, s))

	require.NoError(t, s.ResealSigningKeys(ctx, map[string][]byte{"one": []byte("new one"), "two": {0, 1, 0xff}}))
	k1.Sealed, k2.Sealed = []byte("new one"), []byte{0, 1, 0xff}
	assertKeys(t, []m2mauth.StoredKey{k1, k2, k3}, mustKeys(t, s))
}

func testResealAllOrNothing(t *testing.T, s m2mauth.KeyStore) {
	ctx := t.Context()
	want := []m2mauth.StoredKey{storedKey("one", 1), storedKey("two", 2), storedKey("three", 3)}
	for _, k := range want {
		mustAddKey(t, s, k)
	}
	t.Run("UnknownKID", func(t *testing.T) {
		err := s.ResealSigningKeys(ctx, map[string][]byte{"one": []byte("a"), "gone": []byte("b"), "three": []byte("c")})
		require.ErrorIs(t, err, m2mauth.ErrKeyNotFound)
		assertKeys(t, want, mustKeys(t, s))
	})
	t.Run("EmptySealed", func(t *testing.T) {
		err := s.ResealSigningKeys(ctx, map[string][]byte{"one": []byte("a"), "two": nil, "three": []byte("c")})
		require.Error(t, err)
		assertKeys(t, want, mustKeys(t, s))
	})
}

func testClaimKeyEvent(t *testing.T, s m2mauth.KeyStore) {
	ctx := t.Context()
	mustAddKey(t, s, storedKey("one", 1))
	mustAddKey(t, s, storedKey("two", 2))
	claim := func(kid string, typ m2mauth.AuditEventType) bool {
		t.Helper()
		first, err := s.ClaimKeyEvent(ctx, kid, typ)
		require.NoError(t, err, "ClaimKeyEvent(%q, %s)", kid, typ)
		return first
	}
	assert.True(t, claim("one", m2mauth.EventKeyActivated), "first claim")
	assert.False(t, claim("one", m2mauth.EventKeyActivated), "second claim")
	assert.True(t, claim("one", m2mauth.EventKeyRetired), "another type")
	assert.True(t, claim("two", m2mauth.EventKeyActivated), "another key")
	assert.False(t, claim("two", m2mauth.EventKeyActivated), "another key, again")
	for _, typ := range []m2mauth.AuditEventType{m2mauth.EventKeyPublished, m2mauth.EventKeyRevoked, m2mauth.EventKeyDeleted} {
		assert.True(t, claim("two", typ), "first claim of %s", typ)
		assert.False(t, claim("two", typ), "second claim of %s", typ)
	}
	assert.False(t, claim("one", m2mauth.EventKeyRetired), "second claim of another type")
}

func testConcurrentClaim(t *testing.T, s m2mauth.KeyStore) {
	const n = 8
	mustAddKey(t, s, storedKey("one", 1))
	var wg sync.WaitGroup
	first := make([]bool, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			first[i], errs[i] = s.ClaimKeyEvent(t.Context(), "one", m2mauth.EventKeyActivated)
		}()
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	wins := 0
	for _, ok := range first {
		if ok {
			wins++
		}
	}
	assert.Equal(t, 1, wins, "ClaimKeyEvent returned true %d times: %v", wins, first)
}

func testSealedIsCopied(t *testing.T, s m2mauth.KeyStore) {
	ctx := t.Context()
	k := storedKey("one", 1)
	given := k.Sealed
	mustAddKey(t, s, k)
	want := storedKey("one", 1)

	given[0] ^= 0xff // the caller's slice, after the add
	got := mustKeys(t, s)
	assertKeys(t, []m2mauth.StoredKey{want}, got)

	got[0].Sealed[0] ^= 0xff // a slice handed out
	assertKeys(t, []m2mauth.StoredKey{want}, mustKeys(t, s))

	resealed := []byte("resealed")
	require.NoError(t, s.ResealSigningKeys(ctx, map[string][]byte{"one": resealed}))
	resealed[0] ^= 0xff
	want.Sealed = []byte("resealed")
	assertKeys(t, []m2mauth.StoredKey{want}, mustKeys(t, s))
}

package storetest

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// DefaultRevokedTokens is how many tokens the "Revocations/ManyTokens"
// subtest revokes unless [WithRevokedTokens] says otherwise.
const DefaultRevokedTokens = 1000

// WithClock gives [Run] a second constructor, of stores that take every
// time they use from now: CreatedAt and UpdatedAt, watermarks, and the
// instant against which [m2mauth.WatermarkLive] and [m2mauth.DenyLive]
// tell which revocations are dead. now is a test clock that starts at the
// current time and that the suite moves forward (by up to a few days)
// between calls; it is safe for concurrent use. newStore must return a
// fresh, empty store each time, as Run's own does.
//
// With it, Run checks a store that implements [m2mauth.Revoker] against
// the revocation contract (see the package documentation) in a subtest
// named "Revocations". Without it, that subtest is skipped, saying why.
func WithClock(newStore func(t *testing.T, now func() time.Time) m2mauth.ClientManager) Option {
	return func(o *options) { o.newClocked = newStore }
}

// WithRevokedTokens sets how many tokens the "Revocations/ManyTokens"
// subtest revokes, one call each, before it checks that they are all
// dropped once dead. Default: [DefaultRevokedTokens]; n <= 0 means the
// default.
func WithRevokedTokens(n int) Option {
	return func(o *options) { o.revokedTokens = n }
}

// testClock is the clock WithClock's stores are given.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

// newTestClock returns a clock set half a second into the current second,
// so that "later in the same second" and "the next second" differ.
func newTestClock() *testClock {
	return &testClock{now: time.Now().UTC().Truncate(time.Second).Add(500 * time.Millisecond)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Add moves the clock d forward and returns the new time.
func (c *testClock) Add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// Set moves the clock to at.
func (c *testClock) Set(at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = at
}

// revEnv is a store under the revocation contract, with its clock.
type revEnv struct {
	m     m2mauth.ClientManager
	r     m2mauth.Revoker
	src   m2mauth.RevocationSource // nil unless implemented
	feed  m2mauth.RevocationFeed   // nil unless implemented
	clock *testClock
}

func runRevocations(t *testing.T, newStore func(*testing.T) m2mauth.ClientManager, o options) {
	if o.newClocked == nil {
		if _, ok := newStore(t).(m2mauth.Revoker); ok {
			t.Skip("the store implements m2mauth.Revoker: pass storetest.WithClock to check it")
		}
		t.Skip("the store does not implement m2mauth.Revoker")
	}
	n := o.revokedTokens
	if n <= 0 {
		n = DefaultRevokedTokens
	}
	tests := []struct {
		name string
		test func(*testing.T, *revEnv)
	}{
		{"Empty", testRevocationsEmpty},
		{"ClientWatermark", testClientWatermark},
		{"ReEnable", testReEnable},
		{"DisableAgain", testDisableAgain},
		{"RevokeClientTokensAgain", testRevokeClientTokensAgain},
		{"DeleteAndRecreate", testDeleteAndRecreate},
		{"RevokeClientTokensNotFound", testRevokeClientTokensNotFound},
		{"KeepsTokensRevokedAt", testKeepsTokensRevokedAt},
		{"StoreWide", testStoreWide},
		{"StoreWideAndClient", testStoreWideAndClient},
		{"RevokeToken", testRevokeToken},
		{"RevokeTokenInvalid", testRevokeTokenInvalid},
		{"Version", testRevocationVersion},
		{"RevocationsSince", testRevocationsSince},
		{"Pruning", testRevocationPruning},
		{"ManyTokens", func(t *testing.T, e *revEnv) { testManyRevokedTokens(t, e, n) }},
		{"Concurrent", testConcurrentRevocations},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newTestClock()
			s := o.newClocked(t, clock.Now)
			require.NotNil(t, s, "newStore returned nil")
			r, ok := s.(m2mauth.Revoker)
			if !ok {
				t.Skip("the store does not implement m2mauth.Revoker")
			}
			e := &revEnv{m: s, r: r, clock: clock}
			e.src, _ = s.(m2mauth.RevocationSource)
			e.feed, _ = s.(m2mauth.RevocationFeed)
			tt.test(t, e)
		})
	}
}

// testRevocationsEmpty: a new store has revoked nothing. Its Version need
// not be zero: a store that forgets its revocations when it restarts
// (memstore) starts above the Versions it published before.
func testRevocationsEmpty(t *testing.T, e *revEnv) {
	r := e.state(t)
	assert.GreaterOrEqual(t, r.Version, int64(0), "Version of a new store")
	assert.Zero(t, r.Len(), "entries of a new store")
	assert.False(t, r.Revoked("svc", "jti", e.clock.Now().Add(-time.Hour)))
	if e.feed != nil {
		got, err := e.feed.RevocationsSince(t.Context(), r.Version)
		require.NoError(t, err)
		assert.Nil(t, got, "RevocationsSince(its Version) of a new store")
	}
}

// testClientWatermark checks each way of revoking a client's tokens: a
// token issued before the watermark, or later in its second, is revoked;
// one issued from the next second on is not; other clients are not
// touched.
func testClientWatermark(t *testing.T, e *revEnv) {
	ctx := t.Context()
	tests := []struct {
		name    string
		revoke  func(id string) error
		deletes bool
	}{
		{"RevokeClientTokens", func(id string) error { return e.r.RevokeClientTokens(ctx, id) }, false},
		{"SetDisabled", func(id string) error { return e.m.SetDisabled(ctx, id, true) }, false},
		{"UpdateClientDisables", func(id string) error {
			return e.m.UpdateClient(ctx, &m2mauth.Client{ID: id, Grants: map[string]m2mauth.Scopes{api: {"read"}}, Disabled: true})
		}, false},
		{"DeleteClient", func(id string) error { return e.m.DeleteClient(ctx, id) }, true},
	}
	mustCreate(t, e.m, publicClient("bystander"))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := "target-" + tt.name
			mustCreate(t, e.m, publicClient(id))
			e.clock.Add(time.Minute)
			v0 := e.state(t).Version
			at := e.clock.Now()

			require.NoError(t, tt.revoke(id))
			r := e.state(t)
			assert.Greater(t, r.Version, v0, "Version")
			assertWatermark(t, r, id, at)
			assertRevokedUpTo(t, r, id, at)
			assert.False(t, r.Revoked("bystander", "other", at.Add(-time.Minute)), "a token of another client")
			assert.NotContains(t, r.Clients, "bystander")
			if tt.deletes {
				_, err := e.m.Client(ctx, id)
				require.ErrorIs(t, err, m2mauth.ErrClientNotFound)
			} else {
				assertSameSecond(t, at, mustGet(t, e.m, id).TokensRevokedAt, "TokensRevokedAt")
			}
			assert.True(t, mustGet(t, e.m, "bystander").TokensRevokedAt.IsZero(), "TokensRevokedAt of another client")
		})
	}
}

// testReEnable: re-enabling a client leaves its watermark, so its old
// tokens stay revoked and its new ones are valid.
func testReEnable(t *testing.T, e *revEnv) {
	ctx := t.Context()
	tests := []struct {
		name   string
		enable func(id string) error
	}{
		{"SetDisabled", func(id string) error { return e.m.SetDisabled(ctx, id, false) }},
		{"UpdateClient", func(id string) error { return e.m.UpdateClient(ctx, &m2mauth.Client{ID: id}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := "switch-" + tt.name
			mustCreate(t, e.m, publicClient(id))
			at := e.clock.Add(time.Minute)
			require.NoError(t, e.m.SetDisabled(ctx, id, true))
			before := e.state(t)

			e.clock.Add(time.Minute)
			require.NoError(t, tt.enable(id))
			r := e.state(t)
			assert.Equal(t, before.Version, r.Version, "Version after enabling")
			assertWatermark(t, r, id, at)
			assertRevokedUpTo(t, r, id, at)
			assert.False(t, r.Revoked(id, "new", e.clock.Now()), "a token issued after enabling")
			got := mustGet(t, e.m, id)
			assert.False(t, got.Disabled)
			assertSameSecond(t, at, got.TokensRevokedAt, "TokensRevokedAt")
		})
	}
}

// testDisableAgain: SetDisabled(true) revokes every time it is called;
// an UpdateClient that leaves a client disabled does not.
func testDisableAgain(t *testing.T, e *revEnv) {
	ctx := t.Context()
	mustCreate(t, e.m, publicClient("off"))
	require.NoError(t, e.m.SetDisabled(ctx, "off", true))
	v1 := e.state(t).Version

	at := e.clock.Add(time.Minute)
	require.NoError(t, e.m.SetDisabled(ctx, "off", true))
	r := e.state(t)
	assert.Greater(t, r.Version, v1, "Version after disabling a disabled client")
	assertWatermark(t, r, "off", at)
	assertSameSecond(t, at, mustGet(t, e.m, "off").TokensRevokedAt, "TokensRevokedAt")

	e.clock.Add(time.Minute)
	require.NoError(t, e.m.UpdateClient(ctx, &m2mauth.Client{ID: "off", Disabled: true, Grants: map[string]m2mauth.Scopes{api: {"write"}}}))
	after := e.state(t)
	assert.Equal(t, r.Version, after.Version, "Version after an update that leaves the client disabled")
	assertWatermark(t, after, "off", at)
	assertSameSecond(t, at, mustGet(t, e.m, "off").TokensRevokedAt, "TokensRevokedAt")
}

// testRevokeClientTokensAgain: a later revocation moves the watermark
// forward.
func testRevokeClientTokensAgain(t *testing.T, e *revEnv) {
	ctx := t.Context()
	mustCreate(t, e.m, publicClient("svc"))
	first := e.clock.Now()
	require.NoError(t, e.r.RevokeClientTokens(ctx, "svc"))
	v1 := e.state(t).Version
	assert.False(t, e.state(t).Revoked("svc", "mid", first.Add(30*time.Second)))

	at := e.clock.Add(time.Minute)
	require.NoError(t, e.r.RevokeClientTokens(ctx, "svc"))
	r := e.state(t)
	assert.Greater(t, r.Version, v1, "Version")
	assertWatermark(t, r, "svc", at)
	assertRevokedUpTo(t, r, "svc", at)
	assert.True(t, r.Revoked("svc", "mid", first.Add(30*time.Second)), "a token issued between the two revocations")
	assertSameSecond(t, at, mustGet(t, e.m, "svc").TokensRevokedAt, "TokensRevokedAt")
}

// testDeleteAndRecreate: the tokens of a deleted client stay revoked when
// its id is registered again; the new client's are valid.
func testDeleteAndRecreate(t *testing.T, e *revEnv) {
	ctx := t.Context()
	mustCreate(t, e.m, publicClient("phoenix"))
	at := e.clock.Add(time.Minute)
	require.NoError(t, e.m.DeleteClient(ctx, "phoenix"))
	v1 := e.state(t).Version

	e.clock.Add(time.Minute)
	mustCreate(t, e.m, publicClient("phoenix"))
	r := e.state(t)
	assert.Equal(t, v1, r.Version, "Version after CreateClient")
	assertWatermark(t, r, "phoenix", at)
	assertRevokedUpTo(t, r, "phoenix", at)
	assert.False(t, r.Revoked("phoenix", "new", e.clock.Now()), "a token of the new client")
	// The new client starts with the watermark, so that a token handler
	// waits it out rather than issue a token born revoked.
	assertSameSecond(t, at, mustGet(t, e.m, "phoenix").TokensRevokedAt, "TokensRevokedAt of the new client")
}

// testRevokeClientTokensNotFound: an unknown client is an error wrapping
// ErrClientNotFound, and nothing changes.
func testRevokeClientTokensNotFound(t *testing.T, e *revEnv) {
	ctx := t.Context()
	mustCreate(t, e.m, publicClient("someone"))
	require.NoError(t, e.r.RevokeToken(ctx, "someone", "jti-1", e.clock.Now().Add(time.Hour)))
	before := e.state(t)
	for _, id := range []string{"nobody", "", "bad\nid", strings.Repeat("x", 256)} {
		err := e.r.RevokeClientTokens(ctx, id)
		require.ErrorIs(t, err, m2mauth.ErrClientNotFound, "RevokeClientTokens(%q)", id)
		assertSameState(t, before, e.state(t), "after RevokeClientTokens(%q)", id)
	}
	_, err := e.m.Client(ctx, "nobody")
	require.ErrorIs(t, err, m2mauth.ErrClientNotFound, "RevokeClientTokens created a client")
	assert.Equal(t, []string{"someone"}, listAll(t, e.m, 0))
}

// testKeepsTokensRevokedAt: UpdateClient leaves the TokensRevokedAt the
// store set.
func testKeepsTokensRevokedAt(t *testing.T, e *revEnv) {
	ctx := t.Context()
	mustCreate(t, e.m, publicClient("svc"))
	at := e.clock.Now()
	require.NoError(t, e.r.RevokeClientTokens(ctx, "svc"))
	e.clock.Add(time.Minute)
	for _, given := range []time.Time{{}, at.Add(-time.Hour), at.Add(time.Hour)} {
		require.NoError(t, e.m.UpdateClient(ctx, &m2mauth.Client{ID: "svc", Public: true, TokensRevokedAt: given}))
		assertSameSecond(t, at, mustGet(t, e.m, "svc").TokensRevokedAt, "TokensRevokedAt after an update with %v", given)
		assertWatermark(t, e.state(t), "svc", at)
	}
}

// testStoreWide: RevokeAllTokens revokes every client's tokens, known or
// not, up to the end of its second, and touches no client.
func testStoreWide(t *testing.T, e *revEnv) {
	ctx := t.Context()
	mustCreate(t, e.m, publicClient("a"))
	mustCreate(t, e.m, publicClient("b"))
	v0 := e.state(t).Version
	at := e.clock.Add(time.Minute)
	require.NoError(t, e.r.RevokeAllTokens(ctx))
	r := e.state(t)
	assert.Greater(t, r.Version, v0, "Version")
	assertSameSecond(t, at, r.Before, "Before")
	assert.Empty(t, r.Clients, "client watermarks")
	for _, id := range []string{"a", "b", "unknown"} {
		assertRevokedUpTo(t, r, id, at)
	}
	for _, id := range []string{"a", "b"} {
		assert.True(t, mustGet(t, e.m, id).TokensRevokedAt.IsZero(), "TokensRevokedAt of %q", id)
	}

	later := e.clock.Add(time.Minute)
	require.NoError(t, e.r.RevokeAllTokens(ctx))
	r2 := e.state(t)
	assert.Greater(t, r2.Version, r.Version, "Version")
	assertSameSecond(t, later, r2.Before, "Before after a second RevokeAllTokens")
	assertRevokedUpTo(t, r2, "a", later)
}

// testStoreWideAndClient: with both a store-wide and a client watermark,
// set in either order, the later one decides.
func testStoreWideAndClient(t *testing.T, e *revEnv) {
	ctx := t.Context()
	client := func(id string) error { return e.r.RevokeClientTokens(ctx, id) }
	all := func(string) error { return e.r.RevokeAllTokens(ctx) }
	tests := []struct {
		name          string
		first, second func(id string) error
		clientLast    bool
	}{
		{"ClientThenStoreWide", client, all, false},
		{"StoreWideThenClient", all, client, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, other := "first-"+tt.name, "other-"+tt.name
			mustCreate(t, e.m, publicClient(id))
			mustCreate(t, e.m, publicClient(other))
			t1 := e.clock.Add(time.Minute)
			require.NoError(t, tt.first(id))
			t2 := e.clock.Add(time.Minute)
			require.NoError(t, tt.second(id))
			r := e.state(t)

			between := t1.Add(30 * time.Second)
			assertRevokedUpTo(t, r, id, t2)
			assert.True(t, r.Revoked(id, "between", between), "a token of %q issued between the watermarks", id)
			assert.Equal(t, !tt.clientLast, r.Revoked(other, "between", between), "a token of %q issued between the watermarks", other)
			if tt.clientLast {
				assertSameSecond(t, t1, r.Before, "Before")
				assertWatermark(t, r, id, t2)
			} else {
				assertSameSecond(t, t2, r.Before, "Before")
				assertWatermark(t, r, id, t1)
			}
			e.clock.Add(time.Minute)
		})
	}
}

// testRevokeToken: the deny-list holds token ids exactly, to their
// expiry, whether or not the client still exists.
func testRevokeToken(t *testing.T, e *revEnv) {
	ctx := t.Context()
	mustCreate(t, e.m, publicClient("svc"))
	now := e.clock.Now()
	exp := now.Truncate(time.Second).Add(10 * time.Minute)
	v0 := e.state(t).Version

	require.NoError(t, e.r.RevokeToken(ctx, "svc", "jti-1", exp))
	r := e.state(t)
	assert.Greater(t, r.Version, v0, "Version")
	require.Contains(t, r.Tokens, "jti-1")
	assertSameSecond(t, exp, r.Tokens["jti-1"], "expiry of jti-1")
	assert.True(t, r.Revoked("svc", "jti-1", now.Add(-time.Minute)), "the revoked token")
	assert.False(t, r.Revoked("svc", "jti-2", now.Add(-time.Minute)), "another token of the same client")
	assert.Empty(t, r.Clients, "client watermarks")
	assert.True(t, r.Before.IsZero(), "Before")

	t.Run("Twice", func(t *testing.T) {
		require.NoError(t, e.r.RevokeToken(ctx, "svc", "jti-1", exp))
		again := e.state(t)
		assert.GreaterOrEqual(t, again.Version, r.Version, "Version")
		assert.Equal(t, normalize(r).entries(), normalize(again).entries(), "entries after revoking a token again")
	})
	t.Run("UnknownClient", func(t *testing.T) {
		require.NoError(t, e.r.RevokeToken(ctx, "deleted-long-ago", "jti-3", exp))
		assert.True(t, e.state(t).Revoked("deleted-long-ago", "jti-3", now))
	})
	t.Run("ExactIDs", func(t *testing.T) {
		// Token ids are compared byte for byte, whatever a database's
		// collation thinks of case and trailing spaces.
		var all strings.Builder
		for c := byte(0x20); c <= 0x7e; c++ {
			all.WriteByte(c)
		}
		ids := []string{"Case", "case", "CASE", "pad", "pad ", "per%cent", "under_score", all.String(), strings.Repeat("j", 255)}
		for i, jti := range ids {
			require.NoError(t, e.r.RevokeToken(ctx, strings.Repeat("c", 255), jti, exp.Add(time.Duration(i)*time.Second)), "RevokeToken(%q)", jti)
		}
		r := e.state(t)
		for i, jti := range ids {
			if assert.Contains(t, r.Tokens, jti) {
				assertSameSecond(t, exp.Add(time.Duration(i)*time.Second), r.Tokens[jti], "expiry of %q", jti)
			}
		}
		for _, jti := range []string{"cASE", "pad  ", "under-score", "per%", "Cas_", strings.Repeat("j", 254)} {
			assert.False(t, r.Revoked("svc", jti, now), "token %q", jti)
		}
	})
	t.Run("AlreadyDead", func(t *testing.T) {
		// A token that expired more than RevocationGrace ago is refused by
		// every validator anyway: revoking it succeeds, and it need not be
		// kept.
		dead := now.Add(-m2mauth.RevocationGrace - time.Minute).Truncate(time.Second)
		require.NoError(t, e.r.RevokeToken(ctx, "svc", "jti-dead", dead))
		assert.NotContains(t, e.state(t).Tokens, "jti-dead")
	})
}

// testRevokeTokenInvalid: bad input is an error and changes nothing, not
// even the Version.
func testRevokeTokenInvalid(t *testing.T, e *revEnv) {
	ctx := t.Context()
	mustCreate(t, e.m, publicClient("svc"))
	exp := e.clock.Now().Add(time.Hour)
	require.NoError(t, e.r.RevokeToken(ctx, "svc", "jti-0", exp))
	before := e.state(t)
	tests := []struct {
		name          string
		clientID, jti string
		exp           time.Time
	}{
		{"EmptyClientID", "", "jti-1", exp},
		{"ClientIDTooLong", strings.Repeat("x", 256), "jti-1", exp},
		{"NewlineInClientID", "svc\n", "jti-1", exp},
		{"NonASCIIClientID", "cl\u00edent", "jti-1", exp},
		{"EmptyJTI", "svc", "", exp},
		{"JTITooLong", "svc", strings.Repeat("j", 256), exp},
		{"NULInJTI", "svc", "jti\x00", exp},
		{"NewlineInJTI", "svc", "jti\n1", exp},
		{"NonASCIIJTI", "svc", "jt\u00ed", exp},
		{"ZeroExpiry", "svc", "jti-1", time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Error(t, e.r.RevokeToken(ctx, tt.clientID, tt.jti, tt.exp))
			assertSameState(t, before, e.state(t), "after a refused RevokeToken")
		})
	}
}

// testRevocationVersion: every change makes the Version greater; reads,
// failed calls and administration that revokes nothing leave it.
func testRevocationVersion(t *testing.T, e *revEnv) {
	ctx := t.Context()
	_, sec := newSecret(t, e.clock.Now(), time.Time{})
	_, sec2 := newSecret(t, e.clock.Now(), time.Time{})
	steps := []struct {
		name    string
		do      func() error
		wantErr bool
		changes bool
	}{
		{"CreateClient", func() error {
			return e.m.CreateClient(ctx, &m2mauth.Client{ID: "svc", Secrets: []m2mauth.Secret{sec}})
		}, false, false},
		{"CreateOther", func() error { return e.m.CreateClient(ctx, publicClient("other")) }, false, false},
		{"RevokeToken", func() error { return e.r.RevokeToken(ctx, "svc", "jti-1", e.clock.Now().Add(time.Hour)) }, false, true},
		{"RevokeAnotherToken", func() error { return e.r.RevokeToken(ctx, "svc", "jti-2", e.clock.Now().Add(time.Hour)) }, false, true},
		{"RevokeClientTokens", func() error { return e.r.RevokeClientTokens(ctx, "svc") }, false, true},
		{"UpdateClient", func() error {
			return e.m.UpdateClient(ctx, &m2mauth.Client{ID: "svc", Grants: map[string]m2mauth.Scopes{api: {"read"}}, CanIntrospect: true})
		}, false, false},
		{"AddSecret", func() error { return e.m.AddSecret(ctx, "svc", sec2) }, false, false},
		{"ExpireSecret", func() error { return e.m.ExpireSecret(ctx, "svc", sec2.ID, e.clock.Now().Add(time.Hour)) }, false, false},
		{"RemoveSecret", func() error { return e.m.RemoveSecret(ctx, "svc", sec2.ID) }, false, false},
		{"Enable", func() error { return e.m.SetDisabled(ctx, "svc", false) }, false, false},
		{"Disable", func() error { return e.m.SetDisabled(ctx, "svc", true) }, false, true},
		{"EnableAgain", func() error { return e.m.SetDisabled(ctx, "svc", false) }, false, false},
		{"UpdateDisables", func() error { return e.m.UpdateClient(ctx, &m2mauth.Client{ID: "svc", Disabled: true}) }, false, true},
		{"RevokeAllTokens", func() error { return e.r.RevokeAllTokens(ctx) }, false, true},
		{"DeleteClient", func() error { return e.m.DeleteClient(ctx, "other") }, false, true},
		{"Reads", func() error {
			if _, err := e.m.Client(ctx, "svc"); err != nil {
				return err
			}
			if _, err := e.m.ListClients(ctx, "", 0); err != nil {
				return err
			}
			_, err := e.r.Revocations(ctx)
			return err
		}, false, false},
		{"RevokeClientTokensNotFound", func() error { return e.r.RevokeClientTokens(ctx, "other") }, true, false},
		{"RevokeTokenInvalid", func() error { return e.r.RevokeToken(ctx, "svc", "", e.clock.Now().Add(time.Hour)) }, true, false},
		{"DeleteNotFound", func() error { return e.m.DeleteClient(ctx, "other") }, true, false},
		{"SetDisabledNotFound", func() error { return e.m.SetDisabled(ctx, "other", true) }, true, false},
		{"UpdateInvalid", func() error {
			return e.m.UpdateClient(ctx, &m2mauth.Client{ID: "svc", Public: true, Disabled: false})
		}, true, false},
		{"RevokeClientTokensLater", func() error { return e.r.RevokeClientTokens(ctx, "svc") }, false, true},
	}
	prev := e.state(t).Version
	for _, step := range steps {
		e.clock.Add(time.Second)
		err := step.do()
		if step.wantErr {
			require.Error(t, err, step.name)
		} else {
			require.NoError(t, err, step.name)
		}
		v := e.state(t).Version
		if step.changes {
			assert.Greater(t, v, prev, "Version after %s", step.name)
		} else {
			assert.Equal(t, prev, v, "Version after %s", step.name)
		}
		prev = v
	}
}

// testRevocationsSince: the feed answers (nil, nil) for the current
// Version and the current state for any other.
func testRevocationsSince(t *testing.T, e *revEnv) {
	if e.feed == nil {
		t.Skip("the store does not implement m2mauth.RevocationFeed")
	}
	ctx := t.Context()
	mustCreate(t, e.m, publicClient("svc"))
	require.NoError(t, e.r.RevokeToken(ctx, "svc", "jti-1", e.clock.Now().Add(time.Hour)))
	require.NoError(t, e.r.RevokeClientTokens(ctx, "svc"))
	cur := e.state(t)
	require.NotZero(t, cur.Version)

	got, err := e.feed.RevocationsSince(ctx, cur.Version)
	require.NoError(t, err)
	assert.Nil(t, got, "RevocationsSince(the current version)")

	for _, v := range []int64{0, cur.Version - 1, cur.Version + 1000} {
		got, err := e.feed.RevocationsSince(ctx, v)
		require.NoError(t, err)
		if assert.NotNil(t, got, "RevocationsSince(%d) with the current version %d", v, cur.Version) {
			assertSameState(t, cur, got, "RevocationsSince(%d)", v)
		}
	}

	e.clock.Add(time.Second)
	require.NoError(t, e.r.RevokeAllTokens(ctx))
	next := e.state(t)
	got, err = e.feed.RevocationsSince(ctx, cur.Version)
	require.NoError(t, err)
	if assert.NotNil(t, got, "RevocationsSince(the previous version)") {
		assertSameState(t, next, got, "RevocationsSince(the previous version)")
	}
}

// testRevocationPruning: entries leave Revocations once they can no
// longer revoke a valid token, without a change of Version: token ids
// RevocationGrace past their expiry, watermarks MaxClientTokenTTL plus
// RevocationGrace past their time.
func testRevocationPruning(t *testing.T, e *revEnv) {
	ctx := t.Context()
	mustCreate(t, e.m, publicClient("svc"))
	at := e.clock.Now()
	short := at.Truncate(time.Second).Add(time.Hour)
	long := short.Add(2 * time.Hour)
	require.NoError(t, e.r.RevokeToken(ctx, "svc", "short", short))
	require.NoError(t, e.r.RevokeToken(ctx, "svc", "long", long))
	require.NoError(t, e.r.RevokeClientTokens(ctx, "svc"))
	require.NoError(t, e.r.RevokeAllTokens(ctx))
	r := e.state(t)
	require.Equal(t, 4, r.Len(), "entries")
	version := r.Version
	watermarkLife := m2mauth.MaxClientTokenTTL + m2mauth.RevocationGrace

	steps := []struct {
		at   time.Time
		want []string // live entries: token ids, "client", "before"
	}{
		{short.Add(m2mauth.RevocationGrace - time.Second), []string{"short", "long", "client", "before"}},
		{short.Add(m2mauth.RevocationGrace + time.Second), []string{"long", "client", "before"}},
		{long.Add(m2mauth.RevocationGrace - time.Second), []string{"long", "client", "before"}},
		{long.Add(m2mauth.RevocationGrace + time.Second), []string{"client", "before"}},
		{at.Add(watermarkLife - time.Second), []string{"client", "before"}},
		{at.Add(watermarkLife + time.Second), nil},
	}
	for _, step := range steps {
		e.clock.Set(step.at)
		r := e.state(t)
		var got []string
		for jti := range r.Tokens {
			got = append(got, jti)
		}
		if _, ok := r.Clients["svc"]; ok {
			got = append(got, "client")
		}
		if !r.Before.IsZero() {
			got = append(got, "before")
		}
		assert.ElementsMatch(t, step.want, got, "live entries %v after the first revocation", step.at.Sub(at))
		assert.Equal(t, version, r.Version, "Version %v after the first revocation", step.at.Sub(at))
	}

	// The store still works once everything has died.
	require.NoError(t, e.r.RevokeToken(ctx, "svc", "again", e.clock.Now().Add(time.Hour)))
	r = e.state(t)
	assert.Equal(t, 1, r.Len(), "entries")
	assert.Greater(t, r.Version, version, "Version")
}

// testManyRevokedTokens: n revoked tokens are all kept while they live,
// and all dropped once they are dead.
func testManyRevokedTokens(t *testing.T, e *revEnv, n int) {
	ctx := t.Context()
	exp := e.clock.Now().Truncate(time.Second).Add(time.Minute)
	for i := range n {
		require.NoError(t, e.r.RevokeToken(ctx, "busy", fmt.Sprintf("jti-%06d", i), exp))
	}
	r := e.state(t)
	assert.Equal(t, n, r.Len(), "entries")
	for _, i := range []int{0, n / 2, n - 1} {
		assert.True(t, r.Revoked("busy", fmt.Sprintf("jti-%06d", i), exp.Add(-time.Minute)), "token %d", i)
	}

	e.clock.Set(exp.Add(m2mauth.RevocationGrace + time.Second))
	assert.Zero(t, e.state(t).Len(), "entries once every token is dead")

	require.NoError(t, e.r.RevokeToken(ctx, "busy", "jti-last", e.clock.Now().Add(time.Minute)))
	assert.Equal(t, 1, e.state(t).Len(), "entries after one more")
}

// testConcurrentRevocations: revocations from many goroutines are all
// kept, and the Version a reader sees never goes back.
func testConcurrentRevocations(t *testing.T, e *revEnv) {
	ctx := t.Context()
	const (
		writers = 4
		tokens  = 25
		reads   = 20
	)
	exp := e.clock.Now().Add(time.Hour)
	for w := range writers {
		mustCreate(t, e.m, publicClient(fmt.Sprintf("writer-%d", w)))
	}
	var wg sync.WaitGroup
	for w := range writers {
		id := fmt.Sprintf("writer-%d", w)
		wg.Go(func() {
			for i := range tokens {
				assert.NoError(t, e.r.RevokeToken(ctx, id, fmt.Sprintf("jti-%d-%d", w, i), exp))
				if i%5 == 0 {
					assert.NoError(t, e.r.RevokeClientTokens(ctx, id))
				}
			}
		})
	}
	wg.Go(func() {
		var last int64
		for range reads {
			r, err := e.r.Revocations(ctx)
			if !assert.NoError(t, err) || !assert.NotNil(t, r) {
				return
			}
			assert.GreaterOrEqual(t, r.Version, last, "Version went back")
			last = r.Version
			if e.src != nil {
				cur, err := e.src.CurrentRevocations()
				if assert.NoError(t, err) && assert.NotNil(t, cur) {
					assert.GreaterOrEqual(t, cur.Version, last, "CurrentRevocations is behind Revocations")
				}
			}
		}
	})
	wg.Wait()

	r := e.state(t)
	assert.Equal(t, writers*tokens+writers, r.Len(), "entries")
	for w := range writers {
		assert.Contains(t, r.Clients, fmt.Sprintf("writer-%d", w))
		for i := range tokens {
			assert.Contains(t, r.Tokens, fmt.Sprintf("jti-%d-%d", w, i))
		}
	}
}

// state returns the store's Revocations, checking that they hold no dead
// entry and, when the store is its own RevocationSource, that
// CurrentRevocations agrees with them on everything live.
func (e *revEnv) state(t *testing.T) *m2mauth.Revocations {
	t.Helper()
	r, err := e.r.Revocations(t.Context())
	require.NoError(t, err, "Revocations")
	require.NotNil(t, r, "Revocations")
	now := e.clock.Now()
	assert.Equal(t, normalize(r.Pruned(now)), normalize(r), "Revocations holds entries that are dead at %v", now)
	if e.src != nil {
		cur, err := e.src.CurrentRevocations()
		require.NoError(t, err, "CurrentRevocations")
		require.NotNil(t, cur, "CurrentRevocations")
		assert.Equal(t, normalize(r), normalize(cur.Pruned(now)), "CurrentRevocations disagrees with Revocations")
	}
	return r
}

// revState is Revocations with times to the second, for comparison.
type revState struct {
	Version int64
	Before  int64 // Unix seconds; 0 for none
	Clients map[string]int64
	Tokens  map[string]int64
}

func normalize(r *m2mauth.Revocations) revState {
	out := revState{Version: r.Version, Clients: make(map[string]int64), Tokens: make(map[string]int64)}
	if !r.Before.IsZero() {
		out.Before = r.Before.Unix()
	}
	for id, at := range r.Clients {
		out.Clients[id] = at.Unix()
	}
	for jti, exp := range r.Tokens {
		out.Tokens[jti] = exp.Unix()
	}
	return out
}

// entries returns s without its Version.
func (s revState) entries() revState {
	s.Version = 0
	return s
}

// assertSameState checks that got holds what want does, Version
// included, times to the second.
func assertSameState(t *testing.T, want, got *m2mauth.Revocations, what string, args ...any) {
	t.Helper()
	assert.Equal(t, normalize(want), normalize(got), append([]any{what}, args...)...)
}

// assertWatermark checks that r holds the watermark of client id, set at
// at.
func assertWatermark(t *testing.T, r *m2mauth.Revocations, id string, at time.Time) {
	t.Helper()
	if assert.Contains(t, r.Clients, id, "watermarks") {
		assertSameSecond(t, at, r.Clients[id], "watermark of %q", id)
	}
}

// assertRevokedUpTo checks that r revokes the tokens of client id issued
// up to the end of the second of at, and not those issued from the next
// second on.
func assertRevokedUpTo(t *testing.T, r *m2mauth.Revocations, id string, at time.Time) {
	t.Helper()
	sec := at.Truncate(time.Second)
	for _, iat := range []time.Time{at.Add(-time.Hour), at.Add(-time.Second), sec, at, sec.Add(time.Second - time.Millisecond)} {
		assert.True(t, r.Revoked(id, "jti-before", iat), "a token of %q issued at %v, watermark %v", id, iat, at)
	}
	for _, iat := range []time.Time{sec.Add(time.Second), at.Add(time.Minute)} {
		assert.False(t, r.Revoked(id, "jti-after", iat), "a token of %q issued at %v, watermark %v", id, iat, at)
	}
}

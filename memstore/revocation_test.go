package memstore_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

// fakeClock is a clock for WithClock that tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2030, 1, 2, 3, 4, 5, 500_000_000, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = at
}

func (c *fakeClock) Add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

func current(t *testing.T, s *memstore.Store) *m2mauth.Revocations {
	t.Helper()
	r, err := s.CurrentRevocations()
	require.NoError(t, err)
	require.NotNil(t, r)
	return r
}

func revocations(t *testing.T, s *memstore.Store) *m2mauth.Revocations {
	t.Helper()
	r, err := s.Revocations(t.Context())
	require.NoError(t, err)
	require.NotNil(t, r)
	return r
}

// TestManyExpiredRevocations revokes 100,000 tokens that have expired but
// are still within RevocationGrace, and checks that every view of them,
// and the Store's memory, empties once the grace has passed.
func TestManyExpiredRevocations(t *testing.T) {
	const n = 100_000
	clock := newFakeClock()
	s := memstore.New(memstore.WithClock(clock.Now))
	ctx := t.Context()
	exp := clock.Now().Add(-time.Second)
	for i := range n {
		require.NoError(t, s.RevokeToken(ctx, "svc", fmt.Sprintf("jti-%06d", i), exp))
	}
	assert.Equal(t, n, revocations(t, s).Len(), "Revocations")
	r := current(t, s)
	assert.Equal(t, n, r.Len(), "CurrentRevocations")
	assert.True(t, r.Revoked("svc", "jti-054321", exp.Add(-time.Minute)))
	version := r.Version

	clock.Set(exp.Add(m2mauth.RevocationGrace + time.Second))
	assert.Zero(t, revocations(t, s).Len(), "Revocations once the grace has passed")
	assert.Zero(t, current(t, s).Len(), "CurrentRevocations once the grace has passed")
	assert.Zero(t, memstore.RevocationEntries(s), "entries in memory")
	assert.Equal(t, version, current(t, s).Version, "the Version is kept")
}

// TestRevocationsSweptOnWrites checks that a Store nobody reads from still
// drops dead revocations as new ones are written, so its memory follows
// the live entries rather than every revocation ever made.
func TestRevocationsSweptOnWrites(t *testing.T) {
	const (
		rounds   = 10
		perRound = 10_000
	)
	clock := newFakeClock()
	s := memstore.New(memstore.WithClock(clock.Now))
	ctx := t.Context()
	for round := range rounds {
		exp := clock.Now().Add(time.Minute)
		for i := range perRound {
			require.NoError(t, s.RevokeToken(ctx, "svc", fmt.Sprintf("jti-%d-%05d", round, i), exp))
		}
		assert.LessOrEqual(t, memstore.RevocationEntries(s), 3*perRound, "entries in memory after round %d", round)
		clock.Add(time.Hour) // every token of this round is now dead
	}
	for round := range rounds {
		clock.Add(m2mauth.MaxClientTokenTTL + time.Hour) // every earlier watermark is now dead
		mustCreateAndRevoke(t, s, fmt.Sprintf("client-%d", round))
	}
	assert.LessOrEqual(t, memstore.RevocationEntries(s), 3*perRound, "entries in memory")
	assert.Equal(t, 1, revocations(t, s).Len(), "live entries")
}

func mustCreateAndRevoke(t *testing.T, s *memstore.Store, id string) {
	t.Helper()
	require.NoError(t, s.CreateClient(t.Context(), &m2mauth.Client{ID: id, Public: true}))
	require.NoError(t, s.RevokeClientTokens(t.Context(), id))
}

// TestCurrentRevocationsImmediate checks that every change shows in the
// snapshot as soon as the call that made it returns, and that the
// snapshot handed out before is left as it was.
func TestCurrentRevocationsImmediate(t *testing.T) {
	clock := newFakeClock()
	s := memstore.New(memstore.WithClock(clock.Now))
	ctx := t.Context()
	require.NoError(t, s.CreateClient(ctx, &m2mauth.Client{ID: "svc", Public: true}))
	issued := clock.Now().Add(-time.Minute)
	exp := clock.Now().Add(time.Hour)

	steps := []struct {
		name    string
		change  func() error
		revoked func(r *m2mauth.Revocations) bool
	}{
		{"RevokeToken", func() error { return s.RevokeToken(ctx, "svc", "jti-1", exp) },
			func(r *m2mauth.Revocations) bool { return r.Revoked("other", "jti-1", issued) }},
		{"RevokeClientTokens", func() error { return s.RevokeClientTokens(ctx, "svc") },
			func(r *m2mauth.Revocations) bool { return r.Revoked("svc", "jti-2", issued) }},
		{"RevokeAllTokens", func() error { return s.RevokeAllTokens(ctx) },
			func(r *m2mauth.Revocations) bool { return r.Revoked("other", "jti-3", issued) }},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			before := current(t, s)
			require.False(t, step.revoked(before), "revoked before the change")
			require.NoError(t, step.change())
			after := current(t, s)
			assert.True(t, step.revoked(after), "not revoked once the change returned")
			assert.Greater(t, after.Version, before.Version)
			assert.False(t, step.revoked(before), "the earlier snapshot changed")
			assert.Same(t, after, current(t, s), "a new snapshot without a change")
		})
	}
}

// TestCurrentRevocationsDropsDead checks that the snapshot is rebuilt
// without entries that died, though nothing changed, and not before one
// has.
func TestCurrentRevocationsDropsDead(t *testing.T) {
	clock := newFakeClock()
	s := memstore.New(memstore.WithClock(clock.Now))
	ctx := t.Context()
	exp := clock.Now().Add(time.Hour)
	require.NoError(t, s.RevokeToken(ctx, "svc", "short", exp))
	require.NoError(t, s.RevokeToken(ctx, "svc", "long", exp.Add(time.Hour)))
	r := current(t, s)
	require.Equal(t, 2, r.Len())

	clock.Set(exp.Add(m2mauth.RevocationGrace))
	assert.Same(t, r, current(t, s), "rebuilt while every entry lives")
	clock.Set(exp.Add(m2mauth.RevocationGrace + time.Second))
	r2 := current(t, s)
	assert.Equal(t, 1, r2.Len())
	assert.Contains(t, r2.Tokens, "long")
	assert.Equal(t, r.Version, r2.Version)
}

// TestVersionAfterRestart: a store made again (a restarted process,
// which has forgotten its revocations) starts above every Version the
// last one published, so the readers of its revocation list, which
// refuse a lower Version, take its state.
func TestVersionAfterRestart(t *testing.T) {
	ctx := t.Context()
	first := memstore.New()
	for range 100 {
		require.NoError(t, first.RevokeAllTokens(ctx))
	}
	last := current(t, first).Version
	again := memstore.New()
	assert.Greater(t, current(t, again).Version, last)
}

// TestRevocationsSince checks the feed's answers (the storetest suite
// checks them too, generally).
func TestRevocationsSince(t *testing.T) {
	s := memstore.New()
	ctx := t.Context()
	v0 := current(t, s).Version
	got, err := s.RevocationsSince(ctx, v0)
	require.NoError(t, err)
	assert.Nil(t, got)
	require.NoError(t, s.RevokeAllTokens(ctx))
	got, err = s.RevocationsSince(ctx, v0)
	require.NoError(t, err)
	require.NotNil(t, got)
	assert.Greater(t, got.Version, v0)
	assert.False(t, got.Before.IsZero())
	got.Before = time.Time{} // the caller's own copy
	assert.False(t, current(t, s).Before.IsZero())
}

// TestCreateClientTokensRevokedAt checks that a client imported with a
// TokensRevokedAt gets that watermark, capped at now, and that an old one
// is not lowered.
func TestCreateClientTokensRevokedAt(t *testing.T) {
	clock := newFakeClock()
	s := memstore.New(memstore.WithClock(clock.Now))
	ctx := t.Context()
	now := clock.Now()
	tests := []struct {
		name  string
		given time.Time
		want  time.Time // zero: no watermark
	}{
		{"Zero", time.Time{}, time.Time{}},
		{"Past", now.Add(-time.Hour), now.Add(-time.Hour)},
		{"Future", now.Add(time.Hour), now},
		{"Dead", now.Add(-m2mauth.MaxClientTokenTTL - time.Hour), time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := "imported-" + tt.name
			require.NoError(t, s.CreateClient(ctx, &m2mauth.Client{ID: id, Public: true, TokensRevokedAt: tt.given}))
			c, err := s.Client(ctx, id)
			require.NoError(t, err)
			assert.Equal(t, tt.given, c.TokensRevokedAt, "TokensRevokedAt is kept as given")
			w, ok := current(t, s).Clients[id]
			assert.Equal(t, !tt.want.IsZero(), ok, "watermark")
			assert.Equal(t, tt.want, w)
		})
	}
	t.Run("NotLowered", func(t *testing.T) {
		require.NoError(t, s.CreateClient(ctx, &m2mauth.Client{ID: "phoenix", Public: true}))
		require.NoError(t, s.DeleteClient(ctx, "phoenix"))
		require.NoError(t, s.CreateClient(ctx, &m2mauth.Client{ID: "phoenix", Public: true, TokensRevokedAt: now.Add(-time.Hour)}))
		assert.Equal(t, now, current(t, s).Clients["phoenix"])
	})
}

// TestRevocationsConcurrentReaders has many validators read the snapshot
// while revocations are written, as a server does; run with -race.
func TestRevocationsConcurrentReaders(t *testing.T) {
	s := memstore.New()
	ctx := t.Context()
	exp := time.Now().Add(time.Hour)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			var last int64
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := s.CurrentRevocations()
				if !assert.NoError(t, err) {
					return
				}
				assert.GreaterOrEqual(t, r.Version, last, "Version went back")
				last = r.Version
				r.Revoked("svc", "jti", time.Now())
			}
		})
	}
	for i := range 2000 {
		require.NoError(t, s.RevokeToken(ctx, "svc", fmt.Sprintf("jti-%d", i), exp))
	}
	close(stop)
	wg.Wait()
	assert.Equal(t, 2000, current(t, s).Len())
}

func ExampleStore_RevokeClientTokens() {
	ctx := context.Background()
	store := memstore.New()
	if err := store.CreateClient(ctx, &m2mauth.Client{ID: "billing-worker", Public: true}); err != nil {
		fmt.Println(err)
		return
	}
	issued := time.Now().Add(-time.Minute)

	// Revoke every token the client holds. A validator reading the store
	// as its RevocationSource refuses them as soon as this returns.
	if err := store.RevokeClientTokens(ctx, "billing-worker"); err != nil {
		fmt.Println(err)
		return
	}
	revs, err := store.CurrentRevocations()
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("revoked:", revs.Revoked("billing-worker", "any-jti", issued))
	fmt.Println("a token issued later:", revs.Revoked("billing-worker", "any-jti", time.Now().Add(2*time.Second)))
	// Output:
	// revoked: true
	// a token issued later: false
}

// TestDroppedStoreIsCollected: a Store on the real clock whose snapshot
// holds a revocation sets a timer to mark it stale when the entry dies
// (an hour away here); the timer does not keep a dropped Store, and all
// its clients, in memory until then.
func TestDroppedStoreIsCollected(t *testing.T) {
	collected := make(chan struct{}, 1)
	func() {
		s := memstore.New()
		ctx := t.Context()
		require.NoError(t, s.CreateClient(ctx, &m2mauth.Client{ID: "svc", Public: true}))
		require.NoError(t, s.RevokeToken(ctx, "svc", "jti-1", time.Now().Add(time.Hour)))
		r, err := s.CurrentRevocations()
		require.NoError(t, err)
		require.True(t, r.Revoked("svc", "jti-1", time.Now()))
		runtime.AddCleanup(s, func(c chan struct{}) { c <- struct{}{} }, collected)
	}()
	for range 100 {
		runtime.GC()
		select {
		case <-collected:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("the dropped Store was not collected within 100 collections")
}

package sqlstore_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// Tests of the database-backed limiter of failed client authentications
// (RFC 6749 §2.3.1 and §10.10: the authorization server must protect the
// endpoints that authenticate clients against brute force).

// fakeClock is a clock that tests move by hand, safe for concurrent use.
// Each reading is also signalled on reads, when set, without blocking.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	reads chan struct{}
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reads != nil {
		select {
		case c.reads <- struct{}{}:
		default:
		}
	}
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// watch makes the clock signal its readings, and returns the channel.
func (c *fakeClock) watch() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads = make(chan struct{}, 1)
	return c.reads
}

// awaitReads waits for n more readings of a watched clock: a limiter
// waiting for reservations in flight reads it once per poll. It fails t
// after a minute.
func awaitReads(t *testing.T, reads <-chan struct{}, n int) {
	t.Helper()
	deadline := time.After(time.Minute)
	for range n {
		select {
		case <-reads:
		case <-deadline:
			t.Fatal("the limiter stopped reading the clock")
		}
	}
}

// newLimiter returns a limiter on the tables of prefix, migrating them
// first, with cfg's clock defaulting to clock.
func (e *env) newLimiter(t testing.TB, prefix string, clock *fakeClock, cfg sqlstore.LimiterConfig) *sqlstore.Limiter {
	t.Helper()
	e.newStore(t, sqlstore.Config{TablePrefix: prefix})
	return e.replica(t, e.db, prefix, clock, cfg)
}

// replica returns a limiter on db, on tables already migrated, as
// another replica of a service would have.
func (e *env) replica(t testing.TB, db *sql.DB, prefix string, clock *fakeClock, cfg sqlstore.LimiterConfig) *sqlstore.Limiter {
	t.Helper()
	cfg.TablePrefix = prefix
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	l, err := sqlstore.NewLimiter(db, e.dialect, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

// limiterReplicas returns n limiters with the default limits on the tables of
// prefix, each on its own *sql.DB, as n replicas of a service would have.
func (e *env) limiterReplicas(t testing.TB, n int, prefix string, clock *fakeClock) []m2mauth.Limiter {
	t.Helper()
	ls := make([]m2mauth.Limiter, n)
	for i := range ls {
		ls[i] = e.replica(t, e.open(t), prefix, clock, sqlstore.LimiterConfig{})
	}
	return ls
}

// limitRows returns the number of rows in the prefix's rate_limits table.
func (e *env) limitRows(t *testing.T, prefix string) int {
	t.Helper()
	var n int
	require.NoError(t, e.db.QueryRowContext(t.Context(), "SELECT COUNT(*) FROM "+prefix+"rate_limits").Scan(&n))
	return n
}

// attempts drives one limiter from a test.
type attempts struct {
	t *testing.T
	l m2mauth.Limiter
}

// reserve returns the wait of Reserve, which must not fail.
func (a attempts) reserve(id, ip string) time.Duration {
	a.t.Helper()
	d, err := a.l.Reserve(a.t.Context(), id, ip)
	require.NoError(a.t, err, "Reserve(%q, %q)", id, ip)
	return d
}

// release ends a reservation, which must not fail.
func (a attempts) release(id, ip string, o m2mauth.Outcome) {
	a.t.Helper()
	require.NoError(a.t, a.l.Release(a.t.Context(), id, ip, o), "Release(%q, %q)", id, ip)
}

// fail records n failed attempts, each of which must be granted.
func (a attempts) fail(id, ip string, n int) {
	a.t.Helper()
	for i := range n {
		require.Zero(a.t, a.reserve(id, ip), "attempt %d of %q from %q", i, id, ip)
		a.release(id, ip, m2mauth.OutcomeFailed)
	}
}

// probe returns the wait of an attempt that, if granted, is abandoned.
func (a attempts) probe(id, ip string) time.Duration {
	a.t.Helper()
	d := a.reserve(id, ip)
	if d == 0 {
		a.release(id, ip, m2mauth.OutcomeAbandoned)
	}
	return d
}

func TestNewLimiter(t *testing.T) {
	db, err := sql.Open("sqlite", "file:"+filepath.Join(t.TempDir(), "limiter.db"))
	require.NoError(t, err)
	defer db.Close()
	tests := []struct {
		name    string
		db      *sql.DB
		dialect sqlstore.Dialect
		cfg     sqlstore.LimiterConfig
		ok      bool
	}{
		{"Default", db, sqlstore.SQLite, sqlstore.LimiterConfig{}, true},
		{"Postgres", db, sqlstore.Postgres, sqlstore.LimiterConfig{}, true},
		{"MySQL", db, sqlstore.MySQL, sqlstore.LimiterConfig{}, true},
		{"Tuned", db, sqlstore.SQLite, sqlstore.LimiterConfig{
			ClientIPBurst: 1, ClientIPEvery: time.Millisecond, IPBurst: 1000000, IPEvery: time.Millisecond,
			KnownWindow: time.Millisecond, ReservationTimeout: time.Millisecond,
			TablePrefix: "auth_", CleanupInterval: time.Second, CleanupBatch: 1,
		}, true},
		{"NilDB", nil, sqlstore.SQLite, sqlstore.LimiterConfig{}, false},
		{"ZeroDialect", db, 0, sqlstore.LimiterConfig{}, false},
		{"UnknownDialect", db, sqlstore.Dialect(42), sqlstore.LimiterConfig{}, false},
		{"BadPrefix", db, sqlstore.SQLite, sqlstore.LimiterConfig{TablePrefix: "x; DROP TABLE y"}, false},
		{"LongPrefix", db, sqlstore.SQLite, sqlstore.LimiterConfig{TablePrefix: strings.Repeat("a", 33)}, false},
		{"NegativeClientIPBurst", db, sqlstore.SQLite, sqlstore.LimiterConfig{ClientIPBurst: -1}, false},
		{"NegativeIPBurst", db, sqlstore.SQLite, sqlstore.LimiterConfig{IPBurst: -1}, false},
		{"ClientIPEveryUnderMillisecond", db, sqlstore.SQLite, sqlstore.LimiterConfig{ClientIPEvery: time.Microsecond}, false},
		{"NegativeIPEvery", db, sqlstore.SQLite, sqlstore.LimiterConfig{IPEvery: -time.Second}, false},
		{"NegativeKnownWindow", db, sqlstore.SQLite, sqlstore.LimiterConfig{KnownWindow: -time.Hour}, false},
		{"ReservationTimeoutUnderMillisecond", db, sqlstore.SQLite, sqlstore.LimiterConfig{ReservationTimeout: time.Microsecond}, false},
		{"NegativeCleanupInterval", db, sqlstore.SQLite, sqlstore.LimiterConfig{CleanupInterval: -time.Minute}, false},
		{"NegativeCleanupBatch", db, sqlstore.SQLite, sqlstore.LimiterConfig{CleanupBatch: -1}, false},
		{"CenturyLongBucket", db, sqlstore.SQLite, sqlstore.LimiterConfig{IPBurst: 1 << 30, IPEvery: time.Hour}, false},
		{"CenturyLongWindow", db, sqlstore.SQLite, sqlstore.LimiterConfig{KnownWindow: 200 * 365 * 24 * time.Hour}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := sqlstore.NewLimiter(tt.db, tt.dialect, tt.cfg)
			if tt.ok {
				require.NoError(t, err)
				require.NotNil(t, l)
				require.NoError(t, l.Close())
				return
			}
			require.Error(t, err)
			assert.Nil(t, l)
		})
	}
}

// TestLimiterLockout walks one client and address through the default
// limits: five failures lock it out for one refill interval, and time
// forgives one failure per interval.
func TestLimiterLockout(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		clock := newFakeClock()
		a := attempts{t, e.newLimiter(t, e.newPrefix(t), clock, sqlstore.LimiterConfig{})}
		const ip = "192.0.2.1"

		assert.Zero(t, a.probe("svc", ip), "no failures yet")
		a.fail("svc", ip, 4)
		assert.Zero(t, a.probe("svc", ip), "four failures are within the burst")
		a.fail("svc", ip, 1)
		assert.Equal(t, 12*time.Second, a.probe("svc", ip), "the fifth empties the bucket")
		assert.Zero(t, a.probe("svc", "192.0.2.2"), "another address")
		assert.Zero(t, a.probe("other", ip), "another client from the address")

		clock.Advance(5 * time.Second)
		assert.Equal(t, 7*time.Second, a.probe("svc", ip))
		clock.Advance(7*time.Second - time.Millisecond)
		assert.Equal(t, time.Millisecond, a.probe("svc", ip))
		clock.Advance(time.Millisecond)
		assert.Zero(t, a.probe("svc", ip), "one failure forgiven")
		a.fail("svc", ip, 1)
		assert.Equal(t, 12*time.Second, a.probe("svc", ip), "and taken again")

		clock.Advance(time.Minute)
		a.fail("svc", ip, 4)
		assert.Zero(t, a.probe("svc", ip), "a full bucket after a minute")
		a.fail("svc", ip, 1)
		assert.Equal(t, 12*time.Second, a.probe("svc", ip))
	})
}

// TestLimiterClockStepsBack: a replica's wall clock stepped back (by
// NTP, or a virtual machine resumed) locks out no client that never
// failed, and gives a locked-out guesser no guesses back.
func TestLimiterClockStepsBack(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, step := range []time.Duration{-time.Second, -10 * time.Minute, -24 * time.Hour} {
			t.Run(step.String(), func(t *testing.T) {
				clock := newFakeClock()
				a := attempts{t, e.newLimiter(t, e.newPrefix(t), clock, sqlstore.LimiterConfig{})}
				// Twice from each address: the second is a known
				// client's, which takes the fast paths.
				for _, ip := range []string{"192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.2"} {
					require.Zero(t, a.reserve("svc", ip))
					a.release("svc", ip, m2mauth.OutcomeAuthenticated)
				}
				require.Zero(t, a.reserve("new", "192.0.2.3"))
				a.release("new", "192.0.2.3", m2mauth.OutcomeAuthenticated)
				a.fail("guess", "192.0.2.2", 5)
				clock.Advance(step)
				for _, ip := range []string{"192.0.2.1", "192.0.2.2"} {
					require.Zero(t, a.reserve("svc", ip), "a client that never failed, from %s", ip)
					a.release("svc", ip, m2mauth.OutcomeAuthenticated)
				}
				assert.Zero(t, a.probe("other", "192.0.2.3"), "a newcomer at an address with no failures")
				assert.Positive(t, a.probe("guess", "192.0.2.2"), "a locked-out guesser stays locked out")
			})
		}
	})
}

// TestLimiterClockStepsBackDuringRequest checks a clock that steps back
// between the grant of an attempt and its release, on the replica that
// grants it: a success gives the grant's tokens back, and the client and
// the address are as if it never happened, on that replica and on
// another whose clock never moved. Each client authenticates twice: the
// second is a known client's, which takes the fast paths.
func TestLimiterClockStepsBackDuringRequest(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, step := range []time.Duration{10 * time.Minute, 24 * time.Hour} {
			t.Run(step.String(), func(t *testing.T) {
				prefix := e.newPrefix(t)
				stepping, steady := newFakeClock(), newFakeClock()
				a := attempts{t, e.newLimiter(t, prefix, stepping, sqlstore.LimiterConfig{})}
				b := attempts{t, e.replica(t, e.db, prefix, steady, sqlstore.LimiterConfig{})}
				for i, c := range []struct{ id, ip string }{
					{"svc", "192.0.2.1"}, {"svc", "192.0.2.1"}, {"new", "192.0.2.3"}, {"new", "192.0.2.3"},
				} {
					stepping.Advance(step)
					require.Zero(t, a.reserve(c.id, c.ip), "attempt %d", i)
					stepping.Advance(-step)
					a.release(c.id, c.ip, m2mauth.OutcomeAuthenticated)
					steady.Advance(time.Second)
					stepping.Advance(time.Second)
					for name, r := range map[string]attempts{"stepping": a, "steady": b} {
						require.Zero(t, r.reserve(c.id, c.ip), "attempt %d, then on the %s replica", i, name)
						r.release(c.id, c.ip, m2mauth.OutcomeAuthenticated)
						require.Zero(t, r.probe("other", c.ip), "attempt %d, then a newcomer at %s on the %s replica", i, c.ip, name)
					}
				}
				a.fail("guess", "192.0.2.2", 5)
				assert.Positive(t, b.probe("guess", "192.0.2.2"), "failures still lock out")
			})
		}
	})
}

// TestLimiterClockStepsBackKeepsFailures checks that the grant a
// success is settled against is its own, not one of an earlier
// reservation of the pair: after the clock steps back behind the grant
// of a reservation that another waits for, failures with no time passing
// never exceed the burst (RFC 6749 §10.10), however the pair's requests
// overlap, each new one granted before the last ends.
func TestLimiterClockStepsBackKeepsFailures(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		for name, o := range map[string]m2mauth.Outcome{"abandoned": m2mauth.OutcomeAbandoned, "authenticated": m2mauth.OutcomeAuthenticated} {
			t.Run(name, func(t *testing.T) {
				clock := newFakeClock()
				l := e.newLimiter(t, e.newPrefix(t), clock, sqlstore.LimiterConfig{})
				a := attempts{t, l}
				const id, ip = "victim", "192.0.2.9"
				// try makes an attempt, and reports whether it was
				// granted without waiting for time to pass; it gives
				// up on one lent out after within.
				try := func(within time.Duration) bool {
					ctx, cancel := context.WithTimeout(t.Context(), within)
					defer cancel()
					d, err := l.Reserve(ctx, id, ip)
					return err == nil && d == 0
				}
				require.Zero(t, a.reserve(id, ip))
				clock.Advance(-48 * time.Second)
				reads := clock.watch()
				waiter := make(chan bool, 1)
				go func() { waiter <- try(time.Minute) }()
				awaitReads(t, reads, 3) // the second waits for the first
				a.release(id, ip, o)
				require.True(t, <-waiter, "granted once the first is given back")
				failures := 0
				for range 10 {
					for range 3 {
						if !try(300 * time.Millisecond) {
							break
						}
						a.release(id, ip, m2mauth.OutcomeFailed)
						failures++
					}
					if !try(300 * time.Millisecond) { // the next overlaps the last
						break
					}
					a.release(id, ip, o)
				}
				a.release(id, ip, o)
				assert.LessOrEqual(t, failures, 5, "failures with no time passing (burst 5)")
			})
		}
	})
}

// TestLimiterReleaseForgivesNoFailure checks that a success given back
// settles no bucket that failures on another replica emptied meanwhile,
// whatever each replica's ReservationTimeout: failures verified with no
// time passing never exceed the burst (RFC 6749 §10.10). Replica B's
// attempts end abandoned (a store that failed, a caller that hung up)
// while replica A verifies wrong secrets; the second case has B's
// reservations lapse sooner than A's, the third has B's releases take
// the fast path.
func TestLimiterReleaseForgivesNoFailure(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, tc := range []struct {
			name   string
			leaseB time.Duration
			known  bool
		}{
			{"same timeout", time.Minute, false},
			{"shorter timeout on B", time.Second, false},
			{"shorter timeout on B, a known client", time.Second, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx := t.Context()
				prefix := e.newPrefix(t)
				clock := newFakeClock()
				la := e.newLimiter(t, prefix, clock, sqlstore.LimiterConfig{ReservationTimeout: time.Minute})
				a := attempts{t, la}
				b := attempts{t, e.replica(t, e.open(t), prefix, clock, sqlstore.LimiterConfig{ReservationTimeout: tc.leaseB})}
				const id, ip = "victim", "192.0.2.9"
				if tc.known {
					require.Zero(t, a.reserve(id, ip))
					a.release(id, ip, m2mauth.OutcomeAuthenticated)
				}
				guesses := 0
				for range 3 {
					require.Zero(t, b.reserve(id, ip), "B's attempt")
					for range 4 {
						ok, _, err := sqlstore.TryReserve(ctx, la, id, ip)
						require.NoError(t, err)
						if ok {
							a.release(id, ip, m2mauth.OutcomeFailed)
							guesses++
						}
					}
					b.release(id, ip, m2mauth.OutcomeAbandoned)
				}
				assert.Equal(t, 4, guesses, "wrong secrets verified with no time passing, beside B's attempt (burst 5)")
				a.fail(id, ip, 1)
				assert.Positive(t, a.probe(id, ip), "five failures lock the pair out")
			})
		}
	})
}

// TestLimiterAddress checks the address's own bucket: twenty failures
// with any client ids lock out every client id from the address that has
// not authenticated there.
func TestLimiterAddress(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		a := attempts{t, e.newLimiter(t, e.newPrefix(t), newFakeClock(), sqlstore.LimiterConfig{})}
		const ip = "2001:db8:1:2::/64"
		for i := range 20 {
			a.fail(fmt.Sprint("guess-", i), ip, 1)
		}
		for _, client := range []string{"guess-0", "never-tried", "\x00invalid"} {
			assert.Equal(t, 3*time.Second, a.probe(client, ip), "client %q", client)
		}
		assert.Zero(t, a.probe("never-tried", "2001:db8:1:3::/64"), "another network")
	})
}

// TestLimiterSuccessGivesBack checks that authenticated and abandoned
// attempts, however many, leave every failure of the burst available.
func TestLimiterSuccessGivesBack(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		a := attempts{t, e.newLimiter(t, e.newPrefix(t), newFakeClock(), sqlstore.LimiterConfig{})}
		const ip = "192.0.2.1"
		for i := range 50 {
			require.Zero(t, a.reserve("busy", ip), "attempt %d", i)
			a.release("busy", ip, []m2mauth.Outcome{m2mauth.OutcomeAuthenticated, m2mauth.OutcomeAbandoned}[i%2])
		}
		a.fail("busy", ip, 4)
		assert.Zero(t, a.probe("busy", ip), "the burst is intact")
		a.fail("busy", ip, 1)
		assert.Equal(t, 12*time.Second, a.probe("busy", ip))
	})
}

// TestLimiterNeighbours checks the exemption of clients known at an
// address: failures of others from the address lock out newcomers, not a
// client that authenticated there within KnownWindow, whose own failures
// still count against the address.
func TestLimiterNeighbours(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		clock := newFakeClock()
		a := attempts{t, e.newLimiter(t, e.newPrefix(t), clock, sqlstore.LimiterConfig{
			IPEvery: time.Hour, KnownWindow: 2 * time.Hour,
		})}
		const nat, other = "198.51.100.1", "198.51.100.2"
		require.Zero(t, a.reserve("known", nat))
		a.release("known", nat, m2mauth.OutcomeAuthenticated)
		a.fail("known", nat, 3)
		for i := range 17 {
			a.fail(fmt.Sprint("guess-", i), nat, 1)
		}
		assert.Equal(t, time.Hour, a.probe("newcomer", nat), "17 guesses and the known client's 3 failures emptied the address")
		assert.Zero(t, a.probe("known", nat), "the known client is exempt")
		assert.Zero(t, a.probe("newcomer", other), "another address")

		clock.Advance(2 * time.Hour)
		require.Zero(t, a.reserve("known", nat), "two tokens came back to the address")
		a.release("known", nat, m2mauth.OutcomeFailed)
		require.Zero(t, a.reserve("known", nat))
		a.release("known", nat, m2mauth.OutcomeFailed)
		assert.Equal(t, time.Hour, a.probe("known", nat), "no longer known, the client needs the address's tokens")
	})
}

// TestLimiterClientIDs checks the keys of client ids: any id no client can
// have (a NUL byte, invalid UTF-8, empty, too long) is stored on every
// engine and shares one bucket per address, while valid ids, known to a
// store or not, each have their own.
func TestLimiterClientIDs(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		a := attempts{t, e.newLimiter(t, e.newPrefix(t), newFakeClock(), sqlstore.LimiterConfig{IPBurst: 1000})}
		const ip = "198.51.100.7"
		invalid := []string{"\x00invalid", "bad\xffid", "", strings.Repeat("x", 256), "tab\tid", "é", m2mauth.LimiterInvalidClientID}
		for _, id := range invalid[:5] {
			a.fail(id, ip, 1)
		}
		for _, id := range invalid {
			assert.Equal(t, 12*time.Second, a.probe(id, ip), "%q shares the bucket of invalid ids", id)
		}
		valid := []string{strings.Repeat("c", 255), "a", "a ", "A", "~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}"}
		for _, id := range valid {
			a.fail(id, ip, 5)
		}
		for _, id := range valid {
			assert.Equal(t, 12*time.Second, a.probe(id, ip), "%q", id)
		}
		assert.Zero(t, a.probe("b", ip), "ids compare byte by byte: one that no failure named is free")
	})
}

// TestLimiterAddressKeys checks what address keys the table holds: those
// the token handler makes are fine; what no handler makes is refused
// rather than stored differently on each engine.
func TestLimiterAddressKeys(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		a := attempts{t, e.newLimiter(t, e.newPrefix(t), newFakeClock(), sqlstore.LimiterConfig{})}
		for _, ip := range []string{"unknown", "192.0.2.1", "2001:db8:1:2:3:4:5:6/128", "2001:db8::/64", strings.Repeat("f", 64), ""} {
			a.fail("svc", ip, 1)
		}
		for _, ip := range []string{strings.Repeat("f", 65), "192.0.2.1\x00", "\xff"} {
			_, err := a.l.Reserve(ctx, "svc", ip)
			require.Error(t, err, "Reserve(%q)", ip)
			require.Error(t, a.l.Release(ctx, "svc", ip, m2mauth.OutcomeFailed), "Release(%q)", ip)
		}
	})
}

// TestLimiterMatchesRateLimiter runs one random script of attempts, with
// random outcomes, and clock steps through the database limiter and the
// in-memory one: they must decide every attempt alike.
func TestLimiterMatchesRateLimiter(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		clock := newFakeClock()
		limits := sqlstore.LimiterConfig{
			ClientIPBurst: 3, ClientIPEvery: 2 * time.Second, IPBurst: 5, IPEvery: time.Second,
			KnownWindow: 20 * time.Second,
		}
		db := e.newLimiter(t, e.newPrefix(t), clock, limits)
		mem, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{
			ClientIPBurst: limits.ClientIPBurst, ClientIPEvery: limits.ClientIPEvery,
			IPBurst: limits.IPBurst, IPEvery: limits.IPEvery, KnownWindow: limits.KnownWindow, Now: clock.Now,
		})
		require.NoError(t, err)

		rng := rand.New(rand.NewPCG(1, 2))
		clients := []string{"a", "b", "c", "\x00invalid"}
		ips := []string{"192.0.2.1", "2001:db8::/64"}
		outcomes := []m2mauth.Outcome{
			m2mauth.OutcomeFailed, m2mauth.OutcomeFailed, m2mauth.OutcomeFailed,
			m2mauth.OutcomeAuthenticated, m2mauth.OutcomeAbandoned,
		}
		refused, granted := 0, 0
		for step := range 600 {
			client, ip := clients[rng.IntN(len(clients))], ips[rng.IntN(len(ips))]
			if rng.IntN(5) == 0 {
				clock.Advance(time.Duration(rng.IntN(1500)) * time.Millisecond)
				continue
			}
			want, err := mem.Reserve(ctx, client, ip)
			require.NoError(t, err)
			got, err := db.Reserve(ctx, client, ip)
			require.NoError(t, err)
			require.Equal(t, want, got, "step %d: Reserve(%q, %q)", step, client, ip)
			if got > 0 {
				refused++
				continue
			}
			granted++
			o := outcomes[rng.IntN(len(outcomes))]
			require.NoError(t, mem.Release(ctx, client, ip, o))
			require.NoError(t, db.Release(ctx, client, ip, o))
		}
		assert.Greater(t, refused, 60, "the script must reach lockouts often")
		assert.Greater(t, granted, 100)
	})
}

// TestLimiterFastPathsMatchTransactions runs one random script through a
// limiter with its fast paths and one that decides every attempt in
// transactions, with the same clock: reservations held across steps,
// released in any order with any outcome, or never (a crashed replica,
// whose lease lapses). Both must decide every attempt alike and leave
// the clients' rows alike.
func TestLimiterFastPathsMatchTransactions(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		clock := newFakeClock()
		cfg := sqlstore.LimiterConfig{
			ClientIPBurst: 3, ClientIPEvery: 2 * time.Second, IPBurst: 4, IPEvery: time.Second,
			KnownWindow: 20 * time.Second, ReservationTimeout: 5 * time.Second,
		}
		fastPrefix, slowPrefix := e.newPrefix(t), e.newPrefix(t)
		fast := e.newLimiter(t, fastPrefix, clock, cfg)
		slow := e.newLimiter(t, slowPrefix, clock, cfg)
		sqlstore.WithoutFastPaths(slow)

		type held struct{ id, ip string }
		var holds []held
		rng := rand.New(rand.NewPCG(3, 4))
		clients := []string{"a", "b"}
		ips := []string{"192.0.2.1", "192.0.2.2"}
		outcomes := []m2mauth.Outcome{
			m2mauth.OutcomeFailed, m2mauth.OutcomeFailed,
			m2mauth.OutcomeAuthenticated, m2mauth.OutcomeAuthenticated, m2mauth.OutcomeAbandoned,
		}
		// One attempt each, without waiting: an attempt whose tokens
		// are all lent out would wait for a release that no one else
		// will make.
		reserve := func(l *sqlstore.Limiter, id, ip string) (time.Duration, bool) {
			granted, wait, err := sqlstore.TryReserve(t.Context(), l, id, ip)
			require.NoError(t, err)
			return wait, granted || wait > 0
		}
		kinds := map[string]int{}
		for step := range 400 {
			switch r := rng.IntN(10); {
			case r == 0:
				clock.Advance(time.Duration(rng.IntN(3000)) * time.Millisecond)
			case r <= 4 && len(holds) > 0:
				i := rng.IntN(len(holds))
				h := holds[i]
				holds = slices.Delete(holds, i, i+1)
				if rng.IntN(6) == 0 {
					kinds["crashed"]++ // never released
					continue
				}
				o := outcomes[rng.IntN(len(outcomes))]
				require.NoError(t, fast.Release(t.Context(), h.id, h.ip, o))
				require.NoError(t, slow.Release(t.Context(), h.id, h.ip, o))
			default:
				id, ip := clients[rng.IntN(len(clients))], ips[rng.IntN(len(ips))]
				want, wantOK := reserve(slow, id, ip)
				got, gotOK := reserve(fast, id, ip)
				require.Equal(t, wantOK, gotOK, "step %d: Reserve(%q, %q) lent out", step, id, ip)
				require.Equal(t, want, got, "step %d: Reserve(%q, %q)", step, id, ip)
				switch {
				case !gotOK:
					kinds["lent out"]++
				case got > 0:
					kinds["refused"]++
				case rng.IntN(3) == 0:
					kinds["held"]++
					holds = append(holds, held{id, ip})
				default:
					kinds["granted"]++
					o := outcomes[rng.IntN(len(outcomes))]
					require.NoError(t, fast.Release(t.Context(), id, ip, o))
					require.NoError(t, slow.Release(t.Context(), id, ip, o))
				}
			}
		}
		for _, k := range []string{"crashed", "lent out", "refused", "held", "granted"} {
			assert.Positive(t, kinds[k], "the script must reach %q", k)
		}

		// The clients' rows, with lapsed reservations forgotten.
		rows := func(prefix string) []string {
			now := clock.Now().UnixMicro()
			rs, err := e.db.QueryContext(t.Context(), "SELECT ip, client_id, refilled_at, pending, pending_addr, lease_until, authenticated_at FROM "+
				prefix+"rate_limits WHERE client_id <> '' ORDER BY ip, client_id")
			require.NoError(t, err)
			defer rs.Close()
			var out []string
			for rs.Next() {
				var ip, id string
				var refilled, pending, pendingAddr, lease, auth int64
				require.NoError(t, rs.Scan(&ip, &id, &refilled, &pending, &pendingAddr, &lease, &auth))
				if lease <= now {
					pending, pendingAddr, lease = 0, 0, 0
				}
				out = append(out, fmt.Sprint(ip, id, refilled, pending, pendingAddr, lease, auth))
			}
			require.NoError(t, rs.Err())
			return out
		}
		assert.Equal(t, rows(slowPrefix), rows(fastPrefix))
	})
}

// TestLimiterReserveClient checks that ReserveClient decides as Reserve
// and returns what Store.Client returns, whether it reads the client
// itself (its own store, on PostgreSQL) or asks the store (any other).
func TestLimiterReserveClient(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		clock := newFakeClock()
		prefix := e.newPrefix(t)
		own := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		other := e.newStore(t, sqlstore.Config{})
		createClient(t, own, "svc", clock.Now())
		createClient(t, other, "svc", clock.Now()) // a client of the same id elsewhere
		l := e.replica(t, e.db, prefix, clock, sqlstore.LimiterConfig{ClientIPBurst: 2})

		tests := []struct {
			name    string
			store   *sqlstore.Store
			id, ip  string
			outcome m2mauth.Outcome
			refused bool
		}{
			{"new address", own, "svc", "192.0.2.1", m2mauth.OutcomeAuthenticated, false},
			{"known address", own, "svc", "192.0.2.1", m2mauth.OutcomeAuthenticated, false},
			{"unknown client", own, "nobody", "192.0.2.1", m2mauth.OutcomeFailed, false},
			{"another store", other, "svc", "192.0.2.1", m2mauth.OutcomeAuthenticated, false},
			{"failure", own, "svc", "192.0.2.2", m2mauth.OutcomeFailed, false},
			{"failure again", own, "svc", "192.0.2.2", m2mauth.OutcomeFailed, false},
			{"locked out", own, "svc", "192.0.2.2", 0, true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				wait, c, lerr, err := l.ReserveClient(ctx, tt.store, tt.id, tt.ip)
				require.NoError(t, err)
				if tt.refused {
					require.Positive(t, wait)
					require.Nil(t, c)
					require.NoError(t, lerr)
					return
				}
				require.Zero(t, wait)
				want, wantErr := tt.store.Client(ctx, tt.id)
				if wantErr != nil {
					require.ErrorIs(t, lerr, m2mauth.ErrClientNotFound)
					require.ErrorIs(t, wantErr, m2mauth.ErrClientNotFound)
					require.Nil(t, c)
				} else {
					require.NoError(t, lerr)
					require.Equal(t, want, c)
				}
				require.NoError(t, l.Release(ctx, tt.id, tt.ip, tt.outcome))
			})
		}
	})
}

// TestLimiterReserveClientAfterWait: an attempt granted only after
// waiting for another replica's attempt returns the client as it is when
// granted, not as the fast path read it before the wait: a client
// disabled meanwhile is seen disabled.
func TestLimiterReserveClientAfterWait(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		if e.dialect == sqlstore.SQLite {
			t.Skip("SQLite reads the client on its own, after the grant")
		}
		ctx := t.Context()
		prefix := e.newPrefix(t)
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		createClient(t, s, "svc", time.Now())
		cfg := sqlstore.LimiterConfig{ClientIPBurst: 1, Now: time.Now}
		a := e.replica(t, e.db, prefix, nil, cfg)
		b := e.replica(t, e.open(t), prefix, nil, cfg)
		const ip = "192.0.2.7"
		_, err := a.Reserve(ctx, "svc", ip) // svc is known at ip: the fast path reads it
		require.NoError(t, err)
		require.NoError(t, a.Release(ctx, "svc", ip, m2mauth.OutcomeAuthenticated))
		wait, err := b.Reserve(ctx, "svc", ip) // the one attempt of the burst, in flight at b
		require.NoError(t, err)
		require.Zero(t, wait)

		type result struct {
			wait time.Duration
			c    *m2mauth.Client
			err  error
		}
		done := make(chan result, 1)
		go func() {
			wait, c, lerr, err := a.ReserveClient(ctx, s, "svc", ip)
			done <- result{wait, c, errors.Join(lerr, err)}
		}()
		time.Sleep(200 * time.Millisecond) // a waits for b's attempt
		require.NoError(t, s.SetDisabled(ctx, "svc", true))
		require.NoError(t, b.Release(ctx, "svc", ip, m2mauth.OutcomeAuthenticated))
		r := <-done
		require.NoError(t, r.err)
		require.Zero(t, r.wait)
		assert.True(t, r.c.Disabled, "the client as it was before the wait")
		require.NoError(t, a.Release(ctx, "svc", ip, m2mauth.OutcomeAbandoned))
	})
}

// TestLimiterFastPathCommitsAsync checks that PostgreSQL's fast path, a
// statement on its own, turns off the synchronous commit of its
// transaction, as the limiter's transactions do.
func TestLimiterFastPathCommitsAsync(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		if e.dialect != sqlstore.Postgres {
			t.Skip("synchronous_commit is PostgreSQL's")
		}
		clock := newFakeClock()
		l := e.newLimiter(t, e.newPrefix(t), clock, sqlstore.LimiterConfig{})
		a := attempts{t, l}
		require.Zero(t, a.reserve("svc", "192.0.2.1"))
		a.release("svc", "192.0.2.1", m2mauth.OutcomeAuthenticated) // known there now

		tx, err := e.db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		defer tx.Rollback()
		setting := func() (v string) {
			require.NoError(t, tx.QueryRowContext(t.Context(), "SHOW synchronous_commit").Scan(&v))
			return v
		}
		require.Equal(t, "on", setting())
		// The defaults: a 5 attempt burst, one every 12s, a 24h window,
		// a lease of 30s.
		now := clock.Now().UnixMicro()
		every, burst, window, lease := int64(12e6), int64(5), int64(24*3600e6), int64(30e6)
		res, err := tx.ExecContext(t.Context(), sqlstore.LimiterFastGrant(l),
			now, every, now+burst*every, window, now+lease, now, now, now+lease, now, every, now+burst*every,
			"192.0.2.1", "svc", now-window, now+(burst-1)*every, now, burst)
		require.NoError(t, err)
		n, err := res.RowsAffected()
		require.NoError(t, err)
		require.EqualValues(t, 1, n, "the attempt of a known client is granted")
		require.Equal(t, "off", setting())
	})
}

// TestLimiterCleanup checks that rows meaning no more than no row are
// deleted, in batches, by Cleanup and by Release once per
// CleanupInterval, and that rows of buckets still refilling, of clients
// known at an address and of reservations in flight are kept.
func TestLimiterCleanup(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		a := attempts{t, e.newLimiter(t, prefix, clock, sqlstore.LimiterConfig{
			CleanupInterval: time.Minute, CleanupBatch: 4, KnownWindow: time.Hour,
		})}
		l := a.l.(*sqlstore.Limiter)
		cleanup := func(want int64, msg string) {
			t.Helper()
			n, err := l.Cleanup(ctx)
			require.NoError(t, err)
			assert.Equal(t, want, n, msg)
		}

		a.fail("svc", "192.0.2.1", 1) // the first Release cleans up (nothing yet), the next is due in a minute
		a.fail("svc", "192.0.2.2", 1)
		a.fail("svc", "192.0.2.3", 1)
		assert.Equal(t, 6, e.limitRows(t, prefix), "a row per client and address, and per address")
		clock.Advance(30 * time.Second)
		a.fail("svc", "192.0.2.4", 1)
		assert.Equal(t, 8, e.limitRows(t, prefix), "no cleanup before the interval")

		clock.Advance(31 * time.Second) // all eight rows have refilled
		a.fail("svc", "192.0.2.5", 1)
		assert.Equal(t, 8-4+2, e.limitRows(t, prefix), "one batch deleted")
		a.fail("svc", "192.0.2.5", 1)
		assert.Equal(t, 2, e.limitRows(t, prefix), "a full batch makes the next Release clean again")
		a.fail("svc", "192.0.2.5", 1)
		assert.Equal(t, 2, e.limitRows(t, prefix), "buckets still refilling are kept")

		cleanup(0, "nothing has refilled")
		clock.Advance(12*time.Second*3 - time.Microsecond) // three failures take 36s to forgive
		cleanup(1, "the address's row has refilled, the client's has not")
		clock.Advance(time.Microsecond)
		cleanup(1, "the client's row has refilled")
		assert.Zero(t, e.limitRows(t, prefix))
		a.fail("svc", "192.0.2.5", 4)
		assert.Zero(t, a.probe("svc", "192.0.2.5"), "a deleted row is a full bucket")
		clock.Advance(time.Minute)
		cleanup(2, "")

		require.Zero(t, a.reserve("known", "192.0.2.6"))
		a.release("known", "192.0.2.6", m2mauth.OutcomeAuthenticated) // cleans up: a minute has passed
		assert.Equal(t, 1, e.limitRows(t, prefix), "the address's row is deleted, not the known client's")
		clock.Advance(time.Hour - time.Microsecond)
		cleanup(0, "the client is known for an hour")
		clock.Advance(time.Microsecond)
		cleanup(1, "and then forgotten")

		require.Zero(t, a.reserve("slow", "192.0.2.7"))
		clock.Advance(30*time.Second - time.Microsecond)
		cleanup(0, "a reservation in flight keeps both rows")
		clock.Advance(time.Microsecond)
		cleanup(2, "until it lapses")
		a.release("slow", "192.0.2.7", m2mauth.OutcomeAuthenticated)
		assert.Zero(t, a.probe("slow", "192.0.2.7"))
	})
}

// TestLimiterCleanupDuringUpgrade: during a rolling upgrade a replica of
// an earlier release, unaware of idle_at, writes rows whose idle_at is 0
// (its insert) or older than their refilled_at (its update). Cleanup
// keeps such a row until its bucket has refilled: deleting it sooner
// would hand the guesser a full bucket.
func TestLimiterCleanupDuringUpgrade(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		a := attempts{t, e.newLimiter(t, prefix, clock, sqlstore.LimiterConfig{CleanupInterval: time.Hour})}
		l := a.l.(*sqlstore.Limiter)
		a.fail("svc", "192.0.2.1", 5) // locked out; a minute to refill
		// As the earlier release leaves the rows it writes.
		_, err := e.db.ExecContext(ctx, "UPDATE "+prefix+"rate_limits SET idle_at = 0")
		require.NoError(t, err)

		clock.Advance(10 * time.Second)
		n, err := l.Cleanup(ctx)
		require.NoError(t, err)
		assert.Zero(t, n, "buckets still refilling are kept")
		assert.Equal(t, 2, e.limitRows(t, prefix))
		assert.Positive(t, a.probe("svc", "192.0.2.1"), "still locked out")
		clock.Advance(10 * time.Second) // the address's bucket is full (15s), the client's is not (60s)
		n, err = l.Cleanup(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(1), n)

		clock.Advance(40 * time.Second)
		n, err = l.Cleanup(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(1), n)
		assert.Zero(t, e.limitRows(t, prefix))
	})
}

// TestLimiterInFlight checks reservations in flight: while a client's
// attempts are all lent to them, another waits for them, on the same
// replica and on another, and is granted when one is given back or
// refused when all fail.
func TestLimiterInFlight(t *testing.T) {
	tests := []struct {
		name string
		// sameReplica: the waiter uses the limiter that holds the
		// reservations (it waits in memory), else another (it polls).
		sameReplica bool
		outcome     m2mauth.Outcome
		// released is how many of the five reservations end with outcome.
		released int
		want     time.Duration
	}{
		{"SameReplicaAuthenticated", true, m2mauth.OutcomeAuthenticated, 1, 0},
		{"OtherReplicaAuthenticated", false, m2mauth.OutcomeAuthenticated, 1, 0},
		{"OtherReplicaAbandoned", false, m2mauth.OutcomeAbandoned, 1, 0},
		{"SameReplicaFailed", true, m2mauth.OutcomeFailed, 5, 12 * time.Second},
		{"OtherReplicaFailed", false, m2mauth.OutcomeFailed, 5, 12 * time.Second},
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				prefix := e.newPrefix(t)
				clock := newFakeClock()
				holder := attempts{t, e.newLimiter(t, prefix, clock, sqlstore.LimiterConfig{})}
				waiter := holder
				if !tt.sameReplica {
					waiter = attempts{t, e.replica(t, e.open(t), prefix, clock, sqlstore.LimiterConfig{})}
				}
				const ip = "192.0.2.1"
				for i := range 5 {
					require.Zero(t, holder.reserve("svc", ip), "reservation %d", i)
				}
				reads := clock.watch()
				done := make(chan time.Duration, 1)
				go func() {
					d, err := waiter.l.Reserve(t.Context(), "svc", ip)
					assert.NoError(t, err)
					done <- d
				}()
				if !tt.sameReplica {
					awaitReads(t, reads, 3) // a transaction, then polls
				}
				select {
				case d := <-done:
					t.Fatalf("Reserve returned %v while every attempt was in flight", d)
				default:
				}
				for range tt.released {
					holder.release("svc", ip, tt.outcome)
				}
				select {
				case d := <-done:
					assert.Equal(t, tt.want, d)
				case <-time.After(time.Minute):
					t.Fatal("the waiting Reserve did not return")
				}
			})
		}
	})
}

// TestLimiterCrashedReplica has a replica reserve a client's whole burst
// and die without releasing it. Another replica waits for the attempts in
// flight, no longer than the reservations' timeout and never longer than
// the bucket takes to refill; the dead replica's attempts count as
// failures meanwhile.
func TestLimiterCrashedReplica(t *testing.T) {
	tests := []struct {
		name    string
		timeout time.Duration
		// healed is when the waiter is granted, after the crash.
		healed time.Duration
		// then is how many more attempts are granted before a refusal,
		// and wait that refusal's wait.
		then int
		wait time.Duration
	}{
		{"DefaultTimeout", 0, 30 * time.Second, 1, 6 * time.Second},
		{"TimeoutBeyondRefill", 5 * time.Minute, time.Minute, 4, 12 * time.Second},
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				prefix := e.newPrefix(t)
				clock := newFakeClock()
				cfg := sqlstore.LimiterConfig{ReservationTimeout: tt.timeout}
				dead := attempts{t, e.newLimiter(t, prefix, clock, cfg)}
				alive := attempts{t, e.replica(t, e.open(t), prefix, clock, cfg)}
				const ip = "192.0.2.1"
				for range 5 {
					require.Zero(t, dead.reserve("svc", ip))
				}
				require.NoError(t, dead.l.(*sqlstore.Limiter).Close())

				reads := clock.watch()
				done := make(chan time.Duration, 1)
				go func() {
					d, err := alive.l.Reserve(t.Context(), "svc", ip)
					assert.NoError(t, err)
					done <- d
				}()
				awaitReads(t, reads, 3)
				clock.Advance(tt.healed - time.Millisecond)
				awaitReads(t, reads, 3) // polls at the new time
				select {
				case d := <-done:
					t.Fatalf("Reserve returned %v before the reservations lapsed", d)
				default:
				}
				clock.Advance(time.Millisecond)
				select {
				case d := <-done:
					require.Zero(t, d, "granted once the dead replica's reservations lapse")
				case <-time.After(time.Minute):
					t.Fatal("the waiting Reserve did not return")
				}
				alive.release("svc", ip, m2mauth.OutcomeFailed)
				for range tt.then {
					alive.fail("svc", ip, 1)
				}
				assert.Equal(t, tt.wait, alive.probe("svc", ip), "the dead replica's attempts counted as failures")
			})
		}
	})
}

// TestLimiterSimultaneousGuesses sends 200 attempts for one client and
// address at once, through four replicas, each failing when granted: no
// more than the burst may be granted, and every other attempt is refused
// (RFC 6749 §10.10). So too for a client known at the address, whose
// attempts take the fast path.
func TestLimiterSimultaneousGuesses(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, known := range []bool{false, true} {
			t.Run(fmt.Sprintf("known=%t", known), func(t *testing.T) {
				prefix := e.newPrefix(t)
				clock := newFakeClock()
				e.newStore(t, sqlstore.Config{TablePrefix: prefix})
				const replicas, guesses = 4, 200
				ls := e.limiterReplicas(t, replicas, prefix, clock)
				if known {
					a := attempts{t, ls[0]}
					require.Zero(t, a.reserve("svc", "192.0.2.1"))
					a.release("svc", "192.0.2.1", m2mauth.OutcomeAuthenticated)
				}
				var granted, refused atomic.Int64
				var wg sync.WaitGroup
				for i := range guesses {
					l := ls[i%replicas]
					wg.Go(func() {
						d, err := l.Reserve(t.Context(), "svc", "192.0.2.1")
						if !assert.NoError(t, err) {
							return
						}
						if d > 0 {
							refused.Add(1)
							return
						}
						granted.Add(1)
						assert.NoError(t, l.Release(t.Context(), "svc", "192.0.2.1", m2mauth.OutcomeFailed))
					})
				}
				wg.Wait()
				assert.Equal(t, int64(5), granted.Load(), "granted")
				assert.Equal(t, int64(guesses-5), refused.Load(), "refused")
			})
		}
	})
}

// TestLimiterLegitimateConcurrency sends 300 attempts of one client from
// one address at once, through two replicas, each authenticating: all
// are granted, however few at a time.
func TestLimiterLegitimateConcurrency(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		const replicas, requests = 2, 300
		ls := e.limiterReplicas(t, replicas, prefix, clock)
		var granted atomic.Int64
		var wg sync.WaitGroup
		for i := range requests {
			l := ls[i%replicas]
			wg.Go(func() {
				d, err := l.Reserve(t.Context(), "busy", "192.0.2.1")
				if !assert.NoError(t, err) || !assert.Zero(t, d) {
					return
				}
				granted.Add(1)
				assert.NoError(t, l.Release(t.Context(), "busy", "192.0.2.1", m2mauth.OutcomeAuthenticated))
			})
		}
		wg.Wait()
		assert.Equal(t, int64(requests), granted.Load())
		a := attempts{t, ls[0]}
		a.fail("busy", "192.0.2.1", 5)
		assert.Equal(t, 12*time.Second, a.probe("busy", "192.0.2.1"), "and every token came back")
	})
}

// TestLimiterConcurrentFailures has replicas record failures of one
// client and of others from one address at once: none may be lost, and
// none may fail (a deadlock between transactions would).
func TestLimiterConcurrentFailures(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		const workers, each = 8, 20
		cfg := sqlstore.LimiterConfig{
			ClientIPBurst: workers * each, ClientIPEvery: time.Hour,
			IPBurst: 2 * workers * each, IPEvery: time.Hour,
		}
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		var wg sync.WaitGroup
		for w := range workers {
			l := e.replica(t, e.open(t), prefix, clock, cfg)
			wg.Go(func() {
				for _, id := range []string{"shared", fmt.Sprint("own-", w)} {
					for range each {
						d, err := l.Reserve(ctx, id, "192.0.2.1")
						if !assert.NoError(t, err) || !assert.Zero(t, d) {
							return
						}
						assert.NoError(t, l.Release(ctx, id, "192.0.2.1", m2mauth.OutcomeFailed))
					}
				}
			})
		}
		wg.Wait()
		// Every bucket is exactly empty if and only if no failure was
		// lost: it waits one interval.
		a := attempts{t, e.replica(t, e.db, prefix, clock, cfg)}
		for _, client := range []string{"shared", "own-0", "someone-else"} {
			assert.Equal(t, time.Hour, a.probe(client, "192.0.2.1"), "client %q", client)
		}
	})
}

// TestLimiterConcurrentCleanups has replicas, each with two goroutines,
// record attempts while their clock runs ahead, so that most releases
// also clean up rows that others are updating: no statement may fail,
// cleanups included. On SQLite, where every write takes the database
// lock in turn, fewer replicas do less work; they may still wait for one
// another longer than the connections' busy timeout on a loaded machine
// (see TestLimiterSQLiteBusy).
func TestLimiterConcurrentCleanups(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		var logs syncBuffer
		cfg := sqlstore.LimiterConfig{
			CleanupBatch: 5, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		}
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		replicas, goroutines, each := 8, 2, 60
		if e.dialect == sqlstore.SQLite {
			replicas, goroutines, each = 4, 2, 40
		}
		var wg sync.WaitGroup
		for r := range replicas {
			l := e.replica(t, e.open(t), prefix, clock, cfg)
			for g := range goroutines {
				w := r*goroutines + g
				wg.Go(func() {
					for i := range each {
						ip := fmt.Sprintf("10.0.%d.%d", i%7, (i*w)%13)
						for _, id := range []string{fmt.Sprint("c", (i+w)%11), fmt.Sprint("c", i%5)} {
							d, err := l.Reserve(t.Context(), id, ip)
							if !assert.NoError(t, err) {
								return
							}
							if d == 0 {
								assert.NoError(t, l.Release(t.Context(), id, ip,
									[]m2mauth.Outcome{m2mauth.OutcomeFailed, m2mauth.OutcomeAuthenticated}[i%2]))
							}
						}
						if i%10 == 0 {
							clock.Advance(time.Minute + time.Second)
						}
					}
				})
			}
		}
		wg.Wait()
		assert.Empty(t, logs.String(), "cleanups that failed")
	})
}

// TestLimiterSQLiteBusy holds SQLite's write lock from another
// connection for longer than the limiter's connections wait for it (their
// busy_timeout): the limiter keeps trying until its context ends, and then
// reports the context's error, which the token handler answers with 503
// and Retry-After rather than 500.
func TestLimiterSQLiteBusy(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		if e.dialect != sqlstore.SQLite {
			t.Skip("SQLite's database lock")
		}
		prefix := e.newPrefix(t)
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		impatient := e.open(t)
		_, err := impatient.ExecContext(t.Context(), "PRAGMA busy_timeout = 10")
		require.NoError(t, err)
		impatient.SetMaxOpenConns(1) // the pragma holds for its one connection
		l := e.replica(t, impatient, prefix, newFakeClock(), sqlstore.LimiterConfig{})

		holder, err := e.db.Conn(t.Context())
		require.NoError(t, err)
		defer holder.Close()
		_, err = holder.ExecContext(t.Context(), "BEGIN IMMEDIATE")
		require.NoError(t, err)

		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		_, err = l.Reserve(ctx, "svc", "192.0.2.1")
		require.ErrorIs(t, err, context.DeadlineExceeded, "retried past the busy timeout until the deadline")

		done := make(chan error, 1)
		go func() {
			_, err := l.Reserve(t.Context(), "svc", "192.0.2.1")
			done <- err
		}()
		_, err = holder.ExecContext(t.Context(), "COMMIT")
		require.NoError(t, err)
		require.NoError(t, <-done, "granted once the lock is free")
	})
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLimiterDatabaseErrors checks that Reserve and Release report a
// database they cannot use, and recover once the tables exist; a context
// that ends while Reserve waits ends the wait.
func TestLimiterDatabaseErrors(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		l, err := sqlstore.NewLimiter(e.db, e.dialect, sqlstore.LimiterConfig{TablePrefix: prefix})
		require.NoError(t, err)
		defer l.Close()
		_, err = l.Reserve(ctx, "svc", "192.0.2.1")
		require.Error(t, err, "no table yet")
		require.Error(t, l.Release(ctx, "svc", "192.0.2.1", m2mauth.OutcomeFailed))

		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		a := attempts{t, l}
		a.fail("svc", "192.0.2.1", 1)
		require.Zero(t, a.probe("svc", "192.0.2.1"))
		require.Error(t, l.Release(ctx, "svc", "192.0.2.1", m2mauth.Outcome(0)), "an unknown outcome")

		db := e.open(t)
		closed, err := sqlstore.NewLimiter(db, e.dialect, sqlstore.LimiterConfig{TablePrefix: prefix})
		require.NoError(t, err)
		require.NoError(t, db.Close())
		_, err = closed.Reserve(ctx, "svc", "192.0.2.1")
		require.Error(t, err)
		require.Error(t, closed.Release(ctx, "svc", "192.0.2.1", m2mauth.OutcomeFailed))
		_, err = closed.Cleanup(ctx)
		require.Error(t, err)

		for range 5 {
			require.Zero(t, a.reserve("held", "192.0.2.1"))
		}
		wctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err = l.Reserve(wctx, "held", "192.0.2.1")
		require.ErrorIs(t, err, context.Canceled, "waiting for an attempt in flight")

		require.NoError(t, l.Close())
		_, err = l.Reserve(ctx, "svc", "192.0.2.1")
		require.Error(t, err, "after Close")
		require.NoError(t, l.Close(), "second Close")
	})
}

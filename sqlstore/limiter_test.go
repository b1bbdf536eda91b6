package sqlstore_test

import (
	"bytes"
	"database/sql"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// fakeClock is a clock that tests move by hand, safe for concurrent use.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// newLimiter returns a limiter on the tables of prefix, migrating them
// first, with cfg's clock defaulting to clock.
func (e *env) newLimiter(t testing.TB, prefix string, clock *fakeClock, cfg sqlstore.LimiterConfig) *sqlstore.Limiter {
	t.Helper()
	e.newStore(t, sqlstore.Config{TablePrefix: prefix})
	cfg.TablePrefix = prefix
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	l, err := sqlstore.NewLimiter(e.db, e.dialect, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

// limitRows returns the number of rows in the prefix's rate_limits table.
func (e *env) limitRows(t *testing.T, prefix string) int {
	t.Helper()
	var n int
	require.NoError(t, e.db.QueryRowContext(t.Context(), "SELECT COUNT(*) FROM "+prefix+"rate_limits").Scan(&n))
	return n
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
		{"NegativeCleanupInterval", db, sqlstore.SQLite, sqlstore.LimiterConfig{CleanupInterval: -time.Minute}, false},
		{"NegativeCleanupBatch", db, sqlstore.SQLite, sqlstore.LimiterConfig{CleanupBatch: -1}, false},
		{"CenturyLongBucket", db, sqlstore.SQLite, sqlstore.LimiterConfig{IPBurst: 1 << 30, IPEvery: time.Hour}, false},
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
		ctx := t.Context()
		clock := newFakeClock()
		l := e.newLimiter(t, e.newPrefix(t), clock, sqlstore.LimiterConfig{})
		const ip = "192.0.2.1"
		wait := func(client, ip string) time.Duration {
			t.Helper()
			d, err := l.Check(ctx, client, ip)
			require.NoError(t, err)
			return d
		}
		fail := func(n int) {
			t.Helper()
			for range n {
				require.NoError(t, l.Fail(ctx, "svc", ip))
			}
		}

		assert.Zero(t, wait("svc", ip), "no failures yet")
		fail(4)
		assert.Zero(t, wait("svc", ip), "four failures are within the burst")
		fail(1)
		assert.Equal(t, 12*time.Second, wait("svc", ip), "the fifth empties the bucket")
		assert.Zero(t, wait("svc", "192.0.2.2"), "another address")
		assert.Zero(t, wait("other", ip), "another client from the address")

		clock.Advance(5 * time.Second)
		assert.Equal(t, 7*time.Second, wait("svc", ip))
		clock.Advance(7*time.Second - time.Microsecond)
		assert.Equal(t, time.Microsecond, wait("svc", ip))
		clock.Advance(time.Microsecond)
		assert.Zero(t, wait("svc", ip), "one failure forgiven")
		fail(1)
		assert.Equal(t, 12*time.Second, wait("svc", ip), "and taken again")

		clock.Advance(time.Minute)
		fail(4)
		assert.Zero(t, wait("svc", ip), "a full bucket after a minute")
		fail(1)
		assert.Equal(t, 12*time.Second, wait("svc", ip))
	})
}

// TestLimiterAddress checks the address's own bucket: twenty failures
// with any client ids lock out every client id from the address.
func TestLimiterAddress(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		l := e.newLimiter(t, e.newPrefix(t), newFakeClock(), sqlstore.LimiterConfig{})
		const ip = "2001:db8:1:2::/64"
		for i := range 20 {
			d, err := l.Check(ctx, fmt.Sprint("guess-", i), ip)
			require.NoError(t, err)
			require.Zero(t, d, "attempt %d", i)
			require.NoError(t, l.Fail(ctx, fmt.Sprint("guess-", i), ip))
		}
		for _, client := range []string{"guess-0", "never-tried", "\x00invalid"} {
			d, err := l.Check(ctx, client, ip)
			require.NoError(t, err)
			assert.Equal(t, 3*time.Second, d, "client %q", client)
		}
		d, err := l.Check(ctx, "never-tried", "2001:db8:1:3::/64")
		require.NoError(t, err)
		assert.Zero(t, d, "another network")
	})
}

// TestLimiterChecksTakeNothing checks that requests that do not fail,
// however many, leave every failure of the burst available.
func TestLimiterChecksTakeNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		l := e.newLimiter(t, prefix, newFakeClock(), sqlstore.LimiterConfig{})
		for range 50 {
			d, err := l.Check(ctx, "busy", "192.0.2.1")
			require.NoError(t, err)
			require.Zero(t, d)
		}
		assert.Zero(t, e.limitRows(t, prefix), "a check writes nothing")
		for range 4 {
			require.NoError(t, l.Fail(ctx, "busy", "192.0.2.1"))
		}
		d, err := l.Check(ctx, "busy", "192.0.2.1")
		require.NoError(t, err)
		assert.Zero(t, d)
	})
}

// TestLimiterClientIDs checks the keys of client ids: any id no client can
// have (a NUL byte, invalid UTF-8, empty, too long) is stored on every
// engine and shares one bucket per address, while valid ids, known to a
// store or not, each have their own.
func TestLimiterClientIDs(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		l := e.newLimiter(t, e.newPrefix(t), newFakeClock(), sqlstore.LimiterConfig{IPBurst: 1000})
		const ip = "198.51.100.7"
		invalid := []string{"\x00invalid", "bad\xffid", "", strings.Repeat("x", 256), "tab\tid", "é"}
		for _, id := range invalid[:5] {
			require.NoError(t, l.Fail(ctx, id, ip), "Fail(%q)", id)
		}
		for _, id := range invalid {
			d, err := l.Check(ctx, id, ip)
			require.NoError(t, err, "Check(%q)", id)
			assert.Equal(t, 12*time.Second, d, "Check(%q) shares the bucket of invalid ids", id)
		}
		longest := strings.Repeat("c", 255)
		for _, id := range []string{longest, "a", "a ", "A", "~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}"} {
			for range 5 {
				require.NoError(t, l.Fail(ctx, id, ip), "Fail(%q)", id)
			}
		}
		for _, id := range []string{longest, "a", "a ", "A", "~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}"} {
			d, err := l.Check(ctx, id, ip)
			require.NoError(t, err)
			assert.Equal(t, 12*time.Second, d, "Check(%q)", id)
		}
		d, err := l.Check(ctx, "b", ip)
		require.NoError(t, err)
		assert.Zero(t, d, "ids compare byte by byte: one that no failure named is free")
	})
}

// TestLimiterAddressKeys checks what address keys the table holds: those
// the token handler makes are fine; what no handler makes is refused
// rather than stored differently on each engine.
func TestLimiterAddressKeys(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		l := e.newLimiter(t, e.newPrefix(t), newFakeClock(), sqlstore.LimiterConfig{})
		for _, ip := range []string{"unknown", "192.0.2.1", "2001:db8:1:2:3:4:5:6/128", "2001:db8::/64", strings.Repeat("f", 64), ""} {
			require.NoError(t, l.Fail(ctx, "svc", ip), "Fail(%q)", ip)
			_, err := l.Check(ctx, "svc", ip)
			require.NoError(t, err, "Check(%q)", ip)
		}
		for _, ip := range []string{strings.Repeat("f", 65), "192.0.2.1\x00", "\xff"} {
			require.Error(t, l.Fail(ctx, "svc", ip), "Fail(%q)", ip)
			_, err := l.Check(ctx, "svc", ip)
			require.Error(t, err, "Check(%q)", ip)
		}
	})
}

// TestLimiterMatchesRateLimiter runs one random script of failures, checks
// and clock steps through the database limiter and the in-memory one:
// they must answer every check alike.
func TestLimiterMatchesRateLimiter(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		clock := newFakeClock()
		limits := sqlstore.LimiterConfig{ClientIPBurst: 3, ClientIPEvery: 2 * time.Second, IPBurst: 5, IPEvery: time.Second}
		db := e.newLimiter(t, e.newPrefix(t), clock, limits)
		mem, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{
			ClientIPBurst: limits.ClientIPBurst, ClientIPEvery: limits.ClientIPEvery,
			IPBurst: limits.IPBurst, IPEvery: limits.IPEvery, Now: clock.Now,
		})
		require.NoError(t, err)

		rng := rand.New(rand.NewPCG(1, 2))
		clients := []string{"a", "b", "c", "\x00invalid"}
		ips := []string{"192.0.2.1", "2001:db8::/64"}
		locked := 0
		for step := range 400 {
			client, ip := clients[rng.IntN(len(clients))], ips[rng.IntN(len(ips))]
			switch r := rng.IntN(10); {
			case r < 2:
				clock.Advance(time.Duration(rng.IntN(1500)) * time.Millisecond)
			case r < 7:
				require.NoError(t, db.Fail(ctx, client, ip))
				require.NoError(t, mem.Fail(ctx, client, ip))
			}
			want, err := mem.Check(ctx, client, ip)
			require.NoError(t, err)
			got, err := db.Check(ctx, client, ip)
			require.NoError(t, err)
			require.Equal(t, want, got, "step %d: Check(%q, %q)", step, client, ip)
			if got > 0 {
				locked++
			}
		}
		assert.Greater(t, locked, 100, "the script must reach lockouts often")
	})
}

// TestLimiterCleanup checks that rows of refilled buckets are deleted, in
// batches, by Cleanup and by Fail once per CleanupInterval, and that
// rows of buckets still refilling are kept.
func TestLimiterCleanup(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		l := e.newLimiter(t, prefix, clock, sqlstore.LimiterConfig{CleanupInterval: time.Minute, CleanupBatch: 4})
		fail := func(ip string) {
			t.Helper()
			require.NoError(t, l.Fail(ctx, "svc", ip))
		}

		fail("192.0.2.1") // the first Fail cleans up (nothing yet), the next is due in a minute
		fail("192.0.2.2")
		fail("192.0.2.3")
		assert.Equal(t, 6, e.limitRows(t, prefix), "a row per client and address, and per address")
		clock.Advance(30 * time.Second)
		fail("192.0.2.4")
		assert.Equal(t, 8, e.limitRows(t, prefix), "no cleanup before the interval")

		clock.Advance(31 * time.Second) // all eight rows have refilled
		fail("192.0.2.5")
		assert.Equal(t, 8-4+2, e.limitRows(t, prefix), "one batch deleted")
		fail("192.0.2.5")
		assert.Equal(t, 2, e.limitRows(t, prefix), "a full batch makes the next Fail clean again")
		fail("192.0.2.5")
		assert.Equal(t, 2, e.limitRows(t, prefix), "buckets still refilling are kept")

		n, err := l.Cleanup(ctx)
		require.NoError(t, err)
		assert.Zero(t, n)
		clock.Advance(12*time.Second*3 - time.Microsecond) // three failures take 36s to forgive
		n, err = l.Cleanup(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(1), n, "the address's row has refilled, the client's has not")
		clock.Advance(time.Microsecond)
		n, err = l.Cleanup(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(1), n)
		assert.Zero(t, e.limitRows(t, prefix))

		for range 4 {
			fail("192.0.2.5")
		}
		d, err := l.Check(ctx, "svc", "192.0.2.5")
		require.NoError(t, err)
		assert.Zero(t, d, "a deleted row is a full bucket")
	})
}

// TestLimiterConcurrentFailures has replicas record failures of one
// client and of others from one address at once: none may be lost, and
// none may fail (a deadlock between upserts would).
func TestLimiterConcurrentFailures(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		const workers, each = 8, 20
		cfg := sqlstore.LimiterConfig{
			ClientIPBurst: workers * each, ClientIPEvery: time.Hour,
			IPBurst: 2 * workers * each, IPEvery: time.Hour,
			TablePrefix: prefix, Now: clock.Now,
		}
		e.newLimiter(t, prefix, clock, cfg) // migrates
		var wg sync.WaitGroup
		for w := range workers {
			l, err := sqlstore.NewLimiter(e.open(t), e.dialect, cfg)
			require.NoError(t, err)
			wg.Go(func() {
				for range each {
					assert.NoError(t, l.Fail(ctx, "shared", "192.0.2.1"))
					assert.NoError(t, l.Fail(ctx, fmt.Sprint("own-", w), "192.0.2.1"))
				}
			})
		}
		wg.Wait()
		l, err := sqlstore.NewLimiter(e.db, e.dialect, cfg)
		require.NoError(t, err)
		defer l.Close()
		// Every bucket is exactly empty if and only if no failure was
		// lost: it waits one interval.
		for _, client := range []string{"shared", "own-0", "someone-else"} {
			d, err := l.Check(ctx, client, "192.0.2.1")
			require.NoError(t, err)
			assert.Equal(t, time.Hour, d, "Check(%q)", client)
		}
	})
}

// TestLimiterConcurrentCleanups has replicas record failures while their
// clock runs ahead, so that most failures also clean up rows that others
// are updating: no statement may fail, cleanups included.
func TestLimiterConcurrentCleanups(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		var logs syncBuffer
		cfg := sqlstore.LimiterConfig{
			TablePrefix: prefix, Now: clock.Now, CleanupBatch: 5,
			Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		}
		e.newLimiter(t, prefix, clock, cfg) // migrates
		const workers, each = 16, 150
		var wg sync.WaitGroup
		for w := range workers {
			l, err := sqlstore.NewLimiter(e.open(t), e.dialect, cfg)
			require.NoError(t, err)
			t.Cleanup(func() { l.Close() })
			wg.Go(func() {
				for i := range each {
					ip := fmt.Sprintf("10.0.%d.%d", i%7, (i*w)%13)
					assert.NoError(t, l.Fail(t.Context(), fmt.Sprint("c", (i+w)%11), ip))
					_, err := l.Check(t.Context(), fmt.Sprint("c", i%5), ip)
					assert.NoError(t, err)
					if i%20 == 0 {
						clock.Advance(time.Minute + time.Second)
					}
				}
			})
		}
		wg.Wait()
		assert.Empty(t, logs.String(), "cleanups that failed")
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

// TestLimiterDatabaseErrors checks that Check and Fail report a database
// they cannot use, and recover once the tables exist.
func TestLimiterDatabaseErrors(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		l, err := sqlstore.NewLimiter(e.db, e.dialect, sqlstore.LimiterConfig{TablePrefix: prefix})
		require.NoError(t, err)
		defer l.Close()
		_, err = l.Check(ctx, "svc", "192.0.2.1")
		require.Error(t, err, "no table yet")
		require.Error(t, l.Fail(ctx, "svc", "192.0.2.1"))

		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		require.NoError(t, l.Fail(ctx, "svc", "192.0.2.1"))
		_, err = l.Check(ctx, "svc", "192.0.2.1")
		require.NoError(t, err)

		db := e.open(t)
		closed, err := sqlstore.NewLimiter(db, e.dialect, sqlstore.LimiterConfig{TablePrefix: prefix})
		require.NoError(t, err)
		require.NoError(t, db.Close())
		_, err = closed.Check(ctx, "svc", "192.0.2.1")
		require.Error(t, err)
		require.Error(t, closed.Fail(ctx, "svc", "192.0.2.1"))
		_, err = closed.Cleanup(ctx)
		require.Error(t, err)

		require.NoError(t, l.Close())
		_, err = l.Check(ctx, "svc", "192.0.2.1")
		require.Error(t, err, "after Close")
		require.NoError(t, l.Close(), "second Close")
	})
}

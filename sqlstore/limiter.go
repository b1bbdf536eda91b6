package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/m2mauth/m2mauth"
)

// maxAddrKeyLen bounds an address key; the token handler's longest is an
// IPv6 prefix such as "2001:db8:1:2:3:4:5:6/128" (43 bytes). MySQL stores
// them as VARBINARY(64).
const maxAddrKeyLen = 64

// Polling while a bucket's attempts are all lent to reservations in
// flight: the first pause, and the longest. Each pause is drawn between
// half and all of the current bound, which doubles after each.
const (
	pollMin = 2 * time.Millisecond
	pollMax = 50 * time.Millisecond
)

// LimiterConfig holds the tunables of a [Limiter]. The limits and their
// defaults are those of [m2mauth.RateLimiterConfig]; every zero value is
// a working default. Every replica sharing the tables should use the
// same limits.
type LimiterConfig struct {
	// ClientIPBurst is the number of failures allowed in a row for one
	// client id from one address, and of its attempts in flight at once.
	// Default: 5.
	ClientIPBurst int
	// ClientIPEvery is the time it takes to forgive one failure for a
	// client id and address, at least 1ms, kept to the microsecond.
	// Default: 12s (a full bucket in a minute).
	ClientIPEvery time.Duration
	// IPBurst is the number of failures allowed in a row from one address,
	// whatever client ids it tries. Default: 20.
	IPBurst int
	// IPEvery is the time it takes to forgive one failure from an
	// address, at least 1ms, kept to the microsecond. Default: 3s (a full
	// bucket in a minute).
	IPEvery time.Duration
	// KnownWindow is how long after a client authenticated from an
	// address its requests from there are exempt from the address's
	// bucket (its own bucket still applies), at least 1ms. Default: 24h.
	KnownWindow time.Duration
	// ReservationTimeout is how long the reservations of a bucket count
	// as in flight after the last one was granted, at least 1ms; for
	// each bucket it is cut to the time the bucket takes to refill
	// (burst times interval). It should exceed the longest time between
	// a Reserve and its Release, which the token handler bounds by about
	// twice its StoreTimeout. Past it, the reservations of a replica that
	// died mid-request stop holding the bucket's attempts in flight;
	// their tokens stay taken, as failures, until the bucket refills.
	// Default: 30s.
	ReservationTimeout time.Duration
	// TablePrefix is the prefix of the <prefix>rate_limits table, the
	// same as the [Config.TablePrefix] of the [Store] whose
	// [Store.Migrate] created it. Default: [DefaultTablePrefix].
	TablePrefix string
	// Now is the clock. Replicas compare times they read from their own
	// clocks, so their clocks should agree to well within a second.
	// Default: [time.Now].
	Now func() time.Time
	// CleanupInterval is how often, by Now, a call to [Limiter.Release]
	// also deletes rows that mean no more than no row; at least 1ms. The
	// first Release of a Limiter cleans up. Default: 1m.
	CleanupInterval time.Duration
	// CleanupBatch bounds the rows one cleanup deletes; when a cleanup
	// finds that many, the next Release cleans up again. Default: 1000.
	CleanupBatch int
	// Logger receives the errors of cleanups, which do not fail the
	// Release that ran them. Default: [slog.Default].
	Logger *slog.Logger
}

// Limiter is a [m2mauth.Limiter] that keeps its buckets in the
// <prefix>rate_limits table (created by [Store.Migrate]), so that every
// replica of a service sharing the database counts the same attempts: at
// most ClientIPBurst guesses at one client's secret from one address are
// verified, at once or in a row, however many requests arrive at however
// many replicas (RFC 6749 §10.10). Set it as the Limiter of each
// replica's [m2mauth.TokenHandlerConfig].
//
// It makes the decisions of [m2mauth.RateLimiter], in the database: the
// same buckets and limits, the same exemption of a client known at an
// address from the address's bucket, the same waits, and the same tokens
// taken from the address by a refused attempt. Given the same calls, one
// after the other, and the same clock, both limiters answer alike. Times
// are kept to the microsecond.
//
// # Reservations
//
// Each row holds one token bucket, as the instant it is full again
// (refilled_at), and counts the reservations in flight that hold its
// tokens (pending). [Limiter.Reserve] takes a token from the client's
// bucket, and from the address's unless the client is known there, when
// it grants an attempt; [Limiter.Release] leaves the tokens of a failed
// attempt taken, and gives back those of an authenticated or abandoned
// one. So an attempt in flight counts exactly as a failure does: no two
// attempts are granted on one token, and a replica that dies mid-request
// leaves its attempts counted as failures, which the buckets forgive as
// they refill. A failure is forgiven counting from when it was granted,
// where the in-memory limiter counts from when it failed. A grant also
// needs fewer than the burst of reservations in flight, so no more than
// the burst of attempts are verified at once, however fast tokens come
// back. The row of a client id and address also records when the client
// last authenticated from there (authenticated_at), and how many of its
// reservations hold a token of the address's row (pending_addr), so that
// Release gives back to the address only what was taken from it.
//
// The count of reservations in flight tells a bucket emptied by failures,
// where Reserve refuses the attempt and says how long to wait, from one
// whose tokens are lent to attempts that may yet give them back, where it
// waits until they do, or until its context ends: a client sending many
// requests at once with the right secret is slowed down, not refused.
// Reserve waits first, in memory, for one of ClientIPBurst slots of the
// client id and address in the process, so that requests queue in order
// and the database sees no more of the process's attempts at once than
// it could grant; a slot
// holder then polls with plain reads, pausing from 2ms up to 50ms between
// them, and runs its transaction again once a read shows room. Replicas
// do not tell one another of their releases: a wait for another
// replica's attempts lasts until the next poll.
//
// A count lapses ReservationTimeout after the bucket's last grant, or
// after the time the bucket takes to refill if that is shorter, and then
// no Release gives its tokens back. A replica that died mid-request
// leaves a count that no Release lowers: the bucket waits on it, or lends
// fewer attempts at once, until it lapses, so never longer than the
// bucket takes to refill; its tokens meanwhile count as failures. A
// Reserve whose transaction commits but whose caller never learns it (a
// broken connection) leaves the same.
//
// # Transactions
//
// Reserve and Release are each one short transaction: insert the two rows
// if missing and lock them, read them, decide in Go, write both with one
// UPDATE, commit. The rows are locked in primary key order, the address's
// row first, by one statement that inserts or locks them in that order
// (PostgreSQL: INSERT ... ON CONFLICT DO UPDATE ... RETURNING; MySQL:
// INSERT ... ON DUPLICATE KEY UPDATE, then SELECT ... FOR UPDATE). No
// transaction holds the client's row while it waits for the address's,
// so the transactions of any number of replicas take turns on a row; on
// MySQL no locking read of a missing row takes a gap lock that an insert
// would wait for. Should the database still roll one back as a
// deadlock's victim or for a serialization failure (InnoDB has, under
// load, with cleanups deleting beside them), it is run again, after a
// short random pause, up to 8 times. On SQLite the transaction begins
// with that insert, a write, so it holds the database write lock from
// its first statement and never upgrades from a read lock (which fails
// at once with SQLITE_BUSY, whatever the busy timeout, when another
// connection wrote in between). The Limiter runs its SQLite writes one at
// a time, so its goroutines queue in order rather than poll for the lock
// in SQLite's busy handler, which favours no one and can starve a
// waiter past its busy timeout; when the lock stays busy past the
// connection's busy_timeout (another process writing), it tries again
// until the context ends, and then returns an error wrapping the
// context's, which the token handler answers with 503 and Retry-After.
// Cleanups never wait for a row while holding another (see
// [Limiter.Cleanup]).
//
// # Fast paths
//
// Most attempts are a client's, with the right secret, from an address
// where it authenticated within KnownWindow: the address's bucket does
// not apply to it, so only the client's row changes. For them Reserve
// and Release each first try one statement on its own, an UPDATE of
// that row whose conditions are those under which the transaction would
// grant the attempt, or give its token back with none of the address's
// held, and whose assignments are what the transaction would write
// (PostgreSQL's also turns off the synchronous commit). The row is
// locked and read by the statement itself, so the decision is as atomic
// as the transaction's. When the statement changes no row (a client not
// known there, a bucket without room, a failure, reservations in flight
// that hold the address's tokens) the transaction runs as above. So an
// authenticated token request costs the database two statements besides
// the client lookup, not two transactions; an attempt that is not known
// costs one statement more than the transactions. The fast path reads
// the clock before its statement waits for the row, where the
// transaction reads it with the row locked; a statement that waited
// decides as of when it was sent, a lock wait earlier.
//
// The Limiter is a [m2mauth.ClientLimiter]. On PostgreSQL and MySQL,
// given the [Store] of the token handler, on the same *sql.DB and table
// prefix, the statement that grants an attempt also reads its client, as
// [Store.Client] does, so that the reservation and the lookup are one
// round trip (the client is then read before a reservation that takes
// the transaction is decided, and used only once it is granted). MySQL
// has no statement that both updates and returns rows, so there the two
// are a procedure, which [Store.Migrate] creates; the database user of
// the servers needs the EXECUTE privilege on it (ALL PRIVILEGES on the
// database includes it). Without the procedure or the privilege the
// Limiter sends the two statements, logs a warning, and tries the
// procedure again a minute later. On SQLite, as with any other store,
// the lookup follows the reservation.
//
// A Limiter is safe for concurrent use, by many goroutines and by many
// processes sharing the database.
type Limiter struct {
	db                        *sql.DB
	begin                     string   // PostgreSQL only: run first in each transaction
	ensure, lock, peek, write lazyStmt // ensure: MySQL and SQLite only
	fastGrant, fastGive       lazyStmt
	grantClient               lazyStmt // PostgreSQL and MySQL
	grantClientArgs           []int
	// noGrantClient, on MySQL, is the unix microsecond until which
	// grantClient is not tried: the procedure was missing or not allowed.
	noGrantClient atomic.Int64
	// dialect and prefix tell the Store whose clients grantClient reads.
	dialect             Dialect
	prefix              string
	cleanup, cleanupRow lazyStmt // cleanupRow: MySQL only
	now                 func() time.Time
	logger              *slog.Logger
	cleanupEvery, batch int64 // microseconds; rows
	client, addr        bucketLimits
	knownWindow         int64 // microseconds
	// nextCleanup is the unix microsecond from which Release cleans up.
	nextCleanup atomic.Int64
	slots       pairSlots
	// writer, on SQLite only, holds a token while one of the Limiter's
	// write transactions runs.
	writer chan struct{}
}

var _ m2mauth.ClientLimiter = (*Limiter)(nil)

// bucketLimits are the limits of one kind of bucket, in microseconds.
type bucketLimits struct {
	every, burst int64
	// slack is (burst-1)*every: a bucket holds a token while it is full
	// again within slack.
	slack int64
	// lease is how long reservations count after a grant.
	lease int64
}

// NewLimiter returns a limiter that keeps its buckets in db, speaking
// dialect. Like [New] it checks its arguments now and does not touch the
// database; the table must have been created by [Store.Migrate]. db stays
// the caller's to configure and to close.
func NewLimiter(db *sql.DB, dialect Dialect, cfg LimiterConfig) (*Limiter, error) {
	prefix, q, err := prepare(db, dialect, cfg.TablePrefix)
	if err != nil {
		return nil, err
	}
	positive := func(n *int, d int, name string) error {
		if *n == 0 {
			*n = d
		}
		if *n < 1 {
			return fmt.Errorf("sqlstore: LimiterConfig.%s must be positive", name)
		}
		return nil
	}
	every := func(t *time.Duration, d time.Duration, name string) error {
		if *t == 0 {
			*t = d
		}
		if *t < time.Millisecond {
			return fmt.Errorf("sqlstore: LimiterConfig.%s must be at least 1ms", name)
		}
		return nil
	}
	if err := errors.Join(
		positive(&cfg.ClientIPBurst, 5, "ClientIPBurst"), every(&cfg.ClientIPEvery, 12*time.Second, "ClientIPEvery"),
		positive(&cfg.IPBurst, 20, "IPBurst"), every(&cfg.IPEvery, 3*time.Second, "IPEvery"),
		every(&cfg.KnownWindow, 24*time.Hour, "KnownWindow"),
		every(&cfg.ReservationTimeout, 30*time.Second, "ReservationTimeout"),
		every(&cfg.CleanupInterval, time.Minute, "CleanupInterval"), positive(&cfg.CleanupBatch, 1000, "CleanupBatch"),
	); err != nil {
		return nil, err
	}
	// A bucket spans burst*every, and a row lives up to a window or a
	// reservation timeout; a century leaves room to add any of them to
	// any unix time in microseconds.
	const maxSpan = 100 * 365 * 24 * time.Hour
	if cfg.ClientIPEvery > maxSpan/time.Duration(cfg.ClientIPBurst) || cfg.IPEvery > maxSpan/time.Duration(cfg.IPBurst) {
		return nil, errors.New("sqlstore: LimiterConfig burst times interval exceeds a century")
	}
	if cfg.KnownWindow > maxSpan || cfg.ReservationTimeout > maxSpan {
		return nil, errors.New("sqlstore: LimiterConfig.KnownWindow and ReservationTimeout must not exceed a century")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	limits := func(burst int, every time.Duration) bucketLimits {
		e := every.Microseconds()
		return bucketLimits{every: e, burst: int64(burst), slack: int64(burst-1) * e,
			lease: min(cfg.ReservationTimeout.Microseconds(), int64(burst)*e)}
	}
	l := &Limiter{
		db:              db,
		begin:           q.limitBegin,
		ensure:          lazyStmt{db: db, query: q.limitEnsure},
		lock:            lazyStmt{db: db, query: q.limitLock},
		peek:            lazyStmt{db: db, query: q.limitPeek},
		write:           lazyStmt{db: db, query: q.limitWrite},
		fastGrant:       lazyStmt{db: db, query: q.limitFastGrant},
		fastGive:        lazyStmt{db: db, query: q.limitFastGive},
		grantClient:     lazyStmt{db: db, query: q.limitGrantClient},
		grantClientArgs: q.grantClientArgs,
		dialect:         dialect,
		prefix:          prefix,
		cleanup:         lazyStmt{db: db, query: q.limitCleanup},
		cleanupRow:      lazyStmt{db: db, query: q.limitCleanupRow},
		now:             cfg.Now,
		logger:          cfg.Logger,
		cleanupEvery:    cfg.CleanupInterval.Microseconds(),
		batch:           int64(cfg.CleanupBatch),
		client:          limits(cfg.ClientIPBurst, cfg.ClientIPEvery),
		addr:            limits(cfg.IPBurst, cfg.IPEvery),
		knownWindow:     cfg.KnownWindow.Microseconds(),
		slots:           pairSlots{n: cfg.ClientIPBurst},
	}
	if dialect == SQLite {
		l.writer = make(chan struct{}, 1)
	}
	l.nextCleanup.Store(math.MinInt64)
	return l, nil
}

// Reserve implements [m2mauth.Limiter.Reserve]: it takes a token from the
// buckets of (clientID, ip) and returns zero, or returns how long until
// the attempt could be granted, having taken nothing from the client's
// bucket. It waits while the buckets' tokens are lent to reservations in
// flight (see [Limiter]), until ctx ends. Any client id that no client
// can have shares the bucket of [m2mauth.LimiterInvalidClientID]. It
// returns an error, and the token handler a server error, when the
// database fails or ip is longer than 64 bytes, is not valid UTF-8 or
// holds a NUL byte.
func (l *Limiter) Reserve(ctx context.Context, clientID, ip string) (time.Duration, error) {
	wait, _, err := l.reserveAttempt(ctx, clientID, ip, nil)
	return wait, err
}

// ReserveClient implements [m2mauth.ClientLimiter]: it is Reserve, and
// then store.Client when Reserve grants the attempt. When store is a
// [Store] on the same *sql.DB, dialect (PostgreSQL or MySQL) and table
// prefix as l, the client is read by the statement of the fast path (see
// [Limiter]) instead, so that the attempt of a known client and its
// lookup are one round trip.
func (l *Limiter) ReserveClient(ctx context.Context, store m2mauth.ClientStore, clientID, ip string) (time.Duration, *m2mauth.Client, error, error) {
	s, _ := store.(*Store)
	if s != nil && (l.grantClient.query == "" || s.db != l.db || s.dialect != l.dialect || s.prefix != l.prefix) {
		s = nil
	}
	wait, read, err := l.reserveAttempt(ctx, clientID, ip, s)
	if err != nil || wait > 0 {
		return wait, nil, nil, err
	}
	if read != nil {
		return 0, read.c, read.err, nil
	}
	c, lerr := store.Client(ctx, clientID)
	return 0, c, lerr, nil
}

// clientRead is a lookup of [Store.Client] made by grantClient.
type clientRead struct {
	c   *m2mauth.Client
	err error
}

// reserveAttempt is Reserve. With a store s, it reads the client with
// the fast path's statement, and returns what it read (or nil when it
// read nothing).
func (l *Limiter) reserveAttempt(ctx context.Context, clientID, ip string, s *Store) (time.Duration, *clientRead, error) {
	if err := checkAddrKey(ip); err != nil {
		return 0, nil, err
	}
	id := limitID(clientID)
	k := limitKey{id, ip}
	if err := l.slots.acquire(ctx, k); err != nil {
		return 0, nil, fmt.Errorf("sqlstore: rate limit reserve: %w", err)
	}
	var (
		wait time.Duration
		read *clientRead
		done bool
		at   int64 // the time of the grant, as the clock read it
		err  error
	)
	grant := l.grantArgs(id, ip)
	if s != nil {
		read, done, at, err = l.grantReading(ctx, s, id, grant)
	} else {
		done, at, err = l.fast(ctx, &l.fastGrant, grant)
	}
	if err == nil && !done {
		var lent bool
		wait, lent, at, err = l.reserve(ctx, id, ip)
		if lent {
			// The attempt waited for others, maybe seconds: the client
			// read before could be stale by the grant (a secret
			// removed, the client disabled meanwhile), so it is read
			// again.
			read = nil
		}
	}
	if err != nil || wait > 0 {
		l.slots.release(k)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("sqlstore: rate limit reserve: %w", err)
	}
	if wait == 0 {
		l.slots.granted(k, at)
	}
	return wait, read, nil
}

// grantArgs returns the arguments of limitFastGrant for the attempt of
// id from ip, as of now.
func (l *Limiter) grantArgs(id, ip string) func(now int64) []any {
	return func(now int64) []any {
		c := l.client
		return []any{now, c.every, now + c.burst*c.every, l.knownWindow, now + c.lease,
			now, now, now + c.lease, now, c.every, now + c.burst*c.every,
			ip, id, now - l.knownWindow, now + c.slack, now, c.burst}
	}
}

// grantReading runs grantClient, the fast path that grants an attempt of
// id and reads the client id of s in one statement, with args as fast
// does. It reports what it read, whether it granted the attempt, and the
// time it granted it as of.
func (l *Limiter) grantReading(ctx context.Context, s *Store, id string, args func(now int64) []any) (*clientRead, bool, int64, error) {
	now := l.now().UnixMicro()
	if now < l.noGrantClient.Load() {
		return l.grantThenRead(ctx, args)
	}
	picked := append(args(now), id, id, id)
	if l.grantClientArgs != nil {
		// In place: the indexes ascend, so each is at least its position.
		for i, j := range l.grantClientArgs {
			picked[i] = picked[j]
		}
		picked = picked[:len(l.grantClientArgs)]
	}
	var (
		cs      []*m2mauth.Client
		granted int64
	)
	stmt, err := l.grantClient.get(ctx)
	if err == nil {
		err = l.writing(ctx, func() error {
			rows, err := stmt.QueryContext(ctx, picked...)
			if err != nil {
				return err
			}
			cs, err = decodeClients(rows, &granted)
			return err
		})
	}
	if noProcedure(err) {
		if l.noGrantClient.Swap(now+time.Minute.Microseconds()) == 0 {
			l.logger.Warn("sqlstore: the limiter cannot call its procedure, so a token request takes one round trip more: run Migrate with a user that may create routines, and grant the servers' user EXECUTE on the procedure", "error", err)
		}
		return l.grantThenRead(ctx, args)
	}
	if err != nil {
		return nil, false, 0, err
	}
	if len(cs) == 0 {
		return &clientRead{err: notFound(id)}, granted == 1, now, nil
	}
	return &clientRead{c: cs[0]}, granted == 1, now, nil
}

// grantThenRead is grantReading without grantClient: the fast path, and
// the lookup left to the caller.
func (l *Limiter) grantThenRead(ctx context.Context, args func(now int64) []any) (*clientRead, bool, int64, error) {
	done, at, err := l.fast(ctx, &l.fastGrant, args)
	return nil, done, at, err
}

// noProcedure reports whether err is MySQL's refusal of a CALL of a
// procedure that does not exist (error 1305) or that the user may not
// execute (1370).
func noProcedure(err error) bool {
	return mysqlError(err, 1305, 1370)
}

// mysqlError reports whether err is, or wraps, a MySQL or MariaDB error
// with one of the numbers codes, by the "Error N" its driver's errors
// start with, which is all it exposes without importing it.
func mysqlError(err error, codes ...int) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	for _, c := range codes {
		if strings.Contains(msg, "Error "+strconv.Itoa(c)+" ") || strings.Contains(msg, "Error "+strconv.Itoa(c)+":") {
			return true
		}
	}
	return false
}

// reserve runs reservation transactions on the rows of (id, ip), polling
// between them while the buckets are lent out, until one grants or
// refuses. lent reports that it waited for attempts in flight; at is the
// time of the grant.
func (l *Limiter) reserve(ctx context.Context, id, ip string) (wait time.Duration, lent bool, at int64, err error) {
	var b backoff
	for {
		var v verdict
		var after int64
		err := l.update(ctx, id, ip, func(a, p *limitRow, now int64) {
			v, after = l.reserveRows(a, p, now)
			at = now
		})
		if err != nil {
			return 0, lent, 0, err
		}
		switch v {
		case granted:
			return 0, lent, at, nil
		case refused:
			return waitDuration(after), lent, 0, nil
		}
		// Lent out: read, without locking, until a transaction may
		// find room.
		lent = true
		for v == lentOut {
			if err := b.wait(ctx); err != nil {
				return 0, lent, 0, err
			}
			a, p, err := l.peekRows(ctx, id, ip)
			if err != nil {
				return 0, lent, 0, err
			}
			now := l.now().UnixMicro()
			a.lapse(now)
			p.lapse(now)
			v, _ = l.reserveRows(&a, &p, now)
		}
	}
}

// Release implements [m2mauth.Limiter.Release]. For
// [m2mauth.OutcomeFailed] the tokens of the reservation stay taken (the
// address's too: a client known at the address still counts its failure
// against it); for [m2mauth.OutcomeAuthenticated] and
// [m2mauth.OutcomeAbandoned] they are given back, and the first also
// records that the client authenticated from the address. Any other
// outcome is recorded as a failure, and reported as an error. Once every
// CleanupInterval it then runs [Limiter.Cleanup]; a cleanup's error is
// logged, not returned.
func (l *Limiter) Release(ctx context.Context, clientID, ip string, o m2mauth.Outcome) error {
	if err := checkAddrKey(ip); err != nil {
		return err
	}
	id := limitID(clientID)
	k := limitKey{id, ip}
	// No later than the grant of the reservation, on this replica's
	// clock: a bucket full as of then is full now, whatever the clock
	// reads now (see limitRow.settle).
	grant := l.slots.releasing(k)
	var done bool
	var err error
	if o == m2mauth.OutcomeAuthenticated || o == m2mauth.OutcomeAbandoned {
		authenticated := 0
		if o == m2mauth.OutcomeAuthenticated {
			authenticated = 1
		}
		done, _, err = l.fast(ctx, &l.fastGive, func(now int64) []any {
			c, full := l.client, max(now, grant)
			return []any{now, c.every, full, now, c.every, authenticated, now + l.knownWindow, l.knownWindow, now,
				authenticated, now, now, c.every, full, now, c.every, now, ip, id, now}
		})
	}
	if err == nil && !done {
		err = l.update(ctx, id, ip, func(a, p *limitRow, now int64) {
			l.releaseRows(a, p, now, max(now, grant), o)
		})
	}
	l.slots.release(k)
	if err != nil {
		return fmt.Errorf("sqlstore: rate limit release: %w", err)
	}
	switch o {
	case m2mauth.OutcomeFailed, m2mauth.OutcomeAuthenticated, m2mauth.OutcomeAbandoned:
	default:
		return fmt.Errorf("sqlstore: rate limit release: unknown outcome %d, counted as a failure", o)
	}
	l.maybeCleanup(ctx, l.now().UnixMicro())
	return nil
}

// limitRow is one row of rate_limits, times in unix microseconds.
type limitRow struct {
	// refilledAt is when the bucket is full again.
	refilledAt int64
	// pending counts reservations in flight; for a row of a client id,
	// pendingAddr counts those of them that took a token of the
	// address's row too. Both count until leaseUntil.
	pending, pendingAddr, leaseUntil int64
	// authAt is when the client last authenticated (0: never).
	authAt int64
}

// lapse forgets the reservations of r if they have outlived their lease.
func (r *limitRow) lapse(now int64) {
	if r.leaseUntil <= now {
		r.pending, r.pendingAddr = 0, 0
	}
}

// settle marks the bucket of r, if it is full at full, as full at any
// time: refilled_at 0 rather than a time. A full bucket written with the
// time it filled up would, on a clock that then steps back (NTP, a
// virtual machine resumed), or on a replica whose clock runs behind,
// look short of tokens by the step: a client that never failed would be
// locked out for as long.
//
// full is now, or, when later, what this replica's clock read at the
// grant of a reservation in flight, no more than it read at the grant of
// the one being released (see pairSlots.releasing): the grant came
// first, so a bucket full as of then is full now, whatever the clock
// reads now. A success given back on a clock that stepped back since its
// grant would otherwise leave the grant's time as refilled_at, and the
// same lockout.
// (The time is this replica's own reading, never one derived from
// another replica's configuration or row, nor one read after the grant.)
func (r *limitRow) settle(full int64) {
	if r.refilledAt <= full {
		r.refilledAt = 0
	}
}

// deficit is how long, from now, until a bucket is full: the bucket
// holds burst - deficit/every tokens, and at least one while deficit <=
// slack.
func deficit(r *limitRow, now int64) int64 { return max(r.refilledAt-now, 0) }

// take removes one token from a bucket, or empties it if it holds less.
func (b bucketLimits) take(r *limitRow, now int64) {
	r.refilledAt = min(max(r.refilledAt, now)+b.every, now+b.burst*b.every)
}

// verdict is the outcome of a reservation transaction.
type verdict int

const (
	granted verdict = iota
	refused
	// lentOut: the attempt would be granted, but every token it needs is
	// lent to a reservation in flight.
	lentOut
)

// reserveRows decides a reservation on the address's row a and the client
// row p, whose reservations have lapsed as of now, and changes them as it
// decides. wait is how long a refused attempt waits, in microseconds.
//
// It follows [m2mauth.RateLimiter.Reserve], whose buckets count failures
// only: its tokens are a row's plus its reservations in flight, so a
// client's bucket refuses when that holds less than a token, and the
// wait is until it holds one.
func (l *Limiter) reserveRows(a, p *limitRow, now int64) (v verdict, wait int64) {
	c, ad := l.client, l.addr
	known := p.authAt != 0 && now-p.authAt < l.knownWindow
	pw := deficit(p, now) - p.pending*c.every - c.slack
	aw := deficit(a, now) - a.pending*ad.every - ad.slack
	switch {
	case pw > 0:
		// Locked out: the refused attempt still counts against the
		// address.
		if !known && aw <= 0 {
			ad.take(a, now)
		}
		return refused, pw
	case !known && aw > 0:
		return refused, aw
	case deficit(p, now) <= c.slack && p.pending < c.burst &&
		(known || deficit(a, now) <= ad.slack && a.pending < ad.burst):
		c.take(p, now)
		p.pending++
		p.leaseUntil = now + c.lease
		if !known {
			p.pendingAddr++
			ad.take(a, now)
			a.pending++
			a.leaseUntil = now + ad.lease
		}
		return granted, 0
	}
	return lentOut, 0
}

// releaseRows ends a reservation on the rows a and p, whose reservations
// have lapsed as of now. Tokens are given back only to a row whose count
// shows a reservation in flight: giving back too little is safe, too
// much is not.
func (l *Limiter) releaseRows(a, p *limitRow, now, full int64, o m2mauth.Outcome) {
	held := p.pending > 0
	if held {
		p.pending--
	}
	heldAddr, addrBack := p.pendingAddr > 0, false
	if heldAddr {
		p.pendingAddr--
		if a.pending > 0 {
			a.pending--
			addrBack = true
		}
	}
	switch o {
	case m2mauth.OutcomeAuthenticated, m2mauth.OutcomeAbandoned:
		if held {
			p.refilledAt -= l.client.every
		}
		if addrBack {
			a.refilledAt -= l.addr.every
		}
		if o == m2mauth.OutcomeAuthenticated {
			p.authAt = now
		}
		// As limitFastGive does.
		p.settle(full)
		if addrBack {
			a.settle(full)
		}
	default:
		// A failure: its tokens stay taken. One whose reservation took
		// none from the address (the client was known there) takes
		// one now.
		if !heldAddr {
			l.addr.take(a, now)
		}
	}
}

// idleAt returns when r means no more than no row: its bucket full,
// nothing in flight, and its client no longer known.
func (l *Limiter) idleAt(r *limitRow) int64 {
	t := r.refilledAt
	if r.authAt != 0 {
		t = max(t, r.authAt+l.knownWindow)
	}
	if r.pending > 0 || r.pendingAddr > 0 {
		t = max(t, r.leaseUntil)
	}
	return t
}

// update runs, in one transaction, f on the two rows of (id, ip) as of
// now, locked and with their lapsed reservations forgotten, and writes
// them back if f changed them.
func (l *Limiter) update(ctx context.Context, id, ip string, f func(a, p *limitRow, now int64)) error {
	return l.writing(ctx, func() error {
		lock, err := l.lock.get(ctx)
		if err != nil {
			return err
		}
		write, err := l.write.get(ctx)
		if err != nil {
			return err
		}
		var ensure *sql.Stmt
		if l.ensure.query != "" {
			if ensure, err = l.ensure.get(ctx); err != nil {
				return err
			}
		}
		tx, err := l.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()

		if l.begin != "" {
			if _, err := tx.ExecContext(ctx, l.begin); err != nil {
				return err
			}
		}
		if ensure != nil {
			if _, err := tx.StmtContext(ctx, ensure).ExecContext(ctx, ip, ip, id); err != nil {
				return err
			}
		}
		a, p, n, err := scanRows(tx.StmtContext(ctx, lock).QueryContext(ctx, ip, id))
		if err != nil {
			return err
		}
		if n != 2 {
			return fmt.Errorf("locked %d rate limit rows, not 2", n)
		}

		// The clock is read with the rows locked, so the transactions
		// on a row see it move forward (as far as replicas' clocks
		// agree).
		now := l.now().UnixMicro()
		a0, p0 := a, p
		a.lapse(now)
		p.lapse(now)
		f(&a, &p, now)
		if a != a0 || p != p0 {
			if _, err := tx.StmtContext(ctx, write).ExecContext(ctx,
				a.refilledAt, p.refilledAt, a.pending, p.pending, a.pendingAddr, p.pendingAddr,
				a.leaseUntil, p.leaseUntil, a.authAt, p.authAt, l.idleAt(&a), l.idleAt(&p),
				ip, id); err != nil {
				return err
			}
		}
		return commit(ctx, tx, l.dialect)
	})
}

// fast runs st, a fast path: one statement, on its own, that writes the
// client's row, with the arguments args returns for the clock as read
// just before it runs. It reports whether the statement changed the row;
// one that found no row it applies to changes nothing, and the caller
// then takes the transaction.
func (l *Limiter) fast(ctx context.Context, st *lazyStmt, args func(now int64) []any) (done bool, now int64, err error) {
	if st.query == "" {
		return false, 0, nil
	}
	stmt, err := st.get(ctx)
	if err != nil {
		return false, 0, err
	}
	var n int64
	err = l.writing(ctx, func() error {
		now = l.now().UnixMicro()
		res, err := stmt.ExecContext(ctx, args(now)...)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n == 1, now, err
}

// peekRows reads the rows of (id, ip) without a transaction; a missing
// row is an untouched bucket.
func (l *Limiter) peekRows(ctx context.Context, id, ip string) (a, p limitRow, err error) {
	stmt, err := l.peek.get(ctx)
	if err != nil {
		return a, p, err
	}
	a, p, _, err = scanRows(stmt.QueryContext(ctx, ip, id))
	return a, p, err
}

// scanRows reads the rows of limitLock or limitPeek: the address's (an
// empty client_id) into a, the other into p, and how many there were.
func scanRows(rows *sql.Rows, err error) (a, p limitRow, n int, _ error) {
	if err != nil {
		return a, p, 0, err
	}
	defer rows.Close()
	for rows.Next() {
		var id []byte
		var r limitRow
		if err := rows.Scan(&id, &r.refilledAt, &r.pending, &r.pendingAddr, &r.leaseUntil, &r.authAt); err != nil {
			return a, p, 0, err
		}
		if len(id) == 0 {
			a = r
		} else {
			p = r
		}
		n++
	}
	return a, p, n, rows.Err()
}

// writing runs f, which writes to the database. On SQLite it runs it
// alone among the Limiter's writes, which queue in order for their turn
// rather than poll for the database lock in SQLite's busy handler, and
// runs it again while it fails because the database is locked by
// another process, until ctx ends.
func (l *Limiter) writing(ctx context.Context, f func() error) error {
	if l.writer == nil {
		return retryConflicts(ctx, f)
	}
	select {
	case l.writer <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-l.writer }()
	// The busy handler has waited busy_timeout already; pause briefly
	// in case there is none.
	return runAgain(ctx, f, sqliteBusy, -1)
}

// sqliteBusy reports whether err is SQLite's SQLITE_BUSY, whose message,
// "database is locked", every driver passes on.
func sqliteBusy(err error) bool {
	return strings.Contains(err.Error(), "database is locked")
}

// maxConflictRetries bounds how often a transaction the database chose
// as a deadlock's victim is run again.
const maxConflictRetries = 8

// retryConflicts runs the transaction f, and runs it again, after a short
// random pause, while the database refuses it as a deadlock's victim or
// for a serialization failure: the database rolled it back whole, so
// running it again is what it asks for. The limiter's transactions lock
// their two rows in one order, but InnoDB can still pick a victim among
// them and a concurrent cleanup (its locks on the secondary index are
// not ours to order).
func retryConflicts(ctx context.Context, f func() error) error {
	return runAgain(ctx, f, txConflict, maxConflictRetries)
}

// runAgain runs f, and runs it again after a backoff while its error is
// one again reports, at most max times more (no bound when max is
// negative) and until ctx ends, when the error wraps ctx's.
func runAgain(ctx context.Context, f func() error, again func(error) bool, max int) error {
	var b backoff
	for try := 0; ; try++ {
		err := f()
		if err == nil || !again(err) || try == max {
			return err
		}
		if cerr := b.wait(ctx); cerr != nil {
			return fmt.Errorf("%w (%w)", err, cerr)
		}
	}
}

// backoff waits between polls or attempts: a random part of a pause that
// starts at pollMin and doubles up to pollMax.
type backoff struct{ pause time.Duration }

// wait waits out the next pause, or returns ctx's error when it ends
// first.
func (b *backoff) wait(ctx context.Context) error {
	b.pause = min(max(2*b.pause, pollMin), pollMax)
	d := b.pause/2 + rand.N(b.pause/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// txConflict reports whether err says the database rolled a transaction
// back to break a deadlock or for a serialization failure: SQLSTATE
// 40P01 or 40001 (PostgreSQL, through the driver's SQLState method;
// MySQL and MariaDB, error 1213 or 40001 in the message, which is all
// their driver exposes without importing it).
func txConflict(err error) bool {
	var st interface{ SQLState() string }
	if errors.As(err, &st) {
		switch st.SQLState() {
		case "40P01", "40001":
			return true
		}
		return false
	}
	msg := err.Error()
	return mysqlError(err, 1213) || strings.Contains(msg, "(40001)")
}

// waitDuration renders a wait in microseconds as [m2mauth.RateLimiter]
// does: rounded to the millisecond, at least one.
func waitDuration(us int64) time.Duration {
	d := (time.Duration(us) * time.Microsecond).Round(time.Millisecond)
	return max(d, time.Millisecond)
}

// maybeCleanup runs a cleanup if one is due at now; of calls that find
// it due at once, one runs it.
func (l *Limiter) maybeCleanup(ctx context.Context, now int64) {
	next := l.nextCleanup.Load()
	if now < next || !l.nextCleanup.CompareAndSwap(next, now+l.cleanupEvery) {
		return
	}
	_, more, err := l.cleanupAt(ctx, now)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			l.logger.LogAttrs(ctx, slog.LevelError, "sqlstore: rate limit cleanup failed", slog.Any("error", err))
		}
	case more:
		// Clean again on the next release.
		l.nextCleanup.Store(now)
	}
}

// Cleanup deletes up to CleanupBatch rows that mean no more than no row
// at all, and returns how many it deleted: rows whose bucket has refilled
// completely, with no reservation in flight (or only lapsed ones), and
// whose client has not authenticated from the address within
// KnownWindow. Each row says from when it is so (idle_at, indexed); a
// row is also kept while its bucket refills (refilled_at), which matters
// for rows a replica of an earlier release, unaware of idle_at, wrote
// during a rolling upgrade.
// [Limiter.Release] runs it every CleanupInterval, so the table holds
// about the buckets of the last few minutes' failures and the clients
// known at their addresses; a host may also run it from a scheduled job.
//
// On PostgreSQL and SQLite it is one DELETE; PostgreSQL's passes over rows
// that a transaction of the limiter holds (FOR UPDATE SKIP LOCKED). On
// MySQL it is a SELECT that locks nothing, then one DELETE by primary key
// per row found, which keeps a row that a transaction changed in between:
// a single DELETE through the index on idle_at would lock index entries
// before rows, the reverse of the limiter's transactions, and deadlock
// with them under load.
func (l *Limiter) Cleanup(ctx context.Context) (int64, error) {
	n, _, err := l.cleanupAt(ctx, l.now().UnixMicro())
	return n, err
}

// cleanupAt deletes up to a batch of rows that are idle by now. more
// reports that it found a full batch, so more rows may be waiting.
func (l *Limiter) cleanupAt(ctx context.Context, now int64) (n int64, more bool, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("sqlstore: rate limit cleanup: %w", err)
		}
	}()
	stmt, err := l.cleanup.get(ctx)
	if err != nil {
		return 0, false, err
	}
	if l.cleanupRow.query == "" {
		err = l.writing(ctx, func() error {
			res, err := stmt.ExecContext(ctx, now, l.batch)
			if err != nil {
				return err
			}
			n, err = res.RowsAffected()
			return err
		})
		return n, n >= l.batch, err
	}

	// MySQL: find the rows, then delete them one by one.
	rows, err := stmt.QueryContext(ctx, now, now, l.batch)
	if err != nil {
		return 0, false, err
	}
	var keys [][2]string
	for rows.Next() {
		var ip, id string
		if err := rows.Scan(&ip, &id); err != nil {
			rows.Close()
			return 0, false, err
		}
		keys = append(keys, [2]string{ip, id})
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return 0, false, err
	}
	if len(keys) == 0 {
		return 0, false, nil
	}
	del, err := l.cleanupRow.get(ctx)
	if err != nil {
		return 0, false, err
	}
	for _, k := range keys {
		// A row changed since it was found may no longer be idle, and
		// then stays.
		res, err := del.ExecContext(ctx, k[0], k[1], now, now)
		if err != nil {
			return n, false, err
		}
		m, err := res.RowsAffected()
		if err != nil {
			return n, false, err
		}
		n += m
	}
	return n, int64(len(keys)) >= l.batch, nil
}

// Close releases the Limiter's prepared statements; Reserve and Release
// return errors after it. It does not close the *sql.DB.
func (l *Limiter) Close() error {
	return errors.Join(l.ensure.close(), l.lock.close(), l.peek.close(), l.write.close(),
		l.fastGrant.close(), l.fastGive.close(), l.grantClient.close(), l.cleanup.close(), l.cleanupRow.close())
}

// limitKey names the bucket of a client id and address.
type limitKey struct{ id, ip string }

// pairSlots bounds the reservations of one client id and address that
// the process attempts or holds at once to n, its burst: no more can be
// granted, so the others wait in memory, in order, rather than each
// polling the database.
type pairSlots struct {
	n  int
	mu sync.Mutex
	m  map[limitKey]*slotQueue
}

// slotQueue holds the slots of one pair; refs counts the goroutines
// waiting for or holding one. grants holds a time for each reservation
// of the pair granted and not yet released: see pairSlots.releasing.
type slotQueue struct {
	ch     chan struct{}
	refs   int
	grants []int64
}

// acquire waits for a slot of k, until ctx ends. A nil error must be
// matched by a release.
func (s *pairSlots) acquire(ctx context.Context, k limitKey) error {
	s.mu.Lock()
	if s.m == nil {
		s.m = make(map[limitKey]*slotQueue)
	}
	q := s.m[k]
	if q == nil {
		q = &slotQueue{ch: make(chan struct{}, s.n)}
		s.m[k] = q
	}
	q.refs++
	s.mu.Unlock()
	select {
	case q.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		s.unref(k, q)
		return ctx.Err()
	}
}

// granted records that a reservation of k, which holds a slot, was
// granted at at, as the clock read it.
func (s *pairSlots) granted(k limitKey, at int64) {
	s.mu.Lock()
	if q := s.m[k]; q != nil {
		q.grants = append(q.grants, at)
	}
	s.mu.Unlock()
}

// releasing is called as a reservation of k ends. It returns a time no
// later than the grant of any reservation of k in flight, the one ending
// included, or 0 when none was recorded, and forgets one of the times:
// the latest, not necessarily the ending reservation's own, which
// Release does not name. The times kept then stay, sorted, each no later
// than the grant of the reservation in flight of the same rank, so what
// releasing returns never comes after the ending reservation's grant,
// whatever the order of releases and however the clock moved between
// the grants.
func (s *pairSlots) releasing(k limitKey) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.m[k]
	if q == nil || len(q.grants) == 0 {
		return 0
	}
	lo, hi := 0, 0
	for i, g := range q.grants {
		if g < q.grants[lo] {
			lo = i
		}
		if g > q.grants[hi] {
			hi = i
		}
	}
	t := q.grants[lo]
	last := len(q.grants) - 1
	q.grants[hi] = q.grants[last]
	q.grants = q.grants[:last]
	return t
}

// release gives back a slot of k; without one held, it does nothing.
func (s *pairSlots) release(k limitKey) {
	s.mu.Lock()
	q := s.m[k]
	if q == nil || len(q.ch) == 0 {
		s.mu.Unlock()
		return
	}
	<-q.ch
	s.mu.Unlock()
	s.unref(k, q)
}

func (s *pairSlots) unref(k limitKey, q *slotQueue) {
	s.mu.Lock()
	if q.refs--; q.refs == 0 {
		delete(s.m, k)
	}
	s.mu.Unlock()
}

// limitID returns the key of a client id's bucket.
func limitID(clientID string) string {
	if m2mauth.ValidClientID(clientID) {
		return clientID
	}
	return m2mauth.LimiterInvalidClientID
}

// checkAddrKey refuses an address key the table cannot hold. The token
// handler never makes one.
func checkAddrKey(ip string) error {
	if len(ip) > maxAddrKeyLen || !utf8.ValidString(ip) || strings.IndexByte(ip, 0) >= 0 {
		return fmt.Errorf("sqlstore: rate limit address key %q is not 0 to %d bytes of UTF-8 without NUL", truncateKey(ip), maxAddrKeyLen)
	}
	return nil
}

// truncateKey keeps an error message about a key short.
func truncateKey(s string) string {
	if len(s) > maxAddrKeyLen {
		return s[:maxAddrKeyLen] + "..."
	}
	return s
}

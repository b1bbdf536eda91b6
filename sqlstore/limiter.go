package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/m2mauth/m2mauth"
)

// maxAddrKeyLen bounds an address key; the token handler's longest is an
// IPv6 prefix such as "2001:db8:1:2:3:4:5:6/128" (43 bytes). MySQL stores
// them as VARBINARY(64).
const maxAddrKeyLen = 64

// invalidLimitID is the key of every client id that no client can have
// (see [m2mauth.Client.Validate]): they share one bucket per address, as
// in the token handler, and the database never sees a NUL byte or
// invalid UTF-8, which PostgreSQL refuses. No client id contains DEL.
const invalidLimitID = "\x7finvalid"

// LimiterConfig holds the tunables of a [Limiter]. The limits and their
// defaults are those of [m2mauth.RateLimiterConfig]; every zero value is
// a working default. Every replica sharing the tables should use the
// same limits.
type LimiterConfig struct {
	// ClientIPBurst is the number of failures allowed in a row for one
	// client id from one address. Default: 5.
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
	// TablePrefix is the prefix of the <prefix>rate_limits table, the
	// same as the [Config.TablePrefix] of the [Store] whose
	// [Store.Migrate] created it. Default: [DefaultTablePrefix].
	TablePrefix string
	// Now is the clock. Replicas compare times they read from their own
	// clocks, so their clocks should agree to well within a second.
	// Default: [time.Now].
	Now func() time.Time
	// CleanupInterval is how often, by Now, a call to [Limiter.Fail] also
	// deletes rows of buckets that have refilled; at least 1ms. The first
	// Fail of a Limiter cleans up. Default: 1m.
	CleanupInterval time.Duration
	// CleanupBatch bounds the rows one cleanup deletes; when a cleanup
	// finds that many, the next Fail cleans up again. Default: 1000.
	CleanupBatch int
	// Logger receives the errors of cleanups, which do not fail the Fail
	// that ran them. Default: [slog.Default].
	Logger *slog.Logger
}

// Limiter is a [m2mauth.Limiter] that keeps its buckets in the
// <prefix>rate_limits table (created by [Store.Migrate]), so that every
// replica of a service sharing the database sees the same failures: a
// client locked out by failures sent to one replica is locked out on all
// of them. Set it as the Limiter of each replica's
// [m2mauth.TokenHandlerConfig].
//
// Each bucket is a token bucket held in one row as the instant it is full
// again, so it behaves as [m2mauth.RateLimiter]'s do (see [Limiter.Check]
// and [Limiter.Fail]): there is one bucket per client id and address and
// one per address, only failures take tokens, and a request is refused
// while either of its buckets is empty. Client ids that no client can
// have share one bucket per address. Rows of buckets that have refilled
// are deleted by [Limiter.Cleanup], which Fail runs every CleanupInterval.
//
// A Limiter is safe for concurrent use, by many goroutines and by many
// processes sharing the database: each Check is one query and each Fail
// one statement, which the database applies atomically. Failures lock
// their two rows in primary key order, and cleanups never wait for a row
// while holding another, so replicas do not deadlock one another.
type Limiter struct {
	check, fail, cleanup lazyStmt
	cleanupRow           lazyStmt // MySQL only: see mysqlQueries

	now          func() time.Time
	logger       *slog.Logger
	cleanupEvery int64 // microseconds
	batch        int64
	// Microseconds: the refill interval of each bucket, and its slack,
	// (burst-1)*every: a bucket holds a token from refilled_at - slack.
	clientEvery, clientSlack int64
	ipEvery, ipSlack         int64
	// nextCleanup is the unix microsecond from which Fail cleans up.
	nextCleanup atomic.Int64
}

var _ m2mauth.Limiter = (*Limiter)(nil)

// NewLimiter returns a limiter that keeps its buckets in db, speaking
// dialect. Like [New] it checks its arguments now and does not touch the
// database; the table must have been created by [Store.Migrate]. db stays
// the caller's to configure and to close.
func NewLimiter(db *sql.DB, dialect Dialect, cfg LimiterConfig) (*Limiter, error) {
	_, q, err := prepare(db, dialect, cfg.TablePrefix)
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
		every(&cfg.CleanupInterval, time.Minute, "CleanupInterval"), positive(&cfg.CleanupBatch, 1000, "CleanupBatch"),
	); err != nil {
		return nil, err
	}
	// A bucket spans burst*every; a century leaves room to add it to any
	// unix time in microseconds.
	const maxSpan = 100 * 365 * 24 * time.Hour
	if cfg.ClientIPEvery > maxSpan/time.Duration(cfg.ClientIPBurst) || cfg.IPEvery > maxSpan/time.Duration(cfg.IPBurst) {
		return nil, errors.New("sqlstore: LimiterConfig burst times interval exceeds a century")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	l := &Limiter{
		check:        lazyStmt{db: db, query: q.limitCheck},
		fail:         lazyStmt{db: db, query: q.limitFail},
		cleanup:      lazyStmt{db: db, query: q.limitCleanup},
		cleanupRow:   lazyStmt{db: db, query: q.limitCleanupRow},
		now:          cfg.Now,
		logger:       cfg.Logger,
		cleanupEvery: cfg.CleanupInterval.Microseconds(),
		batch:        int64(cfg.CleanupBatch),
		clientEvery:  cfg.ClientIPEvery.Microseconds(),
		ipEvery:      cfg.IPEvery.Microseconds(),
	}
	l.clientSlack = int64(cfg.ClientIPBurst-1) * l.clientEvery
	l.ipSlack = int64(cfg.IPBurst-1) * l.ipEvery
	l.nextCleanup.Store(math.MinInt64)
	return l, nil
}

// Check returns how long until both buckets of (clientID, ip) hold a
// token: zero unless one of them is empty. It runs one query, which reads
// both rows. It returns an error, and the token handler a server_error,
// when the database fails or ip is longer than 64 bytes, is not valid
// UTF-8 or holds a NUL byte.
func (l *Limiter) Check(ctx context.Context, clientID, ip string) (time.Duration, error) {
	if err := checkAddrKey(ip); err != nil {
		return 0, err
	}
	now := l.now().UnixMicro()
	stmt, err := l.check.get(ctx)
	if err != nil {
		return 0, fmt.Errorf("sqlstore: rate limit check: %w", err)
	}
	var from int64
	if err := stmt.QueryRowContext(ctx, l.ipSlack, l.clientSlack, ip, limitID(clientID)).Scan(&from); err != nil {
		return 0, fmt.Errorf("sqlstore: rate limit check: %w", err)
	}
	if from <= now {
		return 0, nil
	}
	return time.Duration(from-now) * time.Microsecond, nil
}

// Fail takes a token from both buckets of (clientID, ip), creating their
// rows if needed, in one statement (an upsert). As with
// [m2mauth.RateLimiter], a failure recorded while a bucket is empty takes
// nothing from it. Once every CleanupInterval it then runs
// [Limiter.Cleanup]; a cleanup's error is logged, not returned.
func (l *Limiter) Fail(ctx context.Context, clientID, ip string) error {
	if err := checkAddrKey(ip); err != nil {
		return err
	}
	now := l.now().UnixMicro()
	stmt, err := l.fail.get(ctx)
	if err != nil {
		return fmt.Errorf("sqlstore: rate limit failure: %w", err)
	}
	id := limitID(clientID)
	if _, err := stmt.ExecContext(ctx, ip, now+l.ipEvery, ip, id, now+l.clientEvery,
		now+l.ipSlack, l.ipEvery, now+l.ipEvery,
		now+l.clientSlack, l.clientEvery, now+l.clientEvery); err != nil {
		return fmt.Errorf("sqlstore: rate limit failure: %w", err)
	}
	l.maybeCleanup(ctx, now)
	return nil
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
		// Clean again on the next failure.
		l.nextCleanup.Store(now)
	}
}

// Cleanup deletes the rows of up to CleanupBatch buckets that have
// refilled completely, which count no more than no row at all, and
// returns how many it deleted. [Limiter.Fail] runs it every
// CleanupInterval, so rows are left only after the last failure; a host
// may also run it from a scheduled job.
//
// On PostgreSQL and SQLite it is one DELETE; PostgreSQL's passes over rows
// that a failure is updating (FOR UPDATE SKIP LOCKED). On MySQL it is a
// SELECT that locks nothing, then one DELETE by primary key per row
// found, which keeps a row that a failure updated in between: a single
// DELETE through the index on refilled_at would lock index entries before
// rows, the reverse of Fail, and deadlock with it under load.
func (l *Limiter) Cleanup(ctx context.Context) (int64, error) {
	n, _, err := l.cleanupAt(ctx, l.now().UnixMicro())
	return n, err
}

// cleanupAt deletes up to a batch of rows that have refilled by now. more
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
		res, err := stmt.ExecContext(ctx, now, l.batch)
		if err != nil {
			return 0, false, err
		}
		n, err := res.RowsAffected()
		return n, n >= l.batch, err
	}

	// MySQL: find the rows, then delete them one by one.
	rows, err := stmt.QueryContext(ctx, now, l.batch)
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
		// A row updated since it was found has not refilled any more,
		// and stays.
		res, err := del.ExecContext(ctx, k[0], k[1], now)
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

// Close releases the Limiter's prepared statements; Check and Fail return
// errors after it. It does not close the *sql.DB.
func (l *Limiter) Close() error {
	return errors.Join(l.check.close(), l.fail.close(), l.cleanup.close(), l.cleanupRow.close())
}

// limitID returns the key of a client id's bucket.
func limitID(clientID string) string {
	if m2mauth.ValidClientID(clientID) {
		return clientID
	}
	return invalidLimitID
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

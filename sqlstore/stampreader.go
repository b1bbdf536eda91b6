package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync/atomic"
	"time"
)

// stampConnMinPool is the least limit on db's open connections
// (sql.DB.SetMaxOpenConns) with which a Store on SQLite takes one of them
// for reading the clients' stamp; 0, no limit, counts as more.
const stampConnMinPool = 4

// stampLease is how long a stampReader keeps a connection before it gives
// it back to db's pool and takes one again; stampPinRetry is how long it
// waits after it could not take one.
const (
	stampLease    = 100 * time.Millisecond
	stampPinRetry = time.Second
)

// errNotWAL is why a stampReader takes no connection of a database
// whose journal is not a write-ahead log.
var errNotWAL = errors.New("sqlstore: not in WAL mode")

// stampReader reads the clients' stamp on SQLite on a connection taken
// from db's pool for stampLease at most, one read at a time, with the
// statement prepared there.
//
// A query on db's pool with a context that can be cancelled starts two
// goroutines, one of database/sql's to watch the context and one of the
// driver's to interrupt SQLite, and they cost more than the query. On a
// connection in hand the query needs no context to bound a wait for a
// connection, and it does not wait for writers either, as a read of a WAL
// database sees the last committed snapshot (only SQLite's recovery of
// the WAL index, after a process died writing, makes a reader wait, for
// at most the connection's busy_timeout): it runs with a context that
// cannot be cancelled. A call waits for its turn only behind reads of the
// stamp, and its context bounds that wait. A call that waited may take
// the stamp of a read that began after it arrived: that read saw every
// change committed before the call.
//
// The lease bounds how long the connection is out of the pool: after
// db.Close, reads on it stop within stampLease, and db's limits on a
// connection's lifetime still apply. The reader takes no connection while
// db allows fewer than stampConnMinPool (SQLite's users often allow one),
// nor of a database not in WAL mode: there, and whenever it holds none,
// read reports that the caller is to read the stamp on db's pool.
type stampReader struct {
	db    *sql.DB
	query string
	// turn holds a token while a call reads or uses the fields below.
	turn chan struct{}

	conn     *sql.Conn
	stmt     *sql.Stmt
	pinnedAt time.Time
	timer    *time.Timer // gives the connection back when the lease ends
	// off is set once closed.
	off bool
	// noPinUntil is when the reader may next try to take a connection.
	noPinUntil time.Time
	// begun numbers the reads begun (it is read without the turn);
	// done is the number of the last one that succeeded, and stamp its
	// result.
	begun atomic.Uint64
	done  uint64
	stamp int64
}

func newStampReader(db *sql.DB, query string) *stampReader {
	return &stampReader{db: db, query: query, turn: make(chan struct{}, 1)}
}

// read returns the stamp, or sql.ErrNoRows if its row is missing. With
// ok false it read nothing, and the caller is to read the stamp on db's
// pool.
func (r *stampReader) read(ctx context.Context) (stamp int64, ok bool, err error) {
	arrived := r.begun.Load()
	select {
	case r.turn <- struct{}{}:
	default:
		select {
		case r.turn <- struct{}{}:
		case <-ctx.Done():
			return 0, true, ctx.Err()
		}
	}
	defer func() { <-r.turn }()
	if r.done > arrived {
		return r.stamp, true, nil
	}
	// The query below does not look at ctx.
	if err := ctx.Err(); err != nil {
		return 0, true, err
	}
	r.expire()
	if r.stmt == nil && !r.pin(ctx) {
		return 0, false, nil
	}
	n := r.begun.Add(1)
	err = r.stmt.QueryRowContext(context.WithoutCancel(ctx)).Scan(&stamp)
	switch {
	case err == nil:
		r.done, r.stamp = n, stamp
		return stamp, true, nil
	case errors.Is(err, sql.ErrNoRows):
		return 0, true, err
	}
	// Whatever went wrong, db's pool will say it again, or not; a later
	// read takes another connection.
	r.unpin()
	r.noPinUntil = time.Now().Add(stampPinRetry)
	return 0, false, nil
}

// pin takes a connection and prepares the query on it, unless db allows
// too few connections or the last try failed lately. The caller has the
// turn.
func (r *stampReader) pin(ctx context.Context) bool {
	if r.off || time.Now().Before(r.noPinUntil) {
		return false
	}
	if n := r.db.Stats().MaxOpenConnections; n != 0 && n < stampConnMinPool {
		r.noPinUntil = time.Now().Add(stampPinRetry)
		return false
	}
	conn, err := r.db.Conn(ctx)
	if err == nil {
		r.conn = conn
		// In a rollback journal, unlike in WAL, a read waits for a
		// writer's commit: there the query must be cancellable.
		var mode string
		if err = conn.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err == nil && !strings.EqualFold(mode, "wal") {
			err = errNotWAL
		}
	}
	if err == nil {
		r.stmt, err = r.conn.PrepareContext(ctx, r.query)
	}
	if err != nil {
		r.unpin()
		if ctx.Err() == nil {
			// Not the caller's leaving: give the pool a rest.
			r.noPinUntil = time.Now().Add(stampPinRetry)
		}
		return false
	}
	r.pinnedAt = time.Now()
	r.timer = time.AfterFunc(stampLease, func() {
		r.turn <- struct{}{}
		defer func() { <-r.turn }()
		r.expire()
	})
	return true
}

// expire gives back the connection once its lease has ended. The caller
// has the turn. (A timer of an earlier lease finds the lease young.)
func (r *stampReader) expire() {
	if r.stmt != nil && time.Since(r.pinnedAt) >= stampLease {
		r.unpin()
	}
}

// unpin gives back the connection. The caller has the turn.
func (r *stampReader) unpin() error {
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	var err error
	if r.stmt != nil {
		err = r.stmt.Close()
	}
	if r.conn != nil {
		err = errors.Join(err, r.conn.Close())
	}
	r.stmt, r.conn = nil, nil
	return err
}

// close gives back the connection, after the read under way if any, and
// takes none from then on.
func (r *stampReader) close() error {
	r.turn <- struct{}{}
	defer func() { <-r.turn }()
	r.off = true
	return r.unpin()
}

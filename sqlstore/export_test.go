package sqlstore

import (
	"context"
	"time"
)

// UsageQuery and AuditByClientQuery return statements of s, for tests that
// ask the database how it runs them.
func UsageQuery(s *Store) string         { return s.q.usage }
func AuditByClientQuery(s *Store) string { return s.q.auditByClient }

// SQLiteClientQueries returns the statements Store.Client runs on
// SQLite: the client's row alone, with the clients' stamp, and the stamp
// alone.
func SQLiteClientQueries(s *Store) (row, stamped, stamp string) {
	return s.q.clientRow, s.q.stampedRow, s.q.clientStamp
}

// LimiterFastGrant returns the statement of the Limiter's fast path that
// grants an attempt.
func LimiterFastGrant(l *Limiter) string { return l.fastGrant.query }

// WithoutFastPaths makes l decide every attempt in transactions.
func WithoutFastPaths(l *Limiter) { l.fastGrant.query, l.fastGive.query = "", "" }

// TryReserve makes one attempt at a reservation, as Reserve does before
// it waits for attempts in flight (and without the process's slots): it
// reports whether the attempt was granted, how long a refused one waits,
// or neither when the buckets' tokens are lent out.
func TryReserve(ctx context.Context, l *Limiter, clientID, ip string) (ok bool, wait time.Duration, err error) {
	id := limitID(clientID)
	done, _, err := l.fast(ctx, &l.fastGrant, l.grantArgs(id, ip))
	if err != nil || done {
		return done, 0, err
	}
	var v verdict
	var w int64
	err = l.update(ctx, id, ip, func(a, p *limitRow, now int64) {
		v, w = l.reserveRows(a, p, now)
	})
	if v == refused {
		wait = waitDuration(w)
	}
	return v == granted, wait, err
}

// CachedClients returns the number of clients s keeps (SQLite only).
func CachedClients(s *Store) int { return s.clients.len() }

// StampLease is how long a Store on SQLite keeps the connection it reads
// the clients' stamp on.
const StampLease = stampLease

// HoldStampTurn takes the turn of s's reads of the clients' stamp, as a
// read under way holds it, until release is called.
func HoldStampTurn(s *Store) (release func()) {
	s.stampConn.turn <- struct{}{}
	return func() { <-s.stampConn.turn }
}

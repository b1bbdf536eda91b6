package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/m2mauth/m2mauth"
)

var (
	_ m2mauth.Revoker        = (*Store)(nil)
	_ m2mauth.RevocationFeed = (*Store)(nil)
)

// The kinds of row in the revocations table.
const (
	kindClient = "client" // id is a client id, at its watermark
	kindToken  = "token"  // id is a jti, at the token's expiry
)

// maxJTILen bounds the token ids RevokeToken accepts; MySQL stores them
// as VARBINARY(255).
const maxJTILen = 255

// pruneBatch bounds the rows one pruning statement deletes, and
// pruneEvery is how often, by the Store's clock, RevocationsSince runs
// one.
const (
	pruneBatch = 1000
	pruneEvery = time.Minute
)

// errNoRevocationState is returned when the one row of the
// revocation_state table is missing: Migrate creates it.
var errNoRevocationState = errors.New("the revocation_state table has no row (run Migrate)")

// RevokeToken puts the token jti of clientID, which expires at exp, on
// the deny-list until exp plus [m2mauth.RevocationGrace], and increments
// the revocations' version in the same transaction. clientID must be a
// valid client id ([m2mauth.ValidClientID]), though the client need not
// exist; jti must be 1 to 255 printable ASCII characters; exp must not be
// zero. Bad input is an error and changes nothing. Revoking a token again
// is not an error (the later expiry is kept), and a token whose entry
// would already be dead at the Store's clock's now is not stored. It
// sends no audit event: the revocation endpoint (RFC 7009) audits it.
//
// Every revocation increments the one version row, so revocations take
// turns on it, each until its commit: the rate at which they can be
// recorded is bounded by the database's commit latency.
func (s *Store) RevokeToken(ctx context.Context, clientID, jti string, exp time.Time) error {
	switch {
	case !m2mauth.ValidClientID(clientID):
		return errors.New("sqlstore: revoke token: client id must be 1 to 255 printable ASCII characters")
	case !validJTI(jti):
		return fmt.Errorf("sqlstore: revoke token of client %q: token id must be 1 to %d printable ASCII characters", clientID, maxJTILen)
	case exp.IsZero():
		return fmt.Errorf("sqlstore: revoke token of client %q: zero expiry", clientID)
	}
	if !m2mauth.DenyLive(exp, s.now()) {
		return nil
	}
	err := s.write(ctx, func(q querier) error {
		return s.revoke(ctx, q, kindToken, jti, exp, exp.Add(m2mauth.RevocationGrace))
	})
	if err != nil {
		return fmt.Errorf("sqlstore: revoke token of client %q: %w", clientID, err)
	}
	return nil
}

// RevokeClientTokens revokes every token issued to clientID up to the end
// of the current second of the Store's clock: in one transaction it sets
// the client's watermark, its TokensRevokedAt and UpdatedAt, and
// increments the revocations' version. It returns an error wrapping
// [m2mauth.ErrClientNotFound], having written nothing, for an unknown
// client. With [Config.Auditor] it sends [m2mauth.EventTokensRevoked],
// Reason "revoke".
func (s *Store) RevokeClientTokens(ctx context.Context, clientID string) error {
	return s.modify(ctx, clientID, false, func(q querier, _ *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		if err := s.revokeClient(ctx, q, clientID, now, true); err != nil {
			return nil, err
		}
		if err := s.touch(ctx, q, clientID, now); err != nil {
			return nil, err
		}
		return []m2mauth.AuditEvent{event(now, m2mauth.EventTokensRevoked, clientID, "", "revoke")}, nil
	})
}

// RevokeAllTokens revokes every token issued up to the end of the current
// second of the Store's clock, for every client: it sets the store-wide
// watermark, unless a later one is set, and increments the revocations'
// version, in one transaction. With [Config.Auditor] it sends
// [m2mauth.EventTokensRevoked] with an empty ClientID and Reason
// "revoke_all".
func (s *Store) RevokeAllTokens(ctx context.Context) error {
	now := s.now()
	err := s.write(ctx, func(q querier) error {
		res, err := q.ExecContext(ctx, s.q.revokeAll, now.UnixMicro(), now.UnixMicro())
		if err != nil {
			return err
		}
		return oneRow(res)
	})
	events := []m2mauth.AuditEvent{event(now, m2mauth.EventTokensRevoked, "", "", "revoke_all")}
	if err != nil {
		s.auditLate(ctx, err, events)
		return fmt.Errorf("sqlstore: revoke all tokens: %w", err)
	}
	s.audit(ctx, events)
	return nil
}

// Revocations returns the current revocations, the caller's to keep,
// without the entries that can no longer revoke a valid token at the
// Store's clock's now. It is one query, which reads the version and the
// live rows in one snapshot.
func (s *Store) Revocations(ctx context.Context) (*m2mauth.Revocations, error) {
	r, err := s.loadRevocations(ctx, s.now())
	if err != nil {
		return nil, fmt.Errorf("sqlstore: revocations: %w", err)
	}
	return r, nil
}

// RevocationsSince returns what [Store.Revocations] does when the
// revocations' version differs from version, and (nil, nil) when it does
// not. The unchanged case is one small query, a prepared statement that
// reads the version row; a change costs one more, which reads the live
// rows. Every change to the revocations, by any replica sharing the
// database, increments the version in the transaction that makes it, so
// a [m2mauth.RevocationPoller] over any Store on the database sees it on
// its next poll. The version is zero on a new schema. A change sets it to
// one more, or to the Store's clock's Unix microseconds if that is more:
// a database restored from a backup, or a standby promoted before it saw
// the last changes, goes back to an older version, and its next change
// must not give again a version that readers hold for other revocations
// (they would take it as unchanged and miss the change). Microseconds
// rather than nanoseconds, so that a JavaScript reader of a revocation
// list's ver holds it exactly.
//
// Once a minute, by the Store's clock, it also runs one batch of
// [Store.PruneRevocations] (again at the next call while batches come
// back full), so that a poller keeps the table to the live rows with no
// other job; pruning errors go to [Config.Logger] and do not fail the
// call.
func (s *Store) RevocationsSince(ctx context.Context, version int64) (*m2mauth.Revocations, error) {
	now := s.now()
	s.maybePrune(ctx, now)
	stmt, err := s.version.get(ctx)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: revocations: %w", err)
	}
	var v int64
	switch err := stmt.QueryRowContext(ctx).Scan(&v); {
	case errors.Is(err, sql.ErrNoRows):
		return nil, fmt.Errorf("sqlstore: revocations: %w", errNoRevocationState)
	case err != nil:
		return nil, fmt.Errorf("sqlstore: revocations: %w", err)
	}
	if v == version {
		return nil, nil
	}
	r, err := s.loadRevocations(ctx, now)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: revocations: %w", err)
	}
	return r, nil
}

// PruneRevocations deletes the rows of the revocations table that can no
// longer revoke a valid token at the Store's clock's now (see
// [m2mauth.WatermarkLive] and [m2mauth.DenyLive]), and returns how many
// it deleted. It deletes up to 1000 rows per statement, found through the
// index on expires_at, until a statement finds fewer, so that no
// statement holds locks for long. It does not change the version: dead
// rows revoke nothing a validator would accept.
//
// [Store.RevocationsSince] runs a batch of it every minute, which is
// enough for a table fed by a polled store; a host may also run it from
// a scheduled job. On PostgreSQL each batch is one DELETE that passes
// over rows a revocation holds (FOR UPDATE SKIP LOCKED); on SQLite, one
// DELETE; on MySQL, a SELECT that locks nothing, then a DELETE by primary
// key per kind of row, so that pruning locks rows in the order the
// revocations do and cannot deadlock with them.
func (s *Store) PruneRevocations(ctx context.Context) (int, error) {
	now := s.now()
	total := 0
	for {
		n, more, err := s.pruneBatch(ctx, now)
		total += n
		if err != nil {
			return total, fmt.Errorf("sqlstore: prune revocations: %w", err)
		}
		if !more {
			return total, nil
		}
	}
}

// maybePrune runs a batch of pruning if one is due at now; of calls that
// find it due at once, one runs it.
func (s *Store) maybePrune(ctx context.Context, now time.Time) {
	t := now.UnixMicro()
	next := s.nextPrune.Load()
	if t < next || !s.nextPrune.CompareAndSwap(next, t+pruneEvery.Microseconds()) {
		return
	}
	_, more, err := s.pruneBatch(ctx, now)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			s.logger.LogAttrs(ctx, slog.LevelError, "sqlstore: revocation pruning failed", slog.Any("error", err))
		}
	case more:
		s.nextPrune.Store(t) // prune again on the next call
	}
}

// pruneBatch deletes up to pruneBatch rows that are dead at now. more
// reports that it found a full batch, so more may be waiting.
func (s *Store) pruneBatch(ctx context.Context, now time.Time) (n int, more bool, err error) {
	t := now.UnixMicro()
	if s.q.pruneRevocationRows == "" {
		res, err := s.db.ExecContext(ctx, s.q.pruneRevocations, t, pruneBatch)
		if err != nil {
			return 0, false, err
		}
		m, err := res.RowsAffected()
		return int(m), m >= pruneBatch, err
	}

	// MySQL: find the rows, then delete them by primary key.
	rows, err := s.db.QueryContext(ctx, s.q.pruneRevocations, t, pruneBatch)
	if err != nil {
		return 0, false, err
	}
	byKind := make(map[string][]any, 2)
	found := 0
	for rows.Next() {
		var kind, id string
		if err := rows.Scan(&kind, &id); err != nil {
			rows.Close()
			return 0, false, err
		}
		byKind[kind] = append(byKind[kind], id)
		found++
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return 0, false, err
	}
	for kind, ids := range byKind {
		// A row moved since it was found (a token revoked again with a
		// later expiry, a client's new watermark) is live, and stays.
		query := s.q.pruneRevocationRows + "(" + strings.Repeat("?, ", len(ids)-1) + "?)"
		res, err := s.db.ExecContext(ctx, query, append([]any{kind, t}, ids...)...)
		if err != nil {
			return n, false, err
		}
		m, err := res.RowsAffected()
		if err != nil {
			return n, false, err
		}
		n += int(m)
	}
	return n, found >= pruneBatch && n > 0, nil
}

// loadRevocations reads the version and the rows live at now, in one
// query and so one snapshot.
func (s *Store) loadRevocations(ctx context.Context, now time.Time) (*m2mauth.Revocations, error) {
	rows, err := s.db.QueryContext(ctx, s.q.loadRevocations, now.UnixMicro())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := &m2mauth.Revocations{Clients: make(map[string]time.Time), Tokens: make(map[string]time.Time)}
	var (
		state   bool
		kind    sql.RawBytes
		id      string
		at, exp int64
	)
	for rows.Next() {
		if err := rows.Scan(&kind, &id, &at, &exp); err != nil {
			return nil, err
		}
		// The query keeps every row live to the microsecond; the
		// checks below are to the nanosecond, as m2mauth's.
		switch string(kind) {
		case "":
			state = true
			out.Version = at
			if before := fromMicros(exp); exp != 0 && m2mauth.WatermarkLive(before, now) {
				out.Before = before
			}
		case kindClient:
			if w := fromMicros(at); m2mauth.WatermarkLive(w, now) {
				out.Clients[id] = w
			}
		case kindToken:
			if e := fromMicros(at); m2mauth.DenyLive(e, now) {
				out.Tokens[id] = e
			}
		default:
			return nil, fmt.Errorf("unexpected revocation kind %q", kind)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if !state {
		return nil, errNoRevocationState
	}
	return out, nil
}

// revokeClient sets the watermark of client id to now, unless a later
// one is set, in the transaction of q: its row in the revocations table,
// which outlives the client, and, with client, the client row's
// tokens_revoked_at. The caller sets the client's updated_at.
func (s *Store) revokeClient(ctx context.Context, q querier, id string, now time.Time, client bool) error {
	if client {
		if _, err := q.ExecContext(ctx, s.q.clientRevoked, now.UnixMicro(), id); err != nil {
			return err
		}
	}
	return s.revoke(ctx, q, kindClient, id, now, now.Add(m2mauth.MaxClientTokenTTL+m2mauth.RevocationGrace))
}

// revoke writes the revocation row (kind, id) at at, dead after expires,
// in the transaction of q, unless the row holds a later at already; and
// when it wrote, increments the version in the same transaction.
func (s *Store) revoke(ctx context.Context, q querier, kind, id string, at, expires time.Time) error {
	a, e := at.UnixMicro(), expires.UnixMicro()
	res, err := q.ExecContext(ctx, s.q.upsertRevocation, kind, id, a, e, a, e)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return err
	}
	res, err = q.ExecContext(ctx, s.q.bumpVersion, s.now().UnixMicro())
	if err != nil {
		return err
	}
	return oneRow(res)
}

// liveWatermark returns the watermark of client id live at now, or the
// zero time, read in the transaction of q.
func (s *Store) liveWatermark(ctx context.Context, q querier, id string, now time.Time) (time.Time, error) {
	var at int64
	switch err := q.QueryRowContext(ctx, s.q.clientWatermark, id, now.UnixMicro()).Scan(&at); {
	case errors.Is(err, sql.ErrNoRows):
		return time.Time{}, nil
	case err != nil:
		return time.Time{}, err
	}
	return fromMicros(at), nil
}

// oneRow checks that the update of the revocation_state row found it.
func oneRow(res sql.Result) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n != 1 {
		return errNoRevocationState
	}
	return nil
}

// validJTI reports whether jti is 1 to maxJTILen printable ASCII
// characters.
func validJTI(jti string) bool {
	if jti == "" || len(jti) > maxJTILen {
		return false
	}
	for i := 0; i < len(jti); i++ {
		if jti[i] < 0x20 || jti[i] > 0x7e {
			return false
		}
	}
	return true
}

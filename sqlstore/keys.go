package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/m2mauth/m2mauth"
)

var _ m2mauth.KeyStore = (*Store)(nil)

// maxKeyEventLen bounds the event types claimed for managed signing
// keys, which MySQL stores as VARBINARY(64) (their kids, at most 255
// bytes by m2mauth.ValidKeyID, as VARBINARY(255)).
const maxKeyEventLen = 64

// SigningKeys returns every managed signing key in the signing_keys
// table, revoked ones too, in ascending Generation order, in one query.
// Times are in UTC, to the microsecond. It implements [m2mauth.KeyStore],
// through which every replica on the database shares its keys (see
// [m2mauth.ManagedKeys]).
func (s *Store) SigningKeys(ctx context.Context) ([]m2mauth.StoredKey, error) {
	rows, err := s.db.QueryContext(ctx, s.q.signingKeys)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: signing keys: %w", err)
	}
	defer rows.Close()
	var out []m2mauth.StoredKey
	for rows.Next() {
		var (
			k                 m2mauth.StoredKey
			published, active int64
			revoked           sql.NullInt64
		)
		// Scanning into a *[]byte copies: the key's Sealed is its own.
		if err := rows.Scan(&k.KID, &k.Algorithm, &k.Generation, &k.Sealed, &published, &active, &revoked); err != nil {
			return nil, fmt.Errorf("sqlstore: signing keys: %w", err)
		}
		k.PublishedAt, k.ActiveAt = fromMicros(published), fromMicros(active)
		if revoked.Valid {
			k.RevokedAt = fromMicros(revoked.Int64)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: signing keys: %w", err)
	}
	return out, nil
}

// AddSigningKey inserts k unless the table holds a key of the same
// Generation or KID, and reports whether it did: one statement, an
// insert that ignores a conflict on either unique key (ON CONFLICT DO
// NOTHING on PostgreSQL and SQLite; on MySQL ON DUPLICATE KEY UPDATE of
// the kid to itself, which relies on the driver's default of counting
// changed rows, not found ones: a DSN must not set clientFoundRows).
// So of replicas racing to add one generation, exactly one gets true.
//
// It refuses, with an error and writing nothing, a KID other than 1 to
// 255 printable ASCII characters, an Algorithm not among
// [m2mauth.SupportedAlgorithms], a Generation below 1, an empty Sealed, a
// zero PublishedAt or ActiveAt, or an ActiveAt before PublishedAt. Times
// are stored to the microsecond, rounded down.
func (s *Store) AddSigningKey(ctx context.Context, k m2mauth.StoredKey) (bool, error) {
	if err := k.Validate(); err != nil {
		return false, err
	}
	res, err := s.db.ExecContext(ctx, s.q.addSigningKey, k.KID, k.Algorithm, k.Generation, k.Sealed,
		k.PublishedAt.UnixMicro(), k.ActiveAt.UnixMicro(), nullMicros(k.RevokedAt))
	if err != nil {
		return false, fmt.Errorf("sqlstore: add signing key %q: %w", k.KID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("sqlstore: add signing key %q: %w", k.KID, err)
	}
	return n == 1, nil
}

// RevokeSigningKey sets the revoked_at of the key kid to at, unless it is
// set already (the first revocation's time is kept). It returns an error
// wrapping [m2mauth.ErrKeyNotFound] for a kid the table does not hold,
// and an error for a zero at.
func (s *Store) RevokeSigningKey(ctx context.Context, kid string, at time.Time) error {
	if at.IsZero() {
		return fmt.Errorf("sqlstore: revoke signing key %q: zero time", kid)
	}
	if !m2mauth.ValidKeyID(kid) {
		return keyNotFound(kid)
	}
	res, err := s.db.ExecContext(ctx, s.q.revokeSigningKey, at.UnixMicro(), kid)
	if err != nil {
		return fmt.Errorf("sqlstore: revoke signing key %q: %w", kid, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("sqlstore: revoke signing key %q: %w", kid, err)
	}
	if n > 0 {
		return nil
	}
	// Revoked already, or not held.
	held, err := rowExists(ctx, s.db, s.q.signingKeyExists, kid)
	if err != nil {
		return fmt.Errorf("sqlstore: revoke signing key %q: %w", kid, err)
	}
	if !held {
		return keyNotFound(kid)
	}
	return nil
}

// DeleteSigningKey deletes the key kid and the events claimed for it, in
// one transaction, and reports whether the key was there to delete.
func (s *Store) DeleteSigningKey(ctx context.Context, kid string) (bool, error) {
	if !m2mauth.ValidKeyID(kid) {
		return false, nil
	}
	var deleted bool
	err := s.write(ctx, func(q querier) error {
		if _, err := q.ExecContext(ctx, s.q.deleteKeyEvents, kid); err != nil {
			return err
		}
		res, err := q.ExecContext(ctx, s.q.deleteSigningKey, kid)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		deleted = n > 0
		return err
	})
	if err != nil {
		return false, fmt.Errorf("sqlstore: delete signing key %q: %w", kid, err)
	}
	return deleted, nil
}

// ResealSigningKeys replaces the sealed column of every key named in
// sealed, in one transaction, in kid order: when a kid is unknown (an
// error wrapping [m2mauth.ErrKeyNotFound]) or a value is empty, it
// returns an error and changes nothing.
func (s *Store) ResealSigningKeys(ctx context.Context, sealed map[string][]byte) error {
	kids := make([]string, 0, len(sealed))
	for kid, b := range sealed {
		if !m2mauth.ValidKeyID(kid) {
			return keyNotFound(kid)
		}
		if len(b) == 0 {
			return fmt.Errorf("sqlstore: reseal signing key %q: empty sealed key", kid)
		}
		kids = append(kids, kid)
	}
	if len(kids) == 0 {
		return nil
	}
	// One order for every caller, so that two reseals cannot deadlock.
	slices.Sort(kids)
	err := s.write(ctx, func(q querier) error {
		for _, kid := range kids {
			res, err := q.ExecContext(ctx, s.q.resealSigningKey, sealed[kid], kid)
			if err != nil {
				return fmt.Errorf("signing key %q: %w", kid, err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return fmt.Errorf("signing key %q: %w", kid, err)
			}
			if n > 0 {
				continue
			}
			// MySQL counts no row when the value is unchanged.
			held, err := rowExists(ctx, q, s.q.signingKeyExists, kid)
			if err != nil {
				return fmt.Errorf("signing key %q: %w", kid, err)
			}
			if !held {
				return fmt.Errorf("signing key %q: %w", kid, m2mauth.ErrKeyNotFound)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlstore: reseal signing keys: %w", err)
	}
	return nil
}

// ClaimKeyEvent records that the event typ happened to the key kid, in
// the key_events table, and reports whether this call was the first to:
// one insert that ignores a conflict, as [Store.AddSigningKey]'s. The
// claims of a key are deleted with it by [Store.DeleteSigningKey]; a
// claim for a kid the table does not hold is kept. It returns an error
// for a kid other than 1 to 255 printable ASCII characters and for a typ
// other than 1 to 64 of them.
func (s *Store) ClaimKeyEvent(ctx context.Context, kid string, typ m2mauth.AuditEventType) (bool, error) {
	if !m2mauth.ValidKeyID(kid) {
		return false, errors.New("sqlstore: claim key event: key id must be 1 to 255 printable ASCII characters")
	}
	if !printableASCII(string(typ), maxKeyEventLen) {
		return false, fmt.Errorf("sqlstore: claim key event of %q: event type must be 1 to %d printable ASCII characters", kid, maxKeyEventLen)
	}
	res, err := s.db.ExecContext(ctx, s.q.claimKeyEvent, kid, string(typ))
	if err != nil {
		return false, fmt.Errorf("sqlstore: claim %s of signing key %q: %w", typ, kid, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("sqlstore: claim %s of signing key %q: %w", typ, kid, err)
	}
	return n == 1, nil
}

func printableASCII(s string, maxLen int) bool {
	if s == "" || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// keyNotFound returns an error wrapping [m2mauth.ErrKeyNotFound] that
// names kid, if it is a well-formed one.
func keyNotFound(kid string) error {
	if !m2mauth.ValidKeyID(kid) {
		return fmt.Errorf("sqlstore: signing key: %w", m2mauth.ErrKeyNotFound)
	}
	return fmt.Errorf("sqlstore: signing key %q: %w", kid, m2mauth.ErrKeyNotFound)
}

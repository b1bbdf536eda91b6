package sqlstore

import (
	"bufio"
	"cmp"
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
)

// migrationFiles holds the schema of every dialect, one directory per
// dialect and one file per version ("0001_init.sql"), with "{p}" standing
// for the table prefix. Statements end with a ";" at the end of a line.
//
//go:embed migrations/*/*.sql
var migrationFiles embed.FS

// migration is one schema version: its statements, prefix filled in.
type migration struct {
	version    int64
	statements []string
}

// loadMigrations reads the migrations of d for tables named with prefix,
// in ascending version order.
func loadMigrations(d Dialect, prefix string) ([]migration, error) {
	dir := path.Join("migrations", d.String())
	entries, err := fs.ReadDir(migrationFiles, dir)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: migrations for %v: %w", d, err)
	}
	var out []migration
	for _, e := range entries {
		name := e.Name()
		digits, _, ok := strings.Cut(name, "_")
		v, err := strconv.ParseInt(digits, 10, 64)
		if !ok || err != nil || v <= 0 || !strings.HasSuffix(name, ".sql") {
			return nil, fmt.Errorf("sqlstore: migration file %s/%s is not named NNNN_name.sql", dir, name)
		}
		b, err := migrationFiles.ReadFile(path.Join(dir, name))
		if err != nil {
			return nil, err
		}
		stmts, err := splitStatements(strings.ReplaceAll(string(b), "{p}", prefix))
		if err != nil {
			return nil, fmt.Errorf("sqlstore: migration %s/%s: %w", dir, name, err)
		}
		out = append(out, migration{version: v, statements: stmts})
	}
	slices.SortFunc(out, func(a, b migration) int { return cmp.Compare(a.version, b.version) })
	for i := 1; i < len(out); i++ {
		if out[i].version == out[i-1].version {
			return nil, fmt.Errorf("sqlstore: two migrations for %v have version %d", d, out[i].version)
		}
	}
	return out, nil
}

// splitStatements splits a migration file into statements: each ends with
// a ";" at the end of a line; lines starting with "--" are comments.
func splitStatements(src string) ([]string, error) {
	var out []string
	var cur strings.Builder
	sc := bufio.NewScanner(strings.NewReader(src))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " \t\r")
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "--") {
			continue
		}
		if cur.Len() > 0 {
			cur.WriteByte('\n')
		}
		if stmt, ok := strings.CutSuffix(line, ";"); ok {
			cur.WriteString(stmt)
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteString(line)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if cur.Len() > 0 {
		return nil, errors.New("statement not terminated by ';'")
	}
	return out, nil
}

// Migrate brings the schema up to date: it creates the tables of the
// store, of the [Auditor] and of the [Limiter] (clients, secrets, grants,
// audit_events, rate_limits, revocations, revocation_state, signing_keys,
// key_events, and on SQLite client_stamp with triggers on clients, secrets
// and grants (see [Store.Client]), all named with the table prefix) and
// records each applied version in the <prefix>schema_migrations table. On
// MySQL it
// then creates the [Limiter]'s procedure, <prefix>limit_grant_client_
// and 8 hex digits, unless it exists; without the privilege to create
// routines it leaves it out, and the Limiter sends the two statements
// the procedure would run (see [Limiter]). [New] does
// not call it; call it once at start-up, or run it from a deployment step
// and leave it out of the servers.
//
// Migrate is idempotent: versions already recorded are skipped, so a
// second call changes nothing. It is safe to call from several processes
// at once, which take turns: PostgreSQL through a session advisory lock
// (pg_advisory_lock, keyed by the table prefix) and MySQL through a named
// lock (GET_LOCK), each held on one connection taken from db for the
// duration; SQLite through its database write lock (BEGIN IMMEDIATE, which
// waits as long as the connection's busy_timeout allows). Versions newer
// than this package knows are left alone, so an older binary keeps working
// against a schema migrated by a newer one.
//
// On PostgreSQL and SQLite each version is applied in a transaction, so a
// failed migration leaves no trace. MySQL commits every DDL statement on
// its own; the statements are written with IF NOT EXISTS so that a failed
// migration can simply be run again.
func (s *Store) Migrate(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("sqlstore: migrate: %w", err)
		}
	}()
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()

	switch s.dialect {
	case SQLite:
		return withImmediate(ctx, conn, func(q querier) error {
			pending, err := s.pendingMigrations(ctx, q)
			if err != nil {
				return err
			}
			for _, m := range pending {
				if err := s.applyMigration(ctx, q, m); err != nil {
					return err
				}
			}
			return nil
		})
	case Postgres, MySQL:
		unlock, err := s.lockMigrations(ctx, conn)
		if err != nil {
			return err
		}
		defer func() {
			if uerr := unlock(); err == nil {
				err = uerr
			}
		}()
		pending, err := s.pendingMigrations(ctx, conn)
		if err != nil {
			return err
		}
		for _, m := range pending {
			if s.dialect == MySQL {
				// DDL commits implicitly in MySQL: a transaction would
				// promise what it cannot keep.
				err = s.applyMigration(ctx, conn, m)
			} else {
				err = inTx(ctx, conn, s.dialect, func(q querier) error { return s.applyMigration(ctx, q, m) })
			}
			if err != nil {
				return err
			}
		}
		if s.dialect == MySQL {
			return s.createRoutine(ctx, conn)
		}
		return nil
	}
	return fmt.Errorf("unknown dialect %v", s.dialect)
}

// createRoutine creates the Limiter's procedure (see
// [grantClientProcedure]) unless it exists, or the user may not create
// it (MySQL errors 1044, 1142, 1227, 1370: access denied): the Limiter
// then sends two statements instead of the call, and says so.
func (s *Store) createRoutine(ctx context.Context, conn *sql.Conn) error {
	_, err := conn.ExecContext(ctx, s.q.grantClientRoutine)
	if err == nil || mysqlError(err, 1304, 1044, 1142, 1227, 1370) { // 1304: it exists
		return nil
	}
	return fmt.Errorf("create procedure: %w", err)
}

// lockMigrations takes the migration lock of the table prefix on conn and
// returns the function that releases it.
func (s *Store) lockMigrations(ctx context.Context, conn *sql.Conn) (unlock func() error, err error) {
	var key any
	switch s.dialect {
	case Postgres:
		h := fnv.New64a()
		h.Write([]byte("m2mauth sqlstore migrate " + s.prefix))
		key = int64(h.Sum64())
		if _, err := conn.ExecContext(ctx, s.q.migrateLock, key); err != nil {
			// Whether the lock was granted before the failure is
			// unknown: drop the session, and any lock with it.
			discard(conn)
			return nil, err
		}
	case MySQL:
		key = "m2mauth_migrate_" + s.prefix // at most 48 of the 64 characters allowed
		for {
			var got sql.NullInt64
			if err := conn.QueryRowContext(ctx, s.q.migrateLock, key).Scan(&got); err != nil {
				discard(conn)
				return nil, err
			}
			if !got.Valid {
				return nil, errors.New("GET_LOCK failed")
			}
			if got.Int64 == 1 {
				break
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
	}
	return func() error {
		if _, err := conn.ExecContext(context.WithoutCancel(ctx), s.q.migrateUnlock, key); err != nil {
			discard(conn)
			return fmt.Errorf("release lock: %w", err)
		}
		return nil
	}, nil
}

// pendingMigrations creates the schema_migrations table if needed and
// returns the migrations it does not record, in version order.
func (s *Store) pendingMigrations(ctx context.Context, q querier) ([]migration, error) {
	if _, err := q.ExecContext(ctx, s.q.createMigrations); err != nil {
		return nil, err
	}
	rows, err := q.QueryContext(ctx, s.q.appliedVersions)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	applied := make(map[int64]bool)
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		applied[v] = true
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var pending []migration
	for _, m := range s.migrations {
		if !applied[m.version] {
			pending = append(pending, m)
		}
	}
	return pending, nil
}

// applyMigration runs the statements of m and records its version.
func (s *Store) applyMigration(ctx context.Context, q querier, m migration) error {
	for _, stmt := range m.statements {
		if _, err := q.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("version %d: %w", m.version, err)
		}
	}
	if _, err := q.ExecContext(ctx, s.q.insertVersion, m.version, s.now().UnixMicro()); err != nil {
		return fmt.Errorf("version %d: %w", m.version, err)
	}
	return nil
}

// discard closes conn's underlying connection instead of returning it to
// the pool, for a session whose state (a lock, an open transaction) is
// unknown.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
}

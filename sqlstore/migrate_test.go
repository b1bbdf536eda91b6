package sqlstore_test

import (
	"os"
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

// versions returns the versions recorded in the prefix's
// schema_migrations table.
func (e *env) versions(t *testing.T, prefix string) []int64 {
	t.Helper()
	rows, err := e.db.QueryContext(t.Context(), "SELECT version FROM "+prefix+"schema_migrations ORDER BY version")
	require.NoError(t, err)
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var v int64
		require.NoError(t, rows.Scan(&v))
		out = append(out, v)
	}
	require.NoError(t, rows.Err())
	return out
}

// allVersions returns the versions of every migration of e's dialect:
// SQLite and MySQL have one more, the clients' stamp and the audit
// table's binary client ids (7).
func (e *env) allVersions() []int64 {
	return []int64{1, 2, 3, 4, 5, 6, 7, 8}
}

func TestMigrateIsIdempotent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		want := e.versions(t, prefix)
		require.Equal(t, e.allVersions(), want)
		require.NoError(t, s.CreateClient(ctx, clientWithSecrets(t, "survivor", 2)))
		before, err := s.Client(ctx, "survivor")
		require.NoError(t, err)

		require.NoError(t, s.Migrate(ctx), "second Migrate")
		again, err := sqlstore.New(e.db, e.dialect, sqlstore.Config{TablePrefix: prefix})
		require.NoError(t, err)
		require.NoError(t, again.Migrate(ctx), "Migrate from another Store")

		assert.Equal(t, want, e.versions(t, prefix))
		after, err := again.Client(ctx, "survivor")
		require.NoError(t, err)
		assert.Equal(t, before, after)
	})
}

// TestMigrateConcurrently starts four replicas at once on one fresh
// schema: they take turns, and all succeed.
func TestMigrateConcurrently(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		const replicas = 4
		stores := make([]*sqlstore.Store, replicas)
		for i := range stores {
			s, err := sqlstore.New(e.open(t), e.dialect, sqlstore.Config{TablePrefix: prefix})
			require.NoError(t, err)
			stores[i] = s
		}
		errs := make([]error, replicas)
		var wg sync.WaitGroup
		for i, s := range stores {
			wg.Go(func() { errs[i] = s.Migrate(t.Context()) })
		}
		wg.Wait()
		for i, err := range errs {
			assert.NoError(t, err, "replica %d", i)
		}
		assert.Equal(t, e.allVersions(), e.versions(t, prefix))
		require.NoError(t, stores[0].CreateClient(t.Context(), clientWithSecrets(t, "after-race", 1)))
		_, err := stores[replicas-1].Client(t.Context(), "after-race")
		require.NoError(t, err)
	})
}

// TestClientBeforeMigrate checks that missing tables are a store failure,
// not an unknown client, and that the store recovers once migrated.
func TestClientBeforeMigrate(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		s, err := sqlstore.New(e.db, e.dialect, sqlstore.Config{TablePrefix: e.newPrefix(t)})
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		_, err = s.Client(ctx, "anyone")
		require.Error(t, err)
		assert.NotErrorIs(t, err, m2mauth.ErrClientNotFound)

		require.NoError(t, s.Migrate(ctx))
		_, err = s.Client(ctx, "anyone")
		require.ErrorIs(t, err, m2mauth.ErrClientNotFound)
	})
}

// TestMigrateLeavesNewerVersions checks that a schema migrated by a newer
// release does not stop an older one from starting.
func TestMigrateLeavesNewerVersions(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		_, err := e.db.ExecContext(ctx, "INSERT INTO "+prefix+"schema_migrations (version, applied_at) VALUES (9999, 0)")
		require.NoError(t, err)
		require.NoError(t, s.Migrate(ctx))
		assert.Equal(t, append(e.allVersions(), 9999), e.versions(t, prefix))
	})
}

// TestMigrateUpgrade starts from the schemas earlier releases left,
// without the limiter's table or without its reservations: Migrate adds
// what came later, keeps the clients and the limiter's rows, and the
// limiter works on them.
func TestMigrateUpgrade(t *testing.T) {
	tests := []struct {
		name string
		from int64
	}{
		{"FromVersion1", 1},
		{"FromVersion2", 2},
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ctx := t.Context()
				prefix := e.newPrefix(t)
				s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
				require.NoError(t, s.CreateClient(ctx, clientWithSecrets(t, "kept", 1)))
				undoFromVersion5(t, e, prefix)
				_, err := e.db.ExecContext(ctx, "DROP TABLE "+prefix+"rate_limits")
				require.NoError(t, err)
				_, err = e.db.ExecContext(ctx, "DELETE FROM "+prefix+"schema_migrations WHERE version > 1")
				require.NoError(t, err)
				if tt.from == 2 {
					// Version 2 alone, as a release before reservations
					// applied it, with a failure it recorded.
					applyVersion(t, e, prefix, "0002_rate_limits.sql")
					_, err = e.db.ExecContext(ctx, "INSERT INTO "+prefix+"rate_limits (ip, client_id, refilled_at) VALUES ("+
						e.placeholder(1)+", "+e.placeholder(2)+", "+e.placeholder(3)+")",
						"192.0.2.1", "kept", time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC).Add(time.Minute).UnixMicro())
					require.NoError(t, err)
				}
				require.Equal(t, e.allVersions()[:tt.from], e.versions(t, prefix))

				require.NoError(t, s.Migrate(ctx))
				assert.Equal(t, e.allVersions(), e.versions(t, prefix))
				kept, err := s.Client(ctx, "kept")
				require.NoError(t, err)
				assert.False(t, kept.CanIntrospect)
				assert.True(t, kept.TokensRevokedAt.IsZero())
				r, err := s.Revocations(ctx)
				require.NoError(t, err)
				assert.Zero(t, r.Len())
				l, err := sqlstore.NewLimiter(e.db, e.dialect, sqlstore.LimiterConfig{TablePrefix: prefix, Now: newFakeClock().Now})
				require.NoError(t, err)
				defer l.Close()
				d, err := l.Reserve(ctx, "kept", "192.0.2.1")
				require.NoError(t, err)
				if tt.from == 2 {
					assert.Equal(t, 12*time.Second, d, "the five failures recorded before the upgrade count")
					return
				}
				assert.Zero(t, d)
				require.NoError(t, l.Release(ctx, "kept", "192.0.2.1", m2mauth.OutcomeFailed))
			})
		}
	})
}

// auditIndexes returns the names of the indexes of the prefix's
// audit_events table, primary key aside, sorted.
func (e *env) auditIndexes(t *testing.T, prefix string) []string {
	t.Helper()
	table := prefix + "audit_events"
	var query string
	switch e.dialect {
	case sqlstore.Postgres:
		query = "SELECT indexname FROM pg_indexes WHERE tablename = $1 AND indexname <> $1 || '_pkey' ORDER BY 1"
	case sqlstore.MySQL:
		query = "SELECT DISTINCT index_name FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = ? AND index_name <> 'PRIMARY' ORDER BY 1"
	case sqlstore.SQLite:
		query = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? ORDER BY 1"
	}
	rows, err := e.db.QueryContext(t.Context(), query, table)
	require.NoError(t, err)
	defer rows.Close()
	var out []string
	for rows.Next() {
		var name string
		require.NoError(t, rows.Scan(&name))
		out = append(out, name)
	}
	require.NoError(t, rows.Err())
	return out
}

// TestMigrateAuditIndex checks that version 4 replaces the client index of
// the audit table from the schema version 3 left, and again after it was
// cut short, or applied but not recorded (as MySQL, which commits each DDL
// statement on its own, can leave it).
func TestMigrateAuditIndex(t *testing.T) {
	tests := []struct {
		name     string
		oldIndex bool // the index of 0001 is there
		newIndex bool // the index of 0004 is there
	}{
		{"FromVersion3", true, false},
		{"HalfApplied", true, true},
		{"AppliedNotRecorded", false, true},
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ctx := t.Context()
				prefix := e.newPrefix(t)
				s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
				table := prefix + "audit_events"
				oldIdx, newIdx := prefix+"audit_events_client_idx", prefix+"audit_events_client_time_idx"
				keyIdx := prefix + "audit_events_key_idx"
				want := []string{newIdx, prefix + "audit_events_time_idx", keyIdx}
				if e.dialect == sqlstore.SQLite {
					// SQLite keeps the index of 0001, which ends with id.
					want = []string{oldIdx, prefix + "audit_events_time_idx", keyIdx}
				} else {
					var stmts []string
					switch e.dialect {
					case sqlstore.Postgres:
						if tt.oldIndex {
							stmts = append(stmts, "CREATE INDEX "+oldIdx+" ON "+table+" (client_id, event_time)")
						}
						if !tt.newIndex {
							stmts = append(stmts, "DROP INDEX "+newIdx)
						}
					case sqlstore.MySQL:
						if tt.oldIndex {
							stmts = append(stmts, "ALTER TABLE "+table+" ADD INDEX "+oldIdx+" (client_id(191), event_time)")
						}
						if !tt.newIndex {
							stmts = append(stmts, "ALTER TABLE "+table+" DROP INDEX "+newIdx)
						}
					}
					for _, stmt := range stmts {
						_, err := e.db.ExecContext(ctx, stmt)
						require.NoError(t, err)
					}
				}
				undoFromVersion5(t, e, prefix)
				_, err := e.db.ExecContext(ctx, "DELETE FROM "+prefix+"schema_migrations WHERE version > 3")
				require.NoError(t, err)

				require.NoError(t, s.Migrate(ctx))
				assert.Equal(t, e.allVersions(), e.versions(t, prefix))
				assert.ElementsMatch(t, want, e.auditIndexes(t, prefix))
			})
		}
	})
}

// applyVersion runs one migration file of the backend's dialect on the
// tables of prefix and records its version, as Migrate would have.
func applyVersion(t *testing.T, e *env, prefix, file string) {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("migrations", e.dialect.String(), file))
	require.NoError(t, err)
	var stmt strings.Builder
	for line := range strings.Lines(strings.ReplaceAll(string(src), "{p}", prefix)) {
		if strings.HasPrefix(strings.TrimSpace(line), "--") {
			continue
		}
		stmt.WriteString(line)
		if strings.HasSuffix(strings.TrimSpace(line), ";") {
			_, err := e.db.ExecContext(t.Context(), strings.TrimSuffix(strings.TrimSpace(stmt.String()), ";"))
			require.NoError(t, err)
			stmt.Reset()
		}
	}
	version, _, _ := strings.Cut(file, "_")
	_, err = e.db.ExecContext(t.Context(), "INSERT INTO "+prefix+"schema_migrations (version, applied_at) VALUES ("+
		strings.TrimLeft(version, "0")+", 0)")
	require.NoError(t, err)
}

// undoFromVersion5 takes the tables of prefix back to before version 5:
// without the revocation tables and the clients' columns of revocation,
// and without the audit events' keys (version 8, and 7 on PostgreSQL).
// (The other versions change nothing that Migrate, run again, does not
// find done.)
func undoFromVersion5(t *testing.T, e *env, prefix string) {
	t.Helper()
	dropKeyIndex := "DROP INDEX " + prefix + "audit_events_key_idx"
	if e.dialect == sqlstore.MySQL {
		dropKeyIndex = "ALTER TABLE " + prefix + "audit_events DROP INDEX " + prefix + "audit_events_key_idx"
	}
	keyVersions := "8"
	if e.dialect == sqlstore.Postgres {
		keyVersions = "7, 8"
	}
	for _, stmt := range []string{
		"DROP TABLE " + prefix + "revocations",
		"DROP TABLE " + prefix + "revocation_state",
		"ALTER TABLE " + prefix + "clients DROP COLUMN can_introspect",
		"ALTER TABLE " + prefix + "clients DROP COLUMN tokens_revoked_at",
		"DELETE FROM " + prefix + "schema_migrations WHERE version = 5",
		dropKeyIndex,
		"ALTER TABLE " + prefix + "audit_events DROP COLUMN event_key",
		"DELETE FROM " + prefix + "schema_migrations WHERE version IN (" + keyVersions + ")",
	} {
		_, err := e.db.ExecContext(t.Context(), stmt)
		require.NoError(t, err, stmt)
	}
}

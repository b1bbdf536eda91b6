package sqlstore_test

import (
	"sync"
	"testing"

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

func TestMigrateIsIdempotent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		want := e.versions(t, prefix)
		require.Equal(t, []int64{1, 2}, want)
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
		assert.Equal(t, []int64{1, 2}, e.versions(t, prefix))
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
		assert.Equal(t, []int64{1, 2, 9999}, e.versions(t, prefix))
	})
}

// TestMigrateUpgrade starts from a schema at version 1, as an earlier
// release left it: Migrate adds what came later and keeps the clients.
func TestMigrateUpgrade(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		require.NoError(t, s.CreateClient(ctx, clientWithSecrets(t, "kept", 1)))
		_, err := e.db.ExecContext(ctx, "DROP TABLE "+prefix+"rate_limits")
		require.NoError(t, err)
		_, err = e.db.ExecContext(ctx, "DELETE FROM "+prefix+"schema_migrations WHERE version = 2")
		require.NoError(t, err)
		require.Equal(t, []int64{1}, e.versions(t, prefix))

		require.NoError(t, s.Migrate(ctx))
		assert.Equal(t, []int64{1, 2}, e.versions(t, prefix))
		_, err = s.Client(ctx, "kept")
		require.NoError(t, err)
		l, err := sqlstore.NewLimiter(e.db, e.dialect, sqlstore.LimiterConfig{TablePrefix: prefix})
		require.NoError(t, err)
		defer l.Close()
		require.NoError(t, l.Fail(ctx, "kept", "192.0.2.1"))
	})
}

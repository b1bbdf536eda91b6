package sqlstore_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// sqliteEnv returns the SQLite backend's database for one test: the
// clients' stamp and the cache of Store.Client are SQLite's alone.
func sqliteEnv(t testing.TB) *env {
	t.Helper()
	be := backends()[0]
	require.Equal(t, "SQLite", be.name)
	e := &env{backend: be, dsn: be.dsn(t)}
	e.db = e.open(t)
	return e
}

// TestClientCacheSeesEveryChange: on SQLite, Store.Client keeps the
// clients it read, yet every change committed before a call is in what the
// call returns, whoever made it: another Store on connections of its own
// (as another process's would be), or an operator's SQL on any of the
// three tables.
func TestClientCacheSeesEveryChange(t *testing.T) {
	e := sqliteEnv(t)
	prefix := e.newPrefix(t)
	s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
	otherDB := e.open(t)
	other, err := sqlstore.New(otherDB, sqlstore.SQLite, sqlstore.Config{TablePrefix: prefix})
	require.NoError(t, err)
	sql := func(ctx context.Context, query string, args ...any) error {
		_, err := otherDB.ExecContext(ctx, query, args...)
		return err
	}
	api := "https://api.example.com"

	tests := []struct {
		name   string
		change func(ctx context.Context, c *m2mauth.Client) error
		check  func(t *testing.T, was, got *m2mauth.Client, err error)
	}{
		{"disabled by another store",
			func(ctx context.Context, c *m2mauth.Client) error { return other.SetDisabled(ctx, c.ID, true) },
			func(t *testing.T, was, got *m2mauth.Client, err error) {
				require.NoError(t, err)
				require.True(t, got.Disabled)
				require.False(t, got.TokensRevokedAt.IsZero(), "disabling sets the watermark")
			}},
		{"tokens revoked by another store",
			func(ctx context.Context, c *m2mauth.Client) error { return other.RevokeClientTokens(ctx, c.ID) },
			func(t *testing.T, was, got *m2mauth.Client, err error) {
				require.NoError(t, err)
				require.False(t, got.TokensRevokedAt.IsZero())
			}},
		{"secret added by another store",
			func(ctx context.Context, c *m2mauth.Client) error {
				_, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
				if err != nil {
					return err
				}
				return other.AddSecret(ctx, c.ID, sec)
			},
			func(t *testing.T, was, got *m2mauth.Client, err error) {
				require.NoError(t, err)
				require.Len(t, got.Secrets, len(was.Secrets)+1)
			}},
		{"secret expired by another store",
			func(ctx context.Context, c *m2mauth.Client) error {
				return other.ExpireSecret(ctx, c.ID, c.Secrets[0].ID, time.Now().Add(-time.Hour))
			},
			func(t *testing.T, was, got *m2mauth.Client, err error) {
				require.NoError(t, err)
				require.False(t, got.Secrets[0].ExpiresAt.IsZero())
			}},
		{"secret removed by another store",
			func(ctx context.Context, c *m2mauth.Client) error {
				return other.RemoveSecret(ctx, c.ID, c.Secrets[0].ID)
			},
			func(t *testing.T, was, got *m2mauth.Client, err error) {
				require.NoError(t, err)
				require.Len(t, got.Secrets, len(was.Secrets)-1)
			}},
		{"grants replaced by another store",
			func(ctx context.Context, c *m2mauth.Client) error {
				c = c.Clone()
				c.Grants = map[string]m2mauth.Scopes{api: {"read"}}
				return other.UpdateClient(ctx, c)
			},
			func(t *testing.T, was, got *m2mauth.Client, err error) {
				require.NoError(t, err)
				require.Equal(t, map[string]m2mauth.Scopes{api: {"read"}}, got.Grants)
			}},
		{"deleted by another store",
			func(ctx context.Context, c *m2mauth.Client) error { return other.DeleteClient(ctx, c.ID) },
			func(t *testing.T, was, got *m2mauth.Client, err error) {
				require.ErrorIs(t, err, m2mauth.ErrClientNotFound)
			}},
		{"disabled by SQL",
			func(ctx context.Context, c *m2mauth.Client) error {
				return sql(ctx, "UPDATE "+prefix+"clients SET disabled = 1 WHERE id = ?", c.ID)
			},
			func(t *testing.T, was, got *m2mauth.Client, err error) {
				require.NoError(t, err)
				require.True(t, got.Disabled)
			}},
		{"secrets deleted by SQL",
			func(ctx context.Context, c *m2mauth.Client) error {
				return sql(ctx, "DELETE FROM "+prefix+"secrets WHERE client_id = ?", c.ID)
			},
			func(t *testing.T, was, got *m2mauth.Client, err error) {
				require.NoError(t, err)
				require.Empty(t, got.Secrets)
			}},
		{"secret hash replaced by SQL",
			func(ctx context.Context, c *m2mauth.Client) error {
				_, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
				if err != nil {
					return err
				}
				return sql(ctx, "UPDATE "+prefix+"secrets SET hash = ? WHERE client_id = ? AND secret_id = ?", sec.Hash, c.ID, c.Secrets[0].ID)
			},
			func(t *testing.T, was, got *m2mauth.Client, err error) {
				require.NoError(t, err)
				require.NotEqual(t, was.Secrets[0].Hash, got.Secrets[0].Hash)
			}},
		{"scopes changed by SQL",
			func(ctx context.Context, c *m2mauth.Client) error {
				return sql(ctx, "UPDATE "+prefix+"grants SET scopes = 'admin' WHERE client_id = ? AND audience = ?", c.ID, api)
			},
			func(t *testing.T, was, got *m2mauth.Client, err error) {
				require.NoError(t, err)
				require.Equal(t, m2mauth.Scopes{"admin"}, got.Grants[api])
			}},
		{"grant added by SQL",
			func(ctx context.Context, c *m2mauth.Client) error {
				return sql(ctx, "INSERT INTO "+prefix+"grants (client_id, audience, scopes) VALUES (?, 'https://new.example.com', 'x')", c.ID)
			},
			func(t *testing.T, was, got *m2mauth.Client, err error) {
				require.NoError(t, err)
				require.Equal(t, m2mauth.Scopes{"x"}, got.Grants["https://new.example.com"])
			}},
		{"deleted by SQL",
			func(ctx context.Context, c *m2mauth.Client) error {
				return sql(ctx, "DELETE FROM "+prefix+"clients WHERE id = ?", c.ID)
			},
			func(t *testing.T, was, got *m2mauth.Client, err error) {
				require.ErrorIs(t, err, m2mauth.ErrClientNotFound)
			}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			was := clientWithSecrets(t, fmt.Sprintf("change-%d", i), 2)
			require.NoError(t, s.CreateClient(ctx, was))
			// Twice: the second call answers from what the first kept.
			for range 2 {
				got, err := s.Client(ctx, was.ID)
				require.NoError(t, err)
				require.Equal(t, was.Secrets, got.Secrets)
				require.False(t, got.Disabled)
			}
			require.Positive(t, sqlstore.CachedClients(s))
			require.NoError(t, tt.change(ctx, was))
			got, err := s.Client(ctx, was.ID)
			tt.check(t, was, got, err)
		})
	}
}

// TestClientCacheCopies: a client Store.Client returns is the caller's on
// SQLite too: changing it changes nothing the next call returns.
func TestClientCacheCopies(t *testing.T) {
	e := sqliteEnv(t)
	s := e.newStore(t, sqlstore.Config{})
	ctx := t.Context()
	want := clientWithSecrets(t, "copied", 2)
	require.NoError(t, s.CreateClient(ctx, want))
	first, err := s.Client(ctx, "copied")
	require.NoError(t, err)
	for range 2 {
		got, err := s.Client(ctx, "copied")
		require.NoError(t, err)
		require.Equal(t, first, got)
		got.Disabled = true
		got.Secrets[0].Hash = "changed"
		got.Secrets = append(got.Secrets[:1], got.Secrets...)
		got.Grants["https://api.example.com"][0] = "admin"
		got.Grants["https://evil.example.com"] = m2mauth.Scopes{"all"}
	}
}

// TestClientCacheBounded: the clients kept are at most 4,096, however many
// are looked up, and a lookup of an unknown id keeps nothing.
func TestClientCacheBounded(t *testing.T) {
	e := sqliteEnv(t)
	prefix := e.newPrefix(t)
	s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
	ctx := t.Context()
	const n = 4096 + 100
	_, err := e.db.ExecContext(ctx, `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
INSERT INTO `+prefix+`clients (id, created_at, updated_at) SELECT 'client-' || i, 0, 0 FROM n`, n)
	require.NoError(t, err)
	for i := range 100 {
		_, err := s.Client(ctx, fmt.Sprintf("unknown-%d", i))
		require.ErrorIs(t, err, m2mauth.ErrClientNotFound)
	}
	require.Zero(t, sqlstore.CachedClients(s))
	for i := 1; i <= n; i++ {
		c, err := s.Client(ctx, fmt.Sprintf("client-%d", i))
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("client-%d", i), c.ID)
	}
	require.Equal(t, 4096, sqlstore.CachedClients(s))
}

// TestClientWithoutStamp: a Store on SQLite whose schema predates the
// clients' stamp (Migrate not run since) reads every client from the
// database, and uses the stamp a minute after Migrate adds it.
func TestClientWithoutStamp(t *testing.T) {
	e := sqliteEnv(t)
	prefix := e.newPrefix(t)
	var now atomic.Pointer[time.Time]
	start := time.Now()
	now.Store(&start)
	logs := &syncBuffer{}
	s := e.newStore(t, sqlstore.Config{TablePrefix: prefix, Now: func() time.Time { return *now.Load() },
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	ctx := t.Context()
	client := clientWithSecrets(t, "old-schema", 1)
	require.NoError(t, s.CreateClient(ctx, client))
	// The schema of the release before: no stamp, no triggers.
	for _, q := range []string{
		"DROP TABLE " + prefix + "client_stamp",
		"DELETE FROM " + prefix + "schema_migrations WHERE version = 7",
	} {
		_, err := e.db.ExecContext(ctx, q)
		require.NoError(t, err)
	}
	for _, table := range []string{"clients", "secrets", "grants"} {
		for _, op := range []string{"insert", "update", "delete"} {
			_, err := e.db.ExecContext(ctx, "DROP TRIGGER "+prefix+table+"_stamp_"+op)
			require.NoError(t, err)
		}
	}
	requireReadEachTime(t, e, s, prefix, "old-schema")
	// One warning a minute, which names neither the client nor a secret.
	require.Equal(t, 1, strings.Count(logs.String(), "level=WARN"), logs.String())
	require.Contains(t, logs.String(), "run Migrate")
	require.NotContains(t, logs.String(), "old-schema")
	require.NotContains(t, logs.String(), client.Secrets[0].Hash)

	require.NoError(t, s.Migrate(ctx))
	_, err := s.Client(ctx, "old-schema")
	require.NoError(t, err)
	require.Zero(t, sqlstore.CachedClients(s), "within a minute of finding no stamp")
	later := start.Add(time.Minute + time.Second)
	now.Store(&later)
	_, err = s.Client(ctx, "old-schema")
	require.NoError(t, err)
	require.Equal(t, 1, sqlstore.CachedClients(s))
	_, err = e.db.ExecContext(ctx, "UPDATE "+prefix+"clients SET disabled = 0 WHERE id = 'old-schema'")
	require.NoError(t, err)
	c, err := s.Client(ctx, "old-schema")
	require.NoError(t, err)
	require.False(t, c.Disabled)
}

// TestClientCacheStampGone: with the stamp's row deleted, changes still
// show, and nothing is kept.
func TestClientCacheStampGone(t *testing.T) {
	e := sqliteEnv(t)
	prefix := e.newPrefix(t)
	s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
	ctx := t.Context()
	require.NoError(t, s.CreateClient(ctx, clientWithSecrets(t, "stampless", 1)))
	_, err := s.Client(ctx, "stampless")
	require.NoError(t, err)
	require.Equal(t, 1, sqlstore.CachedClients(s))
	_, err = e.db.ExecContext(ctx, "DELETE FROM "+prefix+"client_stamp")
	require.NoError(t, err)
	requireReadEachTime(t, e, s, prefix, "stampless")
}

// requireReadEachTime requires that s, which keeps no client, sees each of
// a few changes made by SQL to client id at its next lookup.
func requireReadEachTime(t *testing.T, e *env, s *sqlstore.Store, prefix, id string) {
	t.Helper()
	for _, disabled := range []bool{true, false, true} {
		_, err := e.db.ExecContext(t.Context(), "UPDATE "+prefix+"clients SET disabled = ? WHERE id = ?", disabled, id)
		require.NoError(t, err)
		c, err := s.Client(t.Context(), id)
		require.NoError(t, err)
		require.Equal(t, disabled, c.Disabled)
		require.Zero(t, sqlstore.CachedClients(s))
	}
}

// TestClientCacheConsistent: under 200 concurrent lookups, while another
// connection changes two columns of a client in each transaction, every
// client returned is one that was committed (never half of one change and
// half of another), and a lookup that starts after a change has committed
// sees it or a later one.
func TestClientCacheConsistent(t *testing.T) {
	e := sqliteEnv(t)
	prefix := e.newPrefix(t)
	s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
	ctx := t.Context()
	require.NoError(t, s.CreateClient(ctx, clientWithSecrets(t, "flipped", 1)))
	writer := e.open(t)
	var committed atomic.Int64 // the last change known to have committed
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 200 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				floor := committed.Load()
				c, err := s.Client(ctx, "flipped")
				if !(assertNoError(t, err)) {
					return
				}
				n := int64(c.TokenTTL / time.Second)
				if c.Disabled != (n%2 == 1) || n < floor {
					t.Errorf("change %d (disabled %t) read after change %d committed", n, c.Disabled, floor)
					return
				}
			}
		})
	}
	// The changes are spread over a few of the leases of the connection
	// the stamp is read on, so that lookups also meet its return to the
	// pool and the taking of another.
	for n := int64(1); n <= 50; n++ {
		_, err := writer.ExecContext(ctx, "UPDATE "+prefix+"clients SET disabled = ?, token_ttl_ns = ? WHERE id = 'flipped'",
			n%2 == 1, n*int64(time.Second))
		require.NoError(t, err)
		committed.Store(n)
		if n%10 == 0 {
			time.Sleep(sqlstore.StampLease / 2)
		}
	}
	close(stop)
	wg.Wait()
}

func assertNoError(t *testing.T, err error) bool {
	t.Helper()
	if err != nil {
		t.Errorf("Client: %v", err)
		return false
	}
	return true
}

// TestClientStampTriggers: after Migrate, each of the three tables a
// client is read from has its three triggers on the stamp. A later
// migration that rebuilds one of them (SQLite's way to change a column)
// drops its triggers with it and must create them again.
func TestClientStampTriggers(t *testing.T) {
	e := sqliteEnv(t)
	prefix := e.newPrefix(t)
	e.newStore(t, sqlstore.Config{TablePrefix: prefix})
	for _, table := range []string{"clients", "secrets", "grants"} {
		rows, err := e.db.QueryContext(t.Context(),
			"SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? ORDER BY name", prefix+table)
		require.NoError(t, err)
		var ops []string
		for rows.Next() {
			var def string
			require.NoError(t, rows.Scan(&def))
			require.Contains(t, def, "UPDATE "+prefix+"client_stamp SET stamp = random()")
			for _, op := range []string{"INSERT", "UPDATE", "DELETE"} {
				if strings.Contains(def, "AFTER "+op+" ON "+prefix+table+"\n") {
					ops = append(ops, op)
				}
			}
		}
		require.NoError(t, rows.Err())
		require.ElementsMatch(t, []string{"INSERT", "UPDATE", "DELETE"}, ops, table)
	}
}

// TestClientStampConnection: on SQLite the Store reads the clients' stamp
// on a connection it takes from db's pool for a short lease, never when
// db allows fewer than four connections; a lookup's context bounds its
// wait for that connection, and a lookup after db is closed fails once
// the lease has ended.
func TestClientStampConnection(t *testing.T) {
	tests := []struct {
		name     string
		rollback bool // a rollback journal instead of WAL
		run      func(t *testing.T, db *sql.DB, s *sqlstore.Store, lookup func(context.Context) error)
	}{
		{"GivenBackAfterTheLease", false, func(t *testing.T, db *sql.DB, s *sqlstore.Store, lookup func(context.Context) error) {
			require.NoError(t, lookup(t.Context()))
			require.Equal(t, 1, db.Stats().InUse, "kept while the lease lasts")
			taken := time.Now()
			require.Eventually(t, func() bool { return db.Stats().InUse == 0 }, 10*time.Second, 5*time.Millisecond)
			require.GreaterOrEqual(t, time.Since(taken), sqlstore.StampLease/2)
			require.NoError(t, lookup(t.Context()))
			require.Equal(t, 1, db.Stats().InUse)
			require.NoError(t, s.Close())
			require.Zero(t, db.Stats().InUse, "given back by Close")
		}},
		{"NotTakenFromASmallPool", false, func(t *testing.T, db *sql.DB, s *sqlstore.Store, lookup func(context.Context) error) {
			db.SetMaxOpenConns(3)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			for _, disabled := range []bool{true, false} {
				require.NoError(t, lookup(ctx))
				require.Zero(t, db.Stats().InUse)
				require.NoError(t, s.SetDisabled(ctx, "stamped", disabled))
				c, err := s.Client(ctx, "stamped")
				require.NoError(t, err)
				require.Equal(t, disabled, c.Disabled)
			}
		}},
		{"NotTakenWithoutWAL", true, func(t *testing.T, db *sql.DB, s *sqlstore.Store, lookup func(context.Context) error) {
			for _, disabled := range []bool{true, false} {
				require.NoError(t, lookup(t.Context()))
				require.Zero(t, db.Stats().InUse)
				require.NoError(t, s.SetDisabled(t.Context(), "stamped", disabled))
				c, err := s.Client(t.Context(), "stamped")
				require.NoError(t, err)
				require.Equal(t, disabled, c.Disabled)
			}
		}},
		{"WaitBoundedByContext", false, func(t *testing.T, db *sql.DB, s *sqlstore.Store, lookup func(context.Context) error) {
			release := sqlstore.HoldStampTurn(s)
			ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
			defer cancel()
			require.ErrorIs(t, lookup(ctx), context.DeadlineExceeded)
			release()
			require.NoError(t, lookup(t.Context()))
		}},
		{"ContextCancelled", false, func(t *testing.T, db *sql.DB, s *sqlstore.Store, lookup func(context.Context) error) {
			require.NoError(t, lookup(t.Context()))
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			require.ErrorIs(t, lookup(ctx), context.Canceled)
		}},
		{"DatabaseClosed", false, func(t *testing.T, db *sql.DB, s *sqlstore.Store, lookup func(context.Context) error) {
			require.NoError(t, lookup(t.Context()))
			require.NoError(t, db.Close())
			time.Sleep(sqlstore.StampLease)
			err := lookup(t.Context())
			require.Error(t, err)
			require.NotErrorIs(t, err, m2mauth.ErrClientNotFound)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := sqliteEnv(t)
			if tt.rollback {
				e.dsn = "file:" + filepath.Join(t.TempDir(), "rollback.db") + "?_pragma=foreign_keys(1)&_pragma=busy_timeout(5000)"
				e.db = e.open(t)
			}
			s, err := sqlstore.New(e.db, sqlstore.SQLite, sqlstore.Config{TablePrefix: e.newPrefix(t)})
			require.NoError(t, err)
			t.Cleanup(func() { s.Close() })
			require.NoError(t, s.Migrate(t.Context()))
			require.NoError(t, s.CreateClient(t.Context(), clientWithSecrets(t, "stamped", 1)))
			lookup := func(ctx context.Context) error {
				c, err := s.Client(ctx, "stamped")
				if err == nil {
					require.Equal(t, "stamped", c.ID)
				}
				return err
			}
			// Read and kept: the next lookups read the stamp.
			require.NoError(t, lookup(t.Context()))
			require.Equal(t, 1, sqlstore.CachedClients(s))
			tt.run(t, e.db, s, lookup)
		})
	}
}

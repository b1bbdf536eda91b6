package sqlstore_test

import (
	"cmp"
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
	"github.com/m2mauth/m2mauth/storetest"
)

// backend is one database engine the tests run against.
type backend struct {
	name    string
	dialect sqlstore.Dialect
	driver  string
	// dsn returns the data source name of a database for t, or skips t.
	dsn func(t testing.TB) string
}

func backends() []backend {
	fromEnv := func(env, engine string) func(t testing.TB) string {
		return func(t testing.TB) string {
			dsn := os.Getenv(env)
			if dsn == "" {
				t.Skipf("set %s to run against %s", env, engine)
			}
			return dsn
		}
	}
	return []backend{
		{"SQLite", sqlstore.SQLite, "sqlite", func(t testing.TB) string {
			dsn := "file:" + filepath.Join(t.TempDir(), "m2mauth.db") +
				"?_pragma=foreign_keys(1)&_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)"
			// Switching a new file to WAL needs it to itself, and fails
			// at once with SQLITE_BUSY rather than waiting: do it before
			// a test opens several connections. The mode is kept in the
			// file, so later connections find nothing to switch.
			db, err := sql.Open("sqlite", dsn)
			require.NoError(t, err)
			defer db.Close()
			require.NoError(t, db.Ping())
			return dsn
		}},
		{"PostgreSQL", sqlstore.Postgres, "pgx", fromEnv("M2MAUTH_TEST_POSTGRES_DSN", "PostgreSQL")},
		{"MySQL", sqlstore.MySQL, "mysql", func(t testing.TB) string {
			return mysqlDSN(t, fromEnv("M2MAUTH_TEST_MYSQL_DSN", "MySQL or MariaDB")(t))
		}},
	}
}

// mysqlDSN accepts the MySQL DSN in either form the project's tools take:
// mysql://user:pass@host:port/db?params, as the example's -db flag, or
// the go-sql-driver form user:pass@tcp(host:port)/db?params.
func mysqlDSN(t testing.TB, dsn string) string {
	t.Helper()
	if !strings.HasPrefix(dsn, "mysql://") {
		return dsn
	}
	u, err := url.Parse(dsn)
	require.NoError(t, err, "M2MAUTH_TEST_MYSQL_DSN")
	cfg := mysql.NewConfig()
	cfg.Net, cfg.Addr = "tcp", u.Host
	if u.Port() == "" {
		cfg.Addr = net.JoinHostPort(cmp.Or(u.Hostname(), "127.0.0.1"), "3306")
	}
	cfg.User = u.User.Username()
	cfg.Passwd, _ = u.User.Password()
	cfg.DBName = strings.TrimPrefix(u.Path, "/")
	for k, v := range u.Query() {
		if cfg.Params == nil {
			cfg.Params = map[string]string{}
		}
		cfg.Params[k] = v[0]
	}
	parsed, err := mysql.ParseDSN(cfg.FormatDSN()) // applies parseTime and the like
	require.NoError(t, err, "M2MAUTH_TEST_MYSQL_DSN")
	return parsed.FormatDSN()
}

// env is one backend's database for one test.
type env struct {
	backend
	dsn string
	db  *sql.DB
}

// forEachBackend runs f as a subtest per backend, each with a database of
// its own.
func forEachBackend(t *testing.T, f func(t *testing.T, e *env)) {
	t.Helper()
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			dsn := b.dsn(t)
			e := &env{backend: b, dsn: dsn}
			e.db = e.open(t)
			f(t, e)
		})
	}
}

// open returns a new *sql.DB on the backend's database, closed when t ends.
func (e *env) open(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open(e.driver, e.dsn)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

// newPrefix returns a table prefix no other test run uses, and drops its
// tables when t ends.
func (e *env) newPrefix(t testing.TB) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	prefix := "t" + hex.EncodeToString(b) + "_"
	t.Cleanup(func() {
		// A connection of its own: the test may have closed its *sql.DB.
		db, err := sql.Open(e.driver, e.dsn)
		if err != nil {
			t.Errorf("drop tables: %v", err)
			return
		}
		defer db.Close()
		for _, table := range []string{"grants", "secrets", "clients", "audit_events", "rate_limits", "revocations", "revocation_state", "signing_keys", "key_events", "client_stamp", "schema_migrations"} {
			if _, err := db.Exec("DROP TABLE IF EXISTS " + prefix + table); err != nil {
				t.Errorf("drop table %s%s: %v", prefix, table, err)
			}
		}
		if e.dialect == sqlstore.MySQL {
			for _, name := range procedures(t, db, prefix) {
				if _, err := db.Exec("DROP PROCEDURE IF EXISTS " + name); err != nil {
					t.Errorf("drop procedure %s: %v", name, err)
				}
			}
		}
	})
	return prefix
}

// procedures returns the names of the MySQL procedures of prefix.
func procedures(t testing.TB, db *sql.DB, prefix string) []string {
	t.Helper()
	rows, err := db.Query("SELECT routine_name FROM information_schema.routines WHERE routine_schema = DATABASE() AND routine_name LIKE ?",
		strings.ReplaceAll(prefix, "_", `\_`)+"%")
	if err != nil {
		t.Errorf("list procedures: %v", err)
		return nil
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Errorf("list procedures: %v", err)
			return nil
		}
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		t.Errorf("list procedures: %v", err)
	}
	return names
}

// newStore returns a migrated store on fresh tables of e.db.
func (e *env) newStore(t testing.TB, cfg sqlstore.Config) *sqlstore.Store {
	t.Helper()
	if cfg.TablePrefix == "" {
		cfg.TablePrefix = e.newPrefix(t)
	}
	s, err := sqlstore.New(e.db, e.dialect, cfg)
	require.NoError(t, err)
	require.NoError(t, s.Migrate(t.Context()))
	t.Cleanup(func() { s.Close() })
	return s
}

// placeholder returns the n-th (1-based) bind parameter of the backend.
func (e *env) placeholder(n int) string {
	if e.dialect == sqlstore.Postgres {
		return fmt.Sprintf("$%d", n)
	}
	return "?"
}

func TestConformance(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		storetest.Run(t, func(t *testing.T) m2mauth.ClientManager {
			return e.newStore(t, sqlstore.Config{})
		}, storetest.WithAuditedStore(func(t *testing.T, a m2mauth.Auditor) m2mauth.ClientManager {
			return e.newStore(t, sqlstore.Config{Auditor: a})
		}), storetest.WithClock(func(t *testing.T, now func() time.Time) m2mauth.ClientManager {
			return e.newStore(t, sqlstore.Config{Now: now})
		}))
	})
}

func TestNew(t *testing.T) {
	db, err := sql.Open("sqlite", "file:"+filepath.Join(t.TempDir(), "new.db"))
	require.NoError(t, err)
	defer db.Close()
	tests := []struct {
		name    string
		db      *sql.DB
		dialect sqlstore.Dialect
		prefix  string
		ok      bool
	}{
		{"Default", db, sqlstore.SQLite, "", true},
		{"Postgres", db, sqlstore.Postgres, "", true},
		{"MySQL", db, sqlstore.MySQL, "", true},
		{"LettersDigitsUnderscores", db, sqlstore.SQLite, "auth2_", true},
		{"LeadingUnderscore", db, sqlstore.SQLite, "_auth", true},
		{"ThirtyTwo", db, sqlstore.SQLite, strings.Repeat("a", 32), true},
		{"NilDB", nil, sqlstore.SQLite, "", false},
		{"ZeroDialect", db, 0, "", false},
		{"UnknownDialect", db, sqlstore.Dialect(42), "", false},
		{"UpperCase", db, sqlstore.SQLite, "Auth_", false},
		{"LeadingDigit", db, sqlstore.SQLite, "1auth_", false},
		{"Hyphen", db, sqlstore.SQLite, "m2m-auth_", false},
		{"Space", db, sqlstore.SQLite, "m2m auth", false},
		{"Quote", db, sqlstore.SQLite, `x"`, false},
		{"Injection", db, sqlstore.SQLite, "x; DROP TABLE users; --", false},
		{"Dot", db, sqlstore.SQLite, "public.auth_", false},
		{"NonASCII", db, sqlstore.SQLite, "ãuth_", false},
		{"TooLong", db, sqlstore.SQLite, strings.Repeat("a", 33), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := sqlstore.New(tt.db, tt.dialect, sqlstore.Config{TablePrefix: tt.prefix})
			a, aerr := sqlstore.NewAuditor(tt.db, tt.dialect, sqlstore.AuditorConfig{TablePrefix: tt.prefix})
			if a != nil {
				t.Cleanup(func() { a.Close() })
			}
			if tt.ok {
				require.NoError(t, err)
				require.NotNil(t, s)
				require.NoError(t, aerr)
				require.NotNil(t, a)
				return
			}
			require.Error(t, err)
			assert.Nil(t, s)
			require.Error(t, aerr)
			assert.Nil(t, a)
		})
	}
}

func TestDialectString(t *testing.T) {
	assert.Equal(t, "postgres", sqlstore.Postgres.String())
	assert.Equal(t, "mysql", sqlstore.MySQL.String())
	assert.Equal(t, "sqlite", sqlstore.SQLite.String())
	assert.Equal(t, "Dialect(9)", sqlstore.Dialect(9).String())
}

// TestClientOneQuery checks that the read on the token path is a single
// statement execution, through a driver that counts what reaches it.
func TestClientOneQuery(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		setup := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		want := clientWithSecrets(t, "counted", 3)
		require.NoError(t, setup.CreateClient(t.Context(), want))

		counter := &tally{}
		cdb := sql.OpenDB(&countingConnector{drv: e.db.Driver(), dsn: e.dsn, n: counter})
		t.Cleanup(func() { cdb.Close() })
		cdb.SetMaxOpenConns(1)
		s, err := sqlstore.New(cdb, e.dialect, sqlstore.Config{TablePrefix: prefix})
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })

		// The first call prepares the statement on the connection; on
		// SQLite, the second prepares the stamp's (see
		// TestClientCacheSeesEveryChange).
		_, err = s.Client(t.Context(), "counted")
		require.NoError(t, err)
		require.Equal(t, counts{queries: 1, prepares: 1}, counter.snapshot(), "first call")
		if e.dialect == sqlstore.SQLite {
			counter.reset()
			_, err = s.Client(t.Context(), "counted")
			require.NoError(t, err)
			require.Equal(t, counts{queries: 1, prepares: 1}, counter.snapshot(), "second call")
		}

		for _, id := range []string{"counted", "missing"} {
			counter.reset()
			got, err := s.Client(t.Context(), id)
			if id == "missing" {
				require.ErrorIs(t, err, m2mauth.ErrClientNotFound)
			} else {
				require.NoError(t, err)
				assert.Len(t, got.Secrets, 3)
				assert.Len(t, got.Grants, 2)
			}
			assert.Equal(t, counts{queries: 1}, counter.snapshot(), "Client(%q): statements that reached the driver", id)
		}
	})
}

// TestClientClosedDB checks that a database failure is not mistaken for an
// unknown client, which would turn an outage into failed authentications.
func TestClientClosedDB(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		db := e.open(t)
		s, err := sqlstore.New(db, e.dialect, sqlstore.Config{TablePrefix: prefix})
		require.NoError(t, err)
		require.NoError(t, s.Migrate(t.Context()))
		require.NoError(t, s.CreateClient(t.Context(), clientWithSecrets(t, "known", 1)))
		_, err = s.Client(t.Context(), "known")
		require.NoError(t, err)

		require.NoError(t, db.Close())
		for _, id := range []string{"known", "unknown"} {
			c, err := s.Client(t.Context(), id)
			require.Error(t, err)
			assert.NotErrorIs(t, err, m2mauth.ErrClientNotFound, "Client(%q)", id)
			assert.Nil(t, c)
		}
		_, err = s.ListClients(t.Context(), "", 0)
		assert.Error(t, err)
		err = s.SetDisabled(t.Context(), "known", true)
		require.Error(t, err)
		assert.NotErrorIs(t, err, m2mauth.ErrClientNotFound)
		err = s.CreateClient(t.Context(), clientWithSecrets(t, "new", 1))
		require.Error(t, err)
		assert.NotErrorIs(t, err, m2mauth.ErrClientExists)
	})
}

func TestClientAfterClose(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		s := e.newStore(t, sqlstore.Config{})
		require.NoError(t, s.CreateClient(t.Context(), clientWithSecrets(t, "c", 1)))
		require.NoError(t, s.Close())
		_, err := s.Client(t.Context(), "c")
		require.Error(t, err)
		assert.NotErrorIs(t, err, m2mauth.ErrClientNotFound)
		require.NoError(t, s.Close(), "second Close")
		// The administration methods do not use the prepared statement.
		require.NoError(t, s.SetDisabled(t.Context(), "c", true))
	})
}

// TestColumnLimits checks what Validate allows but the tables cannot hold:
// it is refused, identically on every engine, and nothing is stored.
func TestColumnLimits(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		s := e.newStore(t, sqlstore.Config{})
		base := clientWithSecrets(t, "base", 1)
		require.NoError(t, s.CreateClient(ctx, base.Clone()))
		before, err := s.Client(ctx, "base")
		require.NoError(t, err)

		longAud := "https://" + strings.Repeat("a", 248) // 256 bytes
		okAud := "https://" + strings.Repeat("a", 247)   // 255 bytes
		tests := []struct {
			name   string
			grants map[string]m2mauth.Scopes
			secret func(*m2mauth.Secret)
		}{
			{"LongAudience", map[string]m2mauth.Scopes{longAud: {"read"}}, nil},
			{"AudienceWithNUL", map[string]m2mauth.Scopes{"https://a\x00b": {"read"}}, nil},
			{"AudienceNotUTF8", map[string]m2mauth.Scopes{"https://a\xffb": {"read"}}, nil},
			{"LongSecretID", nil, func(s *m2mauth.Secret) { s.ID = strings.Repeat("s", 256) }},
			{"SecretIDNotUTF8", nil, func(s *m2mauth.Secret) { s.ID = "sec_\xc3" }},
			{"SecretIDWithNUL", nil, func(s *m2mauth.Secret) { s.ID = "sec_\x00" }},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				c := clientWithSecrets(t, "limits-"+tt.name, 1)
				if tt.grants != nil {
					c.Grants = tt.grants
				}
				if tt.secret != nil {
					tt.secret(&c.Secrets[0])
				}
				require.NoError(t, c.Validate(), "the case must be one Validate allows")
				require.Error(t, s.CreateClient(ctx, c))
				_, err := s.Client(ctx, c.ID)
				require.ErrorIs(t, err, m2mauth.ErrClientNotFound)

				if tt.grants != nil {
					upd := before.Clone()
					upd.Grants = tt.grants
					require.Error(t, s.UpdateClient(ctx, upd))
				}
				if tt.secret != nil {
					require.Error(t, s.AddSecret(ctx, "base", c.Secrets[0]))
				}
				after, err := s.Client(ctx, "base")
				require.NoError(t, err)
				assert.Equal(t, before, after)
			})
		}

		t.Run("AtTheLimit", func(t *testing.T) {
			c := clientWithSecrets(t, strings.Repeat("c", 255), 1)
			c.Secrets[0].ID = strings.Repeat("s", 255)
			c.Grants = map[string]m2mauth.Scopes{okAud: {"read"}, "https://ünïcode.example": {"read"}}
			require.NoError(t, s.CreateClient(ctx, c.Clone()))
			got, err := s.Client(ctx, c.ID)
			require.NoError(t, err)
			assert.Equal(t, c.Secrets[0].ID, got.Secrets[0].ID)
			assert.Equal(t, c.Grants, got.Grants)
		})
	})
}

// TestListClientsByteOrder checks that ids are listed in byte order on
// every engine, and that an after holding bytes no id can contain selects
// what it would in memory.
func TestListClientsByteOrder(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		s := e.newStore(t, sqlstore.Config{})
		ids := []string{" lead", "!x", "0", "A", "B", "Z", "_x", "a", "a b", "a-b", "aB", "ab", "b", "z", "~", "~~"}
		for _, id := range ids {
			require.NoError(t, s.CreateClient(ctx, &m2mauth.Client{ID: id, Public: true}))
		}
		page, err := s.ListClients(ctx, "", 100)
		require.NoError(t, err)
		assert.Equal(t, ids, idsOf(page))

		for _, after := range []string{"a\x00", "a\x1f", "a\x7f", "a\xff", "a\xc3\xa9", "\xff", "\x00", "ab\xffzz", "é"} {
			var want []string
			for _, id := range ids {
				if id > after {
					want = append(want, id)
				}
			}
			page, err := s.ListClients(ctx, after, 100)
			require.NoError(t, err, "after %q", after)
			assert.Equal(t, want, idsOf(page), "after %q", after)
		}
	})
}

// TestSecretOrder checks that secrets come back in the order they were
// added, across removals, as memstore keeps them.
func TestSecretOrder(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		s := e.newStore(t, sqlstore.Config{})
		c := clientWithSecrets(t, "ordered", 3)
		// Ids that sort against the order of addition.
		for i, id := range []string{"sec_z", "sec_m", "sec_a"} {
			c.Secrets[i].ID = id
		}
		require.NoError(t, s.CreateClient(ctx, c))
		_, extra, err := m2mauth.NewSecret(time.Now(), time.Time{})
		require.NoError(t, err)
		extra.ID = "sec_0"
		require.NoError(t, s.AddSecret(ctx, "ordered", extra))
		require.NoError(t, s.RemoveSecret(ctx, "ordered", "sec_m"))
		_, again, err := m2mauth.NewSecret(time.Now(), time.Time{})
		require.NoError(t, err)
		again.ID = "sec_m"
		require.NoError(t, s.AddSecret(ctx, "ordered", again))

		got, err := s.Client(ctx, "ordered")
		require.NoError(t, err)
		var order []string
		for _, sec := range got.Secrets {
			order = append(order, sec.ID)
		}
		assert.Equal(t, []string{"sec_z", "sec_a", "sec_0", "sec_m"}, order)
	})
}

// TestConcurrentAddSecrets has writers add distinct secrets to one client
// at once: every one must land, none twice.
func TestConcurrentAddSecrets(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		s := e.newStore(t, sqlstore.Config{})
		require.NoError(t, s.CreateClient(ctx, clientWithSecrets(t, "busy", 1)))
		const writers = 8
		var wg sync.WaitGroup
		for range writers {
			_, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
			require.NoError(t, err)
			wg.Go(func() { assert.NoError(t, s.AddSecret(ctx, "busy", sec)) })
		}
		wg.Wait()
		got, err := s.Client(ctx, "busy")
		require.NoError(t, err)
		assert.Len(t, got.Secrets, writers+1)
		assert.NoError(t, got.Validate())
	})
}

// TestClock checks that Config.Now stamps what the store stamps, and that
// times are kept to the microsecond, in UTC.
func TestClock(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		var now atomic.Pointer[time.Time]
		set := func(tm time.Time) { now.Store(&tm) }
		set(time.Date(2030, 1, 2, 3, 4, 5, 678901234, time.FixedZone("X", 3600)))
		s := e.newStore(t, sqlstore.Config{Now: func() time.Time { return *now.Load() }})

		c := clientWithSecrets(t, "clocked", 1)
		c.Secrets[0].ExpiresAt = time.Date(2031, 1, 1, 0, 0, 0, 999, time.UTC)
		require.NoError(t, s.CreateClient(ctx, c))
		got, err := s.Client(ctx, "clocked")
		require.NoError(t, err)
		created := time.Date(2030, 1, 2, 2, 4, 5, 678901000, time.UTC)
		assert.Equal(t, created, got.CreatedAt)
		assert.Equal(t, created, got.UpdatedAt)
		assert.Equal(t, time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC), got.Secrets[0].ExpiresAt, "rounded down")

		later := time.Date(2030, 6, 1, 0, 0, 0, 0, time.UTC)
		set(later)
		steps := []func() error{
			func() error { return s.SetDisabled(ctx, "clocked", true) },
			func() error { return s.ExpireSecret(ctx, "clocked", c.Secrets[0].ID, time.Time{}) },
			func() error {
				_, sec, _ := m2mauth.NewSecret(later, time.Time{})
				return s.AddSecret(ctx, "clocked", sec)
			},
			func() error { return s.RemoveSecret(ctx, "clocked", c.Secrets[0].ID) },
			func() error { return s.UpdateClient(ctx, &m2mauth.Client{ID: "clocked"}) },
		}
		for i, step := range steps {
			set(later.Add(time.Duration(i) * time.Hour))
			require.NoError(t, step(), "step %d", i)
			got, err := s.Client(ctx, "clocked")
			require.NoError(t, err)
			assert.Equal(t, created, got.CreatedAt, "step %d", i)
			assert.Equal(t, later.Add(time.Duration(i)*time.Hour), got.UpdatedAt, "step %d", i)
		}
	})
}

// TestExpireSecretTwice sets the same expiry twice: the second call
// changes no row, which must not read as an unknown secret.
func TestExpireSecretTwice(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		s := e.newStore(t, sqlstore.Config{Now: func() time.Time { return time.Unix(1e9, 0) }})
		c := clientWithSecrets(t, "twice", 1)
		require.NoError(t, s.CreateClient(ctx, c))
		at := time.Unix(2e9, 0)
		require.NoError(t, s.ExpireSecret(ctx, "twice", c.Secrets[0].ID, at))
		require.NoError(t, s.ExpireSecret(ctx, "twice", c.Secrets[0].ID, at))
		require.NoError(t, s.SetDisabled(ctx, "twice", false))
		require.NoError(t, s.SetDisabled(ctx, "twice", false))
		require.ErrorIs(t, s.ExpireSecret(ctx, "twice", "sec_nope", at), m2mauth.ErrSecretNotFound)
		require.ErrorIs(t, s.ExpireSecret(ctx, "nobody", c.Secrets[0].ID, at), m2mauth.ErrClientNotFound)
	})
}

// TestDeleteClientLeavesNothing checks the tables themselves after a
// delete, so no secret can come back with a later client of the same id.
func TestDeleteClientLeavesNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		require.NoError(t, s.CreateClient(ctx, clientWithSecrets(t, "gone", 2)))
		require.NoError(t, s.CreateClient(ctx, clientWithSecrets(t, "kept", 2)))
		require.NoError(t, s.DeleteClient(ctx, "gone"))
		for table, want := range map[string]int{"clients": 1, "secrets": 2, "grants": 2} {
			var n int
			require.NoError(t, e.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+prefix+table).Scan(&n))
			assert.Equal(t, want, n, "rows left in %s", table)
		}
	})
}

// TestStoredForm looks at the rows: times in unix microseconds, scopes
// space-delimited, and a hash, never the secret.
func TestStoredForm(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		created := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
		plain, sec, err := m2mauth.NewSecret(created, time.Time{})
		require.NoError(t, err)
		require.NoError(t, s.CreateClient(ctx, &m2mauth.Client{
			ID:        "stored",
			Secrets:   []m2mauth.Secret{sec},
			Grants:    map[string]m2mauth.Scopes{"https://api.example.com": {"read", "write"}},
			TokenTTL:  90 * time.Second,
			CreatedAt: created,
		}))
		var ttl, createdAt int64
		require.NoError(t, e.db.QueryRowContext(ctx, "SELECT token_ttl_ns, created_at FROM "+prefix+"clients WHERE id = "+e.placeholder(1), "stored").Scan(&ttl, &createdAt))
		assert.Equal(t, int64(90*time.Second), ttl)
		assert.Equal(t, created.UnixMicro(), createdAt)
		var scopes string
		require.NoError(t, e.db.QueryRowContext(ctx, "SELECT scopes FROM "+prefix+"grants").Scan(&scopes))
		assert.Equal(t, "read write", scopes)
		var hash string
		var expires sql.NullInt64
		require.NoError(t, e.db.QueryRowContext(ctx, "SELECT hash, expires_at FROM "+prefix+"secrets").Scan(&hash, &expires))
		assert.Equal(t, sec.Hash, hash)
		assert.NotContains(t, hash, plain)
		assert.False(t, expires.Valid, "no expiry is NULL")
	})
}

// TestPrefixesAreSeparate checks that two stores with different prefixes
// share a database without seeing each other.
func TestPrefixesAreSeparate(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		a := e.newStore(t, sqlstore.Config{})
		b := e.newStore(t, sqlstore.Config{})
		require.NoError(t, a.CreateClient(ctx, clientWithSecrets(t, "only-in-a", 1)))
		_, err := b.Client(ctx, "only-in-a")
		require.ErrorIs(t, err, m2mauth.ErrClientNotFound)
		require.NoError(t, b.CreateClient(ctx, clientWithSecrets(t, "only-in-a", 1)), "same id, other tables")
	})
}

func clientWithSecrets(t testing.TB, id string, n int) *m2mauth.Client {
	t.Helper()
	c := &m2mauth.Client{
		ID: id,
		Grants: map[string]m2mauth.Scopes{
			"https://api.example.com":   {"read", "write"},
			"https://other.example.com": {},
		},
		TokenTTL: time.Minute,
	}
	for range n {
		_, sec, err := m2mauth.NewSecret(time.Now().UTC().Truncate(time.Microsecond), time.Time{})
		require.NoError(t, err)
		c.Secrets = append(c.Secrets, sec)
	}
	return c
}

func idsOf(cs []*m2mauth.Client) []string {
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	return ids
}

// counts is what reached a driver through a countingConnector.
type counts struct {
	queries, execs, prepares, begins int64
}

// tally counts, safely for concurrent use.
type tally struct {
	queries, execs, prepares, begins atomic.Int64
}

func (t *tally) reset() {
	t.queries.Store(0)
	t.execs.Store(0)
	t.prepares.Store(0)
	t.begins.Store(0)
}

func (t *tally) snapshot() counts {
	return counts{t.queries.Load(), t.execs.Load(), t.prepares.Load(), t.begins.Load()}
}

// countingConnector opens connections with drv and counts every query,
// statement and transaction that reaches them.
type countingConnector struct {
	drv driver.Driver
	dsn string
	n   *tally
}

func (c *countingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	var conn driver.Conn
	var err error
	if dc, ok := c.drv.(driver.DriverContext); ok {
		var ctr driver.Connector
		if ctr, err = dc.OpenConnector(c.dsn); err == nil {
			conn, err = ctr.Connect(ctx)
		}
	} else {
		conn, err = c.drv.Open(c.dsn)
	}
	if err != nil {
		return nil, err
	}
	return &countingConn{passConn: passConn{conn}, n: c.n}, nil
}

func (c *countingConnector) Driver() driver.Driver { return c.drv }

type countingConn struct {
	passConn
	n *tally
}

func (c *countingConn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *countingConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	c.n.prepares.Add(1)
	var st driver.Stmt
	var err error
	if p, ok := c.Conn.(driver.ConnPrepareContext); ok {
		st, err = p.PrepareContext(ctx, query)
	} else {
		st, err = c.Conn.Prepare(query)
	}
	if err != nil {
		return nil, err
	}
	return &countingStmt{Stmt: st, n: c.n}, nil
}

func (c *countingConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *countingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	c.n.begins.Add(1)
	if b, ok := c.Conn.(driver.ConnBeginTx); ok {
		return b.BeginTx(ctx, opts)
	}
	return c.Conn.Begin()
}

func (c *countingConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	q, ok := c.Conn.(driver.QueryerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	rows, err := q.QueryContext(ctx, query, args)
	if err != driver.ErrSkip { // ErrSkip: database/sql prepares instead
		c.n.queries.Add(1)
	}
	return rows, err
}

func (c *countingConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	e, ok := c.Conn.(driver.ExecerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	res, err := e.ExecContext(ctx, query, args)
	if err != driver.ErrSkip {
		c.n.execs.Add(1)
	}
	return res, err
}

type countingStmt struct {
	driver.Stmt
	n *tally
}

func (s *countingStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	s.n.queries.Add(1)
	if q, ok := s.Stmt.(driver.StmtQueryContext); ok {
		return q.QueryContext(ctx, args)
	}
	return s.Stmt.Query(values(args))
}

func (s *countingStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	s.n.execs.Add(1)
	if e, ok := s.Stmt.(driver.StmtExecContext); ok {
		return e.ExecContext(ctx, args)
	}
	return s.Stmt.Exec(values(args))
}

func values(args []driver.NamedValue) []driver.Value {
	out := make([]driver.Value, len(args))
	for i, a := range args {
		out[i] = a.Value
	}
	return out
}

// TestAdminAuditTrail makes changes through a store whose auditor is an
// Auditor on the same database, and reads the trail back: one row per
// change, in order, with the store's clock, none for the changes that
// failed, and no secret or hash in any column.
func TestAdminAuditTrail(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		a, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{TablePrefix: prefix})
		require.NoError(t, err)
		t.Cleanup(func() { a.Close() })
		var tick atomic.Int64
		clock := func() time.Time {
			return time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(tick.Add(1)) * time.Second)
		}
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix, Auditor: a, Now: clock})

		plain1, s1, err := m2mauth.NewSecret(clock(), time.Time{})
		require.NoError(t, err)
		plain2, s2, err := m2mauth.NewSecret(clock(), time.Time{})
		require.NoError(t, err)
		plain3, err := m2mauth.GenerateSecret()
		require.NoError(t, err)
		hash3, err := m2mauth.HashSecretArgon2id(plain3)
		require.NoError(t, err)
		s3 := m2mauth.Secret{ID: "sec_argon", Hash: hash3, CreatedAt: clock()}

		c := &m2mauth.Client{ID: "svc", Secrets: []m2mauth.Secret{s1, s2}, Grants: map[string]m2mauth.Scopes{"https://api.example.com": {"read"}}}
		steps := []struct {
			name   string
			change func() error
			ok     bool
		}{
			{"CreateClient", func() error { return s.CreateClient(ctx, c) }, true},
			{"CreateDuplicate", func() error { return s.CreateClient(ctx, c) }, false},
			{"AddSecret", func() error { return s.AddSecret(ctx, "svc", s3) }, true},
			{"AddSecretAgain", func() error { return s.AddSecret(ctx, "svc", s3) }, false},
			{"ExpireSecret", func() error { return s.ExpireSecret(ctx, "svc", s1.ID, clock().Add(time.Hour)) }, true},
			{"ExpireUnknownSecret", func() error { return s.ExpireSecret(ctx, "svc", "sec_nope", clock()) }, false},
			{"RemoveSecret", func() error { return s.RemoveSecret(ctx, "svc", s2.ID) }, true},
			{"UpdateClient", func() error {
				return s.UpdateClient(ctx, &m2mauth.Client{ID: "svc", Grants: c.Grants, TokenTTL: time.Minute, Disabled: true})
			}, true},
			{"UpdateUnknown", func() error { return s.UpdateClient(ctx, &m2mauth.Client{ID: "nobody"}) }, false},
			{"SetDisabled", func() error { return s.SetDisabled(ctx, "svc", false) }, true},
			{"RevokeClientTokens", func() error { return s.RevokeClientTokens(ctx, "svc") }, true},
			{"RevokeClientTokensUnknown", func() error { return s.RevokeClientTokens(ctx, "nobody") }, false},
			{"RevokeToken", func() error { return s.RevokeToken(ctx, "svc", "jti-1", clock().Add(time.Hour)) }, true},
			{"RevokeAllTokens", func() error { return s.RevokeAllTokens(ctx) }, true},
			{"DeleteClient", func() error { return s.DeleteClient(ctx, "svc") }, true},
			{"DeleteAgain", func() error { return s.DeleteClient(ctx, "svc") }, false},
		}
		for _, step := range steps {
			if err := step.change(); step.ok {
				require.NoError(t, err, step.name)
			} else {
				require.Error(t, err, step.name)
			}
		}
		require.NoError(t, a.Close())
		require.Zero(t, a.Failures())

		got, err := s.AuditEvents(ctx, sqlstore.AuditQuery{Limit: 100})
		require.NoError(t, err)
		slices.Reverse(got)
		type row struct {
			Type             m2mauth.AuditEventType
			Client, SecretID string
			Reason           string
		}
		want := []row{
			{m2mauth.EventClientCreated, "svc", "", "grants"},
			{m2mauth.EventSecretAdded, "svc", s1.ID, ""},
			{m2mauth.EventSecretAdded, "svc", s2.ID, ""},
			{m2mauth.EventSecretAdded, "svc", s3.ID, ""},
			{m2mauth.EventSecretExpiring, "svc", s1.ID, "expires_at"},
			{m2mauth.EventSecretRemoved, "svc", s2.ID, ""},
			{m2mauth.EventClientUpdated, "svc", "", "disabled,token_ttl"},
			{m2mauth.EventClientDisabled, "svc", "", "disabled"},
			{m2mauth.EventTokensRevoked, "svc", "", "disabled"},
			{m2mauth.EventClientEnabled, "svc", "", "disabled"},
			{m2mauth.EventTokensRevoked, "svc", "", "revoke"},
			// RevokeToken sends none: the revocation endpoint does.
			{m2mauth.EventTokensRevoked, "", "", "revoke_all"},
			{m2mauth.EventClientDeleted, "svc", "", ""},
			{m2mauth.EventTokensRevoked, "svc", "", "deleted"},
		}
		var rows []row
		for i, ev := range got {
			rows = append(rows, row{ev.Type, ev.ClientID, ev.SecretID, ev.Reason})
			assert.Equal(t, time.UTC, ev.Time.Location())
			if i > 0 {
				assert.False(t, ev.Time.Before(got[i-1].Time), "event %d goes back in time", i)
			}
		}
		assert.Equal(t, want, rows)

		// No column of any row holds a secret, a hash or a part of one.
		for _, r := range e.auditRows(t, prefix) {
			cols := []string{r.Type, r.ClientID, r.RemoteIP, r.UserAgent, r.Audience, r.Scope, r.JTI, r.Secret, r.Error, r.Reason}
			for plain, hash := range map[string]string{plain1: s1.Hash, plain2: s2.Hash, plain3: s3.Hash} {
				parts := []string{plain, hash}
				for _, p := range strings.Split(hash, "$") {
					if len(p) >= 8 {
						parts = append(parts, p)
					}
				}
				for _, col := range cols {
					for _, p := range parts {
						assert.NotContains(t, col, p, "a %s row holds secret material", r.Type)
					}
				}
			}
		}
	})
}

// TestAdminAuditRollback makes the database refuse one statement in the
// middle of a change: the transaction rolls back, the client stays as it
// was, and the auditor hears of nothing.
func TestAdminAuditRollback(t *testing.T) {
	tests := []struct {
		name   string
		fail   string // the statement refused, without the table prefix
		change func(t *testing.T, s *sqlstore.Store) error
	}{
		{"CreateClient", "INSERT INTO {p}grants", func(t *testing.T, s *sqlstore.Store) error {
			return s.CreateClient(t.Context(), clientWithSecrets(t, "new", 2))
		}},
		{"UpdateClient", "INSERT INTO {p}grants", func(t *testing.T, s *sqlstore.Store) error {
			return s.UpdateClient(t.Context(), &m2mauth.Client{ID: "svc", Grants: map[string]m2mauth.Scopes{"https://new.example.com": {"read"}}})
		}},
		{"AddSecret", "UPDATE {p}clients SET updated_at", func(t *testing.T, s *sqlstore.Store) error {
			_, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
			require.NoError(t, err)
			return s.AddSecret(t.Context(), "svc", sec)
		}},
		{"SetDisabled", "UPDATE {p}clients SET disabled", func(t *testing.T, s *sqlstore.Store) error {
			return s.SetDisabled(t.Context(), "svc", true)
		}},
		{"DeleteClient", "DELETE FROM {p}clients", func(t *testing.T, s *sqlstore.Store) error {
			return s.DeleteClient(t.Context(), "svc")
		}},
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ctx := t.Context()
				prefix := e.newPrefix(t)
				setup := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
				require.NoError(t, setup.CreateClient(ctx, clientWithSecrets(t, "svc", 1)))
				before, err := setup.Client(ctx, "svc")
				require.NoError(t, err)

				db, refuse := e.openRefusing(t)
				rec := &recorder{}
				s, err := sqlstore.New(db, e.dialect, sqlstore.Config{TablePrefix: prefix, Auditor: rec})
				require.NoError(t, err)
				t.Cleanup(func() { s.Close() })
				refuse.Store(strings.ReplaceAll(tt.fail, "{p}", prefix))

				require.ErrorIs(t, tt.change(t, s), errRefused)
				assert.Zero(t, rec.len(), "events of a change that rolled back")
				after, err := setup.Client(ctx, "svc")
				require.NoError(t, err)
				assert.Equal(t, before, after, "the change was not rolled back")
				_, err = setup.Client(ctx, "new")
				assert.ErrorIs(t, err, m2mauth.ErrClientNotFound)
			})
		}
	})
}

// errRefused is what a refusing database answers to the statement it
// refuses.
var errRefused = errors.New("test: statement refused")

// openRefusing returns a *sql.DB on the backend's database that refuses to
// execute any statement that begins with the string stored in the
// returned pointer.
func (e *env) openRefusing(t testing.TB) (*sql.DB, *atomic.Value) {
	t.Helper()
	probe, err := sql.Open(e.driver, e.dsn)
	require.NoError(t, err)
	drv := probe.Driver()
	require.NoError(t, probe.Close())
	refuse := new(atomic.Value)
	refuse.Store("")
	db := sql.OpenDB(&refusingConnector{drv: drv, dsn: e.dsn, refuse: refuse})
	t.Cleanup(func() { db.Close() })
	return db, refuse
}

type refusingConnector struct {
	drv    driver.Driver
	dsn    string
	refuse *atomic.Value
}

func (c *refusingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	var conn driver.Conn
	var err error
	if dc, ok := c.drv.(driver.DriverContext); ok {
		var ctr driver.Connector
		if ctr, err = dc.OpenConnector(c.dsn); err == nil {
			conn, err = ctr.Connect(ctx)
		}
	} else {
		conn, err = c.drv.Open(c.dsn)
	}
	if err != nil {
		return nil, err
	}
	return &refusingConn{passConn: passConn{conn}, refuse: c.refuse}, nil
}

func (c *refusingConnector) Driver() driver.Driver { return c.drv }

// refusingConn passes everything to the driver's connection but the
// statements it refuses.
type refusingConn struct {
	passConn
	refuse *atomic.Value
}

func (c *refusingConn) refused(query string) bool {
	p := c.refuse.Load().(string)
	return p != "" && strings.HasPrefix(query, p)
}

func (c *refusingConn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *refusingConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	var st driver.Stmt
	var err error
	if p, ok := c.Conn.(driver.ConnPrepareContext); ok {
		st, err = p.PrepareContext(ctx, query)
	} else {
		st, err = c.Conn.Prepare(query)
	}
	if err != nil {
		return nil, err
	}
	return &refusingStmt{Stmt: st, conn: c, query: query}, nil
}

func (c *refusingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if b, ok := c.Conn.(driver.ConnBeginTx); ok {
		return b.BeginTx(ctx, opts)
	}
	return c.Conn.Begin()
}

func (c *refusingConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	x, ok := c.Conn.(driver.ExecerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	if c.refused(query) {
		return nil, errRefused
	}
	return x.ExecContext(ctx, query, args)
}

func (c *refusingConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if x, ok := c.Conn.(driver.QueryerContext); ok {
		return x.QueryContext(ctx, query, args)
	}
	return nil, driver.ErrSkip
}

type refusingStmt struct {
	driver.Stmt
	conn  *refusingConn
	query string
}

func (s *refusingStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if s.conn.refused(s.query) {
		return nil, errRefused
	}
	if x, ok := s.Stmt.(driver.StmtExecContext); ok {
		return x.ExecContext(ctx, args)
	}
	return s.Stmt.Exec(values(args))
}

func (s *refusingStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if x, ok := s.Stmt.(driver.StmtQueryContext); ok {
		return x.QueryContext(ctx, args)
	}
	return s.Stmt.Query(values(args))
}

func (s *refusingStmt) CheckNamedValue(nv *driver.NamedValue) error {
	if x, ok := s.Stmt.(driver.NamedValueChecker); ok {
		return x.CheckNamedValue(nv)
	}
	return s.conn.CheckNamedValue(nv)
}

// passConn is the part of a test's driver.Conn wrapper that hands the
// optional connection interfaces it does not change to the wrapped
// connection.
type passConn struct{ driver.Conn }

func (c passConn) CheckNamedValue(nv *driver.NamedValue) error {
	if x, ok := c.Conn.(driver.NamedValueChecker); ok {
		return x.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

func (c passConn) ResetSession(ctx context.Context) error {
	if x, ok := c.Conn.(driver.SessionResetter); ok {
		return x.ResetSession(ctx)
	}
	return nil
}

func (c passConn) IsValid() bool {
	if x, ok := c.Conn.(driver.Validator); ok {
		return x.IsValid()
	}
	return true
}

// TestClientMatchesList reads a client with several secrets, one of them
// expiring and one added after another was removed (so that seq and
// insertion order differ from id order), and grants on two audiences,
// through Client and through ListClients: on SQLite they are two
// decoders (Client's reads one packed row), which must agree.
func TestClientMatchesList(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		s := e.newStore(t, sqlstore.Config{})
		now := time.Now().UTC().Truncate(time.Microsecond)
		secret := func(id string, expires time.Time) m2mauth.Secret {
			_, sec, err := m2mauth.NewSecret(now, expires)
			require.NoError(t, err)
			sec.ID = id
			return sec
		}
		require.NoError(t, s.CreateClient(ctx, &m2mauth.Client{
			ID:      "svc",
			Secrets: []m2mauth.Secret{secret("z-first", time.Time{}), secret("a second, with spaces", now.Add(time.Hour))},
			Grants: map[string]m2mauth.Scopes{
				"https://api.example.com":   {"read", "write"},
				"https://other.example.com": {"read"},
			},
			CanIntrospect: true,
		}))
		require.NoError(t, s.AddSecret(ctx, "svc", secret("m-third-é", time.Time{})))
		require.NoError(t, s.RemoveSecret(ctx, "svc", "z-first"))
		require.NoError(t, s.AddSecret(ctx, "svc", secret("b-fourth", now.Add(2*time.Hour))))

		got, err := s.Client(ctx, "svc")
		require.NoError(t, err)
		list, err := s.ListClients(ctx, "", 10)
		require.NoError(t, err)
		require.Len(t, list, 1)
		require.Equal(t, list[0], got)
		ids := make([]string, len(got.Secrets))
		for i, sec := range got.Secrets {
			ids[i] = sec.ID
		}
		require.Equal(t, []string{"a second, with spaces", "m-third-é", "b-fourth"}, ids, "in the order they were added")
		require.Equal(t, now.Add(time.Hour), got.Secrets[0].ExpiresAt)
		require.True(t, got.Secrets[1].ExpiresAt.IsZero())
		require.Len(t, got.Grants, 2)
		require.True(t, got.CanIntrospect)

		_, err = s.Client(ctx, "nobody")
		require.ErrorIs(t, err, m2mauth.ErrClientNotFound)
	})
}

// TestClientRowMalformed stores, behind the store's back, a secret id
// holding a NUL, which the store never writes and SQLite's packed client
// row cannot carry: Client fails, and its error names no stored value.
func TestClientRowMalformed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		if e.dialect != sqlstore.SQLite {
			t.Skip("the packed client row is SQLite's")
		}
		prefix := e.newPrefix(t)
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		_, sec := createClient(t, s, "svc", time.Now())
		_, err := e.db.ExecContext(t.Context(), "UPDATE "+prefix+"secrets SET secret_id = 'a' || char(0) || 'b' WHERE client_id = 'svc'")
		require.NoError(t, err)
		_, err = s.Client(t.Context(), "svc")
		require.Error(t, err)
		require.NotContains(t, err.Error(), sec.Hash)
		require.NotErrorIs(t, err, m2mauth.ErrClientNotFound)
	})
}

// TestConcurrentUpdatesOfDifferentClients: updates of different clients
// at once all succeed. On MySQL and MariaDB, deleting the grants of a
// client without any locks a gap of the index that another client's
// update locks too, and the database breaks the deadlock by rolling one
// back; the store runs that one again.
func TestConcurrentUpdatesOfDifferentClients(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		s := e.newStore(t, sqlstore.Config{TablePrefix: e.newPrefix(t)})
		ids := []string{"b1", "b2", "b3", "b4"}
		for _, id := range ids {
			require.NoError(t, s.CreateClient(t.Context(), &m2mauth.Client{ID: id}))
		}
		const rounds = 50
		var wg sync.WaitGroup
		errs := make(chan error, rounds*len(ids))
		for _, id := range ids {
			wg.Go(func() {
				for i := range rounds {
					c := &m2mauth.Client{ID: id}
					if i%2 == 1 {
						c.Grants = map[string]m2mauth.Scopes{fmt.Sprintf("https://aud%d.example", i%3): {"read"}}
					}
					if err := s.UpdateClient(t.Context(), c); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		for _, id := range ids {
			c, err := s.Client(t.Context(), id)
			require.NoError(t, err)
			assert.Equal(t, map[string]m2mauth.Scopes{"https://aud1.example": {"read"}}, c.Grants, "%s after its last update", id)
		}
	})
}

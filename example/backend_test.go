package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestParseDB: the forms -db takes, the connection settings added to
// them, and the values refused (without repeating a password).
func TestParseDB(t *testing.T) {
	t.Run("accepted", func(t *testing.T) {
		tests := []struct {
			spec, kind, driver string
			check              func(t *testing.T, d *dbSpec)
		}{
			{"memory", "memory (clients are lost on exit)", "", nil},
			{"m2mauth.db", "SQLite file m2mauth.db", "sqlite", nil},
			{"sqlite:///var/lib/m2mauth/clients.db", "SQLite file /var/lib/m2mauth/clients.db", "sqlite", nil},
			{"backup@2026.db", "SQLite file backup@2026.db", "sqlite", nil},
			{"./ops:2026@home.db", "SQLite file ./ops:2026@home.db", "sqlite", nil},
			{"a=b.db", "SQLite file a=b.db", "sqlite", nil},
			{"postgres://app:hunter2@db.example:5433/app?sslmode=disable", "PostgreSQL at db.example:5433", "pgx", func(t *testing.T, d *dbSpec) {
				assert.Equal(t, "postgres://app:hunter2@db.example:5433/app?sslmode=disable&connect_timeout=5", d.dsn)
				assert.Equal(t, 5*time.Second, d.connectTimeout)
			}},
			{"postgresql://app@db.example/app", "PostgreSQL at db.example:5432", "pgx", func(t *testing.T, d *dbSpec) {
				assert.Equal(t, "postgresql://app@db.example/app?connect_timeout=5", d.dsn)
			}},
			{"postgres://app@db.example/app?connect_timeout=12", "PostgreSQL at db.example:5432", "pgx", func(t *testing.T, d *dbSpec) {
				assert.Equal(t, "postgres://app@db.example/app?connect_timeout=12", d.dsn, "the user's timeout is kept")
				assert.Equal(t, 12*time.Second, d.connectTimeout)
			}},
			{"mysql://app:p%40ss%2Fw%3Ard@db.example/app?parseTime=true&loc=UTC", "MySQL at db.example:3306", "mysql", func(t *testing.T, d *dbSpec) {
				cfg, err := mysql.ParseDSN(d.dsn)
				require.NoError(t, err)
				assert.Equal(t, "tcp", cfg.Net)
				assert.Equal(t, "app", cfg.User)
				assert.Equal(t, "p@ss/w:rd", cfg.Passwd)
				assert.Equal(t, "app", cfg.DBName)
				assert.True(t, cfg.ParseTime)
				assert.Equal(t, time.UTC, cfg.Loc)
				assert.Equal(t, 5*time.Second, cfg.Timeout)
				assert.Equal(t, time.Minute, cfg.ReadTimeout)
				assert.Equal(t, time.Minute, cfg.WriteTimeout)
				assert.Equal(t, 5*time.Second, d.connectTimeout)
			}},
			{"mysql://app@[::1]:3307/app?timeout=2s&readTimeout=1s&sql_mode=ANSI", "MySQL at [::1]:3307", "mysql", func(t *testing.T, d *dbSpec) {
				cfg, err := mysql.ParseDSN(d.dsn)
				require.NoError(t, err)
				assert.Equal(t, 2*time.Second, cfg.Timeout, "the user's timeouts are kept")
				assert.Equal(t, time.Second, cfg.ReadTimeout)
				assert.Equal(t, time.Minute, cfg.WriteTimeout)
				assert.Equal(t, "ANSI", cfg.Params["sql_mode"], "a system variable")
				assert.Equal(t, 2*time.Second, d.connectTimeout)
			}},
		}
		for _, tc := range tests {
			t.Run(tc.spec, func(t *testing.T) {
				d, err := parseDB(tc.spec)
				require.NoError(t, err)
				assert.Equal(t, tc.kind, d.kind)
				assert.Equal(t, tc.driver, d.driver)
				if tc.check != nil {
					tc.check(t, d)
				}
			})
		}
	})
	t.Run("refused", func(t *testing.T) {
		tests := []struct{ spec, msg string }{
			{"", "-db is empty"},
			{"redis://app:hunter2@127.0.0.1:6379/0", `-db: unknown scheme "redis"`},
			{"http://127.0.0.1:8080", `-db: unknown scheme "http"`},
			{"sqlite3://m.db", `-db: unknown scheme "sqlite3"`},
			{"mariadb://app:hunter2@127.0.0.1/app", `-db: unknown scheme "mariadb"`},
			{"sqlite://", "sqlite:// names no file"},
			{"app:hunter2@tcp(127.0.0.1:3306)/app?parseTime=true", "go-sql-driver/mysql DSN"},
			{"app:hunter2@unix(/run/mysqld/mysqld.sock)/app", "mysql://user:pass@host:port/db?params"},
			{"mysql://app:hunter2@127.0.0.1/app?parseTime=maybe", "-db: "},
			{"mysql://app:hunter2@127.0.0.1/app?timeout=5", "-db: "},
			{"mysql://app:hunter2@127.0.0.1/app?x=1&x=2", `parameter "x" is given 2 times`},
			{"mysql://app:hunter2@127.0.0.1/app/extra", "not a database name"},
			{"mysql://app:hunter2@127.0.0.1:notaport/app", "not a valid mysql://"},
			{"postgres://app:hunter2@127.0.0.1:notaport/app", "not a valid postgres://"},
			{"postgres://app:hunter2@127.0.0.1/app?connect_timeout=soon", "-db postgres://app:xxxxx@127.0.0.1/app?connect_timeout=soon: "},
			// pgconn hides only "password" and "sslpassword" in its errors.
			{"postgres://app@127.0.0.1/app?PassWord=hunter2&sslmode=bogus", "-db postgres://app@127.0.0.1/app?PassWord=xxxxx&sslmode=bogus: "},
			{"postgres://app@127.0.0.1/app?sslmode=bogus&Password=hunter2", "sslmode is invalid"},
			// Connection strings of other forms, which would otherwise be
			// taken for SQLite file names, printed and created.
			{"host=127.0.0.1 port=5432 user=app password=hunter2 dbname=app", "PostgreSQL key=value connection string"},
			{"user=app dbname=app sslmode=disable", "postgres://user:pass@host:port/db?params"},
			{"dbname=app PASSWORD=hunter2", "PostgreSQL key=value"},
			{"app:hunter2@/app?parseTime=true", "go-sql-driver/mysql DSN"},
			{"app:hunter2@", "go-sql-driver/mysql DSN"},
		}
		for _, tc := range tests {
			t.Run(tc.spec, func(t *testing.T) {
				_, err := parseDB(tc.spec)
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.msg)
				assert.NotContains(t, err.Error(), "hunter2")
			})
		}
	})
}

// TestMySQLURL: the tests' M2MAUTH_TEST_MYSQL_DSN may be a mysql:// URL
// or a go-sql-driver/mysql DSN; converted, it reaches the same server,
// user, password, database and parameters.
func TestMySQLURL(t *testing.T) {
	tests := []struct{ dsn, want string }{
		{"root@tcp(127.0.0.1:3306)/test?parseTime=true", "mysql://root@127.0.0.1:3306/test?parseTime=true"},
		{"mysql://root@127.0.0.1:3306/test", "mysql://root@127.0.0.1:3306/test"},
		{"root@/test", "mysql://root@127.0.0.1:3306/test"},
		{"app:p@ss/w:rd@tcp([::1]:3307)/app?parseTime=true&loc=UTC", "mysql://app:p%40ss%2Fw%3Ard@[::1]:3307/app?parseTime=true&loc=UTC"},
	}
	for _, tc := range tests {
		t.Run(tc.dsn, func(t *testing.T) {
			got, err := mysqlURL(tc.dsn)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			if strings.HasPrefix(tc.dsn, "mysql://") {
				return
			}
			d, err := parseDB(got)
			require.NoError(t, err)
			want, err := mysql.ParseDSN(tc.dsn)
			require.NoError(t, err)
			cfg, err := mysql.ParseDSN(d.dsn)
			require.NoError(t, err)
			assert.Equal(t, want.Addr, cfg.Addr)
			assert.Equal(t, want.User, cfg.User)
			assert.Equal(t, want.Passwd, cfg.Passwd)
			assert.Equal(t, want.DBName, cfg.DBName)
			assert.Equal(t, want.ParseTime, cfg.ParseTime)
			assert.Equal(t, want.Loc, cfg.Loc)
		})
	}
	_, err := mysqlURL("root@unix(/run/mysqld/mysqld.sock)/test")
	assert.ErrorContains(t, err, `connects over "unix"`)
}

// silentServer accepts TCP connections and never writes to them, like a
// database host whose server hangs. It stops when the test ends.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		mu    sync.Mutex
		conns []net.Conn
		done  = make(chan struct{})
	)
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// TestDatabaseNoAnswer: a database address that accepts connections and
// never answers fails the command within the connect timeout (5s), with
// the address in the message; one that refuses them fails at once.
func TestDatabaseNoAnswer(t *testing.T) {
	silent := silentServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := ln.Addr().String()
	ln.Close()
	tests := []struct {
		name, db, msg string
	}{
		{"MySQL silent", "mysql://root:hunter2@" + silent + "/test", "MySQL at " + silent + " did not answer within 5s"},
		{"PostgreSQL silent", "postgres://postgres:hunter2@" + silent + "/test", "PostgreSQL at " + silent + " did not answer within 5s"},
		{"MySQL refused", "mysql://root:hunter2@" + closed + "/test", "MySQL at " + closed + ": cannot connect"},
		{"PostgreSQL refused", "postgres://postgres:hunter2@" + closed + "/test?sslmode=disable", "PostgreSQL at " + closed + ": cannot connect"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			var stdout, stderr bytes.Buffer
			err := run([]string{"-db", tc.db, "client", "list"}, &stdout, &stderr)
			elapsed := time.Since(start)
			require.Error(t, err)
			assert.Equal(t, 1, exitCode(err))
			assert.Contains(t, err.Error(), tc.msg)
			assert.NotContains(t, err.Error(), "hunter2")
			assert.Less(t, elapsed, 20*time.Second, "bounded by the 5s connect timeout, with room for a loaded machine")
		})
	}
	// A -db timeout shortens the wait.
	t.Run("MySQL timeout=1s", func(t *testing.T) {
		t.Parallel()
		err := run([]string{"-db", "mysql://root@" + silent + "/test?timeout=1s", "client", "list"}, &bytes.Buffer{}, &bytes.Buffer{})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "did not answer within 1s")
	})
}

// TestUnknownSchemeCreatesNothing: a -db URL of an unknown scheme is an
// error for the server and the admin commands, and no SQLite file named
// after it appears.
func TestUnknownSchemeCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	for _, args := range [][]string{
		{"-db", "redis://127.0.0.1:6379/0", "client", "list"},
		{"-db", "mariadb://root@127.0.0.1/test", "client", "create", "-id", "x", "-scopes", "a"},
		{"-db", "sqlite3://m.db", "serve", "-addr", "127.0.0.1:0"},
	} {
		r := cli(args...)
		require.Error(t, r.err, "%v", args)
		assert.Equal(t, 1, exitCode(r.err))
		assert.Contains(t, r.err.Error(), "-db: unknown scheme")
		assert.Empty(t, r.stdout)
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, entries)
}

// TestRedactDB: what the example prints of -db (the start-up banner's
// commands) carries no password.
func TestRedactDB(t *testing.T) {
	tests := []struct{ spec, want string }{
		{"m2mauth.db", "m2mauth.db"},
		{"memory", "memory"},
		{"sqlite:///var/lib/m2mauth/clients.db", "sqlite:///var/lib/m2mauth/clients.db"},
		{"postgres://app@db.example:5432/app?sslmode=disable", "postgres://app@db.example:5432/app?sslmode=disable"},
		{"postgres://app:hunter2@db.example:5432/app?sslmode=disable", "postgres://app:xxxxx@db.example:5432/app?sslmode=disable"},
		{"postgresql://db.example/app?user=app&password=hunter2", "postgresql://db.example/app?password=xxxxx&user=app"},
		{"postgres://db.example/app?PassWord=hunter2", "postgres://db.example/app?PassWord=xxxxx"},
		{"mysql://root:hunter2@127.0.0.1:3306/test?parseTime=true", "mysql://root:xxxxx@127.0.0.1:3306/test?parseTime=true"},
		{"postgres://app:hunter2@db example/%zz", "postgres://xxxxx"},
		{"postgres://app@db.example/app?sslkey=k.pem&sslpassword=hunter2", "postgres://app@db.example/app?sslkey=k.pem&sslpassword=xxxxx"},
		{"sqlite:///srv/My Data/m2mauth.db", "sqlite:///srv/My Data/m2mauth.db"},
		{"sqlite://my db.sqlite", "sqlite://my db.sqlite"},
		{"/srv/a%20b#1?.db", "/srv/a%20b#1?.db"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got := redactDB(tt.spec)
			assert.Equal(t, tt.want, got)
			assert.NotContains(t, got, "hunter2")
			assert.NotContains(t, globals{db: tt.spec}.commandLine(), "hunter2")
		})
	}
}

// TestDatabaseFilePrivate: the SQLite database, which holds the secret
// hashes, the audit trail and sealed keys, and its -wal and -shm files
// are readable by their owner only, whatever the umask; a database that
// others can read is warned about.
func TestDatabaseFilePrivate(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "clients.db")
	r := cli("-db", db, "client", "create", "-id", "svc", "-scopes", "read")
	r.ok(t)
	assert.NotContains(t, r.stderr, "readable by others")
	cli("-db", db, "client", "list").ok(t)
	files, err := filepath.Glob(db + "*")
	require.NoError(t, err)
	require.Contains(t, files, db)
	for _, f := range files {
		st, err := os.Stat(f)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), f)
	}

	// Paths with what a SQLite URI would read as escapes, a query or a
	// fragment name the file as given.
	for _, name := range []string{"a%20b.db", "m2m#1.db", "q?x.db", "My Data.db"} {
		sub := filepath.Join(dir, "odd")
		require.NoError(t, os.MkdirAll(sub, 0o700))
		path := filepath.Join(sub, name)
		cli("-db", path, "client", "create", "-id", "svc", "-scopes", "read").ok(t)
		require.Contains(t, cli("-db", path, "client", "list").ok(t), "svc")
		entries, err := os.ReadDir(sub)
		require.NoError(t, err)
		require.Len(t, entries, 1, "one file, %s", name)
		require.Equal(t, name, entries[0].Name())
		st, err := os.Stat(path)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), name)
		require.NoError(t, os.RemoveAll(sub))
	}

	require.NoError(t, os.Chmod(db, 0o644))
	r = cli("-db", db, "client", "list")
	r.ok(t)
	assert.Contains(t, r.stderr, "readable by others")
}

package sqlstore_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// errAnswerLost is what a commit returns whose COMMIT reached the server
// and succeeded, but whose answer the connection lost.
var errAnswerLost = errors.New("test: connection lost before the commit's answer")

// answerLoser is a database whose lose-th transaction commits on the
// server but reports errAnswerLost, after which the database is down
// (every new transaction, statement or connection fails), as a network
// that fails at that moment and stays down would.
type answerLoser struct {
	connector driver.Connector
	drv       driver.Driver
	dsn       string
	lose      int64
	commits   atomic.Int64
	down      atomic.Bool
}

func (e *env) openAnswerLoser(t *testing.T, lose int64) (*sql.DB, *answerLoser) {
	t.Helper()
	probe, err := sql.Open(e.driver, e.dsn)
	require.NoError(t, err)
	drv := probe.Driver()
	require.NoError(t, probe.Close())
	c := &answerLoser{drv: drv, dsn: e.dsn, lose: lose}
	if dc, ok := drv.(driver.DriverContext); ok {
		c.connector, err = dc.OpenConnector(e.dsn)
		require.NoError(t, err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return db, c
}

func (c *answerLoser) Driver() driver.Driver { return c.drv }

func (c *answerLoser) Connect(ctx context.Context) (driver.Conn, error) {
	if c.down.Load() {
		return nil, errOutage
	}
	var (
		conn driver.Conn
		err  error
	)
	if c.connector != nil {
		conn, err = c.connector.Connect(ctx)
	} else {
		conn, err = c.drv.Open(c.dsn)
	}
	if err != nil {
		return nil, err
	}
	return &loserConn{passConn: passConn{conn}, c: c}, nil
}

type loserConn struct {
	passConn
	c *answerLoser
}

func (l *loserConn) Prepare(q string) (driver.Stmt, error) {
	return l.PrepareContext(context.Background(), q)
}

func (l *loserConn) PrepareContext(ctx context.Context, q string) (driver.Stmt, error) {
	if l.c.down.Load() {
		return nil, errOutage
	}
	if p, ok := l.Conn.(driver.ConnPrepareContext); ok {
		return p.PrepareContext(ctx, q)
	}
	return l.Conn.Prepare(q)
}

func (l *loserConn) Begin() (driver.Tx, error) {
	return l.BeginTx(context.Background(), driver.TxOptions{})
}

func (l *loserConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if l.c.down.Load() {
		return nil, errOutage
	}
	var (
		tx  driver.Tx
		err error
	)
	if b, ok := l.Conn.(driver.ConnBeginTx); ok {
		tx, err = b.BeginTx(ctx, opts)
	} else {
		tx, err = l.Conn.Begin()
	}
	if err != nil {
		return nil, err
	}
	return &loserTx{Tx: tx, c: l.c}, nil
}

type loserTx struct {
	driver.Tx
	c *answerLoser
}

func (t *loserTx) Commit() error {
	if t.c.down.Load() {
		t.Tx.Rollback()
		return errOutage
	}
	err := t.Tx.Commit()
	if t.c.commits.Add(1) == t.c.lose && err == nil {
		t.c.down.Store(true)
		return errAnswerLost
	}
	return err
}

// oldSpillLine is a spill file line as the release before event keys
// wrote it: no event_key.
func oldSpillLine(i int) string {
	return fmt.Sprintf(`{"event_time":"2026-01-02T03:04:%02d.%06dZ","event":"token_issued","client_id":"svc","jti":"jti-old-%04d"}`+"\n",
		i%60, i, i)
}

// TestAuditorSpillKeylessLineMoved: a spill file left by the release
// before keys holds lines without a key. The first transaction of the
// file (256 rows) is written; the commit of the second (the last line,
// or lines) succeeds on the server, but its answer is lost, and the
// database stays down until Close, which compacts the file (or, without
// room for a copy, marks the written lines): those lines move to the
// start of the file. The next process reads them there with the keys they
// were written with, and writes no row twice, whatever form JSON allows
// the line (a line Close cannot write a key into is not moved: the
// written lines are marked instead).
func TestAuditorSpillKeylessLineMoved(t *testing.T) {
	const odd = `{"event_time":"2026-01-02T03:04:05Z","event":"token_issued","client_id":"svc","jti":"jti-odd"`
	tests := []struct {
		name  string
		lines []string // after 256 lines of the earlier release
		all   bool     // on every database; else SQLite alone (the file, not the engine)
	}{
		{"a line of the earlier release, and one whose time JSON cannot write back", []string{
			oldSpillLine(256),
			`{"event_time":"2026-01-02T03:04:05+24:00","event":"token_issued","client_id":"svc","jti":"jti-far-offset"}`,
		}, true},
		{"an empty key later", []string{odd + `,"event_key":""}`}, false},
		{"an empty key in another case", []string{odd + `,"EVENT_KEY":""}`}, false},
		{"a space after the colon, an odd time", []string{`{"event_time": "2026-01-02T03:04:05+24:00","event":"token_issued","client_id":"svc","jti":"jti-odd"}`}, false},
		{"a damaged key, an odd time", []string{`{"event_time":"2026-01-02T03:04:05+24:00","event_key":"damaged","event":"token_issued","client_id":"svc","jti":"jti-odd"}`}, false},
		{"a space after the colon", []string{`{"event_time": "2026-01-02T03:04:05Z","event":"token_issued","client_id":"svc","jti":"jti-odd"}`}, false},
		{"near the longest line", []string{longKeylessLine(maxSpillLineForTest - 20)}, false},
		{"CRLF", []string{odd + "}\r"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var file strings.Builder
			for i := range 256 {
				file.WriteString(oldSpillLine(i))
			}
			for _, l := range tt.lines {
				file.WriteString(strings.TrimSuffix(l, "\n") + "\n")
			}
			n := 256 + len(tt.lines)
			forEachBackend(t, func(t *testing.T, e *env) {
				if !tt.all && e.dialect != sqlstore.SQLite {
					t.Skip("the file, not the engine")
				}
				for _, noCopy := range []bool{false, true} {
					t.Run(map[bool]string{false: "compacted", true: "marked written"}[noCopy], func(t *testing.T) {
						prefix := e.newPrefix(t)
						e.newStore(t, sqlstore.Config{TablePrefix: prefix})
						spill := filepath.Join(t.TempDir(), "audit.spill")
						require.NoError(t, os.WriteFile(spill, []byte(file.String()), 0o600))

						db, loser := e.openAnswerLoser(t, 2)
						first, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
							TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), SpillFile: spill,
							MaxRetryDelay: time.Hour, CloseTimeout: 100 * time.Millisecond,
						})
						require.NoError(t, err)
						waitFor(t, "the second commit's answer lost", loser.down.Load)
						if noCopy {
							require.NoError(t, os.MkdirAll(filepath.Join(spill+".tmp", "in-the-way"), 0o700))
						}
						require.NoError(t, first.Close())
						require.NoError(t, os.RemoveAll(spill+".tmp"))
						require.Equal(t, n, e.countAuditRows(t, prefix), "every line is in the table once")
						assert.Equal(t, len(tt.lines), first.Pending(), "the lines whose answer was lost are left in the file")

						second, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{
							TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), SpillFile: spill,
						})
						require.NoError(t, err)
						t.Cleanup(func() { second.Close() })
						waitFor(t, "the spill file written", func() bool { return second.Pending() == 0 })
						require.NoError(t, second.Close())
						assert.Zero(t, second.Lost())

						count := map[string]int{}
						for _, r := range e.auditRows(t, prefix) {
							count[r.JTI]++
						}
						for jti, c := range count {
							assert.Equal(t, 1, c, "rows of %s", jti)
						}
						assert.Len(t, count, n)
					})
				}
			})
		})
	}
}

// maxSpillLineForTest is the longest spill line an Auditor reads back
// (maxSpillLine).
const maxSpillLineForTest = 128 << 10

// longKeylessLine returns a keyless spill line of n bytes, its end
// included.
func longKeylessLine(n int) string {
	head := `{"event_time":"2026-01-02T03:04:05Z","event":"token_issued","client_id":"svc","jti":"jti-odd","reason":"`
	tail := `"}`
	return head + strings.Repeat("r", n-1-len(head)-len(tail)) + tail
}

// TestMigrateMySQLKeyColumnWithoutIndex: on MySQL, version 8 adds the
// audit events' key column and its unique index in one statement. A
// table found with the column but not the index (a schema changed by
// hand), whose rows hold a key twice, gets its duplicates removed, the
// first row of each key kept, and the index built; Migrate run again
// finds the work done.
func TestMigrateMySQLKeyColumnWithoutIndex(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		if e.dialect != sqlstore.MySQL {
			t.Skip("MySQL's migration only")
		}
		ctx := t.Context()
		s, prefix := keyColumnWithoutIndex(t, e)
		table := prefix + "audit_events"
		insert := "INSERT INTO " + table + ` (event_key, event_time, event_type, client_id, remote_ip, user_agent, audience, scope, jti, secret_id, error_code, reason)
VALUES (?, 1, 'token_issued', 'c', '', '', '', '', ?, '', '', '')`
		twice, once := []byte("0123456789abcdef"), []byte("fedcba9876543210")
		for _, row := range []struct {
			key []byte
			jti string
		}{{twice, "first"}, {twice, "second"}, {once, "once"}, {nil, "no key"}, {nil, "no key"}} {
			_, err := e.db.ExecContext(ctx, insert, row.key, row.jti)
			require.NoError(t, err)
		}

		require.NoError(t, s.Migrate(ctx))
		require.NoError(t, s.Migrate(ctx), "run again")
		assert.Equal(t, e.allVersions(), e.versions(t, prefix))
		assert.Contains(t, e.auditIndexes(t, prefix), prefix+"audit_events_key_idx")
		var jtis []string
		for _, r := range e.auditRows(t, prefix) {
			jtis = append(jtis, r.JTI)
		}
		assert.Equal(t, []string{"first", "once", "no key", "no key"}, jtis)
	})
}

// TestAuditorAppendOnlyUser: a database user that may only append audit
// rows, with the privileges the Auditor's docs name (INSERT, and on
// PostgreSQL SELECT of event_key), writes every event, an event written
// again included, once.
func TestAuditorAppendOnlyUser(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		if e.dialect == sqlstore.SQLite {
			t.Skip("SQLite has no users")
		}
		ctx := t.Context()
		prefix := e.newPrefix(t)
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		table := prefix + "audit_events"
		user := strings.TrimSuffix(prefix, "_") + "_auditor"
		const password = "append-only-0"
		var dsn string
		var grants, drops []string
		switch e.dialect {
		case sqlstore.Postgres:
			grants = []string{
				"CREATE ROLE " + user + " LOGIN PASSWORD '" + password + "'",
				"GRANT INSERT ON " + table + " TO " + user,
				"GRANT SELECT (event_key) ON " + table + " TO " + user,
			}
			drops = []string{"DROP OWNED BY " + user, "DROP ROLE " + user}
			u, err := url.Parse(e.dsn)
			require.NoError(t, err)
			u.User = url.UserPassword(user, password)
			dsn = u.String()
		case sqlstore.MySQL:
			cfg, err := mysql.ParseDSN(e.dsn)
			require.NoError(t, err)
			for _, host := range []string{"%", "localhost"} {
				account := "'" + user + "'@'" + host + "'"
				grants = append(grants, "CREATE USER "+account+" IDENTIFIED BY '"+password+"'",
					"GRANT INSERT ON `"+cfg.DBName+"`."+table+" TO "+account)
				drops = append(drops, "DROP USER "+account)
			}
			cfg.User, cfg.Passwd = user, password
			dsn = cfg.FormatDSN()
		}
		t.Cleanup(func() {
			for _, stmt := range drops {
				if _, err := e.db.Exec(stmt); err != nil {
					t.Errorf("%s: %v", stmt, err)
				}
			}
		})
		for _, stmt := range grants {
			_, err := e.db.ExecContext(ctx, stmt)
			require.NoError(t, err, stmt)
		}
		db, err := sql.Open(e.driver, dsn)
		require.NoError(t, err)
		t.Cleanup(func() { db.Close() })

		// The same spill file written twice, as by a process that died
		// before it emptied the file, then an event received.
		spill := filepath.Join(t.TempDir(), "audit.spill")
		line := `{"event_time":"2026-01-02T03:04:05Z","event_key":"00112233445566778899aabbccddeeff","event":"token_issued","client_id":"c","jti":"spilled"}` + "\n"
		for i := range 2 {
			require.NoError(t, os.WriteFile(spill, []byte(line), 0o600))
			a, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
				TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), SpillFile: spill,
			})
			require.NoError(t, err)
			if i == 1 {
				a.Audit(ctx, m2mauth.AuditEvent{Type: m2mauth.EventTokenIssued, ClientID: "c", JTI: "received"})
			}
			waitFor(t, "the spill file written", func() bool { return a.Pending() == 0 })
			require.NoError(t, a.Close())
			assert.Zero(t, a.Failures(), "events not written on the first try")
			assert.Zero(t, a.Lost())
		}
		var jtis []string
		for _, r := range e.auditRows(t, prefix) {
			jtis = append(jtis, r.JTI)
		}
		assert.Equal(t, []string{"spilled", "received"}, jtis)
	})
}

// TestMigrateMySQLKeyColumnWithoutIndexBigTable: version 8 on a table
// that has the event_key column but not its index removes duplicate keys
// in time that grows with the keyed rows, not quadratically with the
// table: 12,000 rows without a key take well under Migrate's deadline.
func TestMigrateMySQLKeyColumnWithoutIndexBigTable(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		if e.dialect != sqlstore.MySQL {
			t.Skip("MySQL's migration only")
		}
		ctx := t.Context()
		s, prefix := keyColumnWithoutIndex(t, e)
		table := prefix + "audit_events"
		for _, stmt := range []string{
			// 12,000 rows of the release before keys.
			`INSERT INTO ` + table + ` (event_time, event_type, client_id, remote_ip, user_agent, audience, scope, jti, secret_id, error_code, reason)
SELECT n, 'token_issued', CONCAT('svc-', n % 50), '192.0.2.1', 'agent/1', 'https://api', 'read', CONCAT('jti-', n), 'sec', '', ''
FROM (SELECT a.d + 10*b.d + 100*c.d + 1000*d.d AS n FROM
 (SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) a,
 (SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) b,
 (SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) c,
 (SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9 UNION ALL SELECT 10 UNION ALL SELECT 11) d) nums`,
		} {
			_, err := e.db.ExecContext(ctx, stmt)
			require.NoError(t, err, stmt)
		}
		// The server goes on with a statement whose client gave up: kill
		// this test's DELETE, if still running, so that it neither holds
		// its locks nor blocks the dropping of the tables.
		t.Cleanup(func() {
			rows, err := e.db.Query(`SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND (info LIKE ? OR info LIKE '%m2mauth_ddl%') AND id <> CONNECTION_ID()`, "DELETE a FROM "+table+" %")
			if err != nil {
				return
			}
			var ids []int64
			for rows.Next() {
				var id int64
				if rows.Scan(&id) == nil {
					ids = append(ids, id)
				}
			}
			rows.Close()
			for _, id := range ids {
				e.db.Exec(fmt.Sprintf("KILL %d", id))
			}
		})

		migrated := make(chan error, 1)
		start := time.Now()
		mctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		go func() { migrated <- s.Migrate(mctx) }()

		// An insert of the release before keys, a second into the
		// migration, within the Auditor's default Timeout of 5s.
		time.Sleep(time.Second)
		ictx, icancel := context.WithTimeout(ctx, 5*time.Second)
		defer icancel()
		istart := time.Now()
		_, ierr := e.db.ExecContext(ictx, "INSERT INTO "+table+` (event_time, event_type, client_id, remote_ip, user_agent, audience, scope, jti, secret_id, error_code, reason)
VALUES (1, 'token_issued', 'c', '', '', '', '', 'old-release', '', '', '')`)
		t.Logf("old-release insert: %v after %v", ierr, time.Since(istart))

		merr := <-migrated
		t.Logf("Migrate: %v after %v", merr, time.Since(start))
		assert.NoError(t, ierr, "an insert of the previous release during the migration")
		assert.NoError(t, merr, "version 8 on 12,000 rows within 5s")
	})
}

// TestAuditorSpillCompactionBounded: Close's compaction, which writes
// keys into the keyless lines it copies, does not grow a full spill file
// past SpillMaxBytes: it marks the written lines in place instead.
func TestAuditorSpillCompactionBounded(t *testing.T) {
	const n = 2000
	var file strings.Builder
	for i := range n {
		file.WriteString(oldSpillLine(i))
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		if e.dialect != sqlstore.SQLite {
			t.Skip("the file, not the engine")
		}
		prefix := e.newPrefix(t)
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		spill := filepath.Join(t.TempDir(), "audit.spill")
		require.NoError(t, os.WriteFile(spill, []byte(file.String()), 0o600))
		max := int64(file.Len())

		db, loser := e.openAnswerLoser(t, 2)
		a, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), SpillFile: spill, SpillMaxBytes: max,
			MaxRetryDelay: time.Hour, CloseTimeout: 100 * time.Millisecond,
		})
		require.NoError(t, err)
		waitFor(t, "the second commit's answer lost", loser.down.Load)
		require.NoError(t, a.Close())
		fi, err := os.Stat(spill)
		require.NoError(t, err)
		t.Logf("SpillMaxBytes %d, file after Close %d bytes, %d lines pending", max, fi.Size(), a.Pending())
		assert.LessOrEqual(t, fi.Size(), max, "the spill file within SpillMaxBytes")
	})
}

// keyColumnWithoutIndex returns a Store on new tables, and their prefix,
// whose audit table has the key column of version 8 but not its index,
// and version 8 not recorded: as a schema changed by hand leaves it, for
// Migrate to finish (MySQL).
func keyColumnWithoutIndex(t *testing.T, e *env) (*sqlstore.Store, string) {
	t.Helper()
	prefix := e.newPrefix(t)
	s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
	for _, stmt := range []string{
		"ALTER TABLE " + prefix + "audit_events DROP INDEX " + prefix + "audit_events_key_idx",
		"DELETE FROM " + prefix + "schema_migrations WHERE version = 8",
	} {
		_, err := e.db.ExecContext(t.Context(), stmt)
		require.NoError(t, err, stmt)
	}
	return s, prefix
}

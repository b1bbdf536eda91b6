package sqlstore_test

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// auditRow is one row of the audit_events table.
type auditRow struct {
	Time                                                              int64
	Type, ClientID, RemoteIP, UserAgent, Audience, Scope, JTI, Secret string
	Error, Reason                                                     string
}

func (e *env) auditRows(t *testing.T, prefix string) []auditRow {
	t.Helper()
	rows, err := e.db.QueryContext(t.Context(), `SELECT event_time, event_type, client_id, remote_ip, user_agent,
audience, scope, jti, secret_id, error_code, reason FROM `+prefix+`audit_events ORDER BY id`)
	require.NoError(t, err)
	defer rows.Close()
	var out []auditRow
	for rows.Next() {
		var r auditRow
		require.NoError(t, rows.Scan(&r.Time, &r.Type, &r.ClientID, &r.RemoteIP, &r.UserAgent,
			&r.Audience, &r.Scope, &r.JTI, &r.Secret, &r.Error, &r.Reason))
		out = append(out, r)
	}
	require.NoError(t, rows.Err())
	return out
}

// countAuditRows returns the number of rows of the audit table.
func (e *env) countAuditRows(t *testing.T, prefix string) int {
	t.Helper()
	var n int
	require.NoError(t, e.db.QueryRowContext(t.Context(), `SELECT COUNT(*) FROM `+prefix+`audit_events`).Scan(&n))
	return n
}

// recorder is a fallback auditor that keeps what it is given.
type recorder struct {
	mu     sync.Mutex
	events []m2mauth.AuditEvent
}

func (r *recorder) Audit(_ context.Context, e m2mauth.AuditEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

// errOutage is what a flaky database answers while it is down.
var errOutage = errors.New("test: database unavailable")

// outage is the switch of a flaky database: while down holds true, its
// connections, statements and transactions fail with errOutage, as a
// database that stopped answering would. When downAfter is positive, the
// statement executed after downAfter others sets down.
type outage struct {
	down      atomic.Bool
	downAfter atomic.Int64
	execs     atomic.Int64
	refused   atomic.Int64 // operations refused while down
}

// isDown reports whether the database is down, counting the operation
// it refuses then.
func (o *outage) isDown() bool {
	if o.down.Load() {
		o.refused.Add(1)
		return true
	}
	return false
}

// exec is called before each statement is executed.
func (o *outage) exec() error {
	if o.isDown() {
		return errOutage
	}
	if max := o.downAfter.Load(); max > 0 && o.execs.Add(1) > max {
		o.down.Store(true)
		return errOutage
	}
	return nil
}

// openFlaky returns a *sql.DB on the backend's database that fails while
// the returned outage says so.
func (e *env) openFlaky(t testing.TB) (*sql.DB, *outage) {
	t.Helper()
	probe, err := sql.Open(e.driver, e.dsn)
	require.NoError(t, err)
	drv := probe.Driver()
	require.NoError(t, probe.Close())
	c := &flakyConnector{drv: drv, o: new(outage)}
	if dc, ok := drv.(driver.DriverContext); ok {
		c.connector, err = dc.OpenConnector(e.dsn)
		require.NoError(t, err)
	} else {
		c.dsn = e.dsn
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return db, c.o
}

type flakyConnector struct {
	drv       driver.Driver
	connector driver.Connector // nil: drv.Open(dsn)
	dsn       string
	o         *outage
}

func (c *flakyConnector) Connect(ctx context.Context) (driver.Conn, error) {
	if c.o.isDown() {
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
	return &flakyConn{passConn: passConn{conn}, o: c.o}, nil
}

func (c *flakyConnector) Driver() driver.Driver { return c.drv }

// flakyConn passes everything to the driver's connection, unless down.
type flakyConn struct {
	passConn
	o *outage
}

func (c *flakyConn) Prepare(q string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), q)
}

func (c *flakyConn) PrepareContext(ctx context.Context, q string) (driver.Stmt, error) {
	if c.o.isDown() {
		return nil, errOutage
	}
	var (
		st  driver.Stmt
		err error
	)
	if p, ok := c.Conn.(driver.ConnPrepareContext); ok {
		st, err = p.PrepareContext(ctx, q)
	} else {
		st, err = c.Conn.Prepare(q)
	}
	if err != nil {
		return nil, err
	}
	return &flakyStmt{Stmt: st, conn: c}, nil
}

func (c *flakyConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *flakyConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if c.o.isDown() {
		return nil, errOutage
	}
	if b, ok := c.Conn.(driver.ConnBeginTx); ok {
		return b.BeginTx(ctx, opts)
	}
	return c.Conn.Begin() // a driver without BeginTx
}

func (c *flakyConn) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	if err := c.o.exec(); err != nil {
		return nil, err
	}
	if x, ok := c.Conn.(driver.ExecerContext); ok {
		return x.ExecContext(ctx, q, args)
	}
	return nil, driver.ErrSkip
}

func (c *flakyConn) QueryContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Rows, error) {
	if c.o.isDown() {
		return nil, errOutage
	}
	if x, ok := c.Conn.(driver.QueryerContext); ok {
		return x.QueryContext(ctx, q, args)
	}
	return nil, driver.ErrSkip
}

// flakyStmt passes everything to the driver's statement, unless down.
type flakyStmt struct {
	driver.Stmt
	conn *flakyConn
}

func (s *flakyStmt) Exec(args []driver.Value) (driver.Result, error) {
	if err := s.conn.o.exec(); err != nil {
		return nil, err
	}
	return s.Stmt.Exec(args) // a driver without ExecContext
}

func (s *flakyStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if err := s.conn.o.exec(); err != nil {
		return nil, err
	}
	if x, ok := s.Stmt.(driver.StmtExecContext); ok {
		return x.ExecContext(ctx, args)
	}
	vals := make([]driver.Value, len(args))
	for i, a := range args {
		vals[i] = a.Value
	}
	return s.Stmt.Exec(vals) // a driver without ExecContext
}

func (s *flakyStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if s.conn.o.isDown() {
		return nil, errOutage
	}
	if x, ok := s.Stmt.(driver.StmtQueryContext); ok {
		return x.QueryContext(ctx, args)
	}
	vals := make([]driver.Value, len(args))
	for i, a := range args {
		vals[i] = a.Value
	}
	return s.Stmt.Query(vals) // a driver without QueryContext
}

func (s *flakyStmt) CheckNamedValue(nv *driver.NamedValue) error {
	if x, ok := s.Stmt.(driver.NamedValueChecker); ok {
		return x.CheckNamedValue(nv)
	}
	return s.conn.CheckNamedValue(nv)
}

// waitFor polls cond until it holds, failing t after a deadline generous
// enough for a loaded machine.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			require.FailNow(t, "timed out waiting: "+what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// testEvent returns the i-th event of a test: every field set, distinct
// by JTI.
func testEvent(i int) m2mauth.AuditEvent {
	return m2mauth.AuditEvent{
		Time: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * 1001 * time.Microsecond),
		Type: m2mauth.EventTokenIssued, ClientID: fmt.Sprintf("svc-%d", i%7), RemoteIP: "192.0.2.1",
		UserAgent: "agent/1 \"quoted\"", Audience: "https://api.example.com", Scopes: m2mauth.Scopes{"read", "write"},
		JTI: fmt.Sprintf("jti-%04d", i), SecretID: "sec_1", Error: "", Reason: "r\u00e9ason",
	}
}

// rowOf is the row that testEvent(i) becomes.
func rowOf(e m2mauth.AuditEvent) auditRow {
	return auditRow{e.Time.UnixMicro(), string(e.Type), e.ClientID, e.RemoteIP, e.UserAgent, e.Audience,
		e.Scopes.String(), e.JTI, e.SecretID, e.Error, e.Reason}
}

// wantRows returns the rows of testEvent(0) to testEvent(n-1) but those
// whose JTI is in skip, sorted by JTI.
func wantRows(n int, skip map[string]bool) []auditRow {
	var out []auditRow
	for i := range n {
		if e := testEvent(i); !skip[e.JTI] {
			out = append(out, rowOf(e))
		}
	}
	return out
}

// sortedRows returns the rows of the table sorted by JTI.
func (e *env) sortedRows(t *testing.T, prefix string) []auditRow {
	t.Helper()
	rows := e.auditRows(t, prefix)
	sort.Slice(rows, func(i, j int) bool { return rows[i].JTI < rows[j].JTI })
	return rows
}

// lineCount returns the number of lines in the file at path, 0 if there is
// no file.
func lineCount(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	require.NoError(t, err)
	return bytes.Count(b, []byte{'\n'})
}

func TestAuditorWritesRows(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		e.newStore(t, sqlstore.Config{TablePrefix: prefix}) // migrates
		fallback := &recorder{}
		clock := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		a, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix,
			Fallback:    fallback,
			Now:         func() time.Time { return clock },
		})
		require.NoError(t, err)
		t.Cleanup(func() { a.Close() })

		issued := time.Date(2029, 12, 31, 23, 59, 59, 123456789, time.UTC)
		cancelled, cancel := context.WithCancel(t.Context())
		cancel()
		events := []struct {
			ctx  context.Context
			ev   m2mauth.AuditEvent
			want auditRow
		}{
			{t.Context(), m2mauth.AuditEvent{
				Time: issued, Type: m2mauth.EventTokenIssued, ClientID: "svc-a", RemoteIP: "192.0.2.1",
				UserAgent: "curl/8", Audience: "https://api.example.com", Scopes: m2mauth.Scopes{"read", "write"},
				JTI: "jti-1", SecretID: "sec_1",
			}, auditRow{issued.UnixMicro(), "token_issued", "svc-a", "192.0.2.1", "curl/8",
				"https://api.example.com", "read write", "jti-1", "sec_1", "", ""}},
			{t.Context(), m2mauth.AuditEvent{
				Type: m2mauth.EventAuthFailed, ClientID: "svc-b", RemoteIP: "2001:db8::1",
				Error: "invalid_client", Reason: m2mauth.ReasonBadSecret,
			}, auditRow{clock.UnixMicro(), "client_auth_failed", "svc-b", "2001:db8::1", "",
				"", "", "", "", "invalid_client", "bad_secret"}},
			// Whatever a request sends is stored as text every engine
			// accepts, and bounded.
			{t.Context(), m2mauth.AuditEvent{
				Time: issued, Type: m2mauth.EventRequestRejected, ClientID: "bad\xff\xfeid\x00",
				UserAgent: strings.Repeat("é", 600), Error: "invalid_request",
			}, auditRow{issued.UnixMicro(), "request_rejected", "bad\uFFFDid\uFFFD", "", strings.Repeat("é", 512),
				"", "", "", "", "invalid_request", ""}},
			// A client that hangs up does not erase its trail.
			{cancelled, m2mauth.AuditEvent{Time: issued, Type: m2mauth.EventRateLimited, RemoteIP: "192.0.2.9"},
				auditRow{issued.UnixMicro(), "rate_limited", "", "192.0.2.9", "", "", "", "", "", "", ""}},
		}
		var want []auditRow
		for _, ev := range events {
			a.Audit(ev.ctx, ev.ev)
			want = append(want, ev.want)
		}
		assert.Equal(t, want, e.auditRows(t, prefix))
		assert.Zero(t, a.Failures())
		assert.Zero(t, a.Lost())
		assert.Zero(t, a.Pending())
		assert.NoError(t, a.AuditHealth())
		assert.Empty(t, fallback.events)
	})
}

// TestAuditorOutage sends events while every write fails, then lets the
// database answer again: each event reaches the table exactly once, from
// memory or through the spill file, and AuditHealth reports the outage
// from its start to its end.
func TestAuditorOutage(t *testing.T) {
	const n = 500
	tests := []struct {
		name             string
		queue, retryBuf  int
		spill            bool
		minSpilledEvents int
	}{
		{name: "Sync"},
		{name: "Queued", queue: 16},
		{name: "SyncSpill", retryBuf: 8, spill: true, minSpilledEvents: n - 8},
		{name: "QueuedSpill", queue: 16, retryBuf: 8, spill: true, minSpilledEvents: n - 8},
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				prefix := e.newPrefix(t)
				e.newStore(t, sqlstore.Config{TablePrefix: prefix})
				db, o := e.openFlaky(t)
				spill := ""
				if tt.spill {
					spill = filepath.Join(t.TempDir(), "audit.spill")
				}
				fallback := &recorder{}
				a, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
					TablePrefix: prefix, Fallback: fallback, Logger: slog.New(slog.DiscardHandler),
					QueueSize: tt.queue, RetryBuffer: tt.retryBuf, SpillFile: spill,
					MaxRetryDelay: 20 * time.Millisecond,
				})
				require.NoError(t, err)
				t.Cleanup(func() { a.Close() })

				require.NoError(t, a.AuditHealth())
				o.down.Store(true)
				var wg sync.WaitGroup
				const workers = 4
				for w := range workers {
					wg.Go(func() {
						for i := w; i < n; i += workers {
							a.Audit(t.Context(), testEvent(i))
						}
					})
				}
				wg.Wait()
				waitFor(t, "every event held or spilled", func() bool { return a.Pending() == n })
				require.ErrorIs(t, a.AuditHealth(), errOutage)
				assert.Equal(t, uint64(n), a.Failures())
				assert.Zero(t, a.Lost())
				assert.Zero(t, e.countAuditRows(t, prefix))
				if tt.spill {
					assert.GreaterOrEqual(t, lineCount(t, spill), tt.minSpilledEvents)
				}

				o.down.Store(false)
				waitFor(t, "every event written", func() bool { return a.Pending() == 0 && a.AuditHealth() == nil })
				assert.Equal(t, wantRows(n, nil), e.sortedRows(t, prefix), "each event exactly once")
				assert.Zero(t, a.Lost())
				assert.Zero(t, fallback.len())
				if tt.spill {
					assert.Zero(t, lineCount(t, spill), "emptied once written")
				}

				a.Audit(t.Context(), testEvent(n))
				require.NoError(t, a.Close())
				assert.Equal(t, n+1, e.countAuditRows(t, prefix))
				assert.Equal(t, uint64(n), a.Failures())
				if tt.spill {
					assert.NoFileExists(t, spill, "removed by Close")
				}
			})
		}
	})
}

// TestAuditorSpillAcrossRestart: events spilled by an Auditor that was
// closed during an outage are written by the next Auditor on the same
// file; lines torn or garbled are skipped and counted as lost.
func TestAuditorSpillAcrossRestart(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		const n = 300
		prefix := e.newPrefix(t)
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		spill := filepath.Join(t.TempDir(), "audit.spill")
		db, o := e.openFlaky(t)
		o.down.Store(true)

		first, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), QueueSize: 32, RetryBuffer: 64,
			SpillFile: spill, MaxRetryDelay: 10 * time.Millisecond, CloseTimeout: 50 * time.Millisecond,
		})
		require.NoError(t, err)
		for i := range n {
			first.Audit(t.Context(), testEvent(i))
		}
		require.NoError(t, first.Close())
		assert.Zero(t, first.Lost())
		assert.Equal(t, n, first.Pending(), "left in the spill file")
		require.Equal(t, n, lineCount(t, spill), "everything held was spilled at Close")
		spilled, err := os.ReadFile(spill)
		require.NoError(t, err)

		// A process that died while appending left a torn line; and one
		// line is not an event at all.
		f, err := os.OpenFile(spill, os.O_WRONLY|os.O_APPEND, 0)
		require.NoError(t, err)
		_, err = f.WriteString("not json\nnull\n{}\n{\"event\":\"token_iss")
		require.NoError(t, err)
		require.NoError(t, f.Close())

		second, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), SpillFile: spill,
		})
		require.NoError(t, err)
		t.Cleanup(func() { second.Close() })
		waitFor(t, "the spill file written", func() bool { return second.Pending() == 0 })
		assert.NoError(t, second.AuditHealth())
		assert.Equal(t, uint64(4), second.Lost(), "the four lines that are not events")
		assert.Zero(t, second.Failures())
		require.NoError(t, second.Close())
		assert.NoFileExists(t, spill)
		assert.Equal(t, wantRows(n, nil), e.sortedRows(t, prefix), "each event once, every field kept")

		// A process that wrote the file to the table and died before it
		// emptied it leaves the file whole: the next writes it again,
		// and no row twice.
		require.NoError(t, os.WriteFile(spill, spilled, 0o600))
		third, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), SpillFile: spill,
		})
		require.NoError(t, err)
		t.Cleanup(func() { third.Close() })
		waitFor(t, "the spill file written again", func() bool { return third.Pending() == 0 })
		require.NoError(t, third.Close())
		assert.Zero(t, third.Lost())
		assert.NoFileExists(t, spill)
		assert.Equal(t, wantRows(n, nil), e.sortedRows(t, prefix), "each event once after the file was written twice")
	})
}

// TestAuditorSpillFileRefused: a spill path that holds something else (a
// log or the database, given by mistake), a link to elsewhere, or a file
// other users may read is refused, and left as it is, rather than read
// as unreadable lines and emptied.
func TestAuditorSpillFileRefused(t *testing.T) {
	const event = `{"event_time":"2026-12-02T00:00:00Z","event":"token_issued","client_id":"svc"}` + "\n"
	tests := []struct {
		name    string
		make    func(t *testing.T, path string) (check string) // the file whose content must stay
		refused string                                         // in the error; "" if accepted
		unix    bool
	}{
		{"another file", func(t *testing.T, path string) string {
			require.NoError(t, os.WriteFile(path, []byte("app started\nrequest served\n"), 0o600))
			return path
		}, "not a spill file", false},
		{"a link to elsewhere", func(t *testing.T, path string) string {
			victim := path + ".victim"
			require.NoError(t, os.WriteFile(victim, []byte(event), 0o600))
			require.NoError(t, os.Symlink(victim, path))
			return victim
		}, "spill file", true},
		{"open to other users", func(t *testing.T, path string) string {
			require.NoError(t, os.WriteFile(path, []byte(event), 0o600))
			require.NoError(t, os.Chmod(path, 0o644))
			return path
		}, "open to other users", true},
		{"a spill file", func(t *testing.T, path string) string {
			require.NoError(t, os.WriteFile(path, []byte(event), 0o600))
			return ""
		}, "", false},
		{"a torn line alone", func(t *testing.T, path string) string {
			require.NoError(t, os.WriteFile(path, []byte(`{"event_time":"2026-12-02T00:00:00Z","ev`), 0o600))
			return ""
		}, "", false},
		{"a torn line, ended, then events", func(t *testing.T, path string) string {
			require.NoError(t, os.WriteFile(path, []byte(`{"event_ti`+"\n"+event+event), 0o600))
			return ""
		}, "", false},
		{"a torn line, ended, then garbage", func(t *testing.T, path string) string {
			require.NoError(t, os.WriteFile(path, []byte(`{"event_time":"2026-`+"\nnot json\n"), 0o600))
			return ""
		}, "", false},
		{"an event without a type", func(t *testing.T, path string) string {
			require.NoError(t, os.WriteFile(path, []byte(`{"event_time":"2026-12-02T00:00:00Z","event":""}`+"\n"), 0o600))
			return ""
		}, "", false},
		{"CRLF", func(t *testing.T, path string) string {
			require.NoError(t, os.WriteFile(path, []byte(strings.ReplaceAll(event, "\n", "\r\n")), 0o600))
			return ""
		}, "", false},
	}
	e := &env{backend: backends()[0]}
	e.dsn = e.backend.dsn(t)
	e.db = e.open(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.unix && runtime.GOOS == "windows" {
				t.Skip("Unix file modes and links")
			}
			prefix := e.newPrefix(t)
			e.newStore(t, sqlstore.Config{TablePrefix: prefix})
			path := filepath.Join(t.TempDir(), "audit.spill")
			check := tt.make(t, path)
			var before []byte
			if check != "" {
				var err error
				before, err = os.ReadFile(check)
				require.NoError(t, err)
			}
			a, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{
				TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), SpillFile: path,
			})
			if tt.refused == "" {
				require.NoError(t, err)
				waitFor(t, "the spill file written", func() bool { return a.Pending() == 0 })
				require.NoError(t, a.Close())
				assert.NoFileExists(t, path)
				return
			}
			require.ErrorContains(t, err, tt.refused)
			after, rerr := os.ReadFile(check)
			require.NoError(t, rerr)
			assert.Equal(t, string(before), string(after), "left as it was")
		})
	}
}

// TestAuditorSpillFarTime: an event whose time JSON cannot encode (past
// the year 9999) is spilled with the nearest time it can, not lost with
// the events after it.
func TestAuditorSpillFarTime(t *testing.T) {
	e := &env{backend: backends()[0]}
	e.dsn = e.backend.dsn(t)
	e.db = e.open(t)
	prefix := e.newPrefix(t)
	e.newStore(t, sqlstore.Config{TablePrefix: prefix})
	spill := filepath.Join(t.TempDir(), "audit.spill")
	db, o := e.openFlaky(t)
	o.down.Store(true)
	var lost []m2mauth.AuditEvent
	var mu sync.Mutex
	a, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
		TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), RetryBuffer: 100, SpillFile: spill,
		MaxRetryDelay: 10 * time.Millisecond, CloseTimeout: time.Millisecond,
		Fallback: m2mauth.AuditorFunc(func(_ context.Context, ev m2mauth.AuditEvent) {
			mu.Lock()
			defer mu.Unlock()
			lost = append(lost, ev)
		}),
	})
	require.NoError(t, err)
	for i := range 5 {
		ev := testEvent(i)
		switch i {
		case 1:
			ev.Time = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
		case 3:
			// Year 9999 in UTC, 10000 where it is written.
			ev.Time = time.Date(9999, 12, 31, 22, 0, 0, 0, time.UTC).In(time.FixedZone("", 5*60*60))
		}
		a.Audit(t.Context(), ev)
	}
	require.NoError(t, a.Close())
	mu.Lock()
	assert.Empty(t, lost)
	mu.Unlock()
	require.Equal(t, 5, lineCount(t, spill))
}

// TestAuditorSpillFileInUse: a second Auditor given the spill file of a
// running one (two replicas started in one directory, say) does not
// share it, which would replay and truncate the other's lines: it warns
// and runs without one. The first keeps its file, and the second's
// events still reach the table.
func TestAuditorSpillFileInUse(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no advisory file locks on Windows")
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		spill := filepath.Join(t.TempDir(), "audit.spill")
		db, o := e.openFlaky(t)
		o.down.Store(true)
		first, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), RetryBuffer: 1,
			SpillFile: spill, MaxRetryDelay: 10 * time.Millisecond, CloseTimeout: 50 * time.Millisecond,
		})
		require.NoError(t, err)
		for i := range 10 {
			first.Audit(t.Context(), testEvent(i))
		}
		spilled := lineCount(t, spill)
		require.Positive(t, spilled)

		var log bytes.Buffer
		second, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix, Logger: slog.New(slog.NewTextHandler(&log, nil)), SpillFile: spill,
		})
		require.NoError(t, err)
		assert.Contains(t, log.String(), "in use by another auditor")
		second.Audit(t.Context(), testEvent(100))
		require.NoError(t, second.Close())
		assert.Equal(t, spilled, lineCount(t, spill), "the first auditor's lines are untouched")
		assert.Zero(t, second.Lost())

		require.NoError(t, first.Close())
		assert.Equal(t, 10, lineCount(t, spill), "everything the first held is in its file")
	})
}

// TestAuditorSpillCompactedAtClose: when Close comes while a spill file is
// being written to the table and the database fails again, the lines
// already written are cut from the file, so the next process does not
// write them twice.
func TestAuditorSpillCompactedAtClose(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, noCopy := range []bool{false, true} {
			t.Run(map[bool]string{false: "compacted", true: "no room for a copy"}[noCopy], func(t *testing.T) {
				spillCompactedAtClose(t, e, noCopy)
			})
		}
	})
}

// spillCompactedAtClose is TestAuditorSpillCompactedAtClose; with noCopy,
// the compaction's copy of the file cannot be made (as on a full disk),
// and Close marks the lines written in place instead.
func spillCompactedAtClose(t *testing.T, e *env, noCopy bool) {
	const n = 300
	prefix := e.newPrefix(t)
	e.newStore(t, sqlstore.Config{TablePrefix: prefix})
	spill := filepath.Join(t.TempDir(), "audit.spill")
	db, o := e.openFlaky(t)
	o.down.Store(true)
	first, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
		TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), RetryBuffer: 1,
		SpillFile: spill, CloseTimeout: time.Millisecond,
	})
	require.NoError(t, err)
	for i := range n {
		first.Audit(t.Context(), testEvent(i))
	}
	require.NoError(t, first.Close())
	require.Equal(t, n, lineCount(t, spill))

	// The next process writes one transaction of the file (256
	// rows, in statements of auditChunk), then the database fails
	// in the middle of the second (44 rows: 32, 8, 4).
	db2, o2 := e.openFlaky(t)
	o2.downAfter.Store(256/auditChunk + 1)
	second, err := sqlstore.NewAuditor(db2, e.dialect, sqlstore.AuditorConfig{
		TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), SpillFile: spill,
		MaxRetryDelay: time.Hour, CloseTimeout: time.Millisecond,
	})
	require.NoError(t, err)
	waitFor(t, "the database down again", o2.down.Load)
	if noCopy {
		// Where the copy would go, a directory that is not empty.
		require.NoError(t, os.MkdirAll(filepath.Join(spill+".tmp", "in-the-way"), 0o700))
	}
	require.NoError(t, second.Close())
	require.Equal(t, 256, e.countAuditRows(t, prefix))
	if !noCopy {
		assert.Equal(t, n-256, lineCount(t, spill), "only the lines not written are left")
	}
	assert.Equal(t, n-256, second.Pending())
	require.NoError(t, os.RemoveAll(spill+".tmp"))

	third, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{
		TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), SpillFile: spill,
	})
	require.NoError(t, err)
	assert.Equal(t, n-256, third.Pending(), "the lines left to write")
	waitFor(t, "the rest written", func() bool { return third.Pending() == 0 })
	require.NoError(t, third.Close())
	assert.Equal(t, wantRows(n, nil), e.sortedRows(t, prefix), "each event once")
	assert.Zero(t, third.Lost(), "no line taken for unreadable")
}

// TestAuditorBounded: past the retry buffer and the spill file, events go
// to the fallback auditor and count as lost; memory and the file stay
// within their bounds; the rest is written once the database answers.
func TestAuditorBounded(t *testing.T) {
	const n, retryBuf = 200, 4
	tests := []struct {
		name     string
		spill    bool
		maxBytes int64
	}{
		{name: "NoSpillFile"},
		{name: "SpillFileFull", spill: true, maxBytes: 4096},
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				prefix := e.newPrefix(t)
				e.newStore(t, sqlstore.Config{TablePrefix: prefix})
				db, o := e.openFlaky(t)
				spill := ""
				if tt.spill {
					spill = filepath.Join(t.TempDir(), "audit.spill")
				}
				fallback := &recorder{}
				a, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
					TablePrefix: prefix, Fallback: fallback, Logger: slog.New(slog.DiscardHandler),
					RetryBuffer: retryBuf, SpillFile: spill, SpillMaxBytes: tt.maxBytes,
					MaxRetryDelay: 20 * time.Millisecond,
				})
				require.NoError(t, err)
				t.Cleanup(func() { a.Close() })

				o.down.Store(true)
				for i := range n {
					a.Audit(t.Context(), testEvent(i))
				}
				spilled := 0
				if tt.spill {
					fi, err := os.Stat(spill)
					require.NoError(t, err)
					assert.LessOrEqual(t, fi.Size(), tt.maxBytes)
					spilled = lineCount(t, spill)
					assert.Positive(t, spilled)
				}
				assert.Equal(t, retryBuf+spilled, a.Pending(), "the retry buffer is full, no more")
				assert.Equal(t, uint64(n-retryBuf-spilled), a.Lost())
				assert.Equal(t, uint64(n), a.Failures())
				require.Equal(t, int(a.Lost()), fallback.len())
				lost := map[string]bool{}
				for _, ev := range fallback.events {
					lost[ev.JTI] = true
				}

				o.down.Store(false)
				require.NoError(t, a.Close())
				assert.Equal(t, wantRows(n, lost), e.sortedRows(t, prefix), "the rest written, once")
			})
		}
	})
}

// TestAuditorFallbackFormat: the default fallback logs a lost event as the
// same record a SlogAuditor writes, and the records about failed writes
// name the event type, the client id and the error, nothing else.
func TestAuditorFallbackFormat(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		db, o := e.openFlaky(t)
		var logs bytes.Buffer
		a, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix, Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
			CloseTimeout: time.Millisecond,
		})
		require.NoError(t, err)
		o.down.Store(true)
		ev := testEvent(1)
		ev.Type, ev.Error = m2mauth.EventAuthFailed, "invalid_client"
		a.Audit(t.Context(), ev) // held, then lost at Close
		require.NoError(t, a.Close())
		a.Audit(t.Context(), ev) // lost at once
		assert.Equal(t, uint64(2), a.Lost())

		var direct bytes.Buffer
		m2mauth.NewSlogAuditor(slog.New(slog.NewJSONHandler(&direct, nil))).Audit(t.Context(), ev)
		want := decodeJSONLines(t, direct.Bytes())
		require.Len(t, want, 1)
		delete(want[0], "time")

		var fallback, failed []map[string]any
		for _, rec := range decodeJSONLines(t, logs.Bytes()) {
			if rec["msg"] == "m2mauth audit" {
				delete(rec, "time")
				fallback = append(fallback, rec)
				continue
			}
			if strings.Contains(rec["msg"].(string), "not written") {
				failed = append(failed, rec)
			}
		}
		assert.Equal(t, []map[string]any{want[0], want[0]}, fallback)
		require.Len(t, failed, 3, "held; lost at Close; lost after Close")
		for _, rec := range failed {
			keys := make([]string, 0, len(rec))
			for k := range rec {
				keys = append(keys, k)
			}
			assert.ElementsMatch(t, []string{"time", "level", "msg", "event", "client_id", "error"}, keys)
			assert.Equal(t, "ERROR", rec["level"])
			assert.Equal(t, string(ev.Type), rec["event"])
			assert.Equal(t, ev.ClientID, rec["client_id"])
		}
		assert.Contains(t, failed[0]["error"], errOutage.Error())
	})
}

func decodeJSONLines(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if err == io.EOF {
			return out
		}
		require.NoError(t, err)
		out = append(out, m)
	}
}

// TestAuditorMissingTable: an event for a table that was never created is
// held, reported by AuditHealth, and logged by the default fallback when
// Close gives up on it.
func TestAuditorMissingTable(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		var logs bytes.Buffer
		a, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: e.newPrefix(t), Logger: slog.New(slog.NewTextHandler(&logs, nil)),
			MaxRetryDelay: 10 * time.Millisecond, CloseTimeout: 50 * time.Millisecond,
		})
		require.NoError(t, err)
		a.Audit(t.Context(), m2mauth.AuditEvent{Type: m2mauth.EventScopeDenied, ClientID: "svc", JTI: "jti-9"})
		assert.Equal(t, uint64(1), a.Failures())
		assert.Equal(t, 1, a.Pending())
		assert.Error(t, a.AuditHealth())
		assert.Contains(t, logs.String(), "audit event not written; holding it for retry")

		start := time.Now()
		require.NoError(t, a.Close())
		assert.Less(t, time.Since(start), 5*time.Second, "Close is bounded")
		assert.Equal(t, uint64(1), a.Lost())
		assert.Contains(t, logs.String(), "m2mauth audit", "the event itself, from the default fallback")
		assert.Contains(t, logs.String(), "jti=jti-9")
		assert.ErrorContains(t, a.AuditHealth(), "closed")
	})
}

// TestAuditorRequireAudit runs a token handler that must not issue
// unaudited tokens: while the audit table cannot be written it answers
// 503 with Retry-After, and 200 again once it can.
func TestAuditorRequireAudit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		store := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		plain, _ := createClient(t, store, "svc", time.Now())
		db, o := e.openFlaky(t)
		a, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), MaxRetryDelay: 20 * time.Millisecond,
		})
		require.NoError(t, err)
		t.Cleanup(func() { a.Close() })
		h := newTokenHandler(t, store, m2mauth.TokenHandlerConfig{Auditor: a, RequireAudit: true})
		request := func() (*httptest.ResponseRecorder, tokenResponse) {
			return serve(t, h, tokenRequest("127.0.0.1:4000", "svc", plain))
		}

		w, body := request()
		require.Equal(t, http.StatusOK, w.Code, "%s", w.Body)
		assert.NotEmpty(t, body.AccessToken)

		o.down.Store(true)
		w, _ = request()
		require.Equal(t, http.StatusOK, w.Code, "checked before its own event failed")
		require.Error(t, a.AuditHealth())
		for range 3 {
			w, body = request()
			assert.Equal(t, http.StatusServiceUnavailable, w.Code)
			assert.Equal(t, m2mauth.CodeTemporarilyUnavailable, body.Error)
			assert.NotEmpty(t, w.Header().Get("Retry-After"))
			assert.Empty(t, body.AccessToken)
		}

		o.down.Store(false)
		waitFor(t, "the audit table written again", func() bool { return a.AuditHealth() == nil })
		w, body = request()
		assert.Equal(t, http.StatusOK, w.Code)
		assert.NotEmpty(t, body.AccessToken)
		require.NoError(t, a.Close())

		var types []string
		for _, r := range e.auditRows(t, prefix) {
			types = append(types, r.Type+"/"+r.Reason)
		}
		sort.Strings(types)
		assert.Equal(t, []string{
			"request_rejected/" + m2mauth.ReasonAuditUnavailable,
			"request_rejected/" + m2mauth.ReasonAuditUnavailable,
			"request_rejected/" + m2mauth.ReasonAuditUnavailable,
			"token_issued/", "token_issued/", "token_issued/",
		}, types, "every request audited, the refused ones too")
	})
}

func TestNewAuditor(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		dir := t.TempDir()
		tests := []struct {
			name string
			cfg  sqlstore.AuditorConfig
			ok   bool
		}{
			{"Zero", sqlstore.AuditorConfig{}, true},
			{"SpillFile", sqlstore.AuditorConfig{SpillFile: filepath.Join(dir, "a.spill")}, true},
			{"NegativeTimeout", sqlstore.AuditorConfig{Timeout: -time.Second}, false},
			{"NegativeQueueSize", sqlstore.AuditorConfig{QueueSize: -1}, false},
			{"HugeQueueSize", sqlstore.AuditorConfig{QueueSize: math.MaxInt}, false},
			{"LargestQueueSize", sqlstore.AuditorConfig{QueueSize: 1 << 16}, true},
			{"NegativeRetryBuffer", sqlstore.AuditorConfig{RetryBuffer: -1}, false},
			{"NegativeMaxRetryDelay", sqlstore.AuditorConfig{MaxRetryDelay: -time.Second}, false},
			{"NegativeCloseTimeout", sqlstore.AuditorConfig{CloseTimeout: -time.Second}, false},
			{"NegativeSpillMaxBytes", sqlstore.AuditorConfig{SpillMaxBytes: -1}, false},
			{"SpillFileInMissingDirectory", sqlstore.AuditorConfig{SpillFile: filepath.Join(dir, "no", "a.spill")}, false},
			{"SpillFileIsDirectory", sqlstore.AuditorConfig{SpillFile: dir}, false},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				a, err := sqlstore.NewAuditor(e.db, e.dialect, tt.cfg)
				if !tt.ok {
					require.Error(t, err)
					assert.Nil(t, a)
					return
				}
				require.NoError(t, err)
				require.NoError(t, a.Close())
				require.NoError(t, a.Close(), "second Close")
				if tt.cfg.SpillFile != "" {
					assert.NoFileExists(t, tt.cfg.SpillFile, "an empty spill file is removed")
				}
			})
		}
	})
}

// TestAuditorCloseStopsGoroutines: Close ends the background work of
// every kind of Auditor.
func TestAuditorCloseStopsGoroutines(t *testing.T) {
	e := &env{backend: backends()[0]}
	e.dsn = e.backend.dsn(t)
	e.db = e.open(t)
	require.NoError(t, e.db.Ping())
	before := runtime.NumGoroutine()
	for i, cfg := range []sqlstore.AuditorConfig{
		{},
		{QueueSize: 8},
		{QueueSize: 8, SpillFile: filepath.Join(t.TempDir(), "a.spill")},
	} {
		a, err := sqlstore.NewAuditor(e.db, e.dialect, cfg)
		require.NoError(t, err, "config %d", i)
		require.NoError(t, a.Close())
	}
	waitFor(t, "the goroutines gone", func() bool { return runtime.NumGoroutine() <= before })
}

// TestAuditorQueue: with a queue, events from many goroutines are written
// in batches, each exactly once; Close flushes; a full queue and a closed
// Auditor lose nothing either.
func TestAuditorQueue(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		fallback := &recorder{}
		a, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix, Fallback: fallback, QueueSize: 16,
		})
		require.NoError(t, err)

		const workers, each = 8, 50
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					a.Audit(t.Context(), m2mauth.AuditEvent{
						Time: time.Now(), Type: m2mauth.EventTokenIssued,
						ClientID: "w" + string(rune('a'+w)), JTI: strings.Repeat("x", i+1),
					})
				}
			}()
		}
		wg.Wait()
		require.NoError(t, a.Close())
		rows := e.auditRows(t, prefix)
		assert.Len(t, rows, workers*each, "every event written, none lost")
		seen := map[string]bool{}
		for _, r := range rows {
			seen[r.ClientID+"/"+r.JTI] = true
		}
		assert.Len(t, seen, workers*each, "each event exactly once")
		assert.Zero(t, a.Failures())
		assert.Empty(t, fallback.events)

		after := m2mauth.AuditEvent{Time: time.Now(), Type: m2mauth.EventAuthFailed, ClientID: "after-close"}
		a.Audit(t.Context(), after)
		assert.Equal(t, uint64(1), a.Failures())
		assert.Equal(t, uint64(1), a.Lost())
		assert.Equal(t, []m2mauth.AuditEvent{after}, fallback.events, "after Close, events go to the fallback")
	})
}

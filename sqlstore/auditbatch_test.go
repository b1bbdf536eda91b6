package sqlstore_test

import (
	"database/sql"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// batchEvent returns the i-th event of a batch test, every field of it
// distinct from the same field of the other events, so that a value
// written to another row or column shows.
func batchEvent(i int) m2mauth.AuditEvent {
	types := []m2mauth.AuditEventType{m2mauth.EventTokenIssued, m2mauth.EventAuthFailed, m2mauth.EventScopeDenied}
	return m2mauth.AuditEvent{
		Time:      time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * 1001 * time.Microsecond),
		Type:      types[i%len(types)],
		ClientID:  fmt.Sprintf("svc-%d", i),
		RemoteIP:  fmt.Sprintf("192.0.%d.%d", i/250, i%250),
		UserAgent: fmt.Sprintf("agent/%d \"quoted\" r\u00e9", i),
		Audience:  fmt.Sprintf("https://api-%d.example.com", i),
		Scopes:    m2mauth.Scopes{"read", fmt.Sprintf("s%d", i)},
		JTI:       fmt.Sprintf("jti-%04d", i),
		SecretID:  fmt.Sprintf("sec_%d", i),
		Error:     fmt.Sprintf("err-%d", i),
		Reason:    fmt.Sprintf("reason-%d", i),
	}
}

// auditChunk is the most rows the Auditor inserts with one statement, as
// in audit.go. Tests that make the database fail after so many statements
// count with it.
const auditChunk = 64

// batchRows returns the rows of batchEvent(0) to batchEvent(n-1), in order.
func batchRows(n int) []auditRow {
	rows := make([]auditRow, n)
	for i := range rows {
		rows[i] = rowOf(batchEvent(i))
	}
	return rows
}

// holdBatch audits n events while the database behind o fails, so that
// a holds all of them, and its retries write them in transactions of up
// to 256 rows once the database answers.
func holdBatch(t *testing.T, a *sqlstore.Auditor, o *outage, n int) {
	t.Helper()
	o.down.Store(true)
	for i := range n {
		a.Audit(t.Context(), batchEvent(i))
	}
	require.Equal(t, n, a.Pending(), "every event held")
	require.ErrorIs(t, a.AuditHealth(), errOutage)
}

// TestAuditorBatchSizes: a held batch of any size, one statement or
// several, a full one and a remainder, lands once, in order, every field
// in its column.
func TestAuditorBatchSizes(t *testing.T) {
	tests := []struct {
		name string
		n    int
	}{
		{"One", 1},
		{"Two", 2},
		{"Remainder", 45},
		{"ChunkMinusOne", auditChunk - 1},
		{"Chunk", auditChunk},
		{"ChunkPlusOne", auditChunk + 1},
		{"TwoChunks", 2 * auditChunk},
		{"ChunksAndRemainder", 200},
		{"FullRetryBatch", 256},
		{"TwoTransactions", 300}, // 256, then 44
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				prefix := e.newPrefix(t)
				e.newStore(t, sqlstore.Config{TablePrefix: prefix})
				db, o := e.openFlaky(t)
				fallback := &recorder{}
				a, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
					TablePrefix: prefix, Fallback: fallback, Logger: slog.New(slog.DiscardHandler),
					MaxRetryDelay: 20 * time.Millisecond,
				})
				require.NoError(t, err)
				t.Cleanup(func() { a.Close() })

				holdBatch(t, a, o, tt.n)
				o.down.Store(false)
				waitFor(t, "the batch written", func() bool { return a.Pending() == 0 && a.AuditHealth() == nil })
				assert.Equal(t, batchRows(tt.n), e.auditRows(t, prefix), "each event once, in order, intact")
				assert.Zero(t, a.Lost())
				assert.Zero(t, fallback.len())
				require.NoError(t, a.Close())
			})
		}
	})
}

// TestAuditorBatchQueued: events queued faster than they are written are
// written in batches of whatever size the queue holds, all of them once,
// and in the order they were queued.
func TestAuditorBatchQueued(t *testing.T) {
	const n = 1000
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		a, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix, QueueSize: n, // never full: no event written out of turn
		})
		require.NoError(t, err)
		for i := range n {
			a.Audit(t.Context(), batchEvent(i))
		}
		require.NoError(t, a.Close())
		assert.Zero(t, a.Failures())
		assert.Equal(t, batchRows(n), e.auditRows(t, prefix))
	})
}

// TestAuditorBatchFailsWhole: when the database fails after a batch's
// first statement, nothing of the batch is written; the batch stays held,
// and the next retry writes all of it, once.
func TestAuditorBatchFailsWhole(t *testing.T) {
	const n = 3*auditChunk + 8 // four statements
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		db, o := e.openFlaky(t)
		a, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), MaxRetryDelay: 20 * time.Millisecond,
		})
		require.NoError(t, err)
		t.Cleanup(func() { a.Close() })

		holdBatch(t, a, o, n)
		// A retry that took its events while the batch was still being
		// held could write them once the database is back; wait until
		// one has been refused since, so the next takes the whole batch.
		refused := o.refused.Load()
		waitFor(t, "a retry refused with the batch held", func() bool { return o.refused.Load() > refused })
		o.downAfter.Store(1)
		o.down.Store(false)
		waitFor(t, "the database failing after the first statement of the batch", o.down.Load)
		assert.Zero(t, e.countAuditRows(t, prefix), "nothing of the batch written")
		assert.Equal(t, n, a.Pending(), "the batch still held")
		assert.ErrorIs(t, a.AuditHealth(), errOutage)

		o.downAfter.Store(0)
		o.down.Store(false)
		waitFor(t, "the batch written", func() bool { return a.Pending() == 0 && a.AuditHealth() == nil })
		require.NoError(t, a.Close())
		assert.Equal(t, batchRows(n), e.auditRows(t, prefix), "each event once, in order")
		assert.Zero(t, a.Lost())
	})
}

// BenchmarkAuditorBatch measures writing audit events in batches through
// an Auditor with a queue of 256, on each database: each iteration queues
// 256 events and closes the Auditor, which writes what the queue holds,
// in a few transactions of up to 256 rows. ns/event is the time per
// event. The events name 4 clients or 256: on SQLite each client's rows
// go to their own pages of the client index, so more clients dirty more
// pages per row. SQLite runs with synchronous=NORMAL, as the example
// server does, so that a commit costs no fsync.
func BenchmarkAuditorBatch(b *testing.B) {
	const n = 256
	for _, be := range backends() {
		for _, clients := range []int{4, 256} {
			b.Run(fmt.Sprintf("%s/clients=%d", be.name, clients), func(b *testing.B) {
				e := &env{backend: be, dsn: be.dsn(b)}
				if e.dialect == sqlstore.SQLite {
					e.dsn += "&_pragma=synchronous(NORMAL)"
				}
				e.db = e.open(b)
				prefix := e.newPrefix(b)
				e.newStore(b, sqlstore.Config{TablePrefix: prefix})
				events := make([]m2mauth.AuditEvent, n)
				for i := range events {
					events[i] = batchEvent(i)
					events[i].ClientID = fmt.Sprintf("svc-%d", i%clients)
				}
				logger := slog.New(slog.DiscardHandler)
				iterations := 0
				b.ReportAllocs()
				for b.Loop() {
					a, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{
						TablePrefix: prefix, QueueSize: n, Logger: logger,
					})
					if err != nil {
						b.Fatal(err)
					}
					for _, ev := range events {
						a.Audit(b.Context(), ev)
					}
					if err := a.Close(); err != nil {
						b.Fatal(err)
					}
					if a.Failures() != 0 {
						b.Fatalf("%d events not written on the first try", a.Failures())
					}
					iterations++
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(iterations*n), "ns/event")
				var rows int
				require.NoError(b, e.db.QueryRowContext(b.Context(), `SELECT COUNT(*) FROM `+prefix+`audit_events`).Scan(&rows))
				require.Equal(b, iterations*n, rows, "every event written once")
			})
		}
	}
}

// TestAuditorBatchDelay: with a BatchDelay the writer waits for events
// that follow the first one, and writes them in one transaction; without
// one it writes the first at once. Close does not wait the delay out,
// and loses nothing.
func TestAuditorBatchDelay(t *testing.T) {
	const n = 10
	forEachBackend(t, func(t *testing.T, e *env) {
		tests := []struct {
			name       string
			delay      time.Duration
			wantBegins int64
		}{
			{"no delay", 0, 2},             // the first event alone, then the rest
			{"delay", 10 * time.Second, 1}, // all of them, once Close stops the wait
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				prefix := e.newPrefix(t)
				e.newStore(t, sqlstore.Config{TablePrefix: prefix})
				counter := &tally{}
				cdb := sql.OpenDB(&countingConnector{drv: e.db.Driver(), dsn: e.dsn, n: counter})
				t.Cleanup(func() { cdb.Close() })
				a, err := sqlstore.NewAuditor(cdb, e.dialect, sqlstore.AuditorConfig{
					TablePrefix: prefix, QueueSize: 64, BatchDelay: tt.delay,
				})
				require.NoError(t, err)
				a.Audit(t.Context(), batchEvent(0))
				if tt.delay == 0 {
					waitFor(t, "the first event written", func() bool { return e.countAuditRows(t, prefix) == 1 })
				} else {
					time.Sleep(20 * time.Millisecond) // the writer is waiting for more
					require.Zero(t, e.countAuditRows(t, prefix), "nothing written during the delay")
				}
				for i := 1; i < n; i++ {
					a.Audit(t.Context(), batchEvent(i))
				}
				start := time.Now()
				require.NoError(t, a.Close())
				if tt.delay > 0 {
					assert.Less(t, time.Since(start), tt.delay/2, "Close does not wait the delay out")
				}
				assert.Equal(t, batchRows(n), e.auditRows(t, prefix))
				if tt.delay == 0 {
					assert.GreaterOrEqual(t, counter.snapshot().begins, tt.wantBegins, "transactions")
				} else {
					assert.Equal(t, tt.wantBegins, counter.snapshot().begins, "transactions")
				}
			})
		}
	})
}

// TestAuditorBatchDelayConfig: a negative BatchDelay, or one without a
// queue, is refused.
func TestAuditorBatchDelayConfig(t *testing.T) {
	e := sqliteEnv(t)
	for _, cfg := range []sqlstore.AuditorConfig{
		{QueueSize: 8, BatchDelay: -time.Millisecond},
		{BatchDelay: time.Millisecond},
	} {
		_, err := sqlstore.NewAuditor(e.db, e.dialect, cfg)
		require.Error(t, err, "%+v", cfg)
	}
}

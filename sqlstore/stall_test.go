package sqlstore_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// stallProxy forwards TCP connections to a database server and, while
// armed, holds every packet from the client that carries hold (a
// statement's text), as a server that stalls just then would, until it
// is disarmed. With cut set, it passes such a packet on instead, and
// then drops the connection without passing the server's answer back,
// as a network that fails just then would.
type stallProxy struct {
	ln      net.Listener
	target  string
	hold    []byte
	armed   atomic.Bool
	cut     atomic.Bool
	mu      sync.Mutex
	release chan struct{} // closed by disarm
	wg      sync.WaitGroup
}

func newStallProxy(t *testing.T, target string, hold []byte) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &stallProxy{ln: ln, target: target, hold: hold, release: make(chan struct{})}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		p.disarm()
		ln.Close()
		p.wg.Wait()
	})
	return p
}

func (p *stallProxy) arm() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.release = make(chan struct{})
	p.armed.Store(true)
}

func (p *stallProxy) disarm() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.armed.Swap(false) {
		close(p.release)
	}
}

func (p *stallProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		var cut atomic.Bool // the server's answers go nowhere
		p.wg.Go(func() { p.answer(c, s, &cut); c.Close() })
		p.wg.Go(func() { p.forward(s, c, &cut); s.Close(); c.Close() })
	}
}

// answer copies what the server sends back, until cut.
func (p *stallProxy) answer(dst, src net.Conn, cut *atomic.Bool) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if cut.Load() {
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// forward copies what the client sends, holding what carries p.hold
// while armed, or passing it on and cutting the connection.
func (p *stallProxy) forward(dst, src net.Conn, cut *atomic.Bool) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if p.armed.Load() && p.cut.Load() && bytes.Contains(buf[:n], p.hold) {
				p.disarm()
				cut.Store(true)
				dst.Write(buf[:n])
				// Time for the server to act on it before the
				// connection, closed, tells it the client is gone.
				time.Sleep(200 * time.Millisecond)
				return
			}
			if p.armed.Load() && bytes.Contains(buf[:n], p.hold) {
				p.mu.Lock()
				release := p.release
				p.mu.Unlock()
				<-release
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// forStallingCommits runs f as a subtest for the MySQL backend, when it
// is set, with its environment and a pool whose connections go through
// a proxy that holds their COMMITs while armed.
func forStallingCommits(t *testing.T, f func(t *testing.T, e *env, db *sql.DB, proxy *stallProxy)) {
	forProxiedCommits(t, []sqlstore.Dialect{sqlstore.MySQL}, f)
}

// forProxiedCommits runs f as a subtest for each backend of dialects
// (PostgreSQL, MySQL or both) that is set, with its environment and a
// pool whose connections go through a proxy that stops at their COMMITs
// while armed.
func forProxiedCommits(t *testing.T, dialects []sqlstore.Dialect, f func(t *testing.T, e *env, db *sql.DB, proxy *stallProxy)) {
	for _, b := range backends() {
		if !slices.Contains(dialects, b.dialect) {
			continue
		}
		t.Run(b.name, func(t *testing.T) {
			e := &env{backend: b, dsn: b.dsn(t)}
			e.db = e.open(t)
			var dsn string
			var proxy *stallProxy
			switch b.dialect {
			case sqlstore.MySQL:
				cfg, err := mysql.ParseDSN(e.dsn)
				require.NoError(t, err)
				proxy = newStallProxy(t, cfg.Addr, []byte("\x03COMMIT"))
				cfg.Addr = proxy.ln.Addr().String()
				// Without a bound of ours, a stalled commit would end
				// here.
				cfg.ReadTimeout = 20 * time.Second
				dsn = cfg.FormatDSN()
			case sqlstore.Postgres:
				u, err := url.Parse(e.dsn)
				require.NoError(t, err)
				// pgx commits with a simple query, its text in lower case.
				proxy = newStallProxy(t, u.Host, []byte("commit\x00"))
				u.Host = proxy.ln.Addr().String()
				dsn = u.String()
			}
			db, err := sql.Open(b.driver, dsn)
			require.NoError(t, err)
			t.Cleanup(func() { db.Close() })
			f(t, e, db, proxy)
		})
	}
}

// TestMySQLStalledCommit: the MySQL driver commits without a context, so
// a server that stalls on COMMIT held every transaction until the
// connection's read timeout (a minute in the example), past the
// caller's deadline: a token request's StoreTimeout, an audit write's
// Timeout. Each transaction must end with its context.
func TestMySQLStalledCommit(t *testing.T) {
	forStallingCommits(t, func(t *testing.T, e *env, db *sql.DB, proxy *stallProxy) {
		prefix := e.newPrefix(t)
		var mu sync.Mutex
		var audited []m2mauth.AuditEventType
		store, err := sqlstore.New(db, sqlstore.MySQL, sqlstore.Config{
			TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler),
			Auditor: m2mauth.AuditorFunc(func(_ context.Context, ev m2mauth.AuditEvent) {
				mu.Lock()
				defer mu.Unlock()
				audited = append(audited, ev.Type)
			}),
		})
		require.NoError(t, err)
		require.NoError(t, store.Migrate(t.Context()))
		t.Cleanup(func() { store.Close() })
		require.NoError(t, store.CreateClient(t.Context(), clientWithSecrets(t, "stalled", 1)))
		// Queued events are written in transactions (one event
		// alone is not).
		auditor, err := sqlstore.NewAuditor(db, sqlstore.MySQL, sqlstore.AuditorConfig{
			TablePrefix: prefix, QueueSize: 16, Timeout: 300 * time.Millisecond, CloseTimeout: time.Second,
			Logger: slog.New(slog.DiscardHandler),
		})
		require.NoError(t, err)
		limiter, err := sqlstore.NewLimiter(db, sqlstore.MySQL, sqlstore.LimiterConfig{TablePrefix: prefix})
		require.NoError(t, err)
		t.Cleanup(func() { limiter.Close() })

		const deadline = 300 * time.Millisecond
		// Well under the read timeout, and far above the deadline,
		// for a loaded machine.
		const bound = 10 * time.Second
		steps := []struct {
			name string
			run  func(ctx context.Context) error
		}{
			{"Store.SetDisabled", func(ctx context.Context) error { return store.SetDisabled(ctx, "stalled", true) }},
			{"Limiter.Reserve", func(ctx context.Context) error {
				_, err := limiter.Reserve(ctx, "stalled", "192.0.2.7")
				return err
			}},
			{"Auditor", func(context.Context) error {
				// The write fails once its Timeout has passed, and
				// the auditor says so (RequireAudit then refuses
				// tokens).
				auditor.Audit(t.Context(), m2mauth.AuditEvent{Time: time.Now(), Type: m2mauth.EventTokenIssued, ClientID: "stalled"})
				for start := time.Now(); time.Since(start) < bound; time.Sleep(10 * time.Millisecond) {
					if err := auditor.AuditHealth(); err != nil {
						return err
					}
				}
				return nil
			}},
		}
		for _, st := range steps {
			t.Run(st.name, func(t *testing.T) {
				proxy.arm()
				defer proxy.disarm()
				ctx, cancel := context.WithTimeout(t.Context(), deadline)
				defer cancel()
				start := time.Now()
				err := st.run(ctx)
				took := time.Since(start)
				require.Error(t, err, "a commit that never answered succeeded")
				assert.True(t, errors.Is(err, context.DeadlineExceeded) || st.name == "Auditor", "%v", err)
				assert.Less(t, took, bound, "held past its deadline: %v", err)
			})
		}
		start := time.Now()
		auditor.Close()
		assert.Less(t, time.Since(start), bound, "Close")

		// The server answered the held COMMIT once released: the
		// change its caller was told had failed was made, and is
		// audited after all.
		require.Eventually(t, func() bool {
			c, err := store.Client(t.Context(), "stalled")
			return err == nil && c.Disabled
		}, bound, 10*time.Millisecond)
		require.Eventually(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return slices.Contains(audited, m2mauth.EventClientDisabled)
		}, bound, 10*time.Millisecond, "the change that committed late is not audited")
	})
}

// TestAuditorStalledCommitWrittenOnce: on MySQL, a batch of audit events
// whose COMMIT outlasts the Auditor's Timeout is in doubt, not failed:
// the commit goes on and may succeed. The events count as pending, the
// Auditor reports itself unhealthy, and nothing writes them again (nor
// spins trying) until the commit's outcome arrives; when it succeeds,
// each event is in the table once, and the Auditor is healthy again
// without another event.
func TestAuditorStalledCommitWrittenOnce(t *testing.T) {
	forStallingCommits(t, func(t *testing.T, e *env, db *sql.DB, proxy *stallProxy) {
		prefix := e.newPrefix(t)
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})

		auditor, err := sqlstore.NewAuditor(db, sqlstore.MySQL, sqlstore.AuditorConfig{
			TablePrefix: prefix, QueueSize: 16, Timeout: 300 * time.Millisecond,
			MaxRetryDelay: 50 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
		})
		require.NoError(t, err)
		t.Cleanup(func() { auditor.Close() })

		proxy.arm()
		auditor.Audit(t.Context(), m2mauth.AuditEvent{Type: m2mauth.EventTokenIssued, ClientID: "c", JTI: "jti-stalled"})
		require.Eventually(t, func() bool { return auditor.AuditHealth() != nil }, 10*time.Second, 5*time.Millisecond)
		// Many retry delays pass with the commit in doubt.
		before := cpuTime(t)
		time.Sleep(time.Second)
		assert.Less(t, cpuTime(t)-before, 300*time.Millisecond, "CPU time while in doubt")
		assert.Equal(t, 1, auditor.Pending(), "in doubt")
		assert.Error(t, auditor.AuditHealth())
		proxy.disarm()
		require.Eventually(t, func() bool { return auditor.Pending() == 0 }, 10*time.Second, 5*time.Millisecond)
		var n int
		require.NoError(t, e.db.QueryRow("SELECT COUNT(*) FROM "+prefix+"audit_events WHERE jti = ?", "jti-stalled").Scan(&n))
		assert.Equal(t, 1, n, "rows of the event")
		require.Eventually(t, func() bool { return auditor.AuditHealth() == nil }, 10*time.Second, 5*time.Millisecond)
	})
}

// TestAuditorCommitAnswerLost: a commit that succeeds but whose answer
// the connection loses looks failed to the Auditor, which holds the
// batch, or leaves the spill file's lines in place, and writes them
// again. Each event is in the table once: an event the Auditor received,
// and a spill file's line without a key (written by a release before
// keys) or with a damaged one, which the Auditor reads again.
func TestAuditorCommitAnswerLost(t *testing.T) {
	const spilled = `{"event_time":"2026-01-02T03:04:05Z","event":"token_issued","client_id":"c","jti":"jti-spilled-1"}
{"event_time":"2026-01-02T03:04:05Z","event":"token_issued","client_id":"c","jti":"jti-spilled-1"}
{"event_time":"2026-01-02T03:04:06Z","event_key":"0123","event":"token_issued","client_id":"c","jti":"jti-spilled-2"}
{"event_time":"2026-01-02T03:04:07Z","event_key":"zz0102030405060708090a0b0c0d0e0f","event":"token_issued","client_id":"c","jti":"jti-spilled-3"}
`
	tests := []struct {
		name  string
		spill string         // the spill file an earlier process left
		audit bool           // an event given to the Auditor
		want  map[string]int // rows by jti
	}{
		{"an event received", "", true, map[string]int{"jti-answer-lost": 1}},
		{"spilled lines without a key of theirs", spilled, false,
			map[string]int{"jti-spilled-1": 2, "jti-spilled-2": 1, "jti-spilled-3": 1}},
	}
	forProxiedCommits(t, []sqlstore.Dialect{sqlstore.Postgres, sqlstore.MySQL}, func(t *testing.T, e *env, db *sql.DB, proxy *stallProxy) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				prefix := e.newPrefix(t)
				e.newStore(t, sqlstore.Config{TablePrefix: prefix})
				cfg := sqlstore.AuditorConfig{
					TablePrefix: prefix, QueueSize: 16, MaxRetryDelay: 50 * time.Millisecond,
					Logger: slog.New(slog.DiscardHandler),
				}
				if tt.spill != "" {
					cfg.SpillFile = filepath.Join(t.TempDir(), "audit.spill")
					require.NoError(t, os.WriteFile(cfg.SpillFile, []byte(tt.spill), 0o600))
				}
				proxy.cut.Store(true)
				proxy.arm()
				auditor, err := sqlstore.NewAuditor(db, e.dialect, cfg)
				require.NoError(t, err)
				t.Cleanup(func() { auditor.Close() })
				if tt.audit {
					auditor.Audit(t.Context(), m2mauth.AuditEvent{Type: m2mauth.EventTokenIssued, ClientID: "c", JTI: "jti-answer-lost"})
				}
				require.Eventually(t, func() bool { return !proxy.armed.Load() && auditor.Pending() == 0 },
					10*time.Second, 5*time.Millisecond, "the commit cut, then the retry written")
				require.NoError(t, auditor.Close())
				assert.Zero(t, auditor.Lost())
				got := map[string]int{}
				for _, r := range e.auditRows(t, prefix) {
					got[r.JTI]++
				}
				assert.Equal(t, tt.want, got, "rows by jti")
			})
		}
	})
}

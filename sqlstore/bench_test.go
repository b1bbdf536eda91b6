package sqlstore_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// BenchmarkTokenHandlerSQL measures one client credentials token request
// through the token handler, in process, with the client read from each
// database (one prepared query per request), with the default in-memory
// limiter and with the database limiter (a reservation and its release,
// two transactions more). Compare with BenchmarkTokenHandler of the
// m2mauth package, the same request over an in-memory store.
func BenchmarkTokenHandlerSQL(b *testing.B) {
	for _, be := range backends() {
		b.Run(be.name, func(b *testing.B) {
			e := &env{backend: be, dsn: be.dsn(b)}
			e.db = e.open(b)
			prefix := e.newPrefix(b)
			s := e.newStore(b, sqlstore.Config{TablePrefix: prefix})
			plain, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
			require.NoError(b, err)
			require.NoError(b, s.CreateClient(b.Context(), &m2mauth.Client{
				ID:      "bench-client",
				Secrets: []m2mauth.Secret{sec},
				Grants:  map[string]m2mauth.Scopes{testAudience: {"read", "write"}},
			}))
			auth := basicAuth("bench-client", plain)
			for _, name := range []string{"InMemoryLimiter", "DatabaseLimiter"} {
				b.Run(name, func(b *testing.B) {
					cfg := m2mauth.TokenHandlerConfig{Auditor: m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {})}
					if name == "DatabaseLimiter" {
						l, err := sqlstore.NewLimiter(e.db, e.dialect, sqlstore.LimiterConfig{TablePrefix: prefix})
						require.NoError(b, err)
						b.Cleanup(func() { l.Close() })
						cfg.Limiter = l
					}
					h := newTokenHandler(b, s, cfg)
					b.ReportAllocs()
					for b.Loop() {
						r := httptest.NewRequest(http.MethodPost, testIssuer+"/oauth/token", strings.NewReader("grant_type=client_credentials&scope=read"))
						r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
						r.Header.Set("Authorization", auth)
						w := httptest.NewRecorder()
						h.ServeHTTP(w, r)
						if w.Code != http.StatusOK {
							b.Fatalf("status %d: %s", w.Code, w.Body)
						}
					}
				})
			}
		})
	}
}

// BenchmarkClient measures Store.Client, the one prepared query of every
// token request, for a client with two secrets and two audiences, on
// each database; and Store.SharedClient, which the token handler calls,
// and which on SQLite returns the client kept without copying it.
func BenchmarkClient(b *testing.B) {
	for _, be := range backends() {
		b.Run(be.name, func(b *testing.B) {
			e := &env{backend: be, dsn: be.dsn(b)}
			e.db = e.open(b)
			s := e.newStore(b, sqlstore.Config{})
			var secrets []m2mauth.Secret
			for range 2 {
				_, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
				require.NoError(b, err)
				secrets = append(secrets, sec)
			}
			require.NoError(b, s.CreateClient(b.Context(), &m2mauth.Client{
				ID:      "bench-client",
				Secrets: secrets,
				Grants:  map[string]m2mauth.Scopes{testAudience: {"read", "write"}, "https://other.example.com": {"read"}},
			}))
			for _, get := range []struct {
				name string
				f    func(context.Context, string) (*m2mauth.Client, error)
			}{{"Client", s.Client}, {"SharedClient", s.SharedClient}} {
				b.Run(get.name, func(b *testing.B) {
					b.ReportAllocs()
					for b.Loop() {
						if _, err := get.f(b.Context(), "bench-client"); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		})
	}
}

// BenchmarkClientConcurrent measures Store.Client on SQLite with 32
// lookups of one kept client at once, as under a server's load: each
// reads the clients' stamp, and those that wait for the connection it is
// read on share a read that began after they arrived.
func BenchmarkClientConcurrent(b *testing.B) {
	e := sqliteEnv(b)
	s := e.newStore(b, sqlstore.Config{})
	require.NoError(b, s.CreateClient(b.Context(), clientWithSecrets(b, "bench-client", 2)))
	_, err := s.Client(b.Context(), "bench-client")
	require.NoError(b, err)
	b.ReportAllocs()
	b.SetParallelism(32 / runtime.GOMAXPROCS(0))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Client(b.Context(), "bench-client"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkClientAnalyzed measures Store.Client on SQLite over 1,000
// clients, looked up in turn, before and after ANALYZE: with statistics
// (sqlite_stat4) a statement whose parameter is compared with an indexed
// column is prepared again whenever the parameter changes, unless the
// query keeps the parameter out of the planner's sight. The Store keeps
// the clients it read, so from the second lookup of each client on it
// reads only the clients' stamp; TestClientQueryAnalyzed checks the plans
// of all three statements.
func BenchmarkClientAnalyzed(b *testing.B) {
	e := sqliteEnv(b)
	s := e.newStore(b, sqlstore.Config{})
	ids := make([]string, 1000)
	for i := range ids {
		_, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
		require.NoError(b, err)
		ids[i] = fmt.Sprintf("client-%04d", i)
		require.NoError(b, s.CreateClient(b.Context(), &m2mauth.Client{
			ID:      ids[i],
			Secrets: []m2mauth.Secret{sec},
			Grants:  map[string]m2mauth.Scopes{testAudience: {"read"}},
		}))
	}
	for _, analyzed := range []bool{false, true} {
		b.Run(fmt.Sprintf("analyzed=%t", analyzed), func(b *testing.B) {
			if analyzed {
				_, err := e.db.ExecContext(b.Context(), "ANALYZE")
				require.NoError(b, err)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := s.Client(b.Context(), ids[i%len(ids)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// TestClientQueryAnalyzed: after ANALYZE, SQLite still finds a client,
// its secrets, its grants and the clients' stamp by their indexes, in
// each statement Store.Client runs, and the client statements keep their
// parameter out of the planner's sight (a scalar subquery), so statistics
// cannot make them be prepared again whenever the client id changes.
func TestClientQueryAnalyzed(t *testing.T) {
	e := sqliteEnv(t)
	prefix := e.newPrefix(t)
	s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
	for i := range 200 {
		_, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
		require.NoError(t, err)
		require.NoError(t, s.CreateClient(t.Context(), &m2mauth.Client{
			ID: fmt.Sprintf("client-%04d", i), Secrets: []m2mauth.Secret{sec},
			Grants: map[string]m2mauth.Scopes{testAudience: {"read"}},
		}))
	}
	_, err := e.db.ExecContext(t.Context(), "ANALYZE")
	require.NoError(t, err)
	row, stamped, stamp := sqlstore.SQLiteClientQueries(s)
	for _, tt := range []struct {
		name     string
		query    string
		args     []any
		searches int
	}{
		{"row", row, []any{"client-0007"}, 3},
		{"stamped row", stamped, []any{"client-0007"}, 4},
		{"stamp", stamp, nil, 1},
	} {
		assert.NotContains(t, tt.query, "= ?", "%s: a parameter compared with a column directly", tt.name)
		plan := e.explain(t, tt.query, tt.args...)
		for _, table := range []string{"clients", "secrets", "grants", "client_stamp"} {
			assert.NotContains(t, plan, "SCAN "+prefix+table, "%s plan:\n%s", tt.name, plan)
		}
		assert.Equal(t, tt.searches, strings.Count(plan, "SEARCH "), "%s plan:\n%s", tt.name, plan)
	}
	c, err := s.Client(t.Context(), "client-0007")
	require.NoError(t, err)
	assert.Equal(t, "client-0007", c.ID)
}

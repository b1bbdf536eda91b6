package sqlstore_test

import (
	"context"
	"database/sql"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth/sqlstore"
)

// TestAuditorMySQLConnectionCharsets: healthy DSNs write the event; a connection
// whose client character set is not utf8mb4 (the text reaches the server
// as latin1, then is converted) writes it changed or not at all.
func TestAuditorMySQLConnectionCharsets(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		if e.dialect != sqlstore.MySQL {
			t.Skip("MySQL only")
		}
		for _, tc := range []struct {
			name    string
			params  map[string]string
			coll    string
			healthy bool
		}{
			{"driver default", nil, "", true},
			{"charset utf8mb4", map[string]string{"charset": "utf8mb4"}, "", true},
			{"charset utf8mb4,utf8 (raw DSN)", map[string]string{"raw": "charset=utf8mb4,utf8"}, "", true},
			{"collation utf8mb4_unicode_ci", nil, "utf8mb4_unicode_ci", true},
			{"collation utf8mb4_bin", nil, "utf8mb4_bin", true},
			{"character_set_client latin1", map[string]string{"character_set_client": "latin1"}, "", false},
			{"charset latin1", map[string]string{"charset": "latin1"}, "", false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx := t.Context()
				prefix := e.newPrefix(t)
				e.newStore(t, sqlstore.Config{TablePrefix: prefix})
				cfg, err := mysql.ParseDSN(e.dsn)
				require.NoError(t, err)
				if cfg.Params == nil {
					cfg.Params = map[string]string{}
				}
				raw := ""
				for k, v := range tc.params {
					if k == "raw" {
						raw = v
						continue
					}
					cfg.Params[k] = v
				}
				if tc.coll != "" {
					cfg.Collation = tc.coll
				}
				dsn := cfg.FormatDSN()
				if raw != "" {
					if strings.Contains(dsn, "?") {
						dsn += "&" + raw
					} else {
						dsn += "?" + raw
					}
				}
				db, err := sql.Open("mysql", dsn)
				require.NoError(t, err)
				t.Cleanup(func() { db.Close() })
				var cl, cn string
				require.NoError(t, db.QueryRowContext(ctx, "SELECT @@character_set_client, @@character_set_connection").Scan(&cl, &cn))
				t.Logf("client=%s connection=%s", cl, cn)

				fb := &recorder{}
				a, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
					TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), Fallback: fb,
					CloseTimeout: 200 * time.Millisecond,
				})
				require.NoError(t, err)
				ev := testEvent(1)
				ev.UserAgent = "curl/8 \U0001F600"
				ev.Reason = "caf\u00e9 \U0001F511"
				a.Audit(ctx, ev)
				require.NoError(t, a.Close())
				rows := e.auditRows(t, prefix)
				t.Logf("rows=%d failures=%d lost=%d", len(rows), a.Failures(), a.Lost())
				if tc.healthy {
					require.Len(t, rows, 1, "a healthy setup writes the event")
				}
				if len(rows) == 1 {
					assert.Equal(t, ev.UserAgent, rows[0].UserAgent, "the row's user agent is the event's, or the write fails visibly")
					assert.Equal(t, ev.Reason, rows[0].Reason)
				}
			})
		}
	})
}

// TestMigrateMySQLKeyedDuplicatesBigTable: version 8 on a table with
// the key column but not its index, whose 20,000 rows carry keys, each
// twice (or all distinct), removes the duplicates well within 10s.
func TestMigrateMySQLKeyedDuplicatesBigTable(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		if e.dialect != sqlstore.MySQL {
			t.Skip("MySQL's migration only")
		}
		for _, tc := range []struct {
			name string
			key  string
			want int
		}{
			{"each key twice", "UNHEX(MD5(n DIV 2))", 10000},
			{"all distinct", "UNHEX(MD5(n))", 20000},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx := t.Context()
				prefix := e.newPrefix(t)
				s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
				table := prefix + "audit_events"
				digits := "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)"
				for _, stmt := range []string{
					"ALTER TABLE " + table + " DROP INDEX " + prefix + "audit_events_key_idx",
					"DELETE FROM " + prefix + "schema_migrations WHERE version = 8",
					`INSERT INTO ` + table + ` (event_key, event_time, event_type, client_id, remote_ip, user_agent, audience, scope, jti, secret_id, error_code, reason)
SELECT ` + tc.key + `, n, 'token_issued', 'svc', '', '', '', '', CONCAT('jti-', n), '', '', ''
FROM (SELECT a.d + 10*b.d + 100*c.d + 1000*d.d + 10000*e.d AS n FROM ` + digits + ` a, ` + digits + ` b, ` + digits + ` c, ` + digits + ` d,
 (SELECT 0 d UNION ALL SELECT 1) e WHERE a.d + 10*b.d + 100*c.d + 1000*d.d + 10000*e.d < 20000) nums`,
				} {
					_, err := e.db.ExecContext(ctx, stmt)
					require.NoError(t, err, stmt)
				}
				start := time.Now()
				mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				require.NoError(t, s.Migrate(mctx))
				t.Logf("Migrate took %v", time.Since(start))
				assert.Equal(t, tc.want, e.countAuditRows(t, prefix))
			})
		}
	})
}

// TestAuditorMySQLColumnNotWritten: a column the Auditor does not write
// (added by the operator, ascii) changes no character the Auditor writes:
// the character set check lets it write.
func TestAuditorMySQLColumnNotWritten(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		if e.dialect != sqlstore.MySQL {
			t.Skip("MySQL only")
		}
		ctx := t.Context()
		prefix := e.newPrefix(t)
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		_, err := e.db.ExecContext(ctx, "ALTER TABLE "+prefix+"audit_events ADD COLUMN checked_by VARCHAR(32) CHARACTER SET ascii NULL")
		require.NoError(t, err)
		a, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), Fallback: &recorder{},
			CloseTimeout: 200 * time.Millisecond,
		})
		require.NoError(t, err)
		ev := testEvent(1)
		ev.UserAgent = "curl/8 \U0001F600"
		a.Audit(ctx, ev)
		require.NoError(t, a.Close())
		t.Logf("failures=%d lost=%d", a.Failures(), a.Lost())
		rows := e.auditRows(t, prefix)
		require.Len(t, rows, 1, "the event is written: every column the Auditor writes is utf8mb4")
		assert.Equal(t, ev.UserAgent, rows[0].UserAgent)
	})
}

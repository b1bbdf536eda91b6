package sqlstore_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth/sqlstore"
)

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
				s, prefix := keyColumnWithoutIndex(t, e)
				table := prefix + "audit_events"
				digits := "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)"
				for _, stmt := range []string{
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

// TestAuditorMySQLCharacterSets: the MySQL audit insert skips a key
// already there with INSERT IGNORE, which would also write a value that
// does not fit its column changed: a character outside the BMP (an emoji
// in a User-Agent) over a connection or into a column that cannot carry
// it would become '?'. The Auditor writes the event, as it is, where the
// connection and the columns it writes are utf8mb4, and refuses to write
// elsewhere, visibly: the event is counted failed and lost (no spill file
// here), not written changed.
func TestAuditorMySQLCharacterSets(t *testing.T) {
	tests := []struct {
		name    string
		params  map[string]string // of the DSN
		coll    string            // the DSN's collation
		raw     string            // appended to the DSN as it is
		alter   string            // the audit table altered so: %s is its name
		healthy bool
	}{
		{name: "driver default", healthy: true},
		{name: "charset utf8mb4", params: map[string]string{"charset": "utf8mb4"}, healthy: true},
		{name: "charset utf8mb4,utf8", raw: "charset=utf8mb4,utf8", healthy: true},
		{name: "collation utf8mb4_unicode_ci", coll: "utf8mb4_unicode_ci", healthy: true},
		{name: "collation utf8mb4_bin", coll: "utf8mb4_bin", healthy: true},
		{name: "a column the Auditor does not write, ascii", alter: "ALTER TABLE %s ADD COLUMN checked_by VARCHAR(32) CHARACTER SET ascii NULL", healthy: true},
		{name: "charset utf8", params: map[string]string{"charset": "utf8"}},
		{name: "charset latin1", params: map[string]string{"charset": "latin1"}},
		{name: "character_set_client latin1", params: map[string]string{"character_set_client": "latin1"}},
		{name: "a utf8mb3 table", alter: "ALTER TABLE %s CONVERT TO CHARACTER SET utf8mb3 COLLATE utf8mb3_bin"},
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		if e.dialect != sqlstore.MySQL {
			t.Skip("MySQL only")
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ctx := t.Context()
				prefix := e.newPrefix(t)
				e.newStore(t, sqlstore.Config{TablePrefix: prefix})
				if tt.alter != "" {
					_, err := e.db.ExecContext(ctx, fmt.Sprintf(tt.alter, prefix+"audit_events"))
					require.NoError(t, err)
				}
				cfg, err := mysql.ParseDSN(e.dsn)
				require.NoError(t, err)
				if cfg.Params == nil {
					cfg.Params = map[string]string{}
				}
				for k, v := range tt.params {
					cfg.Params[k] = v
				}
				if _, ok := tt.params["charset"]; ok {
					cfg.Collation = ""
				}
				if tt.coll != "" {
					cfg.Collation = tt.coll
				}
				dsn := cfg.FormatDSN()
				if tt.raw != "" {
					sep := "?"
					if strings.Contains(dsn, "?") {
						sep = "&"
					}
					dsn += sep + tt.raw
				}
				db, err := sql.Open("mysql", dsn)
				require.NoError(t, err)
				t.Cleanup(func() { db.Close() })

				a, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
					TablePrefix: prefix, Logger: slog.New(slog.DiscardHandler), Fallback: &recorder{},
					CloseTimeout: 200 * time.Millisecond,
				})
				require.NoError(t, err)
				ev := testEvent(1)
				ev.UserAgent = "curl/8 \U0001F600"
				ev.Reason = "caf\u00e9 \U0001F511"
				a.Audit(ctx, ev)
				require.NoError(t, a.Close())
				rows := e.auditRows(t, prefix)
				if tt.healthy {
					require.Len(t, rows, 1, "written")
					assert.Equal(t, ev.UserAgent, rows[0].UserAgent)
					assert.Equal(t, ev.Reason, rows[0].Reason)
					assert.Zero(t, a.Failures())
					return
				}
				assert.Empty(t, rows, "nothing written changed")
				assert.EqualValues(t, 1, a.Failures())
				assert.EqualValues(t, 1, a.Lost())
			})
		}
	})
}

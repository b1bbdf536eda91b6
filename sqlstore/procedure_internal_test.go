package sqlstore

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestGrantClientProcedure holds MySQL's procedure limit_grant_client, of
// migration 7, to the Limiter's own statements: its UPDATE is
// limitFastGrant and its SELECT is the kind-3 row and client, each with
// its parameters named as the CALL of limitGrantClient passes them.
func TestGrantClientProcedure(t *testing.T) {
	q := mysqlQueries(func(s string) string { return strings.ReplaceAll(s, "{p}", "x_") })
	migrations, err := loadMigrations(MySQL, "x_")
	require.NoError(t, err)
	var body string
	for _, m := range migrations {
		for _, s := range m.statements {
			if strings.HasPrefix(s, "CREATE PROCEDURE x_limit_grant_client(") {
				require.Empty(t, body, "one procedure")
				require.Equal(t, int64(7), m.version)
				body = s
			}
		}
	}
	require.NotEmpty(t, body)

	// The CALL passes the values at grantClientArgs in the order of the
	// procedure's parameters; every value differs from the others here.
	l := &Limiter{client: bucketLimits{every: 7, burst: 3, slack: 14, lease: 23}, knownWindow: 1000}
	all := append(l.grantArgs("cid", "ip")(1_000_000), "cid", "cid", "cid")
	params := regexp.MustCompile(`IN (p_[a-z]+) `).FindAllStringSubmatch(body[:strings.Index(body, "BEGIN")], -1)
	require.Len(t, params, len(q.grantClientArgs))
	require.Equal(t, len(q.grantClientArgs), strings.Count(q.limitGrantClient, "?"))
	name := make(map[any]string)
	for i, j := range q.grantClientArgs {
		_, dup := name[all[j]]
		require.False(t, dup, "argument %d repeats a value", j)
		name[all[j]] = params[i][1]
	}
	named := func(stmt string, args []any) string {
		parts := strings.Split(stmt, "?")
		require.Len(t, parts, len(args)+1)
		var b strings.Builder
		for i, a := range args {
			n, ok := name[a]
			require.True(t, ok, "value of argument %d is not a parameter", i)
			b.WriteString(parts[i] + n)
		}
		return b.String() + parts[len(args)]
	}
	space := regexp.MustCompile(`\s+`)
	norm := func(s string) string { return space.ReplaceAllString(strings.TrimSpace(s), " ") }
	update := named(q.limitFastGrant, all[:17])
	client := named(q.client, all[17:])
	require.Contains(t, norm(body), norm(update)+"; SET granted = ROW_COUNT(); SELECT 3 AS kind,")
	require.True(t, strings.HasSuffix(norm(body), "UNION ALL "+norm(client)+"; END"), "the procedure ends with client")
}

// TestSplitStatements splits migration files into statements: at a ";"
// ending a line, and a CREATE PROCEDURE at its "END;" only.
func TestSplitStatements(t *testing.T) {
	tests := []struct {
		name, src string
		want      []string
		err       bool
	}{
		{"statements", "-- comment\nCREATE TABLE a (x INT);\n\nINSERT INTO a\n  VALUES (1);\n", []string{"CREATE TABLE a (x INT)", "INSERT INTO a\n  VALUES (1)"}, false},
		{"only comments", "-- nothing here\n", nil, false},
		{"procedure", "DROP PROCEDURE IF EXISTS p;\nCREATE PROCEDURE p()\nBEGIN\n  UPDATE a SET x = 1;\n  SELECT x FROM a;\nEND;\nSELECT 1;\n",
			[]string{"DROP PROCEDURE IF EXISTS p", "CREATE PROCEDURE p()\nBEGIN\n  UPDATE a SET x = 1;\n  SELECT x FROM a;\nEND", "SELECT 1"}, false},
		{"unterminated", "SELECT 1\n", nil, true},
		{"procedure without END", "CREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\n", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := splitStatements(tt.src)
			if tt.err {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

// TestNoProcedure tells MySQL's refusals of a CALL that the Limiter
// answers by sending its two statements from every other error.
func TestNoProcedure(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("Error 1305 (42000): PROCEDURE test.x_limit_grant_client does not exist"), true},
		{errors.New("Error 1370 (42000): execute command denied to user 'app'@'%' for routine 'test.x_limit_grant_client'"), true},
		{errors.New("Error 1213 (40001): Deadlock found when trying to get lock; try restarting transaction"), false},
		{errors.New("driver: bad connection"), false},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, noProcedure(tt.err), "%v", tt.err)
	}
}

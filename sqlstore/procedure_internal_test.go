package sqlstore

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestGrantClientParams holds the names of the procedure's parameters to
// the arguments grantArgs gives limitFastGrant: where two arguments share
// a name they are one value, and where names differ, so do values (with
// limits under which every value differs).
func TestGrantClientParams(t *testing.T) {
	l := &Limiter{client: bucketLimits{every: 7, burst: 3, slack: 14, lease: 23}, knownWindow: 1000}
	args := l.grantArgs("cid", "ip")(1_000_000)
	require.Len(t, grantParams, len(args))
	q := mysqlQueries(func(s string) string { return strings.ReplaceAll(s, "{p}", "x_") })
	require.Equal(t, len(args), strings.Count(q.limitFastGrant, "?"))
	for i := range args {
		for j := range args {
			require.Equal(t, grantParams[i] == grantParams[j], args[i] == args[j], "arguments %d and %d", i, j)
		}
	}
	require.Equal(t, len(grantClientArgs), strings.Count(q.limitGrantClient, "?"))
	require.IsIncreasing(t, grantClientArgs, "grantReading picks them in place")
	for _, name := range grantParams {
		require.Contains(t, q.grantClientRoutine, "IN "+name+" ")
	}
	require.Regexp(t, `^CALL x_limit_grant_client_[0-9a-f]{8}\(`, q.limitGrantClient)
	name := strings.TrimPrefix(q.limitGrantClient[:strings.Index(q.limitGrantClient, "(")], "CALL ")
	require.True(t, strings.HasPrefix(q.grantClientRoutine, "CREATE PROCEDURE "+name+"("))
	long := mysqlQueries(func(s string) string { return strings.ReplaceAll(s, "{p}", strings.Repeat("y", maxPrefixLen)) })
	name = strings.TrimPrefix(long.limitGrantClient[:strings.Index(long.limitGrantClient, "(")], "CALL ")
	require.LessOrEqual(t, len(name), 64, "MySQL's longest identifier")
	other := mysqlQueries(func(s string) string { return strings.ReplaceAll(s, "{p}", "y_") })
	require.NotEqual(t, q.limitGrantClient[len("CALL x_"):], other.limitGrantClient[len("CALL y_"):],
		"the name follows the text, tables included")
}

// TestSplitStatements splits migration files into statements at each ";"
// that ends a line.
func TestSplitStatements(t *testing.T) {
	tests := []struct {
		name, src string
		want      []string
		err       bool
	}{
		{"statements", "-- comment\nCREATE TABLE a (x INT);\n\nINSERT INTO a\n  VALUES (1);\n", []string{"CREATE TABLE a (x INT)", "INSERT INTO a\n  VALUES (1)"}, false},
		{"only comments", "-- nothing here\n", nil, false},
		{"unterminated", "SELECT 1\n", nil, true},
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

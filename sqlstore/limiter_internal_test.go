package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type sqlStateError string

func (e sqlStateError) Error() string    { return "ERROR: something (SQLSTATE " + string(e) + ")" }
func (e sqlStateError) SQLState() string { return string(e) }

// TestTxConflict tells the errors of a transaction rolled back to break a
// deadlock, or for a serialization failure, from every other error.
func TestTxConflict(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{sqlStateError("40P01"), true}, // PostgreSQL deadlock_detected
		{sqlStateError("40001"), true}, // serialization_failure
		{fmt.Errorf("sqlstore: rate limit release: %w", sqlStateError("40P01")), true},
		{sqlStateError("23505"), false}, // unique_violation
		{errors.New("Error 1213 (40001): Deadlock found when trying to get lock; try restarting transaction"), true},
		{errors.New("Error 1205 (HY000): Lock wait timeout exceeded; try restarting transaction"), false},
		{errors.New("database is locked"), false},
		{context.DeadlineExceeded, false},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, txConflict(tt.err), "%v", tt.err)
	}
}

// TestRetryConflicts runs a transaction again while it is a deadlock's
// victim, up to a bound, and never for another error or past its context.
func TestRetryConflicts(t *testing.T) {
	deadlock := errors.New("Error 1213 (40001): Deadlock found when trying to get lock; try restarting transaction")
	failing := func(times int, err error) (func() error, *int) {
		n := 0
		return func() error {
			n++
			if n <= times {
				return err
			}
			return nil
		}, &n
	}
	f, n := failing(3, deadlock)
	require.NoError(t, retryConflicts(t.Context(), f))
	require.Equal(t, 4, *n, "three victims, then committed")

	f, n = failing(100, deadlock)
	require.ErrorIs(t, retryConflicts(t.Context(), f), deadlock)
	require.Equal(t, maxConflictRetries+1, *n, "bounded")

	other := errors.New("connection refused")
	f, n = failing(1, other)
	require.ErrorIs(t, retryConflicts(t.Context(), f), other)
	require.Equal(t, 1, *n, "other errors are not retried")

	ctx, cancel := context.WithTimeout(t.Context(), time.Millisecond)
	defer cancel()
	f, _ = failing(100, deadlock)
	err := retryConflicts(ctx, f)
	require.ErrorIs(t, err, deadlock)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

package sqlstore

import (
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// TestSpillLockFollowsThePath: an Auditor B that opens the spill file
// just as the Auditor A holding it closes it (and so removes it) must
// not end up holding a lock on the removed file. Else a third, C, would
// create and lock a new file at the path, and B's own Close would remove
// C's file with C's events in it.
func TestSpillLockFollowsThePath(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no advisory file locks on Windows")
	}
	path := filepath.Join(t.TempDir(), "audit.spill")
	a, err := openSpill(path, 1<<20)
	require.NoError(t, err)

	// B opens the file A holds, and A closes (and removes) it before B
	// locks.
	spillOpened = func() {
		spillOpened = nil
		require.NoError(t, a.close())
	}
	t.Cleanup(func() { spillOpened = nil })
	b, err := openSpill(path, 1<<20)
	require.NoError(t, err)
	t.Cleanup(func() { b.close() })

	// C comes after: B holds the file at the path, so C has none.
	_, err = openSpill(path, 1<<20)
	require.ErrorIs(t, err, errSpillInUse)

	// B's events are in the file at the path, for the next process.
	_, err = b.append([]record{{AuditEvent: m2mauth.AuditEvent{Time: time.Now(), Type: m2mauth.EventTokenIssued, ClientID: "b"}}})
	require.NoError(t, err)
	assert.FileExists(t, path)
	require.NoError(t, b.f.Sync())
	assert.Equal(t, 1, b.pending())
}

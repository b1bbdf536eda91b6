package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"

	"github.com/m2mauth/m2mauth"
)

// TestAuditorHeldAfterClose: events held once Close has taken the held
// ones (a commit in doubt that fails just then) are never left in memory,
// where nothing would write them: they go to the spill file while it is
// open, and to the fallback auditor, counted lost, once it is not.
func TestAuditorHeldAfterClose(t *testing.T) {
	db, err := sql.Open("sqlite", "file::memory:")
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	var fellBack []m2mauth.AuditEvent
	a, err := NewAuditor(db, SQLite, AuditorConfig{
		Logger:    slog.New(slog.DiscardHandler),
		SpillFile: filepath.Join(t.TempDir(), "audit.spill"),
		Fallback:  m2mauth.AuditorFunc(func(_ context.Context, e m2mauth.AuditEvent) { fellBack = append(fellBack, e) }),
	})
	require.NoError(t, err)
	require.NoError(t, a.Close())
	a.hold(t.Context(), errors.New("commit failed"), record{AuditEvent: m2mauth.AuditEvent{Type: m2mauth.EventTokenIssued, ClientID: "c", JTI: "late"}})
	a.hmu.Lock()
	held := len(a.held)
	a.hmu.Unlock()
	assert.Zero(t, held, "held after Close")
	assert.EqualValues(t, 1, a.Lost())
	require.Len(t, fellBack, 1)
	assert.Equal(t, "late", fellBack[0].JTI)
}

package sqlstore_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// auditRow is one row of the audit_events table.
type auditRow struct {
	Time                                                              int64
	Type, ClientID, RemoteIP, UserAgent, Audience, Scope, JTI, Secret string
	Error, Reason                                                     string
}

func (e *env) auditRows(t *testing.T, prefix string) []auditRow {
	t.Helper()
	rows, err := e.db.QueryContext(t.Context(), `SELECT event_time, event_type, client_id, remote_ip, user_agent,
audience, scope, jti, secret_id, error_code, reason FROM `+prefix+`audit_events ORDER BY id`)
	require.NoError(t, err)
	defer rows.Close()
	var out []auditRow
	for rows.Next() {
		var r auditRow
		require.NoError(t, rows.Scan(&r.Time, &r.Type, &r.ClientID, &r.RemoteIP, &r.UserAgent,
			&r.Audience, &r.Scope, &r.JTI, &r.Secret, &r.Error, &r.Reason))
		out = append(out, r)
	}
	require.NoError(t, rows.Err())
	return out
}

// recorder is a fallback auditor that keeps what it is given.
type recorder struct {
	mu     sync.Mutex
	events []m2mauth.AuditEvent
}

func (r *recorder) Audit(_ context.Context, e m2mauth.AuditEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func TestAuditorWritesRows(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		e.newStore(t, sqlstore.Config{TablePrefix: prefix}) // migrates
		fallback := &recorder{}
		clock := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		a, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix,
			Fallback:    fallback,
			Now:         func() time.Time { return clock },
		})
		require.NoError(t, err)
		t.Cleanup(func() { a.Close() })

		issued := time.Date(2029, 12, 31, 23, 59, 59, 123456789, time.UTC)
		cancelled, cancel := context.WithCancel(t.Context())
		cancel()
		events := []struct {
			ctx  context.Context
			ev   m2mauth.AuditEvent
			want auditRow
		}{
			{t.Context(), m2mauth.AuditEvent{
				Time: issued, Type: m2mauth.EventTokenIssued, ClientID: "svc-a", RemoteIP: "192.0.2.1",
				UserAgent: "curl/8", Audience: "https://api.example.com", Scopes: m2mauth.Scopes{"read", "write"},
				JTI: "jti-1", SecretID: "sec_1",
			}, auditRow{issued.UnixMicro(), "token_issued", "svc-a", "192.0.2.1", "curl/8",
				"https://api.example.com", "read write", "jti-1", "sec_1", "", ""}},
			{t.Context(), m2mauth.AuditEvent{
				Type: m2mauth.EventAuthFailed, ClientID: "svc-b", RemoteIP: "2001:db8::1",
				Error: "invalid_client", Reason: m2mauth.ReasonBadSecret,
			}, auditRow{clock.UnixMicro(), "client_auth_failed", "svc-b", "2001:db8::1", "",
				"", "", "", "", "invalid_client", "bad_secret"}},
			// Whatever a request sends is stored as text every engine
			// accepts, and bounded.
			{t.Context(), m2mauth.AuditEvent{
				Time: issued, Type: m2mauth.EventRequestRejected, ClientID: "bad\xff\xfeid\x00",
				UserAgent: strings.Repeat("é", 600), Error: "invalid_request",
			}, auditRow{issued.UnixMicro(), "request_rejected", "bad\uFFFDid\uFFFD", "", strings.Repeat("é", 512),
				"", "", "", "", "invalid_request", ""}},
			// A client that hangs up does not erase its trail.
			{cancelled, m2mauth.AuditEvent{Time: issued, Type: m2mauth.EventRateLimited, RemoteIP: "192.0.2.9"},
				auditRow{issued.UnixMicro(), "rate_limited", "", "192.0.2.9", "", "", "", "", "", "", ""}},
		}
		var want []auditRow
		for _, ev := range events {
			a.Audit(ev.ctx, ev.ev)
			want = append(want, ev.want)
		}
		assert.Equal(t, want, e.auditRows(t, prefix))
		assert.Zero(t, a.Failures())
		assert.Empty(t, fallback.events)
	})
}

// TestAuditorFallback checks that an event the database refuses is logged,
// handed to the fallback and counted.
func TestAuditorFallback(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		db := e.open(t)
		fallback := &recorder{}
		var logs bytes.Buffer
		a, err := sqlstore.NewAuditor(db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix,
			Fallback:    fallback,
			Logger:      slog.New(slog.NewTextHandler(&logs, nil)),
		})
		require.NoError(t, err)

		ok := m2mauth.AuditEvent{Time: time.Now(), Type: m2mauth.EventTokenIssued, ClientID: "before"}
		a.Audit(t.Context(), ok)
		require.Zero(t, a.Failures())

		require.NoError(t, db.Close())
		lost := m2mauth.AuditEvent{Time: time.Now(), Type: m2mauth.EventAuthFailed, ClientID: "during", Reason: m2mauth.ReasonUnknownClient}
		a.Audit(t.Context(), lost)
		a.Audit(t.Context(), lost)
		assert.Equal(t, uint64(2), a.Failures())
		assert.Equal(t, []m2mauth.AuditEvent{lost, lost}, fallback.events)
		assert.Contains(t, logs.String(), "audit event not written")
		assert.Contains(t, logs.String(), "client_id=during")
		assert.Contains(t, logs.String(), "database is closed")

		rows := e.auditRows(t, prefix)
		require.Len(t, rows, 1)
		assert.Equal(t, "before", rows[0].ClientID)
	})
}

// TestAuditorMissingTable checks the default fallback path when the table
// was never created: the event reaches the log, and the failure is counted.
func TestAuditorMissingTable(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		var logs bytes.Buffer
		a, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: e.newPrefix(t),
			Logger:      slog.New(slog.NewTextHandler(&logs, nil)),
		})
		require.NoError(t, err)
		t.Cleanup(func() { a.Close() })
		a.Audit(t.Context(), m2mauth.AuditEvent{Type: m2mauth.EventScopeDenied, ClientID: "svc", JTI: "jti-9"})
		assert.Equal(t, uint64(1), a.Failures())
		assert.Contains(t, logs.String(), "audit event not written")
		assert.Contains(t, logs.String(), "m2mauth audit", "the event itself, from the default fallback")
		assert.Contains(t, logs.String(), "jti=jti-9")
	})
}

func TestNewAuditor(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		_, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{Timeout: -time.Second})
		require.Error(t, err)
		a, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{})
		require.NoError(t, err)
		require.NoError(t, a.Close())
		require.NoError(t, a.Close(), "second Close")
	})
}

// TestAuditorQueue: with a queue, events from many goroutines are written
// in batches, each exactly once; Close flushes; a full queue and a closed
// Auditor lose nothing either.
func TestAuditorQueue(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		fallback := &recorder{}
		a, err := sqlstore.NewAuditor(e.db, e.dialect, sqlstore.AuditorConfig{
			TablePrefix: prefix, Fallback: fallback, QueueSize: 16,
		})
		require.NoError(t, err)

		const workers, each = 8, 50
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					a.Audit(t.Context(), m2mauth.AuditEvent{
						Time: time.Now(), Type: m2mauth.EventTokenIssued,
						ClientID: "w" + string(rune('a'+w)), JTI: strings.Repeat("x", i+1),
					})
				}
			}()
		}
		wg.Wait()
		require.NoError(t, a.Close())
		rows := e.auditRows(t, prefix)
		assert.Len(t, rows, workers*each, "every event written, none lost")
		seen := map[string]bool{}
		for _, r := range rows {
			seen[r.ClientID+"/"+r.JTI] = true
		}
		assert.Len(t, seen, workers*each, "each event exactly once")
		assert.Zero(t, a.Failures())
		assert.Empty(t, fallback.events)

		after := m2mauth.AuditEvent{Time: time.Now(), Type: m2mauth.EventAuthFailed, ClientID: "after-close"}
		a.Audit(t.Context(), after)
		assert.Equal(t, uint64(1), a.Failures())
		assert.Equal(t, []m2mauth.AuditEvent{after}, fallback.events, "after Close, events go to the fallback")
	})
}

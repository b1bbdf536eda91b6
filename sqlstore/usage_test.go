package sqlstore_test

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// usageT0 is when the events of the usage tests begin.
var usageT0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// at returns usageT0 plus d.
func at(d time.Duration) time.Time { return usageT0.Add(d) }

// writeEvents writes events to the prefix's audit table through an
// Auditor, and closes it so that every event is in the table on return.
func (e *env) writeEvents(t *testing.T, prefix string, cfg sqlstore.AuditorConfig, events []m2mauth.AuditEvent) {
	t.Helper()
	cfg.TablePrefix = prefix
	a, err := sqlstore.NewAuditor(e.db, e.dialect, cfg)
	require.NoError(t, err)
	for _, ev := range events {
		a.Audit(context.Background(), ev)
	}
	require.NoError(t, a.Close())
	require.Zero(t, a.Failures(), "events not written on the first try")
	require.Zero(t, a.Pending(), "events not written")
}

// usageEvents are the events of TestUsage: those of client "svc" from
// usageT0 to usageT0+9s, and others that its usage must leave out.
func usageEvents() []m2mauth.AuditEvent {
	ev := func(d time.Duration, typ m2mauth.AuditEventType, client, ip, reason string) m2mauth.AuditEvent {
		return m2mauth.AuditEvent{Time: at(d), Type: typ, ClientID: client, RemoteIP: ip, Reason: reason,
			UserAgent: "agent/1", Audience: "https://api.example.com", Scopes: m2mauth.Scopes{"read"}}
	}
	s := time.Second
	return []m2mauth.AuditEvent{
		ev(0, m2mauth.EventTokenIssued, "svc", "192.0.2.1", ""),
		ev(s/2, m2mauth.EventClientCreated, "svc", "", "grants"), // administration: not counted
		ev(1*s, m2mauth.EventTokenIssued, "svc", "192.0.2.2", ""),
		ev(2*s, m2mauth.EventAuthFailed, "svc", "192.0.2.3", m2mauth.ReasonBadSecret),
		ev(2*s, m2mauth.EventAuthFailed, "", "192.0.2.9", m2mauth.ReasonNoCredentials), // no client
		ev(3*s, m2mauth.EventAuthFailed, "svc", "192.0.2.1", m2mauth.ReasonBadSecret),
		ev(3*s, m2mauth.EventTokenIssued, "other", "192.0.2.1", ""),
		ev(3*s, m2mauth.EventTokenIssued, "other", "203.0.113.1", ""),
		ev(4*s, m2mauth.EventAuthFailed, "svc", "192.0.2.2", m2mauth.ReasonExpiredSecret),
		ev(4*s+s/2, m2mauth.EventTokenRejected, "svc", "203.0.113.9", "expired"), // a validator's: not counted
		ev(5*s, m2mauth.EventRateLimited, "svc", "192.0.2.3", "too many failed attempts"),
		ev(5*s, m2mauth.EventTokenIssued, "SVC", "192.0.2.1", ""), // another client: ids are exact
		ev(6*s, m2mauth.EventScopeDenied, "svc", "", ""),
		ev(6*s, m2mauth.EventTokenIssued, "aaa", "192.0.2.1", ""),
		ev(7*s, m2mauth.EventAudienceDenied, "svc", "198.51.100.7", ""),
		ev(8*s, m2mauth.EventRequestRejected, "svc", "192.0.2.1", m2mauth.ReasonInsecureTransport),
		ev(9*s, m2mauth.EventTokenIssued, "svc", "192.0.2.1", ""),
	}
}

func TestUsage(t *testing.T) {
	s := time.Second
	tests := []struct {
		name         string
		client       string
		since, until time.Time
		want         sqlstore.ClientUsage // ClientID is the client's
	}{
		{"Everything", "svc", time.Time{}, time.Time{}, sqlstore.ClientUsage{
			TokensIssued: 3,
			Failures:     map[string]int64{m2mauth.ReasonBadSecret: 2, m2mauth.ReasonExpiredSecret: 1},
			Rejected:     3, RateLimited: 1, DistinctAddresses: 4,
			FirstSeen: at(0), LastSeen: at(9 * s),
		}},
		{"SinceInclusive", "svc", at(2 * s), time.Time{}, sqlstore.ClientUsage{
			TokensIssued: 1,
			Failures:     map[string]int64{m2mauth.ReasonBadSecret: 2, m2mauth.ReasonExpiredSecret: 1},
			Rejected:     3, RateLimited: 1, DistinctAddresses: 4,
			FirstSeen: at(2 * s), LastSeen: at(9 * s),
		}},
		{"UntilExclusive", "svc", time.Time{}, at(2 * s), sqlstore.ClientUsage{
			TokensIssued: 2, DistinctAddresses: 2, FirstSeen: at(0), LastSeen: at(s),
		}},
		{"Window", "svc", at(2 * s), at(6 * s), sqlstore.ClientUsage{
			Failures:    map[string]int64{m2mauth.ReasonBadSecret: 2, m2mauth.ReasonExpiredSecret: 1},
			RateLimited: 1, DistinctAddresses: 3, FirstSeen: at(2 * s), LastSeen: at(5 * s),
		}},
		{"MicrosecondEdges", "svc", at(2*s + time.Microsecond), at(5*s + time.Microsecond), sqlstore.ClientUsage{
			Failures:    map[string]int64{m2mauth.ReasonBadSecret: 1, m2mauth.ReasonExpiredSecret: 1},
			RateLimited: 1, DistinctAddresses: 3, FirstSeen: at(3 * s), LastSeen: at(5 * s),
		}},
		{"OnlyEventsWithoutAddress", "svc", at(6 * s), at(7 * s), sqlstore.ClientUsage{
			Rejected: 1, FirstSeen: at(6 * s), LastSeen: at(6 * s),
		}},
		{"EmptyRange", "svc", at(2 * s), at(2 * s), sqlstore.ClientUsage{}},
		{"AfterTheEvents", "svc", at(100 * s), time.Time{}, sqlstore.ClientUsage{}},
		{"OtherClient", "other", time.Time{}, time.Time{}, sqlstore.ClientUsage{
			TokensIssued: 2, DistinctAddresses: 2, FirstSeen: at(3 * s), LastSeen: at(3 * s),
		}},
		{"ExactID", "SVC", time.Time{}, time.Time{}, sqlstore.ClientUsage{
			TokensIssued: 1, DistinctAddresses: 1, FirstSeen: at(5 * s), LastSeen: at(5 * s),
		}},
		{"UnknownClient", "nobody", time.Time{}, time.Time{}, sqlstore.ClientUsage{}},
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		store := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		e.writeEvents(t, prefix, sqlstore.AuditorConfig{}, usageEvents())

		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, err := store.Usage(t.Context(), tt.client, tt.since, tt.until)
				require.NoError(t, err)
				want := tt.want
				want.ClientID = tt.client
				assert.Equal(t, want, got)
			})
		}
		t.Run("UntilBeforeSince", func(t *testing.T) {
			_, err := store.Usage(t.Context(), "svc", at(2*s), at(s))
			require.Error(t, err)
			_, err = store.UsageAll(t.Context(), at(2*s), at(s), 0)
			require.Error(t, err)
		})
	})
}

func TestUsageAll(t *testing.T) {
	s := time.Second
	svc := sqlstore.ClientUsage{
		ClientID:     "svc",
		TokensIssued: 3,
		Failures:     map[string]int64{m2mauth.ReasonBadSecret: 2, m2mauth.ReasonExpiredSecret: 1},
		Rejected:     3, RateLimited: 1, DistinctAddresses: 4,
		FirstSeen: at(0), LastSeen: at(9 * s),
	}
	other := sqlstore.ClientUsage{ClientID: "other", TokensIssued: 2, DistinctAddresses: 2, FirstSeen: at(3 * s), LastSeen: at(3 * s)}
	upper := sqlstore.ClientUsage{ClientID: "SVC", TokensIssued: 1, DistinctAddresses: 1, FirstSeen: at(5 * s), LastSeen: at(5 * s)}
	aaa := sqlstore.ClientUsage{ClientID: "aaa", TokensIssued: 1, DistinctAddresses: 1, FirstSeen: at(6 * s), LastSeen: at(6 * s)}
	tests := []struct {
		name         string
		since, until time.Time
		limit        int
		want         []sqlstore.ClientUsage
	}{
		// Busiest first; "SVC" and "aaa" tie, and go in byte order. The
		// request without a client id is left out.
		{"Everything", time.Time{}, time.Time{}, 0, []sqlstore.ClientUsage{svc, other, upper, aaa}},
		{"Limit", time.Time{}, time.Time{}, 3, []sqlstore.ClientUsage{svc, other, upper}},
		// Two events each: in byte order of the ids.
		{"Window", at(3 * s), at(5 * s), 10, []sqlstore.ClientUsage{
			other,
			{ClientID: "svc", Failures: map[string]int64{m2mauth.ReasonBadSecret: 1, m2mauth.ReasonExpiredSecret: 1},
				DistinctAddresses: 2, FirstSeen: at(3 * s), LastSeen: at(4 * s)},
		}},
		{"Empty", at(100 * s), time.Time{}, 0, []sqlstore.ClientUsage{}},
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		store := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		e.writeEvents(t, prefix, sqlstore.AuditorConfig{}, usageEvents())
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, err := store.UsageAll(t.Context(), tt.since, tt.until, tt.limit)
				require.NoError(t, err)
				if len(tt.want) == 0 {
					assert.Empty(t, got)
					return
				}
				assert.Equal(t, tt.want, got)
			})
		}
	})
}

// TestUsageUsesIndex asks PostgreSQL and SQLite how they run the queries
// of Usage and of AuditEvents for a client: through the client index of
// the audit table. PostgreSQL is told to avoid sequential scans, which it
// would rightly prefer on a table this small; that it can use the index
// at all is the point.
func TestUsageUsesIndex(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		var index string
		switch e.dialect {
		case sqlstore.MySQL:
			t.Skip("MySQL's plans are not checked")
		case sqlstore.Postgres:
			index = "audit_events_client_time_idx"
		case sqlstore.SQLite:
			index = "audit_events_client_idx"
		}
		prefix := e.newPrefix(t)
		store := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		e.writeEvents(t, prefix, sqlstore.AuditorConfig{QueueSize: 64}, usageEvents())
		index = prefix + index

		tests := []struct {
			name  string
			query string
			args  []any
		}{
			{"Usage", sqlstore.UsageQuery(store), []any{"svc", int64(0), int64(1 << 60), "svc", int64(0), int64(1 << 60)}},
			{"AuditEvents", sqlstore.AuditByClientQuery(store), []any{"svc", int64(0), "", "", int64(50)}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				plan := e.explain(t, tt.query, tt.args...)
				assert.Contains(t, plan, index, "plan:\n%s", plan)
				assert.NotContains(t, strings.ToLower(plan), "seq scan", "plan:\n%s", plan)
				if e.dialect == sqlstore.SQLite {
					assert.NotContains(t, plan, "SCAN "+prefix+"audit_events", "plan:\n%s", plan)
				}
				if tt.name == "AuditEvents" {
					// The newest events come off the index in order.
					assert.NotContains(t, strings.ToLower(plan), "sort", "plan:\n%s", plan)
					assert.NotContains(t, plan, "TEMP B-TREE", "plan:\n%s", plan)
				}
			})
		}
	})
}

// explain returns the plan of query, one line per row, on PostgreSQL
// without sequential scans.
func (e *env) explain(t *testing.T, query string, args ...any) string {
	t.Helper()
	ctx := t.Context()
	tx, err := e.db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	prefix := "EXPLAIN QUERY PLAN "
	if e.dialect == sqlstore.Postgres {
		_, err := tx.ExecContext(ctx, "SET LOCAL enable_seqscan = off")
		require.NoError(t, err)
		prefix = "EXPLAIN "
	}
	rows, err := tx.QueryContext(ctx, prefix+query, args...)
	require.NoError(t, err)
	defer rows.Close()
	cols, err := rows.Columns()
	require.NoError(t, err)
	var lines []string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		require.NoError(t, rows.Scan(ptrs...))
		lines = append(lines, vals[len(vals)-1].String) // the plan text, or SQLite's detail
	}
	require.NoError(t, rows.Err())
	return strings.Join(lines, "\n")
}

// TestAuditClientIDsExact: client ids that differ only by trailing
// spaces are different clients, whose audit trails and usage do not mix
// (on MySQL and MariaDB, a padding collation would compare them equal).
func TestAuditClientIDsExact(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		at := time.Now().UTC().Truncate(time.Second)
		e.writeEvents(t, prefix, sqlstore.AuditorConfig{}, []m2mauth.AuditEvent{
			{Time: at, Type: m2mauth.EventTokenIssued, ClientID: "a", JTI: "j1"},
			{Time: at, Type: m2mauth.EventTokenIssued, ClientID: "a ", JTI: "j2"},
			{Time: at, Type: m2mauth.EventTokenIssued, ClientID: "a ", JTI: "j3"},
			{Time: at, Type: m2mauth.EventTokenIssued, ClientID: " ", JTI: "j4"},
		})
		evs, err := s.AuditEvents(t.Context(), sqlstore.AuditQuery{ClientID: "a"})
		require.NoError(t, err)
		require.Len(t, evs, 1)
		assert.Equal(t, "j1", evs[0].JTI)
		u, err := s.Usage(t.Context(), "a", time.Time{}, time.Time{})
		require.NoError(t, err)
		assert.EqualValues(t, 1, u.TokensIssued, `Usage("a")`)
		all, err := s.UsageAll(t.Context(), time.Time{}, time.Time{}, 10)
		require.NoError(t, err)
		issued := map[string]int64{}
		for _, cu := range all {
			issued[cu.ClientID] = cu.TokensIssued
		}
		assert.Equal(t, map[string]int64{"a": 1, "a ": 2, " ": 1}, issued)
	})
}

// TestIssuedAddresses: each client and address that got a token since a
// time, with the first and last of those tokens, from the events of
// TestUsage: other event types, other times and events without an
// address are left out; ids are exact.
func TestIssuedAddresses(t *testing.T) {
	s := time.Second
	addr := netip.MustParseAddr
	tests := []struct {
		name  string
		since time.Time
		want  []sqlstore.IssuedAddress
	}{
		{"Everything", time.Time{}, []sqlstore.IssuedAddress{
			{ClientID: "SVC", Address: addr("192.0.2.1"), First: at(5 * s), Last: at(5 * s)},
			{ClientID: "aaa", Address: addr("192.0.2.1"), First: at(6 * s), Last: at(6 * s)},
			{ClientID: "other", Address: addr("192.0.2.1"), First: at(3 * s), Last: at(3 * s)},
			{ClientID: "other", Address: addr("203.0.113.1"), First: at(3 * s), Last: at(3 * s)},
			{ClientID: "svc", Address: addr("192.0.2.1"), First: at(0), Last: at(9 * s)},
			{ClientID: "svc", Address: addr("192.0.2.2"), First: at(s), Last: at(s)},
		}},
		{"SinceInclusive", at(5 * s), []sqlstore.IssuedAddress{
			{ClientID: "SVC", Address: addr("192.0.2.1"), First: at(5 * s), Last: at(5 * s)},
			{ClientID: "aaa", Address: addr("192.0.2.1"), First: at(6 * s), Last: at(6 * s)},
			{ClientID: "svc", Address: addr("192.0.2.1"), First: at(9 * s), Last: at(9 * s)},
		}},
		{"AfterTheEvents", at(100 * s), nil},
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		store := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		events := append(usageEvents(),
			m2mauth.AuditEvent{Time: at(7 * s), Type: m2mauth.EventTokenIssued, ClientID: "noaddr"},
			m2mauth.AuditEvent{Time: at(7 * s), Type: m2mauth.EventTokenIssued, ClientID: "badaddr", RemoteIP: "not an address"})
		e.writeEvents(t, prefix, sqlstore.AuditorConfig{}, events)
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				var got []sqlstore.IssuedAddress
				require.NoError(t, store.IssuedAddresses(t.Context(), tt.since, func(a sqlstore.IssuedAddress) error {
					got = append(got, a)
					return nil
				}))
				slices.SortFunc(got, func(a, b sqlstore.IssuedAddress) int {
					return cmp.Or(strings.Compare(a.ClientID, b.ClientID), a.Address.Compare(b.Address))
				})
				assert.Equal(t, tt.want, got)
			})
		}
		t.Run("StopsAtError", func(t *testing.T) {
			stop := errors.New("enough")
			n := 0
			err := store.IssuedAddresses(t.Context(), time.Time{}, func(sqlstore.IssuedAddress) error {
				n++
				return stop
			})
			require.ErrorIs(t, err, stop)
			assert.Equal(t, 1, n)
		})
	})
}

package sqlstore_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// tailEvents are the events of TestAuditEvents, oldest first, each named
// by its JTI: 60 token_issued events of "svc" a millisecond apart, with
// the administration of "svc" and the tokens of "other" among them, and
// two events of "tie" in one microsecond.
func tailEvents() []m2mauth.AuditEvent {
	var out []m2mauth.AuditEvent
	for i := range 60 {
		out = append(out, m2mauth.AuditEvent{
			Time: at(time.Duration(i) * time.Millisecond), Type: m2mauth.EventTokenIssued, ClientID: "svc",
			RemoteIP: "192.0.2.1", JTI: fmt.Sprintf("svc-%02d", i),
		})
		switch i {
		case 10, 40:
			out = append(out, m2mauth.AuditEvent{
				Time: at(time.Duration(i)*time.Millisecond + time.Microsecond), Type: m2mauth.EventSecretAdded,
				ClientID: "svc", SecretID: fmt.Sprintf("sec-%d", i), JTI: fmt.Sprintf("admin-%02d", i),
			})
		case 20, 50:
			out = append(out, m2mauth.AuditEvent{
				Time: at(time.Duration(i)*time.Millisecond + time.Microsecond), Type: m2mauth.EventTokenIssued,
				ClientID: "other", JTI: fmt.Sprintf("other-%02d", i),
			})
		}
	}
	tie := at(time.Hour)
	return append(out,
		m2mauth.AuditEvent{Time: tie, Type: m2mauth.EventTokenIssued, ClientID: "tie", JTI: "written-first"},
		m2mauth.AuditEvent{Time: tie.Add(999 * time.Nanosecond), Type: m2mauth.EventTokenIssued, ClientID: "tie", JTI: "written-second"},
	)
}

// jtis returns the JTI of each event.
func jtis(events []m2mauth.AuditEvent) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.JTI
	}
	return out
}

// newest returns the JTIs of the n newest of events that keep accepts, as
// AuditEvents orders them: by time to the microsecond, then by the order
// written, both newest first.
func newest(events []m2mauth.AuditEvent, n int, keep func(m2mauth.AuditEvent) bool) []string {
	out := []string{}
	idx := make([]int, len(events))
	for i := range idx {
		idx[i] = len(events) - 1 - i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		return events[b].Time.Truncate(time.Microsecond).Compare(events[a].Time.Truncate(time.Microsecond))
	})
	for _, i := range idx {
		if len(out) < n && keep(events[i]) {
			out = append(out, events[i].JTI)
		}
	}
	return out
}

func TestAuditEvents(t *testing.T) {
	events := tailEvents()
	all := func(m2mauth.AuditEvent) bool { return true }
	ofClient := func(id string) func(m2mauth.AuditEvent) bool {
		return func(e m2mauth.AuditEvent) bool { return e.ClientID == id }
	}
	tests := []struct {
		name  string
		query sqlstore.AuditQuery
		want  []string // JTIs, newest first
	}{
		{"Default", sqlstore.AuditQuery{}, newest(events, 50, all)},
		{"NegativeLimit", sqlstore.AuditQuery{ClientID: "svc", Limit: -1}, newest(events, 50, ofClient("svc"))},
		{"Client", sqlstore.AuditQuery{ClientID: "svc", Limit: 5}, []string{"svc-59", "svc-58", "svc-57", "svc-56", "svc-55"}},
		{"ClientAndType", sqlstore.AuditQuery{ClientID: "svc", Type: m2mauth.EventSecretAdded}, []string{"admin-40", "admin-10"}},
		{"Type", sqlstore.AuditQuery{Type: m2mauth.EventSecretAdded}, []string{"admin-40", "admin-10"}},
		{"OtherClient", sqlstore.AuditQuery{ClientID: "other"}, []string{"other-50", "other-20"}},
		{"SinceInclusive", sqlstore.AuditQuery{ClientID: "svc", Since: at(57 * time.Millisecond)}, []string{"svc-59", "svc-58", "svc-57"}},
		{"SinceAllClients", sqlstore.AuditQuery{Since: at(58 * time.Millisecond)}, []string{"written-second", "written-first", "svc-59", "svc-58"}},
		{"SameMicrosecond", sqlstore.AuditQuery{ClientID: "tie"}, []string{"written-second", "written-first"}},
		{"UnknownClient", sqlstore.AuditQuery{ClientID: "nobody"}, []string{}},
		{"UnknownType", sqlstore.AuditQuery{Type: "no_such_type"}, []string{}},
	}
	require.Contains(t, tests[0].want, "admin-40", "the default page holds events of every kind")
	require.Len(t, tests[0].want, 50)

	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		store := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		e.writeEvents(t, prefix, sqlstore.AuditorConfig{}, tailEvents())
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, err := store.AuditEvents(t.Context(), tt.query)
				require.NoError(t, err)
				assert.Equal(t, tt.want, jtis(got))
			})
		}
	})
}

// TestAuditEventsRoundTrip checks that an event reads back as the Auditor
// was given it, Time in UTC and to the microsecond.
func TestAuditEventsRoundTrip(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		store := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		in := m2mauth.AuditEvent{
			Time: time.Date(2030, 1, 2, 3, 4, 5, 678901234, time.FixedZone("X", 3600)),
			Type: m2mauth.EventScopeDenied, ClientID: "svc", RemoteIP: "2001:db8::1", UserAgent: "agent/1 \"quoted\"",
			Audience: "https://api.example.com", Scopes: m2mauth.Scopes{"read", "write"}, JTI: "jti-1",
			SecretID: "sec_1", Error: "invalid_scope", Reason: "r\u00e9ason",
		}
		e.writeEvents(t, prefix, sqlstore.AuditorConfig{}, []m2mauth.AuditEvent{in, {Type: m2mauth.EventTokenIssued, Time: in.Time, ClientID: "bare"}})

		got, err := store.AuditEvents(t.Context(), sqlstore.AuditQuery{ClientID: "svc"})
		require.NoError(t, err)
		require.Len(t, got, 1)
		want := in
		want.Time = in.Time.UTC().Truncate(time.Microsecond)
		assert.Equal(t, want, got[0])

		got, err = store.AuditEvents(t.Context(), sqlstore.AuditQuery{ClientID: "bare"})
		require.NoError(t, err)
		require.Len(t, got, 1)
		assert.Nil(t, got[0].Scopes, "an event without scopes")
	})
}

// TestAuditEventsLimit checks that Limit is bounded: at most 1000 events
// are returned, however many are asked for.
func TestAuditEventsLimit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		store := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		events := make([]m2mauth.AuditEvent, 1003)
		for i := range events {
			events[i] = m2mauth.AuditEvent{Time: at(time.Duration(i) * time.Millisecond), Type: m2mauth.EventTokenIssued,
				ClientID: "bulk", JTI: fmt.Sprintf("bulk-%04d", i)}
		}
		e.writeEvents(t, prefix, sqlstore.AuditorConfig{QueueSize: 256}, events)

		tests := []struct {
			name  string
			query sqlstore.AuditQuery
			want  int
		}{
			{"Default", sqlstore.AuditQuery{}, 50},
			{"Explicit", sqlstore.AuditQuery{ClientID: "bulk", Limit: 7}, 7},
			{"AtMost1000", sqlstore.AuditQuery{ClientID: "bulk", Limit: 5000}, 1000},
			{"AtMost1000AllClients", sqlstore.AuditQuery{Limit: 1001}, 1000},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, err := store.AuditEvents(t.Context(), tt.query)
				require.NoError(t, err)
				require.Len(t, got, tt.want)
				assert.Equal(t, "bulk-1002", got[0].JTI, "newest first")
				assert.Equal(t, fmt.Sprintf("bulk-%04d", 1003-tt.want), got[len(got)-1].JTI)
			})
		}
	})
}

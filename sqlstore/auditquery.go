package sqlstore

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/m2mauth/m2mauth"
)

// Bounds of [AuditQuery.Limit].
const (
	defaultAuditLimit = 50
	maxAuditLimit     = 1000
)

// AuditQuery selects the events that [Store.AuditEvents] returns. The
// zero value selects the 50 newest events.
type AuditQuery struct {
	// ClientID, when not empty, selects the events of this client.
	ClientID string
	// Type, when not empty, selects the events of this type.
	Type m2mauth.AuditEventType
	// Since, when not zero, selects the events at or after it, to the
	// microsecond (rounded down, as event times are stored).
	Since time.Time
	// Limit is the most events returned. Default (0 or less): 50; more
	// than 1000 means 1000.
	Limit int
}

// AuditEvents returns the events of the audit table that q selects,
// newest first: by event time, and events of the same microsecond in the
// reverse of the order they were written in. The events are as an
// [Auditor] on the Store's table prefix wrote them, text repaired and
// bounded as it does; Scopes is split at spaces, and Time is in UTC.
//
// AuditEvents runs one query. With a ClientID it reads the client's
// events, newest first, through the index on (client_id, event_time), and
// stops at Limit; without one, through the index on event_time. A Type is
// checked on each event read: asking for a rare type without a ClientID
// may read many newer events to find Limit of it.
func (s *Store) AuditEvents(ctx context.Context, q AuditQuery) ([]m2mauth.AuditEvent, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = defaultAuditLimit
	}
	limit = min(limit, maxAuditLimit)
	since := int64(math.MinInt64)
	if !q.Since.IsZero() {
		since = q.Since.UnixMicro()
	}
	eventType := auditText(string(q.Type))
	query, args := s.q.auditAll, []any{since, eventType, eventType, int64(limit)}
	if q.ClientID != "" {
		query, args = s.q.auditByClient, append([]any{auditText(q.ClientID)}, args...)
	}
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: audit events: %w", err)
	}
	defer rows.Close()
	out := make([]m2mauth.AuditEvent, 0, min(limit, defaultAuditLimit))
	for rows.Next() {
		var (
			e          m2mauth.AuditEvent
			micros     int64
			typ, scope string
		)
		if err := rows.Scan(&micros, &typ, &e.ClientID, &e.RemoteIP, &e.UserAgent, &e.Audience, &scope,
			&e.JTI, &e.SecretID, &e.Error, &e.Reason); err != nil {
			return nil, fmt.Errorf("sqlstore: audit events: %w", err)
		}
		e.Time, e.Type = fromMicros(micros), m2mauth.AuditEventType(typ)
		if scope != "" {
			e.Scopes = m2mauth.Scopes(strings.Fields(scope))
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: audit events: %w", err)
	}
	return out, nil
}

package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/m2mauth/m2mauth"
)

// maxUsageClients bounds the clients [Store.UsageAll] returns.
const maxUsageClients = 1000

// ClientUsage is what the audit table records of one client's requests
// to the token endpoint over a span of time; see [Store.Usage]. Every
// event it counts is counted in exactly one of TokensIssued, Failures,
// Rejected and RateLimited.
type ClientUsage struct {
	// ClientID is the client the events are of.
	ClientID string
	// TokensIssued counts the tokens issued to the client
	// ([m2mauth.EventTokenIssued]).
	TokensIssued int64
	// Failures counts the failed authentications as the client
	// ([m2mauth.EventAuthFailed]) by their reason: [m2mauth.ReasonBadSecret],
	// [m2mauth.ReasonExpiredSecret] and the other Reason constants. It is
	// nil when there were none.
	Failures map[string]int64
	// Rejected counts the requests refused for another reason than failed
	// authentication or rate limiting: for their scope or audience
	// ([m2mauth.EventScopeDenied], [m2mauth.EventAudienceDenied]), or as
	// malformed or not served ([m2mauth.EventRequestRejected]).
	Rejected int64
	// RateLimited counts the requests refused by the limits on failed
	// authentication ([m2mauth.EventRateLimited]).
	RateLimited int64
	// DistinctAddresses counts the different addresses (RemoteIP) the
	// events came from; events without one do not count.
	DistinctAddresses int64
	// FirstSeen and LastSeen are the times of the first and the last of
	// the events, to the microsecond, in UTC; zero when there are none.
	FirstSeen, LastSeen time.Time
}

// Usage returns what the audit table records of the requests of client
// clientID to the token endpoint from since, inclusive, to until,
// exclusive: the events of the types [ClientUsage] counts, as an
// [Auditor] on the Store's table prefix writes them. A zero since or
// until leaves that end open; an until before since is an error. Times
// are compared to the microsecond, rounded down, as event times are
// stored.
//
// The events of client administration (see [Store]) are not counted, nor
// are a [m2mauth.Validator]'s [m2mauth.EventTokenRejected] events; its
// [m2mauth.EventScopeDenied] events count in Rejected when it writes to
// the same table.
//
// Usage runs one query, which reads the client's events in the range
// through the index on (client_id, event_time): its cost grows with those
// events, not with the table.
func (s *Store) Usage(ctx context.Context, clientID string, since, until time.Time) (ClientUsage, error) {
	from, to, err := usageRange(since, until)
	if err != nil {
		return ClientUsage{}, err
	}
	id := auditText(clientID) // as the Auditor wrote it
	rows, err := s.db.QueryContext(ctx, s.q.usage, id, from, to, id, from, to)
	if err != nil {
		return ClientUsage{}, fmt.Errorf("sqlstore: usage of %q: %w", clientID, err)
	}
	out, err := decodeUsage(rows, false)
	if err != nil {
		return ClientUsage{}, fmt.Errorf("sqlstore: usage of %q: %w", clientID, err)
	}
	u := ClientUsage{ClientID: clientID}
	if len(out) > 0 {
		u = out[0]
		u.ClientID = clientID
	}
	return u, nil
}

// UsageAll returns the usage, as [Store.Usage] counts it, of the clients
// with the most events from since to until, the busiest first (ties in
// the order of their ids), at most limit of them: limit <= 0 means 100,
// and more than 1000 means 1000. Requests that named no client are left
// out.
//
// UsageAll runs one query, which reads every event in the range through
// the index on event_time, then the events of the clients it returns
// through the client index: its cost grows with all the traffic in the
// range, so ask for no longer a range than needed.
func (s *Store) UsageAll(ctx context.Context, since, until time.Time, limit int) ([]ClientUsage, error) {
	from, to, err := usageRange(since, until)
	if err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, maxUsageClients)
	rows, err := s.db.QueryContext(ctx, s.q.usageAll, from, to, int64(limit), from, to)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: usage: %w", err)
	}
	out, err := decodeUsage(rows, true)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: usage: %w", err)
	}
	slices.SortFunc(out, func(a, b ClientUsage) int {
		if n, m := a.total(), b.total(); n != m {
			if n > m {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ClientID, b.ClientID)
	})
	return out, nil
}

// total returns the number of events u counts.
func (u *ClientUsage) total() int64 {
	n := u.TokensIssued + u.Rejected + u.RateLimited
	for _, f := range u.Failures {
		n += f
	}
	return n
}

// usageRange returns since and until in unix microseconds, with the
// smallest and largest int64 for open ends.
func usageRange(since, until time.Time) (from, to int64, err error) {
	if !since.IsZero() && !until.IsZero() && until.Before(since) {
		return 0, 0, fmt.Errorf("sqlstore: usage: until %v is before since %v", until, since)
	}
	from, to = math.MinInt64, math.MaxInt64
	if !since.IsZero() {
		from = since.UnixMicro()
	}
	if !until.IsZero() {
		to = until.UnixMicro()
	}
	return from, to, nil
}

// usageCount is the count of one (event type, reason) of a client.
type usageCount struct {
	id, typ, reason string
	n               int64
}

// decodeUsage reads the rows of the usage or usageAll query (see
// [queries]) into one ClientUsage per client, in the order of their
// totals rows, and closes rows. withClient says whether rows begin with
// the client id (usageAll). A client whose totals count no event is left
// out.
func decodeUsage(rows *sql.Rows, withClient bool) (out []ClientUsage, err error) {
	defer func() {
		if cerr := rows.Close(); err == nil && cerr != nil {
			out, err = nil, cerr
		}
	}()
	byID := make(map[string]*ClientUsage)
	var order []string
	var counts []usageCount
	for rows.Next() {
		var (
			kind, n, addresses  int64
			id, typ, reason     string
			firstSeen, lastSeen sql.NullInt64
			dest                = []any{&kind, &typ, &reason, &n, &addresses, &firstSeen, &lastSeen}
		)
		if withClient {
			dest = append([]any{&kind, &id}, dest[1:]...)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		switch kind {
		case 0:
			if n == 0 {
				continue // no event in the range: the aggregate's one row
			}
			u := &ClientUsage{ClientID: id, DistinctAddresses: addresses}
			if firstSeen.Valid {
				u.FirstSeen = fromMicros(firstSeen.Int64)
			}
			if lastSeen.Valid {
				u.LastSeen = fromMicros(lastSeen.Int64)
			}
			byID[id] = u
			order = append(order, id)
		case 1:
			counts = append(counts, usageCount{id, typ, reason, n})
		default:
			return nil, fmt.Errorf("unexpected row kind %d", kind)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, c := range counts {
		u := byID[c.id]
		if u == nil {
			return nil, errors.New("counts of a client without totals")
		}
		switch m2mauth.AuditEventType(c.typ) {
		case m2mauth.EventTokenIssued:
			u.TokensIssued += c.n
		case m2mauth.EventAuthFailed:
			if u.Failures == nil {
				u.Failures = make(map[string]int64)
			}
			u.Failures[c.reason] += c.n
		case m2mauth.EventRateLimited:
			u.RateLimited += c.n
		default:
			u.Rejected += c.n
		}
	}
	out = make([]ClientUsage, len(order))
	for i, id := range order {
		out[i] = *byID[id]
	}
	return out, nil
}

package sqlstore

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/m2mauth/m2mauth"
)

// issuedAddressesQuery is the statement of the issuedAddresses query,
// the same on every dialect but for its placeholder: it reads the
// events in the range through the index on event_time.
func issuedAddressesQuery(since string) string {
	return `SELECT client_id, remote_ip, MIN(event_time), MAX(event_time)
  FROM {p}audit_events
 WHERE event_time >= ` + since + ` AND event_type = '` + string(m2mauth.EventTokenIssued) + `'
   AND client_id <> '' AND remote_ip <> ''
 GROUP BY client_id, remote_ip`
}

// IssuedAddress is a client's use of one address, as the audit table
// records it: tokens issued to ClientID for requests from Address, the
// first at First and the last at Last.
type IssuedAddress struct {
	ClientID string
	Address  netip.Addr
	First    time.Time
	Last     time.Time
}

// IssuedAddresses calls fn with each client and address that got a token
// at or after since, as an [Auditor] on the Store's table prefix recorded
// them, in no particular order, and stops at fn's first error, which it
// returns. Rows whose address does not parse are skipped.
//
// It is meant for a [m2mauth.Detector] starting up: pass each to its
// LearnAddress, with since its NewAddress.LearningPeriod ago, so that
// the new_address rule knows the networks clients used before the
// process started. It runs one query, which reads every event of the
// range through the index on event_time.
func (s *Store) IssuedAddresses(ctx context.Context, since time.Time, fn func(IssuedAddress) error) error {
	rows, err := s.db.QueryContext(ctx, s.q.issuedAddresses, since.UnixMicro())
	if err != nil {
		return fmt.Errorf("sqlstore: issued addresses: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			a           IssuedAddress
			ip          string
			first, last int64
		)
		if err := rows.Scan(&a.ClientID, &ip, &first, &last); err != nil {
			return fmt.Errorf("sqlstore: issued addresses: %w", err)
		}
		if a.Address, err = netip.ParseAddr(ip); err != nil {
			continue
		}
		a.First, a.Last = fromMicros(first), fromMicros(last)
		if err := fn(a); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sqlstore: issued addresses: %w", err)
	}
	return nil
}

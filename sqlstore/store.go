package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/m2mauth/m2mauth"
)

// DefaultTablePrefix is the table prefix used when [Config.TablePrefix]
// and [AuditorConfig.TablePrefix] are empty.
const DefaultTablePrefix = "m2mauth_"

// maxPrefixLen keeps the longest name made from a prefix (an index name on
// PostgreSQL, the migration lock and the Limiter's procedure on MySQL)
// within every engine's limit.
const maxPrefixLen = 32

// maxColumnLen bounds secret ids and audiences, which are keys: MySQL
// stores them as VARBINARY(255). Client ids are bounded by
// [m2mauth.Client.Validate] already.
const maxColumnLen = 255

// Config holds the tunables of a [Store]. The zero value is a working
// configuration.
type Config struct {
	// TablePrefix begins the name of every table the store uses
	// (<prefix>clients, <prefix>secrets, <prefix>grants,
	// <prefix>audit_events, <prefix>rate_limits, <prefix>revocations,
	// <prefix>revocation_state, <prefix>signing_keys,
	// <prefix>key_events, <prefix>schema_migrations, and on SQLite
	// <prefix>client_stamp and its triggers). It is written
	// into SQL, so it must be 1 to 32 characters of lower-case ASCII
	// letters, digits and underscores, not starting with a digit.
	// Default: [DefaultTablePrefix] ("m2mauth_").
	TablePrefix string
	// Now is the clock that stamps CreatedAt, UpdatedAt, applied
	// migrations, audit events and watermarks, and tells which
	// revocations are dead. Replicas sharing the database should have
	// clocks that agree to well within a second: a watermark is set by
	// the clock of the replica that revokes. Default: [time.Now].
	Now func() time.Time
	// Auditor, when set, receives an event for every change made through
	// the Store's [m2mauth.ClientManager] methods, once the change has
	// committed; [Store] lists the events. It may be an [Auditor] on the
	// same database: it is called after the transaction, so it never
	// waits for the Store's locks. Default: nil, no events.
	Auditor m2mauth.Auditor
	// Logger receives the errors of the pruning of revocations that
	// [Store.RevocationsSince] runs, which do not fail it. Default:
	// [slog.Default].
	Logger *slog.Logger
}

// Store is a [m2mauth.ClientManager], [m2mauth.Revoker] and
// [m2mauth.RevocationFeed] over a *sql.DB holding the tables that
// [Store.Migrate] creates. It is safe for concurrent use, by many
// goroutines and by many processes sharing the database: every change is
// one transaction that first locks the client's row (SELECT ... FOR UPDATE
// on PostgreSQL and MySQL; on SQLite the transaction takes the database
// write lock with BEGIN IMMEDIATE). A Store never keeps a reference to a
// Client passed to it, and every Client it returns is the caller's.
//
// The zero value is not usable; call [New].
//
// # Revocations
//
// A client's watermark is set to the Store's clock's now, unless a later
// one is set already, by [Store.RevokeClientTokens], by SetDisabled(true)
// (every call, even on a client already disabled), by an UpdateClient
// that turns Disabled on, and by DeleteClient, each in the transaction of
// its change, which also sets the client's TokensRevokedAt (but for
// DeleteClient) and increments the revocations' version. Re-enabling a
// client leaves its watermark: its old tokens stay revoked, and tokens
// issued from the next second on are valid. A watermark outlives its
// client: a client created under the id of a deleted one starts with the
// deleted one's TokensRevokedAt while its watermark is live. A client
// created with a TokensRevokedAt keeps it as given, and gets that
// watermark too (never later than now). [Store.Client] reads
// TokensRevokedAt and CanIntrospect in its one query.
//
// # Audit events
//
// With [Config.Auditor], every change that commits sends the auditor the
// events below, after the commit and before the method returns; a change
// that fails or rolls back sends none. A process that dies between the
// commit and the call loses the events of that change. Each event has the
// Time of the change (the clock of [Config.Now], as for UpdatedAt), its
// Type, the ClientID, the SecretID where one is concerned, and a Reason
// naming the fields whose value the call changed, comma-separated in the
// order of [m2mauth.Client]'s fields ("grants", "public", "disabled",
// "token_ttl", "introspect"), or empty when it changed none. The Store
// finds what changed by comparing the client as stored, read under the
// row lock, with the result. No event holds a secret, a hash or a token
// id.
//
//   - CreateClient: [m2mauth.EventClientCreated], Reason naming the
//     fields set to other than their zero value, then one
//     [m2mauth.EventSecretAdded] for each of the client's secrets.
//   - UpdateClient: [m2mauth.EventClientUpdated]; and when Disabled
//     changed, [m2mauth.EventClientDisabled] or [m2mauth.EventClientEnabled]
//     too, with Reason "disabled"; when it turned Disabled on, then
//     [m2mauth.EventTokensRevoked] with Reason "disabled".
//   - AddSecret: [m2mauth.EventSecretAdded].
//   - ExpireSecret: [m2mauth.EventSecretExpiring], Reason "expires_at"
//     when it set a new expiry, "expires_at_removed" when it removed one,
//     empty when the expiry was already as asked (to the microsecond).
//   - RemoveSecret: [m2mauth.EventSecretRemoved].
//   - SetDisabled: [m2mauth.EventClientDisabled] or
//     [m2mauth.EventClientEnabled], Reason "disabled" when the client was
//     not already so; when disabling, then [m2mauth.EventTokensRevoked]
//     with Reason "disabled".
//   - DeleteClient: [m2mauth.EventClientDeleted], then
//     [m2mauth.EventTokensRevoked] with Reason "deleted".
//   - RevokeClientTokens: [m2mauth.EventTokensRevoked], Reason "revoke".
//   - RevokeAllTokens: [m2mauth.EventTokensRevoked] with an empty
//     ClientID and Reason "revoke_all".
//   - RevokeToken: none; the revocation endpoint (RFC 7009) audits it.
//
// An [Auditor] writes these events to the audit table with the token
// endpoint's, where [Store.AuditEvents] reads them back.
type Store struct {
	db         *sql.DB
	dialect    Dialect
	prefix     string
	q          *queries
	now        func() time.Time
	auditor    m2mauth.Auditor // nil for none
	logger     *slog.Logger
	migrations []migration
	read       lazyStmt // the hot-path query of Client
	version    lazyStmt // the revocations' version, read by every poll
	// On SQLite, Client keeps the clients it reads (see Store.Client),
	// which the two statements read with the clients' stamp; noStamp
	// is the unix nanosecond until which it does not, the schema having
	// no stamp.
	stamped   lazyStmt
	stamp     lazyStmt
	stampConn *stampReader
	clients   clientCache
	noStamp   atomic.Int64
	// nextPrune is the unix microsecond from which RevocationsSince
	// prunes.
	nextPrune atomic.Int64
}

var _ m2mauth.ClientManager = (*Store)(nil)

// New returns a store that keeps clients in db, speaking dialect. It checks
// its arguments and the embedded schema now but does not touch the
// database: call [Store.Migrate] to create or update the tables. db stays
// the caller's to configure and to close.
func New(db *sql.DB, dialect Dialect, cfg Config) (*Store, error) {
	prefix, q, err := prepare(db, dialect, cfg.TablePrefix)
	if err != nil {
		return nil, err
	}
	migrations, err := loadMigrations(dialect, prefix)
	if err != nil {
		return nil, err
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	s := &Store{
		db:         db,
		dialect:    dialect,
		prefix:     prefix,
		q:          q,
		now:        now,
		auditor:    cfg.Auditor,
		logger:     logger,
		migrations: migrations,
		read:       lazyStmt{db: db, query: cmp.Or(q.clientRow, q.client)},
		version:    lazyStmt{db: db, query: q.revocationVersion},
		stamped:    lazyStmt{db: db, query: q.stampedRow},
		stamp:      lazyStmt{db: db, query: q.clientStamp},
		stampConn:  newStampReader(db, q.clientStamp),
	}
	s.nextPrune.Store(math.MinInt64)
	return s, nil
}

// tablePrefix returns p, or the default for an empty p, after checking
// that it is safe to write into SQL as part of an unquoted identifier.
func tablePrefix(p string) (string, error) {
	if p == "" {
		return DefaultTablePrefix, nil
	}
	if len(p) > maxPrefixLen {
		return "", fmt.Errorf("sqlstore: table prefix %q is longer than %d characters", p, maxPrefixLen)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c == '_' || c >= '0' && c <= '9' && i > 0) {
			return "", fmt.Errorf("sqlstore: table prefix %q must be lower-case ASCII letters, digits and underscores, not starting with a digit", p)
		}
	}
	return p, nil
}

// Close releases the prepared statements behind [Store.Client] and
// [Store.RevocationsSince], which return an error after it, while the
// other methods keep working, and gives back to db's pool the connection
// that Client reads the clients' stamp on (SQLite). It does not close the
// *sql.DB.
func (s *Store) Close() error {
	return errors.Join(s.read.close(), s.version.close(), s.stamped.close(), s.stamp.close(), s.stampConn.close())
}

// Client returns the client with the given id, or an error wrapping
// [m2mauth.ErrClientNotFound]. It runs one query, a prepared statement
// that returns the client row, its secrets and its grants in one round
// trip; any failure of the database is returned as an error that does not
// wrap ErrClientNotFound.
//
// On SQLite the Store keeps the clients it reads (up to 4,096), each with
// the clients' stamp it was read under: a random number that every change
// to a client, its secrets or its grants replaces in its own transaction,
// by triggers, whoever makes the change (this Store, another process, an
// operator's SQL). While the stamp is unchanged, Client reads only the
// stamp and returns a copy of the client it keeps, so a change takes
// effect on the next call as before; after a change, it reads the client
// again, with the stamp, in one statement. A schema that [Store.Migrate]
// has not brought up to date has no stamp: Client then reads every client
// from the database.
//
// On SQLite in WAL mode, when db allows at least four open connections
// (or any number), the Store reads the stamp on a connection it takes from
// db's pool for 100ms at a time, one read at a time, where the query needs no
// goroutine to watch ctx; ctx bounds the wait for it, and a call that
// waited may take the stamp of a read that began after the call did.
// After db.Close, lookups fail once that lease has ended; [Store.Close]
// gives the connection back at once.
func (s *Store) Client(ctx context.Context, id string) (*m2mauth.Client, error) {
	return s.client(ctx, id, false)
}

// SharedClient returns the client with the given id, as [Store.Client]
// does, but shared with other callers, who must not modify it (see
// [m2mauth.ClientSharer]). On SQLite, while the clients' stamp is
// unchanged, it is the client the Store keeps, without a copy; elsewhere
// it is what Client returns.
func (s *Store) SharedClient(ctx context.Context, id string) (*m2mauth.Client, error) {
	return s.client(ctx, id, true)
}

// SharingStore returns s: see [m2mauth.ClientSharer].
func (s *Store) SharingStore() m2mauth.ClientStore { return s }

// client is Client, or SharedClient when shared is set.
func (s *Store) client(ctx context.Context, id string, shared bool) (*m2mauth.Client, error) {
	if !m2mauth.ValidClientID(id) {
		// No such client can be stored; spare the database.
		return nil, notFound(id)
	}
	if s.q.stampedRow != "" && s.stampExpected() {
		c, err := s.cachedClient(ctx, id, shared)
		if !errors.Is(err, errNoStamp) {
			if err != nil {
				return nil, fmt.Errorf("sqlstore: client %q: %w", id, err)
			}
			return c, nil
		}
	}
	stmt, err := s.read.get(ctx)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: client %q: %w", id, err)
	}
	if s.q.clientRow != "" {
		c, err := decodeClientRow(stmt.QueryRowContext(ctx, id), id, nil)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: client %q: %w", id, err)
		}
		return c, nil
	}
	rows, err := stmt.QueryContext(ctx, id, id, id)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: client %q: %w", id, err)
	}
	cs, err := decodeClients(rows, nil)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: client %q: %w", id, err)
	}
	if len(cs) == 0 {
		return nil, notFound(id)
	}
	return cs[0], nil
}

// CreateClient stores a copy of c, setting CreatedAt and UpdatedAt to now
// when they are zero. It returns the error of [m2mauth.Client.Validate]
// for a malformed client, an error for a secret id, secret hash or
// audience the tables cannot hold (more than 255 bytes, invalid UTF-8, a
// NUL byte), and an error wrapping [m2mauth.ErrClientExists] if the id is
// taken. TokensRevokedAt is kept as given, or is the live watermark of a
// deleted client of the same id when that is later (see [Store]).
func (s *Store) CreateClient(ctx context.Context, c *m2mauth.Client) error {
	if c == nil {
		return errors.New("sqlstore: nil client")
	}
	if err := c.Validate(); err != nil {
		return err
	}
	if err := checkColumns(c); err != nil {
		return fmt.Errorf("sqlstore: client %q: %w", c.ID, err)
	}
	now := s.now()
	created, updated := c.CreatedAt, c.UpdatedAt
	if created.IsZero() {
		created = now
	}
	if updated.IsZero() {
		updated = now
	}
	events := []m2mauth.AuditEvent{event(now, m2mauth.EventClientCreated, c.ID, "", m2mauth.ChangedFields(&m2mauth.Client{}, c))}
	for _, sec := range c.Secrets {
		events = append(events, event(now, m2mauth.EventSecretAdded, c.ID, sec.ID, ""))
	}
	err := s.write(ctx, func(q querier) error {
		exists, err := rowExists(ctx, q, s.q.clientExists, c.ID)
		if err != nil {
			return err
		}
		if exists {
			return m2mauth.ErrClientExists
		}
		// A watermark outlives its client, so a client registered again
		// under the id of a deleted one starts with its watermark.
		revoked, err := s.liveWatermark(ctx, q, c.ID, now)
		if err != nil {
			return err
		}
		if c.TokensRevokedAt.After(revoked) {
			revoked = c.TokensRevokedAt
		}
		if _, err := q.ExecContext(ctx, s.q.insertClient, c.ID, c.Public, c.Disabled, c.CanIntrospect, int64(c.TokenTTL),
			nullMicros(revoked), created.UnixMicro(), updated.UnixMicro()); err != nil {
			return err
		}
		// A watermark given with the client is set too, though never
		// later than now.
		at := c.TokensRevokedAt
		if at.After(now) {
			at = now
		}
		if m2mauth.WatermarkLive(at, now) {
			if err := s.revoke(ctx, q, kindClient, c.ID, at, at.Add(m2mauth.MaxClientTokenTTL+m2mauth.RevocationGrace)); err != nil {
				return err
			}
		}
		for i, sec := range c.Secrets {
			if err := s.insertSecret(ctx, q, c.ID, int64(i), sec); err != nil {
				return err
			}
		}
		return s.insertGrants(ctx, q, c.ID, c.Grants)
	})
	s.auditLate(ctx, err, events)
	if err != nil && !errors.Is(err, m2mauth.ErrClientExists) {
		// A concurrent CreateClient may have won the race between the
		// check and the insert; the database refused ours with a
		// constraint error whose shape depends on the driver.
		if exists, cerr := rowExists(ctx, s.db, s.q.clientExists, c.ID); cerr == nil && exists {
			err = fmt.Errorf("%w (%v)", m2mauth.ErrClientExists, err)
		}
	}
	if err != nil {
		return fmt.Errorf("sqlstore: client %q: %w", c.ID, err)
	}
	s.audit(ctx, events)
	return nil
}

// UpdateClient replaces the grants, Public, Disabled, TokenTTL and
// CanIntrospect of an existing client and sets UpdatedAt; secrets,
// TokensRevokedAt and CreatedAt stay as stored. The result is checked
// with [m2mauth.Client.Validate] (so a client that has secrets cannot
// become public) and nothing changes on error. When it turns Disabled on,
// it revokes the client's tokens in the same transaction, as
// [Store.RevokeClientTokens] does. A c with an UpdatedAt is written only
// over the client as it was then (see [m2mauth.ClientManager.UpdateClient]).
func (s *Store) UpdateClient(ctx context.Context, c *m2mauth.Client) error {
	if c == nil {
		return errors.New("sqlstore: nil client")
	}
	return s.modify(ctx, c.ID, true, func(q querier, cur *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		if !c.UpdatedAt.IsZero() && c.UpdatedAt.UnixMicro() != cur.UpdatedAt.UnixMicro() {
			return nil, m2mauth.ErrClientChanged
		}
		next := c.Clone()
		next.Secrets, next.CreatedAt = cur.Secrets, cur.CreatedAt
		if err := next.Validate(); err != nil {
			return nil, err
		}
		if err := checkColumns(next); err != nil {
			return nil, err
		}
		if _, err := q.ExecContext(ctx, s.q.updateClient, next.Public, next.Disabled, next.CanIntrospect, int64(next.TokenTTL),
			now.UnixMicro(), next.ID); err != nil {
			return nil, err
		}
		if _, err := q.ExecContext(ctx, s.q.deleteGrants, next.ID); err != nil {
			return nil, err
		}
		if err := s.insertGrants(ctx, q, next.ID, next.Grants); err != nil {
			return nil, err
		}
		events := []m2mauth.AuditEvent{event(now, m2mauth.EventClientUpdated, cur.ID, "", m2mauth.ChangedFields(cur, next))}
		if next.Disabled != cur.Disabled {
			events = append(events, event(now, disabledEvent(next.Disabled), cur.ID, "", "disabled"))
		}
		if next.Disabled && !cur.Disabled {
			if err := s.revokeClient(ctx, q, cur.ID, now, true); err != nil {
				return nil, err
			}
			events = append(events, event(now, m2mauth.EventTokensRevoked, cur.ID, "", "disabled"))
		}
		return events, nil
	})
}

// AddSecret adds sec to a client and sets its UpdatedAt. The client with
// the new secret must pass [m2mauth.Client.Validate]: a duplicate or empty
// secret id, an unreadable hash or a public client is refused.
func (s *Store) AddSecret(ctx context.Context, clientID string, sec m2mauth.Secret) error {
	return s.modify(ctx, clientID, true, func(q querier, cur *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		if err := s.addSecret(ctx, q, cur, sec); err != nil {
			return nil, err
		}
		if err := s.touch(ctx, q, clientID, now); err != nil {
			return nil, err
		}
		return []m2mauth.AuditEvent{event(now, m2mauth.EventSecretAdded, clientID, sec.ID, "")}, nil
	})
}

// addSecret adds sec to cur, the client as read in the transaction of q,
// and to its rows, once cur with it passes [m2mauth.Client.Validate].
func (s *Store) addSecret(ctx context.Context, q querier, cur *m2mauth.Client, sec m2mauth.Secret) error {
	cur.Secrets = append(cur.Secrets, sec)
	if err := cur.Validate(); err != nil {
		return err
	}
	if err := checkColumns(&m2mauth.Client{Secrets: []m2mauth.Secret{sec}}); err != nil {
		return err
	}
	var seq int64
	if err := q.QueryRowContext(ctx, s.q.nextSecretSeq, cur.ID).Scan(&seq); err != nil {
		return err
	}
	return s.insertSecret(ctx, q, cur.ID, seq, sec)
}

// RotateSecret adds sec to a client, as [Store.AddSecret] does, and in
// the same transaction makes each of its other secrets expire at
// othersExpireAt, unless it expires earlier already: a rotation never
// lengthens a secret's life, so one with a long grace period run beside
// one with none (a leaked secret) cannot revive the leaked secret, and
// a rotation that fails changes nothing. It sends
// [m2mauth.EventSecretAdded], then an [m2mauth.EventSecretExpiring] for
// each secret whose expiry it moved.
func (s *Store) RotateSecret(ctx context.Context, clientID string, sec m2mauth.Secret, othersExpireAt time.Time) error {
	if othersExpireAt.IsZero() {
		return errors.New("sqlstore: RotateSecret needs the time the other secrets expire")
	}
	return s.modify(ctx, clientID, true, func(q querier, cur *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		others := cur.Secrets[:len(cur.Secrets):len(cur.Secrets)]
		if err := s.addSecret(ctx, q, cur, sec); err != nil {
			return nil, err
		}
		events := []m2mauth.AuditEvent{event(now, m2mauth.EventSecretAdded, clientID, sec.ID, "")}
		at := othersExpireAt.Truncate(time.Microsecond)
		for _, o := range others {
			if !o.ExpiresAt.IsZero() && !o.ExpiresAt.After(at) {
				continue
			}
			if _, err := q.ExecContext(ctx, s.q.expireSecret, nullMicros(at), clientID, o.ID); err != nil {
				return nil, err
			}
			events = append(events, event(now, m2mauth.EventSecretExpiring, clientID, o.ID, m2mauth.ExpiryChange(o.ExpiresAt, at)))
		}
		if err := s.touch(ctx, q, clientID, now); err != nil {
			return nil, err
		}
		return events, nil
	})
}

// ExpireSecret sets the expiry of one secret (a zero at removes it) and
// the client's UpdatedAt. It returns an error wrapping
// [m2mauth.ErrSecretNotFound] for an unknown secret id. Expiry times are
// stored to the microsecond, rounded down.
func (s *Store) ExpireSecret(ctx context.Context, clientID, secretID string, at time.Time) error {
	return s.modify(ctx, clientID, false, func(q querier, _ *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		var old sql.NullInt64
		switch err := q.QueryRowContext(ctx, s.q.secretExpiry, clientID, secretID).Scan(&old); {
		case errors.Is(err, sql.ErrNoRows):
			return nil, fmt.Errorf("secret %q: %w", secretID, m2mauth.ErrSecretNotFound)
		case err != nil:
			return nil, err
		}
		if _, err := q.ExecContext(ctx, s.q.expireSecret, nullMicros(at), clientID, secretID); err != nil {
			return nil, err
		}
		if err := s.touch(ctx, q, clientID, now); err != nil {
			return nil, err
		}
		var was time.Time // as stored: to the microsecond
		if old.Valid {
			was = time.UnixMicro(old.Int64)
		}
		return []m2mauth.AuditEvent{event(now, m2mauth.EventSecretExpiring, clientID, secretID, m2mauth.ExpiryChange(was, at.Truncate(time.Microsecond)))}, nil
	})
}

// RemoveSecret deletes one secret and sets the client's UpdatedAt. It
// returns an error wrapping [m2mauth.ErrSecretNotFound] for an unknown
// secret id.
func (s *Store) RemoveSecret(ctx context.Context, clientID, secretID string) error {
	return s.modify(ctx, clientID, false, func(q querier, _ *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		res, err := q.ExecContext(ctx, s.q.deleteSecret, clientID, secretID)
		if err != nil {
			return nil, err
		}
		if n, err := res.RowsAffected(); err != nil {
			return nil, err
		} else if n == 0 {
			return nil, fmt.Errorf("secret %q: %w", secretID, m2mauth.ErrSecretNotFound)
		}
		if err := s.touch(ctx, q, clientID, now); err != nil {
			return nil, err
		}
		return []m2mauth.AuditEvent{event(now, m2mauth.EventSecretRemoved, clientID, secretID, "")}, nil
	})
}

// SetDisabled disables or re-enables a client and sets its UpdatedAt.
// Disabling it, even when it is disabled already, also revokes its tokens
// in the same transaction, as [Store.RevokeClientTokens] does;
// re-enabling it leaves them revoked, and tokens issued from the next
// second on are valid.
func (s *Store) SetDisabled(ctx context.Context, clientID string, disabled bool) error {
	return s.modify(ctx, clientID, true, func(q querier, cur *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		if _, err := q.ExecContext(ctx, s.q.setDisabled, disabled, now.UnixMicro(), clientID); err != nil {
			return nil, err
		}
		reason := ""
		if cur.Disabled != disabled {
			reason = "disabled"
		}
		events := []m2mauth.AuditEvent{event(now, disabledEvent(disabled), clientID, "", reason)}
		if disabled {
			if err := s.revokeClient(ctx, q, clientID, now, true); err != nil {
				return nil, err
			}
			events = append(events, event(now, m2mauth.EventTokensRevoked, clientID, "", "disabled"))
		}
		return events, nil
	})
}

// DeleteClient removes a client with its secrets and grants, and revokes
// every token issued to it so far, in one transaction: the client's
// watermark outlives it, so its tokens stay revoked if the id is
// registered again. It deletes the secrets and grants itself rather than
// relying on ON DELETE CASCADE, so that a SQLite connection without
// foreign_keys enabled cannot leave them behind for a later client of the
// same id.
func (s *Store) DeleteClient(ctx context.Context, clientID string) error {
	return s.modify(ctx, clientID, false, func(q querier, _ *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		if err := s.revokeClient(ctx, q, clientID, now, false); err != nil {
			return nil, err
		}
		for _, stmt := range []string{s.q.deleteSecrets, s.q.deleteGrants, s.q.deleteClient} {
			if _, err := q.ExecContext(ctx, stmt, clientID); err != nil {
				return nil, err
			}
		}
		return []m2mauth.AuditEvent{
			event(now, m2mauth.EventClientDeleted, clientID, "", ""),
			event(now, m2mauth.EventTokensRevoked, clientID, "", "deleted"),
		}, nil
	})
}

// ListClients returns up to limit clients with ids greater than after, in
// ascending byte order of id; limit <= 0 means 100. Pass the last id of a
// page as after to get the next; an empty page means the end. One query
// returns the page with its secrets and grants.
func (s *Store) ListClients(ctx context.Context, after string, limit int) ([]*m2mauth.Client, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.db.QueryContext(ctx, s.q.list, listBound(after), int64(limit))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: list clients: %w", err)
	}
	cs, err := decodeClients(rows, nil)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: list clients: %w", err)
	}
	return cs, nil
}

// listBound returns a string that selects, with "id > bound", exactly the
// ids that are greater than after. Ids are printable ASCII (%x20-7E); an
// after holding other bytes is cut where the first one appears, so the
// database never sees a string it may be unable to store or compare
// (PostgreSQL refuses NUL and invalid UTF-8).
func listBound(after string) string {
	for i := 0; i < len(after); i++ {
		switch b := after[i]; {
		case b < 0x20:
			// Every id that starts with after[:i] and goes on has a
			// larger byte at i, so it sorts after "after".
			return after[:i]
		case b > 0x7e:
			// Every id that starts with after[:i] has a smaller byte at
			// i (or ends there), so none sorts after "after": skip past
			// the largest of them.
			return after[:i] + strings.Repeat("~", max(maxColumnLen-i, 0))
		}
	}
	return after
}

// modify runs f in a write transaction after locking the row of client id,
// and returns an error wrapping [m2mauth.ErrClientNotFound] if there is
// none. With load, f receives the client as stored. now is the new
// UpdatedAt. The events f returns go to the auditor once the transaction
// has committed.
func (s *Store) modify(ctx context.Context, id string, load bool,
	f func(q querier, cur *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error)) error {
	if !m2mauth.ValidClientID(id) {
		return notFound(id)
	}
	var events []m2mauth.AuditEvent
	err := s.write(ctx, func(q querier) error {
		exists, err := rowExists(ctx, q, s.q.lockClient, id)
		if err != nil {
			return err
		}
		if !exists {
			return m2mauth.ErrClientNotFound
		}
		var cur *m2mauth.Client
		if load {
			// The row lock is held, and every writer takes it first: this
			// read sees the client as no one else can change it until
			// commit.
			rows, err := q.QueryContext(ctx, s.q.client, id, id, id)
			if err != nil {
				return err
			}
			cs, err := decodeClients(rows, nil)
			if err != nil {
				return err
			}
			if len(cs) == 0 {
				return m2mauth.ErrClientNotFound
			}
			cur = cs[0]
		}
		events, err = f(q, cur, s.now())
		return err
	})
	if err != nil {
		s.auditLate(ctx, err, events)
		return fmt.Errorf("sqlstore: client %q: %w", id, err)
	}
	s.audit(ctx, events)
	return nil
}

// audit sends events to the auditor, if there is one.
func (s *Store) audit(ctx context.Context, events []m2mauth.AuditEvent) {
	if s.auditor == nil {
		return
	}
	for _, e := range events {
		s.auditor.Audit(ctx, e)
	}
}

// event returns the audit event of one change.
func event(now time.Time, typ m2mauth.AuditEventType, clientID, secretID, reason string) m2mauth.AuditEvent {
	return m2mauth.AuditEvent{Time: now, Type: typ, ClientID: clientID, SecretID: secretID, Reason: reason}
}

// disabledEvent returns the event type of setting Disabled to disabled.
func disabledEvent(disabled bool) m2mauth.AuditEventType {
	if disabled {
		return m2mauth.EventClientDisabled
	}
	return m2mauth.EventClientEnabled
}

func (s *Store) insertSecret(ctx context.Context, q querier, clientID string, seq int64, sec m2mauth.Secret) error {
	_, err := q.ExecContext(ctx, s.q.insertSecret, clientID, sec.ID, seq, sec.Hash,
		sec.CreatedAt.UnixMicro(), nullMicros(sec.ExpiresAt))
	return err
}

func (s *Store) insertGrants(ctx context.Context, q querier, clientID string, grants map[string]m2mauth.Scopes) error {
	for aud, scopes := range grants {
		if _, err := q.ExecContext(ctx, s.q.insertGrant, clientID, aud, scopes.String()); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) touch(ctx context.Context, q querier, clientID string, now time.Time) error {
	_, err := q.ExecContext(ctx, s.q.touchClient, now.UnixMicro(), clientID)
	return err
}

// write runs f in a transaction that it commits if f succeeds and rolls
// back otherwise. On SQLite the transaction begins with BEGIN IMMEDIATE,
// taking the write lock at once: a deferred transaction that reads first
// could fail to upgrade its lock, with SQLITE_BUSY, when another
// connection writes in between. Elsewhere a transaction the database
// rolled back to break a deadlock (MySQL's gap locks make them between
// changes to different clients) is run again, a few times.
func (s *Store) write(ctx context.Context, f func(q querier) error) error {
	if s.dialect == SQLite {
		conn, err := s.db.Conn(ctx)
		if err != nil {
			return err
		}
		defer conn.Close()
		return withImmediate(ctx, conn, f)
	}
	var b backoff
	for try := 1; ; try++ {
		err := inTx(ctx, s.db, s.dialect, f)
		if err == nil || try == maxWriteTries || !txConflict(err) {
			return err
		}
		if werr := b.wait(ctx); werr != nil {
			return err
		}
	}
}

// maxWriteTries bounds the runs of one write that deadlocks.
const maxWriteTries = 8

// querier is what *sql.DB, *sql.Conn and *sql.Tx have in common.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// inTx runs f in a transaction begun on b, of dialect d.
func inTx(ctx context.Context, b interface {
	BeginTx(context.Context, *sql.TxOptions) (*sql.Tx, error)
}, d Dialect, f func(q querier) error) error {
	tx, err := b.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return commit(ctx, tx, d)
}

// commit commits tx, of dialect d, within ctx. MySQL's driver commits
// without a context: a server that stalls at that moment would hold the
// caller until the connection's read timeout, past every timeout of
// ours (a token request's StoreTimeout, an audit write's Timeout, Close).
// There, commit waits for ctx at most, and reports a commit it gave up on
// as a *pendingCommit, which wraps ctx's error. That commit goes on in
// the background, holding its connection, and may still succeed: see
// [Store.auditLate].
func commit(ctx context.Context, tx *sql.Tx, d Dialect) error {
	if d != MySQL || ctx.Done() == nil {
		return tx.Commit()
	}
	done := make(chan error, 1)
	go func() { done <- tx.Commit() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		select {
		case err := <-done: // both at once: the commit's answer wins
			return err
		default:
		}
		return &pendingCommit{done: done, cause: context.Cause(ctx)}
	}
}

// pendingCommit is the error of a commit that commit gave up waiting for:
// done receives its outcome.
type pendingCommit struct {
	done  <-chan error
	cause error
}

func (p *pendingCommit) Error() string { return "commit: " + p.cause.Error() }
func (p *pendingCommit) Unwrap() error { return p.cause }

// auditLate sends events to the auditor if err is a commit given up on
// (see commit) that then succeeds: the change was made, and its caller
// was told it failed.
func (s *Store) auditLate(ctx context.Context, err error, events []m2mauth.AuditEvent) {
	var p *pendingCommit
	if s.auditor == nil || len(events) == 0 || !errors.As(err, &p) {
		return
	}
	ctx = context.WithoutCancel(ctx)
	go func() {
		if <-p.done == nil {
			s.logger.WarnContext(ctx, "sqlstore: a change reported as failed, its commit having timed out, was committed after all", "events", len(events))
			s.audit(ctx, events)
		}
	}()
}

// withImmediate runs f in a SQLite transaction begun with BEGIN IMMEDIATE
// on conn. database/sql cannot begin such a transaction itself.
func withImmediate(ctx context.Context, conn *sql.Conn, f func(q querier) error) error {
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return err
	}
	err := f(conn)
	if err == nil {
		_, err = conn.ExecContext(ctx, "COMMIT")
		if err == nil {
			return nil
		}
	}
	if _, rerr := conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK"); rerr != nil {
		// The transaction may still be open: do not hand the
		// connection back to the pool.
		discard(conn)
	}
	return err
}

// rowExists reports whether query, run with args, returns a row.
func rowExists(ctx context.Context, q querier, query string, args ...any) (bool, error) {
	var one int
	switch err := q.QueryRowContext(ctx, query, args...).Scan(&one); {
	case err == nil:
		return true, nil
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	default:
		return false, err
	}
}

// decodeClients reads the rows of the client or list query (see
// [queries]) into clients, in ascending id order, and closes rows. Rows of
// a client whose own row is missing are ignored. With granted, it reads
// limitGrantClient's rows, and sets granted from the limiter's row.
func decodeClients(rows *sql.Rows, granted *int64) (out []*m2mauth.Client, err error) {
	defer func() {
		if cerr := rows.Close(); err == nil && cerr != nil {
			out, err = nil, cerr
		}
	}()
	type seqSecret struct {
		seq int64
		sec m2mauth.Secret
	}
	type building struct {
		c       m2mauth.Client
		found   bool
		secrets []seqSecret
	}
	byID := make(map[string]*building, 1)
	var (
		kind                         int64
		cid                          string
		public, disabled, introspect sql.NullBool
		n1, n2, n3, n4               sql.NullInt64
		s1, s2                       sql.NullString
		order                        []string
	)
	for rows.Next() {
		if err := rows.Scan(&kind, &cid, &public, &disabled, &introspect, &n1, &n2, &n3, &n4, &s1, &s2); err != nil {
			return nil, err
		}
		if kind == 3 && granted != nil {
			// The limiter's row of limitGrantClient.
			*granted = n1.Int64
			continue
		}
		b := byID[cid]
		if b == nil {
			b = &building{c: m2mauth.Client{ID: cid}}
			byID[cid] = b
			order = append(order, cid)
		}
		switch kind {
		case 0:
			b.found = true
			b.c.Public = public.Bool
			b.c.Disabled = disabled.Bool
			b.c.CanIntrospect = introspect.Bool
			b.c.TokenTTL = time.Duration(n1.Int64)
			b.c.CreatedAt = fromMicros(n2.Int64)
			b.c.UpdatedAt = fromMicros(n3.Int64)
			if n4.Valid {
				b.c.TokensRevokedAt = fromMicros(n4.Int64)
			}
		case 1:
			sec := m2mauth.Secret{ID: s1.String, Hash: s2.String, CreatedAt: fromMicros(n2.Int64)}
			if n3.Valid {
				sec.ExpiresAt = fromMicros(n3.Int64)
			}
			b.secrets = append(b.secrets, seqSecret{n1.Int64, sec})
		case 2:
			scopes, err := m2mauth.ParseScopes(s2.String)
			if err != nil {
				return nil, fmt.Errorf("client %q: audience %q: stored scopes: %w", cid, s1.String, err)
			}
			if b.c.Grants == nil {
				b.c.Grants = make(map[string]m2mauth.Scopes)
			}
			b.c.Grants[s1.String] = scopes
		default:
			return nil, fmt.Errorf("unexpected row kind %d", kind)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	slices.Sort(order)
	out = make([]*m2mauth.Client, 0, len(order))
	for _, id := range order {
		b := byID[id]
		if !b.found {
			continue
		}
		if len(b.secrets) > 0 {
			slices.SortFunc(b.secrets, func(x, y seqSecret) int { return cmp.Compare(x.seq, y.seq) })
			b.c.Secrets = make([]m2mauth.Secret, len(b.secrets))
			for i, s := range b.secrets {
				b.c.Secrets[i] = s.sec
			}
		}
		out = append(out, &b.c)
	}
	return out, nil
}

// decodeClientRow reads the row of clientRow for the client id or, given
// a stamp to store it in, the row of stampedRow: its columns, then its
// secrets as (seq, created_at, expires_at or "", secret_id,
// hash) and its grants as (audience, scopes), every field of each
// followed by a NUL but the last. No row is [m2mauth.ErrClientNotFound].
func decodeClientRow(row *sql.Row, id string, stamp *sql.NullInt64) (*m2mauth.Client, error) {
	c := &m2mauth.Client{ID: id}
	var (
		ttl, created, updated int64
		revoked               sql.NullInt64
		secrets, grants       sql.NullString
	)
	dest := []any{stamp, &c.Public, &c.Disabled, &c.CanIntrospect, &ttl, &created, &updated, &revoked, &secrets, &grants}
	if stamp == nil {
		dest = dest[1:]
	}
	err := row.Scan(dest...)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, m2mauth.ErrClientNotFound
	}
	if err != nil {
		return nil, err
	}
	c.TokenTTL = time.Duration(ttl)
	c.CreatedAt, c.UpdatedAt = fromMicros(created), fromMicros(updated)
	if revoked.Valid {
		c.TokensRevokedAt = fromMicros(revoked.Int64)
	}
	if secrets.Valid {
		f := strings.Split(secrets.String, "\x00")
		if len(f)%5 != 0 {
			return nil, errMalformedSecrets
		}
		seqs := make([]int64, len(f)/5)
		c.Secrets = make([]m2mauth.Secret, len(f)/5)
		for i := range c.Secrets {
			r := f[5*i : 5*i+5]
			// The errors name no field: misread, one could be a hash.
			seq, err1 := strconv.ParseInt(r[0], 10, 64)
			at, err2 := strconv.ParseInt(r[1], 10, 64)
			if err1 != nil || err2 != nil {
				return nil, errMalformedSecrets
			}
			seqs[i] = seq
			c.Secrets[i] = m2mauth.Secret{ID: r[3], Hash: r[4], CreatedAt: fromMicros(at)}
			if r[2] != "" {
				exp, err := strconv.ParseInt(r[2], 10, 64)
				if err != nil {
					return nil, errMalformedSecrets
				}
				c.Secrets[i].ExpiresAt = fromMicros(exp)
			}
		}
		sort.Sort(bySeq{seqs, c.Secrets})
	}
	if grants.Valid {
		f := strings.Split(grants.String, "\x00")
		if len(f)%2 != 0 {
			return nil, errors.New("stored grants: malformed")
		}
		c.Grants = make(map[string]m2mauth.Scopes, len(f)/2)
		for i := 0; i < len(f); i += 2 {
			scopes, err := m2mauth.ParseScopes(f[i+1])
			if err != nil {
				return nil, fmt.Errorf("audience %q: stored scopes: %w", f[i], err)
			}
			c.Grants[f[i]] = scopes
		}
	}
	return c, nil
}

// errMalformedSecrets is the error of secrets that clientRow could not
// have packed.
var errMalformedSecrets = errors.New("stored secrets: malformed")

// bySeq sorts secrets by their seq, in step.
type bySeq struct {
	seq     []int64
	secrets []m2mauth.Secret
}

func (b bySeq) Len() int           { return len(b.seq) }
func (b bySeq) Less(i, j int) bool { return b.seq[i] < b.seq[j] }
func (b bySeq) Swap(i, j int) {
	b.seq[i], b.seq[j] = b.seq[j], b.seq[i]
	b.secrets[i], b.secrets[j] = b.secrets[j], b.secrets[i]
}

// fromMicros is the inverse of [time.Time.UnixMicro], in UTC. The zero
// time survives the round trip.
func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

// nullMicros returns t in unix microseconds, or nil (NULL) for the zero
// time.
func nullMicros(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

// checkColumns refuses what Validate allows but the tables cannot hold:
// secret ids and audiences longer than 255 bytes, and text that is not
// valid UTF-8 or contains NUL (PostgreSQL refuses both).
func checkColumns(c *m2mauth.Client) error {
	for _, sec := range c.Secrets {
		if err := checkText("secret id", sec.ID, maxColumnLen); err != nil {
			return err
		}
		if err := checkText("secret hash", sec.Hash, 0); err != nil {
			return err
		}
	}
	for aud := range c.Grants {
		if err := checkText("audience", aud, maxColumnLen); err != nil {
			return err
		}
	}
	return nil
}

func checkText(what, v string, maxLen int) error {
	if maxLen > 0 && len(v) > maxLen {
		return fmt.Errorf("%s is longer than %d bytes", what, maxLen)
	}
	if !utf8.ValidString(v) || strings.IndexByte(v, 0) >= 0 {
		return fmt.Errorf("%s must be valid UTF-8 without NUL bytes", what)
	}
	return nil
}

func notFound(id string) error {
	return fmt.Errorf("sqlstore: client %q: %w", id, m2mauth.ErrClientNotFound)
}

// errClosed is returned by a statement used after Close.
var errClosed = errors.New("sqlstore: closed")

// lazyStmt is a statement prepared on first use, so that New needs no
// database and a failed preparation (the tables not migrated yet) is
// tried again on the next call. Once prepared, each use is one round trip
// on every engine, where an unprepared query with arguments costs the
// MySQL driver three.
type lazyStmt struct {
	db     *sql.DB
	query  string
	stmt   atomic.Pointer[sql.Stmt]
	mu     sync.Mutex // guards preparing and closed
	closed bool
}

func (l *lazyStmt) get(ctx context.Context) (*sql.Stmt, error) {
	if st := l.stmt.Load(); st != nil {
		return st, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errClosed
	}
	if st := l.stmt.Load(); st != nil {
		return st, nil
	}
	st, err := l.db.PrepareContext(ctx, l.query)
	if err != nil {
		return nil, err
	}
	l.stmt.Store(st)
	return st, nil
}

func (l *lazyStmt) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if st := l.stmt.Swap(nil); st != nil {
		return st.Close()
	}
	return nil
}

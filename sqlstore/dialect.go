package sqlstore

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/m2mauth/m2mauth"
)

// Dialect names the SQL database engine behind a *sql.DB. Each dialect
// states its own SQL: its schema, its placeholders ($1 or ?), its locking
// for migrations. It is a plain value, safe to copy and share.
type Dialect int

// The supported dialects.
const (
	// Postgres is PostgreSQL 10 or later, for example through
	// github.com/jackc/pgx/v5/stdlib.
	Postgres Dialect = iota + 1
	// MySQL is MySQL 8.0 or MariaDB 10.2 or later with InnoDB, for example
	// through github.com/go-sql-driver/mysql.
	MySQL
	// SQLite is SQLite 3.24 or later (for upserts), for example through
	// modernc.org/sqlite (pure Go, no cgo).
	SQLite
)

// String returns the name of d: "postgres", "mysql" or "sqlite".
func (d Dialect) String() string {
	switch d {
	case Postgres:
		return "postgres"
	case MySQL:
		return "mysql"
	case SQLite:
		return "sqlite"
	}
	return fmt.Sprintf("Dialect(%d)", int(d))
}

// queries holds every statement a Store or an Auditor runs, with the table
// prefix filled in.
//
// The read queries (client, list) return rows of one shape, so one decoder
// serves both:
//
//	kind  0 = client row, 1 = secret row, 2 = grant row
//	cid   the client id
//	public, disabled, introspect   client row only
//	n1, n2, n3                client: token_ttl_ns, created_at, updated_at
//	                          secret: seq, created_at, expires_at (nullable)
//	n4                        client: tokens_revoked_at (nullable)
//	s1, s2                    secret: secret_id, hash; grant: audience, scopes
//
// Each change to a client runs exactly one of updateClient, setDisabled
// and touchClient, which set its updated_at to the now they are given,
// or to one microsecond past the stored one if now is not later: each
// version of a client has its own updated_at, which [Store.UpdateClient]
// compares to tell a stale copy.
//
// client takes the client id three times (once per branch of the UNION
// ALL); list takes (after, limit).
//
// The statements that read the audit table take the same arguments, in
// the same order, on every dialect; times are in unix microseconds, an
// open end is the smallest or largest int64, and the range is since
// inclusive, until exclusive. usage and usageAll return rows of one shape:
//
//	kind        0 = the totals of a client, 1 = the count of one
//	            (event_type, reason) of a client
//	client_id   usageAll only
//	event_type, reason   kind 1 only; reason is empty but for
//	            client_auth_failed
//	n           the number of events
//	addresses, first_seen, last_seen   kind 0 only: the distinct non-empty
//	            remote_ip, the first and last event_time (NULL for none)
//
//	usage          (clientID, since, until, clientID, since, until)
//	usageAll       (since, until, limit, since, until)
//	auditByClient  (clientID, since, type, type, limit): [auditColumns],
//	               newest first; an empty type selects every type
//	auditAll       (since, type, type, limit)
//
// The [Limiter]'s statements take the same arguments, in the same order,
// on every dialect (MySQL's "?" cannot be reused, so a value needed twice
// is passed twice); times are in unix microseconds. Each reads or writes
// the two rows of one attempt: the address's own, whose client_id is
// empty and sorts first, and the client id's, (ip, clientID).
//
//	limitBegin    (): PostgreSQL only, first in each transaction
//	limitEnsure   (ip, ip, clientID): inserts whichever of the two rows
//	              is missing, with an empty history, and locks both; on
//	              SQLite, being a write, it takes the database write lock.
//	              PostgreSQL has none: its limitLock does the same.
//	limitLock     (ip, clientID): returns the two rows as
//	              [limitRowColumns], locked (FOR UPDATE on MySQL, an
//	              upsert on PostgreSQL, the database lock on SQLite)
//	limitPeek     (ip, clientID): returns the rows that exist, without
//	              locking or a transaction
//	limitWrite    (address value, client value) for each of refilled_at,
//	              pending, pending_addr, lease_until, authenticated_at,
//	              idle_at, then (ip, clientID): sets both rows
//	limitFastGrant (now, every, now+burst*every, knownWindow, now+lease,
//	              now, now, now+lease, now, every, now+burst*every, ip,
//	              clientID, now-knownWindow, now+slack, now, burst), of
//	              the client's bucket: grants an attempt of a client
//	              known at the address whose bucket has room for it, in
//	              one statement that changes the client's row only, as
//	              [Limiter] would in a transaction; it affects no row in
//	              any other case
//	limitFastGive (now, every, full, now, every, authenticated,
//	              now+knownWindow, knownWindow, now, authenticated, now,
//	              now, every, full, now, every, now, ip, clientID, now),
//	              authenticated being 1 or 0: ends a reservation that
//	              succeeded or was abandoned, in one statement that
//	              changes the client's row only, and settles its bucket
//	              if full as of full (refilled_at 0, see
//	              limitRow.settle); it
//	              affects no row when the reservations in flight hold
//	              tokens of the address's row
//	limitCleanup  (now, batch), rows idle and refilled by now; on MySQL
//	              (now, now, batch) selects the (ip, client_id) of the
//	              rows to delete, and limitCleanupRow (ip, clientID, now,
//	              now) deletes each
//
// The revocation statements take the same arguments, in the same order,
// on every dialect; times are in unix microseconds. Rows of the
// revocations table are (kind, id): ([kindClient], client id) for a
// client's watermark, at the watermark; ([kindToken], jti) for a revoked
// token, at its expiry. expires_at is when a row stops mattering.
//
//	clientRevoked     (at, clientID): sets the client's
//	                  tokens_revoked_at to at unless it is later (the
//	                  change's other statement sets its updated_at)
//	clientWatermark   (clientID, now): the client's live watermark, if any
//	upsertRevocation  (kind, id, at, expires_at, at, expires_at): inserts
//	                  a row, or moves an existing one to the later at;
//	                  affects no row when the one stored is not earlier
//	bumpVersion       (now): the version, one more, or now if that is
//	                  more
//	revokeAll         (at, now): the store-wide watermark, set to at unless
//	                  it is later, and the version, as bumpVersion
//	revocationVersion (): the version
//	loadRevocations   (now): the state row, as kind and id empty, at the
//	                  version and expires_at the store-wide watermark (0
//	                  for none); then the rows whose expires_at is not
//	                  before now
//	pruneRevocations  (now, batch): deletes up to batch rows whose
//	                  expires_at is before now; on MySQL it selects their
//	                  (kind, id), and pruneRevocationRows, followed by a
//	                  list of ids, (kind, now, ids...) deletes them
//
// The statements of managed signing keys take the same arguments, in the
// same order, on every dialect; times are in unix microseconds, NULL for
// a zero revoked_at. Those that insert-or-ignore affect one row when they
// insert and none when a unique key holds the values already (on MySQL,
// ON DUPLICATE KEY UPDATE of a column to itself, which the driver counts
// as no row affected, as for upsertRevocation).
//
//	signingKeys       (): [signingKeyColumns] of every key, by generation
//	addSigningKey     ([signingKeyColumns]): inserts unless the kid or the
//	                  generation is held
//	revokeSigningKey  (at, kid): sets revoked_at unless it is set
//	signingKeyExists  (kid): a row if the key is held
//	resealSigningKey  (sealed, kid)
//	deleteSigningKey  (kid)
//	deleteKeyEvents   (kid): the key's claims
//	claimKeyEvent     (kid, event_type): inserts unless claimed
type queries struct {
	client string
	list   string

	clientExists string
	lockClient   string
	insertClient string
	updateClient string
	setDisabled  string
	touchClient  string
	deleteClient string

	insertSecret  string
	nextSecretSeq string
	secretExpiry  string
	expireSecret  string
	deleteSecret  string
	deleteSecrets string

	insertGrant  string
	deleteGrants string

	insertAudit string
	// auditCharset: MySQL only, the connection's character sets (of what
	// the client sends, and what the server converts it to) and how many
	// text columns the Auditor writes are not utf8mb4 (see
	// Auditor.checkCharset).
	auditCharset string

	usage         string
	usageAll      string
	auditByClient string
	auditAll      string
	// issuedAddresses (since): client_id, remote_ip, first and last
	// event_time of the token_issued events since then, one row per
	// client and address.
	issuedAddresses string

	limitBegin     string // PostgreSQL only
	limitEnsure    string // MySQL and SQLite only
	limitLock      string
	limitPeek      string
	limitWrite     string
	limitFastGrant string
	limitFastGive  string
	// limitGrantClient: PostgreSQL and MySQL, limitFastGrant and client
	// in one round trip; its arguments are those of limitFastGrant, then
	// client's (the client id three times), those at the indexes
	// grantClientArgs when it is not nil.
	limitGrantClient string
	grantClientArgs  []int
	// grantClientRoutine: MySQL only, the CREATE PROCEDURE that
	// limitGrantClient calls (see [grantClientProcedure]).
	grantClientRoutine string
	// clientRow: SQLite only: what client returns, in one row (see
	// [decodeClientRow]); stampedRow the same, after the clients' stamp
	// (NULL if its row is gone) read in the same statement; clientStamp
	// the stamp alone (see [Store.Client]).
	clientRow       string
	stampedRow      string
	clientStamp     string
	limitCleanup    string
	limitCleanupRow string // MySQL only

	clientRevoked       string
	clientWatermark     string
	upsertRevocation    string
	bumpVersion         string
	revokeAll           string
	revocationVersion   string
	loadRevocations     string
	pruneRevocations    string
	pruneRevocationRows string // MySQL only

	signingKeys      string
	addSigningKey    string
	revokeSigningKey string
	signingKeyExists string
	resealSigningKey string
	deleteSigningKey string
	deleteKeyEvents  string
	claimKeyEvent    string

	createMigrations string
	appliedVersions  string
	insertVersion    string
	// migrateLock and migrateUnlock take the lock key (Postgres, an int64)
	// or name (MySQL, a string); SQLite has none and relies on BEGIN
	// IMMEDIATE instead.
	migrateLock   string
	migrateUnlock string
}

// auditColumns are the columns of an audit_events row that auditByClient
// and auditAll return, in the order [Store.AuditEvents] scans them.
const auditColumns = `event_time, event_type, client_id, remote_ip, user_agent, audience, scope, jti, secret_id, error_code, reason`

// usageTypes are the event types that [Store.Usage] counts, those of the
// token endpoint, as an SQL list.
const usageTypes = `('` + string(m2mauth.EventTokenIssued) + `', '` + string(m2mauth.EventAuthFailed) +
	`', '` + string(m2mauth.EventRateLimited) + `', '` + string(m2mauth.EventScopeDenied) +
	`', '` + string(m2mauth.EventAudienceDenied) + `', '` + string(m2mauth.EventRequestRejected) + `')`

// usageReason is the reason by which [Store.Usage] groups events: that of
// failed authentication, none for the other types.
const usageReason = `CASE WHEN event_type = '` + string(m2mauth.EventAuthFailed) + `' THEN reason ELSE '' END`

// limitAsync begins PostgreSQL's fast paths of the limiter: it turns off
// the synchronous commit of the statement's own transaction, as
// limitBegin does in a transaction, when the UPDATE reads it.
const limitAsync = `WITH async AS (SELECT set_config('synchronous_commit', 'off', true))`

// limitRowColumns are the columns of a rate_limits row that limitLock and
// limitPeek return, in the order [Limiter] scans them.
const limitRowColumns = `client_id, refilled_at, pending, pending_addr, lease_until, authenticated_at`

// signingKeyColumns are the columns of a signing_keys row, in the order
// signingKeys returns them and addSigningKey takes them.
const signingKeyColumns = `kid, algorithm, generation, sealed, published_at, active_at, revoked_at`

// prepare checks what every constructor is given and returns the table
// prefix (the default for "") and the statements of dialect.
func prepare(db *sql.DB, dialect Dialect, tablePrefixOpt string) (string, *queries, error) {
	if db == nil {
		return "", nil, errors.New("sqlstore: nil *sql.DB")
	}
	prefix, err := tablePrefix(tablePrefixOpt)
	if err != nil {
		return "", nil, err
	}
	q, err := newQueries(dialect, prefix)
	return prefix, q, err
}

// newQueries returns the statements of d for tables named with prefix,
// which the caller has validated.
func newQueries(d Dialect, prefix string) (*queries, error) {
	t := func(s string) string { return strings.ReplaceAll(s, "{p}", prefix) }
	switch d {
	case Postgres:
		return postgresQueries(t), nil
	case MySQL:
		return mysqlQueries(t), nil
	case SQLite:
		return sqliteQueries(t), nil
	}
	return nil, fmt.Errorf("sqlstore: unknown dialect %v", d)
}

func postgresQueries(t func(string) string) *queries {
	q := &queries{
		client: t(`SELECT 0 AS kind, c.id AS cid, c.public AS public, c.disabled AS disabled, c.can_introspect AS introspect,
       c.token_ttl_ns AS n1, c.created_at AS n2, c.updated_at AS n3, c.tokens_revoked_at AS n4, NULL::text AS s1, NULL::text AS s2
  FROM {p}clients c WHERE c.id = $1
UNION ALL
SELECT 1, s.client_id, NULL::boolean, NULL::boolean, NULL::boolean, s.seq, s.created_at, s.expires_at, NULL::bigint, s.secret_id, s.hash
  FROM {p}secrets s WHERE s.client_id = $2
UNION ALL
SELECT 2, g.client_id, NULL::boolean, NULL::boolean, NULL::boolean, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, g.audience, g.scopes
  FROM {p}grants g WHERE g.client_id = $3`),
		list: t(`WITH page_ids AS (SELECT id FROM {p}clients WHERE id > $1 ORDER BY id LIMIT $2)
SELECT 0 AS kind, c.id AS cid, c.public AS public, c.disabled AS disabled, c.can_introspect AS introspect,
       c.token_ttl_ns AS n1, c.created_at AS n2, c.updated_at AS n3, c.tokens_revoked_at AS n4, NULL::text AS s1, NULL::text AS s2
  FROM {p}clients c JOIN page_ids ON page_ids.id = c.id
UNION ALL
SELECT 1, s.client_id, NULL::boolean, NULL::boolean, NULL::boolean, s.seq, s.created_at, s.expires_at, NULL::bigint, s.secret_id, s.hash
  FROM {p}secrets s JOIN page_ids ON page_ids.id = s.client_id
UNION ALL
SELECT 2, g.client_id, NULL::boolean, NULL::boolean, NULL::boolean, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, g.audience, g.scopes
  FROM {p}grants g JOIN page_ids ON page_ids.id = g.client_id`),

		clientExists: t(`SELECT 1 FROM {p}clients WHERE id = $1`),
		lockClient:   t(`SELECT 1 FROM {p}clients WHERE id = $1 FOR UPDATE`),
		insertClient: t(`INSERT INTO {p}clients (id, public, disabled, can_introspect, token_ttl_ns, tokens_revoked_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`),
		updateClient: t(`UPDATE {p}clients SET public = $1, disabled = $2, can_introspect = $3, token_ttl_ns = $4, updated_at = GREATEST(updated_at + 1, $5) WHERE id = $6`),
		setDisabled:  t(`UPDATE {p}clients SET disabled = $1, updated_at = GREATEST(updated_at + 1, $2) WHERE id = $3`),
		touchClient:  t(`UPDATE {p}clients SET updated_at = GREATEST(updated_at + 1, $1) WHERE id = $2`),
		deleteClient: t(`DELETE FROM {p}clients WHERE id = $1`),

		insertSecret:  t(`INSERT INTO {p}secrets (client_id, secret_id, seq, hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)`),
		nextSecretSeq: t(`SELECT COALESCE(MAX(seq) + 1, 0) FROM {p}secrets WHERE client_id = $1`),
		secretExpiry:  t(`SELECT expires_at FROM {p}secrets WHERE client_id = $1 AND secret_id = $2`),
		expireSecret:  t(`UPDATE {p}secrets SET expires_at = $1 WHERE client_id = $2 AND secret_id = $3`),
		deleteSecret:  t(`DELETE FROM {p}secrets WHERE client_id = $1 AND secret_id = $2`),
		deleteSecrets: t(`DELETE FROM {p}secrets WHERE client_id = $1`),

		insertGrant:  t(`INSERT INTO {p}grants (client_id, audience, scopes) VALUES ($1, $2, $3)`),
		deleteGrants: t(`DELETE FROM {p}grants WHERE client_id = $1`),

		// An event written again (its key already there) inserts
		// nothing; see the Auditor's delivery.
		insertAudit: t(`INSERT INTO {p}audit_events (event_key, event_time, event_type, client_id, remote_ip, user_agent, audience, scope, jti, secret_id, error_code, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (event_key) WHERE event_key IS NOT NULL DO NOTHING`),

		// Both branches read the client's events in the range through
		// the index on (client_id, event_time, id).
		usage: t(`SELECT 0 AS kind, '' AS event_type, '' AS reason, COUNT(*) AS n,
       COUNT(DISTINCT NULLIF(remote_ip, '')) AS addresses, MIN(event_time) AS first_seen, MAX(event_time) AS last_seen
  FROM {p}audit_events
 WHERE client_id = $1 AND event_time >= $2 AND event_time < $3 AND event_type IN ` + usageTypes + `
UNION ALL
SELECT 1, event_type, ` + usageReason + `, COUNT(*), 0, NULL, NULL
  FROM {p}audit_events
 WHERE client_id = $4 AND event_time >= $5 AND event_time < $6 AND event_type IN ` + usageTypes + `
 GROUP BY event_type, ` + usageReason),
		// The busiest clients are found through the index on event_time,
		// and the counts of each through the client index.
		usageAll: t(`WITH busiest AS (
SELECT client_id, COUNT(*) AS n, COUNT(DISTINCT NULLIF(remote_ip, '')) AS addresses,
       MIN(event_time) AS first_seen, MAX(event_time) AS last_seen
  FROM {p}audit_events
 WHERE event_time >= $1 AND event_time < $2 AND client_id <> '' AND event_type IN ` + usageTypes + `
 GROUP BY client_id
 ORDER BY n DESC, client_id COLLATE "C"
 LIMIT $3)
SELECT 0 AS kind, client_id, '' AS event_type, '' AS reason, n, addresses, first_seen, last_seen FROM busiest
UNION ALL
SELECT 1, e.client_id, e.event_type, ` + usageReason + `, COUNT(*), 0, NULL, NULL
  FROM {p}audit_events e JOIN busiest b ON b.client_id = e.client_id
 WHERE e.event_time >= $4 AND e.event_time < $5 AND e.event_type IN ` + usageTypes + `
 GROUP BY e.client_id, e.event_type, ` + usageReason),
		auditByClient: t(`SELECT ` + auditColumns + ` FROM {p}audit_events
 WHERE client_id = $1 AND event_time >= $2 AND ($3 = '' OR event_type = $4)
 ORDER BY event_time DESC, id DESC LIMIT $5`),
		auditAll: t(`SELECT ` + auditColumns + ` FROM {p}audit_events
 WHERE event_time >= $1 AND ($2 = '' OR event_type = $3)
 ORDER BY event_time DESC, id DESC LIMIT $4`),
		issuedAddresses: t(issuedAddressesQuery("$1")),

		// The limiter's commits do not wait for the WAL to reach the
		// disk, which costs about a millisecond each on PostgreSQL's
		// defaults. A crash of the server may lose the last fraction
		// of a second of them (up to three times wal_writer_delay),
		// never corrupt anything: a few failures forgotten, a few
		// reservations undone.
		limitBegin: `SET LOCAL synchronous_commit = off`,
		// One statement inserts the rows that are missing and locks
		// those that exist (the no-op DO UPDATE), one after the other in
		// the order of the VALUES: the address's row first, as in the
		// primary key. So no transaction holds the client's row while it
		// waits for the address's, and none can deadlock with another.
		// (Locking with SELECT ... FOR UPDATE first would hold the
		// client's row while inserting an address's row that a cleanup
		// had deleted.) It returns the rows as locked.
		limitLock: t(`INSERT INTO {p}rate_limits (ip, client_id, refilled_at) VALUES ($1, '', 0), ($1, $2, 0)
ON CONFLICT (ip, client_id) DO UPDATE SET ip = EXCLUDED.ip
RETURNING ` + limitRowColumns),
		limitPeek: t(`SELECT ` + limitRowColumns + ` FROM {p}rate_limits WHERE ip = $1 AND client_id IN ('', $2)`),
		limitWrite: t(`UPDATE {p}rate_limits SET
    refilled_at      = CASE WHEN client_id = '' THEN $1::bigint ELSE $2::bigint END,
    pending          = CASE WHEN client_id = '' THEN $3::integer ELSE $4::integer END,
    pending_addr     = CASE WHEN client_id = '' THEN $5::integer ELSE $6::integer END,
    lease_until      = CASE WHEN client_id = '' THEN $7::bigint ELSE $8::bigint END,
    authenticated_at = CASE WHEN client_id = '' THEN $9::bigint ELSE $10::bigint END,
    idle_at          = CASE WHEN client_id = '' THEN $11::bigint ELSE $12::bigint END
 WHERE ip = $13 AND client_id IN ('', $14)`),
		// The fast paths, each one statement that runs on its own: the
		// CTE turns off the synchronous commit of the statement's own
		// transaction, as limitBegin does in the others.
		limitFastGrant: t(limitAsync + `
UPDATE {p}rate_limits SET
    idle_at      = GREATEST(LEAST(GREATEST(refilled_at, $1::bigint) + $2::bigint, $3::bigint), authenticated_at + $4::bigint, $5::bigint),
    pending      = CASE WHEN lease_until <= $6::bigint THEN 0 ELSE pending END + 1,
    pending_addr = CASE WHEN lease_until <= $7::bigint THEN 0 ELSE pending_addr END,
    lease_until  = $8::bigint,
    refilled_at  = LEAST(GREATEST(refilled_at, $9::bigint) + $10::bigint, $11::bigint)
  FROM async
 WHERE ip = $12 AND client_id = $13 AND authenticated_at <> 0 AND authenticated_at > $14::bigint
   AND refilled_at <= $15::bigint AND CASE WHEN lease_until <= $16::bigint THEN 0 ELSE pending END < $17::bigint`),
		limitFastGive: t(limitAsync + `
UPDATE {p}rate_limits SET
    idle_at          = GREATEST(CASE WHEN refilled_at - CASE WHEN lease_until > $1::bigint AND pending > 0 THEN $2::bigint ELSE 0 END <= $3::bigint THEN 0
                                     ELSE refilled_at - CASE WHEN lease_until > $4::bigint AND pending > 0 THEN $5::bigint ELSE 0 END END,
                           CASE WHEN $6::bigint = 1 THEN $7::bigint WHEN authenticated_at <> 0 THEN authenticated_at + $8::bigint ELSE 0 END,
                           CASE WHEN lease_until > $9::bigint AND pending > 1 THEN lease_until ELSE 0 END),
    authenticated_at = CASE WHEN $10::bigint = 1 THEN $11::bigint ELSE authenticated_at END,
    refilled_at      = CASE WHEN refilled_at - CASE WHEN lease_until > $12::bigint AND pending > 0 THEN $13::bigint ELSE 0 END <= $14::bigint THEN 0
                            ELSE refilled_at - CASE WHEN lease_until > $15::bigint AND pending > 0 THEN $16::bigint ELSE 0 END END,
    pending          = CASE WHEN lease_until > $17::bigint AND pending > 0 THEN pending - 1 ELSE 0 END,
    pending_addr     = 0
  FROM async
 WHERE ip = $18 AND client_id = $19 AND (lease_until <= $20::bigint OR pending_addr = 0)`),
		// PostgreSQL has no DELETE ... LIMIT. SKIP LOCKED passes over
		// rows that a transaction of the limiter holds, so a cleanup
		// never waits for a lock, and cannot deadlock with reservations
		// or with the cleanups of other replicas; the condition is
		// checked again on the row as locked.
		limitCleanup: t(`DELETE FROM {p}rate_limits WHERE (ip, client_id) IN (
    SELECT ip, client_id FROM {p}rate_limits WHERE idle_at <= $1 AND refilled_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`),

		clientRevoked:   t(`UPDATE {p}clients SET tokens_revoked_at = GREATEST(COALESCE(tokens_revoked_at, 0), $1) WHERE id = $2`),
		clientWatermark: t(`SELECT at FROM {p}revocations WHERE kind = '` + kindClient + `' AND id = $1 AND expires_at >= $2`),
		upsertRevocation: t(`INSERT INTO {p}revocations AS r (kind, id, at, expires_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (kind, id) DO UPDATE SET at = $5, expires_at = $6 WHERE r.at < EXCLUDED.at`),
		bumpVersion:       t(`UPDATE {p}revocation_state SET version = GREATEST(version + 1, $1) WHERE id = 1`),
		revokeAll:         t(`UPDATE {p}revocation_state SET tokens_revoked_at = GREATEST(COALESCE(tokens_revoked_at, 0), $1), version = GREATEST(version + 1, $2) WHERE id = 1`),
		revocationVersion: t(`SELECT version FROM {p}revocation_state WHERE id = 1`),
		loadRevocations: t(`SELECT '' AS kind, '' AS id, version AS at, COALESCE(tokens_revoked_at, 0) AS expires_at
  FROM {p}revocation_state WHERE id = 1
UNION ALL
SELECT kind, id, at, expires_at FROM {p}revocations WHERE expires_at >= $1`),
		// As limitCleanup: a pruning never waits for a row that a
		// revocation holds, and the condition is checked again on each
		// row as locked.
		pruneRevocations: t(`DELETE FROM {p}revocations WHERE (kind, id) IN (
    SELECT kind, id FROM {p}revocations WHERE expires_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`),

		signingKeys: t(`SELECT ` + signingKeyColumns + ` FROM {p}signing_keys ORDER BY generation`),
		addSigningKey: t(`INSERT INTO {p}signing_keys (` + signingKeyColumns + `) VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING`),
		revokeSigningKey: t(`UPDATE {p}signing_keys SET revoked_at = $1 WHERE kid = $2 AND revoked_at IS NULL`),
		signingKeyExists: t(`SELECT 1 FROM {p}signing_keys WHERE kid = $1`),
		resealSigningKey: t(`UPDATE {p}signing_keys SET sealed = $1 WHERE kid = $2`),
		deleteSigningKey: t(`DELETE FROM {p}signing_keys WHERE kid = $1`),
		deleteKeyEvents:  t(`DELETE FROM {p}key_events WHERE kid = $1`),
		claimKeyEvent: t(`INSERT INTO {p}key_events (kid, event_type) VALUES ($1, $2)
ON CONFLICT DO NOTHING`),

		createMigrations: t(`CREATE TABLE IF NOT EXISTS {p}schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)`),
		appliedVersions:  t(`SELECT version FROM {p}schema_migrations`),
		insertVersion:    t(`INSERT INTO {p}schema_migrations (version, applied_at) VALUES ($1, $2)`),
		migrateLock:      `SELECT pg_advisory_lock($1)`,
		migrateUnlock:    `SELECT pg_advisory_unlock($1)`,
	}
	// limitFastGrant, and the client's rows as client returns them, in
	// one statement: a row of kind 3 first, whose n1 counts the rows the
	// UPDATE changed. A data-modifying CTE runs once, whether read or not.
	grant := strings.TrimPrefix(q.limitFastGrant, limitAsync+"\n")
	client := q.client
	for n := 1; n <= 3; n++ { // $1 becomes $18 before $2 becomes $19
		client = strings.ReplaceAll(client, fmt.Sprintf("$%d", n), fmt.Sprintf("$%d", 17+n))
	}
	q.limitGrantClient = limitAsync + `,
granted AS (` + grant + `
RETURNING 1)
SELECT 3 AS kind, ''::text AS cid, NULL::boolean AS public, NULL::boolean AS disabled, NULL::boolean AS introspect,
       (SELECT count(*) FROM granted) AS n1, NULL::bigint AS n2, NULL::bigint AS n3, NULL::bigint AS n4, NULL::text AS s1, NULL::text AS s2
UNION ALL
` + client
	return q
}

func mysqlQueries(t func(string) string) *queries {
	q := &queries{
		client: t(`SELECT 0 AS kind, c.id AS cid, c.public AS public, c.disabled AS disabled, c.can_introspect AS introspect,
       c.token_ttl_ns AS n1, c.created_at AS n2, c.updated_at AS n3, c.tokens_revoked_at AS n4, NULL AS s1, NULL AS s2
  FROM {p}clients c WHERE c.id = ?
UNION ALL
SELECT 1, s.client_id, NULL, NULL, NULL, s.seq, s.created_at, s.expires_at, NULL, s.secret_id, s.hash
  FROM {p}secrets s WHERE s.client_id = ?
UNION ALL
SELECT 2, g.client_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, g.audience, g.scopes
  FROM {p}grants g WHERE g.client_id = ?`),
		list: t(`WITH page_ids AS (SELECT id FROM {p}clients WHERE id > ? ORDER BY id LIMIT ?)
SELECT 0 AS kind, c.id AS cid, c.public AS public, c.disabled AS disabled, c.can_introspect AS introspect,
       c.token_ttl_ns AS n1, c.created_at AS n2, c.updated_at AS n3, c.tokens_revoked_at AS n4, NULL AS s1, NULL AS s2
  FROM {p}clients c JOIN page_ids ON page_ids.id = c.id
UNION ALL
SELECT 1, s.client_id, NULL, NULL, NULL, s.seq, s.created_at, s.expires_at, NULL, s.secret_id, s.hash
  FROM {p}secrets s JOIN page_ids ON page_ids.id = s.client_id
UNION ALL
SELECT 2, g.client_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, g.audience, g.scopes
  FROM {p}grants g JOIN page_ids ON page_ids.id = g.client_id`),

		clientExists: t(`SELECT 1 FROM {p}clients WHERE id = ?`),
		lockClient:   t(`SELECT 1 FROM {p}clients WHERE id = ? FOR UPDATE`),
		insertClient: t(`INSERT INTO {p}clients (id, public, disabled, can_introspect, token_ttl_ns, tokens_revoked_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`),
		updateClient: t(`UPDATE {p}clients SET public = ?, disabled = ?, can_introspect = ?, token_ttl_ns = ?, updated_at = GREATEST(updated_at + 1, ?) WHERE id = ?`),
		setDisabled:  t(`UPDATE {p}clients SET disabled = ?, updated_at = GREATEST(updated_at + 1, ?) WHERE id = ?`),
		touchClient:  t(`UPDATE {p}clients SET updated_at = GREATEST(updated_at + 1, ?) WHERE id = ?`),
		deleteClient: t(`DELETE FROM {p}clients WHERE id = ?`),

		insertSecret:  t(`INSERT INTO {p}secrets (client_id, secret_id, seq, hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)`),
		nextSecretSeq: t(`SELECT COALESCE(MAX(seq) + 1, 0) FROM {p}secrets WHERE client_id = ?`),
		secretExpiry:  t(`SELECT expires_at FROM {p}secrets WHERE client_id = ? AND secret_id = ?`),
		expireSecret:  t(`UPDATE {p}secrets SET expires_at = ? WHERE client_id = ? AND secret_id = ?`),
		deleteSecret:  t(`DELETE FROM {p}secrets WHERE client_id = ? AND secret_id = ?`),
		deleteSecrets: t(`DELETE FROM {p}secrets WHERE client_id = ?`),

		insertGrant:  t(`INSERT INTO {p}grants (client_id, audience, scopes) VALUES (?, ?, ?)`),
		deleteGrants: t(`DELETE FROM {p}grants WHERE client_id = ?`),

		// An event written again (its key already there) inserts
		// nothing; see the Auditor's delivery. IGNORE skips a row whose
		// unique key is taken (the table's only other one is its
		// auto-increment id) and needs no privilege but INSERT, where
		// ON DUPLICATE KEY UPDATE needs UPDATE of every column. It
		// would also turn a value that does not fit its column into a
		// warning, and write it changed: auditText bounds the text, and
		// the Auditor checks, before it writes, that the text reaches
		// the columns as utf8mb4 (auditCharset), where every character
		// fits.
		insertAudit: t(`INSERT IGNORE INTO {p}audit_events (event_key, event_time, event_type, client_id, remote_ip, user_agent, audience, scope, jti, secret_id, error_code, reason)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		auditCharset: t(`SELECT @@character_set_client, @@character_set_connection, (SELECT COUNT(*) FROM information_schema.columns
 WHERE table_schema = DATABASE() AND table_name = '{p}audit_events'
   AND column_name IN ('event_type', 'remote_ip', 'user_agent', 'audience', 'scope', 'jti', 'secret_id', 'error_code', 'reason')
   AND character_set_name IS NOT NULL AND character_set_name <> 'utf8mb4')`),

		// Both branches read the client's events in the range through
		// the index on (client_id(191), event_time, id).
		usage: t(`SELECT 0 AS kind, '' AS event_type, '' AS reason, COUNT(*) AS n,
       COUNT(DISTINCT NULLIF(remote_ip, '')) AS addresses, MIN(event_time) AS first_seen, MAX(event_time) AS last_seen
  FROM {p}audit_events
 WHERE client_id = ? AND event_time >= ? AND event_time < ? AND event_type IN ` + usageTypes + `
UNION ALL
SELECT 1, event_type, ` + usageReason + `, COUNT(*), 0, NULL, NULL
  FROM {p}audit_events
 WHERE client_id = ? AND event_time >= ? AND event_time < ? AND event_type IN ` + usageTypes + `
 GROUP BY event_type, ` + usageReason),
		// The busiest clients are found through the index on event_time,
		// and the counts of each through the client index.
		usageAll: t(`WITH busiest AS (
SELECT client_id, COUNT(*) AS n, COUNT(DISTINCT NULLIF(remote_ip, '')) AS addresses,
       MIN(event_time) AS first_seen, MAX(event_time) AS last_seen
  FROM {p}audit_events
 WHERE event_time >= ? AND event_time < ? AND client_id <> '' AND event_type IN ` + usageTypes + `
 GROUP BY client_id
 ORDER BY n DESC, client_id
 LIMIT ?)
SELECT 0 AS kind, client_id, '' AS event_type, '' AS reason, n, addresses, first_seen, last_seen FROM busiest
UNION ALL
SELECT 1, e.client_id, e.event_type, ` + usageReason + `, COUNT(*), 0, NULL, NULL
  FROM {p}audit_events e JOIN busiest b ON b.client_id = e.client_id
 WHERE e.event_time >= ? AND e.event_time < ? AND e.event_type IN ` + usageTypes + `
 GROUP BY e.client_id, e.event_type, ` + usageReason),
		auditByClient: t(`SELECT ` + auditColumns + ` FROM {p}audit_events
 WHERE client_id = ? AND event_time >= ? AND (? = '' OR event_type = ?)
 ORDER BY event_time DESC, id DESC LIMIT ?`),
		auditAll: t(`SELECT ` + auditColumns + ` FROM {p}audit_events
 WHERE event_time >= ? AND (? = '' OR event_type = ?)
 ORDER BY event_time DESC, id DESC LIMIT ?`),
		issuedAddresses: t(issuedAddressesQuery("?")),

		// The no-op ON DUPLICATE KEY UPDATE locks a row that exists
		// (an exclusive record lock on the primary key, no gap lock),
		// and the insert of a missing one locks it too, in the order of
		// the VALUES: the address's row first, as in the primary key.
		// Locking before reading matters on InnoDB: a locking read of a
		// missing row would take a gap lock, and two transactions
		// holding one gap and inserting into it deadlock.
		limitEnsure: t(`INSERT INTO {p}rate_limits (ip, client_id, refilled_at) VALUES (?, '', 0), (?, ?, 0)
ON DUPLICATE KEY UPDATE ip = ip`),
		limitLock: t(`SELECT ` + limitRowColumns + ` FROM {p}rate_limits
 WHERE ip = ? AND client_id IN ('', ?) ORDER BY client_id FOR UPDATE`),
		limitPeek: t(`SELECT ` + limitRowColumns + ` FROM {p}rate_limits WHERE ip = ? AND client_id IN ('', ?)`),
		limitWrite: t(`UPDATE {p}rate_limits SET
    refilled_at      = CASE WHEN client_id = '' THEN ? ELSE ? END,
    pending          = CASE WHEN client_id = '' THEN ? ELSE ? END,
    pending_addr     = CASE WHEN client_id = '' THEN ? ELSE ? END,
    lease_until      = CASE WHEN client_id = '' THEN ? ELSE ? END,
    authenticated_at = CASE WHEN client_id = '' THEN ? ELSE ? END,
    idle_at          = CASE WHEN client_id = '' THEN ? ELSE ? END
 WHERE ip = ? AND client_id IN ('', ?)`),
		// Each expression reads only columns that the assignments
		// before it leave alone: MySQL assigns from left to right, an
		// assignment seeing those before it, where the other dialects
		// read the row as it was.
		limitFastGrant: t(`UPDATE {p}rate_limits SET
    idle_at      = GREATEST(LEAST(GREATEST(refilled_at, ?) + ?, ?), authenticated_at + ?, ?),
    pending      = CASE WHEN lease_until <= ? THEN 0 ELSE pending END + 1,
    pending_addr = CASE WHEN lease_until <= ? THEN 0 ELSE pending_addr END,
    lease_until  = ?,
    refilled_at  = LEAST(GREATEST(refilled_at, ?) + ?, ?)
 WHERE ip = ? AND client_id = ? AND authenticated_at <> 0 AND authenticated_at > ?
   AND refilled_at <= ? AND CASE WHEN lease_until <= ? THEN 0 ELSE pending END < ?`),
		limitFastGive: t(`UPDATE {p}rate_limits SET
    idle_at          = GREATEST(CASE WHEN refilled_at - CASE WHEN lease_until > ? AND pending > 0 THEN ? ELSE 0 END <= ? THEN 0
                                ELSE refilled_at - CASE WHEN lease_until > ? AND pending > 0 THEN ? ELSE 0 END END,
                           CASE WHEN ? = 1 THEN ? WHEN authenticated_at <> 0 THEN authenticated_at + ? ELSE 0 END,
                           CASE WHEN lease_until > ? AND pending > 1 THEN lease_until ELSE 0 END),
    authenticated_at = CASE WHEN ? = 1 THEN ? ELSE authenticated_at END,
    refilled_at      = CASE WHEN refilled_at - CASE WHEN lease_until > ? AND pending > 0 THEN ? ELSE 0 END <= ? THEN 0
                            ELSE refilled_at - CASE WHEN lease_until > ? AND pending > 0 THEN ? ELSE 0 END END,
    pending          = CASE WHEN lease_until > ? AND pending > 0 THEN pending - 1 ELSE 0 END,
    pending_addr     = 0
 WHERE ip = ? AND client_id = ? AND (lease_until <= ? OR pending_addr = 0)`),
		// A DELETE through the index on idle_at locks index entries
		// before rows, the reverse of the transactions above, and
		// deadlocks with them under load. So the rows are found without
		// locking and deleted one statement each, by primary key: each
		// locks one row, row before index entry as the transactions do,
		// so no cycle of waits can form. The condition is checked again
		// on the row as locked.
		limitCleanup:    t(`SELECT ip, client_id FROM {p}rate_limits WHERE idle_at <= ? AND refilled_at <= ? LIMIT ?`),
		limitCleanupRow: t(`DELETE FROM {p}rate_limits WHERE ip = ? AND client_id = ? AND idle_at <= ? AND refilled_at <= ?`),

		clientRevoked:   t(`UPDATE {p}clients SET tokens_revoked_at = GREATEST(COALESCE(tokens_revoked_at, 0), ?) WHERE id = ?`),
		clientWatermark: t(`SELECT at FROM {p}revocations WHERE kind = '` + kindClient + `' AND id = ? AND expires_at >= ?`),
		// Both columns only grow; the driver reports no row affected when
		// neither changes.
		upsertRevocation: t(`INSERT INTO {p}revocations (kind, id, at, expires_at) VALUES (?, ?, ?, ?)
ON DUPLICATE KEY UPDATE at = GREATEST(at, ?), expires_at = GREATEST(expires_at, ?)`),
		bumpVersion:       t(`UPDATE {p}revocation_state SET version = GREATEST(version + 1, ?) WHERE id = 1`),
		revokeAll:         t(`UPDATE {p}revocation_state SET tokens_revoked_at = GREATEST(COALESCE(tokens_revoked_at, 0), ?), version = GREATEST(version + 1, ?) WHERE id = 1`),
		revocationVersion: t(`SELECT version FROM {p}revocation_state WHERE id = 1`),
		loadRevocations: t(`SELECT '' AS kind, '' AS id, version AS at, COALESCE(tokens_revoked_at, 0) AS expires_at
  FROM {p}revocation_state WHERE id = 1
UNION ALL
SELECT kind, id, at, expires_at FROM {p}revocations WHERE expires_at >= ?`),
		// As limitCleanup: the rows are found without locking, then
		// deleted by primary key (one statement per kind), so that no
		// pruning locks index entries before rows, the reverse of the
		// revocations' upserts. The condition is checked again on each
		// row as locked.
		pruneRevocations:    t(`SELECT kind, id FROM {p}revocations WHERE expires_at < ? LIMIT ?`),
		pruneRevocationRows: t(`DELETE FROM {p}revocations WHERE kind = ? AND expires_at < ? AND id IN `),

		signingKeys: t(`SELECT ` + signingKeyColumns + ` FROM {p}signing_keys ORDER BY generation`),
		addSigningKey: t(`INSERT INTO {p}signing_keys (` + signingKeyColumns + `) VALUES (?, ?, ?, ?, ?, ?, ?)
ON DUPLICATE KEY UPDATE kid = kid`),
		revokeSigningKey: t(`UPDATE {p}signing_keys SET revoked_at = ? WHERE kid = ? AND revoked_at IS NULL`),
		signingKeyExists: t(`SELECT 1 FROM {p}signing_keys WHERE kid = ?`),
		resealSigningKey: t(`UPDATE {p}signing_keys SET sealed = ? WHERE kid = ?`),
		deleteSigningKey: t(`DELETE FROM {p}signing_keys WHERE kid = ?`),
		deleteKeyEvents:  t(`DELETE FROM {p}key_events WHERE kid = ?`),
		claimKeyEvent: t(`INSERT INTO {p}key_events (kid, event_type) VALUES (?, ?)
ON DUPLICATE KEY UPDATE kid = kid`),

		createMigrations: t(`CREATE TABLE IF NOT EXISTS {p}schema_migrations (version BIGINT NOT NULL PRIMARY KEY, applied_at BIGINT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`),
		appliedVersions:  t(`SELECT version FROM {p}schema_migrations`),
		insertVersion:    t(`INSERT INTO {p}schema_migrations (version, applied_at) VALUES (?, ?)`),
		// GET_LOCK waits at most 2 seconds per call so that a cancelled
		// context is noticed; Migrate calls it again until it succeeds.
		migrateLock:   `SELECT GET_LOCK(?, 2)`,
		migrateUnlock: `SELECT RELEASE_LOCK(?)`,
	}
	q.grantClientRoutine, q.limitGrantClient = grantClientProcedure(q, t("{p}limit_grant_client_"))
	q.grantClientArgs = grantClientArgs
	return q
}

func sqliteQueries(t func(string) string) *queries {
	// SQLite runs each row and column of a result through more work
	// than the query itself, so Client reads one row: the secrets and
	// the grants each packed into one text, their fields and rows
	// separated by NUL, which none of them can hold. The order of
	// group_concat does not matter: secrets are sorted by seq as they
	// are read.
	const clientColumns = `c.public, c.disabled, c.can_introspect, c.token_ttl_ns, c.created_at, c.updated_at, c.tokens_revoked_at,
       (SELECT group_concat(s.seq || char(0) || s.created_at || char(0) || COALESCE(s.expires_at, '') || char(0) ||
                            s.secret_id || char(0) || s.hash, char(0))
          FROM {p}secrets s WHERE s.client_id = c.id),
       (SELECT group_concat(g.audience || char(0) || g.scopes, char(0))
          FROM {p}grants g WHERE g.client_id = c.id)
  FROM {p}clients c WHERE c.id = (SELECT ?)`
	const stamp = `SELECT stamp FROM {p}client_stamp WHERE id = 1`
	return &queries{
		clientRow:   t(`SELECT ` + clientColumns),
		stampedRow:  t(`SELECT (` + stamp + `), ` + clientColumns),
		clientStamp: t(stamp),
		client: t(`SELECT 0 AS kind, c.id AS cid, c.public AS public, c.disabled AS disabled, c.can_introspect AS introspect,
       c.token_ttl_ns AS n1, c.created_at AS n2, c.updated_at AS n3, c.tokens_revoked_at AS n4, NULL AS s1, NULL AS s2
  FROM {p}clients c WHERE c.id = (SELECT ?)
UNION ALL
SELECT 1, s.client_id, NULL, NULL, NULL, s.seq, s.created_at, s.expires_at, NULL, s.secret_id, s.hash
  FROM {p}secrets s WHERE s.client_id = (SELECT ?)
UNION ALL
SELECT 2, g.client_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, g.audience, g.scopes
  FROM {p}grants g WHERE g.client_id = (SELECT ?)`),
		list: t(`WITH page_ids AS (SELECT id FROM {p}clients WHERE id > ? ORDER BY id LIMIT ?)
SELECT 0 AS kind, c.id AS cid, c.public AS public, c.disabled AS disabled, c.can_introspect AS introspect,
       c.token_ttl_ns AS n1, c.created_at AS n2, c.updated_at AS n3, c.tokens_revoked_at AS n4, NULL AS s1, NULL AS s2
  FROM {p}clients c JOIN page_ids ON page_ids.id = c.id
UNION ALL
SELECT 1, s.client_id, NULL, NULL, NULL, s.seq, s.created_at, s.expires_at, NULL, s.secret_id, s.hash
  FROM {p}secrets s JOIN page_ids ON page_ids.id = s.client_id
UNION ALL
SELECT 2, g.client_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, g.audience, g.scopes
  FROM {p}grants g JOIN page_ids ON page_ids.id = g.client_id`),

		clientExists: t(`SELECT 1 FROM {p}clients WHERE id = ?`),
		// Writers hold the database write lock from BEGIN IMMEDIATE on,
		// so no row lock is needed.
		lockClient:   t(`SELECT 1 FROM {p}clients WHERE id = ?`),
		insertClient: t(`INSERT INTO {p}clients (id, public, disabled, can_introspect, token_ttl_ns, tokens_revoked_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`),
		updateClient: t(`UPDATE {p}clients SET public = ?, disabled = ?, can_introspect = ?, token_ttl_ns = ?, updated_at = MAX(updated_at + 1, ?) WHERE id = ?`),
		setDisabled:  t(`UPDATE {p}clients SET disabled = ?, updated_at = MAX(updated_at + 1, ?) WHERE id = ?`),
		touchClient:  t(`UPDATE {p}clients SET updated_at = MAX(updated_at + 1, ?) WHERE id = ?`),
		deleteClient: t(`DELETE FROM {p}clients WHERE id = ?`),

		insertSecret:  t(`INSERT INTO {p}secrets (client_id, secret_id, seq, hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)`),
		nextSecretSeq: t(`SELECT COALESCE(MAX(seq) + 1, 0) FROM {p}secrets WHERE client_id = ?`),
		secretExpiry:  t(`SELECT expires_at FROM {p}secrets WHERE client_id = ? AND secret_id = ?`),
		expireSecret:  t(`UPDATE {p}secrets SET expires_at = ? WHERE client_id = ? AND secret_id = ?`),
		deleteSecret:  t(`DELETE FROM {p}secrets WHERE client_id = ? AND secret_id = ?`),
		deleteSecrets: t(`DELETE FROM {p}secrets WHERE client_id = ?`),

		insertGrant:  t(`INSERT INTO {p}grants (client_id, audience, scopes) VALUES (?, ?, ?)`),
		deleteGrants: t(`DELETE FROM {p}grants WHERE client_id = ?`),

		// OR ROLLBACK: a failed insert rolls back its whole transaction
		// (which the Auditor does anyway), so SQLite keeps no statement
		// journal for it; a multi-row insert's journal would outgrow
		// memory and be written to a temporary file. An event written
		// again (its key already there) inserts nothing; see the
		// Auditor's delivery.
		insertAudit: t(`INSERT OR ROLLBACK INTO {p}audit_events (event_key, event_time, event_type, client_id, remote_ip, user_agent, audience, scope, jti, secret_id, error_code, reason)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (event_key) WHERE event_key IS NOT NULL DO NOTHING`),

		// Both branches read the client's events in the range through
		// the index on (client_id, event_time) of 0001, which SQLite
		// ends with the rowid, id.
		usage: t(`SELECT 0 AS kind, '' AS event_type, '' AS reason, COUNT(*) AS n,
       COUNT(DISTINCT NULLIF(remote_ip, '')) AS addresses, MIN(event_time) AS first_seen, MAX(event_time) AS last_seen
  FROM {p}audit_events
 WHERE client_id = ? AND event_time >= ? AND event_time < ? AND event_type IN ` + usageTypes + `
UNION ALL
SELECT 1, event_type, ` + usageReason + `, COUNT(*), 0, NULL, NULL
  FROM {p}audit_events
 WHERE client_id = ? AND event_time >= ? AND event_time < ? AND event_type IN ` + usageTypes + `
 GROUP BY event_type, ` + usageReason),
		// The busiest clients are found through the index on event_time,
		// and the counts of each through the client index.
		usageAll: t(`WITH busiest AS (
SELECT client_id, COUNT(*) AS n, COUNT(DISTINCT NULLIF(remote_ip, '')) AS addresses,
       MIN(event_time) AS first_seen, MAX(event_time) AS last_seen
  FROM {p}audit_events
 WHERE event_time >= ? AND event_time < ? AND client_id <> '' AND event_type IN ` + usageTypes + `
 GROUP BY client_id
 ORDER BY n DESC, client_id
 LIMIT ?)
SELECT 0 AS kind, client_id, '' AS event_type, '' AS reason, n, addresses, first_seen, last_seen FROM busiest
UNION ALL
SELECT 1, e.client_id, e.event_type, ` + usageReason + `, COUNT(*), 0, NULL, NULL
  FROM {p}audit_events e JOIN busiest b ON b.client_id = e.client_id
 WHERE e.event_time >= ? AND e.event_time < ? AND e.event_type IN ` + usageTypes + `
 GROUP BY e.client_id, e.event_type, ` + usageReason),
		auditByClient: t(`SELECT ` + auditColumns + ` FROM {p}audit_events
 WHERE client_id = ? AND event_time >= ? AND (? = '' OR event_type = ?)
 ORDER BY event_time DESC, id DESC LIMIT ?`),
		auditAll: t(`SELECT ` + auditColumns + ` FROM {p}audit_events
 WHERE event_time >= ? AND (? = '' OR event_type = ?)
 ORDER BY event_time DESC, id DESC LIMIT ?`),
		issuedAddresses: t(issuedAddressesQuery("?")),

		// A transaction begins with limitEnsure, a write, so it holds
		// the database write lock from its first statement: one that
		// began with a read would have to upgrade its lock, and in WAL
		// mode that fails at once with SQLITE_BUSY, whatever the busy
		// timeout, when another connection wrote in between. Under the
		// write lock nothing else changes the rows, so limitLock needs
		// no row locks.
		limitEnsure: t(`INSERT INTO {p}rate_limits (ip, client_id, refilled_at) VALUES (?, '', 0), (?, ?, 0)
ON CONFLICT (ip, client_id) DO NOTHING`),
		limitLock: t(`SELECT ` + limitRowColumns + ` FROM {p}rate_limits
 WHERE ip = ? AND client_id IN ('', ?) ORDER BY client_id`),
		limitPeek: t(`SELECT ` + limitRowColumns + ` FROM {p}rate_limits WHERE ip = ? AND client_id IN ('', ?)`),
		limitWrite: t(`UPDATE {p}rate_limits SET
    refilled_at      = CASE WHEN client_id = '' THEN ? ELSE ? END,
    pending          = CASE WHEN client_id = '' THEN ? ELSE ? END,
    pending_addr     = CASE WHEN client_id = '' THEN ? ELSE ? END,
    lease_until      = CASE WHEN client_id = '' THEN ? ELSE ? END,
    authenticated_at = CASE WHEN client_id = '' THEN ? ELSE ? END,
    idle_at          = CASE WHEN client_id = '' THEN ? ELSE ? END
 WHERE ip = ? AND client_id IN ('', ?)`),
		// SQLite's MAX and MIN of several values are GREATEST and LEAST.
		limitFastGrant: t(`UPDATE {p}rate_limits SET
    idle_at      = MAX(MIN(MAX(refilled_at, ?) + ?, ?), authenticated_at + ?, ?),
    pending      = CASE WHEN lease_until <= ? THEN 0 ELSE pending END + 1,
    pending_addr = CASE WHEN lease_until <= ? THEN 0 ELSE pending_addr END,
    lease_until  = ?,
    refilled_at  = MIN(MAX(refilled_at, ?) + ?, ?)
 WHERE ip = ? AND client_id = ? AND authenticated_at <> 0 AND authenticated_at > ?
   AND refilled_at <= ? AND CASE WHEN lease_until <= ? THEN 0 ELSE pending END < ?`),
		limitFastGive: t(`UPDATE {p}rate_limits SET
    idle_at          = MAX(CASE WHEN refilled_at - CASE WHEN lease_until > ? AND pending > 0 THEN ? ELSE 0 END <= ? THEN 0
                                ELSE refilled_at - CASE WHEN lease_until > ? AND pending > 0 THEN ? ELSE 0 END END,
                           CASE WHEN ? = 1 THEN ? WHEN authenticated_at <> 0 THEN authenticated_at + ? ELSE 0 END,
                           CASE WHEN lease_until > ? AND pending > 1 THEN lease_until ELSE 0 END),
    authenticated_at = CASE WHEN ? = 1 THEN ? ELSE authenticated_at END,
    refilled_at      = CASE WHEN refilled_at - CASE WHEN lease_until > ? AND pending > 0 THEN ? ELSE 0 END <= ? THEN 0
                            ELSE refilled_at - CASE WHEN lease_until > ? AND pending > 0 THEN ? ELSE 0 END END,
    pending          = CASE WHEN lease_until > ? AND pending > 0 THEN pending - 1 ELSE 0 END,
    pending_addr     = 0
 WHERE ip = ? AND client_id = ? AND (lease_until <= ? OR pending_addr = 0)`),
		// DELETE ... LIMIT needs a compile-time option; rowid does not.
		limitCleanup: t(`DELETE FROM {p}rate_limits WHERE rowid IN (
    SELECT rowid FROM {p}rate_limits WHERE idle_at <= ?1 AND refilled_at <= ?1 LIMIT ?2)`),

		clientRevoked:   t(`UPDATE {p}clients SET tokens_revoked_at = MAX(COALESCE(tokens_revoked_at, 0), ?) WHERE id = ?`),
		clientWatermark: t(`SELECT at FROM {p}revocations WHERE kind = '` + kindClient + `' AND id = ? AND expires_at >= ?`),
		upsertRevocation: t(`INSERT INTO {p}revocations (kind, id, at, expires_at) VALUES (?, ?, ?, ?)
ON CONFLICT (kind, id) DO UPDATE SET at = ?, expires_at = ? WHERE at < excluded.at`),
		bumpVersion:       t(`UPDATE {p}revocation_state SET version = MAX(version + 1, ?) WHERE id = 1`),
		revokeAll:         t(`UPDATE {p}revocation_state SET tokens_revoked_at = MAX(COALESCE(tokens_revoked_at, 0), ?), version = MAX(version + 1, ?) WHERE id = 1`),
		revocationVersion: t(`SELECT version FROM {p}revocation_state WHERE id = 1`),
		loadRevocations: t(`SELECT '' AS kind, '' AS id, version AS at, COALESCE(tokens_revoked_at, 0) AS expires_at
  FROM {p}revocation_state WHERE id = 1
UNION ALL
SELECT kind, id, at, expires_at FROM {p}revocations WHERE expires_at >= ?`),
		pruneRevocations: t(`DELETE FROM {p}revocations WHERE rowid IN (
    SELECT rowid FROM {p}revocations WHERE expires_at < ? LIMIT ?)`),

		signingKeys: t(`SELECT ` + signingKeyColumns + ` FROM {p}signing_keys ORDER BY generation`),
		addSigningKey: t(`INSERT INTO {p}signing_keys (` + signingKeyColumns + `) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING`),
		revokeSigningKey: t(`UPDATE {p}signing_keys SET revoked_at = ? WHERE kid = ? AND revoked_at IS NULL`),
		signingKeyExists: t(`SELECT 1 FROM {p}signing_keys WHERE kid = ?`),
		resealSigningKey: t(`UPDATE {p}signing_keys SET sealed = ? WHERE kid = ?`),
		deleteSigningKey: t(`DELETE FROM {p}signing_keys WHERE kid = ?`),
		deleteKeyEvents:  t(`DELETE FROM {p}key_events WHERE kid = ?`),
		claimKeyEvent: t(`INSERT INTO {p}key_events (kid, event_type) VALUES (?, ?)
ON CONFLICT DO NOTHING`),

		createMigrations: t(`CREATE TABLE IF NOT EXISTS {p}schema_migrations (version INTEGER NOT NULL PRIMARY KEY, applied_at INTEGER NOT NULL)`),
		appliedVersions:  t(`SELECT version FROM {p}schema_migrations`),
		insertVersion:    t(`INSERT INTO {p}schema_migrations (version, applied_at) VALUES (?, ?)`),
	}
}

// grantParams name the arguments of limitFastGrant as
// [Limiter.grantArgs] gives them; one name, one value.
var grantParams = [...]string{"p_now", "p_every", "p_full", "p_known", "p_lease",
	"p_now", "p_now", "p_lease", "p_now", "p_every", "p_full",
	"p_ip", "p_client", "p_since", "p_slack", "p_now", "p_burst"}

// grantClientArgs are the indexes, among limitFastGrant's arguments, of
// the parameters of the procedure of grantClientProcedure, in order:
// the first of each name in grantParams.
var grantClientArgs = func() []int {
	var out []int
	seen := make(map[string]bool)
	for i, n := range grantParams {
		if !seen[n] {
			seen[n] = true
			out = append(out, i)
		}
	}
	return out
}()

// grantClientProcedure returns, for MySQL and MariaDB, which have no
// statement that both updates a row and returns rows, a procedure that
// runs q's limitFastGrant and then q's client, after a row of kind 3
// whose n1 counts the rows the UPDATE changed, as PostgreSQL's
// limitGrantClient does in one statement; and the CALL of it, whose
// arguments are those at grantClientArgs. Each statement of the
// procedure is the Limiter's own, with its parameters named. Its name is
// name and the first 8 hex digits of the SHA-256 of its text, so that a
// release whose statements differ creates a procedure of its own, and the
// servers of the one before it, during a rolling upgrade, keep calling
// theirs.
func grantClientProcedure(q *queries, name string) (create, call string) {
	named := func(stmt string, names []string) string {
		parts := strings.Split(stmt, "?")
		if len(parts) != len(names)+1 {
			panic("sqlstore: grantClientProcedure: parameters do not match")
		}
		var b strings.Builder
		for i, n := range names {
			b.WriteString(parts[i] + n)
		}
		return b.String() + parts[len(names)]
	}
	var params []string
	for _, i := range grantClientArgs {
		typ := "BIGINT"
		switch grantParams[i] {
		case "p_ip":
			typ = "VARBINARY(64)"
		case "p_client":
			typ = "VARBINARY(255)"
		}
		params = append(params, "IN "+grantParams[i]+" "+typ)
	}
	body := `(` + strings.Join(params, ", ") + `)
    MODIFIES SQL DATA
    SQL SECURITY INVOKER
BEGIN
DECLARE granted BIGINT DEFAULT 0;
` + named(q.limitFastGrant, grantParams[:]) + `;
SET granted = ROW_COUNT();
SELECT 3 AS kind, '' AS cid, NULL AS public, NULL AS disabled, NULL AS introspect,
       granted AS n1, NULL AS n2, NULL AS n3, NULL AS n4, NULL AS s1, NULL AS s2
UNION ALL
` + named(q.client, []string{"p_client", "p_client", "p_client"}) + `;
END`
	sum := sha256.Sum256([]byte(body))
	name += hex.EncodeToString(sum[:4])
	call = `CALL ` + name + `(?` + strings.Repeat(", ?", len(params)-1) + `)`
	return `CREATE PROCEDURE ` + name + body, call
}

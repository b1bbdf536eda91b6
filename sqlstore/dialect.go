package sqlstore

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"
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
//	public, disabled          client row only
//	n1, n2, n3                client: token_ttl_ns, created_at, updated_at
//	                          secret: seq, created_at, expires_at (nullable)
//	s1, s2                    secret: secret_id, hash; grant: audience, scopes
//
// client takes the client id three times (once per branch of the UNION
// ALL); list takes (after, limit).
//
// The [Limiter]'s statements take the same arguments, in the same order,
// on every dialect (MySQL's "?" cannot be reused, so a value needed twice
// is passed twice); times and intervals are in microseconds:
//
//	limitCheck    (ipSlack, clientSlack, ip, clientID), where a slack is
//	              (burst-1)*every; returns one row: the instant from which
//	              both buckets hold a token, or 0
//	limitFail     (ip, now+ipEvery, ip, clientID, now+clientEvery,
//	              now+ipSlack, ipEvery, now+ipEvery,
//	              now+clientSlack, clientEvery, now+clientEvery)
//	limitCleanup  (now, batch); on MySQL it selects the (ip, client_id)
//	              of the rows to delete, and limitCleanupRow (ip,
//	              clientID, now) deletes each
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
	secretExists  string
	expireSecret  string
	deleteSecret  string
	deleteSecrets string

	insertGrant  string
	deleteGrants string

	insertAudit string

	limitCheck      string
	limitFail       string
	limitCleanup    string
	limitCleanupRow string // MySQL only

	createMigrations string
	appliedVersions  string
	insertVersion    string
	// migrateLock and migrateUnlock take the lock key (Postgres, an int64)
	// or name (MySQL, a string); SQLite has none and relies on BEGIN
	// IMMEDIATE instead.
	migrateLock   string
	migrateUnlock string
}

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
	return &queries{
		client: t(`SELECT 0 AS kind, c.id AS cid, c.public AS public, c.disabled AS disabled,
       c.token_ttl_ns AS n1, c.created_at AS n2, c.updated_at AS n3, NULL::text AS s1, NULL::text AS s2
  FROM {p}clients c WHERE c.id = $1
UNION ALL
SELECT 1, s.client_id, NULL::boolean, NULL::boolean, s.seq, s.created_at, s.expires_at, s.secret_id, s.hash
  FROM {p}secrets s WHERE s.client_id = $2
UNION ALL
SELECT 2, g.client_id, NULL::boolean, NULL::boolean, NULL::bigint, NULL::bigint, NULL::bigint, g.audience, g.scopes
  FROM {p}grants g WHERE g.client_id = $3`),
		list: t(`WITH page_ids AS (SELECT id FROM {p}clients WHERE id > $1 ORDER BY id LIMIT $2)
SELECT 0 AS kind, c.id AS cid, c.public AS public, c.disabled AS disabled,
       c.token_ttl_ns AS n1, c.created_at AS n2, c.updated_at AS n3, NULL::text AS s1, NULL::text AS s2
  FROM {p}clients c JOIN page_ids ON page_ids.id = c.id
UNION ALL
SELECT 1, s.client_id, NULL::boolean, NULL::boolean, s.seq, s.created_at, s.expires_at, s.secret_id, s.hash
  FROM {p}secrets s JOIN page_ids ON page_ids.id = s.client_id
UNION ALL
SELECT 2, g.client_id, NULL::boolean, NULL::boolean, NULL::bigint, NULL::bigint, NULL::bigint, g.audience, g.scopes
  FROM {p}grants g JOIN page_ids ON page_ids.id = g.client_id`),

		clientExists: t(`SELECT 1 FROM {p}clients WHERE id = $1`),
		lockClient:   t(`SELECT 1 FROM {p}clients WHERE id = $1 FOR UPDATE`),
		insertClient: t(`INSERT INTO {p}clients (id, public, disabled, token_ttl_ns, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)`),
		updateClient: t(`UPDATE {p}clients SET public = $1, disabled = $2, token_ttl_ns = $3, updated_at = $4 WHERE id = $5`),
		setDisabled:  t(`UPDATE {p}clients SET disabled = $1, updated_at = $2 WHERE id = $3`),
		touchClient:  t(`UPDATE {p}clients SET updated_at = $1 WHERE id = $2`),
		deleteClient: t(`DELETE FROM {p}clients WHERE id = $1`),

		insertSecret:  t(`INSERT INTO {p}secrets (client_id, secret_id, seq, hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)`),
		nextSecretSeq: t(`SELECT COALESCE(MAX(seq) + 1, 0) FROM {p}secrets WHERE client_id = $1`),
		secretExists:  t(`SELECT 1 FROM {p}secrets WHERE client_id = $1 AND secret_id = $2`),
		expireSecret:  t(`UPDATE {p}secrets SET expires_at = $1 WHERE client_id = $2 AND secret_id = $3`),
		deleteSecret:  t(`DELETE FROM {p}secrets WHERE client_id = $1 AND secret_id = $2`),
		deleteSecrets: t(`DELETE FROM {p}secrets WHERE client_id = $1`),

		insertGrant:  t(`INSERT INTO {p}grants (client_id, audience, scopes) VALUES ($1, $2, $3)`),
		deleteGrants: t(`DELETE FROM {p}grants WHERE client_id = $1`),

		insertAudit: t(`INSERT INTO {p}audit_events (event_time, event_type, client_id, remote_ip, user_agent, audience, scope, jti, secret_id, error_code, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`),

		// A bucket's row holds the instant it is full again
		// (refilled_at): it holds burst - (refilled_at - now)/every
		// tokens, and a token from refilled_at - slack on. A failure
		// takes one token, so refilled_at moves one interval past
		// max(refilled_at, now), unless the bucket is empty
		// (refilled_at > now + slack), which a failure leaves as it is.
		// The address's row comes first, as in the primary key, so
		// that concurrent failures lock rows in one order.
		limitCheck: t(`SELECT COALESCE(MAX(CASE WHEN client_id = '' THEN refilled_at - $1 ELSE refilled_at - $2 END), 0)
  FROM {p}rate_limits WHERE ip = $3 AND client_id IN ($4, '')`),
		limitFail: t(`INSERT INTO {p}rate_limits AS l (ip, client_id, refilled_at) VALUES ($1, '', $2), ($3, $4, $5)
ON CONFLICT (ip, client_id) DO UPDATE SET refilled_at = CASE
    WHEN l.client_id = '' THEN
        CASE WHEN l.refilled_at > $6 THEN l.refilled_at ELSE GREATEST(l.refilled_at + $7, $8) END
    ELSE
        CASE WHEN l.refilled_at > $9 THEN l.refilled_at ELSE GREATEST(l.refilled_at + $10, $11) END
END`),
		// PostgreSQL has no DELETE ... LIMIT. SKIP LOCKED passes over
		// rows that a failure is updating, so a cleanup never waits
		// for a lock, and cannot deadlock with failures or with the
		// cleanups of other replicas.
		limitCleanup: t(`DELETE FROM {p}rate_limits WHERE (ip, client_id) IN (
    SELECT ip, client_id FROM {p}rate_limits WHERE refilled_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`),

		createMigrations: t(`CREATE TABLE IF NOT EXISTS {p}schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)`),
		appliedVersions:  t(`SELECT version FROM {p}schema_migrations`),
		insertVersion:    t(`INSERT INTO {p}schema_migrations (version, applied_at) VALUES ($1, $2)`),
		migrateLock:      `SELECT pg_advisory_lock($1)`,
		migrateUnlock:    `SELECT pg_advisory_unlock($1)`,
	}
}

func mysqlQueries(t func(string) string) *queries {
	return &queries{
		client: t(`SELECT 0 AS kind, c.id AS cid, c.public AS public, c.disabled AS disabled,
       c.token_ttl_ns AS n1, c.created_at AS n2, c.updated_at AS n3, NULL AS s1, NULL AS s2
  FROM {p}clients c WHERE c.id = ?
UNION ALL
SELECT 1, s.client_id, NULL, NULL, s.seq, s.created_at, s.expires_at, s.secret_id, s.hash
  FROM {p}secrets s WHERE s.client_id = ?
UNION ALL
SELECT 2, g.client_id, NULL, NULL, NULL, NULL, NULL, g.audience, g.scopes
  FROM {p}grants g WHERE g.client_id = ?`),
		list: t(`WITH page_ids AS (SELECT id FROM {p}clients WHERE id > ? ORDER BY id LIMIT ?)
SELECT 0 AS kind, c.id AS cid, c.public AS public, c.disabled AS disabled,
       c.token_ttl_ns AS n1, c.created_at AS n2, c.updated_at AS n3, NULL AS s1, NULL AS s2
  FROM {p}clients c JOIN page_ids ON page_ids.id = c.id
UNION ALL
SELECT 1, s.client_id, NULL, NULL, s.seq, s.created_at, s.expires_at, s.secret_id, s.hash
  FROM {p}secrets s JOIN page_ids ON page_ids.id = s.client_id
UNION ALL
SELECT 2, g.client_id, NULL, NULL, NULL, NULL, NULL, g.audience, g.scopes
  FROM {p}grants g JOIN page_ids ON page_ids.id = g.client_id`),

		clientExists: t(`SELECT 1 FROM {p}clients WHERE id = ?`),
		lockClient:   t(`SELECT 1 FROM {p}clients WHERE id = ? FOR UPDATE`),
		insertClient: t(`INSERT INTO {p}clients (id, public, disabled, token_ttl_ns, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)`),
		updateClient: t(`UPDATE {p}clients SET public = ?, disabled = ?, token_ttl_ns = ?, updated_at = ? WHERE id = ?`),
		setDisabled:  t(`UPDATE {p}clients SET disabled = ?, updated_at = ? WHERE id = ?`),
		touchClient:  t(`UPDATE {p}clients SET updated_at = ? WHERE id = ?`),
		deleteClient: t(`DELETE FROM {p}clients WHERE id = ?`),

		insertSecret:  t(`INSERT INTO {p}secrets (client_id, secret_id, seq, hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)`),
		nextSecretSeq: t(`SELECT COALESCE(MAX(seq) + 1, 0) FROM {p}secrets WHERE client_id = ?`),
		secretExists:  t(`SELECT 1 FROM {p}secrets WHERE client_id = ? AND secret_id = ?`),
		expireSecret:  t(`UPDATE {p}secrets SET expires_at = ? WHERE client_id = ? AND secret_id = ?`),
		deleteSecret:  t(`DELETE FROM {p}secrets WHERE client_id = ? AND secret_id = ?`),
		deleteSecrets: t(`DELETE FROM {p}secrets WHERE client_id = ?`),

		insertGrant:  t(`INSERT INTO {p}grants (client_id, audience, scopes) VALUES (?, ?, ?)`),
		deleteGrants: t(`DELETE FROM {p}grants WHERE client_id = ?`),

		insertAudit: t(`INSERT INTO {p}audit_events (event_time, event_type, client_id, remote_ip, user_agent, audience, scope, jti, secret_id, error_code, reason)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),

		// See postgresQueries for the arithmetic. In ON DUPLICATE KEY
		// UPDATE, columns name the row already stored.
		limitCheck: t(`SELECT COALESCE(MAX(CASE WHEN client_id = '' THEN refilled_at - ? ELSE refilled_at - ? END), 0)
  FROM {p}rate_limits WHERE ip = ? AND client_id IN (?, '')`),
		limitFail: t(`INSERT INTO {p}rate_limits (ip, client_id, refilled_at) VALUES (?, '', ?), (?, ?, ?)
ON DUPLICATE KEY UPDATE refilled_at = CASE
    WHEN client_id = '' THEN
        CASE WHEN refilled_at > ? THEN refilled_at ELSE GREATEST(refilled_at + ?, ?) END
    ELSE
        CASE WHEN refilled_at > ? THEN refilled_at ELSE GREATEST(refilled_at + ?, ?) END
END`),
		// A DELETE through the index on refilled_at locks index entries
		// before rows, the reverse of the upserts above, and deadlocks
		// with them under load. So the rows are found without locking
		// and deleted one statement each, by primary key: each locks
		// one row, row before index entry as an upsert does, so no
		// cycle of waits can form.
		limitCleanup:    t(`SELECT ip, client_id FROM {p}rate_limits WHERE refilled_at <= ? LIMIT ?`),
		limitCleanupRow: t(`DELETE FROM {p}rate_limits WHERE ip = ? AND client_id = ? AND refilled_at <= ?`),

		createMigrations: t(`CREATE TABLE IF NOT EXISTS {p}schema_migrations (version BIGINT NOT NULL PRIMARY KEY, applied_at BIGINT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`),
		appliedVersions:  t(`SELECT version FROM {p}schema_migrations`),
		insertVersion:    t(`INSERT INTO {p}schema_migrations (version, applied_at) VALUES (?, ?)`),
		// GET_LOCK waits at most 2 seconds per call so that a cancelled
		// context is noticed; Migrate calls it again until it succeeds.
		migrateLock:   `SELECT GET_LOCK(?, 2)`,
		migrateUnlock: `SELECT RELEASE_LOCK(?)`,
	}
}

func sqliteQueries(t func(string) string) *queries {
	return &queries{
		client: t(`SELECT 0 AS kind, c.id AS cid, c.public AS public, c.disabled AS disabled,
       c.token_ttl_ns AS n1, c.created_at AS n2, c.updated_at AS n3, NULL AS s1, NULL AS s2
  FROM {p}clients c WHERE c.id = ?
UNION ALL
SELECT 1, s.client_id, NULL, NULL, s.seq, s.created_at, s.expires_at, s.secret_id, s.hash
  FROM {p}secrets s WHERE s.client_id = ?
UNION ALL
SELECT 2, g.client_id, NULL, NULL, NULL, NULL, NULL, g.audience, g.scopes
  FROM {p}grants g WHERE g.client_id = ?`),
		list: t(`WITH page_ids AS (SELECT id FROM {p}clients WHERE id > ? ORDER BY id LIMIT ?)
SELECT 0 AS kind, c.id AS cid, c.public AS public, c.disabled AS disabled,
       c.token_ttl_ns AS n1, c.created_at AS n2, c.updated_at AS n3, NULL AS s1, NULL AS s2
  FROM {p}clients c JOIN page_ids ON page_ids.id = c.id
UNION ALL
SELECT 1, s.client_id, NULL, NULL, s.seq, s.created_at, s.expires_at, s.secret_id, s.hash
  FROM {p}secrets s JOIN page_ids ON page_ids.id = s.client_id
UNION ALL
SELECT 2, g.client_id, NULL, NULL, NULL, NULL, NULL, g.audience, g.scopes
  FROM {p}grants g JOIN page_ids ON page_ids.id = g.client_id`),

		clientExists: t(`SELECT 1 FROM {p}clients WHERE id = ?`),
		// Writers hold the database write lock from BEGIN IMMEDIATE on,
		// so no row lock is needed.
		lockClient:   t(`SELECT 1 FROM {p}clients WHERE id = ?`),
		insertClient: t(`INSERT INTO {p}clients (id, public, disabled, token_ttl_ns, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)`),
		updateClient: t(`UPDATE {p}clients SET public = ?, disabled = ?, token_ttl_ns = ?, updated_at = ? WHERE id = ?`),
		setDisabled:  t(`UPDATE {p}clients SET disabled = ?, updated_at = ? WHERE id = ?`),
		touchClient:  t(`UPDATE {p}clients SET updated_at = ? WHERE id = ?`),
		deleteClient: t(`DELETE FROM {p}clients WHERE id = ?`),

		insertSecret:  t(`INSERT INTO {p}secrets (client_id, secret_id, seq, hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)`),
		nextSecretSeq: t(`SELECT COALESCE(MAX(seq) + 1, 0) FROM {p}secrets WHERE client_id = ?`),
		secretExists:  t(`SELECT 1 FROM {p}secrets WHERE client_id = ? AND secret_id = ?`),
		expireSecret:  t(`UPDATE {p}secrets SET expires_at = ? WHERE client_id = ? AND secret_id = ?`),
		deleteSecret:  t(`DELETE FROM {p}secrets WHERE client_id = ? AND secret_id = ?`),
		deleteSecrets: t(`DELETE FROM {p}secrets WHERE client_id = ?`),

		insertGrant:  t(`INSERT INTO {p}grants (client_id, audience, scopes) VALUES (?, ?, ?)`),
		deleteGrants: t(`DELETE FROM {p}grants WHERE client_id = ?`),

		insertAudit: t(`INSERT INTO {p}audit_events (event_time, event_type, client_id, remote_ip, user_agent, audience, scope, jti, secret_id, error_code, reason)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),

		// See postgresQueries for the arithmetic. In ON CONFLICT DO
		// UPDATE, bare columns name the row already stored; the
		// two-argument MAX is SQLite's GREATEST.
		limitCheck: t(`SELECT COALESCE(MAX(CASE WHEN client_id = '' THEN refilled_at - ? ELSE refilled_at - ? END), 0)
  FROM {p}rate_limits WHERE ip = ? AND client_id IN (?, '')`),
		limitFail: t(`INSERT INTO {p}rate_limits (ip, client_id, refilled_at) VALUES (?, '', ?), (?, ?, ?)
ON CONFLICT (ip, client_id) DO UPDATE SET refilled_at = CASE
    WHEN client_id = '' THEN
        CASE WHEN refilled_at > ? THEN refilled_at ELSE MAX(refilled_at + ?, ?) END
    ELSE
        CASE WHEN refilled_at > ? THEN refilled_at ELSE MAX(refilled_at + ?, ?) END
END`),
		// DELETE ... LIMIT needs a compile-time option; rowid does not.
		limitCleanup: t(`DELETE FROM {p}rate_limits WHERE rowid IN (
    SELECT rowid FROM {p}rate_limits WHERE refilled_at <= ? LIMIT ?)`),

		createMigrations: t(`CREATE TABLE IF NOT EXISTS {p}schema_migrations (version INTEGER NOT NULL PRIMARY KEY, applied_at INTEGER NOT NULL)`),
		appliedVersions:  t(`SELECT version FROM {p}schema_migrations`),
		insertVersion:    t(`INSERT INTO {p}schema_migrations (version, applied_at) VALUES (?, ?)`),
	}
}

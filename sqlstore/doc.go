// Package sqlstore implements [m2mauth.ClientStore] and
// [m2mauth.ClientManager] over database/sql, for PostgreSQL, MySQL or
// MariaDB, and SQLite, together with an [Auditor] that writes audit events
// to a table and a [Limiter] through which replicas share the limits on
// failed client authentication.
//
// # Wiring
//
// The package takes a *sql.DB that the application opened with the driver
// of its choice, and never opens connections or imports a driver itself:
//
//	db, err := sql.Open("pgx", dsn) // github.com/jackc/pgx/v5/stdlib
//	store, err := sqlstore.New(db, sqlstore.Postgres, sqlstore.Config{})
//	err = store.Migrate(ctx) // creates or updates the tables
//	h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{...})
//
// Drivers known to work: github.com/jackc/pgx/v5/stdlib ([Postgres]),
// github.com/go-sql-driver/mysql ([MySQL]) and modernc.org/sqlite
// ([SQLite]). [New] does not migrate; [Store.Migrate] does, and is safe to
// run from every replica at start-up.
//
// # Schema
//
// Every table name starts with [Config.TablePrefix] ("m2mauth_" by
// default), so several stores can share a database:
//
//   - clients: id (primary key), public, disabled, token_ttl_ns,
//     created_at, updated_at.
//   - secrets: client_id (references clients, ON DELETE CASCADE),
//     secret_id, seq (the order secrets were added in), hash (the one-way
//     hash, never the secret), created_at, expires_at (NULL for none);
//     primary key (client_id, secret_id).
//   - grants: client_id, audience, scopes (space-delimited, as in the
//     "scope" parameter); primary key (client_id, audience).
//   - audit_events: id (auto-increment), event_time, event_type,
//     client_id, remote_ip, user_agent, audience, scope, jti, secret_id,
//     error_code, reason.
//   - rate_limits: ip, client_id (empty for the address's own bucket),
//     refilled_at (when the bucket is full again); primary key (ip,
//     client_id), an index on refilled_at.
//   - schema_migrations: version, applied_at.
//
// Times are stored as BIGINT unix microseconds: the same on every engine,
// with no driver time-zone conversion to get wrong. Times read back are in
// UTC and rounded down to the microsecond, so a secret's expiry can only
// come earlier, by less than a microsecond, than the one set. TokenTTL is
// stored in nanoseconds.
//
// Client ids, secret ids and audiences compare byte by byte, as the
// protocol requires (they are case-sensitive): PostgreSQL columns use
// COLLATE "C", SQLite's default BINARY collation does so already, and
// MySQL stores them as VARBINARY(255) in InnoDB tables whose text columns
// are utf8mb4. VARBINARY rather than a utf8mb4_bin VARCHAR because
// utf8mb4_bin is a PAD SPACE collation, which ignores trailing spaces and
// would make "a" and "a " one id. Ids therefore sort in byte order in
// [Store.ListClients], as they do in memstore.
//
// Beyond what [m2mauth.Client.Validate] checks, the store refuses secret
// ids and audiences longer than 255 bytes, and secret ids, hashes and
// audiences that are not valid UTF-8 or contain a NUL byte.
//
// # Queries and concurrency
//
// [Store.Client], on the path of every token request, is one prepared
// statement, a UNION ALL of the client's row, its secrets and its grants:
// one round trip and one consistent snapshot. The statement is prepared on
// first use, so [New] needs no database; [Store.Close] releases it.
// [Store.ListClients] is one query per page.
//
// Every change is one transaction that changes nothing if it fails. Each
// begins by locking the client's row (SELECT ... FOR UPDATE) on PostgreSQL
// and MySQL, so concurrent changes to one client take turns; on SQLite it
// begins with BEGIN IMMEDIATE, which takes the database write lock up
// front. A duplicate client id is found by looking inside the
// transaction, and a concurrent insert of the same id, refused by the
// primary key, is recognised by looking again after the failure: either
// way the error wraps [m2mauth.ErrClientExists].
//
// # Shared rate limiting
//
// The token handler's default limiter, [m2mauth.RateLimiter], counts
// failed authentications in memory, so behind a load balancer each
// replica would allow its own burst. A [Limiter] keeps the same buckets in
// the rate_limits table instead, so failures sent to any replica count on
// all of them:
//
//	limiter, err := sqlstore.NewLimiter(db, sqlstore.Postgres, sqlstore.LimiterConfig{})
//	h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{Limiter: limiter, ...})
//
// [LimiterConfig] has the limits of [m2mauth.RateLimiterConfig], with the
// same defaults: 5 failures in a row per client id and address, one
// forgiven every 12 seconds, and 20 per address, one forgiven every 3
// seconds. They are the same token buckets, not time windows that
// approximate them: a row holds the instant its bucket is full again,
// from which the tokens it holds at any time follow, so a check answers
// as the in-memory limiter would. The approximations lie elsewhere. Times
// are kept to the microsecond. Each replica reads its own clock, so the
// replicas' clocks must agree: a skew of a second moves a lockout, or the
// cleanup of its row, by up to a second. And, as in memory, a check and
// the failure that may follow it are separate statements, so requests
// that pass one check together may each fail once more than the burst.
//
// [Limiter.Check] is one query that reads both buckets, and
// [Limiter.Fail] one upsert that updates both (INSERT ... ON CONFLICT DO
// UPDATE on PostgreSQL and SQLite, INSERT ... ON DUPLICATE KEY UPDATE on
// MySQL), which the database applies atomically, however many replicas
// fail at once. Successful requests write nothing. With the database
// limiter, a successful token request is two queries (the check and the
// client), and a failed authentication adds the upsert.
//
// A row whose bucket has refilled counts no more than no row, and is
// deleted by [Limiter.Cleanup]: at most CleanupBatch such rows (1000 by
// default) at a time, found through the index on refilled_at. Fail runs
// it once every CleanupInterval (one minute by default) as measured by
// [LimiterConfig.Now], with no timer or goroutine, and again on the next
// Fail while it finds full batches, so the table holds about the buckets
// of the last few minutes' failures. Once failures stop, their rows stay
// until the next failure or a call to Cleanup, which a host may also run
// from a scheduled job. Cleanups cannot deadlock with failures:
// PostgreSQL's skips rows that are locked, and MySQL's deletes one row
// per statement.
//
// # SQLite
//
// Open SQLite with a busy timeout, so that writers wait for each other
// instead of failing with SQLITE_BUSY, with foreign keys on, and
// preferably in WAL mode, for example with modernc.org/sqlite:
//
//	file:/var/lib/app/auth.db?_pragma=foreign_keys(1)&_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)
//
// The journal mode is kept in the file, but switching a new file to WAL
// needs it to itself, and can fail at once with SQLITE_BUSY, busy timeout
// or not, while another connection opens it: when several processes may
// open a new database at the same moment, create it first, from one.
//
// [Store.DeleteClient] deletes secrets and grants itself, so nothing is
// left behind even when foreign keys are off. An in-memory database
// (":memory:") is private to each connection: use it only with
// db.SetMaxOpenConns(1).
package sqlstore

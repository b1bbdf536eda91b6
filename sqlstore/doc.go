// Package sqlstore implements [m2mauth.ClientStore],
// [m2mauth.ClientManager], [m2mauth.Revoker] and [m2mauth.KeyStore] over
// database/sql, for PostgreSQL, MySQL or MariaDB, and SQLite, together
// with an [Auditor] that writes audit events to a table and a [Limiter]
// through which replicas share the limits on failed client
// authentication. The revocations it records reach every replica's
// validators through an [m2mauth.RevocationPoller] over the same
// database, and the managed signing keys it keeps reach every replica's
// [m2mauth.ManagedKeys].
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
//     created_at, updated_at, can_introspect, tokens_revoked_at (NULL for
//     never).
//   - secrets: client_id (references clients, ON DELETE CASCADE),
//     secret_id, seq (the order secrets were added in), hash (the one-way
//     hash, never the secret), created_at, expires_at (NULL for none);
//     primary key (client_id, secret_id).
//   - grants: client_id, audience, scopes (space-delimited, as in the
//     "scope" parameter); primary key (client_id, audience).
//   - audit_events: id (auto-increment), event_time, event_type,
//     client_id, remote_ip, user_agent, audience, scope, jti, secret_id,
//     error_code, reason, event_key (the [Auditor]'s key of the event,
//     16 bytes; NULL in rows written before the column); an index on
//     event_time, one on (client_id, event_time, id) (on SQLite
//     (client_id, event_time), which SQLite ends with id; on MySQL the
//     first 191 characters of client_id), and a unique one on event_key.
//   - rate_limits: ip, client_id (empty for the address's own bucket),
//     refilled_at (when the bucket is full again), pending (reservations
//     in flight), pending_addr (of those, the ones holding a token of the
//     address's bucket), lease_until (until when they count),
//     authenticated_at (when the client last authenticated from the
//     address), idle_at (from when the row means no more than no row);
//     primary key (ip, client_id), an index on idle_at.
//   - revocations: kind ("client" for a client's watermark, "token" for
//     a revoked token), id (the client id or the token's jti), at (the
//     watermark, or the token's expiry), expires_at (from when the row
//     can no longer revoke a valid token); primary key (kind, id), an
//     index on expires_at.
//   - revocation_state: one row, with version (incremented by every
//     change to the revocations) and tokens_revoked_at (the store-wide
//     watermark, NULL for none).
//   - signing_keys: kid (primary key), generation (unique), algorithm,
//     sealed (the key material as a [m2mauth.KeySealer] encrypted it,
//     never in the clear: BYTEA, LONGBLOB or BLOB), published_at,
//     active_at, revoked_at (NULL until revoked).
//   - key_events: kid, event_type; primary key (kid, event_type), one
//     row per audit event of a key's life, claimed by the replica that
//     saw it first, and deleted with the key.
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
// would make "a" and "a " one id; the audit table's client ids are
// binary too (a BLOB, migration 0007 on MySQL). Ids therefore sort in
// byte order in [Store.ListClients], as they do in memstore.
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
// first use, so [New] needs no database; [Store.Close] releases it. On
// SQLite, where reading the client costs more than the rest of a token
// request, the Store keeps the clients it read and, while no client has
// changed, reads only a stamp that every change replaces, on a
// connection it borrows from db's pool for 100ms at a time in WAL mode
// when the pool allows at least four (see [Store.Client]).
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
// # Audit trail and usage
//
// An [Auditor] writes the token endpoint's events to the audit_events
// table. Given it as [Config.Auditor], the Store writes there too the
// events of client administration: every change that commits, with the
// client, the secret concerned and the fields changed (the [Store] type
// lists them), never a secret or its hash:
//
//	auditor, err := sqlstore.NewAuditor(db, sqlstore.Postgres, sqlstore.AuditorConfig{})
//	store, err := sqlstore.New(db, sqlstore.Postgres, sqlstore.Config{Auditor: auditor})
//
// The Store reads the table back, each in one query:
// [Store.AuditEvents] returns the newest events, of one client or type if
// asked; [Store.Usage] counts one client's tokens, failed
// authentications by reason, refusals and addresses over a span of time;
// [Store.UsageAll] does so for the busiest clients. A client's events are
// read through the index on (client_id, event_time, id), so their cost
// grows with that client's events, not with the table; UsageAll reads
// every event of its span.
//
// Version 4 of the schema made that index out of the (client_id,
// event_time) index of version 1. On PostgreSQL, building it blocks
// writes to the audit table until it is done, and so holds the Auditor's
// events (see its migration file for building it beforehand with CREATE
// INDEX CONCURRENTLY); MySQL builds it online, and SQLite needs no
// change.
//
// The unique index on event_key came with version 8 of the schema (the
// column with 7 on PostgreSQL). On PostgreSQL adding the column is
// immediate, and the index is built in the migration's transaction,
// which reads the whole table and holds the Auditor's events meanwhile
// (its migration file shows how to build it beforehand with CREATE
// UNIQUE INDEX CONCURRENTLY); MySQL adds both in one online change that
// rebuilds the table; SQLite adds both in one transaction. On PostgreSQL
// a database user limited to appending audit rows needs a column
// privilege more for it (see [Auditor]).
//
// Nothing deletes audit rows: keep the table to the span you need with a
// scheduled DELETE FROM <prefix>audit_events WHERE event_time < ?, which
// the index on event_time serves.
//
// # Revocations
//
// The Store records revocations ([Store.RevokeToken],
// [Store.RevokeClientTokens], [Store.RevokeAllTokens]; disabling and
// deleting a client revoke its tokens too) and is an
// [m2mauth.RevocationFeed]. Validators must not query a database per
// token, so each replica polls the store with an
// [m2mauth.RevocationPoller] and checks tokens against the snapshot it
// holds in memory:
//
//	poller, err := m2mauth.NewRevocationPoller(store, m2mauth.RevocationPollerConfig{})
//	v, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{Revocations: poller, ...})
//	rh, err := h.RevocationHandler(store) // RFC 7009, on the token server
//
// Every change writes its rows and increments the version in one
// transaction, so a poll, whichever replica made the change, either sees
// the old version or the new one with the change: an unchanged version
// costs each poll one small query, a changed one a second query that
// reads the live rows. A revocation so reaches every replica's validators
// within the poller's Interval (5 seconds by default) plus one poll.
//
// Rows that can no longer revoke a valid token (a token's, past its
// expiry plus [m2mauth.RevocationGrace]; a watermark's, past
// [m2mauth.MaxClientTokenTTL] plus that grace) are deleted in batches of
// 1000 by [Store.PruneRevocations], which [Store.RevocationsSince] runs
// once a minute, so the table holds about the live revocations. A
// client's watermark is a row of its own, which outlives the client: the
// tokens of a deleted client stay revoked if its id is registered again.
//
// # Managed signing keys
//
// The Store is an [m2mauth.KeyStore]: an [m2mauth.ManagedKeys] on each
// replica keeps the fleet's signing keys in the signing_keys table,
// sealed under a key-encryption key that every replica holds and the
// database never sees:
//
//	sealer, err := m2mauth.NewAESKeySealer(kek) // 32 bytes, e.g. from m2mauth.ParseKEK
//	keys, err := m2mauth.NewManagedKeys(ctx, store, sealer, m2mauth.ManagedKeysConfig{})
//	h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{...})
//
// Replicas read the table in the background (one query), never per
// token. Every write is one statement, or one transaction: publishing a
// key is an insert that ignores a conflict on its kid or generation (ON
// CONFLICT DO NOTHING on PostgreSQL and SQLite, ON DUPLICATE KEY UPDATE
// of the kid to itself on MySQL), so of replicas rotating at once
// exactly one adds the key; each audit event of a key's life is claimed
// the same way in key_events, so that one replica reports it;
// [Store.ResealSigningKeys] replaces the sealed keys of a KEK rotation
// all in one transaction; and [Store.DeleteSigningKey] deletes a key and
// its claims together. On MySQL the Store relies on the driver counting
// changed rows, its default: the DSN must not set clientFoundRows.
//
// # Shared rate limiting
//
// The token handler's default limiter, [m2mauth.RateLimiter], counts
// attempts in memory, so behind a load balancer each replica would allow
// its own burst. A [Limiter] keeps the same buckets in the rate_limits
// table instead, so attempts sent to any replica count on all of them:
//
//	limiter, err := sqlstore.NewLimiter(db, sqlstore.Postgres, sqlstore.LimiterConfig{})
//	h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{Limiter: limiter, ...})
//
// [LimiterConfig] has the limits of [m2mauth.RateLimiterConfig], with the
// same defaults: 5 failures in a row per client id and address, one
// forgiven every 12 seconds; 20 per address, one forgiven every 3
// seconds; and a client that authenticated from an address within 24
// hours is not refused there because of the address's bucket. They are
// the same token buckets, not time windows that approximate them: a row
// holds the instant its bucket is full again, from which the tokens it
// holds at any time follow, so the database limiter decides as the
// in-memory one would. Times are kept to the microsecond, and each
// replica reads its own clock, so the replicas' clocks must agree: a skew
// of a second moves a lockout, or the cleanup of its row, by up to a
// second.
//
// Every attempt is reserved before its secret is verified: [Limiter.Reserve]
// takes a token from each bucket in the same transaction that checks
// them, and [Limiter.Release] gives the tokens back once the client has
// authenticated, or keeps them when it failed. However many guesses
// arrive at once, at however many replicas, no more than the burst of
// them is verified. Attempts in flight are counted in the rows, so a
// client sending many requests at once with its secret waits for its
// own attempts rather than being refused; and the count lapses, so the
// attempts of a replica that died mid-request count as failures until
// the buckets refill, and no longer block them. The [Limiter] type
// explains the design.
//
// Reserve and Release are each one transaction on the two rows of an
// attempt, locked in primary key order so that replicas never deadlock:
// with the database limiter a token request is the reservation, the
// client's query and the release. On PostgreSQL each transaction is an
// upsert that locks the rows and an UPDATE; on MySQL and SQLite an
// insert that locks them, a SELECT and an UPDATE. A client that
// authenticated from the address within KnownWindow, the common case,
// takes a fast path instead: the address's bucket does not apply to it,
// so Reserve and Release are each one UPDATE of the client's row, which
// locks, decides and writes it in one statement (see [Limiter]); on
// PostgreSQL the reservation's statement also reads the client, and on
// MySQL a procedure that [Store.Migrate] creates runs both, for a token
// handler whose Store shares the Limiter's database. Every token request
// so commits twice. PostgreSQL's commits of the limiter do
// not wait for the disk (synchronous_commit is off for them), so a crash
// of the server may forget the last fraction of a second of attempts;
// MySQL has no such setting per transaction, and each commit waits for
// the disk as innodb_flush_log_at_trx_commit says; on SQLite see below.
//
// A row that means no more than no row (its bucket full, nothing in
// flight, its client no longer known at the address) is deleted by
// [Limiter.Cleanup]: at most CleanupBatch such rows (1000 by default) at
// a time, found through the index on idle_at. Release runs it once every
// CleanupInterval (one minute by default) as measured by
// [LimiterConfig.Now], with no timer or goroutine, and again on the next
// Release while it finds full batches, so the table holds about the
// buckets of the last few minutes' failures and the clients known at
// their addresses. A host may also run Cleanup from a scheduled job.
// Cleanups cannot deadlock with reservations: PostgreSQL's skips rows that
// are locked, and MySQL's deletes one row per statement.
//
// # SQLite
//
// Open SQLite with a busy timeout, so that writers wait for each other
// instead of failing with SQLITE_BUSY, with foreign keys on, and
// preferably in WAL mode, for example with modernc.org/sqlite:
//
//	file:/var/lib/app/auth.db?_pragma=foreign_keys(1)&_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)
//
// With the database limiter every token request writes twice, so in WAL
// mode also consider _pragma=synchronous(NORMAL): commits then skip the
// fsync that costs a millisecond or more on a disk, and a power loss may
// undo the last of them but cannot corrupt the database. The limiter runs
// its writes one at a time and, when another process holds the lock past
// the busy timeout, waits on until the request's deadline.
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

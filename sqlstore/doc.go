// Package sqlstore implements [m2mauth.ClientStore] and
// [m2mauth.ClientManager] over database/sql, for PostgreSQL, MySQL or
// MariaDB, and SQLite, together with an [Auditor] that writes audit events
// to a table.
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
// # SQLite
//
// Open SQLite with a busy timeout, so that writers wait for each other
// instead of failing with SQLITE_BUSY, with foreign keys on, and
// preferably in WAL mode, for example with modernc.org/sqlite:
//
//	file:/var/lib/app/auth.db?_pragma=foreign_keys(1)&_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)
//
// [Store.DeleteClient] deletes secrets and grants itself, so nothing is
// left behind even when foreign keys are off. An in-memory database
// (":memory:") is private to each connection: use it only with
// db.SetMaxOpenConns(1).
package sqlstore

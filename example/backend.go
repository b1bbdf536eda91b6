package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver
	_ "modernc.org/sqlite"             // the "sqlite" driver

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// backend is the opened client store and what else lives in its database.
type backend struct {
	store m2mauth.ClientManager
	// revoker is the store again: where revocations are recorded.
	revoker m2mauth.Revoker
	// mem is the store again for memory: its own RevocationSource, with
	// no delay; nil for a database, whose replicas poll it (see sql).
	mem     *memstore.Store
	sql     *sqlstore.Store   // the store again, with its audit and revocation queries; nil for memory
	auditor *sqlstore.Auditor // the audit table's; nil for memory
	limiter m2mauth.Limiter   // shared by replicas; nil for memory and SQLite
	kind    string            // "SQLite file m2mauth.db", "PostgreSQL at host:5432", …
	close   func() error
}

// dbPool bounds the connections a server keeps to its database.
type dbPool struct {
	maxOpen, maxIdle int
	maxLifetime      time.Duration // 0: connections are reused forever
}

// defaultPool is the pool of the admin commands and the default of serve's
// -db-max-open, -db-max-idle and -db-conn-max-lifetime. A replica holds
// at most maxOpen connections, so N replicas need N × 20 of the server's
// connections (PostgreSQL's max_connections is 100 by default).
func defaultPool() dbPool {
	return dbPool{maxOpen: 20, maxIdle: 10, maxLifetime: 30 * time.Minute}
}

// check refuses settings that would leave the pool unbounded or unusable.
func (p dbPool) check() error {
	switch {
	case p.maxOpen < 1:
		return errors.New("-db-max-open must be at least 1: an unbounded pool lets a burst of requests exhaust the database's connections")
	case p.maxIdle < 0:
		return errors.New("-db-max-idle must not be negative")
	case p.maxLifetime < 0:
		return errors.New("-db-conn-max-lifetime must not be negative")
	}
	return nil
}

// backendOptions say how to open a backend.
type backendOptions struct {
	pool dbPool
	// auditLog receives the audit table auditor's failures (default:
	// slog.Default()); the admin commands pass their stderr. The store's
	// changes to clients are audited in the table too, so that "audit
	// tail" shows what changed and when.
	auditLog *slog.Logger
	// server says that the backend is the server's: its auditor also
	// records token requests, in batches, and spills to a file while the
	// table cannot be written. The admin commands write each event before
	// the command ends and leave the server's spill file alone.
	server bool
	// existing refuses a SQLite file that does not exist yet, for the
	// commands that only work on what is there: a mistyped -db path is
	// an error, not a new, empty database.
	existing bool
	// auditSpill is the server auditor's spill file: "" for the default
	// (beside the SQLite file, or m2mauth-audit.spill in the working
	// directory), "none" for none.
	auditSpill string
}

// defaultAuditSpill is the spill file of a server database's auditor when
// -audit-spill is not given.
const defaultAuditSpill = "m2mauth-audit.spill"

// migrateTimeout bounds bringing the schema up to date at start-up.
const migrateTimeout = 15 * time.Minute

// defaultConnectTimeout bounds connecting to a server database at
// start-up, and each later dial, unless -db sets its own: timeout=… for
// MySQL, connect_timeout=… (seconds) for PostgreSQL.
const defaultConnectTimeout = 5 * time.Second

// mysqlIOTimeout is the readTimeout and writeTimeout of MySQL connections
// unless -db sets them: a connection to a server that stopped answering
// fails after it instead of hanging. It is longer than InnoDB's default
// lock wait (50s), so a query waiting for a row lock gets MySQL's own
// error rather than a cut connection.
const mysqlIOTimeout = 60 * time.Second

// dbSpec is a -db value, read.
type dbSpec struct {
	memory  bool
	driver  string // database/sql driver name
	dsn     string // its data source name; may hold a password, never print it
	dialect sqlstore.Dialect
	kind    string // "SQLite file m2mauth.db", "PostgreSQL at host:5432", …
	file    string // the SQLite file, if any
	// connectTimeout bounds the first connection to a server database.
	connectTimeout time.Duration
	timeoutParam   string // how -db sets it, for messages
}

// createPrivate creates the SQLite database file, unless it exists,
// readable and writable by its owner only: it holds the clients' secret
// hashes, the audit trail and the sealed signing keys. SQLite gives its
// -wal and -shm files the database file's mode.
func createPrivate(file string) error {
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case errors.Is(err, fs.ErrExist):
		return nil
	case err != nil:
		return err
	}
	return f.Close()
}

// redactDB returns the -db value spec for output: a postgres:// or
// mysql:// URL with its user's password and any parameter naming a
// password (password, sslpassword) as "xxxxx" (what [url.URL.Redacted]
// writes); anything else as it is, to be pasted back.
func redactDB(spec string) string {
	scheme, _, isURL := strings.Cut(spec, "://")
	if !isURL || scheme != "postgres" && scheme != "postgresql" && scheme != "mysql" {
		return spec
	}
	u, err := url.Parse(spec)
	if err != nil {
		return scheme + "://xxxxx"
	}
	q := u.Query()
	redacted := false
	for k := range q {
		if strings.Contains(strings.ToLower(k), "password") {
			q[k] = []string{"xxxxx"}
			redacted = true
		}
	}
	if _, has := u.User.Password(); !has && !redacted {
		return spec
	}
	if redacted {
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// server reports whether d is a database that replicas may share.
func (d *dbSpec) server() bool { return !d.memory && d.file == "" }

// parseDB reads -db: "memory", a postgres:// (or postgresql://) URL, a
// mysql:// URL, or a SQLite file path, optionally written sqlite://PATH.
// Any other scheme is refused rather than taken for a file name.
func parseDB(spec string) (*dbSpec, error) {
	scheme, _, isURL := strings.Cut(spec, "://")
	switch {
	case spec == "memory":
		return &dbSpec{memory: true, kind: "memory (clients are lost on exit)"}, nil
	case spec == "":
		return nil, errors.New(`-db is empty: give a SQLite file path, a postgres://… or mysql://… URL, or "memory"`)
	case isURL && (scheme == "postgres" || scheme == "postgresql"):
		return postgresSpec(spec)
	case isURL && scheme == "mysql":
		return mysqlSpec(spec)
	case isURL && scheme == "sqlite":
		return sqliteSpec(strings.TrimPrefix(spec, "sqlite://"))
	case isURL:
		// Only the scheme is repeated: the rest may hold a password.
		return nil, fmt.Errorf(`-db: unknown scheme %q: want a SQLite file path, a postgres://… or mysql://… URL, or "memory"`, scheme)
	case strings.Contains(spec, "@tcp(") || strings.Contains(spec, "@unix(") || strings.HasPrefix(spec, "tcp(") || strings.HasPrefix(spec, "unix(") || hasUserInfo(spec):
		return nil, errors.New("-db: this looks like a go-sql-driver/mysql DSN (user:pass@tcp(host:port)/db); write it as a URL: mysql://user:pass@host:port/db?params")
	case keywordDSN(spec):
		// Not repeated: it may hold a password.
		return nil, errors.New("-db: this looks like a PostgreSQL key=value connection string; write it as a URL: postgres://user:pass@host:port/db?params")
	}
	return sqliteSpec(spec)
}

// hasUserInfo reports whether spec starts with user:password@, before
// any slash, as go-sql-driver/mysql's short DSNs do (user:pass@/db): no
// SQLite file path a person would write.
func hasUserInfo(spec string) bool {
	at := strings.IndexByte(spec, '@')
	slash := strings.IndexByte(spec, '/')
	return at > 0 && (slash < 0 || at < slash) && strings.Contains(spec[:at], ":")
}

// keywordDSN reports whether spec is, or starts like, a PostgreSQL
// key=value connection string (host=… user=… password=…): taken for a
// SQLite file name it would be printed, password and all, and made into
// a file.
func keywordDSN(spec string) bool {
	lower := strings.ToLower(spec)
	if strings.Contains(lower, "password=") {
		return true
	}
	key, _, ok := strings.Cut(strings.TrimSpace(lower), "=")
	if !ok {
		return false
	}
	switch key {
	case "host", "hostaddr", "port", "dbname", "user", "passfile", "sslmode", "service", "connect_timeout":
		return true
	}
	return false
}

func sqliteSpec(file string) (*dbSpec, error) {
	if file == "" {
		return nil, errors.New("-db: sqlite:// names no file")
	}
	// The data source name is a URI, in which SQLite decodes %XX and a
	// "?" or "#" ends the path: escaped, they name the file as given.
	path := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(file)
	return &dbSpec{
		driver: "sqlite", dialect: sqlstore.SQLite, kind: "SQLite file " + file, file: file,
		dsn: "file:" + path + "?_pragma=foreign_keys(1)&_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)",
	}, nil
}

// postgresSpec checks a postgres:// URL as pgx reads it (environment
// variables such as PGHOST included) and adds connect_timeout unless it or
// PGCONNECT_TIMEOUT is set.
func postgresSpec(spec string) (*dbSpec, error) {
	u, err := url.Parse(spec)
	if err != nil {
		return nil, errors.New("-db: not a valid postgres:// URL") // url's error repeats the password
	}
	dsn := spec
	if !u.Query().Has("connect_timeout") && os.Getenv("PGCONNECT_TIMEOUT") == "" {
		sep := "?"
		if strings.Contains(spec, "?") {
			sep = "&"
		}
		dsn += sep + "connect_timeout=" + strconv.Itoa(int(defaultConnectTimeout/time.Second))
	}
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		// pgconn hides only parameters named exactly password and
		// sslpassword: name the URL as redactDB does, then give the
		// cause.
		return nil, fmt.Errorf("-db %s: %s", redactDB(spec), pgParseCause(u, err))
	}
	addr := cfg.Host
	if !strings.HasPrefix(addr, "/") { // not a Unix socket directory
		addr = net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
	}
	d := &dbSpec{
		driver: "pgx", dsn: dsn, dialect: sqlstore.Postgres, kind: "PostgreSQL at " + addr,
		connectTimeout: defaultConnectTimeout, timeoutParam: "connect_timeout=SECONDS",
	}
	if cfg.ConnectTimeout > 0 {
		d.connectTimeout = cfg.ConnectTimeout
	}
	return d, nil
}

// pgParseCause is why pgconn could not parse the URL u: its error
// without the connection string it quotes, or less when even that holds
// one of u's secrets.
func pgParseCause(u *url.URL, err error) string {
	msg := err.Error()
	if pce := (*pgconn.ParseConfigError)(nil); errors.As(err, &pce) {
		if i := strings.LastIndex(msg, "`: "); i >= 0 {
			msg = msg[i+len("`: "):]
		}
	}
	secrets := []string{}
	if p, ok := u.User.Password(); ok {
		secrets = append(secrets, p)
	}
	for k, vs := range u.Query() {
		if strings.Contains(strings.ToLower(k), "password") {
			secrets = append(secrets, vs...)
		}
	}
	for _, v := range secrets {
		if v != "" && strings.Contains(msg, v) {
			return "it does not parse"
		}
	}
	return msg
}

// mysqlSpec turns mysql://user:pass@host:port/db?params into the
// go-sql-driver/mysql form, with the timeout, readTimeout and writeTimeout
// params set unless given.
func mysqlSpec(spec string) (*dbSpec, error) {
	u, err := url.Parse(spec)
	if err != nil {
		return nil, errors.New("-db: not a valid mysql://user:pass@host:port/db URL") // url's error repeats the password
	}
	cfg := mysql.NewConfig()
	cfg.Net = "tcp"
	host, port := u.Hostname(), u.Port()
	if host == "" {
		host = "127.0.0.1"
	}
	if port == "" {
		port = "3306"
	}
	cfg.Addr = net.JoinHostPort(host, port)
	cfg.User = u.User.Username()
	cfg.Passwd, _ = u.User.Password()
	cfg.DBName = strings.TrimPrefix(u.Path, "/")
	if strings.Contains(cfg.DBName, "/") {
		return nil, fmt.Errorf("-db: %q is not a database name: mysql://user:pass@host:port/db", cfg.DBName)
	}
	query := u.Query()
	for k, v := range query {
		if len(v) > 1 {
			return nil, fmt.Errorf("-db: parameter %q is given %d times", k, len(v))
		}
		if cfg.Params == nil {
			cfg.Params = map[string]string{}
		}
		cfg.Params[k] = v[0]
	}
	// The driver reads its own parameters (parseTime, tls, timeout, …)
	// and checks their values when it parses a DSN.
	cfg, err = mysql.ParseDSN(cfg.FormatDSN())
	if err != nil {
		return nil, fmt.Errorf("-db: %w", err)
	}
	if !query.Has("timeout") {
		cfg.Timeout = defaultConnectTimeout
	}
	if !query.Has("readTimeout") {
		cfg.ReadTimeout = mysqlIOTimeout
	}
	if !query.Has("writeTimeout") {
		cfg.WriteTimeout = mysqlIOTimeout
	}
	d := &dbSpec{
		driver: "mysql", dsn: cfg.FormatDSN(), dialect: sqlstore.MySQL, kind: "MySQL at " + cfg.Addr,
		connectTimeout: defaultConnectTimeout, timeoutParam: "timeout=DURATION",
	}
	if cfg.Timeout > 0 {
		d.connectTimeout = cfg.Timeout
	}
	return d, nil
}

// openBackend opens and migrates the store of d.
func openBackend(ctx context.Context, d *dbSpec, opts backendOptions) (*backend, error) {
	if d.memory {
		mem := memstore.New()
		return &backend{store: mem, revoker: mem, mem: mem, kind: d.kind, close: func() error { return nil }}, nil
	}
	driver, dsn, dialect, kind, file := d.driver, d.dsn, d.dialect, d.kind, d.file
	if opts.existing && file != "" {
		if _, err := os.Stat(file); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("-db %s: no such database file (it is created by serve or client create)", file)
		}
	}
	if file != "" {
		if err := createPrivate(file); err != nil {
			return nil, fmt.Errorf("%s: %w", kind, err)
		}
		if mode, open := openToOthers(file); open {
			logger := opts.auditLog
			if logger == nil {
				logger = slog.Default()
			}
			logger.Warn("the database file is readable by others: it holds secret hashes, the audit trail and sealed keys; chmod 600 it and its -wal and -shm files",
				"file", file, "mode", mode.String())
		}
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, err
	}
	// Past maxOpen, a query waits for a free connection (within the token
	// handler's store timeout, then 503 with Retry-After) instead of
	// opening one more and being refused by the server. SQLite takes the
	// same pool: in WAL mode readers do not block each other or the
	// writer, and writers (the audit writer, the admin commands) take
	// turns through busy_timeout and BEGIN IMMEDIATE.
	db.SetMaxOpenConns(opts.pool.maxOpen)
	db.SetMaxIdleConns(min(opts.pool.maxIdle, opts.pool.maxOpen))
	db.SetConnMaxLifetime(opts.pool.maxLifetime)
	fail := func(err error) (*backend, error) {
		db.Close()
		return nil, fmt.Errorf("%s: %w", kind, err)
	}
	if d.server() {
		if err := ping(ctx, db, d); err != nil {
			db.Close()
			return nil, err
		}
	}
	// The schema first: the auditor may write a spill file left by an
	// earlier process to the audit table as it starts.
	mstore, err := sqlstore.New(db, dialect, sqlstore.Config{})
	if err != nil {
		return fail(err)
	}
	// A migration that rewrites a large table (the audit events of an
	// older release, say) takes minutes on MySQL; one given up on halfway
	// goes on in the server while the start fails. Ctrl-C still stops the
	// wait.
	mctx, cancel := context.WithTimeout(ctx, migrateTimeout)
	defer cancel()
	err = mstore.Migrate(mctx)
	if err = errors.Join(err, mstore.Close()); err != nil {
		return fail(err)
	}
	logger := opts.auditLog
	if logger == nil {
		logger = slog.Default()
	}
	acfg := sqlstore.AuditorConfig{Logger: logger}
	if opts.server {
		spill := opts.auditSpill
		switch {
		case spill == "none":
			spill = ""
		case spill == "" && file != "":
			spill = strings.TrimSuffix(file, filepath.Ext(file)) + "-audit.spill"
		case spill == "":
			spill = defaultAuditSpill
		}
		// Audit rows are written in batches by a background writer, so
		// the table does not slow down token requests. While the database
		// fails, events are held and retried, then spilled to the file
		// (synced, and written to the table when it answers again, by
		// this process or the next); Close flushes them. Every event is
		// also in the JSON log, so the last-resort fallback is silent.
		acfg.QueueSize = 1024
		// Waiting 2ms for more events to join a transaction makes the
		// batches of a busy server larger, and each row cheaper to
		// write (a fifth more tokens a second on SQLite).
		acfg.BatchDelay = 2 * time.Millisecond
		acfg.SpillFile = spill
		acfg.Fallback = m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {})
	}
	// An admin command writes its events before it returns (no queue, no
	// spill file); an event the table cannot take is logged in full on
	// stderr by the default fallback.
	auditor, err := sqlstore.NewAuditor(db, dialect, acfg)
	if err != nil {
		return fail(err)
	}
	fail = func(err error) (*backend, error) {
		auditor.Close()
		db.Close()
		return nil, fmt.Errorf("%s: %w", kind, err)
	}
	// The logger also receives the errors of the pruning of dead
	// revocations, which polling the store runs now and then.
	store, err := sqlstore.New(db, dialect, sqlstore.Config{Auditor: auditor, Logger: logger})
	if err != nil {
		return fail(err)
	}
	b := &backend{
		store: store, revoker: store, sql: store, auditor: auditor, kind: kind,
		// The auditor is closed before the database, so that its
		// queued rows are written.
		close: func() error { return errors.Join(store.Close(), auditor.Close(), db.Close()) },
	}
	if file == "" {
		// A server database is shared by replicas: so are the failed-
		// authentication counts. (A SQLite file has one server process;
		// its in-memory limiter costs no query.)
		if b.limiter, err = sqlstore.NewLimiter(db, dialect, sqlstore.LimiterConfig{}); err != nil {
			return fail(err)
		}
	}
	return b, nil
}

// ping connects to a server database within its connect timeout, so that
// a wrong host or port, or a server that accepts connections and never
// answers, is reported at start-up with its address.
func ping(ctx context.Context, db *sql.DB, d *dbSpec) error {
	pctx, cancel := context.WithTimeout(ctx, d.connectTimeout)
	defer cancel()
	err := db.PingContext(pctx)
	var netErr net.Error
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("%s: %w", d.kind, ctx.Err())
	case pctx.Err() != nil, errors.As(err, &netErr) && netErr.Timeout():
		return fmt.Errorf("%s did not answer within %v: check the host and port in -db and that the database server is up (to wait longer, add %s to -db)", d.kind, d.connectTimeout, d.timeoutParam)
	}
	return fmt.Errorf("%s: cannot connect: %w", d.kind, err)
}

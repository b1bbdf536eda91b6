package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver
	_ "modernc.org/sqlite"             // the "sqlite" driver

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// backend is the opened client store and what else lives in its database.
type backend struct {
	store   m2mauth.ClientManager
	auditor m2mauth.Auditor // nil for memory
	limiter m2mauth.Limiter // shared by replicas; nil for memory and SQLite
	kind    string          // "SQLite file m2mauth.db", "PostgreSQL", …
	sqlite  string          // the SQLite file, if any
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
	// auditLog, when set, makes openBackend open the auditor of the audit
	// table, which logs its failures there. Only the server audits: the
	// admin commands leave the table, and the server's spill file, alone.
	auditLog *slog.Logger
	// auditSpill is the auditor's spill file: "" for the default (beside
	// the SQLite file, or m2mauth-audit.spill in the working directory),
	// "none" for none.
	auditSpill string
}

// defaultAuditSpill is the spill file of a server database's auditor when
// -audit-spill is not given.
const defaultAuditSpill = "m2mauth-audit.spill"

// openBackend opens and migrates the store named by -db.
func openBackend(ctx context.Context, spec string, opts backendOptions) (*backend, error) {
	if spec == "memory" {
		return &backend{store: memstore.New(), kind: "memory (clients are lost on exit)", close: func() error { return nil }}, nil
	}
	var (
		driver, dsn, kind, file string
		dialect                 sqlstore.Dialect
	)
	switch {
	case strings.HasPrefix(spec, "postgres://"), strings.HasPrefix(spec, "postgresql://"):
		driver, dsn, dialect, kind = "pgx", spec, sqlstore.Postgres, "PostgreSQL"
	case strings.HasPrefix(spec, "mysql://"):
		var err error
		if dsn, err = mysqlDSN(spec); err != nil {
			return nil, err
		}
		driver, dialect, kind = "mysql", sqlstore.MySQL, "MySQL"
	default:
		file = strings.TrimPrefix(spec, "sqlite://")
		driver, dialect, kind = "sqlite", sqlstore.SQLite, "SQLite file "+file
		dsn = "file:" + file + "?_pragma=foreign_keys(1)&_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)"
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
	store, err := sqlstore.New(db, dialect, sqlstore.Config{})
	if err != nil {
		return fail(err)
	}
	mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := store.Migrate(mctx); err != nil {
		return fail(err)
	}
	b := &backend{
		store: store, kind: kind, sqlite: file,
		close: func() error { return errors.Join(store.Close(), db.Close()) },
	}
	if opts.auditLog != nil {
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
		auditor, err := sqlstore.NewAuditor(db, dialect, sqlstore.AuditorConfig{
			QueueSize: 1024,
			SpillFile: spill,
			Logger:    opts.auditLog,
			Fallback:  m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {}),
		})
		if err != nil {
			return fail(err)
		}
		b.auditor = auditor
		b.close = func() error { return errors.Join(auditor.Close(), store.Close(), db.Close()) }
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

// mysqlDSN turns mysql://user:pass@host:port/db?params into the
// go-sql-driver/mysql form.
func mysqlDSN(spec string) (string, error) {
	u, err := url.Parse(spec)
	if err != nil {
		return "", fmt.Errorf("-db: %w", err)
	}
	cfg := mysql.NewConfig()
	cfg.Net = "tcp"
	cfg.Addr = u.Host
	if u.Port() == "" {
		cfg.Addr = u.Host + ":3306"
	}
	cfg.User = u.User.Username()
	cfg.Passwd, _ = u.User.Password()
	cfg.DBName = strings.TrimPrefix(u.Path, "/")
	for k, v := range u.Query() {
		if cfg.Params == nil {
			cfg.Params = map[string]string{}
		}
		cfg.Params[k] = v[0]
	}
	return cfg.FormatDSN(), nil
}

// signingKey finds the HS256 key: $M2MAUTH_SIGNING_KEY, else the key
// file, else a new key written to the key file. It reports on log what it
// did, never the key.
func signingKey(b *backend, keyFile string, log io.Writer) ([]byte, error) {
	if v := os.Getenv("M2MAUTH_SIGNING_KEY"); v != "" {
		key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("M2MAUTH_SIGNING_KEY is not base64: %w", err)
		}
		if len(key) < m2mauth.MinHMACKeyLen {
			return nil, fmt.Errorf("M2MAUTH_SIGNING_KEY must decode to at least %d bytes", m2mauth.MinHMACKeyLen)
		}
		return key, nil
	}
	if keyFile == "" {
		switch {
		case b.sqlite != "":
			keyFile = strings.TrimSuffix(b.sqlite, filepath.Ext(b.sqlite)) + ".key"
		case strings.HasPrefix(b.kind, "memory"):
		default:
			keyFile = "m2mauth.key"
		}
	}
	if keyFile != "" {
		raw, err := os.ReadFile(keyFile)
		switch {
		case err == nil:
			key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
			if err != nil || len(key) < m2mauth.MinHMACKeyLen {
				return nil, fmt.Errorf("%s: want base64 of at least %d bytes", keyFile, m2mauth.MinHMACKeyLen)
			}
			if st, err := os.Stat(keyFile); err == nil && st.Mode().Perm()&0o077 != 0 {
				fmt.Fprintf(log, "warning: %s is readable by others (mode %v); chmod 600 it\n", keyFile, st.Mode().Perm())
			}
			return key, nil
		case !errors.Is(err, fs.ErrNotExist):
			return nil, err
		}
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if keyFile == "" {
		fmt.Fprintln(log, "warning: no signing key configured; using a new one for this process only")
		return key, nil
	}
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("writing the signing key: %w", err)
	}
	fmt.Fprintf(log, "warning: generated a new signing key and saved it to %s (mode 0600); keep it secret, and set M2MAUTH_SIGNING_KEY in production\n", keyFile)
	return key, nil
}

package sqlstore_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// Example wires a PostgreSQL-backed store and auditor into a token
// endpoint. It needs a database, so it is compiled but not run.
func Example() {
	ctx := context.Background()
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	store, err := sqlstore.New(db, sqlstore.Postgres, sqlstore.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	// Safe to run from every replica at start-up: they take turns.
	if err := store.Migrate(ctx); err != nil {
		log.Fatal(err)
	}
	auditor, err := sqlstore.NewAuditor(db, sqlstore.Postgres, sqlstore.AuditorConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer auditor.Close()

	// Register a client; show its secret to the operator once.
	plain, secret, err := m2mauth.NewSecret(time.Now(), time.Time{})
	if err != nil {
		log.Fatal(err)
	}
	err = store.CreateClient(ctx, &m2mauth.Client{
		ID:      "billing-service",
		Secrets: []m2mauth.Secret{secret},
		Grants:  map[string]m2mauth.Scopes{"https://api.example.com": {"invoices:read"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("client_secret for billing-service: %s", plain)

	key, err := m2mauth.NewHS256Key("", []byte(os.Getenv("TOKEN_SIGNING_KEY"))) // at least 32 random bytes
	if err != nil {
		log.Fatal(err)
	}
	keys, err := m2mauth.NewStaticKeys(key)
	if err != nil {
		log.Fatal(err)
	}
	h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer:          "https://auth.example.com",
		DefaultAudience: "https://api.example.com",
		Auditor:         auditor,
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /oauth/token", h)
	log.Fatal(http.ListenAndServe(":8080", mux))
}

// ExampleNewLimiter shares the limits on failed client authentication
// between the replicas of a service: each replica runs this, and a client
// locked out by one is locked out by all. It needs a database, so it is
// compiled but not run.
func ExampleNewLimiter() {
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	store, err := sqlstore.New(db, sqlstore.Postgres, sqlstore.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	// Creates the rate_limits table along with the others.
	if err := store.Migrate(context.Background()); err != nil {
		log.Fatal(err)
	}
	// The defaults of m2mauth.RateLimiterConfig: 5 failures per client
	// and address, one forgiven every 12s; 20 per address, one every 3s.
	limiter, err := sqlstore.NewLimiter(db, sqlstore.Postgres, sqlstore.LimiterConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer limiter.Close()

	key, err := m2mauth.NewHS256Key("", []byte(os.Getenv("TOKEN_SIGNING_KEY")))
	if err != nil {
		log.Fatal(err)
	}
	keys, err := m2mauth.NewStaticKeys(key)
	if err != nil {
		log.Fatal(err)
	}
	h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer:          "https://auth.example.com",
		DefaultAudience: "https://api.example.com",
		Limiter:         limiter,
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /oauth/token", h)
	log.Fatal(http.ListenAndServe(":8080", mux))
}

// ExampleStore_Usage records the administration of a client and its
// requests in the audit table, and reads them back. It runs on SQLite, in
// a temporary directory.
func ExampleStore_Usage() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "m2mauth-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "auth.db")+"?_pragma=busy_timeout(5000)")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	auditor, err := sqlstore.NewAuditor(db, sqlstore.SQLite, sqlstore.AuditorConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer auditor.Close()
	// The store reports its changes to the same audit table.
	store, err := sqlstore.New(db, sqlstore.SQLite, sqlstore.Config{Auditor: auditor})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	if err := store.Migrate(ctx); err != nil {
		log.Fatal(err)
	}
	_, secret, err := m2mauth.NewSecret(time.Now(), time.Time{})
	if err != nil {
		log.Fatal(err)
	}
	err = store.CreateClient(ctx, &m2mauth.Client{
		ID:      "billing",
		Secrets: []m2mauth.Secret{secret},
		Grants:  map[string]m2mauth.Scopes{"https://api.example.com": {"invoices:read"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := store.SetDisabled(ctx, "billing", true); err != nil {
		log.Fatal(err)
	}

	// A token handler with this auditor records its requests; here, a
	// day's worth are recorded by hand.
	day := time.Date(2024, 1, 2, 0, 0, 0, 0, time.UTC)
	for i, ip := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.1"} {
		auditor.Audit(ctx, m2mauth.AuditEvent{Time: day.Add(time.Duration(i) * time.Minute),
			Type: m2mauth.EventTokenIssued, ClientID: "billing", RemoteIP: ip})
	}
	auditor.Audit(ctx, m2mauth.AuditEvent{Time: day.Add(5 * time.Minute), Type: m2mauth.EventAuthFailed,
		ClientID: "billing", RemoteIP: "203.0.113.7", Reason: m2mauth.ReasonBadSecret})

	u, err := store.Usage(ctx, "billing", day, day.Add(24*time.Hour))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d tokens, failures %v, %d addresses, last seen at %s\n",
		u.TokensIssued, u.Failures, u.DistinctAddresses, u.LastSeen.Format(time.TimeOnly))

	// The administration of the last hour, newest first: disabling the
	// client revoked its tokens too.
	events, err := store.AuditEvents(ctx, sqlstore.AuditQuery{ClientID: "billing", Since: time.Now().Add(-time.Hour)})
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range events {
		fmt.Printf("%s %q\n", e.Type, e.Reason)
	}
	// Output:
	// 3 tokens, failures map[bad_secret:1], 3 addresses, last seen at 00:05:00
	// tokens_revoked "disabled"
	// client_disabled "disabled"
	// secret_added ""
	// client_created "grants"
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// auditCommand runs "audit tail [-client ID] [-type T] [-n 50]": the
// newest events of the audit table, newest first, one JSON line each.
// The table holds no secrets, only secret ids.
func auditCommand(g globals, args []string, stdout, stderr io.Writer, mainUsage func()) error {
	if len(args) == 0 || args[0] != "tail" {
		if len(args) > 0 && args[0] != "-h" && args[0] != "-help" && args[0] != "--help" {
			fmt.Fprintf(stderr, "unknown audit command %q\n", args[0])
		}
		mainUsage()
		return errUsage
	}
	fs := flag.NewFlagSet("audit tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		client, typ string
		n           int
	)
	fs.StringVar(&client, "client", "", "only the events of this client id")
	fs.StringVar(&typ, "type", "", `only events of this type: token_issued, client_auth_failed, rate_limited, scope_denied, audience_denied, request_rejected, token_rejected, client_created, client_updated, client_disabled, client_enabled, client_deleted, secret_added, secret_expiring, secret_removed, key_published, key_activated, key_retired, key_deleted, key_revoked`)
	fs.IntVar(&n, "n", 50, "how many events, at most 1000")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: example [global flags] audit tail [-client ID] [-type T] [-n 50]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args[1:]); err != nil {
		return usageError(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	if n < 1 || n > 1000 {
		return errors.New("-n must be between 1 and 1000")
	}
	d, err := parseDB(g.db)
	if err != nil {
		return err
	}
	if d.memory {
		return errors.New(`"audit tail" reads the audit table of a SQL database; -db memory has none`)
	}
	ctx := context.Background()
	b, err := openBackend(ctx, d, backendOptions{pool: defaultPool(), auditLog: slog.New(slog.NewJSONHandler(stderr, nil))})
	if err != nil {
		return err
	}
	defer b.close()
	events, err := b.sql.AuditEvents(ctx, sqlstore.AuditQuery{ClientID: client, Type: m2mauth.AuditEventType(typ), Limit: n})
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	for _, e := range events {
		if err := enc.Encode(auditJSON(e)); err != nil {
			return err
		}
	}
	return nil
}

// auditLine is an audit event as "audit tail" prints it: the fields of
// the "m2mauth audit" log records, empty ones left out.
type auditLine struct {
	Time      time.Time `json:"event_time"`
	Type      string    `json:"event"`
	ClientID  string    `json:"client_id,omitempty"`
	RemoteIP  string    `json:"remote_ip,omitempty"`
	UserAgent string    `json:"user_agent,omitempty"`
	Audience  string    `json:"audience,omitempty"`
	Scopes    string    `json:"scope,omitempty"`
	JTI       string    `json:"jti,omitempty"`
	SecretID  string    `json:"secret_id,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	Error     string    `json:"error,omitempty"`
}

func auditJSON(e m2mauth.AuditEvent) auditLine {
	return auditLine{
		Time: e.Time.UTC(), Type: string(e.Type), ClientID: e.ClientID, RemoteIP: e.RemoteIP, UserAgent: e.UserAgent,
		Audience: e.Audience, Scopes: e.Scopes.String(), JTI: e.JTI, SecretID: e.SecretID, Reason: e.Reason, Error: e.Error,
	}
}

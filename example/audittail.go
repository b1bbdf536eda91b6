package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
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
	fs.StringVar(&typ, "type", "", "only events of this type: "+strings.Join(auditTypes, ", "))
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
	if typ != "" && !slices.Contains(auditTypes, typ) {
		return fmt.Errorf("-type %q is not an event type: %s", typ, strings.Join(auditTypes, ", "))
	}
	d, err := parseDB(g.db)
	if err != nil {
		return err
	}
	if d.memory {
		return errors.New(`"audit tail" reads the audit table of a SQL database; -db memory has none`)
	}
	ctx := context.Background()
	b, err := openBackend(ctx, d, backendOptions{pool: defaultPool(), auditLog: slog.New(slog.NewJSONHandler(stderr, nil)), existing: true})
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

// auditTypes are the event types "audit tail -type" takes.
var auditTypes = []string{
	string(m2mauth.EventTokenIssued), string(m2mauth.EventAuthFailed), string(m2mauth.EventRateLimited),
	string(m2mauth.EventScopeDenied), string(m2mauth.EventAudienceDenied), string(m2mauth.EventRequestRejected),
	string(m2mauth.EventTokenRejected), string(m2mauth.EventTokenRevoked), string(m2mauth.EventTokensRevoked),
	string(m2mauth.EventTokenIntrospected), string(m2mauth.EventClientCreated), string(m2mauth.EventClientUpdated),
	string(m2mauth.EventClientDisabled), string(m2mauth.EventClientEnabled), string(m2mauth.EventClientDeleted),
	string(m2mauth.EventSecretAdded), string(m2mauth.EventSecretExpiring), string(m2mauth.EventSecretRemoved),
	string(m2mauth.EventKeyPublished), string(m2mauth.EventKeyActivated), string(m2mauth.EventKeyRetired),
	string(m2mauth.EventKeyDeleted), string(m2mauth.EventKeyRevoked),
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

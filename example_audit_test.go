package m2mauth_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/m2mauth/m2mauth"
)

// ExampleJSONAuditor writes audit events as JSON lines: here to a
// buffer; in a server, to an append-only file or to standard error for
// the log collector. Give it to TokenHandlerConfig.Auditor, with
// RequireAudit set if no token may be issued while the events cannot be
// written.
func ExampleJSONAuditor() {
	var lines bytes.Buffer
	audit := m2mauth.NewJSONAuditor(&lines)

	audit.Audit(context.Background(), m2mauth.AuditEvent{
		Time:     time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC),
		Type:     m2mauth.EventTokenIssued,
		ClientID: "reporting-service",
		Audience: "https://api.example.com",
		Scopes:   m2mauth.Scopes{"read:builders"},
	})

	// Each line starts with the time it was written; the rest is the event.
	line := lines.String()
	fmt.Print(line[strings.Index(line, `"level"`):])
	fmt.Println(audit.AuditHealth())
	// Output:
	// "level":"INFO","msg":"m2mauth audit","event":"token_issued","event_time":"2026-11-30T12:00:00Z","client_id":"reporting-service","audience":"https://api.example.com","scope":"read:builders"}
	// <nil>
}

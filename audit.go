package m2mauth

import (
	"context"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// AuditEventType names what an [AuditEvent] records.
type AuditEventType string

// Audit event types.
const (
	// EventTokenIssued: the token endpoint issued an access token.
	EventTokenIssued AuditEventType = "token_issued"
	// EventAuthFailed: client authentication failed; Reason says why
	// (one of the Reason constants).
	EventAuthFailed AuditEventType = "client_auth_failed"
	// EventRequestRejected: a token request was refused for a reason other
	// than authentication, scope or audience; Error holds the RFC code.
	EventRequestRejected AuditEventType = "request_rejected"
	// EventScopeDenied: a requested scope was not granted (token endpoint)
	// or a token lacked a required scope (middleware).
	EventScopeDenied AuditEventType = "scope_denied"
	// EventAudienceDenied: the client asked for an audience it was not
	// granted.
	EventAudienceDenied AuditEventType = "audience_denied"
	// EventRateLimited: a request was refused because its client id or
	// address had too many recent authentication failures.
	EventRateLimited AuditEventType = "rate_limited"
	// EventTokenRejected: the middleware refused an access token; Reason
	// says why.
	EventTokenRejected AuditEventType = "token_rejected"
)

// Audit event types of client administration, emitted by stores that
// implement [ClientManager] when they are given an [Auditor]. ClientID
// names the client; SecretID the secret concerned; Reason says what
// changed (for example "grants", "token_ttl"), never secret material.
const (
	EventClientCreated  AuditEventType = "client_created"
	EventClientUpdated  AuditEventType = "client_updated"
	EventClientDisabled AuditEventType = "client_disabled"
	EventClientEnabled  AuditEventType = "client_enabled"
	EventClientDeleted  AuditEventType = "client_deleted"
	EventSecretAdded    AuditEventType = "secret_added"
	EventSecretExpiring AuditEventType = "secret_expiring"
	EventSecretRemoved  AuditEventType = "secret_removed"
)

// Reasons given in [AuditEvent.Reason] for failed client authentication.
// The client always receives the same invalid_client answer; only the
// audit trail tells these apart.
const (
	ReasonNoCredentials  = "no_credentials"
	ReasonUnknownClient  = "unknown_client"
	ReasonBadSecret      = "bad_secret"
	ReasonExpiredSecret  = "expired_secret"
	ReasonClientDisabled = "client_disabled"
	ReasonPublicClient   = "public_client"
	// ReasonMalformedCredentials: the Authorization header held no
	// usable HTTP Basic credentials (another scheme, or not base64 of
	// id:secret); no secret was checked.
	ReasonMalformedCredentials = "malformed_credentials"
)

// AuditEvent is one security-relevant event. It never holds a secret, an
// access token or an Authorization header; strings that came from the
// request (ClientID, UserAgent, Audience, RemoteIP) are cut to at most
// 256 bytes on a character boundary, with control characters replaced by
// '?' and invalid UTF-8 by U+FFFD.
type AuditEvent struct {
	Time      time.Time
	Type      AuditEventType
	ClientID  string
	RemoteIP  string
	UserAgent string
	Audience  string
	// Scopes may share its memory with other events and with the
	// handler's own state (a client's grant, a route's required scopes),
	// none of which ever changes: an auditor may keep it, but must not
	// modify it.
	Scopes Scopes
	// JTI is the id of the token issued or rejected, when known.
	JTI string
	// SecretID is the id of the secret that authenticated the client.
	SecretID string
	// Error is the RFC error code sent to the client, if any.
	Error string
	// Reason is a short machine-readable explanation.
	Reason string

	// addr is RemoteIP as the handler that wrote the event parsed it,
	// so that a Detector need not parse it again; zero otherwise.
	addr netip.Addr
	// invalidClient: the request named a client id that no client can
	// have (see [ValidClientID]), of which ClientID is the cleaned form,
	// which may look valid.
	invalidClient bool
}

// Auditor receives audit events. Audit is called synchronously on the
// request path and must be safe for concurrent use; an implementation that
// cannot record an event must report that failure itself (for example to a
// fallback logger), because the caller has no way to.
type Auditor interface {
	Audit(ctx context.Context, e AuditEvent)
}

// AuditHealthChecker is implemented by auditors that know whether the
// events they receive are being recorded. A token handler whose
// [TokenHandlerConfig.RequireAudit] is set asks before it issues a token.
type AuditHealthChecker interface {
	// AuditHealth returns nil while events are being recorded, and an
	// error saying why while they cannot be (for example while the
	// database holding the audit table is failing).
	AuditHealth() error
}

// AuditorFunc adapts a function to the [Auditor] interface.
type AuditorFunc func(ctx context.Context, e AuditEvent)

// Audit calls f(ctx, e).
func (f AuditorFunc) Audit(ctx context.Context, e AuditEvent) { f(ctx, e) }

// SlogAuditor writes audit events to a [slog.Logger]: issued tokens at
// Info, everything else at Warn, each with the message "m2mauth audit" and
// one attribute per non-empty field. It is safe for concurrent use.
type SlogAuditor struct {
	logger *slog.Logger
	// pc is the source slog is given for every record: the call site in
	// Audit, found on the first call (0 until then).
	pc atomic.Uintptr
}

// NewSlogAuditor returns an auditor that logs to logger, or to
// [slog.Default] when logger is nil.
func NewSlogAuditor(logger *slog.Logger) *SlogAuditor {
	if logger == nil {
		logger = slog.Default()
	}
	return &SlogAuditor{logger: logger}
}

// Audit logs e.
//
// It builds the record [slog.Logger.LogAttrs] would build and hands it to
// the logger's handler itself, with its source (the call site in Audit)
// found once instead of by a walk of the stack for every event.
func (a *SlogAuditor) Audit(ctx context.Context, e AuditEvent) {
	level := auditLevel(e.Type)
	if ctx == nil {
		ctx = context.Background()
	}
	h := a.logger.Handler()
	if !h.Enabled(ctx, level) {
		return
	}
	pc := a.pc.Load()
	if pc == 0 {
		var pcs [1]uintptr
		runtime.Callers(1, pcs[:]) // this line of Audit
		pc = pcs[0]
		a.pc.Store(pc)
	}
	var buf [11]slog.Attr
	attrs := append(buf[:0], slog.String("event", string(e.Type)), slog.Time("event_time", e.Time))
	attrs = appendAuditAttr(attrs, "client_id", e.ClientID)
	attrs = appendAuditAttr(attrs, "remote_ip", e.RemoteIP)
	attrs = appendAuditAttr(attrs, "user_agent", e.UserAgent)
	attrs = appendAuditAttr(attrs, "audience", e.Audience)
	if len(e.Scopes) > 0 {
		attrs = appendAuditAttr(attrs, "scope", e.Scopes.String())
	}
	attrs = appendAuditAttr(attrs, "jti", e.JTI)
	attrs = appendAuditAttr(attrs, "secret_id", e.SecretID)
	attrs = appendAuditAttr(attrs, "error", e.Error)
	attrs = appendAuditAttr(attrs, "reason", e.Reason)
	r := slog.NewRecord(time.Now(), level, "m2mauth audit", pc)
	r.AddAttrs(attrs...)
	_ = h.Handle(ctx, r)
}

// auditLevel is the log level of an event of type t: Info for an issued
// token, Warn for everything else.
func auditLevel(t AuditEventType) slog.Level {
	if t == EventTokenIssued {
		return slog.LevelInfo
	}
	return slog.LevelWarn
}

// appendAuditAttr appends the attribute k=v to attrs unless v is empty.
func appendAuditAttr(attrs []slog.Attr, k, v string) []slog.Attr {
	if v == "" {
		return attrs
	}
	return append(attrs, slog.String(k, v))
}

// maxAuditField bounds request-supplied strings in audit events.
const maxAuditField = 256

// auditString makes a request-supplied string safe for an audit event:
// control characters (which could forge lines in a log) become '?',
// invalid UTF-8 becomes U+FFFD, and the result is cut to at most
// maxAuditField bytes on a character boundary.
func auditString(s string) string {
	clean := len(s) <= maxAuditField
	for i := 0; clean && i < len(s); i++ {
		clean = s[i] >= 0x20 && s[i] < 0x7f
	}
	if clean {
		return s // the common case: short printable ASCII, no copy
	}
	var b strings.Builder
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r < 0xa0) || r == 0x2028 || r == 0x2029 {
			r = '?'
		}
		if b.Len()+utf8.RuneLen(r) > maxAuditField {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/m2mauth/m2mauth"
)

// maxAuditText bounds every text column of an audit row; longer values
// are cut at a character boundary. The token handler already bounds the
// strings that come from requests to 256 bytes.
const maxAuditText = 1024

// AuditorConfig holds the tunables of an [Auditor]. The zero value is a
// working configuration.
type AuditorConfig struct {
	// TablePrefix is the prefix of the <prefix>audit_events table, the
	// same as the [Config.TablePrefix] of the [Store] whose
	// [Store.Migrate] created it. Default: [DefaultTablePrefix].
	TablePrefix string
	// Now stamps events whose Time is zero. Default: [time.Now].
	Now func() time.Time
	// Timeout bounds each insert. The insert does not stop when the
	// request's context is cancelled (a client that hangs up must not
	// erase its own trail), so this is its only limit. Default: 5s.
	Timeout time.Duration
	// Fallback receives every event that could not be written.
	// Default: [m2mauth.NewSlogAuditor] on Logger.
	Fallback m2mauth.Auditor
	// Logger receives the error of every failed write, with the event's
	// type and client id. Default: [slog.Default].
	Logger *slog.Logger
}

// Auditor is a [m2mauth.Auditor] that inserts each event as a row of the
// <prefix>audit_events table (created by [Store.Migrate]), synchronously.
// When an insert fails it logs the error, hands the event to its fallback
// auditor and counts the failure (see [Auditor.Failures]), so no event is
// lost without a trace. Events hold no secrets and no tokens, and neither
// do the rows. Text that is not valid UTF-8 or contains NUL bytes is
// repaired with U+FFFD before it is written.
//
// An Auditor is safe for concurrent use.
type Auditor struct {
	insert   lazyStmt
	now      func() time.Time
	timeout  time.Duration
	fallback m2mauth.Auditor
	logger   *slog.Logger
	failures atomic.Uint64
}

var _ m2mauth.Auditor = (*Auditor)(nil)

// NewAuditor returns an auditor that writes to db, speaking dialect. Like
// [New] it checks its arguments now and does not touch the database.
func NewAuditor(db *sql.DB, dialect Dialect, cfg AuditorConfig) (*Auditor, error) {
	if db == nil {
		return nil, errors.New("sqlstore: nil *sql.DB")
	}
	prefix, err := tablePrefix(cfg.TablePrefix)
	if err != nil {
		return nil, err
	}
	q, err := newQueries(dialect, prefix)
	if err != nil {
		return nil, err
	}
	if cfg.Timeout < 0 {
		return nil, errors.New("sqlstore: AuditorConfig.Timeout must not be negative")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Fallback == nil {
		cfg.Fallback = m2mauth.NewSlogAuditor(cfg.Logger)
	}
	return &Auditor{
		insert:   lazyStmt{db: db, query: q.insertAudit},
		now:      cfg.Now,
		timeout:  cfg.Timeout,
		fallback: cfg.Fallback,
		logger:   cfg.Logger,
	}, nil
}

// Audit inserts e as one row. On failure it logs the error, passes e to
// the fallback auditor and increments [Auditor.Failures].
func (a *Auditor) Audit(ctx context.Context, e m2mauth.AuditEvent) {
	if e.Time.IsZero() {
		e.Time = a.now()
	}
	err := a.write(ctx, e)
	if err == nil {
		return
	}
	a.failures.Add(1)
	a.logger.LogAttrs(ctx, slog.LevelError, "sqlstore: audit event not written; passing it to the fallback auditor",
		slog.String("event", string(e.Type)), slog.String("client_id", e.ClientID), slog.Any("error", err))
	a.fallback.Audit(ctx, e)
}

func (a *Auditor) write(ctx context.Context, e m2mauth.AuditEvent) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.timeout)
	defer cancel()
	stmt, err := a.insert.get(ctx)
	if err != nil {
		return err
	}
	_, err = stmt.ExecContext(ctx, e.Time.UnixMicro(), auditText(string(e.Type)), auditText(e.ClientID),
		auditText(e.RemoteIP), auditText(e.UserAgent), auditText(e.Audience), auditText(e.Scopes.String()),
		auditText(e.JTI), auditText(e.SecretID), auditText(e.Error), auditText(e.Reason))
	return err
}

// Failures returns how many events could not be written since the
// Auditor was made. Each of them went to the fallback auditor.
func (a *Auditor) Failures() uint64 { return a.failures.Load() }

// Close releases the prepared insert statement; later events go to the
// fallback auditor and count as failures. It does not close the *sql.DB.
func (a *Auditor) Close() error { return a.insert.close() }

// auditText returns s as every engine can store it: valid UTF-8, no NUL,
// at most maxAuditText bytes.
func auditText(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	}
	if len(s) > maxAuditText {
		cut := maxAuditText
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

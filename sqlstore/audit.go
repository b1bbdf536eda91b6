package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"strings"
	"sync"
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
	// QueueSize, when positive, makes writes asynchronous: Audit queues
	// the event and one background goroutine writes queued events in
	// transactions of up to QueueSize rows, which lets a busy token
	// endpoint (and SQLite in particular, with its single writer) keep
	// up. When the queue is full, Audit writes the event itself, so a
	// burst slows requests down rather than losing events or growing
	// memory; rows may then be out of event order (event_time keeps it).
	// [Auditor.Close] writes what is queued before it returns; events
	// queued when the process dies without Close are lost.
	// Default: 0, every event is written before Audit returns.
	QueueSize int
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

	// With a queue: mu guards closed against a send on a closed queue;
	// done is closed when the writer has written everything.
	db     *sql.DB
	queue  chan m2mauth.AuditEvent
	mu     sync.RWMutex
	closed bool
	done   chan struct{}
}

var _ m2mauth.Auditor = (*Auditor)(nil)

// NewAuditor returns an auditor that writes to db, speaking dialect. Like
// [New] it checks its arguments now and does not touch the database.
func NewAuditor(db *sql.DB, dialect Dialect, cfg AuditorConfig) (*Auditor, error) {
	_, q, err := prepare(db, dialect, cfg.TablePrefix)
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
	if cfg.QueueSize < 0 {
		return nil, errors.New("sqlstore: AuditorConfig.QueueSize must not be negative")
	}
	a := &Auditor{
		insert:   lazyStmt{db: db, query: q.insertAudit},
		now:      cfg.Now,
		timeout:  cfg.Timeout,
		fallback: cfg.Fallback,
		logger:   cfg.Logger,
		db:       db,
	}
	if cfg.QueueSize > 0 {
		a.queue = make(chan m2mauth.AuditEvent, cfg.QueueSize)
		a.done = make(chan struct{})
		go a.writer(cfg.QueueSize)
	}
	return a, nil
}

// Audit inserts e as one row, or queues it when the Auditor has a queue
// with room. On failure it logs the error, passes e to the fallback
// auditor and increments [Auditor.Failures].
func (a *Auditor) Audit(ctx context.Context, e m2mauth.AuditEvent) {
	if e.Time.IsZero() {
		e.Time = a.now()
	}
	if a.queue != nil {
		a.mu.RLock()
		queued := false
		if !a.closed {
			select {
			case a.queue <- e:
				queued = true
			default: // full: write it here, which also slows the caller
			}
		}
		a.mu.RUnlock()
		if queued {
			return
		}
	}
	if err := a.write(ctx, e); err != nil {
		a.failed(ctx, err, e)
	}
}

// failed reports events that could not be written.
func (a *Auditor) failed(ctx context.Context, err error, events ...m2mauth.AuditEvent) {
	for _, e := range events {
		a.failures.Add(1)
		a.logger.LogAttrs(ctx, slog.LevelError, "sqlstore: audit event not written; passing it to the fallback auditor",
			slog.String("event", string(e.Type)), slog.String("client_id", e.ClientID), slog.Any("error", err))
		a.fallback.Audit(ctx, e)
	}
}

// auditArgs are the insert's arguments for e.
func auditArgs(e m2mauth.AuditEvent) []any {
	return []any{e.Time.UnixMicro(), auditText(string(e.Type)), auditText(e.ClientID),
		auditText(e.RemoteIP), auditText(e.UserAgent), auditText(e.Audience), auditText(e.Scopes.String()),
		auditText(e.JTI), auditText(e.SecretID), auditText(e.Error), auditText(e.Reason)}
}

func (a *Auditor) write(ctx context.Context, e m2mauth.AuditEvent) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.timeout)
	defer cancel()
	stmt, err := a.insert.get(ctx)
	if err != nil {
		return err
	}
	_, err = stmt.ExecContext(ctx, auditArgs(e)...)
	return err
}

// writer drains the queue: it takes what is waiting, up to max events, and
// writes them in one transaction, until the queue is closed and empty.
func (a *Auditor) writer(max int) {
	defer close(a.done)
	batch := make([]m2mauth.AuditEvent, 0, max)
	for e := range a.queue {
		batch = append(batch[:0], e)
	fill:
		for len(batch) < max {
			select {
			case e, ok := <-a.queue:
				if !ok {
					break fill
				}
				batch = append(batch, e)
			default:
				break fill
			}
		}
		if err := a.writeBatch(batch); err != nil {
			a.failed(context.Background(), err, batch...)
		}
	}
}

func (a *Auditor) writeBatch(batch []m2mauth.AuditEvent) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	stmt, err := a.insert.get(ctx)
	if err != nil {
		return err
	}
	tx, err := a.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	ts := tx.StmtContext(ctx, stmt)
	defer ts.Close()
	for _, e := range batch {
		if _, err = ts.ExecContext(ctx, auditArgs(e)...); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// Failures returns how many events could not be written since the
// Auditor was made. Each of them went to the fallback auditor.
func (a *Auditor) Failures() uint64 { return a.failures.Load() }

// Close writes the events still queued, then releases the prepared insert
// statement; later events go to the fallback auditor and count as
// failures. It does not close the *sql.DB.
func (a *Auditor) Close() error {
	if a.queue != nil {
		a.mu.Lock()
		if !a.closed {
			a.closed = true
			close(a.queue)
		}
		a.mu.Unlock()
		<-a.done
	}
	return a.insert.close()
}

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

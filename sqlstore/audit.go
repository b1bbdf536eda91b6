package sqlstore

import (
	"context"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
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

// retryBatch is the most held or spilled events written again in one
// transaction.
const retryBatch = 256

// maxAuditQueue bounds [AuditorConfig.QueueSize]: the queue is allocated
// whole.
const maxAuditQueue = 1 << 16

// minRetryDelay is the wait before the first retry of a failed write; each
// failed retry doubles it, up to [AuditorConfig.MaxRetryDelay].
const minRetryDelay = 50 * time.Millisecond

// AuditorConfig holds the tunables of an [Auditor]. The zero value is a
// working configuration.
type AuditorConfig struct {
	// TablePrefix is the prefix of the <prefix>audit_events table, the
	// same as the [Config.TablePrefix] of the [Store] whose
	// [Store.Migrate] created it. Default: [DefaultTablePrefix].
	TablePrefix string
	// Now stamps events whose Time is zero. Default: [time.Now].
	Now func() time.Time
	// Timeout bounds each insert or transaction. The insert does not stop
	// when the request's context is cancelled (a client that hangs up
	// must not erase its own trail), so this is its only limit.
	// Default: 5s.
	Timeout time.Duration
	// Fallback receives every event that the Auditor gives up on: the
	// events it can neither write, nor hold for retry, nor spill (see
	// [Auditor.Lost]). Default: [m2mauth.NewSlogAuditor] on Logger, which
	// logs each event as the "m2mauth audit" record a SlogAuditor writes.
	Fallback m2mauth.Auditor
	// Logger receives an error record for each event not written on the
	// first try and for each event lost, with the event's type, its
	// client id and the error, and no other field of the event (the
	// Fallback logs lost events in full); and a record when writes
	// succeed again. Default: [slog.Default].
	Logger *slog.Logger
	// QueueSize, when positive, makes writes asynchronous: Audit queues
	// the event and one background goroutine writes queued events in
	// transactions of up to QueueSize rows, inserted up to 64 to a
	// statement, which lets a busy token endpoint (and SQLite in
	// particular, with its single writer) keep up. When the queue is
	// full, Audit writes the event itself, so a burst slows requests
	// down rather than losing events or growing memory; rows may then be
	// out of event order (event_time keeps it).
	// Events queued when the process dies without [Auditor.Close] are
	// lost. Default: 0, every event is written (or held for retry)
	// before Audit returns. At most 65,536.
	QueueSize int
	// BatchDelay, with a QueueSize, is how long the writer waits after
	// taking an event from the queue for more to join its transaction,
	// unless QueueSize events are already there. Fewer, larger
	// transactions cost the database less per row (SQLite writes each
	// page a transaction changes, such as the last page of the table and
	// of each index, once per transaction), at the price of events
	// staying that much longer in memory. [Auditor.Close] does not wait
	// it out. Default: 0, no wait.
	BatchDelay time.Duration
	// RetryBuffer bounds the events held in memory while writes fail.
	// Past it, events go to the SpillFile, or to the Fallback when there
	// is none. Events held in memory when the process dies without
	// [Auditor.Close] are lost. Default: 4096.
	RetryBuffer int
	// MaxRetryDelay bounds the wait between two retries of held events.
	// The first retry comes after about 50ms, and each failure doubles
	// the wait (with jitter) up to MaxRetryDelay. Default: 5s.
	MaxRetryDelay time.Duration
	// SpillFile, when set, is the path of a file to which events that
	// do not fit in the RetryBuffer are appended, one JSON object per
	// line, and synced to disk, while writes fail. Once the database
	// answers again they are written to the table in file order, and the
	// file is emptied. A file left by an earlier process is written to
	// the table when the Auditor starts. The directory must exist:
	// [NewAuditor] opens the file, creating it with mode 0600, and
	// [Auditor.Close] removes it unless it still holds events. On Unix,
	// NewAuditor refuses a path that is a symbolic link, or a file that
	// another user owns or other users may read or write; and, anywhere,
	// a file whose first line is not an audit event (a path given by
	// mistake), which it leaves as it is. No two
	// Auditors, in one process or several, may share a file: where the
	// system has advisory file locks (every Unix), an Auditor that finds
	// the file held by another logs a warning and runs without one. On a file
	// system other than a SQLite database's, it also keeps events when
	// that one is full. Default: "", no spill file.
	SpillFile string
	// SpillMaxBytes bounds the size of the SpillFile. Events that would
	// grow it further go to the Fallback. Default: 64 MiB.
	SpillMaxBytes int64
	// CloseTimeout bounds how long [Auditor.Close] goes on writing queued,
	// held and spilled events to the table. What is left then is
	// appended to the SpillFile, or passed to the Fallback when there is
	// none or it is full. Default: 10s.
	CloseTimeout time.Duration
}

// Auditor is a [m2mauth.Auditor] that inserts each event as a row of the
// <prefix>audit_events table (created by [Store.Migrate]). Events hold no
// secrets and no tokens, and neither do the rows. Text that is not valid
// UTF-8 or contains NUL bytes is repaired with U+FFFD before it is
// written.
//
// When a write fails, the Auditor logs the failure and holds the event
// in memory, and one background goroutine writes held events again with
// exponential backoff until the database answers. Past
// [AuditorConfig.RetryBuffer] events, the rest are appended to
// [AuditorConfig.SpillFile] (by the caller of Audit, which waits for the
// file to be synced); only when there is no room there either does an
// event go to the fallback auditor (see [Auditor.Lost]). While writes
// fail and events are held, Audit holds new events without trying the
// database, so that requests do not wait on it, and [Auditor.AuditHealth]
// reports the failure, so that a token handler with
// [m2mauth.TokenHandlerConfig.RequireAudit] issues no token that would go
// unrecorded. [Auditor.Failures], [Auditor.Lost] and [Auditor.Pending]
// count what happened.
//
// Each event is in the table once. The Auditor gives every event a key
// when it receives it, kept with the event while it is held, spilled or
// in doubt, and written in the row's event_key column, which the table
// holds at most once (version 8 of the schema); writing an event again
// inserts nothing. So a write repeated after a commit that succeeded
// without the Auditor learning it (its answer lost with the connection,
// or still awaited when Close gave up) adds no row, nor does a spill file
// written to the table again by the next process when the last one died
// before emptying it. A line of a spill file that has no key (written by
// a release before keys) is given one made of its place in the file and
// its content, the same at every read, and written into it when Close
// moves the line (or, where it cannot be, the line is not moved). Rows of
// events that were held may be out of event order; event_time keeps it.
//
// The database user needs INSERT on the table and, on PostgreSQL, for the
// insert's handling of a key already there, SELECT of event_key (GRANT
// SELECT (event_key) ON <prefix>audit_events), which lets it read no
// event: a user that may only append audit rows can run an Auditor. On
// MySQL the text must reach the table as utf8mb4: before it first writes,
// the Auditor checks the connection's character sets (the DSN's charset
// parameter; the driver's default is utf8mb4) and the columns it writes,
// and writes nothing, reporting why, where a character would be written
// changed.
//
// An Auditor is safe for concurrent use. It runs a background goroutine
// until [Auditor.Close], which the owner must call.
type Auditor struct {
	// inserts[k] inserts 1<<k rows; inserts[0] is the dialect's one-row
	// insert, which Audit runs.
	inserts  [auditChunkBits + 1]lazyStmt
	db       *sql.DB
	dialect  Dialect
	now      func() time.Time
	timeout  time.Duration
	fallback m2mauth.Auditor
	// charsetQuery is the dialect's auditCharset ("" but on MySQL), and
	// charsetOK whether it found utf8mb4 throughout.
	charsetQuery string
	charsetOK    atomic.Bool
	logger       *slog.Logger
	maxDelay     time.Duration
	closeWait    time.Duration
	gather       time.Duration // AuditorConfig.BatchDelay

	keys     eventKeys
	failures atomic.Uint64
	lost     atomic.Uint64
	// health holds the error that makes AuditHealth fail, nil while
	// writes succeed.
	health atomic.Pointer[error]

	// mu guards closed against a send on the queue, or a new in-flight
	// write, after Close has begun; inflight counts the writes that Audit
	// does itself, which Close waits for.
	mu       sync.RWMutex
	closed   atomic.Bool
	inflight sync.WaitGroup
	queue    chan record // nil without a queue
	queueMax int

	// hmu guards held, the events waiting for a retry, oldest first;
	// only the writer removes events from it.
	hmu     sync.Mutex
	held    []record
	heldMax int
	spill   *spillFile // nil without a spill file
	// doubts holds, under hmu, the batches whose commit a write gave up
	// waiting for (see commit), until its outcome arrives; doubtful
	// counts their events, and resolving the goroutines awaiting them.
	doubts    map[*[]record]struct{}
	doubtful  int
	resolving sync.WaitGroup
	// shut is set, under hmu, once Close has taken the held events: the
	// events held later go to the spill file, or are lost.
	shut bool

	wake    chan struct{} // a held event is waiting (buffered, one slot)
	stop    chan struct{} // closed by Close
	done    chan struct{} // closed when the writer is finished
	closeBy time.Time     // set by Close before stop is closed

	closeOnce sync.Once
	closeErr  error
}

var (
	_ m2mauth.Auditor            = (*Auditor)(nil)
	_ m2mauth.AuditHealthChecker = (*Auditor)(nil)
)

// record is an event as an Auditor keeps it until its row is written:
// with the key that makes the row unique.
type record struct {
	m2mauth.AuditEvent
	key eventKey
}

// eventKey is the event_key of an audit row: the random prefix of the
// Auditor that received the event, then its number among that Auditor's
// events. The table holds each key at most once, so an event written
// again, after an outcome that was lost, inserts nothing. The prefix is
// 64 random bits, so that two Auditors, in this process or any other,
// share none but by a chance of one in 2^64 for each pair; the number
// keeps the rows one Auditor inserts next to each other in the index.
type eventKey [16]byte

// String returns k in hexadecimal, as a spill file holds it.
func (k eventKey) String() string { return hex.EncodeToString(k[:]) }

// parse sets k from s, as String returns it, and reports whether s is
// one.
func (k *eventKey) parse(s string) bool {
	var b eventKey
	if len(s) != 2*len(b) {
		return false
	}
	if _, err := hex.Decode(b[:], []byte(s)); err != nil {
		return false
	}
	*k = b
	return true
}

// lineKey returns the key of the spill file line that begins at offset
// at and has no key of its own: a hash of both, the same whenever the
// line is read from the same place. No two lines share a place, and the
// hash makes a key that an Auditor gives as unlikely as any other.
func lineKey(at int64, line []byte) eventKey {
	h := sha256.New()
	h.Write([]byte("m2mauth spill line\x00"))
	var off [8]byte
	binary.BigEndian.PutUint64(off[:], uint64(at))
	h.Write(off[:])
	h.Write(line)
	var k eventKey
	copy(k[:], h.Sum(nil))
	return k
}

// eventKeys makes the keys of one Auditor's events.
type eventKeys struct {
	once   sync.Once
	prefix [8]byte
	n      atomic.Uint64
}

// next returns a key no other call returns.
func (s *eventKeys) next() eventKey {
	s.once.Do(func() { cryptorand.Read(s.prefix[:]) })
	var k eventKey
	copy(k[:8], s.prefix[:])
	binary.BigEndian.PutUint64(k[8:], s.n.Add(1))
	return k
}

// errAuditorClosed is the cause given for events received after Close.
var errAuditorClosed = errors.New("sqlstore: auditor closed")

// NewAuditor returns an auditor that writes to db, speaking dialect, and
// starts its background goroutine. Like [New] it checks its arguments now
// and does not touch the database, except that a spill file left by an
// earlier process is opened now, and its events are written to the table
// by the background goroutine from the start.
func NewAuditor(db *sql.DB, dialect Dialect, cfg AuditorConfig) (*Auditor, error) {
	_, q, err := prepare(db, dialect, cfg.TablePrefix)
	if err != nil {
		return nil, err
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"Timeout", &cfg.Timeout, 5 * time.Second},
		{"MaxRetryDelay", &cfg.MaxRetryDelay, 5 * time.Second},
		{"CloseTimeout", &cfg.CloseTimeout, 10 * time.Second},
	} {
		if *d.v < 0 {
			return nil, fmt.Errorf("sqlstore: AuditorConfig.%s must not be negative", d.name)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if cfg.QueueSize < 0 || cfg.QueueSize > maxAuditQueue {
		return nil, fmt.Errorf("sqlstore: AuditorConfig.QueueSize must be from 0 to %d", maxAuditQueue)
	}
	switch {
	case cfg.BatchDelay < 0:
		return nil, errors.New("sqlstore: AuditorConfig.BatchDelay must not be negative")
	case cfg.BatchDelay > 0 && cfg.QueueSize == 0:
		return nil, errors.New("sqlstore: AuditorConfig.BatchDelay needs a QueueSize")
	}
	if cfg.RetryBuffer < 0 {
		return nil, errors.New("sqlstore: AuditorConfig.RetryBuffer must not be negative")
	}
	if cfg.RetryBuffer == 0 {
		cfg.RetryBuffer = 4096
	}
	if cfg.SpillMaxBytes < 0 {
		return nil, errors.New("sqlstore: AuditorConfig.SpillMaxBytes must not be negative")
	}
	if cfg.SpillMaxBytes == 0 {
		cfg.SpillMaxBytes = 64 << 20
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
	spill, err := openSpill(cfg.SpillFile, cfg.SpillMaxBytes)
	switch {
	case errors.Is(err, errSpillInUse):
		// Two writers would replay and truncate each other's lines: this
		// one keeps its events in memory, then gives them to the
		// Fallback.
		cfg.Logger.Warn("sqlstore: the audit spill file is in use by another auditor; this one has none. Give each process its own (AuditorConfig.SpillFile, the example's -audit-spill)",
			"spill_file", cfg.SpillFile)
	case err != nil:
		return nil, err
	}
	rows, err := newRowsInsert(q.insertAudit)
	if err != nil {
		return nil, err
	}
	a := &Auditor{
		db:           db,
		dialect:      dialect,
		now:          cfg.Now,
		timeout:      cfg.Timeout,
		fallback:     cfg.Fallback,
		charsetQuery: q.auditCharset,
		logger:       cfg.Logger,
		maxDelay:     cfg.MaxRetryDelay,
		closeWait:    cfg.CloseTimeout,
		gather:       cfg.BatchDelay,
		queueMax:     cfg.QueueSize,
		heldMax:      cfg.RetryBuffer,
		spill:        spill,
		wake:         make(chan struct{}, 1),
		stop:         make(chan struct{}),
		done:         make(chan struct{}),
	}
	for k := range a.inserts {
		a.inserts[k] = lazyStmt{db: db, query: rows.query(1 << k)}
	}
	if cfg.QueueSize > 0 {
		a.queue = make(chan record, cfg.QueueSize)
	}
	go a.run()
	return a, nil
}

// Audit inserts e as one row, or queues it when the Auditor has a queue
// with room. When the insert fails, or while earlier failed events are
// still waiting for a retry, it holds e for the background retry instead
// (see [Auditor]); it never waits for the database longer than
// [AuditorConfig.Timeout]. After [Auditor.Close], e goes to the fallback
// auditor.
func (a *Auditor) Audit(ctx context.Context, e m2mauth.AuditEvent) {
	if e.Time.IsZero() {
		e.Time = a.now()
	}
	a.mu.RLock()
	if a.closed.Load() {
		a.mu.RUnlock()
		a.failures.Add(1)
		a.lose(ctx, errAuditorClosed, record{AuditEvent: e})
		return
	}
	r := record{AuditEvent: e, key: a.keys.next()}
	if a.queue != nil {
		select {
		case a.queue <- r:
			a.mu.RUnlock()
			return
		default: // full: write it here, which also slows the caller
		}
	}
	a.inflight.Add(1)
	a.mu.RUnlock()
	defer a.inflight.Done()

	if err := a.holding(); err != nil {
		a.keep(ctx, err, r)
		return
	}
	if err := a.write(ctx, r); err != nil {
		a.failing(err)
		a.keep(ctx, err, r)
		return
	}
	a.healthy()
}

// AuditHealth returns nil while events are being written to the table,
// and an error from the first failed write until a write succeeds again,
// and after [Auditor.Close]. It implements [m2mauth.AuditHealthChecker].
func (a *Auditor) AuditHealth() error {
	if a.closed.Load() {
		return errAuditorClosed
	}
	if p := a.health.Load(); p != nil {
		return *p
	}
	return nil
}

// Failures returns how many events were not written on the first try
// since the Auditor was made: each was held for retry, spilled, or lost
// (see [Auditor.Lost]). Events written by a retry still count here.
func (a *Auditor) Failures() uint64 { return a.failures.Load() }

// Lost returns how many events reached only the fallback auditor since
// the Auditor was made: received after Close, or failed with the retry
// buffer and the spill file full (or no spill file), or left in memory
// when Close gave up and could not spill them. It also counts unreadable
// lines of a spill file, which reach nothing.
func (a *Auditor) Lost() uint64 { return a.lost.Load() }

// Pending returns how many events are waiting to be written again: held
// in memory for the background retry, or in the spill file (including,
// after Close, those it left there for the next process). It does not
// count events in the queue that were never tried.
func (a *Auditor) Pending() int {
	a.hmu.Lock()
	n := a.doubtful
	a.hmu.Unlock()
	return n + a.retryable()
}

// retryable returns how many events are held or spilled: Pending, less
// those in doubt, which no retry writes.
func (a *Auditor) retryable() int {
	a.hmu.Lock()
	n := len(a.held)
	a.hmu.Unlock()
	return n + a.spill.pending()
}

// doubt sets aside events whose commit a write gave up waiting for, p: a
// MySQL commit goes on, and may have written them. They count as
// pending, and are neither held nor written again until p's outcome
// arrives; then they are written, or held for retry (and, with first,
// counted as failed then: it was their first try).
func (a *Auditor) doubt(ctx context.Context, p *pendingCommit, events []record, first bool) {
	d := &events
	a.hmu.Lock()
	if a.doubts == nil {
		a.doubts = make(map[*[]record]struct{})
	}
	a.doubts[d] = struct{}{}
	a.doubtful += len(events)
	a.hmu.Unlock()
	ctx = context.WithoutCancel(ctx)
	a.resolving.Add(1)
	go func() {
		defer a.resolving.Done()
		err := <-p.done
		a.hmu.Lock()
		_, ours := a.doubts[d] // else Close took them
		delete(a.doubts, d)
		a.hmu.Unlock()
		if !ours {
			return
		}
		switch {
		case err != nil && first:
			a.keep(ctx, err, events...)
		case err != nil:
			a.hold(ctx, err, events...)
		default:
			a.logger.LogAttrs(ctx, slog.LevelWarn, "sqlstore: audit events whose commit timed out were committed after all",
				slog.Int("events", len(events)))
		}
		a.hmu.Lock()
		a.doubtful -= len(events)
		a.hmu.Unlock()
		if err == nil {
			a.healthy()
		}
	}()
}

// Close stops taking events (later ones go to the fallback auditor and
// count as lost), then goes on writing queued, held and spilled events
// for at most [AuditorConfig.CloseTimeout], stops the background
// goroutine, appends what could not be written to the spill file (or
// passes it to the fallback auditor), and releases the prepared insert
// statements. It does not close the *sql.DB. Calling it again does
// nothing.
func (a *Auditor) Close() error {
	a.closeOnce.Do(func() {
		a.closeBy = time.Now().Add(a.closeWait)
		a.mu.Lock()
		a.closed.Store(true)
		a.mu.Unlock()
		a.inflight.Wait()
		close(a.stop)
		<-a.done
		errs := []error{a.spill.close()}
		for k := range a.inserts {
			errs = append(errs, a.inserts[k].close())
		}
		a.closeErr = errors.Join(errs...)
	})
	return a.closeErr
}

// holding returns the write error while writes fail and events are held;
// new events are then held too, without trying the database.
func (a *Auditor) holding() error {
	p := a.health.Load()
	if p == nil || a.Pending() == 0 {
		return nil
	}
	return *p
}

// failing records a failed write.
func (a *Auditor) failing(err error) {
	err = fmt.Errorf("sqlstore: audit events are not being written: %w", err)
	a.health.Store(&err)
}

// healthy records a successful write.
func (a *Auditor) healthy() {
	if a.health.Load() != nil && a.health.Swap(nil) != nil {
		a.logger.LogAttrs(context.Background(), slog.LevelInfo, "sqlstore: audit events are written again",
			slog.Int("pending", a.Pending()))
	}
}

// keep holds events that were not written (because of cause) for the
// background retry: in memory while there is room, then in the spill
// file; the rest are lost.
func (a *Auditor) keep(ctx context.Context, cause error, events ...record) {
	a.failures.Add(uint64(len(events)))
	a.hold(ctx, cause, events...)
}

// hold is keep without counting the events as failures.
func (a *Auditor) hold(ctx context.Context, cause error, events ...record) {
	a.hmu.Lock()
	n := 0
	if !a.shut {
		n = min(len(events), a.heldMax-len(a.held))
		a.held = append(a.held, events[:n]...)
	}
	a.hmu.Unlock()
	if n < len(events) {
		stored, err := a.spill.append(events[n:])
		n += stored
		if n < len(events) {
			a.lose(ctx, fmt.Errorf("%w; %w", cause, err), events[n:]...)
		}
	}
	for _, e := range events[:n] {
		a.logger.LogAttrs(ctx, slog.LevelError, "sqlstore: audit event not written; holding it for retry",
			slog.String("event", string(e.Type)), slog.String("client_id", e.ClientID), slog.Any("error", cause))
	}
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// lose passes events to the fallback auditor and counts them as lost.
func (a *Auditor) lose(ctx context.Context, cause error, events ...record) {
	a.lost.Add(uint64(len(events)))
	ctx = context.WithoutCancel(ctx)
	for _, e := range events {
		a.logger.LogAttrs(ctx, slog.LevelError, "sqlstore: audit event not written; passing it to the fallback auditor",
			slog.String("event", string(e.Type)), slog.String("client_id", e.ClientID), slog.Any("error", cause))
		a.fallback.Audit(ctx, e.AuditEvent)
	}
}

// auditFields is the number of values of an audit row, those that
// appendAuditArgs appends.
const auditFields = 12

// auditChunk is the most rows one statement inserts, 1<<auditChunkBits.
// 64 rows of 12 values take 768 parameters, below the limit of every
// engine (999 on SQLite before 3.32, 65535 on PostgreSQL and MySQL).
// Larger statements save little more: most of the round trips and of the
// per-statement work are gone at 64. On SQLite, a statement of several
// rows inside a transaction keeps a statement journal, a temporary file
// past 64 KiB, to undo itself should it fail half way, unless the insert
// says OR ROLLBACK; that journal can cost more than the statements saved.
const (
	auditChunkBits = 6
	auditChunk     = 1 << auditChunkBits
)

// appendAuditArgs appends the insert's arguments for e to args.
func appendAuditArgs(args []any, e record) []any {
	key := e.key
	return append(args, key[:], e.Time.UnixMicro(), auditText(string(e.Type)), auditText(e.ClientID),
		auditText(e.RemoteIP), auditText(e.UserAgent), auditText(e.Audience), auditText(e.Scopes.String()),
		auditText(e.JTI), auditText(e.SecretID), auditText(e.Error), auditText(e.Reason))
}

// rowsInsert makes inserts of several audit rows from the dialect's
// one-row insert: its text up to VALUES, then a tuple of placeholders
// per row, numbered across the rows when the dialect numbers them
// ($1, $2, …; PostgreSQL), or each "?", then what follows the tuple (what
// to do with a key already there).
type rowsInsert struct {
	head     string // the one-row insert up to and including "VALUES "
	tail     string // the one-row insert after its tuple
	numbered bool
}

// newRowsInsert returns the rowsInsert of the one-row insert single. It
// fails unless single is exactly what query(1) would make of it, so that
// a change to the dialect's insert that this does not follow is found
// by every test that makes an Auditor, rather than written wrong.
func newRowsInsert(single string) (rowsInsert, error) {
	const values = "VALUES "
	i := strings.LastIndex(single, values)
	if i < 0 {
		return rowsInsert{}, errors.New("sqlstore: the audit insert has no VALUES")
	}
	head, tuple := single[:i+len(values)], single[i+len(values):]
	j := strings.IndexByte(tuple, ')')
	if j < 0 {
		return rowsInsert{}, errors.New("sqlstore: the audit insert has no row of values")
	}
	r := rowsInsert{head: head, tail: tuple[j+1:], numbered: strings.HasPrefix(tuple, "($")}
	if r.query(1) != single {
		return rowsInsert{}, fmt.Errorf("sqlstore: the audit insert does not have one row of %d values", auditFields)
	}
	return r, nil
}

// query returns the insert of n rows.
func (r rowsInsert) query(n int) string {
	var b strings.Builder
	b.Grow(len(r.head) + n*auditFields*6 + len(r.tail))
	b.WriteString(r.head)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for j := range auditFields {
			if j > 0 {
				b.WriteString(", ")
			}
			if r.numbered {
				b.WriteByte('$')
				b.WriteString(strconv.Itoa(i*auditFields + j + 1))
			} else {
				b.WriteByte('?')
			}
		}
		b.WriteByte(')')
	}
	b.WriteString(r.tail)
	return b.String()
}

// checkCharset returns an error unless the audit text reaches the
// table's columns as utf8mb4 on MySQL, where a character that did not fit
// would be written changed (see the dialect's insertAudit): the
// connection's character sets (the DSN's charset parameter), and those of
// the text columns it writes. It asks until the answer is yes.
func (a *Auditor) checkCharset(ctx context.Context) error {
	if a.charsetQuery == "" || a.charsetOK.Load() {
		return nil
	}
	var (
		client, conn string
		other        int
	)
	if err := a.db.QueryRowContext(ctx, a.charsetQuery).Scan(&client, &conn, &other); err != nil {
		return fmt.Errorf("sqlstore: checking the audit table's character sets: %w", err)
	}
	switch {
	case client != "utf8mb4" || conn != "utf8mb4":
		return fmt.Errorf("sqlstore: the connection's character sets are %s (client) and %s, not utf8mb4: characters outside them would be written to the audit table changed; give the DSN charset=utf8mb4", client, conn)
	case other > 0:
		return fmt.Errorf("sqlstore: %d text columns of the audit table are not utf8mb4: characters outside their character set would be written changed; convert the table to utf8mb4", other)
	}
	a.charsetOK.Store(true)
	return nil
}

func (a *Auditor) write(ctx context.Context, e record) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.timeout)
	defer cancel()
	if err := a.checkCharset(ctx); err != nil {
		return err
	}
	stmt, err := a.inserts[0].get(ctx)
	if err != nil {
		return err
	}
	_, err = stmt.ExecContext(ctx, appendAuditArgs(make([]any, 0, auditFields), e)...)
	return err
}

// writeBatch writes batch in one transaction, within a.timeout and ctx.
// The rows are inserted in batch order, auditChunk to a statement; fewer
// rows left at the end are inserted by the statements of the powers of
// two they add up to (45 rows: 32, 8, 4, then 1), so that every statement
// is one of a few prepared once, and a batch of n rows takes at most
// n/auditChunk + auditChunkBits statements.
func (a *Auditor) writeBatch(ctx context.Context, batch []record) (err error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	if err := a.checkCharset(ctx); err != nil {
		return err
	}
	// Statements are prepared before the transaction takes its
	// connection: a pool of one connection has no other to prepare on.
	var stmts [auditChunkBits + 1]*sql.Stmt
	for k := range stmts {
		need := len(batch)>>k&1 == 1 // the remainder has 1<<k rows
		if k == auditChunkBits {
			need = len(batch) >= auditChunk
		}
		if !need {
			continue
		}
		if stmts[k], err = a.inserts[k].get(ctx); err != nil {
			return err
		}
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
	args := make([]any, 0, min(len(batch), auditChunk)*auditFields)
	for k := auditChunkBits; k >= 0; k-- {
		n := 1 << k
		if len(batch) < n {
			continue
		}
		ts := tx.StmtContext(ctx, stmts[k]) // closed with tx
		for len(batch) >= n {
			args = args[:0]
			for _, e := range batch[:n] {
				args = appendAuditArgs(args, e)
			}
			if _, err = ts.ExecContext(ctx, args...); err != nil {
				return err
			}
			batch = batch[n:]
		}
	}
	return commit(ctx, tx, a.dialect)
}

// run is the background goroutine: it writes queued events in batches and
// retries held and spilled events with backoff, until Close.
func (a *Auditor) run() {
	defer close(a.done)
	ctx := context.Background()
	timer := time.NewTimer(0)
	defer timer.Stop()
	var (
		attempt int       // failed retries in a row
		next    time.Time // when to retry held events
	)
	batch := make([]record, 0, a.queueMax)
	for {
		var retry <-chan time.Time
		if a.retryable() > 0 {
			timer.Reset(time.Until(next))
			retry = timer.C
		}
		select {
		case <-a.stop:
			a.shutdown(batch)
			return
		case e := <-a.queue: // never ready without a queue
			batch = a.fill(append(batch[:0], e))
			if a.gather > 0 && len(batch) < a.queueMax {
				batch = a.wait(batch)
			}
			a.writeQueued(ctx, batch)
		case <-a.wake:
			// An event was just held after a failure: retrying at once
			// would fail too.
			if now := time.Now(); !next.After(now) {
				next = now.Add(retryDelay(attempt, a.maxDelay))
			}
		case <-retry:
			if _, err := a.retry(ctx); err != nil {
				attempt++
				next = time.Now().Add(retryDelay(attempt, a.maxDelay))
			} else {
				attempt = 0
			}
		}
		timer.Stop()
	}
}

// retryDelay returns the wait before retry number attempt+1: minRetryDelay
// doubled attempt times, at most max, less a random part of up to half.
func retryDelay(attempt int, max time.Duration) time.Duration {
	d := max
	if attempt < 16 {
		d = min(max, minRetryDelay<<attempt)
	}
	return d - rand.N(d/2+1)
}

// wait adds to batch the events queued within a.gather, until the batch
// is full or the Auditor is closing.
func (a *Auditor) wait(batch []record) []record {
	t := time.NewTimer(a.gather)
	defer t.Stop()
	for len(batch) < a.queueMax {
		select {
		case e := <-a.queue:
			batch = a.fill(append(batch, e))
		case <-t.C:
			return batch
		case <-a.stop:
			return a.fill(batch) // what was queued before Close
		}
	}
	return batch
}

// fill adds to batch what is waiting in the queue, up to a.queueMax events.
func (a *Auditor) fill(batch []record) []record {
	for len(batch) < a.queueMax {
		select {
		case e := <-a.queue:
			batch = append(batch, e)
		default:
			return batch
		}
	}
	return batch
}

// writeQueued writes a batch taken from the queue, or holds it.
func (a *Auditor) writeQueued(ctx context.Context, batch []record) {
	if err := a.holding(); err != nil {
		a.keep(ctx, err, batch...)
		return
	}
	if err := a.writeBatch(ctx, batch); err != nil {
		a.failing(err)
		if p := (*pendingCommit)(nil); errors.As(err, &p) {
			a.doubt(ctx, p, slices.Clone(batch), true)
			return
		}
		a.keep(ctx, err, batch...)
		return
	}
	a.healthy()
}

// retry writes the oldest held events, or else the next events of the
// spill file, in one transaction. It reports whether there was anything
// to write.
func (a *Auditor) retry(ctx context.Context) (bool, error) {
	a.hmu.Lock()
	batch := append([]record(nil), a.held[:min(len(a.held), retryBatch)]...)
	a.hmu.Unlock()
	if len(batch) > 0 {
		err := a.writeBatch(ctx, batch)
		p := (*pendingCommit)(nil)
		if err != nil && !errors.As(err, &p) {
			a.failing(err)
			return true, err
		}
		a.hmu.Lock()
		n := copy(a.held, a.held[len(batch):])
		clear(a.held[n:])
		a.held = a.held[:n]
		a.hmu.Unlock()
		if p != nil {
			a.failing(err)
			a.doubt(ctx, p, batch, false)
			return true, err
		}
		a.healthy()
		return true, nil
	}

	c, err := a.spill.next(retryBatch)
	if err != nil {
		a.logger.LogAttrs(ctx, slog.LevelError, "sqlstore: cannot read the audit spill file", slog.Any("error", err))
		return true, err
	}
	if c.lines == 0 {
		return false, nil
	}
	var p *pendingCommit
	if len(c.events) > 0 {
		if err = a.writeBatch(ctx, c.events); err != nil && !errors.As(err, &p) {
			a.failing(err)
			return true, err
		}
	}
	if c.bad > 0 {
		a.lost.Add(uint64(c.bad))
		a.logger.LogAttrs(ctx, slog.LevelError, "sqlstore: unreadable lines of the audit spill file skipped",
			slog.Int("lines", c.bad))
	}
	if err := a.spill.commit(c); err != nil {
		a.logger.LogAttrs(ctx, slog.LevelError, "sqlstore: cannot remove the audit spill file", slog.Any("error", err))
	}
	if p != nil {
		// Out of the file: held again if the commit fails.
		a.failing(err)
		a.doubt(ctx, p, c.events, false)
		return true, err
	}
	if len(c.events) > 0 {
		a.healthy()
	}
	return true, nil
}

// shutdown writes what it can before a.closeBy: the queue, then held and
// spilled events, retrying with backoff; then it spills, or loses, what
// is still held.
func (a *Auditor) shutdown(batch []record) {
	ctx, cancel := context.WithDeadline(context.Background(), a.closeBy)
	defer cancel()
	for drained := false; !drained; {
		select {
		case e := <-a.queue:
			batch = a.fill(append(batch[:0], e))
			a.writeQueued(ctx, batch)
		default:
			drained = true
		}
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for attempt := 0; a.Pending() > 0; {
		did, err := a.retry(ctx)
		if err == nil {
			if !did {
				break
			}
			attempt = 0
			continue
		}
		attempt++
		wait := retryDelay(attempt, a.maxDelay)
		if time.Until(a.closeBy) <= wait {
			break
		}
		timer.Reset(wait)
		<-timer.C
	}

	// Events whose commit is awaited: the outcome, until closeBy.
	resolved := make(chan struct{})
	go func() {
		a.resolving.Wait()
		close(resolved)
	}()
	select {
	case <-resolved:
	case <-ctx.Done():
	}
	a.hmu.Lock()
	a.shut = true
	rest := a.held
	a.held = nil
	for d := range a.doubts {
		// Spilled rather than maybe lost: if their commit succeeded
		// after all, writing them again inserts nothing.
		rest = append(rest, *d...)
		a.doubtful -= len(*d)
	}
	clear(a.doubts)
	a.hmu.Unlock()
	if len(rest) > 0 {
		stored, err := a.spill.append(rest)
		if stored < len(rest) {
			a.lose(ctx, fmt.Errorf("sqlstore: audit events still held at close: %w", err), rest[stored:]...)
		}
	}
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

package m2mauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// RevocationPollerConfig holds the tunables of a [RevocationPoller].
// Every zero value is a working default.
type RevocationPollerConfig struct {
	// Interval is the time from the end of one poll to the start of the
	// next: a revocation recorded in the feed reaches the validators
	// within Interval (plus the duration of one poll, plus whatever delay
	// the feed itself adds). At least 10ms. Default: 5s.
	Interval time.Duration
	// MaxStale is how long the snapshot is trusted after the start of
	// the last successful poll. Past it, CurrentRevocations returns an
	// error wrapping [ErrRevocationsStale] and a [Validator] refuses
	// every token. It must exceed Interval. Default: 6 × Interval (30s
	// with the default Interval): five polls in a row may fail before
	// tokens are refused.
	//
	// CurrentRevocations reads no clock, to stay cheap: a timer marks the
	// snapshot stale when MaxStale has passed, and so does every poll
	// attempt and every Ping that finds it past MaxStale by Now. With an
	// injected Now, only the latter two see the injected time.
	MaxStale time.Duration
	// Timeout bounds each poll, whoever starts it. Default: 5s.
	Timeout time.Duration
	// Logger receives the first failure of a run of failed polls, the
	// moment the snapshot becomes stale, and the recovery: one line
	// each, not one per poll. Default: [slog.Default].
	Logger *slog.Logger
	// Now is the clock behind staleness and the pruning of dead
	// entries. Default: [time.Now].
	Now func() time.Time
}

const (
	defaultPollInterval = 5 * time.Second
	minPollInterval     = 10 * time.Millisecond
	defaultPollStale    = 6 // × Interval
	defaultPollTimeout  = 5 * time.Second
	// pollPruneEvery is the least time between two prunings of a
	// snapshot whose version did not change: each copies the snapshot,
	// and dead entries revoke nothing, so there is no hurry.
	pollPruneEvery = time.Minute
)

// RevocationPoller is a [RevocationSource] fed by a [RevocationFeed]: a
// store shared by replicas (sqlstore), or the revocation list another
// server publishes ([RemoteRevocations]). It polls the feed in a
// background goroutine and hands validators the last snapshot it got,
// so a validation never waits for the feed. Give it to
// [ValidatorConfig.Revocations]; stop it with Close.
//
// Guarantees:
//
//   - CurrentRevocations is two atomic loads; it reads no clock, does not
//     allocate and never blocks.
//   - A revocation reaches CurrentRevocations within Interval (5s by
//     default) plus one poll.
//   - The poller starts whatever the state of the feed: the first poll
//     runs in the background at once. Until one succeeds,
//     CurrentRevocations returns an error wrapping
//     [ErrRevocationsStale], and validators refuse tokens; call Refresh
//     at start-up to wait for it.
//   - A failed poll never replaces the snapshot. The snapshot is served
//     up to MaxStale (30s by default) after the start of the last
//     successful poll; then CurrentRevocations fails with
//     [ErrRevocationsStale] (it still returns the snapshot, for
//     [ValidatorConfig.InsecureAcceptStaleRevocations]) until a poll
//     succeeds again.
//   - The version never goes back, and no revocation is forgotten
//     because the feed's was: a feed answering with a Version lower than
//     the one held (a database restored from a backup, or a standby
//     promoted before it saw the last changes) is logged, and the
//     snapshot held stays, fresh, until the feed's Version passes it.
//     The poll succeeds: a feed gives no Version to two states (see
//     [Revocations]), so an older state's revocations are all held.
//     [RemoteRevocations] refuses a list older than one it took before,
//     as a replay, which fails the poll.
//   - Entries that can no longer revoke a valid token are dropped from
//     the snapshot ([Revocations.Pruned]) as they die, at most once a
//     minute, even while the feed's version does not change, so memory
//     shrinks back after a burst of revocations.
//
// It implements [Pinger]: Ping fails while the snapshot is stale, so
// it can be a readiness check:
//
//	Checks: map[string]func(context.Context) error{"revocations": poller.Ping}
//
// A RevocationPoller is safe for concurrent use.
type RevocationPoller struct {
	feed RevocationFeed
	cfg  RevocationPollerConfig

	// snap is the current snapshot, nil until the first successful
	// poll. It is replaced, never modified.
	snap atomic.Pointer[pollSnapshot]

	// smu guards the replacement of snap and the marking of a snapshot
	// as stale; it is held briefly, never across a poll.
	smu sync.Mutex
	// watchdog marks the snapshot stale when MaxStale has passed without
	// a successful poll, whatever the background goroutine is doing.
	watchdog *time.Timer

	mu        sync.Mutex // serializes polls; guards the fields below
	failing   bool       // the last poll failed
	failedAt  time.Time  // start of the first of the failed polls in a row
	staleSaid bool       // the staleness of this run was logged
	behind    bool       // the feed is at an older version than the snapshot
	lastPrune time.Time

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// pollSnapshot is a snapshot and the instants that govern it.
type pollSnapshot struct {
	revs *Revocations // never nil
	// good is the start of the last successful poll; the snapshot is
	// stale after staleAt, good + MaxStale, and then staleErr is
	// returned with it.
	good, staleAt time.Time
	staleErr      error
	// death is the earliest instant past which an entry of revs revokes
	// nothing; zero when revs is empty.
	death time.Time
	// stale is set once the snapshot is found past staleAt; it is never
	// cleared: a successful poll installs a new snapshot.
	stale atomic.Bool
}

// errNoRevocationsYet is the error of a poller before its first
// successful poll.
var errNoRevocationsYet = fmt.Errorf("%w: no revocations polled yet", ErrRevocationsStale)

// NewRevocationPoller returns a poller of feed and starts its
// background goroutine, whose first poll runs at once. It does not wait
// for that poll: call Refresh for that. Close stops it.
func NewRevocationPoller(feed RevocationFeed, cfg RevocationPollerConfig) (*RevocationPoller, error) {
	if feed == nil {
		return nil, errors.New("m2mauth: nil RevocationFeed")
	}
	switch {
	case cfg.Interval == 0:
		cfg.Interval = defaultPollInterval
	case cfg.Interval < minPollInterval:
		return nil, fmt.Errorf("m2mauth: RevocationPollerConfig.Interval %v is under %v", cfg.Interval, minPollInterval)
	}
	switch {
	case cfg.MaxStale == 0:
		cfg.MaxStale = defaultPollStale * cfg.Interval
	case cfg.MaxStale <= cfg.Interval:
		return nil, fmt.Errorf("m2mauth: RevocationPollerConfig.MaxStale %v must exceed Interval %v", cfg.MaxStale, cfg.Interval)
	}
	switch {
	case cfg.Timeout == 0:
		cfg.Timeout = defaultPollTimeout
	case cfg.Timeout < 0:
		return nil, fmt.Errorf("m2mauth: RevocationPollerConfig.Timeout %v is negative", cfg.Timeout)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &RevocationPoller{feed: feed, cfg: cfg, cancel: cancel, done: make(chan struct{})}
	p.watchdog = time.AfterFunc(cfg.MaxStale, p.watch)
	go p.run(ctx)
	return p, nil
}

// CurrentRevocations implements [RevocationSource]: the last snapshot
// polled, and nil; or, when no poll has succeeded within MaxStale, that
// snapshot (nil if there was none) and an error wrapping
// [ErrRevocationsStale].
func (p *RevocationPoller) CurrentRevocations() (*Revocations, error) {
	s := p.snap.Load()
	if s == nil {
		return nil, errNoRevocationsYet
	}
	if s.stale.Load() {
		return s.revs, s.staleErr
	}
	return s.revs, nil
}

// Ping implements [Pinger]: it checks the snapshot's age by Now, and
// returns the error of CurrentRevocations, nil while the snapshot is
// fresh.
func (p *RevocationPoller) Ping(context.Context) error {
	p.markStale(p.cfg.Now())
	_, err := p.CurrentRevocations()
	return err
}

// markStale marks the snapshot stale if it is past MaxStale at now.
func (p *RevocationPoller) markStale(now time.Time) {
	p.smu.Lock()
	defer p.smu.Unlock()
	if s := p.snap.Load(); s != nil && now.After(s.staleAt) {
		s.stale.Store(true)
	}
}

// watch is the watchdog's function: it marks the snapshot stale, or, if
// it is not due yet by Now, sets the watchdog again.
func (p *RevocationPoller) watch() {
	now := p.cfg.Now()
	p.smu.Lock()
	defer p.smu.Unlock()
	s := p.snap.Load()
	switch {
	case s == nil:
		// Nothing to mark; the first success sets the watchdog.
	case now.After(s.staleAt):
		s.stale.Store(true)
	default:
		p.watchdog.Reset(s.staleAt.Sub(now) + time.Millisecond)
	}
}

// install replaces the snapshot with s, stale already if it is past
// MaxStale at now; when s comes from a successful poll, fresh, it sets
// the watchdog for its MaxStale.
func (p *RevocationPoller) install(s *pollSnapshot, now time.Time, fresh bool) {
	p.smu.Lock()
	defer p.smu.Unlock()
	if old := p.snap.Load(); !fresh && old != nil && old.stale.Load() || now.After(s.staleAt) {
		s.stale.Store(true)
	}
	p.snap.Store(s)
	if fresh {
		p.watchdog.Reset(max(s.staleAt.Sub(now), 0) + time.Millisecond)
	}
}

// Refresh polls the feed now, after any poll in progress, within ctx and
// Timeout, and returns that poll's error. The background polls go on
// regardless.
func (p *RevocationPoller) Refresh(ctx context.Context) error {
	return p.poll(ctx)
}

// Close stops the background polls and waits for the one in progress,
// if any, to end. The snapshot is still served until it is stale:
// MaxStale after the last successful poll, or Refresh.
// Closing twice is not an error.
func (p *RevocationPoller) Close() error {
	p.closeOnce.Do(func() {
		p.cancel()
		<-p.done
	})
	return nil
}

// run polls at once, then Interval after the end of each poll.
func (p *RevocationPoller) run(ctx context.Context) {
	defer close(p.done)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.poll(ctx)
		t.Reset(p.cfg.Interval)
	}
}

// poll asks the feed for what changed since the version held, and
// installs it, or records the failure.
func (p *RevocationPoller) poll(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	started := p.cfg.Now()
	old := p.snap.Load()
	version := int64(-1) // nothing held: every version differs
	if old != nil {
		version = old.revs.Version
	}
	fctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	r, err := p.feed.RevocationsSince(fctx, version)
	cancel()
	now := p.cfg.Now()
	switch {
	case err != nil:
		err = fmt.Errorf("m2mauth: polling revocations: %w", err)
	case r == nil && old == nil:
		err = errors.New("m2mauth: polling revocations: the feed answered \"unchanged\" to a poller that holds nothing")
	case r != nil && r.Version < 0:
		err = fmt.Errorf("m2mauth: polling revocations: the feed answered with the negative version %d", r.Version)
	}
	if err != nil {
		if ctx.Err() == nil {
			// A poll cut short by Close, or by its caller giving up,
			// says nothing about the feed.
			p.failed(ctx, err, old, started, now)
		}
		return err
	}
	var s *pollSnapshot
	switch {
	case r == nil || old != nil && r.Version == old.revs.Version:
		s = p.prune(old.revs, old.death, now, false)
	case old != nil && r.Version < old.revs.Version:
		// The feed went back to an older state: a database restored
		// from a backup, a standby promoted before it saw the last
		// changes, a replica that lags. (A list from another server
		// that goes back is refused before it gets here, by
		// RemoteRevocations, as a replay.) A feed gives no Version to
		// two states, so every revocation of that older state is held
		// already: the snapshot stays, fresh, until the feed's
		// Version passes its own.
		if !p.behind {
			p.behind = true
			p.cfg.Logger.WarnContext(ctx, "m2mauth: the revocation feed went back to an older version (a database restored, or failed over?); "+
				"keeping the revocations held until its version passes theirs: make again any revocation recorded after its version",
				"held_version", old.revs.Version, "feed_version", r.Version)
		}
		s = p.prune(old.revs, old.death, now, false)
	default:
		if p.behind {
			p.behind = false
			p.cfg.Logger.InfoContext(ctx, "m2mauth: the revocation feed passed the version held; its revocations replace those held", "version", r.Version)
		}
		s = p.prune(r, revocationsDeath(r), now, true)
	}
	s.good = started
	s.staleAt = started.Add(p.cfg.MaxStale)
	s.staleErr = fmt.Errorf("%w: no successful poll since %s (MaxStale %v)", ErrRevocationsStale, started.Format(time.RFC3339), p.cfg.MaxStale)
	p.install(s, now, true)
	if p.failing {
		p.cfg.Logger.InfoContext(ctx, "m2mauth: revocation polls succeed again",
			"failing_since", p.failedAt, "version", s.revs.Version, "entries", s.revs.Len())
		p.failing, p.staleSaid = false, false
	}
	return nil
}

// failed records a failed poll: it logs the first of a run, and the
// moment the snapshot turns stale, and prunes the snapshot held, which
// stays.
func (p *RevocationPoller) failed(ctx context.Context, err error, old *pollSnapshot, started, now time.Time) {
	if !p.failing {
		p.failing, p.failedAt = true, started
		p.cfg.Logger.WarnContext(ctx, "m2mauth: revocation poll failed; serving the last snapshot until it is stale",
			"error", err, "max_stale", p.cfg.MaxStale)
	}
	if !p.staleSaid && (old == nil || old.stale.Load() || now.After(old.staleAt)) {
		p.staleSaid = true
		attrs := []any{"error", err}
		if old != nil {
			attrs = append(attrs, "last_success", old.good)
		}
		p.cfg.Logger.ErrorContext(ctx, "m2mauth: revocations are stale; validators refuse tokens", attrs...)
	}
	if old == nil {
		return
	}
	if s := p.prune(old.revs, old.death, now, false); s.revs != old.revs {
		s.good, s.staleAt, s.staleErr = old.good, old.staleAt, old.staleErr
		p.install(s, now, false)
	} else {
		p.markStale(now)
	}
}

// prune returns a snapshot of r without its dead entries when some have
// died (death is their earliest end) and it is time to prune; fresh
// snapshots from the feed are pruned at once, held ones at most once per
// pollPruneEvery. The timing fields are left to the caller.
func (p *RevocationPoller) prune(r *Revocations, death, now time.Time, fresh bool) *pollSnapshot {
	if death.IsZero() || !now.After(death) || !fresh && !p.lastPrune.IsZero() && now.Sub(p.lastPrune) < pollPruneEvery {
		return &pollSnapshot{revs: r, death: death}
	}
	p.lastPrune = now
	r = r.Pruned(now)
	return &pollSnapshot{revs: r, death: revocationsDeath(r)}
}

// revocationsDeath returns the earliest instant past which an entry of
// r can no longer revoke a valid token (see [WatermarkLive] and
// [DenyLive]), or zero when r has no entries.
func revocationsDeath(r *Revocations) time.Time {
	var first time.Time
	note := func(t time.Time) {
		if first.IsZero() || t.Before(first) {
			first = t
		}
	}
	if !r.Before.IsZero() {
		note(r.Before.Add(MaxClientTokenTTL + RevocationGrace))
	}
	for _, at := range r.Clients {
		note(at.Add(MaxClientTokenTTL + RevocationGrace))
	}
	for _, exp := range r.Tokens {
		note(exp.Add(RevocationGrace))
	}
	return first
}

var (
	_ RevocationSource = (*RevocationPoller)(nil)
	_ Pinger           = (*RevocationPoller)(nil)
)

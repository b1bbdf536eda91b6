package m2mauth_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// newPollClock is the settable clock of the poller's tests.
func newPollClock() *pollClock {
	return &pollClock{t: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
}

// pollClock is the detectors' settable clock.
type pollClock = detectorClock

// fakeFeed is a RevocationFeed over a snapshot the test sets. Like a
// store, it answers (nil, nil) when the version asked is the current
// one.
type fakeFeed struct {
	mu    sync.Mutex
	revs  *m2mauth.Revocations
	err   error
	calls int
	block bool // wait for the context to end
}

func (f *fakeFeed) RevocationsSince(ctx context.Context, version int64) (*m2mauth.Revocations, error) {
	f.mu.Lock()
	f.calls++
	revs, err, block := f.revs, f.err, f.block
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	if revs.Version == version {
		return nil, nil
	}
	return revs, nil
}

func (f *fakeFeed) set(revs *m2mauth.Revocations, err error) {
	f.mu.Lock()
	f.revs, f.err = revs, err
	f.mu.Unlock()
}

func (f *fakeFeed) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// newTestPoller returns a poller of feed on clock whose background polls
// are an hour apart, so only the tests' Refresh calls matter after the
// first; MaxStale is two hours.
func newTestPoller(t *testing.T, feed m2mauth.RevocationFeed, clock *pollClock, logs *syncBuffer) *m2mauth.RevocationPoller {
	t.Helper()
	cfg := m2mauth.RevocationPollerConfig{Interval: time.Hour, MaxStale: 2 * time.Hour, Now: clock.Now}
	if logs != nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	} else {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p, err := m2mauth.NewRevocationPoller(feed, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

func revsWithJTI(version int64, jti string, exp time.Time) *m2mauth.Revocations {
	return &m2mauth.Revocations{Version: version, Tokens: map[string]time.Time{jti: exp}}
}

// TestRevocationPollerRefresh: Refresh installs what changed in the feed
// and keeps the snapshot (the same pointer) while nothing did.
func TestRevocationPollerRefresh(t *testing.T) {
	clock := newPollClock()
	feed := &fakeFeed{revs: revsWithJTI(1, "j1", clock.Now().Add(time.Hour))}
	p := newTestPoller(t, feed, clock, nil)

	require.NoError(t, p.Refresh(t.Context()))
	r1, err := p.CurrentRevocations()
	require.NoError(t, err)
	assert.Equal(t, int64(1), r1.Version)
	assert.True(t, r1.Revoked("svc", "j1", clock.Now()))

	require.NoError(t, p.Refresh(t.Context()))
	again, err := p.CurrentRevocations()
	require.NoError(t, err)
	assert.Same(t, r1, again, "an unchanged feed keeps the snapshot")

	feed.set(revsWithJTI(2, "j2", clock.Now().Add(time.Hour)), nil)
	got, _ := p.CurrentRevocations()
	assert.Equal(t, int64(1), got.Version, "nothing changes between polls")
	require.NoError(t, p.Refresh(t.Context()))
	got, err = p.CurrentRevocations()
	require.NoError(t, err)
	assert.Equal(t, int64(2), got.Version)
	assert.True(t, got.Revoked("svc", "j2", clock.Now()))
	assert.NoError(t, p.Ping(t.Context()))
}

// TestRevocationPollerPollsInBackground: with no Refresh at all, the
// background goroutine polls at once and then every Interval.
func TestRevocationPollerPollsInBackground(t *testing.T) {
	feed := &fakeFeed{revs: revsWithJTI(1, "j1", time.Now().Add(time.Hour))}
	p, err := m2mauth.NewRevocationPoller(feed, m2mauth.RevocationPollerConfig{
		Interval: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	defer p.Close()
	version := func() int64 {
		r, err := p.CurrentRevocations()
		if err != nil {
			return -1
		}
		return r.Version
	}
	require.Eventually(t, func() bool { return version() == 1 }, 10*time.Second, 5*time.Millisecond, "the first poll")
	feed.set(revsWithJTI(2, "j2", time.Now().Add(time.Hour)), nil)
	require.Eventually(t, func() bool { return version() == 2 }, 10*time.Second, 5*time.Millisecond, "a later poll")

	require.NoError(t, p.Close())
	require.NoError(t, p.Close(), "Close is idempotent")
	n := feed.callCount()
	require.NoError(t, p.Refresh(t.Context()), "Refresh still works after Close")
	assert.Equal(t, n+1, feed.callCount())
}

// TestRevocationPollerStale: the snapshot is served for MaxStale after
// the start of the last successful poll, failures in between included;
// then CurrentRevocations fails with ErrRevocationsStale, still handing
// out the snapshot; a successful poll ends it.
func TestRevocationPollerStale(t *testing.T) {
	clock := newPollClock()
	feed := &fakeFeed{revs: revsWithJTI(1, "j1", clock.Now().Add(10*time.Hour))}
	p := newTestPoller(t, feed, clock, nil)
	require.NoError(t, p.Refresh(t.Context()))

	down := errors.New("database down")
	feed.set(nil, down)
	clock.Add(time.Hour)
	err := p.Refresh(t.Context())
	require.ErrorIs(t, err, down)
	r, err := p.CurrentRevocations()
	require.NoError(t, err, "a failed poll within MaxStale changes nothing")
	assert.Equal(t, int64(1), r.Version)

	clock.Add(time.Hour) // exactly MaxStale since the last success
	require.Error(t, p.Refresh(t.Context()))
	require.NoError(t, p.Ping(t.Context()))
	_, err = p.CurrentRevocations()
	require.NoError(t, err, "MaxStale itself is still fresh")

	// A failed poll notices the injected clock has moved past MaxStale.
	clock.Add(time.Nanosecond)
	require.Error(t, p.Refresh(t.Context()))
	r, err = p.CurrentRevocations()
	require.ErrorIs(t, err, m2mauth.ErrRevocationsStale)
	require.NotNil(t, r, "the last snapshot comes with the error")
	assert.Equal(t, int64(1), r.Version)
	require.ErrorIs(t, p.Ping(t.Context()), m2mauth.ErrRevocationsStale)

	feed.set(revsWithJTI(1, "j1", clock.Now().Add(10*time.Hour)), nil)
	require.NoError(t, p.Refresh(t.Context()))
	_, err = p.CurrentRevocations()
	require.NoError(t, err, "recovered")
	assert.NoError(t, p.Ping(t.Context()))
}

// TestRevocationPollerStartsWithFeedDown: a poller starts whatever the
// feed's state; it is stale until its first successful poll.
func TestRevocationPollerStartsWithFeedDown(t *testing.T) {
	clock := newPollClock()
	feed := &fakeFeed{err: errors.New("connection refused")}
	p := newTestPoller(t, feed, clock, nil)
	r, err := p.CurrentRevocations()
	require.ErrorIs(t, err, m2mauth.ErrRevocationsStale)
	assert.Nil(t, r)
	require.Error(t, p.Refresh(t.Context()))
	_, err = p.CurrentRevocations()
	require.ErrorIs(t, err, m2mauth.ErrRevocationsStale)

	feed.set(&m2mauth.Revocations{}, nil) // version 0: nothing ever revoked
	require.NoError(t, p.Refresh(t.Context()))
	r, err = p.CurrentRevocations()
	require.NoError(t, err)
	assert.Zero(t, r.Len())
}

// TestRevocationPollerFeedGoesBack: a feed answering with a lower
// Version than the one held (a database restored from a backup, a
// standby promoted before it saw the last commits, a lagging replica)
// neither makes the poller forget a revocation nor fails its polls: the
// snapshot held stays, fresh, until the feed's version passes it. It is
// logged once.
func TestRevocationPollerFeedGoesBack(t *testing.T) {
	tests := []struct {
		name string
		back func(now time.Time) *m2mauth.Revocations // the feed, gone back
	}{
		{"to nothing", func(time.Time) *m2mauth.Revocations { return &m2mauth.Revocations{Version: 3} }},
		{"to what it had", func(now time.Time) *m2mauth.Revocations { return revsWithJTI(3, "j5", now.Add(10*time.Hour)) }},
		{"to a version never seen", func(now time.Time) *m2mauth.Revocations { return revsWithJTI(4, "j5", now.Add(10*time.Hour)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newPollClock()
			start := clock.Now()
			var logs syncBuffer
			held := revsWithJTI(5, "j5", start.Add(10*time.Hour))
			feed := &fakeFeed{revs: held}
			p := newTestPoller(t, feed, clock, &logs)
			require.NoError(t, p.Refresh(t.Context()))

			back := tt.back(start)
			feed.set(back, nil)
			for range 3 {
				require.NoError(t, p.Refresh(t.Context()))
				r, err := p.CurrentRevocations()
				require.NoError(t, err, "the polls succeed")
				require.Equal(t, int64(5), r.Version)
				require.True(t, r.Revoked("svc", "j5", start), "the revocation held is kept")
				clock.Add(time.Hour) // MaxStale is two hours
			}
			assert.Equal(t, 1, strings.Count(logs.String(), "went back"), "logged once: %s", logs.String())
			assert.Contains(t, logs.String(), fmt.Sprintf("held_version=5 feed_version=%d", back.Version))

			// The feed passes the version held: its revocations are taken.
			feed.set(revsWithJTI(7, "j7", clock.Now().Add(10*time.Hour)), nil)
			require.NoError(t, p.Refresh(t.Context()))
			r, err := p.CurrentRevocations()
			require.NoError(t, err)
			assert.Equal(t, int64(7), r.Version)
			assert.True(t, r.Revoked("svc", "j7", start))
			assert.False(t, r.Revoked("svc", "j5", start))
			assert.Contains(t, logs.String(), "passed the version held")
		})
	}
}

// TestRevocationPollerPingNoticesStaleness: Ping, a readiness check,
// finds the snapshot stale by Now without a poll.
func TestRevocationPollerPingNoticesStaleness(t *testing.T) {
	clock := newPollClock()
	p := newTestPoller(t, &fakeFeed{revs: &m2mauth.Revocations{Version: 1}}, clock, nil)
	require.NoError(t, p.Refresh(t.Context()))
	clock.Add(2*time.Hour + time.Second)
	require.ErrorIs(t, p.Ping(t.Context()), m2mauth.ErrRevocationsStale)
	_, err := p.CurrentRevocations()
	require.ErrorIs(t, err, m2mauth.ErrRevocationsStale)
}

// TestRevocationPollerWatchdog: a feed that hangs cannot keep the
// snapshot fresh: with the real clock, a timer marks it stale MaxStale
// after the last successful poll, while the poll in progress still
// waits.
func TestRevocationPollerWatchdog(t *testing.T) {
	feed := &fakeFeed{revs: &m2mauth.Revocations{Version: 1}}
	p, err := m2mauth.NewRevocationPoller(feed, m2mauth.RevocationPollerConfig{
		Interval: 10 * time.Millisecond, MaxStale: 100 * time.Millisecond, Timeout: time.Hour,
		Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	defer p.Close()
	require.NoError(t, p.Refresh(t.Context()))
	feed.mu.Lock()
	feed.block = true
	feed.mu.Unlock()
	require.Eventually(t, func() bool {
		_, err := p.CurrentRevocations()
		return errors.Is(err, m2mauth.ErrRevocationsStale)
	}, 10*time.Second, 5*time.Millisecond)
}

// feedFunc adapts a function to RevocationFeed.
type feedFunc func(ctx context.Context, version int64) (*m2mauth.Revocations, error)

func (f feedFunc) RevocationsSince(ctx context.Context, version int64) (*m2mauth.Revocations, error) {
	return f(ctx, version)
}

// TestRevocationPollerRefusesOddAnswers: "unchanged" when nothing is
// held, and negative versions, are refused.
func TestRevocationPollerRefusesOddAnswers(t *testing.T) {
	tests := []struct {
		name string
		feed feedFunc
		want string
	}{
		{"unchanged before anything was held", func(context.Context, int64) (*m2mauth.Revocations, error) { return nil, nil }, "holds nothing"},
		{"negative version", func(context.Context, int64) (*m2mauth.Revocations, error) {
			return &m2mauth.Revocations{Version: -2}, nil
		}, "negative version"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestPoller(t, tc.feed, newPollClock(), nil)
			err := p.Refresh(t.Context())
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			_, err = p.CurrentRevocations()
			require.ErrorIs(t, err, m2mauth.ErrRevocationsStale)
		})
	}
}

// TestRevocationPollerTimeout: a feed that hangs is cut off after
// Timeout, and the poll fails.
func TestRevocationPollerTimeout(t *testing.T) {
	feed := &fakeFeed{block: true}
	p, err := m2mauth.NewRevocationPoller(feed, m2mauth.RevocationPollerConfig{
		Interval: time.Hour, Timeout: 50 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	defer p.Close()
	require.ErrorIs(t, p.Refresh(t.Context()), context.DeadlineExceeded)
}

// TestRevocationPollerLogsOnce: a run of failures logs its first
// failure, the moment the snapshot turns stale, and the recovery, once
// each.
func TestRevocationPollerLogsOnce(t *testing.T) {
	clock := newPollClock()
	feed := &fakeFeed{revs: revsWithJTI(1, "j1", clock.Now().Add(10*time.Hour))}
	var logs syncBuffer
	p := newTestPoller(t, feed, clock, &logs)
	require.NoError(t, p.Refresh(t.Context()))

	feed.set(nil, errors.New("database down"))
	for range 5 {
		clock.Add(10 * time.Minute)
		require.Error(t, p.Refresh(t.Context()))
	}
	clock.Add(2 * time.Hour) // stale now
	for range 5 {
		require.Error(t, p.Refresh(t.Context()))
	}
	feed.set(revsWithJTI(2, "j2", clock.Now().Add(10*time.Hour)), nil)
	for range 3 {
		require.NoError(t, p.Refresh(t.Context()))
	}
	out := logs.String()
	assert.Equal(t, 1, strings.Count(out, "revocation poll failed"), out)
	assert.Equal(t, 1, strings.Count(out, "revocations are stale"), out)
	assert.Equal(t, 1, strings.Count(out, "succeed again"), out)
	assert.Contains(t, out, "database down")

	// A second run of failures is logged again.
	feed.set(nil, errors.New("database down again"))
	require.Error(t, p.Refresh(t.Context()))
	assert.Equal(t, 2, strings.Count(logs.String(), "revocation poll failed"))
}

// TestRevocationPollerPrunes: entries that can no longer revoke a valid
// token leave the snapshot although the feed's version does not change,
// and while the feed is down; the version stays.
func TestRevocationPollerPrunes(t *testing.T) {
	n := 100_000
	if raceEnabled {
		n = 20_000
	}
	clock := newPollClock()
	start := clock.Now()
	revs := &m2mauth.Revocations{Version: 9, Tokens: make(map[string]time.Time, n), Clients: map[string]time.Time{"svc": start}}
	for i := range n {
		exp := start.Add(time.Hour) // half expire in an hour, half in 90 minutes
		if i%2 == 1 {
			exp = start.Add(90 * time.Minute)
		}
		revs.Tokens[fmt.Sprintf("jti-%06d", i)] = exp
	}
	feed := &fakeFeed{revs: revs}
	p := newTestPoller(t, feed, clock, nil)
	require.NoError(t, p.Refresh(t.Context()))
	got, err := p.CurrentRevocations()
	require.NoError(t, err)
	require.Equal(t, n+1, got.Len())

	clock.Add(time.Hour + m2mauth.RevocationGrace + time.Second)
	require.NoError(t, p.Refresh(t.Context()))
	got, err = p.CurrentRevocations()
	require.NoError(t, err)
	assert.Equal(t, n/2+1, got.Len(), "the first half is gone")
	assert.Equal(t, int64(9), got.Version, "the version is kept, so the feed stays unchanged")
	assert.Equal(t, n+1, revs.Len(), "the feed's snapshot is not modified")

	// While the feed is down, the snapshot still shrinks; what is left
	// still revokes.
	feed.set(nil, errors.New("down"))
	clock.Add(30 * time.Minute)
	require.Error(t, p.Refresh(t.Context()))
	got, err = p.CurrentRevocations()
	require.NoError(t, err, "within MaxStale")
	assert.Equal(t, 1, got.Len(), "only the client watermark is left")
	assert.True(t, got.Revoked("svc", "any", start))
	assert.Equal(t, int64(9), got.Version)
}

// TestRevocationPollerAllocs: CurrentRevocations runs on every
// validation, so it must not allocate.
func TestRevocationPollerAllocs(t *testing.T) {
	clock := newPollClock()
	p := newTestPoller(t, &fakeFeed{revs: revsWithJTI(1, "j1", clock.Now().Add(time.Hour))}, clock, nil)
	require.NoError(t, p.Refresh(t.Context()))
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := p.CurrentRevocations(); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs)
}

// TestRevocationPollerReadiness: the poller is a readiness check that
// fails while its snapshot is stale.
func TestRevocationPollerReadiness(t *testing.T) {
	clock := newPollClock()
	feed := &fakeFeed{err: errors.New("down")}
	p := newTestPoller(t, feed, clock, nil)
	keys, err := m2mauth.NewStaticKeys(hsKey(t, "k1", keyA))
	require.NoError(t, err)
	h, err := m2mauth.NewReadinessHandler(nil, keys, m2mauth.ReadinessConfig{
		Checks: map[string]func(context.Context) error{"revocations": p.Ping},
		Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	w := call(h)
	assert.Equal(t, 503, w.Code)
	assert.JSONEq(t, `{"status":"not_ready","failed":{"revocations":"error"}}`, w.Body.String())

	feed.set(&m2mauth.Revocations{Version: 1}, nil)
	require.NoError(t, p.Refresh(t.Context()))
	w = call(h)
	assert.Equal(t, 200, w.Code, w.Body.String())
}

func TestNewRevocationPollerValidates(t *testing.T) {
	feed := &fakeFeed{revs: &m2mauth.Revocations{}}
	tests := []struct {
		name string
		feed m2mauth.RevocationFeed
		cfg  m2mauth.RevocationPollerConfig
	}{
		{"nil feed", nil, m2mauth.RevocationPollerConfig{}},
		{"interval under 10ms", feed, m2mauth.RevocationPollerConfig{Interval: time.Millisecond}},
		{"negative interval", feed, m2mauth.RevocationPollerConfig{Interval: -time.Second}},
		{"MaxStale equal to Interval", feed, m2mauth.RevocationPollerConfig{Interval: time.Second, MaxStale: time.Second}},
		{"MaxStale under the default Interval", feed, m2mauth.RevocationPollerConfig{MaxStale: time.Second}},
		{"negative MaxStale", feed, m2mauth.RevocationPollerConfig{MaxStale: -time.Second}},
		{"negative Timeout", feed, m2mauth.RevocationPollerConfig{Timeout: -time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := m2mauth.NewRevocationPoller(tc.feed, tc.cfg)
			require.Error(t, err)
			assert.Nil(t, p)
		})
	}
}

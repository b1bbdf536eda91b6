package m2mauth_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

// detectorClock is a settable clock, for detectors and revocation pollers.
type detectorClock struct {
	mu sync.Mutex
	t  time.Time
}

func newDetectorClock() *detectorClock {
	return &detectorClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *detectorClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *detectorClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// alertRecorder is an AlertSink that keeps what it receives.
type alertRecorder struct {
	mu     sync.Mutex
	alerts []m2mauth.Alert
}

func (r *alertRecorder) Send(_ context.Context, a m2mauth.Alert) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.alerts = append(r.alerts, a)
}

// of returns the alerts received of rule, in order.
func (r *alertRecorder) of(rule string) []m2mauth.Alert {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []m2mauth.Alert
	for _, a := range r.alerts {
		if a.Rule == rule {
			out = append(out, a)
		}
	}
	return out
}

// waitFor polls until at least n alerts of rule arrived, and returns them.
func (r *alertRecorder) waitFor(t *testing.T, rule string, n int) []m2mauth.Alert {
	t.Helper()
	var got []m2mauth.Alert
	require.Eventually(t, func() bool {
		got = r.of(rule)
		return len(got) >= n
	}, 30*time.Second, time.Millisecond, "waiting for %d %s alerts", n, rule)
	return got
}

// newTestDetector returns a detector over an alertRecorder, with the
// clock c, checking for recoveries every millisecond; it is closed when
// the test ends.
func newTestDetector(t *testing.T, c *detectorClock, cfg m2mauth.DetectorConfig) (*m2mauth.Detector, *alertRecorder) {
	t.Helper()
	rec := &alertRecorder{}
	cfg.Now = c.Now
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = time.Millisecond
	}
	d, err := m2mauth.NewDetector(nil, rec, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return d, rec
}

func detFailed(client, ip, reason string) m2mauth.AuditEvent {
	return m2mauth.AuditEvent{Type: m2mauth.EventAuthFailed, ClientID: client, RemoteIP: ip, Reason: reason, Error: "invalid_client"}
}

func detIssued(client, ip string) m2mauth.AuditEvent {
	return m2mauth.AuditEvent{Type: m2mauth.EventTokenIssued, ClientID: client, RemoteIP: ip, JTI: "j"}
}

// TestDetectorCountRules runs each counting rule through its life: quiet
// under the threshold, one alert at it, quiet during the cool-down
// however many more events come, a Recovered notice once the cool-down
// passed without them (found by the background check), and a new alert
// when the events come back. A disabled rule never fires.
func TestDetectorCountRules(t *testing.T) {
	type rule struct {
		name     string
		rule     string
		event    func(i int) m2mauth.AuditEvent
		fireAt   int
		recover  time.Duration // a wait after the last event that clears the condition
		severity m2mauth.AlertSeverity
		client   string
		address  func(i int) string // the Address of the alert fired by event i
		window   time.Duration
		disable  func(*m2mauth.DetectorConfig)
	}
	rules := []rule{{
		name: "client failures",
		rule: m2mauth.RuleClientFailures,
		event: func(i int) m2mauth.AuditEvent {
			return detFailed("billing", fmt.Sprintf("203.0.113.%d", i%250), m2mauth.ReasonBadSecret)
		},
		fireAt:   20,
		recover:  6 * time.Minute,
		severity: m2mauth.AlertWarning,
		client:   "billing",
		address:  func(i int) string { return fmt.Sprintf("203.0.113.%d", i%250) },
		window:   5 * time.Minute,
		disable:  func(c *m2mauth.DetectorConfig) { c.ClientFailures.Disabled = true },
	}, {
		name: "address failures over IPv6",
		rule: m2mauth.RuleAddressFailures,
		event: func(i int) m2mauth.AuditEvent {
			return detFailed(fmt.Sprintf("client-%d", i), fmt.Sprintf("2001:db8:1:2::%x", i), m2mauth.ReasonUnknownClient)
		},
		fireAt:   30,
		recover:  6 * time.Minute,
		severity: m2mauth.AlertCritical,
		address:  func(int) string { return "2001:db8:1:2::/64" },
		window:   5 * time.Minute,
		disable:  func(c *m2mauth.DetectorConfig) { c.AddressFailures.Disabled = true },
	}, {
		name: "address failures over IPv4",
		rule: m2mauth.RuleAddressFailures,
		event: func(i int) m2mauth.AuditEvent {
			return detFailed(fmt.Sprintf("c%d", i), "198.51.100.9", m2mauth.ReasonPublicClient)
		},
		fireAt:   30,
		recover:  6 * time.Minute,
		severity: m2mauth.AlertCritical,
		address:  func(int) string { return "198.51.100.9" },
		window:   5 * time.Minute,
		disable:  func(c *m2mauth.DetectorConfig) { c.AddressFailures.Disabled = true },
	}, {
		name: "lockout",
		rule: m2mauth.RuleLockout,
		event: func(int) m2mauth.AuditEvent {
			return m2mauth.AuditEvent{Type: m2mauth.EventRateLimited, ClientID: "locked", RemoteIP: "::ffff:198.51.100.7", Error: "temporarily_unavailable"}
		},
		fireAt:   1,
		recover:  12 * time.Minute,
		severity: m2mauth.AlertCritical,
		client:   "locked",
		address:  func(int) string { return "198.51.100.7" },
		window:   10 * time.Minute,
		disable:  func(c *m2mauth.DetectorConfig) { c.Lockout.Disabled = true },
	}, {
		name:     "expired secret",
		rule:     m2mauth.RuleExpiredSecret,
		event:    func(int) m2mauth.AuditEvent { return detFailed("old-deploy", "192.0.2.1", m2mauth.ReasonExpiredSecret) },
		fireAt:   1,
		recover:  70 * time.Minute,
		severity: m2mauth.AlertWarning,
		client:   "old-deploy",
		address:  func(int) string { return "192.0.2.1" },
		window:   time.Hour,
		disable:  func(c *m2mauth.DetectorConfig) { c.ExpiredSecret.Disabled = true },
	}, {
		name:     "disabled client",
		rule:     m2mauth.RuleDisabledClient,
		event:    func(int) m2mauth.AuditEvent { return detFailed("retired", "192.0.2.2", m2mauth.ReasonClientDisabled) },
		fireAt:   1,
		recover:  70 * time.Minute,
		severity: m2mauth.AlertCritical,
		client:   "retired",
		address:  func(int) string { return "192.0.2.2" },
		window:   time.Hour,
		disable:  func(c *m2mauth.DetectorConfig) { c.DisabledClient.Disabled = true },
	}}
	for _, r := range rules {
		t.Run(r.name, func(t *testing.T) {
			ctx := t.Context()
			clock := newDetectorClock()
			d, rec := newTestDetector(t, clock, m2mauth.DetectorConfig{})
			i := 0
			feed := func(n int) {
				for range n {
					d.Audit(ctx, r.event(i))
					i++
					clock.Add(time.Second)
				}
			}
			feed(r.fireAt - 1)
			feed(1)
			fired := i - 1
			got := rec.waitFor(t, r.rule, 1)
			a := got[0]
			assert.False(t, a.Recovered)
			assert.Equal(t, r.severity, a.Severity)
			assert.Equal(t, r.fireAt, a.Count)
			assert.Equal(t, r.window, a.Window)
			assert.Equal(t, r.client, a.ClientID)
			assert.Equal(t, r.address(fired), a.Address)
			assert.NotEmpty(t, a.Message)
			assert.Equal(t, clock.Now().Add(-time.Second), a.Time)

			// The attack goes on during the cool-down: quiet.
			feed(2*r.fireAt + 5)
			last := i - 1
			clock.Add(r.recover)
			got = rec.waitFor(t, r.rule, 2)
			rc := got[1]
			assert.True(t, rc.Recovered)
			assert.Equal(t, r.severity, rc.Severity)
			assert.Equal(t, r.client, rc.ClientID)
			assert.Equal(t, r.address(last), rc.Address)
			assert.Less(t, rc.Count, r.fireAt)
			assert.NotEmpty(t, rc.Message)

			// It comes back: a new alert.
			feed(r.fireAt)
			require.NoError(t, d.Close())
			got = rec.of(r.rule)
			require.Len(t, got, 3, "%+v", got)
			assert.False(t, got[2].Recovered)
			assert.Equal(t, r.fireAt, got[2].Count)
			assert.Zero(t, d.Dropped())
		})
		t.Run(r.name+" disabled", func(t *testing.T) {
			clock := newDetectorClock()
			var cfg m2mauth.DetectorConfig
			r.disable(&cfg)
			d, rec := newTestDetector(t, clock, cfg)
			for i := range 3 * r.fireAt {
				d.Audit(t.Context(), r.event(i))
				clock.Add(time.Second)
			}
			clock.Add(r.recover)
			for i := range 3 * r.fireAt {
				d.Audit(t.Context(), r.event(i))
			}
			require.NoError(t, d.Close())
			assert.Empty(t, rec.of(r.rule))
		})
	}
}

// TestDetectorCountBoundaries checks the edges of a count: the window,
// the cool-down, and the events that do not count.
func TestDetectorCountBoundaries(t *testing.T) {
	ctx := t.Context()
	cases := []struct {
		name string
		run  func(d *m2mauth.Detector, c *detectorClock)
		want []bool // the Recovered flag of each client_failures alert
	}{{
		name: "threshold minus one, forever",
		run: func(d *m2mauth.Detector, c *detectorClock) {
			for range 10 {
				for range 19 {
					d.Audit(ctx, detFailed("x", "192.0.2.1", m2mauth.ReasonBadSecret))
				}
				c.Add(6 * time.Minute)
			}
		},
	}, {
		name: "spread over more than the window",
		run: func(d *m2mauth.Detector, c *detectorClock) {
			for range 40 {
				d.Audit(ctx, detFailed("x", "192.0.2.1", m2mauth.ReasonBadSecret))
				c.Add(20 * time.Second) // 15 per 5 min
			}
		},
	}, {
		name: "twenty within the window",
		run: func(d *m2mauth.Detector, c *detectorClock) {
			for range 20 {
				d.Audit(ctx, detFailed("x", "192.0.2.1", m2mauth.ReasonBadSecret))
				c.Add(299 * time.Second / 20)
			}
		},
		want: []bool{false},
	}, {
		name: "missing credentials do not count",
		run: func(d *m2mauth.Detector, c *detectorClock) {
			for range 100 {
				d.Audit(ctx, detFailed("x", "192.0.2.1", m2mauth.ReasonNoCredentials))
			}
		},
	}, {
		name: "malformed credentials do not count: no secret was tried",
		run: func(d *m2mauth.Detector, c *detectorClock) {
			for range 100 {
				d.Audit(ctx, detFailed("x", "192.0.2.1", m2mauth.ReasonMalformedCredentials))
			}
		},
	}, {
		name: "other events do not count",
		run: func(d *m2mauth.Detector, c *detectorClock) {
			for _, typ := range []m2mauth.AuditEventType{m2mauth.EventRequestRejected, m2mauth.EventScopeDenied, m2mauth.EventTokenRejected, m2mauth.EventClientDisabled} {
				for range 50 {
					d.Audit(ctx, m2mauth.AuditEvent{Type: typ, ClientID: "x", RemoteIP: "192.0.2.1", Reason: m2mauth.ReasonBadSecret})
				}
			}
		},
	}, {
		name: "the cool-down restarts with each event over the threshold",
		run: func(d *m2mauth.Detector, c *detectorClock) {
			for range 20 {
				d.Audit(ctx, detFailed("x", "192.0.2.1", m2mauth.ReasonBadSecret))
			}
			// One failure every 4 minutes after the burst keeps the count
			// under 20 only once the burst leaves the window: recovery 5
			// minutes after the last failure over the threshold.
			c.Add(4 * time.Minute)
			d.Audit(ctx, detFailed("x", "192.0.2.1", m2mauth.ReasonBadSecret)) // 21 in the window: cool-down restarts
			c.Add(4 * time.Minute)
			d.Audit(ctx, detFailed("x", "192.0.2.1", m2mauth.ReasonBadSecret)) // 2 in the window, 4 min after: not yet
			c.Add(time.Minute)
			d.Audit(ctx, detFailed("x", "192.0.2.1", m2mauth.ReasonBadSecret)) // 5 min after: recovered first
		},
		want: []bool{false, true},
	}, {
		name: "a clock that goes back",
		run: func(d *m2mauth.Detector, c *detectorClock) {
			for range 10 {
				d.Audit(ctx, detFailed("x", "192.0.2.1", m2mauth.ReasonBadSecret))
			}
			c.Add(-time.Hour)
			for range 10 {
				d.Audit(ctx, detFailed("x", "192.0.2.1", m2mauth.ReasonBadSecret))
			}
		},
		want: []bool{false},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newDetectorClock()
			// Recoveries come from events only here: the check runs hourly.
			d, rec := newTestDetector(t, c, m2mauth.DetectorConfig{CheckInterval: time.Hour})
			tc.run(d, c)
			require.NoError(t, d.Close())
			var got []bool
			for _, a := range rec.of(m2mauth.RuleClientFailures) {
				got = append(got, a.Recovered)
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestDetectorNewAddress: a client's first learning period only learns;
// later, a network unused for the learning period fires once, further
// new networks during the cool-down are learnt quietly, the Recovered
// notice counts them, and a new network after it fires again.
func TestDetectorNewAddress(t *testing.T) {
	for _, disabled := range []bool{false, true} {
		t.Run(fmt.Sprintf("disabled=%v", disabled), func(t *testing.T) {
			ctx := t.Context()
			clock := newDetectorClock()
			d, rec := newTestDetector(t, clock, m2mauth.DetectorConfig{NewAddress: m2mauth.NewAddressRule{Disabled: disabled}})
			day := 24 * time.Hour
			d.Audit(ctx, detIssued("etl", "192.0.2.10")) // first sight
			clock.Add(day)
			d.Audit(ctx, detIssued("etl", "198.51.100.1")) // new, but learning
			clock.Add(5 * day)
			d.Audit(ctx, detIssued("etl", "192.0.2.20")) // known /24, 6 days after
			clock.Add(2 * day)
			d.Audit(ctx, detIssued("etl", "192.0.2.30")) // known: 2 days after
			d.Audit(ctx, detIssued("fresh", "203.0.113.9"))
			d.Audit(ctx, detIssued("etl", "203.0.113.5")) // new: fires
			if !disabled {
				got := rec.waitFor(t, m2mauth.RuleNewAddress, 1)
				require.Len(t, got, 1)
				assert.Equal(t, m2mauth.Alert{
					Time: clock.Now(), Rule: m2mauth.RuleNewAddress, Severity: m2mauth.AlertWarning,
					ClientID: "etl", Address: "203.0.113.0/24", Count: 1, Window: 7 * day,
					Message: `client "etl" got a token from 203.0.113.0/24, a network it has not used within 168h0m0s`,
				}, got[0])
			}
			clock.Add(10 * time.Minute)
			d.Audit(ctx, detIssued("etl", "2001:db8:aa:bb::1")) // new, during the cool-down
			d.Audit(ctx, detIssued("etl", "2001:db8:aa:bb:1::1"))
			d.Audit(ctx, detIssued("fresh", "2001:db8:ff::1")) // fresh is still learning
			clock.Add(time.Hour)
			if !disabled {
				got := rec.waitFor(t, m2mauth.RuleNewAddress, 2)
				assert.True(t, got[1].Recovered)
				assert.Equal(t, "203.0.113.0/24", got[1].Address)
				assert.Equal(t, 2, got[1].Count)
			}
			d.Audit(ctx, detIssued("etl", "203.0.113.77"))         // learnt at the alert
			d.Audit(ctx, detIssued("etl", "2001:db8:aa:bb:ff::1")) // learnt in the cool-down
			d.Audit(ctx, detIssued("etl", "100.64.1.1"))           // new: fires again
			require.NoError(t, d.Close())
			got := rec.of(m2mauth.RuleNewAddress)
			if disabled {
				assert.Empty(t, got)
				return
			}
			require.Len(t, got, 3)
			assert.False(t, got[2].Recovered)
			assert.Equal(t, "100.64.1.0/24", got[2].Address)
		})
	}
}

// TestDetectorNewAddressStale: a network the client has not used for the
// learning period counts as new again, and a client inactive for longer
// than that alerts on its return; the networks a client remembers are
// bounded by MaxNetworks.
func TestDetectorNewAddressStale(t *testing.T) {
	ctx := t.Context()
	clock := newDetectorClock()
	d, rec := newTestDetector(t, clock, m2mauth.DetectorConfig{
		NewAddress: m2mauth.NewAddressRule{LearningPeriod: time.Hour, Cooldown: time.Minute, MaxNetworks: 2},
	})
	d.Audit(ctx, detIssued("a", "192.0.2.1"))
	d.Audit(ctx, detIssued("a", "192.0.3.1"))
	d.Audit(ctx, detIssued("a", "192.0.4.1")) // forgets 192.0.2.0/24 (the least recently used)
	clock.Add(59 * time.Minute)
	d.Audit(ctx, detIssued("a", "192.0.3.1"))
	d.Audit(ctx, detIssued("a", "192.0.4.1"))
	clock.Add(2 * time.Minute)
	d.Audit(ctx, detIssued("a", "192.0.3.2")) // known, 2 min after
	d.Audit(ctx, detIssued("a", "192.0.2.2")) // forgotten: new
	rec.waitFor(t, m2mauth.RuleNewAddress, 1)
	clock.Add(2 * time.Hour)
	d.Audit(ctx, detIssued("a", "192.0.3.3")) // unused for 2h > 1h: new
	require.NoError(t, d.Close())
	var got []string
	for _, a := range rec.of(m2mauth.RuleNewAddress) {
		got = append(got, fmt.Sprintf("%v %s", a.Recovered, a.Address))
	}
	assert.Equal(t, []string{"false 192.0.2.0/24", "true 192.0.2.0/24", "false 192.0.3.0/24"}, got)
}

// TestDetectorLearnAddress: what an audit trail says of the time before
// a Detector started carries over a restart: a client seen longer ago
// than the learning period alerts on a new network at once, a network
// it used within the period is known, one it last used before is new
// again, and a client first seen within the period still learns.
// Nothing learnt raises an alert by itself.
func TestDetectorLearnAddress(t *testing.T) {
	ctx := t.Context()
	clock := newDetectorClock()
	d, rec := newTestDetector(t, clock, m2mauth.DetectorConfig{
		NewAddress: m2mauth.NewAddressRule{LearningPeriod: 24 * time.Hour, Cooldown: time.Minute, MaxNetworks: 2},
	})
	now := clock.Now()
	ip := netip.MustParseAddr
	d.LearnAddress("etl", ip("192.0.2.10"), now.Add(-30*24*time.Hour), now.Add(-time.Hour))
	d.LearnAddress("etl", ip("198.51.100.1"), now.Add(-40*24*time.Hour), now.Add(-25*time.Hour)) // unused for 25h
	d.LearnAddress("etl", ip("203.0.113.1"), now.Add(-3*time.Hour), now.Add(-2*time.Hour))       // replaces the stale one
	d.LearnAddress("fresh", ip("192.0.2.10"), now.Add(-2*time.Hour), now.Add(-time.Hour))
	// Ignored: no such client id, no address, last before first.
	d.LearnAddress("bad\x7f", ip("192.0.2.10"), now.Add(-48*time.Hour), now)
	d.LearnAddress("ghost", netip.Addr{}, now.Add(-48*time.Hour), now)
	d.LearnAddress("late", ip("192.0.2.10"), now.Add(-47*time.Hour), now.Add(-48*time.Hour))

	d.Audit(ctx, detIssued("etl", "192.0.2.99"))    // known /24
	d.Audit(ctx, detIssued("etl", "203.0.113.50"))  // known /24
	d.Audit(ctx, detIssued("fresh", "100.64.1.1"))  // new, but fresh still learns
	d.Audit(ctx, detIssued("ghost", "100.64.1.1"))  // first seen now: learns
	d.Audit(ctx, detIssued("ghost", "100.64.2.1"))  // still learning
	d.Audit(ctx, detIssued("late", "100.64.3.1"))   // first seen now: learns
	d.Audit(ctx, detIssued("late", "100.64.4.1"))   // still learning
	d.Audit(ctx, detIssued("etl", "198.51.100.77")) // last used 25h ago: new
	got := rec.waitFor(t, m2mauth.RuleNewAddress, 1)
	require.NoError(t, d.Close())
	got = rec.of(m2mauth.RuleNewAddress)
	require.Len(t, got, 1, "%+v", got)
	assert.Equal(t, "etl", got[0].ClientID)
	assert.Equal(t, "198.51.100.0/24", got[0].Address)
}

// TestDetectorIssuanceSpike: a client with a steady baseline fires once
// when a window reaches Factor times it, stays quiet for the rest of the
// window, recovers after a whole normal window, and fires again. The
// floor holds for small baselines, and the learning period stays quiet.
func TestDetectorIssuanceSpike(t *testing.T) {
	ctx := t.Context()
	hour := time.Hour
	for _, disabled := range []bool{false, true} {
		t.Run(fmt.Sprintf("disabled=%v", disabled), func(t *testing.T) {
			clock := newDetectorClock()
			d, rec := newTestDetector(t, clock, m2mauth.DetectorConfig{IssuanceSpike: m2mauth.SpikeRule{Disabled: disabled}})
			tokens := func(client string, n int, spread time.Duration) {
				for range n {
					d.Audit(ctx, detIssued(client, "192.0.2.1"))
					clock.Add(spread / time.Duration(n))
				}
			}
			// A new client gets 500 tokens in its first hour: learning.
			tokens("steady", 500, 0)
			tokens("quiet", 1, 0)
			clock.Add(hour)
			// 30 hours at 20 an hour, and 1 an hour for "quiet".
			for range 30 {
				tokens("quiet", 1, 0)
				tokens("steady", 20, hour)
			}
			// The baseline is now about 30 (20 an hour, and the first
			// hour's 500 still weighs a little): the limit is 10 × that.
			tokens("steady", 150, 0)
			assert.Empty(t, rec.of(m2mauth.RuleIssuanceSpike))
			tokens("steady", 300, 0)
			tokens("quiet", 99, 0)
			if disabled {
				tokens("quiet", 1, 0)
				require.NoError(t, d.Close())
				assert.Empty(t, rec.of(m2mauth.RuleIssuanceSpike))
				return
			}
			got := rec.waitFor(t, m2mauth.RuleIssuanceSpike, 1)
			require.Len(t, got, 1)
			a := got[0]
			assert.Equal(t, "steady", a.ClientID)
			assert.Equal(t, m2mauth.AlertWarning, a.Severity)
			assert.Equal(t, hour, a.Window)
			assert.Greater(t, a.Count, 150)
			assert.Less(t, a.Count, 300)
			tokens("quiet", 1, 0) // the 100th this hour: the floor
			got = rec.waitFor(t, m2mauth.RuleIssuanceSpike, 2)
			assert.Equal(t, "quiet", got[1].ClientID)
			assert.Equal(t, 100, got[1].Count)

			// A normal hour, then the next one begins: recovered.
			clock.Add(hour)
			tokens("steady", 20, hour)
			got = rec.waitFor(t, m2mauth.RuleIssuanceSpike, 4)
			var recovered []string
			for _, a := range got[2:] {
				assert.True(t, a.Recovered)
				recovered = append(recovered, fmt.Sprintf("%s %d", a.ClientID, a.Count))
			}
			assert.ElementsMatch(t, []string{"steady 20", "quiet 0"}, recovered)
			// And again.
			tokens("steady", 1000, 0)
			require.NoError(t, d.Close())
			got = rec.of(m2mauth.RuleIssuanceSpike)
			require.Len(t, got, 5)
			assert.False(t, got[4].Recovered)
			assert.Equal(t, "steady", got[4].ClientID)
			assert.Zero(t, d.Dropped())
		})
	}
}

// TestDetectorAlertFields: no alert carries anything from an event but
// its client id and address; ids that no client can have are counted
// together; events go on to the next auditor unchanged.
func TestDetectorAlertFields(t *testing.T) {
	ctx := t.Context()
	clock := newDetectorClock()
	var passed []m2mauth.AuditEvent
	next := m2mauth.AuditorFunc(func(_ context.Context, e m2mauth.AuditEvent) { passed = append(passed, e) })
	rec := &alertRecorder{}
	d, err := m2mauth.NewDetector(next, rec, m2mauth.DetectorConfig{Now: clock.Now})
	require.NoError(t, err)
	for i := range 25 {
		e := detFailed(fmt.Sprintf("bad\u00e9id-%d", i), "192.0.2.1", m2mauth.ReasonUnknownClient)
		e.UserAgent, e.JTI, e.SecretID, e.Audience = "secret-agent", "secret-jti", "secret-id", "secret-aud"
		d.Audit(ctx, e)
	}
	require.NoError(t, d.Close())
	require.Len(t, passed, 25)
	assert.Equal(t, "secret-agent", passed[0].UserAgent)
	got := rec.of(m2mauth.RuleClientFailures)
	require.Len(t, got, 1)
	assert.Empty(t, got[0].ClientID, "LimiterInvalidClientID holds a control character")
	assert.Equal(t, "20 failed authentications for client ids that no client can have within 5m0s, the latest from 192.0.2.1", got[0].Message)
	for _, a := range rec.alerts {
		assert.NotContains(t, fmt.Sprintf("%+v", a), "secret")
	}
}

// TestDetectorInvalidClientIDs: over HTTP, failed authentications with
// client ids that no client can have (RFC 6749 Appendix A.1: VSCHAR) are
// counted together, as the limiter counts them, whichever bytes make
// them invalid: the audit trail's cleaned id ('?' for a control
// character) must not split them into ids of their own. Twenty failures
// with distinct ids, five from each of four loopback addresses, stay
// under every limit and raise one alert, whose fields and log line hold
// no control character.
func TestDetectorInvalidClientIDs(t *testing.T) {
	for _, tt := range []struct{ name, prefix string }{
		{"non-ASCII", "junk\u00e9"},
		{"control character", "junk\x01"},
		{"DEL", "junk\x7f"},
		{"too long", strings.Repeat("j", 260)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := &alertRecorder{}
			d, err := m2mauth.NewDetector(nil, rec, m2mauth.DetectorConfig{})
			require.NoError(t, err)
			key, err := m2mauth.NewHS256Key("k1", benchKey)
			require.NoError(t, err)
			keys, err := m2mauth.NewStaticKeys(key)
			require.NoError(t, err)
			h, err := m2mauth.NewTokenHandler(memstore.New(), keys, m2mauth.TokenHandlerConfig{
				Issuer: benchIssuer, DefaultAudience: benchAudience, Auditor: d,
			})
			require.NoError(t, err)
			srv := httptest.NewTLSServer(h)
			defer srv.Close()
			for a := range 4 {
				c := loopbackClient(srv, fmt.Sprintf("127.0.0.%d", 2+a))
				for i := range 5 {
					form := url.Values{"grant_type": {"client_credentials"}, "client_id": {fmt.Sprintf("%s%d-%d", tt.prefix, a, i)}, "client_secret": {"wrong"}}
					resp, err := c.PostForm(srv.URL, form)
					require.NoError(t, err)
					resp.Body.Close()
					require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "failure %d from address %d", i, a)
				}
			}
			require.NoError(t, d.Close())
			got := rec.of(m2mauth.RuleClientFailures)
			require.Len(t, got, 1)
			assert.Empty(t, got[0].ClientID)
			assert.Equal(t, 20, got[0].Count)
			var logged strings.Builder
			m2mauth.NewSlogAlertSink(slog.New(slog.NewJSONHandler(&logged, nil))).Send(t.Context(), got[0])
			for _, s := range []string{got[0].ClientID, got[0].Address, got[0].Message, strings.TrimSuffix(logged.String(), "\n")} {
				assert.False(t, strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }), "a control character in %q", s)
			}
		})
	}
}

// loopbackClient returns a client of srv whose connections come from the
// loopback address ip.
func loopbackClient(srv *httptest.Server, ip string) *http.Client {
	c := srv.Client()
	tr := c.Transport.(*http.Transport).Clone()
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr.DialContext = dialer.DialContext
	c.Transport = tr
	return c
}

// TestDetectorConfig: bad configurations are refused at construction.
func TestDetectorConfig(t *testing.T) {
	rec := &alertRecorder{}
	_, err := m2mauth.NewDetector(nil, nil, m2mauth.DetectorConfig{})
	require.Error(t, err)
	for _, tc := range []struct {
		name string
		cfg  m2mauth.DetectorConfig
	}{
		{"negative threshold", m2mauth.DetectorConfig{ClientFailures: m2mauth.CountRule{Threshold: -1}}},
		{"tiny window", m2mauth.DetectorConfig{Lockout: m2mauth.CountRule{Window: time.Microsecond}}},
		{"unknown severity", m2mauth.DetectorConfig{ExpiredSecret: m2mauth.CountRule{Severity: "info"}}},
		{"negative MaxKeys", m2mauth.DetectorConfig{DisabledClient: m2mauth.CountRule{MaxKeys: -5}}},
		{"IPv4 prefix", m2mauth.DetectorConfig{AddressFailures: m2mauth.AddressRule{IPv4Prefix: 33}}},
		{"IPv6 prefix", m2mauth.DetectorConfig{NewAddress: m2mauth.NewAddressRule{IPv6Prefix: 129}}},
		{"factor", m2mauth.DetectorConfig{IssuanceSpike: m2mauth.SpikeRule{Factor: 0.5}}},
		{"queue", m2mauth.DetectorConfig{QueueSize: -1}},
		{"huge queue", m2mauth.DetectorConfig{QueueSize: math.MaxInt}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m2mauth.NewDetector(nil, rec, tc.cfg)
			assert.Error(t, err)
		})
	}
}

// TestDetectorQueueFull: alerts that do not fit in the queue are dropped
// and counted, never waited for.
func TestDetectorQueueFull(t *testing.T) {
	release := make(chan struct{})
	var sent sync.WaitGroup
	sent.Add(1)
	var once sync.Once
	sink := m2mauth.AlertSinkFunc(func(context.Context, m2mauth.Alert) {
		once.Do(sent.Done)
		<-release
	})
	clock := newDetectorClock()
	d, err := m2mauth.NewDetector(nil, sink, m2mauth.DetectorConfig{QueueSize: 4, Now: clock.Now})
	require.NoError(t, err)
	d.Audit(t.Context(), m2mauth.AuditEvent{Type: m2mauth.EventRateLimited, ClientID: "c0"})
	sent.Wait() // the sink holds the first alert
	// A flood of lockouts fills half the queue, not more...
	for i := 1; i <= 10; i++ {
		d.Audit(t.Context(), m2mauth.AuditEvent{Type: m2mauth.EventRateLimited, ClientID: fmt.Sprintf("c%d", i)})
	}
	assert.Equal(t, uint64(8), d.Dropped())
	// ... so the alerts of other rules still find room, until the queue
	// is full.
	for i := range 3 {
		d.Audit(t.Context(), m2mauth.AuditEvent{Type: m2mauth.EventAuthFailed, Reason: m2mauth.ReasonClientDisabled, ClientID: fmt.Sprintf("off%d", i)})
	}
	assert.Equal(t, uint64(9), d.Dropped())
	close(release)
	require.NoError(t, d.Close())
	d.Audit(t.Context(), m2mauth.AuditEvent{Type: m2mauth.EventRateLimited, ClientID: "after"})
	assert.Equal(t, uint64(9), d.Dropped())
}

// heldRecorder returns an alertRecorder behind a sink that holds every
// alert until release is closed, so that a detector's queue fills.
func heldRecorder() (*alertRecorder, m2mauth.AlertSink, chan struct{}) {
	release := make(chan struct{})
	rec := &alertRecorder{}
	return rec, m2mauth.AlertSinkFunc(func(ctx context.Context, a m2mauth.Alert) {
		<-release
		rec.Send(ctx, a)
	}), release
}

// TestDetectorFloodLeavesRoom: thousands of lockout alerts, from as many
// networks, cannot crowd out an alert of another rule raised among them.
func TestDetectorFloodLeavesRoom(t *testing.T) {
	rec, sink, release := heldRecorder()
	clock := newDetectorClock()
	d, err := m2mauth.NewDetector(nil, sink, m2mauth.DetectorConfig{QueueSize: 100, Now: clock.Now})
	require.NoError(t, err)
	for i := range 5000 {
		if i == 2500 {
			d.Audit(t.Context(), m2mauth.AuditEvent{Type: m2mauth.EventAuthFailed, Reason: m2mauth.ReasonClientDisabled, ClientID: "billing", RemoteIP: "192.0.2.1"})
		}
		ip := fmt.Sprintf("2001:db8:%x:%x::1", i/256, i%256) // a /64 each
		d.Audit(t.Context(), m2mauth.AuditEvent{Type: m2mauth.EventRateLimited, ClientID: fmt.Sprintf("made-up-%d", i), RemoteIP: ip})
	}
	close(release)
	require.NoError(t, d.Close())
	assert.Len(t, rec.of(m2mauth.RuleDisabledClient), 1, "the disabled_client alert was crowded out")
	assert.Greater(t, d.Dropped(), uint64(4000))
}

// TestDetectorRecoveredNoticesWait: when more alerts of one rule clear at
// once than the queue has room for, every one still gets its Recovered
// notice, at a later sweep; none is dropped, so no alert stays open at
// the sink for ever.
func TestDetectorRecoveredNoticesWait(t *testing.T) {
	rec := &alertRecorder{}
	clock := newDetectorClock()
	d, err := m2mauth.NewDetector(nil, rec, m2mauth.DetectorConfig{QueueSize: 40, CheckInterval: 5 * time.Millisecond, Now: clock.Now})
	require.NoError(t, err)
	defer d.Close()
	const n = 200
	for i := range n {
		ip := fmt.Sprintf("2001:db8:%x::1", i) // a /64 each
		d.Audit(t.Context(), m2mauth.AuditEvent{Type: m2mauth.EventRateLimited, ClientID: fmt.Sprintf("c%d", i), RemoteIP: ip})
		if i%10 == 9 {
			// In batches that fit: the raised alerts are not the point.
			rec.waitFor(t, m2mauth.RuleLockout, i+1)
		}
	}
	require.Zero(t, d.Dropped())

	clock.Add(24 * time.Hour) // past every window and cooldown
	var recovered int
	require.Eventually(t, func() bool {
		recovered = 0
		for _, a := range rec.of(m2mauth.RuleLockout) {
			if a.Recovered {
				recovered++
			}
		}
		return recovered == n
	}, 20*time.Second, 5*time.Millisecond, "Recovered notices: %d of %d", recovered, n)
	assert.Zero(t, d.Dropped())
	assert.Len(t, rec.of(m2mauth.RuleLockout), 2*n, "each alert recovered once")
}

// TestDetectorNoRecoveryWithoutRaise: an alert whose raise found no room
// in the queue is not raised, so the sink never gets a Recovered notice
// for an alert it did not get; a later event may raise it.
func TestDetectorNoRecoveryWithoutRaise(t *testing.T) {
	rec, sink, release := heldRecorder()
	clock := newDetectorClock()
	d, err := m2mauth.NewDetector(nil, sink, m2mauth.DetectorConfig{QueueSize: 4, CheckInterval: 5 * time.Millisecond, Now: clock.Now})
	require.NoError(t, err)
	defer d.Close()
	for i := range 100 {
		d.Audit(t.Context(), m2mauth.AuditEvent{Type: m2mauth.EventRateLimited, ClientID: fmt.Sprintf("c%d", i)})
	}
	dropped := d.Dropped()
	require.Greater(t, dropped, uint64(90))
	close(release)
	raised := rec.waitFor(t, m2mauth.RuleLockout, int(100-dropped))
	// A client whose raise was dropped raises its alert at its next
	// event, now that there is room.
	var again string
	for i := range 100 {
		id := fmt.Sprintf("c%d", i)
		if !slices.ContainsFunc(raised, func(a m2mauth.Alert) bool { return a.ClientID == id }) {
			again = id
			break
		}
	}
	require.NotEmpty(t, again)
	d.Audit(t.Context(), m2mauth.AuditEvent{Type: m2mauth.EventRateLimited, ClientID: again})
	rec.waitFor(t, m2mauth.RuleLockout, int(100-dropped)+1)

	clock.Add(24 * time.Hour)
	want := 2 * (int(100-dropped) + 1)
	rec.waitFor(t, m2mauth.RuleLockout, want)
	time.Sleep(50 * time.Millisecond) // ten more sweeps: nothing else comes
	got := rec.of(m2mauth.RuleLockout)
	assert.Len(t, got, want, "one Recovered notice per alert raised, no more")
}

// TestDetectorAuditHealth: the detector reports the health of the auditor
// it wraps, so a token handler that requires auditing can use it.
func TestDetectorAuditHealth(t *testing.T) {
	rec := &alertRecorder{}
	d, err := m2mauth.NewDetector(nil, rec, m2mauth.DetectorConfig{})
	require.NoError(t, err)
	defer d.Close()
	assert.NoError(t, d.AuditHealth())
	sick := &detectorSickAuditor{}
	d2, err := m2mauth.NewDetector(sick, rec, m2mauth.DetectorConfig{})
	require.NoError(t, err)
	defer d2.Close()
	assert.EqualError(t, d2.AuditHealth(), "audit table unreachable")
}

type detectorSickAuditor struct{}

func (*detectorSickAuditor) Audit(context.Context, m2mauth.AuditEvent) {}
func (*detectorSickAuditor) AuditHealth() error {
	return fmt.Errorf("audit table unreachable")
}

// TestDetectorBoundedMemory feeds a million failed authentications and
// lock-outs (200,000 under the race detector), every one from a new
// address with a new client id of the longest kind, and a quarter as many
// of the events only clients with a secret cause: each rule holds at most
// MaxKeys keys, and the heap grows by no more than the documented size
// per entry.
func TestDetectorBoundedMemory(t *testing.T) {
	n := 1_000_000
	if raceEnabled || testing.Short() {
		n = 200_000
	}
	const maxKeys = 10_000
	ctx := t.Context()
	clock := newDetectorClock()
	var received int
	// The sink takes nothing until the events are in, so the queue
	// fills however fast this machine is.
	release := make(chan struct{})
	sink := m2mauth.AlertSinkFunc(func(context.Context, m2mauth.Alert) {
		<-release
		received++
	})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	d, err := m2mauth.NewDetector(nil, sink, m2mauth.DetectorConfig{
		ClientFailures:  m2mauth.CountRule{MaxKeys: maxKeys},
		AddressFailures: m2mauth.AddressRule{MaxKeys: maxKeys},
		Lockout:         m2mauth.CountRule{MaxKeys: maxKeys},
		NewAddress:      m2mauth.NewAddressRule{MaxKeys: maxKeys},
		IssuanceSpike:   m2mauth.SpikeRule{MaxKeys: maxKeys},
		ExpiredSecret:   m2mauth.CountRule{MaxKeys: maxKeys},
		DisabledClient:  m2mauth.CountRule{MaxKeys: maxKeys},
		Now:             clock.Now,
	})
	require.NoError(t, err)
	id := []byte(strings.Repeat("x", 255))
	for i := range n {
		copy(id, strconv.FormatInt(int64(i), 36))
		client := string(id)
		ip4 := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String()
		ip6 := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(i >> 16), byte(i >> 8), byte(i), 15: 1}).String()
		// Anyone can send these.
		d.Audit(ctx, detFailed(client, ip6, m2mauth.ReasonUnknownClient))
		d.Audit(ctx, m2mauth.AuditEvent{Type: m2mauth.EventRateLimited, ClientID: client, RemoteIP: ip4})
		if i%4 == 0 {
			// Only clients that know a secret can cause these.
			d.Audit(ctx, detFailed(client, ip4, m2mauth.ReasonExpiredSecret))
			d.Audit(ctx, detFailed(client, ip4, m2mauth.ReasonClientDisabled))
			d.Audit(ctx, detIssued(client, ip4))
			d.Audit(ctx, detIssued("one-client", ip6)) // one client, many networks
		}
		if i%100 == 0 {
			clock.Add(time.Millisecond)
		}
		if i%100_000 == 0 {
			require.LessOrEqual(t, d.Len(), 7*maxKeys)
		}
	}
	keys := d.Len()
	assert.LessOrEqual(t, keys, 7*maxKeys)
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(d)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	// The documented bound: about 200 bytes per entry plus its client id
	// (here 255 bytes, a 256-byte allocation), 32 more per network of
	// new_address (here one each), and the alert queue.
	bound := int64(keys)*(200+256+32) + 1<<20
	assert.Less(t, grown, bound, "%d keys", keys)
	t.Logf("%d hostile events of each kind: %d keys, heap grew %d KiB (%d bytes a key)", n, keys, grown>>10, grown/int64(keys))
	close(release)
	require.NoError(t, d.Close())
	assert.Positive(t, received)
	assert.Positive(t, d.Dropped(), "a million lock-outs overflow the queue")
}

// TestDetectorNoAllocs: an event for a known key allocates nothing.
func TestDetectorNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	clock := newDetectorClock()
	// No alert: formatting one in the background would allocate.
	d, _ := newTestDetector(t, clock, m2mauth.DetectorConfig{
		ClientFailures:  m2mauth.CountRule{Threshold: 1 << 30},
		AddressFailures: m2mauth.AddressRule{Threshold: 1 << 30},
		CheckInterval:   time.Hour,
	})
	ctx := context.Background()
	events := []m2mauth.AuditEvent{
		detIssued("steady", "192.0.2.1"),
		detIssued("steady", "2001:db8::1"),
		detFailed("steady", "192.0.2.1", m2mauth.ReasonBadSecret),
		{Type: m2mauth.EventScopeDenied, ClientID: "steady"},
	}
	for _, e := range events {
		d.Audit(ctx, e)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		for _, e := range events {
			d.Audit(ctx, e)
		}
	})
	assert.Zero(t, allocs)
}

// TestDetectorConcurrent: many goroutines audit at once while the
// background check runs; run with -race.
func TestDetectorConcurrent(t *testing.T) {
	clock := newDetectorClock()
	d, rec := newTestDetector(t, clock, m2mauth.DetectorConfig{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				ip := fmt.Sprintf("192.0.2.%d", g)
				d.Audit(t.Context(), detFailed(fmt.Sprintf("c%d", i%7), ip, m2mauth.ReasonBadSecret))
				d.Audit(t.Context(), detIssued(fmt.Sprintf("c%d", i%5), ip))
				if i%50 == 0 {
					clock.Add(time.Minute)
				}
			}
		})
	}
	wg.Wait()
	require.NoError(t, d.Close())
	assert.NotEmpty(t, rec.of(m2mauth.RuleClientFailures))
	assert.NotEmpty(t, rec.of(m2mauth.RuleAddressFailures))
}

// ExampleNewDetector watches the audit stream and prints its alerts: the
// twentieth failed authentication for one client within five minutes
// fires client_failures once.
func ExampleNewDetector() {
	ctx := context.Background()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	show := m2mauth.AlertSinkFunc(func(_ context.Context, a m2mauth.Alert) {
		fmt.Printf("%s %s client=%s count=%d: %s\n", a.Severity, a.Rule, a.ClientID, a.Count, a.Message)
	})
	// In a server: m2mauth.NewDetector(auditor, m2mauth.NewSlogAlertSink(nil), m2mauth.DetectorConfig{}),
	// and the detector as the token handler's Auditor.
	det, err := m2mauth.NewDetector(nil, show, m2mauth.DetectorConfig{
		Now: func() time.Time { return now },
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for i := range 21 {
		det.Audit(ctx, m2mauth.AuditEvent{
			Type:     m2mauth.EventAuthFailed,
			ClientID: "billing",
			RemoteIP: fmt.Sprintf("203.0.113.%d", i+1),
			Reason:   m2mauth.ReasonBadSecret,
		})
		now = now.Add(5 * time.Second)
	}
	det.Close() // hands the queued alerts to the sink
	// Output:
	// warning client_failures client=billing count=20: 20 failed authentications for client "billing" within 5m0s, the latest from 203.0.113.20
}

// BenchmarkDetectorAudit measures one audit event through a Detector
// (over a no-op auditor) against the no-op auditor alone, for a mix of
// issued tokens and failures from a few clients and addresses.
func BenchmarkDetectorAudit(b *testing.B) {
	noop := m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {})
	events := make([]m2mauth.AuditEvent, 64)
	for i := range events {
		client := fmt.Sprintf("client-%d", i%8)
		switch i % 4 {
		case 3:
			events[i] = detFailed(client, fmt.Sprintf("2001:db8:%d::1", i%5), m2mauth.ReasonBadSecret)
		default:
			events[i] = detIssued(client, fmt.Sprintf("192.0.2.%d", i%3))
		}
	}
	d, err := m2mauth.NewDetector(noop, m2mauth.AlertSinkFunc(func(context.Context, m2mauth.Alert) {}), m2mauth.DetectorConfig{})
	require.NoError(b, err)
	defer d.Close()
	ctx := context.Background()
	for _, bc := range []struct {
		name string
		a    m2mauth.Auditor
	}{{"noop", noop}, {"detector", d}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				bc.a.Audit(ctx, events[i&63])
				i++
			}
		})
		b.Run(bc.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					bc.a.Audit(ctx, events[i&63])
					i++
				}
			})
		})
	}
}

// BenchmarkTokenHandlerDetector measures a token request (HS256) with the
// handler's auditor bare and wrapped in a Detector, in the same run.
func BenchmarkTokenHandlerDetector(b *testing.B) {
	noop := m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {})
	d, err := m2mauth.NewDetector(noop, m2mauth.AlertSinkFunc(func(context.Context, m2mauth.Alert) {}), m2mauth.DetectorConfig{})
	require.NoError(b, err)
	defer d.Close()
	for _, bc := range []struct {
		name string
		a    m2mauth.Auditor
	}{{"off", noop}, {"on", d}} {
		b.Run(bc.name, func(b *testing.B) {
			h, auth := detectorBenchHandler(b, bc.a)
			runTokenBench(b, h, auth)
		})
	}
}

// detectorBenchHandler is benchTokenHandler's HS256 handler with auditor a.
func detectorBenchHandler(b *testing.B, a m2mauth.Auditor) (http.Handler, string) {
	b.Helper()
	store := memstore.New()
	plain, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
	require.NoError(b, err)
	require.NoError(b, store.CreateClient(context.Background(), &m2mauth.Client{
		ID:      "bench-client",
		Secrets: []m2mauth.Secret{sec},
		Grants:  map[string]m2mauth.Scopes{benchAudience: {"read", "write"}},
	}))
	key, err := m2mauth.NewHS256Key("k1", benchKey)
	require.NoError(b, err)
	keys, err := m2mauth.NewStaticKeys(key)
	require.NoError(b, err)
	h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer:          benchIssuer,
		DefaultAudience: benchAudience,
		Auditor:         a,
	})
	require.NoError(b, err)
	return h, "Basic " + base64.StdEncoding.EncodeToString([]byte("bench-client:"+plain))
}

// TestDetectorEventTime: on the real clock an event's own Time places it
// in the windows, so failures spread over twenty minutes stay under the
// threshold of five, while the same failures within a second fire.
func TestDetectorEventTime(t *testing.T) {
	tests := []struct {
		name string
		step time.Duration
		want int
	}{
		{"a minute apart", time.Minute, 0},
		{"a millisecond apart", time.Millisecond, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var fired []m2mauth.Alert
			d, err := m2mauth.NewDetector(nil, m2mauth.AlertSinkFunc(func(_ context.Context, a m2mauth.Alert) {
				mu.Lock()
				fired = append(fired, a)
				mu.Unlock()
			}), m2mauth.DetectorConfig{})
			require.NoError(t, err)
			start := time.Now()
			for i := range 20 {
				e := detFailed("timed-client", "192.0.2.1", m2mauth.ReasonBadSecret)
				e.Time = start.Add(time.Duration(i) * tt.step)
				d.Audit(context.Background(), e)
			}
			require.NoError(t, d.Close()) // hands the queued alerts over
			mu.Lock()
			defer mu.Unlock()
			n := 0
			for _, a := range fired {
				if a.Rule == m2mauth.RuleClientFailures && !a.Recovered {
					n++
				}
			}
			assert.Equal(t, tt.want, n)
		})
	}
}

// TestDetectorIntrospectionRate: a caller refused for introspecting too
// often is busy, not locked out; the limiter's refusals are lockouts.
func TestDetectorIntrospectionRate(t *testing.T) {
	tests := []struct {
		name, reason string
		want         int
	}{
		{"introspection rate", m2mauth.ReasonIntrospectionRate, 0},
		{"failed-auth limiter", "", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			n := 0
			d, err := m2mauth.NewDetector(nil, m2mauth.AlertSinkFunc(func(_ context.Context, a m2mauth.Alert) {
				mu.Lock()
				if a.Rule == m2mauth.RuleLockout && !a.Recovered {
					n++
				}
				mu.Unlock()
			}), m2mauth.DetectorConfig{})
			require.NoError(t, err)
			for range 3 {
				d.Audit(context.Background(), m2mauth.AuditEvent{Type: m2mauth.EventRateLimited, ClientID: "busy", RemoteIP: "192.0.2.1", Reason: tt.reason, Error: "temporarily_unavailable"})
			}
			require.NoError(t, d.Close())
			mu.Lock()
			defer mu.Unlock()
			assert.Equal(t, tt.want, n)
		})
	}
}

// TestDetectorLockoutFolded: a locked-out address has every client id it
// names refused, and ids cost nothing to make up; while the lockout
// alert fired from an address cools down, other ids from there raise no
// alert of their own (so a flood of them cannot crowd real alerts out of
// the queue), while other addresses still do, and the address alerts
// again after the cool-down.
func TestDetectorLockoutFolded(t *testing.T) {
	c := newDetectorClock()
	rec := &alertRecorder{}
	d, err := m2mauth.NewDetector(nil, rec, m2mauth.DetectorConfig{Now: c.Now})
	require.NoError(t, err)
	limited := func(client, ip string) {
		d.Audit(context.Background(), m2mauth.AuditEvent{Type: m2mauth.EventRateLimited, ClientID: client, RemoteIP: ip, Error: "temporarily_unavailable"})
	}
	for i := range 500 {
		limited(fmt.Sprintf("made-up-%d", i), "198.51.100.7")
	}
	limited("made-up-0", "198.51.100.7")
	limited("victim", "203.0.113.5")
	c.Add(11 * time.Minute)
	limited("made-up-again", "198.51.100.7")
	require.NoError(t, d.Close())
	var fired []string
	for _, a := range rec.of(m2mauth.RuleLockout) {
		if !a.Recovered {
			fired = append(fired, a.ClientID+" from "+a.Address)
		}
	}
	assert.Equal(t, []string{"made-up-0 from 198.51.100.7", "victim from 203.0.113.5", "made-up-again from 198.51.100.7"}, fired)
	assert.Zero(t, d.Dropped())
}

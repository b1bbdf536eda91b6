package m2mauth

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Rules of a [Detector]: the [Alert.Rule] of its alerts.
const (
	// RuleClientFailures: many failed authentications for one client id,
	// from any address (someone guessing its secret, or a deployment
	// still using an old one).
	RuleClientFailures = "client_failures"
	// RuleAddressFailures: many failed authentications from one address
	// or IPv6 network, for any client ids (credential spraying).
	RuleAddressFailures = "address_failures"
	// RuleLockout: the rate limiter refused a client id's requests.
	RuleLockout = "lockout"
	// RuleNewAddress: a client got a token from a network it has not
	// used within its learning period.
	RuleNewAddress = "new_address"
	// RuleIssuanceSpike: a client is getting tokens far faster than its
	// own recent baseline.
	RuleIssuanceSpike = "issuance_spike"
	// RuleExpiredSecret: a client authenticated with a secret that has
	// expired.
	RuleExpiredSecret = "expired_secret"
	// RuleDisabledClient: a disabled client authenticated with a secret
	// that is still valid.
	RuleDisabledClient = "disabled_client"
)

// CountRule tunes a rule that counts events per key within a sliding
// window: [DetectorConfig].ClientFailures, Lockout, ExpiredSecret and
// DisabledClient. Every zero field takes the rule's default, listed on
// its DetectorConfig field.
//
// The rule fires when Threshold events fall within Window. It then stays
// quiet for that key, however many more events come, and sends its
// Recovered notice once no event has found the count at or above
// Threshold for Cooldown and the count is below Threshold; after that it
// can fire again. An event counts for at least Window and at most 9/8 of
// it (the window moves in steps of Window/8).
type CountRule struct {
	// Disabled turns the rule off: it keeps no state and never fires.
	Disabled bool
	// Threshold is the number of events within Window that fires the
	// rule.
	Threshold int
	// Window is the span events are counted over.
	Window time.Duration
	// Cooldown is how long the condition must have stayed clear before
	// the Recovered notice.
	Cooldown time.Duration
	// Severity is the severity of the rule's alerts ([AlertWarning] or
	// [AlertCritical]; recovery notices carry it too).
	Severity AlertSeverity
	// MaxKeys bounds the client ids the rule remembers. Default: 100000.
	MaxKeys int
}

// AddressRule tunes [DetectorConfig].AddressFailures: a [CountRule] over
// addresses, which groups each IPv4 address by its first IPv4Prefix bits
// and each IPv6 address by its first IPv6Prefix bits.
type AddressRule struct {
	// Disabled turns the rule off: it keeps no state and never fires.
	Disabled bool
	// Threshold is the number of events within Window that fires the
	// rule.
	Threshold int
	// Window is the span events are counted over.
	Window time.Duration
	// Cooldown is how long the condition must have stayed clear before
	// the Recovered notice.
	Cooldown time.Duration
	// Severity is the severity of the rule's alerts.
	Severity AlertSeverity
	// MaxKeys bounds the networks the rule remembers. Default: 100000.
	MaxKeys int
	// IPv4Prefix is the length of the network that groups IPv4
	// addresses. Default: 32, one address, as the token handler's rate
	// limiter counts them.
	IPv4Prefix int
	// IPv6Prefix is the length of the network that groups IPv6
	// addresses. Default: 64, as the token handler's rate limiter counts
	// them (see [TokenHandlerConfig].IPv6Prefix).
	IPv6Prefix int
}

// NewAddressRule tunes [DetectorConfig].NewAddress.
//
// The rule remembers, per client, the networks it got tokens from and
// when it last did. A token issued from a network the client has not
// used within LearningPeriod fires the rule, unless the client was first
// seen less than LearningPeriod ago: a client's first period only
// learns. After an alert, further new networks of that client within
// Cooldown are learnt without another alert (the recovery notice counts
// them); the Recovered notice comes once Cooldown has passed without a
// new network.
type NewAddressRule struct {
	// Disabled turns the rule off.
	Disabled bool
	// LearningPeriod is how long a network stays known after the
	// client's last token from it, and how long a newly seen client only
	// learns. Default: 7 days (168h).
	LearningPeriod time.Duration
	// Cooldown is how long after a new network the rule stays quiet for
	// that client. Default: 1h.
	Cooldown time.Duration
	// Severity of the alerts. Default: [AlertWarning].
	Severity AlertSeverity
	// MaxKeys bounds the clients the rule remembers. A client forgotten
	// to make room is learnt again as if newly seen. Default: 100000.
	MaxKeys int
	// MaxNetworks bounds the networks remembered per client; past it,
	// the one least recently used is forgotten. Default: 16.
	MaxNetworks int
	// IPv4Prefix is the length of the network that groups IPv4
	// addresses. Default: 24.
	IPv4Prefix int
	// IPv6Prefix is the length of the network that groups IPv6
	// addresses. Default: 64.
	IPv6Prefix int
}

// SpikeRule tunes [DetectorConfig].IssuanceSpike.
//
// The rule counts each client's issued tokens in consecutive windows of
// Window, starting at its first token, and keeps an exponentially
// weighted average of the counts of past windows (empty windows count as
// zero) with a half-life of HalfLife. It fires when the count of the
// current window reaches max(Floor, Factor × average), once the client
// was first seen at least LearningPeriod ago. The Recovered notice comes
// once a whole window after the last one that reached its limit has
// closed below its own, and at least Cooldown after the alert.
type SpikeRule struct {
	// Disabled turns the rule off.
	Disabled bool
	// Window is the span of one count. Default: 1h.
	Window time.Duration
	// Factor is how many times its baseline a client must reach to fire
	// the rule. Default: 10.
	Factor float64
	// Floor is the least count that fires the rule, whatever the
	// baseline. Default: 100.
	Floor int
	// HalfLife is the half-life of the baseline. Default: 24h.
	HalfLife time.Duration
	// LearningPeriod is how long after a client is first seen the rule
	// only learns. Default: 24h.
	LearningPeriod time.Duration
	// Cooldown is the least time between an alert and its Recovered
	// notice. Default: 1h.
	Cooldown time.Duration
	// Severity of the alerts. Default: [AlertWarning].
	Severity AlertSeverity
	// MaxKeys bounds the clients the rule remembers. A client forgotten
	// to make room learns again as if newly seen. Default: 100000.
	MaxKeys int
}

// DetectorConfig holds the rules and tunables of a [Detector]. The zero
// value enables every rule with its defaults.
type DetectorConfig struct {
	// ClientFailures counts failed authentications (EventAuthFailed,
	// every reason but ReasonNoCredentials and
	// ReasonMalformedCredentials) per client id. Defaults:
	// Threshold 20, Window 5m, Cooldown 5m, [AlertWarning].
	ClientFailures CountRule
	// AddressFailures counts failed authentications (as ClientFailures)
	// per address or IPv6 network. Defaults: Threshold 30, Window 5m,
	// Cooldown 5m, [AlertCritical], IPv4 /32, IPv6 /64.
	AddressFailures AddressRule
	// Lockout counts requests refused by the rate limiter
	// (EventRateLimited) per client id: it fires on the first and
	// recovers when a Cooldown passes without one. Defaults: Threshold
	// 1, Window 10m, Cooldown 10m, [AlertCritical].
	Lockout CountRule
	// NewAddress watches the networks each client gets tokens from
	// (EventTokenIssued). See [NewAddressRule] for its defaults.
	NewAddress NewAddressRule
	// IssuanceSpike watches each client's rate of issued tokens
	// (EventTokenIssued). See [SpikeRule] for its defaults.
	IssuanceSpike SpikeRule
	// ExpiredSecret counts failed authentications with an expired
	// secret (ReasonExpiredSecret) per client id. Defaults: Threshold 1,
	// Window 1h, Cooldown 1h, [AlertWarning].
	ExpiredSecret CountRule
	// DisabledClient counts authentications of a disabled client
	// (ReasonClientDisabled) per client id. Defaults: Threshold 1,
	// Window 1h, Cooldown 1h, [AlertCritical].
	DisabledClient CountRule

	// QueueSize bounds the alerts waiting for the sink; alerts that do
	// not fit are dropped and counted (see [Detector.Dropped]). One
	// rule's alerts may fill at most half of it, so that a flood of one
	// kind leaves room for the others. Default: 1000. At most 65,536.
	QueueSize int
	// CheckInterval is how often, in real time, the detector looks for
	// alerts whose condition has cleared without further events, to send
	// their Recovered notices. Default: 10s.
	CheckInterval time.Duration
	// Now is the clock of every window and cool-down. Default: [time.Now],
	// and then an event's own Time, when set, is taken as its time (the
	// token handler read the clock when the request arrived), which saves
	// a clock read per event.
	Now func() time.Time
}

// Detector is an [Auditor] that watches the audit stream for unusual
// patterns and sends an [Alert] to an [AlertSink] when one of its rules
// fires, and a Recovered notice when the condition clears. Wrap the
// auditor that records events:
//
//	det, err := m2mauth.NewDetector(auditor, m2mauth.NewSlogAlertSink(nil), m2mauth.DetectorConfig{})
//	if err != nil { ... }
//	defer det.Close()
//	h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{Auditor: det, ...})
//
// The rules and their defaults (see [DetectorConfig]):
//
//	rule              counts                   per        fires at                  cool-down  severity
//	client_failures   auth failures (1)        client id  20 in 5m                  5m         warning
//	address_failures  auth failures (1)        address    30 in 5m                  5m         critical
//	                                           (2)
//	lockout           rate-limited requests    client id  1 in 10m (4)              10m        critical
//	new_address       tokens issued            client id  a network (3) unused      1h         warning
//	                                                      within 7d
//	issuance_spike    tokens issued            client id  max(100, 10 × baseline)   1h         warning
//	                                                      in 1h
//	expired_secret    auth failures,           client id  1 in 1h                   1h         warning
//	                  expired_secret
//	disabled_client   auth failures,           client id  1 in 1h                   1h         critical
//	                  client_disabled
//
//	(1) EventAuthFailed, with any reason but no_credentials and
//	    malformed_credentials (no secret was tried)
//	(2) an IPv4 address, or an IPv6 /64 network, as the rate limiter counts
//	(3) an IPv4 /24 or IPv6 /64 network; never during the client's first 7d
//	(4) not for another client id from an address whose lockout alert
//	    fired within the cool-down: a locked-out address has every id
//	    it names refused, and ids cost nothing to make up
//
// Each rule fires once per key, stays quiet while the condition lasts,
// and sends a Recovered notice (same Rule, ClientID and Address) once it
// has cleared; [CountRule], [NewAddressRule] and [SpikeRule] say exactly
// when. Client-keyed alerts of the failure rules name the latest address
// in Address. Client ids that no client can have (see [ValidClientID])
// are counted together, as the limiter counts them, under
// [LimiterInvalidClientID]; their alerts have an empty ClientID and say
// so in Message. An alert holds a
// client id, an address, counts and durations, never a secret or a
// token.
//
// Audit passes every event to the next auditor first, then updates the
// counters of the rules it concerns under one lock: a few map look-ups,
// no I/O, no blocking and, once a key is known, no allocation. Alerts go
// through a bounded queue to one background goroutine, which hands them
// to the sink and checks for recoveries every CheckInterval; alerts that
// do not fit in the queue are dropped and counted. The rules' clock is
// [DetectorConfig].Now, and with the default an event's own Time.
//
// Memory is bounded whatever the input: each rule remembers at most its
// MaxKeys keys (default 100000), and makes room by forgetting the least
// recently active among a few sampled at random, sparing keys with an
// alert in progress (an alert forgotten that way gets no Recovered
// notice). An entry takes about 200 bytes plus its client id (at most
// 255 bytes), and a new_address entry 32 bytes more per network it
// remembers (at most MaxNetworks). At the defaults a rule keyed by
// address holds at most about 20 MB, one keyed by client id about 45 MB
// with the longest ids, and new_address about 100 MB if 100000 clients
// each use 16 networks. Only client_failures, address_failures and
// lockout can be fed without a valid secret; the other rules see only
// clients that proved they hold one, so a flood of junk cannot make them
// forget real clients.
//
// A Detector remembers in memory only: a new process starts with nothing
// learnt, so new_address and issuance_spike learn each client anew, from
// its first token after the start, for their LearningPeriod, unless
// new_address is told what an audit trail recorded before the start
// ([Detector.LearnAddress]; the example server does so). Otherwise a
// server restarted more often than that never raises them.
//
// A Detector counts the events of its own process only. Behind a load
// balancer each replica counts its share: guesses spread evenly over N
// replicas raise client_failures after N times its Threshold. Lower the
// thresholds by the number of replicas, or alert from the audit trail
// all replicas share (sqlstore's Usage) as well.
//
// A Detector is safe for concurrent use. Close stops its goroutine.
type Detector struct {
	next Auditor
	sink AlertSink
	cfg  DetectorConfig
	// base is the instant the detector's relative clock counts from.
	base time.Time
	// realClock is true when the clock is time.Now, so an event's Time
	// may stand for it.
	realClock bool

	mu         sync.Mutex
	closed     bool
	clientFail countRule[string]
	addrFail   countRule[netKey]
	lockout    countRule[string]
	// lockoutFrom holds, for each address a lockout alert fired from
	// within the last cool-down, when it fired; at most Lockout.MaxKeys.
	lockoutFrom map[netKey]int64
	expired     countRule[string]
	disabled    countRule[string]
	newAddr     newAddrRule
	spike       spikeRule

	queue chan notice
	// queued counts each rule's notices in the queue; one rule may hold
	// at most half of it.
	queued    [ruleCount]atomic.Int32
	dropped   atomic.Uint64
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// NewDetector returns a [Detector] that passes events to next (which may
// be nil) and sends alerts to sink. It refuses a nil sink and
// configuration values out of range.
func NewDetector(next Auditor, sink AlertSink, cfg DetectorConfig) (*Detector, error) {
	if sink == nil {
		return nil, errors.New("m2mauth: NewDetector needs an AlertSink")
	}
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf("m2mauth: DetectorConfig."+format, args...))
		}
	}
	intDef := func(n *int, def int, name string) {
		if *n == 0 {
			*n = def
		}
		check(*n >= 1, "%s must be positive", name)
	}
	durDef := func(d *time.Duration, def time.Duration, name string) {
		if *d == 0 {
			*d = def
		}
		check(*d >= time.Millisecond, "%s must be at least 1ms", name)
	}
	sevDef := func(s *AlertSeverity, def AlertSeverity, name string) {
		if *s == "" {
			*s = def
		}
		check(*s == AlertWarning || *s == AlertCritical, "%s.Severity %q is neither %q nor %q", name, *s, AlertWarning, AlertCritical)
	}
	prefixDef := func(n *int, def, max int, name string) {
		if *n == 0 {
			*n = def
		}
		check(*n >= 1 && *n <= max, "%s must be in [1, %d]", name, max)
	}
	count := func(r *CountRule, name string, threshold int, window, cooldown time.Duration, sev AlertSeverity) {
		intDef(&r.Threshold, threshold, name+".Threshold")
		durDef(&r.Window, window, name+".Window")
		durDef(&r.Cooldown, cooldown, name+".Cooldown")
		sevDef(&r.Severity, sev, name)
		intDef(&r.MaxKeys, defaultDetectorKeys, name+".MaxKeys")
	}
	count(&cfg.ClientFailures, "ClientFailures", 20, 5*time.Minute, 5*time.Minute, AlertWarning)
	count(&cfg.Lockout, "Lockout", 1, 10*time.Minute, 10*time.Minute, AlertCritical)
	count(&cfg.ExpiredSecret, "ExpiredSecret", 1, time.Hour, time.Hour, AlertWarning)
	count(&cfg.DisabledClient, "DisabledClient", 1, time.Hour, time.Hour, AlertCritical)
	af := &cfg.AddressFailures
	ac := CountRule{Threshold: af.Threshold, Window: af.Window, Cooldown: af.Cooldown, Severity: af.Severity, MaxKeys: af.MaxKeys}
	count(&ac, "AddressFailures", 30, 5*time.Minute, 5*time.Minute, AlertCritical)
	af.Threshold, af.Window, af.Cooldown, af.Severity, af.MaxKeys = ac.Threshold, ac.Window, ac.Cooldown, ac.Severity, ac.MaxKeys
	prefixDef(&af.IPv4Prefix, 32, 32, "AddressFailures.IPv4Prefix")
	prefixDef(&af.IPv6Prefix, 64, 128, "AddressFailures.IPv6Prefix")

	na := &cfg.NewAddress
	durDef(&na.LearningPeriod, 7*24*time.Hour, "NewAddress.LearningPeriod")
	durDef(&na.Cooldown, time.Hour, "NewAddress.Cooldown")
	sevDef(&na.Severity, AlertWarning, "NewAddress")
	intDef(&na.MaxKeys, defaultDetectorKeys, "NewAddress.MaxKeys")
	intDef(&na.MaxNetworks, 16, "NewAddress.MaxNetworks")
	prefixDef(&na.IPv4Prefix, 24, 32, "NewAddress.IPv4Prefix")
	prefixDef(&na.IPv6Prefix, 64, 128, "NewAddress.IPv6Prefix")

	sp := &cfg.IssuanceSpike
	durDef(&sp.Window, time.Hour, "IssuanceSpike.Window")
	if sp.Factor == 0 {
		sp.Factor = 10
	}
	check(sp.Factor >= 1 && !math.IsInf(sp.Factor, 0), "IssuanceSpike.Factor must be at least 1")
	intDef(&sp.Floor, 100, "IssuanceSpike.Floor")
	durDef(&sp.HalfLife, 24*time.Hour, "IssuanceSpike.HalfLife")
	durDef(&sp.LearningPeriod, 24*time.Hour, "IssuanceSpike.LearningPeriod")
	durDef(&sp.Cooldown, time.Hour, "IssuanceSpike.Cooldown")
	sevDef(&sp.Severity, AlertWarning, "IssuanceSpike")
	intDef(&sp.MaxKeys, defaultDetectorKeys, "IssuanceSpike.MaxKeys")

	intDef(&cfg.QueueSize, 1000, "QueueSize")
	check(cfg.QueueSize <= maxAlertQueue, "QueueSize must be at most %d", maxAlertQueue)
	durDef(&cfg.CheckInterval, 10*time.Second, "CheckInterval")
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	realClock := cfg.Now == nil
	if realClock {
		cfg.Now = time.Now
	}

	d := &Detector{
		realClock: realClock,
		next:      next,
		sink:      sink,
		cfg:       cfg,
		base:      cfg.Now(),
		queue:     make(chan notice, cfg.QueueSize),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	d.clientFail = newCountRule[string](ruleClientFailures, cfg.ClientFailures, cloneString)
	d.addrFail = newCountRule[netKey](ruleAddressFailures, ac, nil)
	d.addrFail.on = !af.Disabled
	d.lockout = newCountRule[string](ruleLockout, cfg.Lockout, cloneString)
	d.lockoutFrom = make(map[netKey]int64)
	d.expired = newCountRule[string](ruleExpiredSecret, cfg.ExpiredSecret, cloneString)
	d.disabled = newCountRule[string](ruleDisabledClient, cfg.DisabledClient, cloneString)
	d.newAddr = newAddrRule{
		on:      !na.Disabled,
		learn:   int64(na.LearningPeriod),
		cool:    int64(na.Cooldown),
		maxNets: na.MaxNetworks,
		t:       newTable[string, newAddrState](na.MaxKeys, cloneString),
	}
	d.spike = spikeRule{
		on:     !sp.Disabled,
		window: int64(sp.Window),
		decay:  math.Exp2(-float64(sp.Window) / float64(sp.HalfLife)),
		factor: sp.Factor,
		floor:  float64(sp.Floor),
		learn:  int64(sp.LearningPeriod),
		cool:   int64(sp.Cooldown),
		t:      newTable[string, spikeState](sp.MaxKeys, cloneString),
	}
	go d.run()
	return d, nil
}

// defaultDetectorKeys is the default MaxKeys of every rule.
const defaultDetectorKeys = 100000

// Audit passes e to the next auditor, then counts it against the rules it
// concerns.
func (d *Detector) Audit(ctx context.Context, e AuditEvent) {
	if d.next != nil {
		d.next.Audit(ctx, e)
	}
	switch e.Type {
	case EventAuthFailed:
		if e.Reason == ReasonNoCredentials || e.Reason == ReasonMalformedCredentials {
			return // no secret was tried
		}
	case EventRateLimited:
		if e.Reason == ReasonIntrospectionRate || e.Reason == ReasonRevocationRate {
			return // a busy caller, locked out of nothing
		}
	case EventTokenIssued:
	default:
		return
	}
	client := e.ClientID
	if client != "" && (e.invalidClient || !ValidClientID(client)) {
		client = LimiterInvalidClientID
	}
	ip := e.addr
	if !ip.IsValid() {
		ip = parseAuditAddr(e.RemoteIP)
	}
	// An issued token concerns its client's networks; a failure, the
	// address's.
	var addr, net netKey
	if e.Type != EventTokenIssued {
		af := &d.cfg.AddressFailures
		addr = makeNetKey(ip, af.IPv4Prefix, af.IPv6Prefix)
	} else if d.newAddr.on {
		net = makeNetKey(ip, d.cfg.NewAddress.IPv4Prefix, d.cfg.NewAddress.IPv6Prefix)
	}
	now := d.at(e.Time)

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	switch e.Type {
	case EventAuthFailed:
		if client != "" {
			d.clientFail.hit(d, client, addr, now)
			switch e.Reason {
			case ReasonExpiredSecret:
				d.expired.hit(d, client, addr, now)
			case ReasonClientDisabled:
				d.disabled.hit(d, client, addr, now)
			}
		}
		if addr.bits != 0 {
			d.addrFail.hit(d, addr, netKey{}, now)
		}
	case EventRateLimited:
		if client == "" {
			break
		}
		// Once an address is locked out, every client id a request
		// from it names is refused, and ids cost nothing to make up:
		// while a lockout alert fired from an address cools down, the
		// lockouts of other ids from there are folded into it rather
		// than each raising its own.
		if at, ok := d.lockoutFrom[addr]; ok && now-at < d.lockout.cool && !d.lockout.alerting(client) {
			break
		}
		if d.lockout.hit(d, client, addr, now) && addr.bits != 0 {
			d.noteLockout(addr, now)
		}
	case EventTokenIssued:
		if client == "" {
			return
		}
		if net.bits != 0 {
			d.newAddr.hit(d, client, net, now)
		}
		d.spike.hit(d, client, now)
	}
}

// LearnAddress tells the new_address rule what happened before this
// Detector started, as an audit trail recorded it: clientID got tokens
// from addr, the first at first and the last at last. It raises no
// alert and sends nothing: the rule knows addr's network from then on
// until last plus LearningPeriod, and counts the client's learning
// period from first (or from an earlier first it knows). Feed it, once
// at start-up, the tokens of the last two LearningPeriods (sqlstore's
// Store.IssuedAddresses reads them from the audit table), so that a
// restart does not start every client's learning over: the last
// period's networks are known, and a client seen in the period before
// is past its learning. Calls for an
// invalid client id or address, or with last before first, are
// ignored, and so is every call when the rule is disabled.
func (d *Detector) LearnAddress(clientID string, addr netip.Addr, first, last time.Time) {
	if !d.newAddr.on || !ValidClientID(clientID) || !addr.IsValid() || last.Before(first) {
		return
	}
	k := makeNetKey(addr, d.cfg.NewAddress.IPv4Prefix, d.cfg.NewAddress.IPv6Prefix)
	if k.bits == 0 {
		return
	}
	// Times before the start are negative on the rules' clock.
	from, to := int64(first.Sub(d.base)), int64(last.Sub(d.base))
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	d.newAddr.remember(clientID, k, from, to)
}

// AuditHealth reports the health of the next auditor when it implements
// [AuditHealthChecker], so that a Detector can wrap the auditor of a
// token handler with [TokenHandlerConfig].RequireAudit; otherwise it
// returns nil.
func (d *Detector) AuditHealth() error {
	if hc, ok := d.next.(AuditHealthChecker); ok {
		return hc.AuditHealth()
	}
	return nil
}

// Dropped returns the number of alerts dropped because the queue to the
// sink was full, or held half of it of their rule already (see
// [DetectorConfig].QueueSize). An alert dropped is not raised, and the
// next event of its key that meets the rule tries again, so one alert
// dropped several times counts each time. Recovered notices are never
// dropped: they wait for room.
func (d *Detector) Dropped() uint64 { return d.dropped.Load() }

// Len returns the number of keys the rules remember, in all.
func (d *Detector) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.clientFail.t.slots) + len(d.addrFail.t.slots) + len(d.lockout.t.slots) +
		len(d.expired.t.slots) + len(d.disabled.t.slots) + len(d.newAddr.t.slots) + len(d.spike.t.slots)
}

// Close stops the detector: it hands the alerts still queued to the sink,
// then stops its goroutine. Later events are still passed to the next
// auditor, but no longer counted. Close waits for the sink to take the
// queued alerts. Calling it again does nothing.
func (d *Detector) Close() error {
	d.closeOnce.Do(func() {
		d.mu.Lock()
		d.closed = true
		d.mu.Unlock()
		close(d.stop)
		<-d.done
	})
	return nil
}

// clock returns the detector's time: nanoseconds since it was made, never
// negative.
func (d *Detector) clock() int64 {
	return max(int64(d.cfg.Now().Sub(d.base)), 0)
}

// at returns the detector's time of an event that happened at t: t itself
// on the real clock, or the clock's now when t is zero or the clock is
// the host's.
func (d *Detector) at(t time.Time) int64 {
	if d.realClock && !t.IsZero() {
		return max(int64(t.Sub(d.base)), 0)
	}
	return d.clock()
}

// emit queues n for the sink, or counts it dropped: when the queue is
// full, or when n's rule holds half of it already, so that a flood of one
// rule's alerts (lockouts from thousands of networks, say) leaves room
// for the others'. It reports whether n was queued: an alert is raised
// only if the sink will hear of it, so that it never gets the Recovered
// notice of an alert it did not get, and a later event may raise it
// again. d.mu is held.
func (d *Detector) emit(n notice) bool {
	if !d.offer(n) {
		d.dropped.Add(1)
		return false
	}
	return true
}

// offer queues n for the sink if there is room for it (see emit), and
// reports whether there was. d.mu is held.
func (d *Detector) offer(n notice) bool {
	q := &d.queued[n.rule]
	if int(q.Add(1)) > max(cap(d.queue)/2, 1) {
		q.Add(-1)
		return false
	}
	select {
	case d.queue <- n:
		return true
	default:
		q.Add(-1)
		return false
	}
}

// send hands n, taken from the queue, to the sink.
func (d *Detector) send(ctx context.Context, n notice) {
	d.queued[n.rule].Add(-1)
	d.sink.Send(ctx, d.alert(n))
}

// run hands queued notices to the sink and looks for recoveries every
// CheckInterval, until Close.
func (d *Detector) run() {
	defer close(d.done)
	tick := time.NewTicker(d.cfg.CheckInterval)
	defer tick.Stop()
	ctx := context.Background()
	for {
		select {
		case n := <-d.queue:
			d.send(ctx, n)
		case <-tick.C:
			d.sweep()
		case <-d.stop:
			for {
				select {
				case n := <-d.queue:
					d.send(ctx, n)
				default:
					return
				}
			}
		}
	}
}

// sweep sends the Recovered notices of alerts whose condition has cleared
// without further events.
func (d *Detector) sweep() {
	now := d.clock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	d.clientFail.sweep(d, now)
	d.addrFail.sweep(d, now)
	d.lockout.sweep(d, now)
	d.expired.sweep(d, now)
	d.disabled.sweep(d, now)
	t := &d.newAddr.t
	for j := len(t.active) - 1; j >= 0; j-- {
		d.newAddr.settle(d, t.active[j], now)
	}
	t2 := &d.spike.t
	for j := len(t2.active) - 1; j >= 0; j-- {
		d.spike.settle(d, t2.active[j], now)
	}
}

// ruleID identifies a rule in a notice.
type ruleID uint8

const (
	ruleClientFailures ruleID = iota
	ruleAddressFailures
	ruleLockout
	ruleNewAddress
	ruleIssuanceSpike
	ruleExpiredSecret
	ruleDisabledClient
	ruleCount // the number of rules
)

// String returns the rule's name.
func (r ruleID) String() string {
	switch r {
	case ruleClientFailures:
		return RuleClientFailures
	case ruleAddressFailures:
		return RuleAddressFailures
	case ruleLockout:
		return RuleLockout
	case ruleNewAddress:
		return RuleNewAddress
	case ruleIssuanceSpike:
		return RuleIssuanceSpike
	case ruleExpiredSecret:
		return RuleExpiredSecret
	default:
		return RuleDisabledClient
	}
}

// notice is an alert as the request path queues it: the message is
// written, and the address formatted, by the background goroutine.
type notice struct {
	rule      ruleID
	recovered bool
	client    string
	addr      netKey
	count     uint32
	at        int64   // detector time
	baseline  float64 // issuance_spike: the client's baseline
}

// alert turns n into an Alert, with its message.
func (d *Detector) alert(n notice) Alert {
	a := Alert{
		Time:      d.base.Add(time.Duration(n.at)).Round(0),
		Rule:      n.rule.String(),
		Recovered: n.recovered,
		ClientID:  n.client,
		Address:   n.addr.String(),
		Count:     int(n.count),
	}
	c := &d.cfg
	who := fmt.Sprintf("client %q", n.client)
	if n.client == LimiterInvalidClientID {
		who = "client ids that no client can have"
		a.ClientID = "" // holds a control character
	}
	latest := ""
	if n.client != "" && a.Address != "" {
		latest = ", the latest from " + a.Address
	}
	counted := func(r CountRule, what, subject string) {
		a.Severity, a.Window = r.Severity, r.Window
		if n.recovered {
			a.Message = fmt.Sprintf("%s %s are back under %d per %v (%d now)", what, subject, r.Threshold, r.Window, n.count)
		} else {
			a.Message = fmt.Sprintf("%d %s %s within %v%s", n.count, what, subject, r.Window, latest)
		}
	}
	switch n.rule {
	case ruleClientFailures:
		counted(c.ClientFailures, "failed authentications", "for "+who)
	case ruleAddressFailures:
		af := c.AddressFailures
		counted(CountRule{Threshold: af.Threshold, Window: af.Window, Severity: af.Severity}, "failed authentications", "from "+a.Address)
	case ruleLockout:
		counted(c.Lockout, "requests refused by the rate limiter", "for "+who)
	case ruleExpiredSecret:
		counted(c.ExpiredSecret, "authentications with an expired secret", "for "+who)
	case ruleDisabledClient:
		counted(c.DisabledClient, "authentications", "of disabled "+who)
	case ruleNewAddress:
		r := c.NewAddress
		a.Severity, a.Window = r.Severity, r.LearningPeriod
		if n.recovered {
			a.Message = fmt.Sprintf("%s got no token from a new network for %v (%d new since the alert)", who, r.Cooldown, n.count)
		} else {
			a.Message = fmt.Sprintf("%s got a token from %s, a network it has not used within %v", who, a.Address, r.LearningPeriod)
		}
	case ruleIssuanceSpike:
		r := c.IssuanceSpike
		a.Severity, a.Window = r.Severity, r.Window
		if n.recovered {
			a.Message = fmt.Sprintf("token issuance for %s is back under its limit (%d in the last whole %v)", who, n.count, r.Window)
		} else {
			a.Message = fmt.Sprintf("%d tokens issued to %s within %v, at least max(%d, %g × its baseline of %.1f)",
				n.count, who, r.Window, r.Floor, r.Factor, n.baseline)
		}
	}
	return a
}

// netKey is an address or network, without pointers: a zero netKey is
// no address.
type netKey struct {
	a    [16]byte // the network's address, IPv4 as IPv4-mapped IPv6
	bits uint8    // the prefix length; 0 for no address
	v4   bool
}

// parseAuditAddr reads the RemoteIP of an audit event: an address
// without a zone, IPv4-mapped IPv6 as IPv4; invalid if s is not one.
func parseAuditAddr(s string) netip.Addr {
	if s == "" {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap().WithZone("")
}

// makeNetKey returns the network of the first v4 or v6 bits of a, or no
// address when a is invalid.
func makeNetKey(a netip.Addr, v4, v6 int) netKey {
	if !a.IsValid() {
		return netKey{}
	}
	bits := v6
	if a.Is4() {
		bits = v4
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return netKey{}
	}
	return netKey{a: p.Addr().As16(), bits: uint8(bits), v4: a.Is4()}
}

// String returns the address (a whole IPv4 or IPv6 address) or the
// network in CIDR notation, or "" for no address.
func (k netKey) String() string {
	if k.bits == 0 {
		return ""
	}
	a := netip.AddrFrom16(k.a)
	if k.v4 {
		a = a.Unmap()
	}
	if int(k.bits) == a.BitLen() {
		return a.String()
	}
	return netip.PrefixFrom(a, int(k.bits)).String()
}

func cloneString(s string) string { return strings.Clone(s) }

// table holds a rule's state per key in a slab, at most max entries. When
// it is full, a new key takes the place of the least recently active of
// a few entries sampled at random, preferring entries with no alert in
// progress.
type table[K comparable, V any] struct {
	index map[K]int32
	slots []entry[K, V]
	// active lists the slots with an alert in progress.
	active []int32
	max    int
	// clone copies a key before it is kept (string keys may share the
	// memory of a larger string).
	clone func(K) K
}

type entry[K comparable, V any] struct {
	key  K
	last int64 // detector time of the latest event
	// act is 1 + the entry's index in table.active, or 0.
	act int32
	v   V
}

// evictSample is the number of entries sampled to make room.
const evictSample = 8

func newTable[K comparable, V any](max int, clone func(K) K) table[K, V] {
	return table[K, V]{index: make(map[K]int32), max: max, clone: clone}
}

// get returns the slot of k, making it (with a zero state) if needed.
func (t *table[K, V]) get(k K, now int64) (i int32, fresh bool) {
	if i, ok := t.index[k]; ok {
		t.slots[i].last = now
		return i, false
	}
	if t.clone != nil {
		k = t.clone(k)
	}
	if len(t.slots) < t.max {
		t.slots = append(t.slots, entry[K, V]{key: k, last: now})
		i = int32(len(t.slots) - 1)
	} else {
		i = t.victim()
		t.deactivate(i)
		delete(t.index, t.slots[i].key)
		t.slots[i] = entry[K, V]{key: k, last: now}
	}
	t.index[k] = i
	return i, true
}

// victim picks the slot to reuse in a full table.
func (t *table[K, V]) victim() int32 {
	best := int32(rand.IntN(len(t.slots)))
	for range evictSample - 1 {
		i := int32(rand.IntN(len(t.slots)))
		b, e := &t.slots[best], &t.slots[i]
		if (e.act == 0) != (b.act == 0) {
			if e.act == 0 {
				best = i
			}
		} else if e.last < b.last {
			best = i
		}
	}
	return best
}

func (t *table[K, V]) activate(i int32) {
	if t.slots[i].act == 0 {
		t.active = append(t.active, i)
		t.slots[i].act = int32(len(t.active))
	}
}

func (t *table[K, V]) deactivate(i int32) {
	p := t.slots[i].act - 1
	if p < 0 {
		return
	}
	last := t.active[len(t.active)-1]
	t.active[p] = last
	t.slots[last].act = p + 1
	t.active = t.active[:len(t.active)-1]
	t.slots[i].act = 0
}

// ringSlots is the number of steps of Window/8 a sliding count keeps: the
// current one and eight before it.
const ringSlots = 9

// countState is a sliding count of events, and its alert.
type countState struct {
	ring  [ringSlots]uint32
	step  int64 // the current step: time / (Window/8)
	sum   uint32
	alert bool
	// over is the time of the latest event that found the count at or
	// above the threshold.
	over int64
	// addr is the address of the latest event (client-keyed rules).
	addr netKey
}

// advance moves the count to step, forgetting the steps that left it.
func (s *countState) advance(step int64) {
	d := step - s.step
	if d <= 0 {
		return // the same step, or a clock that went back
	}
	if d >= ringSlots {
		s.ring, s.sum = [ringSlots]uint32{}, 0
	} else {
		for j := s.step + 1; j <= step; j++ {
			k := j % ringSlots
			s.sum -= s.ring[k]
			s.ring[k] = 0
		}
	}
	s.step = step
}

// countRule is a CountRule keyed by K (a client id or a network).
type countRule[K comparable] struct {
	id                      ruleID
	on                      bool
	threshold               uint32
	window, cool, stepWidth int64
	t                       table[K, countState]
}

func newCountRule[K comparable](id ruleID, r CountRule, clone func(K) K) countRule[K] {
	return countRule[K]{
		id:        id,
		on:        !r.Disabled,
		threshold: uint32(min(r.Threshold, math.MaxUint32)),
		window:    int64(r.Window),
		cool:      int64(r.Cooldown),
		stepWidth: max(int64(r.Window)/(ringSlots-1), 1),
		t:         newTable[K, countState](r.MaxKeys, clone),
	}
}

// hit counts one event for k at now; addr is the event's address, for
// the alerts of client-keyed rules.
func (r *countRule[K]) hit(d *Detector, k K, addr netKey, now int64) (fired bool) {
	if !r.on {
		return false
	}
	i, _ := r.t.get(k, now)
	s := &r.t.slots[i].v
	s.addr = addr
	r.settle(d, i, now)
	s.advance(now / r.stepWidth)
	if s.sum < math.MaxUint32 {
		s.ring[s.step%ringSlots]++
		s.sum++
	}
	if s.sum < r.threshold {
		return false
	}
	s.over = now
	if !s.alert && d.emit(r.notice(i, false, now)) {
		s.alert = true
		r.t.activate(i)
		return true
	}
	return false
}

// noteLockout records that a lockout alert fired from addr at now. At
// capacity it forgets the addresses whose cool-down is over, or, were
// that not a quarter of them, all: memory stays bounded, and the worst
// that forgetting does is let an address raise one more alert.
func (d *Detector) noteLockout(addr netKey, now int64) {
	if len(d.lockoutFrom) >= d.lockout.t.max {
		for a, at := range d.lockoutFrom {
			if now-at >= d.lockout.cool {
				delete(d.lockoutFrom, a)
			}
		}
		if len(d.lockoutFrom) >= d.lockout.t.max/4*3 {
			clear(d.lockoutFrom) // so that a full scan is rare
		}
	}
	d.lockoutFrom[addr] = now
}

// alerting reports whether k has an alert in progress.
func (r *countRule[K]) alerting(k K) bool {
	i, ok := r.t.index[k]
	return ok && r.t.slots[i].act != 0
}

// settle sends the Recovered notice of slot i if its condition has
// cleared. A notice the queue has no room for now is not dropped: the
// alert stays raised, and a later sweep sends it.
func (r *countRule[K]) settle(d *Detector, i int32, now int64) {
	s := &r.t.slots[i].v
	if !s.alert {
		return
	}
	s.advance(now / r.stepWidth)
	if now-s.over >= r.cool && s.sum < r.threshold && d.offer(r.notice(i, true, now)) {
		s.alert = false
		r.t.deactivate(i)
	}
}

func (r *countRule[K]) sweep(d *Detector, now int64) {
	for j := len(r.t.active) - 1; j >= 0; j-- {
		r.settle(d, r.t.active[j], now)
	}
}

func (r *countRule[K]) notice(i int32, recovered bool, now int64) notice {
	e := &r.t.slots[i]
	n := notice{rule: r.id, recovered: recovered, count: e.v.sum, at: now}
	switch k := any(e.key).(type) {
	case string:
		n.client, n.addr = k, e.v.addr
	case netKey:
		n.addr = k
	}
	return n
}

// newAddrRule is the new_address rule.
type newAddrRule struct {
	on          bool
	learn, cool int64
	maxNets     int
	t           table[string, newAddrState]
}

// netSeen is a network a client used, and when it last did.
type netSeen struct {
	k    netKey
	seen int64
}

type newAddrState struct {
	first int64 // when the client was first seen
	nets  []netSeen
	alert bool
	// lastNew is when the latest new network was seen during the alert;
	// count counts them, and addr is the one that fired it.
	lastNew int64
	count   uint32
	addr    netKey
}

func (r *newAddrRule) hit(d *Detector, client string, k netKey, now int64) {
	if !r.on {
		return
	}
	i, fresh := r.t.get(client, now)
	s := &r.t.slots[i].v
	if fresh {
		s.first = now
		s.nets = append(make([]netSeen, 0, 2), netSeen{k, now})
		return
	}
	r.settle(d, i, now)
	j := -1
	for n := range s.nets {
		if s.nets[n].k == k {
			j = n
			break
		}
	}
	known := j >= 0 && now-s.nets[j].seen < r.learn
	// Learn the network: refresh it, add it, or replace the least
	// recently used one.
	switch {
	case j >= 0:
		s.nets[j].seen = now
	case len(s.nets) < r.maxNets:
		s.nets = append(s.nets, netSeen{k, now})
	default:
		old := 0
		for n := range s.nets {
			if s.nets[n].seen < s.nets[old].seen {
				old = n
			}
		}
		s.nets[old] = netSeen{k, now}
	}
	if known || now-s.first < r.learn {
		return
	}
	s.lastNew = now
	if s.alert {
		if s.count < math.MaxUint32 {
			s.count++
		}
		return
	}
	if d.emit(notice{rule: ruleNewAddress, client: r.t.slots[i].key, addr: k, count: 1, at: now}) {
		s.alert, s.count, s.addr = true, 1, k
		r.t.activate(i)
	}
}

// remember records that client used network k from first to last, as hit
// does without alerting: the client is known since first at the latest,
// and k until last at least.
func (r *newAddrRule) remember(client string, k netKey, first, last int64) {
	recent := last
	if i, ok := r.t.index[client]; ok {
		recent = max(recent, r.t.slots[i].last)
	}
	i, fresh := r.t.get(client, recent)
	s := &r.t.slots[i].v
	if fresh {
		s.first = first
		s.nets = append(make([]netSeen, 0, 2), netSeen{k, last})
		return
	}
	s.first = min(s.first, first)
	old := -1
	for n := range s.nets {
		if s.nets[n].k == k {
			s.nets[n].seen = max(s.nets[n].seen, last)
			return
		}
		if old < 0 || s.nets[n].seen < s.nets[old].seen {
			old = n
		}
	}
	switch {
	case len(s.nets) < r.maxNets:
		s.nets = append(s.nets, netSeen{k, last})
	case s.nets[old].seen < last:
		s.nets[old] = netSeen{k, last}
	}
}

func (r *newAddrRule) settle(d *Detector, i int32, now int64) {
	e := &r.t.slots[i]
	s := &e.v
	if s.alert && now-s.lastNew >= r.cool &&
		d.offer(notice{rule: ruleNewAddress, recovered: true, client: e.key, addr: s.addr, count: s.count, at: now}) {
		s.alert = false
		r.t.deactivate(i)
	}
}

// spikeRule is the issuance_spike rule.
type spikeRule struct {
	on                  bool
	window, learn, cool int64
	decay               float64 // the weight of the baseline after one window
	factor, floor       float64
	t                   table[string, spikeState]
}

type spikeState struct {
	first int64 // when the client was first seen
	start int64 // the start of the current window
	count uint32
	prev  uint32 // the count of the last window that closed
	limit float64
	// avg is the exponentially weighted average of past counts, and
	// weight the sum of its weights, 1 - decay^windows: avg/weight is
	// the baseline, unbiased from the first window on.
	avg, weight float64
	alert       bool
	alertAt     int64
	// overStart is the start of the latest window whose count reached
	// its limit.
	overStart int64
}

// roll closes the windows that ended before now.
func (r *spikeRule) roll(s *spikeState, now int64) {
	if now-s.start < r.window {
		return
	}
	k := (now - s.start) / r.window
	s.avg = r.decay*s.avg + (1-r.decay)*float64(s.count)
	s.weight = r.decay*s.weight + (1 - r.decay)
	s.prev = s.count
	if k > 1 {
		f := math.Pow(r.decay, float64(k-1))
		s.avg *= f
		s.weight = 1 - f*(1-s.weight)
		s.prev = 0
	}
	s.count = 0
	s.start += k * r.window
	s.limit = max(r.floor, r.factor*r.baseline(s))
}

func (r *spikeRule) baseline(s *spikeState) float64 {
	if s.weight <= 0 {
		return 0
	}
	return s.avg / s.weight
}

func (r *spikeRule) hit(d *Detector, client string, now int64) {
	if !r.on {
		return
	}
	i, fresh := r.t.get(client, now)
	s := &r.t.slots[i].v
	if fresh {
		s.first, s.start, s.limit = now, now, r.floor
	}
	r.settle(d, i, now)
	r.roll(s, now)
	if s.count < math.MaxUint32 {
		s.count++
	}
	if float64(s.count) < s.limit || now-s.first < r.learn {
		return
	}
	s.overStart = s.start
	if !s.alert && d.emit(notice{rule: ruleIssuanceSpike, client: r.t.slots[i].key, count: s.count, at: now, baseline: r.baseline(s)}) {
		s.alert, s.alertAt = true, now
		r.t.activate(i)
	}
}

func (r *spikeRule) settle(d *Detector, i int32, now int64) {
	e := &r.t.slots[i]
	s := &e.v
	if !s.alert {
		return
	}
	r.roll(s, now)
	if s.start-s.overStart >= 2*r.window && now-s.alertAt >= r.cool &&
		d.offer(notice{rule: ruleIssuanceSpike, recovered: true, client: e.key, count: s.prev, at: now}) {
		s.alert = false
		r.t.deactivate(i)
	}
}

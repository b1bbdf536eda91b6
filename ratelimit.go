package m2mauth

import (
	"context"
	"errors"
	"math"
	"sync"
	"time"
)

// LimiterInvalidClientID is the client id under which the token handler
// reserves attempts for every client id that no client can have (see
// [ValidClientID]): such ids share one bucket per address, so junk cannot
// fill a limiter. It is valid UTF-8 without a NUL byte, so every database
// can store it, and DEL (0x7f) keeps it apart from every real client id.
const LimiterInvalidClientID = "\x7finvalid"

// Outcome is how a reserved authentication attempt ended; see
// [Limiter.Release].
type Outcome uint8

// Outcomes of a reserved attempt.
const (
	// OutcomeFailed: the client did not authenticate (unknown client,
	// wrong or expired secret, disabled or public client). The attempt
	// stays counted against the client id and address, and against the
	// address.
	OutcomeFailed Outcome = iota + 1
	// OutcomeAuthenticated: the client authenticated. The attempt is
	// given back, and the limiter remembers that the client authenticated
	// from the address (see [RateLimiterConfig.KnownWindow]).
	OutcomeAuthenticated
	// OutcomeAbandoned: no secret was checked (none was sent, or the
	// client store failed). The attempt is given back.
	OutcomeAbandoned
)

// Limiter protects the endpoints that authenticate clients against the
// guessing of client secrets (RFC 6749 §2.3.1 and §10.10). It keeps token
// buckets of attempts: one per client id and address, and one per address
// whatever the client id.
//
// Every attempt is reserved before the client is looked up or a secret
// verified, and released with its outcome afterwards, so the limit holds
// however many requests arrive at once: a bucket of burst n lets at most n
// attempts be verified, whether they are in flight or have failed. A
// failed attempt stays counted until the bucket refills; an authenticated
// or abandoned one is given back, so a client that knows its secret is
// never slowed down by its own traffic.
//
// A client that authenticated from an address recently is not refused
// because of the address's bucket, only because of its own: many clients
// share one address behind a NAT or a proxy, and one of them failing must
// not lock out the others.
//
// ip is an address key made by the handler: the client's IP address, with
// IPv6 addresses cut to a network prefix ("2001:db8:1:2::/64"), so one host
// cannot escape a limit by rotating through its own addresses. clientID is
// a well-formed client id or [LimiterInvalidClientID].
//
// The default, [RateLimiter], keeps its state in memory, so each replica of
// a service counts on its own. Replicas behind a load balancer share
// limits through a Limiter backed by what they already share, such as the
// database-backed one in the sqlstore package.
//
// Implementations must be safe for concurrent use.
type Limiter interface {
	// Reserve takes one attempt for (clientID, ip), atomically: it either
	// takes one from each bucket that applies and returns zero, or takes
	// nothing from the client's bucket and returns how long to wait
	// before trying again. When the buckets' attempts are held by
	// reservations still in flight, rather than by failures, it may wait
	// for them to be released, until ctx ends. An error refuses the
	// request with a server error.
	Reserve(ctx context.Context, clientID, ip string) (time.Duration, error)
	// Release ends a reservation that Reserve granted, with its outcome.
	// Every granted reservation must be released exactly once. An error
	// means the outcome may not have been recorded; the handler then
	// refuses the request with a server error (it fails closed).
	Release(ctx context.Context, clientID, ip string, o Outcome) error
}

// RateLimiterConfig holds the tunables of a [RateLimiter]; every zero
// value is a working default.
type RateLimiterConfig struct {
	// ClientIPBurst is the number of failures allowed in a row for one
	// client id from one address, and of attempts in flight at once.
	// Default: 5.
	ClientIPBurst int
	// ClientIPEvery is the time it takes to forgive one failure for a
	// client id and address. Default: 12s (a full bucket in a minute).
	ClientIPEvery time.Duration
	// IPBurst is the number of failures allowed in a row from one address,
	// whatever client ids it tries. Default: 20.
	IPBurst int
	// IPEvery is the time it takes to forgive one failure from an
	// address. Default: 3s (a full bucket in a minute).
	IPEvery time.Duration
	// KnownWindow is how long after a client authenticated from an
	// address its requests from there are exempt from the address's
	// bucket (its own bucket still applies). Default: 24h.
	KnownWindow time.Duration
	// MaxKeys bounds the number of buckets held (one per client id and
	// address pair, one per address). When it is reached, buckets that
	// have refilled are dropped first, then arbitrary ones without
	// attempts in flight; dropping a pair forgets that its client
	// authenticated from there. Default: 100000, a few megabytes.
	MaxKeys int
	// Now is the clock. Default: [time.Now].
	Now func() time.Time
}

// RateLimiter is the in-memory [Limiter]. A request is refused while its
// client and address bucket holds no token, or, unless the client
// authenticated from that address within KnownWindow, while the address's
// bucket holds none; a request refused by its client's bucket still takes
// a token from its address's, so an address hammering one client id is
// soon refused for every client it has not authenticated. Memory is
// bounded by MaxKeys. A RateLimiter is safe for concurrent use.
type RateLimiter struct {
	cfg     RateLimiterConfig
	mu      sync.Mutex
	buckets map[limitKey]*bucket
	// changed is closed, and replaced, when a reservation is released
	// while waiters > 0.
	changed chan struct{}
	waiters int
}

// limitKey names a bucket; client is empty for an address's own bucket.
type limitKey struct{ client, ip string }

// bucket is a token bucket of attempts, with the reservations it lends.
type bucket struct {
	tokens float64 // at time at, reservations not subtracted
	at     int64   // unix nanoseconds
	// pending counts reservations in flight; for a pair, pendingAddr
	// counts those of them that also hold one of the address's.
	pending, pendingAddr int32
	// authAt is when the pair's client last authenticated (0: never).
	authAt int64
}

// NewRateLimiter returns a [RateLimiter] configured by cfg.
func NewRateLimiter(cfg RateLimiterConfig) (*RateLimiter, error) {
	def := func(n *int, d int) error {
		if *n == 0 {
			*n = d
		}
		if *n < 1 {
			return errors.New("m2mauth: RateLimiterConfig bursts and MaxKeys must be positive")
		}
		return nil
	}
	every := func(t *time.Duration, d time.Duration) error {
		if *t == 0 {
			*t = d
		}
		if *t < time.Millisecond {
			return errors.New("m2mauth: RateLimiterConfig intervals must be at least 1ms")
		}
		return nil
	}
	if err := errors.Join(def(&cfg.ClientIPBurst, 5), def(&cfg.IPBurst, 20), def(&cfg.MaxKeys, 100000),
		every(&cfg.ClientIPEvery, 12*time.Second), every(&cfg.IPEvery, 3*time.Second),
		every(&cfg.KnownWindow, 24*time.Hour)); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &RateLimiter{cfg: cfg, buckets: make(map[limitKey]*bucket), changed: make(chan struct{})}, nil
}

// level returns the tokens of b at now (a missing bucket is full).
func level(b *bucket, now int64, every time.Duration, burst int) float64 {
	if b == nil {
		return float64(burst)
	}
	t := b.tokens + float64(now-b.at)/float64(every)
	return min(t, float64(burst))
}

// until returns how long from now until a bucket at level t holds a token.
func until(t float64, every time.Duration) time.Duration {
	// Rounded to the millisecond so float noise cannot add a second to
	// Retry-After.
	d := time.Duration((1 - t) * float64(every)).Round(time.Millisecond)
	return max(d, time.Millisecond)
}

// known reports whether the pair's client authenticated within the window.
func (l *RateLimiter) known(p *bucket, now int64) bool {
	return p != nil && p.authAt != 0 && now-p.authAt < int64(l.cfg.KnownWindow)
}

// Reserve implements [Limiter.Reserve].
func (l *RateLimiter) Reserve(ctx context.Context, clientID, ip string) (time.Duration, error) {
	pk, ak := limitKey{clientID, ip}, limitKey{"", ip}
	for {
		l.mu.Lock()
		now := l.cfg.Now().UnixNano()
		p, a := l.buckets[pk], l.buckets[ak]
		known := l.known(p, now)
		pt := level(p, now, l.cfg.ClientIPEvery, l.cfg.ClientIPBurst)
		at := level(a, now, l.cfg.IPEvery, l.cfg.IPBurst)
		switch {
		case pt < 1:
			// Locked out: the refused attempt still counts against the
			// address.
			if !known && at >= 1 {
				l.take(ak, now, l.cfg.IPEvery, l.cfg.IPBurst)
			}
			l.mu.Unlock()
			return until(pt, l.cfg.ClientIPEvery), nil
		case !known && at < 1:
			l.mu.Unlock()
			return until(at, l.cfg.IPEvery), nil
		case pt-float64(pendingOf(p)) >= 1 && (known || at-float64(pendingOf(a)) >= 1):
			p = l.bucket(pk, now, l.cfg.ClientIPEvery, l.cfg.ClientIPBurst)
			p.pending++
			if !known {
				p.pendingAddr++
				l.bucket(ak, now, l.cfg.IPEvery, l.cfg.IPBurst).pending++
			}
			l.mu.Unlock()
			return 0, nil
		}
		// The tokens left are lent to attempts in flight: wait for one
		// to be released.
		ch := l.changed
		l.waiters++
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func pendingOf(b *bucket) int32 {
	if b == nil {
		return 0
	}
	return b.pending
}

// Release implements [Limiter.Release].
func (l *RateLimiter) Release(_ context.Context, clientID, ip string, o Outcome) error {
	pk, ak := limitKey{clientID, ip}, limitKey{"", ip}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.cfg.Now().UnixNano()
	p, a := l.buckets[pk], l.buckets[ak]
	if p == nil || p.pending == 0 {
		return errors.New("m2mauth: RateLimiter.Release without a reservation")
	}
	p.pending--
	if p.pendingAddr > 0 {
		p.pendingAddr--
		if a != nil && a.pending > 0 {
			a.pending--
		}
	}
	switch o {
	case OutcomeFailed:
		l.take(pk, now, l.cfg.ClientIPEvery, l.cfg.ClientIPBurst)
		l.take(ak, now, l.cfg.IPEvery, l.cfg.IPBurst)
	case OutcomeAuthenticated:
		p.authAt = now
	}
	if l.waiters > 0 {
		close(l.changed)
		l.changed = make(chan struct{})
		l.waiters = 0
	}
	return nil
}

// bucket returns the bucket k, making a full one if there is none.
func (l *RateLimiter) bucket(k limitKey, now int64, every time.Duration, burst int) *bucket {
	b := l.buckets[k]
	if b == nil {
		if len(l.buckets) >= l.cfg.MaxKeys {
			l.evict(now)
		}
		b = &bucket{tokens: float64(burst), at: now}
		l.buckets[k] = b
	}
	return b
}

// take removes one token from bucket k, if it holds one.
func (l *RateLimiter) take(k limitKey, now int64, every time.Duration, burst int) {
	b := l.bucket(k, now, every, burst)
	t := level(b, now, every, burst)
	b.tokens, b.at = max(t-1, 0), now
}

// idle reports whether b is no different from no bucket at all: full,
// with nothing in flight and nothing to remember.
func (l *RateLimiter) idle(k limitKey, b *bucket, now int64) bool {
	every, burst := l.cfg.ClientIPEvery, l.cfg.ClientIPBurst
	if k.client == "" {
		every, burst = l.cfg.IPEvery, l.cfg.IPBurst
	}
	return b.pending == 0 && !l.known(b, now) && level(b, now, every, burst) >= float64(burst)
}

// evict makes room for one bucket: it drops idle buckets among a few
// visited in the map's random order, or else the first one visited that
// has no attempt in flight.
func (l *RateLimiter) evict(now int64) {
	const scan = 32
	var victim *limitKey
	n, dropped := 0, false
	for k, b := range l.buckets {
		if l.idle(k, b, now) {
			delete(l.buckets, k)
			dropped = true
		} else if victim == nil && b.pending == 0 {
			victim = &k
		}
		if n++; n == scan {
			break
		}
	}
	if !dropped && victim != nil {
		delete(l.buckets, *victim)
	}
}

// Len returns the number of buckets held.
func (l *RateLimiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// retryAfterSeconds renders a wait as a Retry-After value: whole seconds,
// rounded up, at least 1 (RFC 9110 §10.2.3).
func retryAfterSeconds(d time.Duration) int64 {
	s := int64(math.Ceil(d.Seconds()))
	if s < 1 {
		s = 1
	}
	return s
}

package m2mauth

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter protects the token endpoint against guessing of client secrets
// (RFC 6749 §2.3.1 and §10.10). The token handler asks Check before it
// looks a client up or verifies a secret, and calls Fail after every failed
// authentication; successful requests consume nothing, so a client that
// knows its secret is never slowed down by its own traffic.
//
// ip is an address key made by the handler: the client's IP address, with
// IPv6 addresses cut to a network prefix ("2001:db8:1:2::/64"), so one host
// cannot escape a limit by rotating through its own addresses.
//
// The default, [RateLimiter], keeps its state in memory, so each replica of
// a service counts on its own. Replicas behind a load balancer share
// limits through a Limiter backed by what they already share, such as the
// database-backed one in the sqlstore package.
//
// Implementations must be safe for concurrent use.
type Limiter interface {
	// Check returns how long a request authenticating clientID from ip
	// must wait before it may try: zero to go ahead. An error refuses the
	// request with a server_error.
	Check(ctx context.Context, clientID, ip string) (time.Duration, error)
	// Fail records one failed authentication of clientID from ip.
	Fail(ctx context.Context, clientID, ip string) error
}

// RateLimiterConfig holds the tunables of a [RateLimiter]; every zero
// value is a working default.
type RateLimiterConfig struct {
	// ClientIPBurst is the number of failures allowed in a row for one
	// client id from one address. Default: 5.
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
	// MaxKeys bounds the number of buckets held (one per client id and
	// address pair, one per address). When it is reached, buckets that
	// have refilled are dropped first, then arbitrary ones. Default:
	// 100000, a few megabytes.
	MaxKeys int
	// Now is the clock. Default: [time.Now].
	Now func() time.Time
}

// RateLimiter is the in-memory [Limiter]: token buckets from
// golang.org/x/time/rate, one per (client id, address) and one per address.
// Only failures take tokens. A request is refused while either of its
// buckets is empty; it may try again once one token has refilled. Memory is
// bounded by MaxKeys. A RateLimiter is safe for concurrent use.
type RateLimiter struct {
	cfg     RateLimiterConfig
	mu      sync.Mutex
	buckets map[limitKey]*rate.Limiter
}

// limitKey names a bucket; client is empty for an address's own bucket.
type limitKey struct{ client, ip string }

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
			return errors.New("m2mauth: RateLimiterConfig refill intervals must be at least 1ms")
		}
		return nil
	}
	if err := errors.Join(def(&cfg.ClientIPBurst, 5), def(&cfg.IPBurst, 20), def(&cfg.MaxKeys, 100000),
		every(&cfg.ClientIPEvery, 12*time.Second), every(&cfg.IPEvery, 3*time.Second)); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &RateLimiter{cfg: cfg, buckets: make(map[limitKey]*rate.Limiter)}, nil
}

// Check reports how long until both buckets of (clientID, ip) hold a token.
func (l *RateLimiter) Check(_ context.Context, clientID, ip string) (time.Duration, error) {
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	wait := l.wait(limitKey{clientID, ip}, now)
	if w := l.wait(limitKey{"", ip}, now); w > wait {
		wait = w
	}
	return wait, nil
}

// wait returns how long until bucket k holds a token; a bucket that has
// refilled completely is dropped, as it is no different from none.
func (l *RateLimiter) wait(k limitKey, now time.Time) time.Duration {
	b := l.buckets[k]
	if b == nil {
		return 0
	}
	tokens := b.TokensAt(now)
	if tokens >= float64(b.Burst()) {
		delete(l.buckets, k)
		return 0
	}
	if tokens >= 1 {
		return 0
	}
	// Rounded to the millisecond so float noise cannot add a second to
	// Retry-After.
	d := time.Duration((1 - tokens) / float64(b.Limit()) * float64(time.Second)).Round(time.Millisecond)
	return max(d, time.Millisecond)
}

// Fail takes a token from both buckets of (clientID, ip).
func (l *RateLimiter) Fail(_ context.Context, clientID, ip string) error {
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.take(limitKey{clientID, ip}, now, l.cfg.ClientIPEvery, l.cfg.ClientIPBurst)
	l.take(limitKey{"", ip}, now, l.cfg.IPEvery, l.cfg.IPBurst)
	return nil
}

func (l *RateLimiter) take(k limitKey, now time.Time, every time.Duration, burst int) {
	b := l.buckets[k]
	if b == nil {
		if len(l.buckets) >= l.cfg.MaxKeys {
			l.evict(now)
		}
		b = rate.NewLimiter(rate.Every(every), burst)
		l.buckets[k] = b
	}
	b.AllowN(now, 1)
}

// evict makes room for one bucket: it drops refilled buckets among a few
// visited in the map's random order, or else the first one visited.
func (l *RateLimiter) evict(now time.Time) {
	const scan = 32
	var first limitKey
	n, dropped := 0, false
	for k, b := range l.buckets {
		if n == 0 {
			first = k
		}
		if b.TokensAt(now) >= float64(b.Burst()) {
			delete(l.buckets, k)
			dropped = true
		}
		if n++; n == scan {
			break
		}
	}
	if !dropped {
		delete(l.buckets, first)
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

// clientAddr finds the client's address: the peer of the connection or,
// when the peer is one of the trusted proxies, the nearest address in the
// Forwarded (RFC 7239) or X-Forwarded-For header that is not a trusted
// proxy. Forwarding headers from anyone else are ignored: they are
// trivially spoofed.
func clientAddr(r *http.Request, trusted []netip.Prefix) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	addr := ap.Addr().Unmap()
	if len(trusted) == 0 || !inPrefixes(addr, trusted) {
		return addr
	}
	hops := forwardedHops(r.Header)
	for i := len(hops) - 1; i >= 0; i-- {
		hop, ok := parseHop(hops[i])
		if !ok {
			break
		}
		addr = hop
		if !inPrefixes(hop, trusted) {
			break
		}
	}
	return addr
}

func inPrefixes(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// forwardedHops lists the client addresses recorded by proxies, nearest
// last: the for= parameters of Forwarded if present, else X-Forwarded-For.
func forwardedHops(h http.Header) []string {
	var hops []string
	if fwd := h.Values("Forwarded"); len(fwd) > 0 {
		for _, line := range fwd {
			for _, elem := range strings.Split(line, ",") {
				hop := "" // an element without for= is an unknown hop
				for _, pair := range strings.Split(elem, ";") {
					k, v, _ := strings.Cut(strings.TrimSpace(pair), "=")
					if strings.EqualFold(k, "for") {
						hop = strings.Trim(v, `"`)
					}
				}
				hops = append(hops, hop)
			}
		}
		return hops
	}
	for _, line := range h.Values("X-Forwarded-For") {
		for _, hop := range strings.Split(line, ",") {
			hops = append(hops, strings.TrimSpace(hop))
		}
	}
	return hops
}

// parseHop reads one forwarded address: "192.0.2.1", "192.0.2.1:80",
// "2001:db8::1", "[2001:db8::1]" or "[2001:db8::1]:443".
func parseHop(s string) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// addrKey is the limiter key of address a, whose text form is text: IPv4
// addresses whole, IPv6 addresses cut to their first v6bits bits.
func addrKey(a netip.Addr, text string, v6bits int) string {
	switch {
	case !a.IsValid():
		return "unknown"
	case a.Is4():
		return text
	}
	p, err := a.WithZone("").Prefix(v6bits)
	if err != nil {
		return text
	}
	return p.String()
}

// validateTrustedProxies checks the proxy networks of a configuration.
func validateTrustedProxies(ps []netip.Prefix) error {
	for _, p := range ps {
		if !p.IsValid() {
			return fmt.Errorf("m2mauth: invalid trusted proxy network %v", p)
		}
	}
	return nil
}

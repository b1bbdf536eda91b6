package m2mauth

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/maphash"
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
	// Every granted reservation must be released exactly once. The
	// handlers call it with a context that the request's caller hanging
	// up does not end, with a deadline of its own. An error means the
	// outcome may not have been recorded; the handler then refuses the
	// request with a server error (it fails closed).
	Release(ctx context.Context, clientID, ip string, o Outcome) error
}

// A ClientLimiter is a [Limiter] that can read the client of an attempt
// in the same round trip to its database as it reserves the attempt,
// when the token handler's [ClientStore] keeps its clients there (as
// the sqlstore package's Limiter does for its Store on PostgreSQL). The
// token handler calls ReserveClient where it would call Reserve and
// then look the client up, for every well-formed client id.
type ClientLimiter interface {
	Limiter
	// ReserveClient does what Reserve(ctx, clientID, ip) does. When it
	// grants the attempt (a zero wait and a nil err), it also returns
	// what store.Client(ctx, clientID) returns: the client, or
	// lookupErr. An implementation that cannot read store's clients
	// itself calls store.Client.
	ReserveClient(ctx context.Context, store ClientStore, clientID, ip string) (wait time.Duration, c *Client, lookupErr, err error)
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
	// address pair, one per address). When it is reached, a new bucket
	// takes the place of one that has refilled, else of one not reserved
	// lately, else of any without attempts in flight, among the next few
	// in turn; dropping a pair forgets that its client authenticated from
	// there. A bucket takes about 150 bytes, held as it is made. Default:
	// 100000, about 15 MB. Values above 2^30 count as 2^30.
	MaxKeys int
	// Now is the clock. Default: the system clock, read as
	// [TokenHandlerConfig.Now] says.
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
	cfg RateLimiterConfig
	// unixNano reads cfg.Now, or the system clock without making a
	// time.Time, in Unix nanoseconds.
	unixNano func() int64
	seed     maphash.Seed
	mu       sync.Mutex
	// The buckets live in slots, in chunks that never move, and index
	// finds them; neither holds a pointer, so the garbage collector has
	// nothing to scan however many buckets are held.
	//
	// index is an open-addressing table, probed linearly and at most 3/4
	// full: an entry is a key's hash (high half) and its bucket's slot
	// plus one (low half); 0 is empty. Its size is a power of two.
	index []uint64
	// front holds index entries of keys found lately, at their hash
	// modulo its size: a key that keeps coming back is found without
	// reading the index, and so the memory pages the limiter touches
	// for its regular clients stay few however many buckets it holds.
	// An entry whose slot now holds another key is passed over.
	front  *[frontSize]uint64
	chunks []*[chunkSlots]bucket
	used   int32 // slots handed out; every one holds a bucket
	hand   int32 // where the next eviction looks first
	// changed is closed, and replaced, when a reservation is released
	// while waiters > 0.
	changed chan struct{}
	waiters int
}

const (
	frontSize  = 4096 // 32 KiB
	chunkSlots = 256  // buckets per chunk: 32 KiB
	// keyCap is the longest key a bucket holds as it is; see limitKey.
	keyCap = 85
	// evictScan is how many buckets without attempts in flight an
	// eviction looks at, at most.
	evictScan = 8
	// maxKeysCap bounds MaxKeys so that slot numbers fit an int32.
	maxKeysCap = 1 << 30
)

// limitKey names a bucket: a client id and an address, the client id
// empty for the address's own bucket. A bucket holds its key as the client
// id's length, the client id and the address, or, when that is longer
// than keyCap, as 0xff and their SHA-256: a long key's client is that
// SHA-256, its ip empty.
type limitKey struct {
	client, ip string
	hash       uint32
	long, addr bool
}

// bucket is a token bucket of attempts, with the reservations it lends,
// and its key: 128 bytes without a pointer.
type bucket struct {
	tokens float64 // at time at, reservations not subtracted
	at     int64   // unix nanoseconds
	// authAt is when the pair's client last authenticated (0: never).
	authAt int64
	// pending counts reservations in flight; for a pair, pendingAddr
	// counts those of them that also hold one of the address's.
	pending, pendingAddr int32
	hash                 uint32 // limitKey.hash
	// addrSlot is, for a pair, the slot plus one where its address's
	// bucket was last seen (0: not yet); it saves a search of the index
	// while the slot still holds that bucket.
	addrSlot int32
	klen     uint8
	addr     bool // an address's own bucket
	// ref records a reservation since the last eviction looked at the
	// bucket: it is passed over once.
	ref bool
	key [keyCap]byte
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
	cfg.MaxKeys = min(cfg.MaxKeys, maxKeysCap)
	unixNano := systemClock.unixNano
	if now := cfg.Now; now != nil {
		unixNano = func() int64 { return now().UnixNano() }
	}
	return &RateLimiter{cfg: cfg, unixNano: unixNano, seed: maphash.MakeSeed(), index: make([]uint64, 64), front: new([frontSize]uint64), changed: make(chan struct{})}, nil
}

// keys makes the keys of the buckets of client at ip: the pair's and the
// address's own.
func (l *RateLimiter) keys(pk, ak *limitKey, client, ip string) {
	h := maphash.String(l.seed, ip)
	ak.ip, ak.hash, ak.addr = ip, uint32(h>>32), true
	if client != "" {
		h ^= maphash.String(l.seed, client) * 0x9e3779b97f4a7c15
	}
	pk.client, pk.ip, pk.hash, pk.addr = client, ip, uint32(h>>32), client == ""
	if 1+len(client)+len(ip) > keyCap {
		pk.shorten()
		if 1+len(ip) > keyCap {
			ak.shorten()
		}
	}
}

// shorten replaces a long key by its SHA-256.
func (k *limitKey) shorten() {
	buf := binary.AppendUvarint(make([]byte, 0, binary.MaxVarintLen64+len(k.client)+len(k.ip)), uint64(len(k.client)))
	sum := sha256.Sum256(append(append(buf, k.client...), k.ip...))
	k.client, k.ip, k.long = string(sum[:]), "", true
}

// is reports whether b is the bucket k.
func (b *bucket) is(k *limitKey) bool {
	c := len(k.client)
	lead := byte(c)
	if k.long {
		lead = 0xff
	}
	return int(b.klen) == 1+c+len(k.ip) && b.key[0] == lead &&
		string(b.key[1:1+c]) == k.client && string(b.key[1+c:b.klen]) == k.ip
}

// slot returns the bucket in slot i.
func (l *RateLimiter) slot(i int32) *bucket {
	return &l.chunks[i/chunkSlots][i%chunkSlots]
}

// find returns the bucket k and its slot, or nil.
func (l *RateLimiter) find(k *limitKey) (*bucket, int32) {
	f := &l.front[k.hash%frontSize]
	if e := *f; e != 0 && uint32(e>>32) == k.hash {
		s := int32(uint32(e)) - 1
		if b := l.slot(s); b.is(k) {
			return b, s
		}
	}
	mask := uint32(len(l.index) - 1)
	for i := k.hash & mask; ; i = (i + 1) & mask {
		e := l.index[i]
		if e == 0 {
			return nil, -1
		}
		if uint32(e>>32) == k.hash {
			s := int32(uint32(e)) - 1
			if b := l.slot(s); b.is(k) {
				*f = e
				return b, s
			}
		}
	}
}

// addrOf returns the bucket of the address ak, or nil; p, the bucket of a
// pair at that address or nil, remembers where it was found.
func (l *RateLimiter) addrOf(p *bucket, ak *limitKey) *bucket {
	if p != nil && p.addrSlot > 0 {
		if a := l.slot(p.addrSlot - 1); a.hash == ak.hash && a.is(ak) {
			return a
		}
	}
	a, s := l.find(ak)
	if p != nil {
		p.addrSlot = s + 1
	}
	return a
}

// bucket returns the bucket k, making a full one if there is none. Making
// one may reuse the slot of any bucket without attempts in flight, so a
// bucket found before is found again after.
func (l *RateLimiter) bucket(k *limitKey, now int64, burst int) (*bucket, int32) {
	if b, i := l.find(k); b != nil {
		return b, i
	}
	i := l.victim(now)
	if i >= 0 {
		l.unindex(i)
	} else {
		if l.used%chunkSlots == 0 {
			l.chunks = append(l.chunks, new([chunkSlots]bucket))
		}
		i = l.used
		l.used++
		if int(l.used) > len(l.index)/4*3 {
			l.grow()
		}
	}
	b := l.slot(i)
	*b = bucket{tokens: float64(burst), at: now, hash: k.hash, addr: k.addr}
	b.key[0] = byte(len(k.client))
	if k.long {
		b.key[0] = 0xff
	}
	b.klen = uint8(1 + copy(b.key[1:], k.client) + copy(b.key[1+len(k.client):], k.ip))
	indexPut(l.index, k.hash, i)
	return b, i
}

// indexPut adds slot i, of a key hashing to h, to the index idx.
func indexPut(idx []uint64, h uint32, i int32) {
	mask := uint32(len(idx) - 1)
	j := h & mask
	for idx[j] != 0 {
		j = (j + 1) & mask
	}
	idx[j] = uint64(h)<<32 | uint64(i+1)
}

// grow doubles the index.
func (l *RateLimiter) grow() {
	idx := make([]uint64, 2*len(l.index))
	for _, e := range l.index {
		if e != 0 {
			indexPut(idx, uint32(e>>32), int32(uint32(e))-1)
		}
	}
	l.index = idx
}

// unindex removes slot i from the index, moving back the entries after it
// that would otherwise no longer be found.
func (l *RateLimiter) unindex(i int32) {
	mask := uint32(len(l.index) - 1)
	hole := l.slot(i).hash & mask
	for uint32(l.index[hole]) != uint32(i+1) {
		hole = (hole + 1) & mask
	}
	for j := hole; ; {
		j = (j + 1) & mask
		e := l.index[j]
		if e == 0 {
			break
		}
		// The entry at j stays unless its home is cyclically at or
		// before the hole.
		if home := uint32(e>>32) & mask; (j-home)&mask >= (j-hole)&mask {
			l.index[hole] = e
			hole = j
		}
	}
	l.index[hole] = 0
}

// victim returns the slot to reuse for a new bucket, or -1 while fewer
// than MaxKeys are held (or, beyond that, when every bucket has attempts
// in flight). It looks at the buckets in turn from where it last stopped,
// like a clock's hand, skipping those with attempts in flight: the first
// idle one wins; else, among evictScan, the first not reserved since the
// hand last passed it, else the first. The hand clears the marks it
// passes. Its cost is bounded by evictScan plus the attempts in flight.
func (l *RateLimiter) victim(now int64) int32 {
	if int(l.used) < l.cfg.MaxKeys {
		return -1
	}
	first, unmarked := int32(-1), int32(-1)
	seen := 0
	i := l.hand
	for range l.used {
		b := l.slot(i)
		if b.pending == 0 {
			if l.idle(b, now) {
				unmarked = i
				break
			}
			if first < 0 {
				first = i
			}
			if !b.ref && unmarked < 0 {
				unmarked = i
			}
			if seen++; seen == evictScan {
				break
			}
		}
		if i++; i == l.used {
			i = 0
		}
	}
	v := unmarked
	if v < 0 {
		v = first
	}
	if v < 0 {
		return -1
	}
	// Clear the marks of those passed over before the victim.
	for i := l.hand; i != v; {
		l.slot(i).ref = false
		if i++; i == l.used {
			i = 0
		}
	}
	l.hand = v + 1
	if l.hand == l.used {
		l.hand = 0
	}
	return v
}

// level returns the tokens of b at now (a missing bucket is full).
func level(b *bucket, now int64, every time.Duration, burst int) float64 {
	if b == nil {
		return float64(burst)
	}
	// A clock stepping back earns nothing and takes nothing.
	t := b.tokens + float64(max(now-b.at, 0))/float64(every)
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
	var pk, ak limitKey
	l.keys(&pk, &ak, clientID, ip)
	for {
		l.mu.Lock()
		now := l.unixNano()
		p, _ := l.find(&pk)
		if p != nil {
			p.ref = true
		}
		// A known client's attempt neither asks nor charges its
		// address, whose bucket is not read: one memory access fewer
		// for the regular clients of a limiter too large for the CPU's
		// caches.
		known := l.known(p, now)
		var a *bucket
		if !known {
			if a = l.addrOf(p, &ak); a != nil {
				a.ref = true
			}
		}
		pt := level(p, now, l.cfg.ClientIPEvery, l.cfg.ClientIPBurst)
		at := level(a, now, l.cfg.IPEvery, l.cfg.IPBurst)
		switch {
		case pt < 1:
			// Locked out: the refused attempt still counts against the
			// address.
			if !known && at >= 1 {
				l.take(&ak, now, l.cfg.IPEvery, l.cfg.IPBurst)
			}
			l.mu.Unlock()
			return until(pt, l.cfg.ClientIPEvery), nil
		case !known && at < 1:
			l.mu.Unlock()
			return until(at, l.cfg.IPEvery), nil
		case pt-float64(pendingOf(p)) >= 1 && (known || at-float64(pendingOf(a)) >= 1):
			if p == nil {
				p, _ = l.bucket(&pk, now, l.cfg.ClientIPBurst)
				a = nil // its slot may have been reused
			}
			p.pending++
			if !known {
				p.pendingAddr++
				if a == nil {
					var s int32
					a, s = l.bucket(&ak, now, l.cfg.IPBurst)
					p.addrSlot = s + 1
				}
				a.pending++
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
	var pk, ak limitKey
	l.keys(&pk, &ak, clientID, ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.unixNano()
	p, _ := l.find(&pk)
	if p == nil || p.pending == 0 {
		return errors.New("m2mauth: RateLimiter.Release without a reservation")
	}
	p.pending--
	if p.pendingAddr > 0 {
		p.pendingAddr--
		if a := l.addrOf(p, &ak); a != nil && a.pending > 0 {
			a.pending--
		}
	}
	switch o {
	case OutcomeFailed:
		// The pair's bucket exists; the address's may not, and making it
		// may reuse the pair's slot, so the pair comes first.
		takeFrom(p, now, l.cfg.ClientIPEvery, l.cfg.ClientIPBurst)
		l.take(&ak, now, l.cfg.IPEvery, l.cfg.IPBurst)
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

// take removes one token from bucket k, if it holds one.
func (l *RateLimiter) take(k *limitKey, now int64, every time.Duration, burst int) {
	b, _ := l.bucket(k, now, burst)
	takeFrom(b, now, every, burst)
}

func takeFrom(b *bucket, now int64, every time.Duration, burst int) {
	t := level(b, now, every, burst)
	b.tokens, b.at = max(t-1, 0), now
}

// idle reports whether b is no different from no bucket at all: full,
// with nothing in flight and nothing to remember.
func (l *RateLimiter) idle(b *bucket, now int64) bool {
	every, burst := l.cfg.ClientIPEvery, l.cfg.ClientIPBurst
	if b.addr {
		every, burst = l.cfg.IPEvery, l.cfg.IPBurst
	}
	// level(b) >= burst, without a division: this runs for every bucket
	// an eviction looks at.
	return b.pending == 0 && !l.known(b, now) && float64(max(now-b.at, 0)) >= (float64(burst)-b.tokens)*float64(every)
}

// Len returns the number of buckets held.
func (l *RateLimiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.used)
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

package m2mauth

import (
	"encoding/binary"
	"hash/maphash"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// cacheShards spreads the verified-token cache over independent locks.
const cacheShards = 16

// tokenCache remembers verified tokens by their exact string, up to a fixed
// number of entries. Only fully verified tokens enter it; an entry is
// dropped once its token expires, once the key set it was verified under is
// replaced, or to make room for a token that has shown it is worth more.
//
// A full shard costs a token that misses no more than the check of one
// entry, the one under its clock's hand: a token replaces it at once if it
// is expired or of an old key set; otherwise only a token that missed
// recently already (the doorkeeper remembers those) may replace it, and
// only if it has not been used since the hand last passed it. So a
// working set larger than the cache does not churn it on every miss, and
// a working set that fits stays in it.
//
// A hit takes no lock and writes nothing another hit reads: it finds the
// token in its shard's table with atomic loads of immutable entries, and
// counts itself on its processor's own counter. So hits on
// one token from every core at once (one client calling an API as fast as
// it can) do not queue on a cache line. Writers, which come only after a
// miss, take the shard's lock.
type tokenCache struct {
	// perShard is a shard's share of the capacity, perShard*len(shards).
	// A shard may hold up to maxShard while the whole cache has room:
	// tokens do not spread over the shards exactly evenly.
	perShard, maxShard int
	entries            atomic.Int64 // tokens held, at most the capacity
	mask               uint         // len(shards)-1; the count is a power of two
	seed               maphash.Seed
	shards             []cacheShard
	hits               *procCounter
}

type cacheShard struct {
	// table finds a token's entry without a lock. Writers hold mu; they
	// replace the table to grow it.
	table atomic.Pointer[probeTable]
	mu    sync.Mutex
	// ring holds the entries in the order the clock's hand visits them;
	// nil marks a free place, listed in free.
	ring []*cacheItem
	free []int32
	hand int32 // the place a full shard would give up next
	// seen is the doorkeeper: a Bloom filter of the tokens turned away
	// by the full shard, cleared after perShard of them.
	seen   []uint64
	turned int
	misses atomic.Uint64
	_      [64]byte // keep shards on separate cache lines
}

// cacheItem is one cached token. Only used changes once it is in a table:
// a writer replaces an item rather than changing it, so a reader that
// loaded it sees it whole.
type cacheItem struct {
	raw string
	tag uint64 // tokenTag(raw)
	cacheEntry
	pos int32 // its place in the shard's ring
	// used is set by a hit, cleared when the hand passes.
	used atomic.Bool
}

type cacheEntry struct {
	claims *Claims
	// keys is the key set the token was verified under; the entry is
	// valid only while the validator uses the same one.
	keys *keyIndex
	// from and until, in Unix nanoseconds (see unixNanos), bound when
	// the entry is valid: from is nbf - leeway, the first instant the
	// token is valid (math.MinInt64 without nbf); until is exp + leeway,
	// the first instant it is invalid again.
	from, until int64
}

// probeTable is an open-addressing hash table of items by tag, with linear
// probing, at most half full. A reader may run beside a writer: it sees
// each place either before or after the writer's store, so it finds an
// item that stays put, and at worst misses one being moved, which costs
// that token a verification.
type probeTable struct {
	places []atomic.Pointer[cacheItem]
	shift  uint // 64 - log2(len(places))
}

// minTable is the size a shard's table starts at.
const minTable = 8

func newProbeTable(n int) *probeTable {
	return &probeTable{places: make([]atomic.Pointer[cacheItem], n), shift: uint(64 - bits.TrailingZeros(uint(n)))}
}

// home is the first place probed for tag: the top bits of a Fibonacci
// hash, so that every bit of the tag counts.
func (t *probeTable) home(tag uint64) int {
	return int((tag * 0x9e3779b97f4a7c15) >> t.shift)
}

// find returns the item holding raw, whose tag is tag, or nil. It takes no
// lock.
func (t *probeTable) find(raw string, tag uint64) *cacheItem {
	if _, it := t.lookup(tag); it != nil && it.raw == raw {
		return it
	}
	return nil
}

// lookup returns the item with the given tag and its place, or -1 and nil.
// A shard holds at most one item of a tag: a token put in gives a token
// of its tag way (see tokenCache.put).
func (t *probeTable) lookup(tag uint64) (int, *cacheItem) {
	mask := len(t.places) - 1
	for i, n := t.home(tag), 0; n < len(t.places); i, n = (i+1)&mask, n+1 {
		it := t.places[i].Load()
		if it == nil {
			return -1, nil
		}
		if it.tag == tag {
			return i, it
		}
	}
	return -1, nil
}

// insert puts it in the first free place from its home; the table must
// have one.
func (t *probeTable) insert(it *cacheItem) {
	mask := len(t.places) - 1
	i := t.home(it.tag)
	for t.places[i].Load() != nil {
		i = (i + 1) & mask
	}
	t.places[i].Store(it)
}

// remove empties place i and moves later items of its run back, so that
// every item stays reachable from its home without an empty place between
// (backward-shift deletion; no tombstones to clean up). A moved item is
// stored at its new place before its old one is reused.
func (t *probeTable) remove(i int) {
	mask := len(t.places) - 1
	for j := (i + 1) & mask; ; j = (j + 1) & mask {
		it := t.places[j].Load()
		if it == nil {
			break
		}
		// it may fill the hole at i only if its home is not
		// cyclically within (i, j].
		if k := t.home(it.tag); (i < j && (k <= i || k > j)) || (i > j && k <= i && k > j) {
			t.places[i].Store(it)
			i = j
		}
	}
	t.places[i].Store(nil)
}

// unixNanos returns t in Unix nanoseconds, saturated at the ends of
// int64 (years 1678 and 2262), so that an entry's bounds order as the
// times do.
func unixNanos(t time.Time) int64 {
	const maxSec = math.MaxInt64/int64(time.Second) - 1
	switch sec := t.Unix(); {
	case sec > maxSec:
		return math.MaxInt64
	case sec < -maxSec:
		return math.MinInt64
	}
	return t.UnixNano()
}

func newTokenCache(size int) *tokenCache { return newShardedCache(size, cacheShards) }

// newShardedCache makes a cache of n shards, a power of two.
func newShardedCache(size, n int) *tokenCache {
	per := max(1, size/n)
	c := &tokenCache{perShard: per, maxShard: per + per/4, mask: uint(n - 1), seed: maphash.MakeSeed(), shards: make([]cacheShard, n), hits: newProcCounter()}
	// Eight bits of doorkeeper per entry, a power of two of them.
	words := 1
	for words*64 < 8*c.perShard {
		words *= 2
	}
	for i := range c.shards {
		c.shards[i].table.Store(newProbeTable(minTable))
		c.shards[i].seen = make([]uint64, words)
	}
	return c
}

// shard picks a shard from the last two bytes of the token: for a valid
// token they are signature bytes, which are uniformly distributed.
func (c *tokenCache) shard(raw string) *cacheShard {
	n := len(raw)
	if n < 2 {
		return &c.shards[0]
	}
	return &c.shards[(uint(raw[n-1])*31+uint(raw[n-2]))&c.mask]
}

// valid reports whether e may answer for a token verified under keys at
// now, in Unix nanoseconds.
func (e *cacheEntry) valid(keys *keyIndex, now int64) bool {
	return e.keys == keys && now >= e.from && now < e.until
}

// get returns the cached claims of raw if it was verified under keys and
// is still within its validity at now, in Unix nanoseconds.
func (c *tokenCache) get(raw string, keys *keyIndex, now int64) (*Claims, bool) {
	s := c.shard(raw)
	tag := tokenTag(raw)
	it := s.table.Load().find(raw, tag)
	if it != nil && it.valid(keys, now) {
		if !it.used.Load() {
			it.used.Store(true)
		}
		c.hits.add()
		return it.claims, true
	}
	if it != nil {
		// Expired, or verified under keys no longer in use.
		s.mu.Lock()
		if t := s.table.Load(); t.find(raw, tag) == it {
			s.drop(it.pos)
			s.free = append(s.free, it.pos)
			c.entries.Add(-1)
		}
		s.mu.Unlock()
	}
	s.misses.Add(1)
	return nil, false
}

// put stores verified claims at now, in Unix nanoseconds, if the cache
// has room or the shard gives some up (see [tokenCache]).
func (c *tokenCache) put(raw string, e cacheEntry, now int64) {
	s := c.shard(raw)
	s.mu.Lock()
	defer s.mu.Unlock()
	room := s.held() < c.maxShard && c.entries.Load() < int64(c.perShard*len(c.shards))
	if !room {
		if s.held() == 0 {
			return
		}
		if v := s.ring[s.under()]; v.valid(e.keys, now) {
			if !c.admit(s, raw) {
				return
			}
			if v.used.Load() {
				v.used.Store(false)
				s.advance()
				return
			}
		}
	}
	tag := tokenTag(raw)
	t := s.table.Load()
	if i, old := t.lookup(tag); old != nil {
		// The token itself, or one that shares its tag, which gives
		// way to it.
		it := &cacheItem{raw: raw, tag: tag, cacheEntry: e, pos: old.pos}
		it.used.Store(old.used.Load())
		s.ring[it.pos] = it
		t.places[i].Store(it)
		return
	}
	var i int32
	switch {
	case room && c.reserve():
		if n := len(s.free); n > 0 {
			i, s.free = s.free[n-1], s.free[:n-1]
		} else {
			i = int32(len(s.ring))
			s.ring = append(s.ring, nil)
		}
	case s.held() > 0:
		i = s.under()
		s.advance()
		s.drop(i)
	default:
		return
	}
	it := &cacheItem{raw: raw, tag: tag, cacheEntry: e, pos: i}
	s.ring[i] = it
	if t = s.table.Load(); 2*s.held() > len(t.places) {
		t = s.grow(t)
	}
	t.insert(it)
}

// grow publishes a table twice the size of t holding t's items, and
// returns it. Readers still probing t find what they would have found.
func (s *cacheShard) grow(t *probeTable) *probeTable {
	g := newProbeTable(2 * len(t.places))
	for i := range t.places {
		if it := t.places[i].Load(); it != nil {
			g.insert(it)
		}
	}
	s.table.Store(g)
	return g
}

// tokenTag is what the index keys a token by: its last eight bytes, which
// for a token that verified (the only kind cached) are signature bytes,
// as random as the signature, so cheaper to hash and to find than the
// whole token. A shorter string, never a cached token, is packed whole.
func tokenTag(raw string) uint64 {
	if len(raw) < 8 {
		var t uint64
		for i := 0; i < len(raw); i++ {
			t = t<<8 | uint64(raw[i])
		}
		return t
	}
	return binary.LittleEndian.Uint64([]byte(raw[len(raw)-8:]))
}

// reserve counts one more token held, if the cache has room for it.
func (c *tokenCache) reserve() bool {
	if c.entries.Add(1) <= int64(c.perShard*len(c.shards)) {
		return true
	}
	c.entries.Add(-1)
	return false
}

// admit reports whether raw was turned away by the full shard recently,
// and remembers it if not.
func (c *tokenCache) admit(s *cacheShard, raw string) bool {
	// The end of a verified token is its signature: random enough to
	// stand for the token, and quicker to hash.
	h := maphash.String(c.seed, raw[max(0, len(raw)-16):])
	m := uint64(len(s.seen)*64 - 1)
	b1, b2 := h&m, h>>32&m
	w1, w2 := &s.seen[b1/64], &s.seen[b2/64]
	bit1, bit2 := uint64(1)<<(b1%64), uint64(1)<<(b2%64)
	if *w1&bit1 != 0 && *w2&bit2 != 0 {
		return true
	}
	*w1 |= bit1
	*w2 |= bit2
	if s.turned++; s.turned >= c.perShard {
		clear(s.seen)
		s.turned = 0
	}
	return false
}

// drop empties place i of the ring.
func (s *cacheShard) drop(i int32) {
	it := s.ring[i]
	t := s.table.Load()
	at, _ := t.lookup(it.tag)
	t.remove(at)
	s.ring[i] = nil
}

// under returns the place under the hand, moving the hand past free places
// to the next token held; the shard must hold one.
func (s *cacheShard) under() int32 {
	for s.ring[s.hand] == nil {
		s.advance()
	}
	return s.hand
}

// held returns the number of tokens the shard holds: every place of the
// ring that is not free. (Outside put, where the place given up by the
// hand is filled at once.)
func (s *cacheShard) held() int { return len(s.ring) - len(s.free) }

func (s *cacheShard) advance() {
	if s.hand++; int(s.hand) == len(s.ring) {
		s.hand = 0
	}
}

// CacheStats counts the work of a [Validator]'s verified-token cache.
type CacheStats struct {
	// Hits are tokens answered from the cache.
	Hits uint64
	// Misses are tokens verified from scratch.
	Misses uint64
	// Entries is the number of tokens held now.
	Entries int
	// Capacity is the most tokens the cache holds.
	Capacity int
}

func (c *tokenCache) stats() CacheStats {
	st := CacheStats{Capacity: c.perShard * len(c.shards)}
	st.Hits = c.hits.load()
	for i := range c.shards {
		s := &c.shards[i]
		st.Misses += s.misses.Load()
		s.mu.Lock()
		st.Entries += s.held()
		s.mu.Unlock()
	}
	return st
}

package m2mauth

import (
	"encoding/binary"
	"hash/maphash"
	"math"
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
type tokenCache struct {
	// perShard is a shard's share of the capacity, perShard*len(shards).
	// A shard may hold up to maxShard while the whole cache has room:
	// tokens do not spread over the shards exactly evenly.
	perShard, maxShard int
	entries            atomic.Int64 // tokens held, at most the capacity
	mask               uint         // len(shards)-1; the count is a power of two
	seed               maphash.Seed
	shards             []cacheShard
}

type cacheShard struct {
	mu sync.RWMutex
	// index finds a token's slot by its tag; a slot whose raw is empty
	// is free. A slot found must still hold the very token looked up:
	// two tokens may share a tag.
	index map[uint64]int32
	slots []cacheSlot
	free  []int32
	hand  int32 // the slot a full shard would give up next
	// seen is the doorkeeper: a Bloom filter of the tokens turned away
	// by the full shard, cleared after perShard of them.
	seen   []uint64
	turned int
	hits   atomic.Uint64
	misses atomic.Uint64
	_      [56]byte // keep shards on separate cache lines
}

type cacheSlot struct {
	raw string
	cacheEntry
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
	c := &tokenCache{perShard: per, maxShard: per + per/4, mask: uint(n - 1), seed: maphash.MakeSeed(), shards: make([]cacheShard, n)}
	// Eight bits of doorkeeper per entry, a power of two of them.
	words := 1
	for words*64 < 8*c.perShard {
		words *= 2
	}
	for i := range c.shards {
		c.shards[i].index = make(map[uint64]int32)
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
	s.mu.RLock()
	i, ok := s.index[tokenTag(raw)]
	ok = ok && s.slots[i].raw == raw
	if ok {
		if e := &s.slots[i]; e.valid(keys, now) {
			if !e.used.Load() {
				e.used.Store(true)
			}
			claims := e.claims
			s.mu.RUnlock()
			s.hits.Add(1)
			return claims, true
		}
	}
	s.mu.RUnlock()
	if ok {
		// Expired, or verified under keys no longer in use.
		s.mu.Lock()
		if i, ok := s.index[tokenTag(raw)]; ok && s.slots[i].raw == raw && !s.slots[i].valid(keys, now) {
			s.drop(i)
			s.free = append(s.free, i)
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
	room := len(s.index) < c.maxShard && c.entries.Load() < int64(c.perShard*len(c.shards))
	if !room {
		if len(s.index) == 0 {
			return
		}
		if v := &s.slots[s.under()]; v.valid(e.keys, now) {
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
	if i, ok := s.index[tag]; ok {
		// The token itself, or one that shares its tag, which gives
		// way to it.
		s.slots[i].raw, s.slots[i].cacheEntry = raw, e
		return
	}
	var i int32
	switch {
	case room && c.reserve():
		if n := len(s.free); n > 0 {
			i, s.free = s.free[n-1], s.free[:n-1]
		} else {
			i = int32(len(s.slots))
			s.slots = append(s.slots, cacheSlot{})
		}
	case len(s.index) > 0:
		i = s.under()
		s.advance()
		s.drop(i)
	default:
		return
	}
	s.slots[i].raw, s.slots[i].cacheEntry = raw, e
	s.index[tag] = i
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

// drop empties slot i.
func (s *cacheShard) drop(i int32) {
	delete(s.index, tokenTag(s.slots[i].raw))
	s.slots[i].raw, s.slots[i].cacheEntry = "", cacheEntry{}
	s.slots[i].used.Store(false)
}

// under returns the slot under the hand, moving the hand past free slots
// to the next token held; the shard must hold one.
func (s *cacheShard) under() int32 {
	for s.slots[s.hand].raw == "" {
		s.advance()
	}
	return s.hand
}

func (s *cacheShard) advance() {
	if s.hand++; int(s.hand) == len(s.slots) {
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
	for i := range c.shards {
		s := &c.shards[i]
		st.Hits += s.hits.Load()
		st.Misses += s.misses.Load()
		s.mu.RLock()
		st.Entries += len(s.index)
		s.mu.RUnlock()
	}
	return st
}

package m2mauth

import (
	"sync"
	"sync/atomic"
	"time"
)

// cacheShards spreads the verified-token cache over independent locks.
const cacheShards = 16

// tokenCache remembers verified tokens by their exact string, up to a fixed
// number of entries. Only fully verified tokens enter it; an entry is
// dropped once its token expires, once the key set it was verified under is
// replaced, or at random when its shard is full.
type tokenCache struct {
	perShard int
	mask     uint // len(shards)-1; the count is a power of two
	shards   []cacheShard
}

type cacheShard struct {
	mu      sync.RWMutex
	entries map[string]cacheEntry
	hits    atomic.Uint64
	misses  atomic.Uint64
	_       [40]byte // keep shards on separate cache lines
}

type cacheEntry struct {
	claims *Claims
	// keys identifies the key set the token was verified under; the
	// entry is valid only while the validator uses the same one.
	keys  any
	from  time.Time // nbf - leeway: the first instant the token is valid
	until time.Time // exp + leeway: the first instant it is invalid again
}

func newTokenCache(size int) *tokenCache { return newShardedCache(size, cacheShards) }

// newShardedCache makes a cache of n shards, a power of two.
func newShardedCache(size, n int) *tokenCache {
	c := &tokenCache{perShard: max(1, size/n), mask: uint(n - 1), shards: make([]cacheShard, n)}
	for i := range c.shards {
		c.shards[i].entries = make(map[string]cacheEntry)
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

// get returns the cached claims of raw if it was verified under keys and
// is still within its validity at now.
func (c *tokenCache) get(raw string, keys any, now time.Time) (*Claims, bool) {
	s := c.shard(raw)
	s.mu.RLock()
	e, ok := s.entries[raw]
	s.mu.RUnlock()
	if !ok {
		s.misses.Add(1)
		return nil, false
	}
	if e.keys != keys || now.Before(e.from) || !now.Before(e.until) {
		s.mu.Lock()
		delete(s.entries, raw)
		s.mu.Unlock()
		s.misses.Add(1)
		return nil, false
	}
	s.hits.Add(1)
	return e.claims, true
}

// put stores verified claims, evicting expired entries, or a random one,
// when the shard is full.
func (c *tokenCache) put(raw string, e cacheEntry, now time.Time) {
	s := c.shard(raw)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.entries[raw]; !ok && len(s.entries) >= c.perShard {
		evicted, scanned := false, 0
		for k, old := range s.entries { // map order is random
			if !now.Before(old.until) || old.keys != e.keys {
				delete(s.entries, k)
				evicted = true
			}
			if scanned++; scanned >= 8 {
				break
			}
		}
		if !evicted {
			for k := range s.entries {
				delete(s.entries, k)
				break
			}
		}
	}
	s.entries[raw] = e
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
		st.Entries += len(s.entries)
		s.mu.RUnlock()
	}
	return st
}

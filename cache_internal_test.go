package m2mauth

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// BenchmarkTokenCacheShards measures cache hits from all cores at once,
// with the cache in one shard and in cacheShards shards: the shards earn
// their place if hits scale better with them.
func BenchmarkTokenCacheShards(b *testing.B) {
	now := time.Unix(1_800_000_000, 0)
	at := unixNanos(now)
	keys := new(keyIndex)
	tokens := make([]string, 1024)
	for i := range tokens {
		tokens[i] = fmt.Sprintf("eyJhbGciOiJIUzI1NiJ9.payload-%d.sig%04x", i, i*7919)
	}
	for _, n := range []int{1, cacheShards} {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			c := newShardedCache(10000, n)
			for _, tok := range tokens {
				c.put(tok, cacheEntry{claims: &Claims{}, keys: keys, from: unixNanos(now.Add(-time.Hour)), until: unixNanos(now.Add(time.Hour))}, unixNanos(now))
			}
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, ok := c.get(tokens[i&1023], keys, at); !ok {
						b.Fatal("miss")
					}
					i++
				}
			})
		})
	}
}

// BenchmarkTokenCacheHotToken measures hits on one token from all cores
// at once, as when one client calls an API as fast as it can: hits that
// wrote to a shared cache line would get slower with every core added.
func BenchmarkTokenCacheHotToken(b *testing.B) {
	now := time.Unix(1_800_000_000, 0)
	at := unixNanos(now)
	keys := new(keyIndex)
	tok := cacheTokens(1, strings.Repeat("p", 300))[0]
	c := newTokenCache(10000)
	c.put(tok, cacheEntry{claims: &Claims{}, keys: keys, from: unixNanos(now.Add(-time.Hour)), until: unixNanos(now.Add(time.Hour))}, at)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := c.get(tok, keys, at); !ok {
				b.Fatal("miss")
			}
		}
	})
}

// BenchmarkTokenCacheHit measures one hit on one core, on tokens as long
// as those a TokenHandler issues (about 390 bytes): what finding a token
// costs where the whole token would be hashed and compared.
func BenchmarkTokenCacheHit(b *testing.B) {
	now := time.Unix(1_800_000_000, 0)
	at := unixNanos(now)
	keys := new(keyIndex)
	tokens := cacheTokens(1024, strings.Repeat("p", 300))
	c := newTokenCache(10000)
	for _, tok := range tokens {
		c.put(tok, cacheEntry{claims: &Claims{}, keys: keys, from: unixNanos(now.Add(-time.Hour)), until: unixNanos(now.Add(time.Hour))}, unixNanos(now))
	}
	i := 0
	for b.Loop() {
		if _, ok := c.get(tokens[i&1023], keys, at); !ok {
			b.Fatal("miss")
		}
		i++
	}
}

// BenchmarkBufPool measures a request's 1 KiB scratch buffer taken from
// bufPool against one allocated per request, from all cores at once.
func BenchmarkBufPool(b *testing.B) {
	b.Run("pool", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				bp := bufPool.Get().(*[]byte)
				buf := append((*bp)[:0], "grant_type=client_credentials&scope=read"...)
				*bp = buf
				bufPool.Put(bp)
			}
		})
	})
	b.Run("make", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				buf := make([]byte, 0, 1024)
				buf = append(buf, "grant_type=client_credentials&scope=read"...)
				benchSink = buf
			}
		})
	})
}

var benchSink []byte

// TestTokenCacheFills: the shards share real tokens evenly, whatever the
// signature length, so that 1.2 times the capacity in distinct tokens fills
// the cache (a shard left half empty while others evict would not).
func TestTokenCacheFills(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	keys := new(keyIndex)
	for _, sigLen := range []int{32, 64, 256} { // HS256; ES256 and EdDSA; RS256 and PS256
		t.Run(fmt.Sprintf("signature of %d bytes", sigLen), func(t *testing.T) {
			c := newTokenCache(10000)
			sig := make([]byte, sigLen)
			for i := range 12000 {
				rand.Read(sig)
				tok := fmt.Sprintf("eyJhbGciOiJIUzI1NiJ9.payload-%d.%s", i, base64.RawURLEncoding.EncodeToString(sig))
				c.put(tok, cacheEntry{claims: &Claims{}, keys: keys, from: unixNanos(now.Add(-time.Hour)), until: unixNanos(now.Add(time.Hour))}, unixNanos(now))
			}
			st := c.stats()
			if st.Entries < st.Capacity*98/100 {
				t.Errorf("%d entries of %d after 12000 distinct tokens", st.Entries, st.Capacity)
			}
		})
	}
}

// cacheTokens returns n distinct token-like strings whose last bytes, like
// a signature's, are random.
func cacheTokens(n int, tag string) []string {
	sig := make([]byte, 32)
	tokens := make([]string, n)
	for i := range tokens {
		rand.Read(sig)
		tokens[i] = fmt.Sprintf("eyJhbGciOiJIUzI1NiJ9.%s-%d.%s", tag, i, base64.RawURLEncoding.EncodeToString(sig))
	}
	return tokens
}

// checkCache: the count of tokens held is the sum of the shards', within
// the capacity; every token a shard holds is in its ring at its place and
// is found in its table without the lock, and the table holds nothing else.
func checkCache(t *testing.T, c *tokenCache) {
	t.Helper()
	held := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		tb := s.table.Load()
		inTable := 0
		for j := range tb.places {
			if it := tb.places[j].Load(); it != nil {
				inTable++
				require.Same(t, it, s.ring[it.pos], "an item of the table is in the ring, at its place")
			}
		}
		require.Equal(t, s.held(), inTable, "items in the table")
		require.LessOrEqual(t, 2*s.held(), len(tb.places), "the table is at most half full")
		require.LessOrEqual(t, s.held(), c.maxShard)
		free := 0
		for j, it := range s.ring {
			if it == nil {
				free++
				continue
			}
			require.Equal(t, int32(j), it.pos)
			require.Equal(t, tokenTag(it.raw), it.tag)
			require.Same(t, it, tb.find(it.raw, it.tag), "an item held is found")
		}
		require.Equal(t, len(s.free), free, "free places listed")
		held += s.held()
		s.mu.Unlock()
	}
	require.Equal(t, int64(held), c.entries.Load())
	require.LessOrEqual(t, held, c.perShard*len(c.shards))
}

// TestProbeTable: items of distinct tags put in and taken out of a small
// table in random order, crowded on a few homes so that runs meet and wrap around its end,
// are always found while in it and never after; each stays reachable from
// its home without an empty place between.
func TestProbeTable(t *testing.T) {
	const size = 64
	rng := mrand.New(mrand.NewPCG(1, 2))
	tb := newProbeTable(size)
	// Tags whose homes are the last three places and the first: runs
	// start near the end and wrap.
	var tags []uint64
	for tag := uint64(0); len(tags) < 200; tag++ {
		if h := tb.home(tag); h >= size-3 || h == 0 {
			tags = append(tags, tag)
		}
	}
	in := map[string]*cacheItem{}
	var out []*cacheItem
	for op := range 20000 {
		if len(in) < size/2 && (len(in) == 0 || rng.IntN(2) == 0) {
			// A table holds at most one item of a tag.
			tag := tags[rng.IntN(len(tags))]
			for _, ok := tb.lookup(tag); ok != nil; _, ok = tb.lookup(tag) {
				tag = tags[rng.IntN(len(tags))]
			}
			it := &cacheItem{raw: fmt.Sprintf("token-%d", op), tag: tag}
			tb.insert(it)
			in[it.raw] = it
		} else {
			for raw, it := range in {
				i := -1
				for j := range tb.places {
					if tb.places[j].Load() == it {
						i = j
					}
				}
				require.GreaterOrEqual(t, i, 0)
				tb.remove(i)
				delete(in, raw)
				out = append(out, it)
				break
			}
		}
		for raw, it := range in {
			require.Same(t, it, tb.find(raw, it.tag), "op %d", op)
			for j := tb.home(it.tag); tb.places[j].Load() != it; j = (j + 1) % size {
				require.NotNil(t, tb.places[j].Load(), "op %d: an empty place before %s", op, raw)
			}
		}
		for _, it := range out[max(0, len(out)-8):] {
			require.Nil(t, tb.find(it.raw, it.tag), "op %d: %s was taken out", op, it.raw)
		}
	}
	n := 0
	for j := range tb.places {
		if tb.places[j].Load() != nil {
			n++
		}
	}
	require.Equal(t, len(in), n)
}

// hitRate validates every token of the set once, verifying and putting
// those that miss, and returns the share answered from the cache.
func hitRate(c *tokenCache, tokens []string, keys *keyIndex, now time.Time) float64 {
	hits := 0
	for _, tok := range tokens {
		if _, ok := c.get(tok, keys, unixNanos(now)); ok {
			hits++
			continue
		}
		c.put(tok, cacheEntry{claims: &Claims{}, keys: keys, from: unixNanos(now.Add(-time.Hour)), until: unixNanos(now.Add(time.Hour))}, unixNanos(now))
	}
	return float64(hits) / float64(len(tokens))
}

// TestTokenCachePolicy: a working set that fits is held whole, even when
// it just fills the cache; one larger than the cache does not wash out
// what the cache holds; a new working set replaces an old one within a
// few passes; expired tokens and tokens of an old key set give way at once.
func TestTokenCachePolicy(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	keys := new(keyIndex)

	t.Run("a working set that fits", func(t *testing.T) {
		for _, n := range []int{5000, 10000} {
			c := newTokenCache(10000)
			tokens := cacheTokens(n, "hot")
			hitRate(c, tokens, keys, now)
			assert.Equal(t, 1.0, hitRate(c, tokens, keys, now), "%d tokens", n)
			checkCache(t, c)
		}
	})

	t.Run("a scan does not wash it out", func(t *testing.T) {
		c := newTokenCache(10000)
		hot := cacheTokens(5000, "hot")
		hitRate(c, hot, keys, now)
		hitRate(c, hot, keys, now)
		scan := cacheTokens(50000, "scan")
		hitRate(c, scan, keys, now) // fills the room left, then is turned away
		assert.Equal(t, 1.0, hitRate(c, hot, keys, now))
		checkCache(t, c)
	})

	t.Run("a new working set takes over", func(t *testing.T) {
		c := newTokenCache(10000)
		old := cacheTokens(10000, "old")
		hitRate(c, old, keys, now)
		hitRate(c, old, keys, now)
		recent := cacheTokens(8000, "new")
		rates := make([]float64, 6)
		for i := range rates {
			rates[i] = hitRate(c, recent, keys, now)
		}
		assert.Greater(t, rates[len(rates)-1], 0.99, "hit rates pass after pass: %v", rates)
		checkCache(t, c)
	})

	t.Run("expired tokens give way", func(t *testing.T) {
		c := newTokenCache(10000)
		hitRate(c, cacheTokens(10000, "old"), keys, now)
		later := now.Add(2 * time.Hour)
		recent := cacheTokens(10000, "new")
		hitRate(c, recent, keys, later) // each put replaces an expired token
		// Expired tokens in shards the new set misses less hold on to
		// their room until they are looked up: a set as large as the
		// cache cannot all fit at once.
		assert.Greater(t, hitRate(c, recent, keys, later), 0.95)
		checkCache(t, c)
	})

	t.Run("tokens of an old key set give way", func(t *testing.T) {
		c := newTokenCache(10000)
		hitRate(c, cacheTokens(10000, "old"), keys, now)
		newKeys := new(keyIndex)
		recent := cacheTokens(10000, "new")
		hitRate(c, recent, newKeys, now)
		assert.Greater(t, hitRate(c, recent, newKeys, now), 0.95)
		checkCache(t, c)
	})
}

// TestTokenCacheChurn: gets that drop expired tokens and puts that take
// their slots, from several goroutines at once, keep the count of tokens
// held exact and within the capacity; run with -race.
func TestTokenCacheChurn(t *testing.T) {
	c := newTokenCache(256)
	keys := new(keyIndex)
	base := time.Unix(1_800_000_000, 0)
	tokens := cacheTokens(2000, "churn")
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := mrand.New(mrand.NewPCG(uint64(w), 1))
			for i := range 20000 {
				tok := tokens[rng.IntN(len(tokens))]
				now := base.Add(time.Duration(i/100) * time.Second)
				if _, ok := c.get(tok, keys, unixNanos(now)); !ok {
					ttl := time.Duration(1+rng.IntN(30)) * time.Second
					c.put(tok, cacheEntry{claims: &Claims{}, keys: keys, from: unixNanos(now), until: unixNanos(now.Add(ttl))}, unixNanos(now))
				}
			}
		}()
	}
	wg.Wait()
	checkCache(t, c)
}

// TestUnixNanos: an entry's bounds keep the order of the times they come
// from, past the ends of int64 nanoseconds too.
func TestUnixNanos(t *testing.T) {
	const lastSec = math.MaxInt64/int64(time.Second) - 1
	tests := []struct {
		name string
		t    time.Time
		want int64
	}{
		{"the epoch", time.Unix(0, 0), 0},
		{"now", time.Unix(1_800_000_000, 5), 1_800_000_000_000_000_005},
		{"before 1970", time.Unix(-1, 0), -1_000_000_000},
		{"year 2262, the last second kept", time.Unix(lastSec, 0), lastSec * 1e9},
		{"year 3000", time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC), math.MaxInt64},
		{"year 1600", time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC), math.MinInt64},
		{"the zero time", time.Time{}, math.MinInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, unixNanos(tt.t))
		})
	}
}

// TestTokenCacheSharedTag: two tokens whose last eight bytes are the same
// share a tag in the index; each is answered only for itself, and the one
// put last holds the slot.
func TestTokenCacheSharedTag(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	keys := new(keyIndex)
	entry := func(c *Claims) cacheEntry {
		return cacheEntry{claims: c, keys: keys, from: unixNanos(now.Add(-time.Hour)), until: unixNanos(now.Add(time.Hour))}
	}
	a, b := "eyJhbGciOiJIUzI1NiJ9.a.SAME-TAIL", "eyJhbGciOiJIUzI1NiJ9.b.SAME-TAIL"
	require.Equal(t, tokenTag(a), tokenTag(b))
	ca, cb := &Claims{}, &Claims{}
	tests := []struct {
		name   string
		put    string
		claims *Claims
		hits   map[string]*Claims // nil: a miss
	}{
		{"the first token", a, ca, map[string]*Claims{a: ca, b: nil}},
		{"the second gives the first way", b, cb, map[string]*Claims{a: nil, b: cb}},
		{"and the first comes back", a, ca, map[string]*Claims{a: ca, b: nil}},
	}
	c := newTokenCache(100)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.put(tt.put, entry(tt.claims), unixNanos(now))
			for raw, want := range tt.hits {
				got, ok := c.get(raw, keys, unixNanos(now))
				require.Equal(t, want != nil, ok, raw)
				require.Same(t, want, got, raw)
			}
			checkCache(t, c)
			require.Equal(t, int64(1), c.entries.Load())
		})
	}
	// A short string, never a token, has a tag of its own.
	require.NotEqual(t, tokenTag("abc"), tokenTag("abd"))
	_, ok := c.get("abc", keys, unixNanos(now))
	require.False(t, ok)
	// An expired token dropped on a get leaves the other's tag alone.
	c.put(b, entry(cb), unixNanos(now))
	_, ok = c.get(a, keys, unixNanos(now.Add(2*time.Hour)))
	require.False(t, ok)
	_, ok = c.get(b, keys, unixNanos(now))
	require.True(t, ok, "a miss on a token that only shares the tag drops nothing")
	_, ok = c.get(b, keys, unixNanos(now.Add(2*time.Hour)))
	require.False(t, ok)
	checkCache(t, c)
	require.Zero(t, c.entries.Load(), "the expired token is dropped")
}

package m2mauth

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"testing"
	"time"
)

// BenchmarkTokenCacheShards measures cache hits from all cores at once,
// with the cache in one shard and in cacheShards shards: the shards earn
// their place if hits scale better with them.
func BenchmarkTokenCacheShards(b *testing.B) {
	now := time.Unix(1_800_000_000, 0)
	keys := new(int)
	tokens := make([]string, 1024)
	for i := range tokens {
		tokens[i] = fmt.Sprintf("eyJhbGciOiJIUzI1NiJ9.payload-%d.sig%04x", i, i*7919)
	}
	for _, n := range []int{1, cacheShards} {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			c := newShardedCache(10000, n)
			for _, tok := range tokens {
				c.put(tok, cacheEntry{claims: &Claims{}, keys: keys, from: now.Add(-time.Hour), until: now.Add(time.Hour)}, now)
			}
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, ok := c.get(tokens[i&1023], keys, now); !ok {
						b.Fatal("miss")
					}
					i++
				}
			})
		})
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
	keys := new(int)
	for _, sigLen := range []int{32, 64, 256} { // HS256; ES256 and EdDSA; RS256 and PS256
		t.Run(fmt.Sprintf("signature of %d bytes", sigLen), func(t *testing.T) {
			c := newTokenCache(10000)
			sig := make([]byte, sigLen)
			for i := range 12000 {
				rand.Read(sig)
				tok := fmt.Sprintf("eyJhbGciOiJIUzI1NiJ9.payload-%d.%s", i, base64.RawURLEncoding.EncodeToString(sig))
				c.put(tok, cacheEntry{claims: &Claims{}, keys: keys, from: now.Add(-time.Hour), until: now.Add(time.Hour)}, now)
			}
			st := c.stats()
			if st.Entries < st.Capacity*98/100 {
				t.Errorf("%d entries of %d after 12000 distinct tokens", st.Entries, st.Capacity)
			}
		})
	}
}

package m2mauth

import (
	"context"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRateLimiterBucketSize: a bucket is two cache lines, so a million of
// them are 128 MB.
func TestRateLimiterBucketSize(t *testing.T) {
	assert.Equal(t, uintptr(128), unsafe.Sizeof(bucket{}))
}

// checkIndex: every bucket held is found by its key and by no other, the
// index holds one entry per bucket and no more than 3/4 of its size, and
// the keys not held are not found.
func checkIndex(t *testing.T, l *RateLimiter, keys []limitKey) {
	t.Helper()
	entries := 0
	for _, e := range l.index {
		if e != 0 {
			entries++
		}
	}
	require.Equal(t, int(l.used), entries, "index entries")
	require.LessOrEqual(t, 4*entries, 3*len(l.index), "index load")
	found := make(map[*bucket]int)
	for i := range keys {
		b, s := l.find(&keys[i])
		if b == nil {
			continue
		}
		require.Same(t, l.slot(s), b)
		require.True(t, b.is(&keys[i]))
		require.Equal(t, keys[i].hash, b.hash)
		if j, dup := found[b]; dup {
			t.Fatalf("keys %d and %d find the same bucket", j, i)
		}
		found[b] = i
	}
	require.Len(t, found, int(l.used), "every bucket is found by its key")
}

// TestRateLimiterIndex inserts and evicts keys whose hashes crowd a few
// positions at the end of the index, so that runs wrap around, long keys
// among them, some with attempts in flight, and checks the index after
// each step.
func TestRateLimiterIndex(t *testing.T) {
	for _, spread := range []uint32{1, 7, 1000, math.MaxUint32} {
		t.Run("hashes "+strconv.FormatUint(uint64(spread), 10), func(t *testing.T) {
			now := time.Unix(1_800_000_000, 0)
			l, err := NewRateLimiter(RateLimiterConfig{MaxKeys: 200, Now: func() time.Time { return now }})
			require.NoError(t, err)
			rng := rand.New(rand.NewPCG(1, uint64(spread)))
			var keys []limitKey
			inFlight := 0
			for i := range 1000 {
				client := "c" + strconv.Itoa(i)
				if i%5 == 0 {
					client = strings.Repeat("x", 100) + client // held as its SHA-256
				}
				var k, a limitKey
				l.keys(&k, &a, client, "192.0.2."+strconv.Itoa(i))
				k.hash = math.MaxUint32 - rng.Uint32N(spread)
				a.hash = math.MaxUint32 - 1 - rng.Uint32N(spread)
				keys = append(keys, k, a)
				b, _ := l.bucket(&keys[len(keys)-2], now.UnixNano(), 5)
				switch i % 10 {
				case 0:
					b.pending++ // in flight for good: never dropped
					inFlight++
				case 1, 2, 3:
					b.ref = true
				}
				l.bucket(&keys[len(keys)-1], now.UnixNano(), 20)
				if i < 300 || i%25 == 0 {
					checkIndex(t, l, keys)
				}
				require.LessOrEqual(t, int(l.used), l.cfg.MaxKeys+inFlight)
			}
			for i := 0; i < len(keys); i += 20 {
				b, _ := l.find(&keys[i])
				require.NotNil(t, b, "key %d has an attempt in flight", i)
			}
		})
	}
}

// TestRateLimiterEviction: a full limiter drops an idle bucket first, then
// one not reserved since the hand last passed it, then any, and never one
// with attempts in flight; a reservation survives any number of new keys.
func TestRateLimiterEviction(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	ctx := context.Background()
	fail := func(t *testing.T, l *RateLimiter, id, ip string) {
		t.Helper()
		wait, err := l.Reserve(ctx, id, ip)
		require.NoError(t, err)
		require.Zero(t, wait)
		require.NoError(t, l.Release(ctx, id, ip, OutcomeFailed))
	}
	held := func(l *RateLimiter, id string) bool {
		var pk, ak limitKey
		l.keys(&pk, &ak, id, "192.0.2.1")
		b, _ := l.find(&pk)
		return b != nil
	}

	t.Run("idle first", func(t *testing.T) {
		l, err := NewRateLimiter(RateLimiterConfig{MaxKeys: 9, Now: clock})
		require.NoError(t, err)
		for i := range 8 { // 8 pairs and their address
			fail(t, l, "c"+strconv.Itoa(i), "192.0.2.1")
		}
		require.Equal(t, 9, l.Len())
		// c5 refills; the others are still counting.
		var pk, ak limitKey
		l.keys(&pk, &ak, "c5", "192.0.2.1")
		p, _ := l.find(&pk)
		p.tokens = 5
		fail(t, l, "new", "192.0.2.1")
		assert.False(t, held(l, "c5"), "the idle bucket goes")
		for _, id := range []string{"c0", "c1", "c2", "c3", "c4", "c6", "c7", "new"} {
			assert.True(t, held(l, id), id)
		}
		assert.Equal(t, 9, l.Len())
	})

	t.Run("not reserved since the hand passed", func(t *testing.T) {
		l, err := NewRateLimiter(RateLimiterConfig{MaxKeys: 4, Now: clock})
		require.NoError(t, err)
		fail(t, l, "a", "192.0.2.1") // slots: a, address
		fail(t, l, "b", "192.0.2.1")
		fail(t, l, "c", "192.0.2.1")
		// Reserving again marks a and the address; b, c unmarked.
		fail(t, l, "a", "192.0.2.1")
		fail(t, l, "d", "192.0.2.1") // drops b, the first unmarked after the hand
		assert.True(t, held(l, "a"))
		assert.False(t, held(l, "b"))
		assert.True(t, held(l, "c"))
		assert.True(t, held(l, "d"))
	})

	t.Run("attempts in flight", func(t *testing.T) {
		l, err := NewRateLimiter(RateLimiterConfig{MaxKeys: 2, Now: clock})
		require.NoError(t, err)
		wait, err := l.Reserve(ctx, "inflight", "192.0.2.9")
		require.NoError(t, err)
		require.Zero(t, wait)
		for i := range 100 {
			fail(t, l, "c"+strconv.Itoa(i), "198.51.100."+strconv.Itoa(i))
		}
		assert.Equal(t, 4, l.Len(), "the two buckets in flight, and two more")
		require.NoError(t, l.Release(ctx, "inflight", "192.0.2.9", OutcomeAuthenticated))
		for i := range 100 {
			fail(t, l, "d"+strconv.Itoa(i), "203.0.113."+strconv.Itoa(i))
		}
		assert.Equal(t, 4, l.Len(), "room once made is kept, but no more is made")
	})
}

// TestCallerLimiterFull: the introspection and revocation endpoints'
// per-caller limiter, once full, forgets the callers whose buckets have
// refilled first; when they are too few, it makes room for an eighth of
// its capacity at once, so a stream of new callers costs one pass over
// the callers held per eighth, not one each.
func TestCallerLimiterFull(t *testing.T) {
	start := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		refilled int // callers held whose buckets are full again
		want     int // callers held after one more comes
	}{
		{"none refilled", 0, 800 - 100 + 1},
		{"a few refilled", 30, 800 - 100 + 1},
		{"an eighth and more refilled", 300, 800 - 300 + 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := start
			l := newCallerLimiter(1, 100, func() time.Time { return now })
			l.max = 800
			// The refilled callers came more than 100 s (a burst at
			// one a second) before the others.
			for i := range tt.refilled {
				require.Zero(t, l.take("old-"+strconv.Itoa(i)))
			}
			now = start.Add(time.Hour)
			for i := range l.max - tt.refilled {
				require.Zero(t, l.take("busy-"+strconv.Itoa(i)))
			}
			require.Len(t, l.callers, l.max)
			require.Zero(t, l.take("new-0"))
			require.Len(t, l.callers, tt.want)
			for i := range tt.refilled {
				require.NotContains(t, l.callers, "old-"+strconv.Itoa(i), "refilled callers go first")
			}
			if tt.want > 800-100+1 {
				require.Len(t, l.callers, l.max-tt.refilled+1, "no busy caller forgotten while refilled ones made room")
			}
			// The next callers find room without another pass.
			for i := 1; len(l.callers) < l.max; i++ {
				before := len(l.callers)
				require.Zero(t, l.take("new-"+strconv.Itoa(i)))
				require.Equal(t, before+1, len(l.callers))
			}
		})
	}
}

// BenchmarkCallerLimiterFull is a new caller, every time, at a full
// per-caller limiter none of whose callers' buckets has refilled.
func BenchmarkCallerLimiterFull(b *testing.B) {
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	l := newCallerLimiter(1, 100, func() time.Time { return now })
	ids := make([]string, 1<<20)
	for i := range ids {
		ids[i] = "client-" + strconv.Itoa(i)
	}
	for _, id := range ids[:l.max] {
		l.take(id)
	}
	i := l.max
	b.ReportAllocs()
	for b.Loop() {
		l.take(ids[i%len(ids)])
		i++
	}
}

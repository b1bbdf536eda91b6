package m2mauth_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// limiterSizes are the numbers of buckets held in the scale benchmarks:
// half of them a client and address pair, half the pair's address.
var limiterSizes = []struct {
	name string
	n    int
}{{"keys=1k", 1_000}, {"keys=100k", 100_000}, {"keys=1M", 1_000_000}}

// heldLimiter returns a limiter of maxKeys holding n buckets, n/2 pairs
// that each failed once from an address of their own, and the pairs'
// client ids and addresses.
func heldLimiter(b *testing.B, n, maxKeys int) (*m2mauth.RateLimiter, []string, []string) {
	b.Helper()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{MaxKeys: maxKeys, Now: func() time.Time { return now }})
	require.NoError(b, err)
	ctx := context.Background()
	ids, ips := make([]string, n/2), make([]string, n/2)
	for i := range ids {
		ids[i], ips[i] = benchPair(i)
		if wait, err := l.Reserve(ctx, ids[i], ips[i]); err != nil || wait != 0 {
			b.Fatal("refused while building", err)
		}
		require.NoError(b, l.Release(ctx, ids[i], ips[i], m2mauth.OutcomeFailed))
	}
	require.Equal(b, n, l.Len())
	return l, ids, ips
}

// benchPair names the i-th client and address of the scale benchmarks.
func benchPair(i int) (string, string) {
	return "client-" + strconv.Itoa(i),
		"10." + strconv.Itoa(i>>16&255) + "." + strconv.Itoa(i>>8&255) + "." + strconv.Itoa(i&255) + "/" + strconv.Itoa(i>>24)
}

// BenchmarkRateLimiterScale measures the limiter as the buckets it holds
// grow from a thousand to a million. lookup is a reservation released by
// a successful authentication, of a pair held, taken in a scattered order
// across all the pairs; lookup-hot64 and lookup-hot512 are the same over
// 64 and 512 pairs spread among all those held (the clients that keep
// coming back while the limiter is full of others); insert-full is a failed
// attempt from a new pair at a new address into a full limiter, which
// drops two buckets to make room, and insert-room the same into a limiter
// with room to spare; gc is a garbage collection with the limiter alive,
// the cost it adds to each of a server's collections; memory is the
// floor of a lookup in scattered order, whatever the structure: one read
// of a cache line chosen at random among as many as the limiter holds
// buckets, each read waiting for the one before, as a limiter's next
// request waits for its lock.
func BenchmarkRateLimiterScale(b *testing.B) {
	ctx := context.Background()
	for _, size := range limiterSizes {
		b.Run("memory/"+size.name, func(b *testing.B) {
			// A cycle through every line in random order: each line
			// holds the index of the next.
			type line [8]uint64
			lines := make([]line, size.n)
			order := rand.New(rand.NewPCG(1, 2)).Perm(size.n)
			for i, k := range order {
				lines[k][0] = uint64(order[(i+1)%size.n])
			}
			next := uint64(order[0])
			for b.Loop() {
				next = lines[next][0]
			}
			runtime.KeepAlive(next)
		})
		b.Run("lookup/"+size.name, func(b *testing.B) {
			l, ids, ips := heldLimiter(b, size.n, size.n)
			// A stride coprime with the number of pairs visits them all,
			// too far apart for a prefetcher to follow.
			pairs := len(ids)
			stride := 7919 % pairs
			for gcd(stride, pairs) != 1 {
				stride++
			}
			order := make([]int, pairs)
			for i, j := 0, 0; i < pairs; i++ {
				order[i] = j
				if j += stride; j >= pairs {
					j -= pairs
				}
			}
			lookups(b, l, ids, ips, order)
		})
		for _, hot := range []int{64, 512} {
			b.Run(fmt.Sprintf("lookup-hot%d/%s", hot, size.name), func(b *testing.B) {
				l, ids, ips := heldLimiter(b, size.n, size.n)
				hot := min(hot, len(ids))
				order := make([]int, hot)
				for i := range order {
					order[i] = i * (len(ids) / hot)
				}
				lookups(b, l, ids, ips, order)
			})
		}
		for _, full := range []bool{true, false} {
			name := "insert-full/"
			maxKeys := size.n
			if !full {
				name, maxKeys = "insert-room/", 1<<30
			}
			b.Run(name+size.name, func(b *testing.B) {
				l, _, _ := heldLimiter(b, size.n, maxKeys)
				i := size.n
				b.ReportAllocs()
				for b.Loop() {
					id, ip := benchPair(i)
					if wait, _ := l.Reserve(ctx, id, ip); wait != 0 {
						b.Fatal("locked out")
					}
					if err := l.Release(ctx, id, ip, m2mauth.OutcomeFailed); err != nil {
						b.Fatal(err)
					}
					i++
				}
				if full && l.Len() > size.n {
					b.Fatalf("%d buckets held, MaxKeys %d", l.Len(), size.n)
				}
			})
		}
		b.Run("gc/"+size.name, func(b *testing.B) {
			l, _, _ := heldLimiter(b, size.n, size.n)
			for b.Loop() {
				runtime.GC()
			}
			runtime.KeepAlive(l)
		})
	}
}

// lookups reserves and releases, as a successful authentication, the
// pairs of order in turn. Their client ids and addresses are copied first,
// in that order, so that the benchmark's own reads are sequential, like a
// server's of the request in hand: only the limiter's are scattered.
func lookups(b *testing.B, l *m2mauth.RateLimiter, ids, ips []string, order []int) {
	type pair struct{ id, ip string }
	pairs := make([]pair, len(order))
	for i, k := range order {
		pairs[i] = pair{strings.Clone(ids[k]), strings.Clone(ips[k])}
	}
	ctx := context.Background()
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		p := &pairs[i]
		if wait, _ := l.Reserve(ctx, p.id, p.ip); wait != 0 {
			b.Fatal("locked out")
		}
		if err := l.Release(ctx, p.id, p.ip, m2mauth.OutcomeAuthenticated); err != nil {
			b.Fatal(err)
		}
		if i++; i == len(pairs) {
			i = 0
		}
	}
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// TestBenchPairsDistinct: the scale benchmarks' pairs and addresses are
// all distinct, so the limiter holds as many buckets as they say.
func TestBenchPairsDistinct(t *testing.T) {
	seen := make(map[string]bool)
	for i := range 1 << 17 {
		id, ip := benchPair(i)
		require.False(t, seen[id] || seen[ip], "pair %d", i)
		seen[id], seen[ip] = true, true
	}
}

// BenchmarkRateLimiter is what the default limiter adds to each token
// request of a known client: a reservation, released by a successful
// authentication, on the system clock.
func BenchmarkRateLimiter(b *testing.B) {
	l, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{})
	require.NoError(b, err)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if wait, err := l.Reserve(ctx, "client-1", "192.0.2.1"); wait != 0 || err != nil {
			b.Fatal("refused", wait, err)
		}
		if err := l.Release(ctx, "client-1", "192.0.2.1", m2mauth.OutcomeAuthenticated); err != nil {
			b.Fatal(err)
		}
	}
}

package m2mauth

import (
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestProcCounter: adds from any number of goroutines at once are all
// counted, collections that empty the pool in between included.
func TestProcCounter(t *testing.T) {
	tests := []struct{ goroutines, each int }{
		{1, 1000},
		{8, 1000},
		{3 * procCounters, 100}, // more goroutines than counters
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d goroutines", tt.goroutines), func(t *testing.T) {
			c := newProcCounter()
			var wg sync.WaitGroup
			for g := range tt.goroutines {
				wg.Go(func() {
					for i := range tt.each {
						c.add()
						if g == 0 && i%100 == 0 {
							runtime.GC() // empties the pool
						}
					}
				})
			}
			wg.Wait()
			require.Equal(t, uint64(tt.goroutines*tt.each), c.load())
		})
	}
}

// BenchmarkProcCounter compares a procCounter's add with an atomic add on
// one counter, from all cores at once.
func BenchmarkProcCounter(b *testing.B) {
	b.Run("procCounter", func(b *testing.B) {
		c := newProcCounter()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.add()
			}
		})
	})
	b.Run("one atomic", func(b *testing.B) {
		var c paddedCount
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.n.Add(1)
			}
		})
	})
}

package m2mauth

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestMonoClock checks that the clock tells the time time.Now tells, and
// reads the wall clock again once its reading is a second old, or is
// ahead of the monotonic clock.
func TestMonoClock(t *testing.T) {
	tests := []struct {
		name   string
		anchor time.Duration // the anchor's age; negative: in the future
		fresh  bool          // a new wall clock reading is expected
	}{
		{"recent anchor", 0, false},
		{"anchor half a second old", maxClockAnchorAge / 2, false},
		{"anchor a second old", maxClockAnchorAge, true},
		{"anchor an hour old", time.Hour, true},
		{"anchor ahead", -time.Hour, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newMonoClock()
			made := time.Now()
			old := made.Add(-tt.anchor)
			c.anchor.Store(&old)
			before := time.Now()
			got := c.Now()
			after := time.Now()
			require.False(t, got.Before(before), "%v before %v", got, before)
			require.False(t, got.After(after), "%v after %v", got, after)
			// Wall clock readings agree too, not only monotonic ones.
			require.False(t, got.Round(0).Before(before.Round(0).Add(-time.Millisecond)))
			require.False(t, got.Round(0).After(after.Round(0).Add(time.Millisecond)))
			if !tt.fresh && time.Since(made) >= maxClockAnchorAge-tt.anchor {
				return // the machine stalled long enough for the anchor to age
			}
			require.Equal(t, tt.fresh, c.anchor.Load() != &old)
		})
	}
}

// TestCoarseClock checks that the coarse clock tells its source's time:
// at once when a reader starts it, within a few ticks while it is read,
// and afresh once it has stopped for want of readers; and that readers
// racing with the ticker never see a time the source did not tell.
func TestCoarseClock(t *testing.T) {
	var src atomic.Pointer[time.Time]
	set := func(t time.Time) { src.Store(&t) }
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	set(t0)
	c := newCoarseClock(func() time.Time { return *src.Load() })

	require.Equal(t, t0, c.Now(), "the first reader reads the source")
	require.True(t, c.running.Load(), "and starts the ticker")

	t1 := t0.Add(time.Second)
	set(t1)
	require.Eventually(t, func() bool { return c.Now().Equal(t1) }, 10*time.Second, time.Millisecond,
		"while read, the clock follows its source")

	require.Eventually(t, func() bool { return !c.running.Load() }, 10*time.Second, time.Millisecond,
		"unread, the ticker stops")
	t2 := t1.Add(time.Hour)
	set(t2)
	require.Equal(t, t2, c.Now(), "a stopped clock's reader reads the source")

	// Readers race with the ticker and with restarts; each reading is
	// one the source gave, no later than its latest.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	latest := t2
	var mu sync.Mutex
	wg.Go(func() {
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Microsecond):
			}
			mu.Lock()
			latest = t2.Add(time.Duration(i) * time.Second)
			set(latest)
			mu.Unlock()
		}
	})
	for range 4 {
		wg.Go(func() {
			for i := range 2000 {
				got := c.Now()
				mu.Lock()
				hi := latest
				mu.Unlock()
				if got.Before(t2) || got.After(hi) || got.Sub(t2)%time.Second != 0 {
					t.Errorf("reading %d: %v, not one of the source's times up to %v", i, got, hi)
					return
				}
				if i%500 == 0 {
					time.Sleep(40 * coarseTick) // let the ticker stop
				}
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
}

// BenchmarkClock compares the system clock and the validator's clock
// with time.Now.
func BenchmarkClock(b *testing.B) {
	var sink int64
	b.Run("time.Now", func(b *testing.B) {
		for b.Loop() {
			sink += time.Now().UnixNano()
		}
	})
	b.Run("systemClock", func(b *testing.B) {
		for b.Loop() {
			sink += systemClock.Now().UnixNano()
		}
	})
	b.Run("cacheClock", func(b *testing.B) {
		for b.Loop() {
			sink += cacheClock.Now().UnixNano()
		}
	})
	_ = sink
}

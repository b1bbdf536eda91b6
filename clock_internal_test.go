package m2mauth

import (
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
		for _, read := range []string{"Now", "unixNano"} {
			t.Run(tt.name+"/"+read, func(t *testing.T) {
				c := newMonoClock()
				made := time.Now()
				old := made.Add(-tt.anchor)
				anchor := &clockAnchor{t: old, ns: old.UnixNano()}
				c.anchor.Store(anchor)
				before := time.Now()
				var got time.Time
				if read == "Now" {
					got = c.Now()
				} else {
					got = time.Unix(0, c.unixNano())
				}
				after := time.Now()
				if read == "Now" {
					require.False(t, got.Before(before), "%v before %v", got, before)
					require.False(t, got.After(after), "%v after %v", got, after)
				}
				// Wall clock readings agree too, not only monotonic ones.
				require.False(t, got.Round(0).Before(before.Round(0).Add(-time.Millisecond)), "%v before %v", got, before)
				require.False(t, got.Round(0).After(after.Round(0).Add(time.Millisecond)), "%v after %v", got, after)
				if !tt.fresh && time.Since(made) >= maxClockAnchorAge-tt.anchor {
					return // the machine stalled long enough for the anchor to age
				}
				require.Equal(t, tt.fresh, c.anchor.Load() != anchor)
			})
		}
	}
}

// BenchmarkClock compares the system clock with time.Now.
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
	b.Run("systemClock.unixNano", func(b *testing.B) {
		for b.Loop() {
			sink += systemClock.unixNano()
		}
	})
	_ = sink
}

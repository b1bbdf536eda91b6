package sqlstore

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestPairSlotsReleasing checks the promise of pairSlots.releasing over
// random schedules: whatever the order in which reservations end, and
// however the clock jumps between their grants, the time it returns for
// an ending reservation is never after that reservation's own grant.
func TestPairSlotsReleasing(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	k := limitKey{"svc", "192.0.2.1"}
	for run := range 2000 {
		s := pairSlots{n: 5}
		var held []int64 // the grants of the reservations in flight
		for step := range 40 {
			if len(held) < s.n && (len(held) == 0 || rng.IntN(2) == 0) {
				require.NoError(t, s.acquire(t.Context(), k))
				at := rng.Int64N(1000) // a clock that jumps both ways
				s.granted(k, at)
				held = append(held, at)
				continue
			}
			i := rng.IntN(len(held))
			got := s.releasing(k)
			require.LessOrEqual(t, got, held[i], "run %d, step %d: ending the reservation granted at %d of %v", run, step, held[i], held)
			held = append(held[:i], held[i+1:]...)
			s.release(k)
		}
	}
	require.Zero(t, (&pairSlots{}).releasing(k), "nothing recorded")
}

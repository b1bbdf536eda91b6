package m2mauth

import (
	"sync/atomic"
	"time"
)

// systemClock is the default clock of the token handler, the rate
// limiter and the validator: the paths that read the time on every
// request.
var systemClock = newMonoClock()

// maxClockAnchorAge bounds how long a [monoClock] goes without reading
// the wall clock.
const maxClockAnchorAge = time.Second

// monoClock tells the time from the monotonic clock, added to a reading
// of the wall clock taken at most maxClockAnchorAge before. On Linux
// reading the monotonic clock alone is about half the cost of
// [time.Now], which reads both. Between two readings of the wall clock
// the time it tells runs at the monotonic clock's rate, so a step of the
// system clock shows within maxClockAnchorAge; a slew (what NTP does
// otherwise) changes both clocks alike. It is safe for concurrent use.
type monoClock struct {
	anchor atomic.Pointer[time.Time]
}

func newMonoClock() *monoClock {
	c := new(monoClock)
	t := time.Now()
	c.anchor.Store(&t)
	return c
}

// Now returns the current time.
func (c *monoClock) Now() time.Time {
	a := c.anchor.Load()
	if d := time.Since(*a); d >= 0 && d < maxClockAnchorAge {
		return a.Add(d)
	}
	t := time.Now()
	c.anchor.Store(&t)
	return t
}

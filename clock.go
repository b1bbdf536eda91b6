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
	anchor atomic.Pointer[clockAnchor]
}

// clockAnchor is a reading of the wall clock, with its monotonic
// reading, and the same instant in Unix nanoseconds.
type clockAnchor struct {
	t  time.Time
	ns int64
}

func newMonoClock() *monoClock {
	c := new(monoClock)
	c.reanchor()
	return c
}

// reanchor reads the wall clock and keeps the reading as the anchor.
func (c *monoClock) reanchor() *clockAnchor {
	t := time.Now()
	a := &clockAnchor{t: t, ns: t.UnixNano()}
	c.anchor.Store(a)
	return a
}

// since returns the anchor and the time since it, re-anchoring first
// when the anchor is maxClockAnchorAge old or ahead of the monotonic
// clock.
func (c *monoClock) since() (*clockAnchor, time.Duration) {
	a := c.anchor.Load()
	if d := time.Since(a.t); d >= 0 && d < maxClockAnchorAge {
		return a, d
	}
	return c.reanchor(), 0
}

// Now returns the current time.
func (c *monoClock) Now() time.Time {
	a, d := c.since()
	return a.t.Add(d)
}

// unixNano returns the current time in Unix nanoseconds, what
// Now().UnixNano() returns, without making a time.Time.
func (c *monoClock) unixNano() int64 {
	a, d := c.since()
	return a.ns + int64(d)
}

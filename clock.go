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

// cacheClock is the validator's default clock: the system clock read
// through a [coarseClock], so that a cache hit costs no clock reading.
var cacheClock = newCoarseClock(systemClock.Now)

// The coarse clock's tick, and how many ticks without a reader it waits
// before it stops.
const (
	coarseTick      = time.Millisecond
	coarseIdleTicks = 16
)

// coarseClock tells the time as a ticker last read it from src, while
// the ticker runs; reading it is then two loads, where reading the
// system clock costs tens of nanoseconds on some virtual machines. The
// ticker runs only while the clock is read: after coarseIdleTicks ticks
// without a reader it stops, and the next reader reads src itself and
// starts it again.
//
// The time it tells lags the system clock by a tick, or by longer when
// the machine is so busy that the ticker's goroutine waits to run, as
// the cached time of an event loop does (nginx, Envoy). The validator
// reads it to compare with a token's nbf and exp, which are whole
// seconds allowed a leeway. It is safe for concurrent use.
type coarseClock struct {
	src     func() time.Time
	now     atomic.Pointer[time.Time] // set before running
	running atomic.Bool
	read    atomic.Bool // read since the last tick
}

func newCoarseClock(src func() time.Time) *coarseClock {
	return &coarseClock{src: src}
}

// Now returns the current time, to within a tick.
func (c *coarseClock) Now() time.Time {
	if c.running.Load() {
		if !c.read.Load() {
			c.read.Store(true)
		}
		return *c.now.Load()
	}
	return c.start()
}

// start reads src and starts the ticker, unless another reader has.
func (c *coarseClock) start() time.Time {
	t := c.src()
	// The time is stored before running is set, so a reader that sees
	// the ticker running never gets the time it told when it last ran.
	c.now.Store(&t)
	if c.running.CompareAndSwap(false, true) {
		go c.tick()
	}
	return t
}

// tick keeps c.now current until the clock goes unread.
func (c *coarseClock) tick() {
	t := time.NewTicker(coarseTick)
	defer t.Stop()
	for idle := 0; idle < coarseIdleTicks; {
		<-t.C
		now := c.src()
		c.now.Store(&now)
		if c.read.Swap(false) {
			idle = 0
		} else {
			idle++
		}
	}
	c.running.Store(false)
}

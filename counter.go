package m2mauth

import (
	"sync"
	"sync/atomic"
)

// procCounter is a counter that every core may add to at once without
// passing one cache line back and forth: each processor adds to a counter
// of its own, which a sync.Pool gives back to it. A processor the pool
// has none for (a new one, or after a collection emptied the pool) takes
// the next of a fixed set, in turn; so no count is ever lost, and at
// worst two processors share a counter for a while. An add costs a few
// nanoseconds more than a plain atomic add on one core, and stays that
// cheap on many.
type procCounter struct {
	set  [procCounters]paddedCount
	next atomic.Uint32
	pool sync.Pool
}

// procCounters is the size of a procCounter's set: more than the cores of
// most machines.
const procCounters = 64

type paddedCount struct {
	n atomic.Uint64
	_ [56]byte // a cache line each
}

func newProcCounter() *procCounter {
	c := new(procCounter)
	c.pool.New = func() any { return &c.set[c.next.Add(1)%procCounters] }
	return c
}

// add counts one.
func (c *procCounter) add() {
	p := c.pool.Get().(*paddedCount)
	p.n.Add(1)
	c.pool.Put(p)
}

// load returns the count.
func (c *procCounter) load() uint64 {
	var n uint64
	for i := range c.set {
		n += c.set[i].n.Load()
	}
	return n
}

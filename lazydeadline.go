package m2mauth

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// lazyDeadline is a context with a deadline, like the one
// [context.WithDeadline] returns, that arms its timer only when something
// waits for it: the first call of Done, or a context derived from it.
// A store that answers from memory and never looks at its context costs
// no timer and no allocation beyond the lazyDeadline itself; one that
// does (a database driver) gets a real deadline context at its first
// look, and from then on every method answers from that one.
//
// Err answers without arming: the parent's error, or DeadlineExceeded
// once the deadline has passed. Once it has said so, Done (armed then,
// with a deadline already past) is closed at once.
//
// A detached lazyDeadline (see [lazyPair.detach]) has its parent's values
// but not its cancellation: only its own deadline and its release end it.
type lazyDeadline struct {
	parent   context.Context
	deadline time.Time
	detached bool

	mu       sync.Mutex // serializes arming and release
	released atomic.Bool
	// isArmed is set, once, after armed and cancel are.
	isArmed atomic.Bool
	armed   context.Context
	cancel  context.CancelFunc
}

var _ interface {
	context.Context
	AfterFunc(func()) func() bool
} = (*lazyDeadline)(nil)

// withLazyTimeout returns a context that is done timeout after now, or
// when parent is done. Its release method must be called when the work
// is done, as the cancel function of [context.WithTimeout] must; it is
// a method rather than a returned func so that deferring it allocates
// nothing.
func withLazyTimeout(parent context.Context, timeout time.Duration) *lazyDeadline {
	c := new(lazyDeadline)
	c.init(parent, timeout)
	return c
}

func (c *lazyDeadline) init(parent context.Context, timeout time.Duration) {
	c.parent, c.deadline = parent, systemClock.Now().Add(timeout)
	if d, ok := parent.Deadline(); ok && d.Before(c.deadline) {
		c.deadline = d
	}
}

// lazyPair is a request's lazy deadline, req, and, allocated with it, a
// second one for the work that must end what the request began even when
// its caller has gone (see detach).
type lazyPair struct {
	req, after lazyDeadline
}

// withLazyTimeouts returns a pair whose req is withLazyTimeout(parent,
// timeout). Its release method must be called when the work is done.
func withLazyTimeouts(parent context.Context, timeout time.Duration) *lazyPair {
	p := new(lazyPair)
	p.req.init(parent, timeout)
	return p
}

// detach returns a context with the values of p.req but not its
// cancellation, done timeout after p.req's deadline (or after now, once
// that has passed) or when p is released: for work that must be done
// whether or not the caller hangs up or the request runs out of time,
// such as ending a rate limiter's reservation. It is called at most
// once.
func (p *lazyPair) detach(timeout time.Duration) *lazyDeadline {
	a := &p.after
	from := p.req.deadline
	if now := systemClock.Now(); now.After(from) {
		from = now
	}
	a.parent, a.deadline, a.detached = p.req.parent, from.Add(timeout), true
	return a
}

// release releases both deadlines.
func (p *lazyPair) release() {
	p.req.release()
	p.after.release()
}

// arm makes the real deadline context, once, and returns it.
func (c *lazyDeadline) arm() context.Context {
	if c.isArmed.Load() {
		return c.armed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.isArmed.Load() {
		parent := c.parent
		if c.detached {
			parent = context.WithoutCancel(parent)
		}
		c.armed, c.cancel = context.WithDeadline(parent, c.deadline)
		if c.released.Load() {
			c.cancel()
		}
		c.isArmed.Store(true)
	}
	return c.armed
}

// release stops the timer, if it was armed; the context is then done.
func (c *lazyDeadline) release() {
	c.mu.Lock()
	c.released.Store(true)
	armed := c.isArmed.Load()
	c.mu.Unlock()
	if armed {
		c.cancel()
	}
}

// Deadline returns the deadline.
func (c *lazyDeadline) Deadline() (time.Time, bool) { return c.deadline, true }

// Done arms the deadline and returns the channel closed when it passes,
// when the parent is done, or when the context is released.
func (c *lazyDeadline) Done() <-chan struct{} { return c.arm().Done() }

// Err returns why the context is done, or nil.
func (c *lazyDeadline) Err() error {
	if c.isArmed.Load() {
		return c.armed.Err()
	}
	if !c.detached {
		if err := c.parent.Err(); err != nil {
			return err
		}
	}
	// time.Until reads only the monotonic clock when the deadline has a
	// monotonic reading, as every deadline made here has.
	if time.Until(c.deadline) <= 0 {
		return context.DeadlineExceeded
	}
	if c.released.Load() {
		return context.Canceled
	}
	return nil
}

// Value returns the parent's value for key (or, once armed, the real
// deadline context's, which is how the context package finds the
// cancellation of a context derived from this one).
func (c *lazyDeadline) Value(key any) any {
	switch {
	case c.isArmed.Load():
		return c.armed.Value(key)
	case c.detached:
		// Not the parent's cancellation, which the context package
		// finds through Value (for context.Cause, say).
		return context.WithoutCancel(c.parent).Value(key)
	}
	return c.parent.Value(key)
}

// AfterFunc arms the deadline and runs f in its own goroutine once the
// context is done, as [context.AfterFunc]. The context package uses it
// for contexts derived from this one, so deriving one starts no
// goroutine.
func (c *lazyDeadline) AfterFunc(f func()) func() bool {
	return context.AfterFunc(c.arm(), f)
}

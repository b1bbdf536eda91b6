package m2mauth

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type ctxKey struct{}

// TestLazyDeadline holds the lazily armed deadline to what
// context.WithTimeout promises, however it is looked at first.
func TestLazyDeadline(t *testing.T) {
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	waitDone := func(t *testing.T, ch <-chan struct{}) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal("not done")
		}
	}
	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"unarmed: no error before the deadline, DeadlineExceeded after, then Done is closed", func(t *testing.T) {
			c := withLazyTimeout(context.Background(), 20*time.Millisecond)
			defer c.release()
			require.NoError(t, c.Err())
			require.False(t, c.isArmed.Load(), "Err does not arm")
			time.Sleep(30 * time.Millisecond)
			require.ErrorIs(t, c.Err(), context.DeadlineExceeded)
			require.True(t, closed(c.Done()))
			require.ErrorIs(t, c.Err(), context.DeadlineExceeded)
		}},
		{"armed by Done: closed when the deadline passes", func(t *testing.T) {
			c := withLazyTimeout(context.Background(), 20*time.Millisecond)
			defer c.release()
			done := c.Done()
			require.False(t, closed(done))
			waitDone(t, done)
			require.ErrorIs(t, c.Err(), context.DeadlineExceeded)
		}},
		{"parent canceled: Err says so, armed or not", func(t *testing.T) {
			parent, cancel := context.WithCancel(context.Background())
			c := withLazyTimeout(parent, time.Hour)
			defer c.release()
			cancel()
			require.ErrorIs(t, c.Err(), context.Canceled)
			waitDone(t, c.Done())
			require.ErrorIs(t, c.Err(), context.Canceled)
		}},
		{"parent canceled after arming", func(t *testing.T) {
			parent, cancel := context.WithCancel(context.Background())
			c := withLazyTimeout(parent, time.Hour)
			defer c.release()
			done := c.Done()
			cancel()
			waitDone(t, done)
			require.ErrorIs(t, c.Err(), context.Canceled)
		}},
		{"released: done and canceled, armed or not", func(t *testing.T) {
			c := withLazyTimeout(context.Background(), time.Hour)
			c.release()
			require.ErrorIs(t, c.Err(), context.Canceled)
			require.True(t, closed(c.Done()))

			c = withLazyTimeout(context.Background(), time.Hour)
			done := c.Done()
			c.release()
			require.True(t, closed(done))
			require.ErrorIs(t, c.Err(), context.Canceled)
		}},
		{"deadline: the earlier of its own and the parent's", func(t *testing.T) {
			parent, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			pd, _ := parent.Deadline()
			c := withLazyTimeout(parent, time.Hour)
			defer c.release()
			d, ok := c.Deadline()
			require.True(t, ok)
			require.Equal(t, pd, d)
			c2 := withLazyTimeout(parent, time.Second)
			defer c2.release()
			d2, _ := c2.Deadline()
			require.True(t, d2.Before(pd))
		}},
		{"values pass through, armed or not", func(t *testing.T) {
			parent := context.WithValue(context.Background(), ctxKey{}, "v")
			c := withLazyTimeout(parent, time.Hour)
			defer c.release()
			require.Equal(t, "v", c.Value(ctxKey{}))
			c.Done()
			require.Equal(t, "v", c.Value(ctxKey{}))
		}},
		{"a derived context ends with it, without a goroutine of its own", func(t *testing.T) {
			c := withLazyTimeout(context.Background(), 30*time.Millisecond)
			defer c.release()
			before := runtime.NumGoroutine()
			derived, cancel := context.WithCancel(c)
			defer cancel()
			require.LessOrEqual(t, runtime.NumGoroutine(), before)
			require.True(t, c.isArmed.Load(), "deriving arms it")
			waitDone(t, derived.Done())
			require.ErrorIs(t, derived.Err(), context.DeadlineExceeded)
		}},
		{"released while others look at it", func(t *testing.T) {
			c := withLazyTimeout(context.Background(), time.Hour)
			var wg sync.WaitGroup
			for i := range 8 {
				wg.Go(func() {
					if i%2 == 0 {
						<-c.Done()
					} else {
						for c.Err() == nil {
							runtime.Gosched()
						}
					}
				})
			}
			time.Sleep(5 * time.Millisecond)
			c.release()
			wg.Wait()
			require.ErrorIs(t, c.Err(), context.Canceled)
		}},
		{"detached: the parent's values, not its cancellation, armed or not", func(t *testing.T) {
			parent, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
			p := withLazyTimeouts(parent, time.Hour)
			defer p.release()
			a := p.detach(time.Hour)
			cancel()
			require.ErrorIs(t, p.req.Err(), context.Canceled)
			require.NoError(t, a.Err())
			require.Equal(t, "v", a.Value(ctxKey{}))
			done := a.Done()
			derived, dcancel := context.WithCancel(a)
			defer dcancel()
			require.False(t, closed(done))
			require.False(t, closed(derived.Done()))
			require.NoError(t, a.Err())
			require.Equal(t, "v", a.Value(ctxKey{}))
		}},
		{"detached: done its own timeout after the request's deadline", func(t *testing.T) {
			parent, cancel := context.WithCancel(context.Background())
			p := withLazyTimeouts(parent, 10*time.Millisecond)
			defer p.release()
			a := p.detach(20 * time.Millisecond)
			rd, _ := p.req.Deadline()
			d, ok := a.Deadline()
			require.True(t, ok)
			require.Equal(t, rd.Add(20*time.Millisecond), d)
			cancel()
			time.Sleep(15 * time.Millisecond)
			require.ErrorIs(t, p.req.Err(), context.Canceled)
			require.NoError(t, a.Err(), "the request's deadline passed, not its own")
			waitDone(t, a.Done())
			require.ErrorIs(t, a.Err(), context.DeadlineExceeded)
			require.True(t, time.Now().After(d))
		}},
		{"detached: its own cause, not its parent's", func(t *testing.T) {
			hungUp := errors.New("the caller hung up")
			parent, cancel := context.WithCancelCause(context.Background())
			p := withLazyTimeouts(parent, time.Millisecond)
			defer p.release()
			a := p.detach(time.Millisecond)
			cancel(hungUp)
			require.Nil(t, context.Cause(a))
			time.Sleep(5 * time.Millisecond)
			require.ErrorIs(t, a.Err(), context.DeadlineExceeded)
			require.ErrorIs(t, context.Cause(a), context.DeadlineExceeded)
			waitDone(t, a.Done())
			require.ErrorIs(t, context.Cause(a), context.DeadlineExceeded)
		}},
		{"detached after the request's deadline: a timeout from now", func(t *testing.T) {
			p := withLazyTimeouts(context.Background(), time.Millisecond)
			defer p.release()
			time.Sleep(20 * time.Millisecond)
			require.ErrorIs(t, p.req.Err(), context.DeadlineExceeded)
			before := time.Now()
			a := p.detach(time.Hour)
			require.NoError(t, a.Err())
			d, _ := a.Deadline()
			require.False(t, d.Before(before.Add(time.Hour)), "an hour from the detach, not from the request's deadline")
		}},
		{"detached: released with the pair", func(t *testing.T) {
			p := withLazyTimeouts(context.Background(), time.Hour)
			a := p.detach(time.Hour)
			done := a.Done()
			p.release()
			require.True(t, closed(done))
			require.ErrorIs(t, a.Err(), context.Canceled)
			require.ErrorIs(t, p.req.Err(), context.Canceled)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.run)
	}
}

// BenchmarkLazyDeadline is what a request to a store that answers from
// memory costs in deadlines: one made, asked once whether it has passed,
// and released.
func BenchmarkLazyDeadline(b *testing.B) {
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		c := withLazyTimeout(ctx, time.Second)
		if c.Err() != nil {
			b.Fatal("done at once")
		}
		c.release()
	}
}

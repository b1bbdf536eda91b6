package bench

import (
	"fmt"
	"net/http"
	"runtime"
)

// RetainedPerToken issues n tokens through e in process and returns the
// growth of the live heap (runtime.MemStats.HeapAlloc after a full GC)
// divided by n: the bytes the implementation keeps per issued token.
func RetainedPerToken(e Endpoint, n int) (float64, error) {
	serve := func() error {
		if w := e.Serve(); w.Code != http.StatusOK {
			return fmt.Errorf("bench: %s: status %d: %s", e.Name, w.Code, w.Body)
		}
		return nil
	}
	for range 100 { // warm pools and lazily built state
		if err := serve(); err != nil {
			return 0, err
		}
	}
	before := liveHeap()
	for range n {
		if err := serve(); err != nil {
			return 0, err
		}
	}
	after := liveHeap()
	runtime.KeepAlive(e.Handler)
	return float64(int64(after)-int64(before)) / float64(n), nil
}

// liveHeap returns the heap still reachable after a full collection.
func liveHeap() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

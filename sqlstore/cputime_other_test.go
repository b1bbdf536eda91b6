//go:build !unix

package sqlstore_test

import (
	"testing"
	"time"
)

// cpuTime returns 0: the process's CPU time is read on Unix only.
func cpuTime(*testing.T) time.Duration { return 0 }

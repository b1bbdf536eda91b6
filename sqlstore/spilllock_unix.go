//go:build unix

package sqlstore

import (
	"errors"
	"os"
	"syscall"
)

// lockSpill takes an exclusive advisory lock on the spill file f, held
// until f is closed. It returns errSpillInUse when another open file
// holds it.
func lockSpill(f *os.File) error {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return errSpillInUse
	}
	return err
}

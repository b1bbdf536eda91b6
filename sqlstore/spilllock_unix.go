//go:build unix

package sqlstore

import (
	"errors"
	"os"
	"syscall"
)

// removeSpill removes the spill file f at path, then closes f: removed
// while the lock is held, so that another Auditor that opened the path
// meanwhile finds it gone and opens it anew (see openLockedSpill).
func removeSpill(f *os.File, path string) error {
	err := os.Remove(path)
	return errors.Join(err, f.Close())
}

// lockSpill takes an exclusive advisory lock on the spill file f, held
// until f is closed. It returns errSpillInUse when another open file
// holds it. A file system without such locks (some network file
// systems) leaves the file unlocked, as on systems without flock.
func lockSpill(f *os.File) error {
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); errors.Is(err, syscall.EWOULDBLOCK) {
		return errSpillInUse
	}
	return nil
}

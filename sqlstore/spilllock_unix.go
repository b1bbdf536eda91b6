//go:build unix

package sqlstore

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// spillNoFollow makes opening a spill file fail rather than follow a
// symbolic link at its path.
const spillNoFollow = syscall.O_NOFOLLOW

// checkSpillFile refuses a spill file that another user owns, or that
// other users may read or write: whoever could would read the events, or
// forge some for the table.
func checkSpillFile(fi os.FileInfo) error {
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("open to other users (mode %v): chmod 600 it", perm)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("owned by user %d, not this process's %d", st.Uid, os.Geteuid())
	}
	return nil
}

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

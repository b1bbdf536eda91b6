//go:build !unix

package sqlstore

import (
	"errors"
	"os"
)

// removeSpill closes the spill file f, then removes it: an open file
// cannot be removed everywhere (Windows), and there is no lock to hold.
func removeSpill(f *os.File, path string) error {
	err := f.Close()
	return errors.Join(err, os.Remove(path))
}

// lockSpill does nothing where advisory file locks are not available:
// the documentation's rule (one Auditor per spill file) stands alone.
func lockSpill(*os.File) error { return nil }

//go:build !unix

package sqlstore

import (
	"errors"
	"os"
)

// spillNoFollow is 0 where opening a file cannot refuse to follow a link.
const spillNoFollow = 0

// checkSpillFile checks nothing where file ownership and modes do not
// say who may read the file.
func checkSpillFile(os.FileInfo) error { return nil }

// removeSpill closes the spill file f, then removes it: an open file
// cannot be removed everywhere (Windows), and there is no lock to hold.
func removeSpill(f *os.File, path string) error {
	err := f.Close()
	return errors.Join(err, os.Remove(path))
}

// lockSpill does nothing where advisory file locks are not available:
// the documentation's rule (one Auditor per spill file) stands alone.
func lockSpill(*os.File) error { return nil }

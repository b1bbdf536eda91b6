//go:build !unix

package sqlstore

import "os"

// lockSpill does nothing where advisory file locks are not available:
// the documentation's rule (one Auditor per spill file) stands alone.
func lockSpill(*os.File) error { return nil }

//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package postscale

import "os"

// lockFile is not available here: gateway processes sharing a store are
// not detected on this system.
func lockFile(*os.File, bool) error { return errNoLocks }

//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package postscale

import (
	"errors"
	"os"
	"syscall"
)

// lockFile takes an flock on f without waiting: exclusive, or shared. It
// returns errLocked when another open file holds a conflicting lock. The
// lock lasts until f is closed, or its process ends.
func lockFile(f *os.File, exclusive bool) error {
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EWOULDBLOCK):
			return errLocked
		}
		return &os.PathError{Op: "flock", Path: f.Name(), Err: err}
	}
}

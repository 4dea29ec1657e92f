//go:build unix

package postscale

import (
	"syscall"
	"time"
)

// processCPU is the CPU time (user and system) this process has used so
// far, for benchmarks that report CPU per operation.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return -1
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

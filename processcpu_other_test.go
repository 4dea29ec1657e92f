//go:build !unix

package postscale

import "time"

// processCPU is not measured here: the benchmarks leave out the CPU
// figures a negative duration stands for.
func processCPU() time.Duration { return -1 }

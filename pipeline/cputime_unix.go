//go:build unix

package pipeline

import (
	"syscall"
	"time"
)

// processCPU is the CPU time used so far by every thread of the process (user + system),
// ONNX Runtime's and XLA's threads included.
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}

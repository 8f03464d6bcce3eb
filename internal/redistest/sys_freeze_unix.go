//go:build unix

package redistest

import (
	"os"
	"syscall"
)

// stopSignal and continueSignal freeze and thaw a process (Instance.Freeze
// and Thaw of the process backend).
var (
	stopSignal     os.Signal = syscall.SIGSTOP
	continueSignal os.Signal = syscall.SIGCONT
)

//go:build !linux

package redistest

import (
	"os"
	"syscall"
)

var terminateSignal os.Signal = os.Interrupt

func childSysProcAttr() *syscall.SysProcAttr { return nil }

// processExited is not detected on this platform; waitReady then relies on
// its deadline.
func processExited(*os.Process) bool { return false }

// pidAlive cannot tell on this platform; assume the process is alive so that
// nothing is reaped by mistake.
func pidAlive(int) bool { return true }

// lockFile does not lock on this platform: concurrent test binaries may
// build the same image twice, which is harmless.
func lockFile(string) (func(), error) { return func() {}, nil }

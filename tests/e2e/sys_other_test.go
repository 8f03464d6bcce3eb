//go:build unix && !linux

package e2e

import "syscall"

// workerSysProcAttr puts nothing special on workers: the test's cleanups
// kill them.
func workerSysProcAttr() *syscall.SysProcAttr { return nil }

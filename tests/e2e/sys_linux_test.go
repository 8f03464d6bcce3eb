//go:build linux

package e2e

import "syscall"

// workerSysProcAttr makes the kernel kill a worker when the test binary dies
// without its cleanups (a -timeout panic, a signal): no orphan processes.
func workerSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

//go:build linux

package redistest

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

var terminateSignal os.Signal = syscall.SIGTERM

// childSysProcAttr makes the kernel kill redis-server when the test binary
// dies without tearing it down (timeout panic, signal).
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// processExited reports whether the child p has exited, without reaping it
// (so that exec.Cmd.Wait still works afterwards).
func processExited(p *os.Process) bool {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, p.Pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	if err != nil {
		return err == unix.ECHILD
	}
	return info.Signo != 0
}

// pidAlive reports whether a process with this pid exists.
func pidAlive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || err == unix.EPERM
}

// lockFile takes an exclusive advisory lock on path (created if needed),
// waiting for other processes that hold it. The lock is released by the
// returned function, or by the kernel if the process dies.
func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

//go:build !unix

package redistest

import (
	"errors"
	"os"
)

// stopSignal and continueSignal stand for SIGSTOP and SIGCONT, which this
// platform lacks: Instance.Freeze of the process backend fails on it.
var (
	stopSignal     os.Signal = unsupportedSignal{}
	continueSignal os.Signal = unsupportedSignal{}
)

type unsupportedSignal struct{}

func (unsupportedSignal) Signal() {}

func (unsupportedSignal) String() string { return "SIGSTOP/SIGCONT (" + errNoFreeze.Error() + ")" }

var errNoFreeze = errors.New("not supported on this platform")

//go:build unix

// Package e2e holds the black-box end-to-end tests of segmenter: consumer
// processes (./worker) join, leave, crash and freeze while a producer sends,
// against a Redis container started with dockertest (internal/redistest),
// and every scenario ends with the invariant checker (internal/invariant)
// run over the merged event logs of every process.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/segmenter/segmenter/internal/redistest"
)

func TestMain(m *testing.M) {
	// redistest.Wrap rather than redistest.Main: the worker binary built for
	// this test binary is removed after the run as well.
	code := redistest.Wrap(m).Run()
	if workerDir != "" {
		_ = os.RemoveAll(workerDir)
	}
	// Which Redis served the tests, as the last line before go test's
	// verdict. go test shows it only for a failed package or with -v: in
	// package list mode (go test ./..., or any package argument) it drops
	// the whole output of a passing package, TestMain's included.
	if b := sharedBackend.Load(); b != nil {
		fmt.Println(*b)
	}
	os.Exit(code)
}

// sharedBackend describes the shared Redis server, once a test used it.
var sharedBackend atomic.Pointer[string]

var (
	buildOnce sync.Once
	workerDir string // temporary directory of the worker binary
	workerBin string
	buildErr  error
)

// workerBinary builds ./worker once per test binary (with -race when this
// binary has it, so that races in the SDK show in the workers too) and
// returns its path.
func workerBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		workerDir, buildErr = os.MkdirTemp("", "segmenter-e2e-worker-")
		if buildErr != nil {
			return
		}
		workerBin = filepath.Join(workerDir, "worker")
		args := []string{"build", "-o", workerBin}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "./worker")
		goTool, err := exec.LookPath("go") // go test puts GOROOT/bin first in PATH
		if err != nil {
			buildErr = err
			return
		}
		out, err := exec.Command(goTool, args...).CombinedOutput()
		if err != nil {
			buildErr = &buildError{err: err, out: string(out)}
		}
	})
	if buildErr != nil {
		t.Fatalf("build the worker: %v", buildErr)
	}
	return workerBin
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// Package bench measures segmenter against raw go-redis doing the same
// Redis work, and prints the published table (BENCHMARKS.md).
//
//	make bench         # the full table (several minutes), BENCH=1
//	make bench-smoke   # every figure at a tiny size (CI), BENCH_SMOKE=1
//	go test -bench . -benchmem -run '^$' ./bench/   # the Go benchmarks
//
// The table is TestBenchmarkTable, skipped unless BENCH or BENCH_SMOKE is
// set, so `go test ./...` never runs it. BENCH_FIGURES=1,4,6 runs only the
// listed figures; BENCH_OUT=path also writes the table as markdown (see
// writeMarkdown).
//
// Redis comes from internal/redistest, as for every test of the module:
// REDIS_URL if set, else a dedicated server. This package prefers the
// "process" backend (a redis-server child on loopback) over Docker, whose
// port proxy adds latency to every round trip: TestMain sets
// SEGMENTER_REDIS_BACKEND=process when neither REDIS_URL nor
// SEGMENTER_REDIS_BACKEND is set and redis-server is on PATH.
package bench

import (
	"flag"
	"os"
	"os/exec"
	"testing"

	"github.com/segmenter/segmenter/internal/redistest"
)

func TestMain(m *testing.M) {
	if os.Getenv(redistest.EnvURL) == "" && os.Getenv(redistest.EnvBackend) == "" {
		if _, err := exec.LookPath("redis-server"); err == nil {
			os.Setenv(redistest.EnvBackend, redistest.BackendProcess)
		}
	}
	flag.Parse()
	if b := flag.Lookup("test.bench"); (b != nil && b.Value.String() != "") || tableEnabled() {
		// Start the server up front (it says which once, on stderr), so
		// that it is not logged again under every benchmark.
		redistest.MainWithURL(m)
	}
	redistest.Main(m) // starts nothing unless a test asks
}

// tableEnabled reports whether TestBenchmarkTable runs.
func tableEnabled() bool { return os.Getenv("BENCH") != "" || os.Getenv("BENCH_SMOKE") != "" }

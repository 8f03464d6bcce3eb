# Benchmarks: segmenter next to raw go-redis doing the same Redis work (see
# BENCHMARKS.md and bench/). Included from the Makefile.
#
#   make bench        the full table (a few minutes), printed, and written
#                     between the markers of BENCHMARKS.md (BENCH_OUT)
#   make bench-smoke  every figure at a tiny size, plus one iteration of each
#                     Go benchmark: checks that they still run (CI), not speed
#   make bench-go     the Go benchmarks: go test -bench . -benchmem
#
# Redis comes from internal/redistest as for the tests: REDIS_URL if set,
# else a redis-server child process on loopback (preferred over Docker, whose
# port proxy adds latency), else Docker. BENCH_FIGURES=1,4,6 runs only those
# figures of the table.

GO ?= go

# Where `make bench` writes the table as markdown. An existing file is only
# changed between its bench:table markers; an empty value writes nothing.
BENCH_OUT ?= $(CURDIR)/BENCHMARKS.md
BENCH_TIMEOUT ?= 30m

# The table test runs in the package directory (go test's local directory
# mode), so that its output, the table, is printed even when it passes.
.PHONY: bench
bench: deps
	cd bench && BENCH=1 BENCH_OUT="$(BENCH_OUT)" $(GO) test -run '^TestBenchmarkTable$$' -count=1 -timeout $(BENCH_TIMEOUT)

.PHONY: bench-smoke
bench-smoke: deps
	cd bench && BENCH_SMOKE=1 BENCH_OUT= $(GO) test -run '^TestBenchmarkTable$$' -count=1 -timeout 5m
	$(GO) test -run '^$$' -bench . -benchtime 1x -count=1 -timeout 5m ./bench/

.PHONY: bench-go
bench-go: deps
	$(GO) test -run '^$$' -bench . -benchmem -count=1 -timeout $(BENCH_TIMEOUT) ./bench/

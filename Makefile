# segmenter: build, test and demo targets. `make help` lists them.

include Makefile.proto.mk
include Makefile.bench.mk

GO ?= go
GOFMT ?= gofmt

# The full suite: unit, integration and end-to-end tests, with the race
# detector, against real Redis (see internal/redistest for where it comes from).
TEST_FLAGS ?= -race -count=1 -timeout 30m

# Debian packages the tests need, as "command:package" pairs.
DEPS := redis-server:redis-server redis-cli:redis-tools protoc:protobuf-compiler

# Nested modules (adapters with large dependencies, each with its own go.mod
# that replaces the core module with ../..): every directory below the root
# holding a go.mod. make test vets and tests each of them too.
NESTED_MODULES := $(shell find . -mindepth 2 -name go.mod -not -path './.git/*' -not -path './tmp/*' -exec dirname {} \; | sort)

.DEFAULT_GOAL := help

.PHONY: help
help:
	@echo "Targets:"
	@echo "  make test        vet, gofmt check, then every test with -race against real Redis (runs deps first)"
	@echo "  make test-modules vet and test the nested modules (adapters with their own go.mod)"
	@echo "  make test-short  the tests without -race, in -short mode (quick loop)"
	@echo "  make lint        go vet and the gofmt check"
	@echo "  make demo        run the demo (embedded Redis unless REDIS_URL is set)"
	@echo "  make deps        install redis-server and protoc with apt-get when missing"
	@echo "  make proto       regenerate contracts/messages.pb.go (needs protoc)"
	@echo "  make bench       benchmark table vs raw go-redis (~3.5 min); rewrites the table in BENCHMARKS.md"
	@echo "  make bench-smoke every figure at a tiny size + 1x of each Go benchmark (CI: they still run)"
	@echo "  make measure     rebalance timings with worker processes: hand-over, SIGKILL takeover, partitions moved"
	@echo "  make chaos       the soak: RUNS randomized fault schedules (SEED replays them, ONLY=N one run), checked; figures at the end"
	@echo "  make chaos-ci    the short fixed-seed soak CI runs"

# deps installs what a fresh Debian machine lacks for the tests, and nothing
# when everything is there. It uses sudo only when not root.
.PHONY: deps
deps:
	@set -e; missing=""; \
	for dep in $(DEPS); do \
		command -v "$${dep%%:*}" >/dev/null 2>&1 || missing="$$missing $${dep#*:}"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "deps: installing$$missing"; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "deps: apt-get not found: install$$missing yourself" >&2; exit 1; \
	fi; \
	sudo=""; \
	if [ "$$(id -u)" -ne 0 ]; then \
		if command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
		else echo "deps: not root and no sudo: install$$missing as root" >&2; exit 1; fi; \
	fi; \
	$$sudo apt-get update; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing

.PHONY: demo
demo:
	$(GO) run ./cmd/segmenter demo

.PHONY: vet
vet:
	$(GO) vet ./...
	@set -e; for m in $(NESTED_MODULES); do echo "(cd $$m && $(GO) vet ./...)"; (cd $$m && $(GO) vet ./...); done

# fmt-check fails listing the files gofmt would change.
.PHONY: fmt-check
fmt-check:
	@files="$$($(GOFMT) -l .)"; \
	if [ -n "$$files" ]; then \
		echo "gofmt: these files are not formatted (run gofmt -w on them):"; \
		echo "$$files"; \
		exit 1; \
	fi

.PHONY: lint
lint: vet fmt-check

# The e2e tests run apart, verbose, so that the log says which Redis backend
# served them (a passing package's output is hidden otherwise); only the
# backend line and the results are shown, or the whole log on a failure.
E2E_PKG := ./tests/e2e/

.PHONY: test
test: deps lint
	$(GO) test $(TEST_FLAGS) $$($(GO) list ./... | grep -v '/tests/e2e$$')
	@$(MAKE) --no-print-directory test-modules
	@log=$$(mktemp); status=0; \
	echo "$(GO) test $(TEST_FLAGS) -v $(E2E_PKG)"; \
	$(GO) test $(TEST_FLAGS) -v $(E2E_PKG) >"$$log" 2>&1 || status=$$?; \
	grep -E '^(e2e: redis backend|--- FAIL|ok|FAIL|panic)' "$$log"; \
	if [ $$status -ne 0 ]; then cat "$$log"; fi; rm -f "$$log"; exit $$status

# test-modules runs the tests of every nested module, with the same flags.
.PHONY: test-modules
test-modules:
	@set -e; for m in $(NESTED_MODULES); do \
		echo "(cd $$m && $(GO) test $(TEST_FLAGS) ./...)"; \
		(cd $$m && $(GO) test $(TEST_FLAGS) ./...); \
	done

# measure prints the e2e measurements of rebalancing (worker processes,
# default timings): graceful hand-over, SIGKILL to takeover, and partitions
# moved per membership change against the minimum. It asserts only that the
# runs worked; the figures are printed.
.PHONY: measure
measure: deps
	@log=$$(mktemp); status=0; \
	echo "$(GO) test -count=1 -run '^TestMeasurements$$' -v $(E2E_PKG)"; \
	$(GO) test -count=1 -run '^TestMeasurements$$' -v $(E2E_PKG) >"$$log" 2>&1 || status=$$?; \
	grep -vE '^ +measure_test.go:[0-9]+: invariant log|^        [0-9]+ (events|messages|consumers)|^        partition ' "$$log"; \
	rm -f "$$log"; exit $$status

.PHONY: test-short
test-short:
	$(GO) test -short -count=1 ./...

# chaos runs the soak (TestSoak in tests/e2e): RUNS runs, each of a
# schedule of faults drawn from SEED (0: from the clock) and printed, played
# for DURATION against worker processes and a Redis of its own (AOF,
# appendfsync always) while a producer sends; each run ends with the
# invariant checker over the merged log of every process. It prints every
# schedule, every run's figures and a table of all of them (also written to
# CHAOS_REPORT when set), and fails on any violation. Replay a run with the
# SEED it printed and ONLY=N. Bounded: every wait has a deadline, and the
# whole soak a timeout of 2 minutes per run.
SEED ?= 0
RUNS ?= 10
ONLY ?= -1
DURATION ?= 15s
CHAOS_REPORT ?=

.PHONY: chaos
chaos: deps
	$(GO) test -race -count=1 -timeout $$(( $(RUNS) * 120 + 300 ))s -run '^TestSoak$$' -v $(E2E_PKG) \
		-args -soak.runs=$(RUNS) -soak.seed=$(SEED) -soak.only=$(ONLY) -soak.duration=$(DURATION) -soak.report='$(CHAOS_REPORT)'

# chaos-ci is the short soak of CI: a fixed seed, six runs of 12s (about
# two minutes).
.PHONY: chaos-ci
chaos-ci:
	@$(MAKE) --no-print-directory chaos SEED=1 RUNS=6 DURATION=12s

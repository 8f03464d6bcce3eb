package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/internal/redistest"
)

// mode holds the sizes of one table run: full (make bench) or smoke (make
// bench-smoke, CI: checks that every figure still runs, not how fast).
type mode struct {
	name          string
	smoke         bool
	runs          int // repetitions of a throughput figure; the median is shown
	sendN         int // messages of one batch-send run
	singleN       int // messages of one single-send run
	backlogN      int // messages of the drained backlog
	latencyDur    time.Duration
	latencyWarm   time.Duration // the first samples are not counted
	handoverReps  int
	crashReps     int
	crashCfg      *segmenter.Config // nil: the defaults
	joinReps      int
	joinSteady    time.Duration
	groupMembers  int
	groupParts    int
	groupCfg      *segmenter.Config
	idleWindow    time.Duration
	memPartitions int
}

func fullMode() mode {
	return mode{
		name: "full", runs: 5,
		sendN: 200_000, singleN: 20_000, backlogN: 100_000,
		latencyDur: 10 * time.Second, latencyWarm: time.Second,
		handoverReps: 5, crashReps: 2, joinReps: 3, joinSteady: 2 * time.Second,
		groupMembers: 64, groupParts: 1024, groupCfg: &segmenter.Config{SessionTimeout: 3 * time.Second},
		idleWindow: 10 * time.Second, memPartitions: 1024,
	}
}

func smokeMode() mode {
	short := &segmenter.Config{SessionTimeout: 600 * time.Millisecond, HeartbeatInterval: 200 * time.Millisecond}
	return mode{
		name: "smoke", smoke: true, runs: 1,
		sendN: 2000, singleN: 2000, backlogN: 2000,
		latencyDur: time.Second, latencyWarm: 200 * time.Millisecond,
		handoverReps: 1, crashReps: 1, crashCfg: short, joinReps: 1, joinSteady: 300 * time.Millisecond,
		groupMembers: 8, groupParts: 128, groupCfg: short,
		idleWindow: time.Second, memPartitions: 1024,
	}
}

// env is what every figure gets.
type env struct {
	m   mode
	tbl *table
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// TestBenchmarkTable runs every figure and prints the table. It measures,
// it does not check: a target not met is a "NO" in the table, not a
// failure; a figure that cannot run fails the test.
func TestBenchmarkTable(t *testing.T) {
	var m mode
	switch {
	case os.Getenv("BENCH_SMOKE") != "":
		m = smokeMode()
	case os.Getenv("BENCH") != "":
		m = fullMode()
	default:
		t.Skip("the benchmark table takes minutes and measures rather than checks, so `go test ./...` skips it: " +
			"`make bench` (BENCH=1) publishes it, `make bench-smoke` (BENCH_SMOKE=1, the CI path) checks that it still runs")
	}
	only := map[string]bool{}
	for _, f := range strings.Split(os.Getenv("BENCH_FIGURES"), ",") {
		if f = strings.TrimSpace(f); f != "" {
			only[f] = true
		}
	}
	e := &env{m: m, tbl: &table{}}
	e.tbl.header = header(t, m)
	figures := []struct {
		id string
		fn func(*testing.T, *env)
	}{
		{"1", figSendBatch},
		{"2", figSend},
		{"3", figSendBatchConcurrent},
		{"4", figDrain}, // 4 and 5 share the backlog and the raw drain
		{"6", figLatency},
		{"7", figHandover},
		{"8", figCrash},
		{"9", figJoin},
		{"10", figGroup},
		{"11", figAllocs},
		{"12", figCluster},
	}
	start := time.Now()
	for _, f := range figures {
		if len(only) > 0 && !only[f.id] && !(f.id == "4" && only["5"]) {
			continue
		}
		t0 := time.Now()
		progress("figure %s ...", f.id)
		t.Run("figure"+f.id, func(t *testing.T) { f.fn(t, e) })
		progress("figure %s done in %v", f.id, time.Since(t0).Round(time.Millisecond))
	}
	e.tbl.note("table run took %v; load average at the end: %s (other processes on the machine add noise)", time.Since(start).Round(time.Second), loadAvg())
	fmt.Println()
	e.tbl.text(os.Stdout)
	if out := os.Getenv("BENCH_OUT"); out != "" {
		if err := writeMarkdown(out, e.tbl.markdown()); err != nil {
			t.Errorf("BENCH_OUT: %v", err)
		} else {
			progress("table written to %s", out)
		}
	}
}

// header describes the run: machine, Go, Redis and its backend, commit.
func header(t *testing.T, m mode) []string {
	ctx := context.Background()
	srv := redistest.Server(t)
	rdb := srv.Client(t)
	info, err := serverInfo(ctx, rdb, "server")
	if err != nil {
		t.Fatal(err)
	}
	mem, err := serverInfo(ctx, rdb, "memory")
	if err != nil {
		t.Fatal(err)
	}
	persistence, err := serverInfo(ctx, rdb, "persistence")
	if err != nil {
		t.Fatal(err)
	}
	aof := "AOF off"
	if persistence["aof_enabled"] == "1" {
		aof = "AOF on"
	}
	h := []string{
		fmt.Sprintf("segmenter benchmarks, %s mode, %s, commit %s", m.name, time.Now().UTC().Format("2006-01-02 15:04 MST"), commit()),
		fmt.Sprintf("machine: %s, %d cores (GOMAXPROCS %d) shared by the client and Redis, %s; load average at the start: %s", cpuModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), memTotal(), loadAvg()),
		fmt.Sprintf("client: %s %s/%s, go-redis %s (RESP3, default pool)", runtime.Version(), runtime.GOOS, runtime.GOARCH, goRedisVersion()),
		fmt.Sprintf("redis: Redis %s (%s, %s), %s backend (%s) at %s", info["redis_version"], mem["mem_allocator"], aof, srv.Backend, srv.Detail, srv.Addr),
		fmt.Sprintf("workload: payload %d B, %d partitions, batch %d, %d keys; send figures trim MAXLEN ~ %d per partition; throughput = median of %d runs, SDK and raw interleaved",
			payloadSize, partitions, batchSize, numKeys, sendMaxLen, m.runs),
	}
	return h
}

func commit() string {
	root := moduleRoot()
	out, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += " + uncommitted changes"
	}
	return c
}

// goRedisVersion reads the go-redis version the module requires.
func goRedisVersion() string {
	b, err := os.ReadFile(filepath.Join(moduleRoot(), "go.mod"))
	if err != nil {
		return "v9"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "github.com/redis/go-redis/v9" {
			return f[1]
		}
	}
	return "v9"
}

func moduleRoot() string {
	wd, _ := os.Getwd()
	return filepath.Dir(wd) // this package is <root>/bench
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

// loadAvg returns the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func memTotal() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "memory unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return fmt.Sprintf("%.0f GiB RAM", float64(kb)/(1<<20))
		}
	}
	return "memory unknown"
}

// timed is one run of a workload: how long its measured part took.
type timed func() (time.Duration, error)

// rates runs each workload e.m.runs times, interleaved (A B A B ...), and
// returns the median rate of each in messages per second.
func rates(t *testing.T, runs, n int, fs ...timed) []float64 {
	t.Helper()
	rs := make([][]float64, len(fs))
	for range runs {
		for i, f := range fs {
			d, err := f()
			if err != nil {
				t.Fatal(err)
			}
			rs[i] = append(rs[i], float64(n)/d.Seconds())
		}
	}
	out := make([]float64, len(fs))
	for i := range rs {
		out[i] = median(rs[i])
	}
	return out
}

func timeIt(f func() error) timed {
	return func() (time.Duration, error) {
		start := time.Now()
		err := f()
		return time.Since(start), err
	}
}

func throughputRow(e *env, fig, name string, sdk, raw, target float64) {
	r := row{fig: fig, name: name, sdk: rate(sdk), raw: rate(raw), ratio: ratio(sdk / raw)}
	if target > 0 {
		r.target = "≥ " + ratio(target)
		r.met = met(sdk/raw >= target)
	}
	e.tbl.add(r)
}

// sendFixture returns a fixture whose SDK and raw streams are already at
// their MAXLEN ~ (so that every measured XADD trims, as in production) and
// whose connections and scripts are warm.
func sendFixture(t *testing.T, e *env) *fixture {
	ctx := context.Background()
	f := newFixture(t, nil, partitions, sendMaxLen, nil)
	warm := partitions * sendMaxLen
	if e.m.smoke {
		warm = e.m.sendN
	}
	if err := f.sdkSendBatch(ctx, sdkBatches(), warm, 1); err != nil {
		t.Fatal(err)
	}
	if err := f.rawSendBatch(ctx, warm, 1); err != nil {
		t.Fatal(err)
	}
	return f
}

// Figure 1: SendBatch, 1 goroutine, batches of 100, vs a pipeline of 100
// XADD MAXLEN ~.
func figSendBatch(t *testing.T, e *env) {
	ctx := context.Background()
	f := sendFixture(t, e)
	batches := sdkBatches()
	n := e.m.sendN
	var cs, cr cost
	r := rates(t, e.m.runs, n,
		f.costed(n, &cs, timeIt(func() error { return f.sdkSendBatch(ctx, batches, n, 1) })),
		f.costed(n, &cr, timeIt(func() error { return f.rawSendBatch(ctx, n, 1) })))
	throughputRow(e, "1", "SendBatch ×100, 1 goroutine vs pipeline of 100 XADD", r[0], r[1], 0.9)
	e.tbl.note("figure 1, last run: SDK %v; raw %v", cs, cr)
}

// Figure 2: Send, 1 and 4 goroutines, vs a single XADD.
func figSend(t *testing.T, e *env) {
	ctx := context.Background()
	f := sendFixture(t, e)
	msgs := sdkMessages(0, numKeys)
	n := e.m.singleN
	for _, g := range []int{1, 4} {
		var cs, cr cost
		r := rates(t, e.m.runs, n,
			f.costed(n, &cs, timeIt(func() error { return f.sdkSend(ctx, msgs, n, g) })),
			f.costed(n, &cr, timeIt(func() error { return f.rawSend(ctx, n, g) })))
		throughputRow(e, "2", fmt.Sprintf("Send, %d goroutine%s vs XADD", g, map[bool]string{true: "s"}[g > 1]), r[0], r[1], 0)
		e.tbl.note("figure 2, %d goroutine%s, last run: SDK %v; raw %v", g, map[bool]string{true: "s"}[g > 1], cs, cr)
	}
}

// Figure 3: SendBatch from 4 goroutines (4 pipelines in flight) vs 4
// goroutines pipelining.
func figSendBatchConcurrent(t *testing.T, e *env) {
	ctx := context.Background()
	f := sendFixture(t, e)
	batches := sdkBatches()
	n := 2 * e.m.sendN
	var cs, cr cost
	r := rates(t, e.m.runs, n,
		f.costed(n, &cs, timeIt(func() error { return f.sdkSendBatch(ctx, batches, n, 4) })),
		f.costed(n, &cr, timeIt(func() error { return f.rawSendBatch(ctx, n, 4) })))
	throughputRow(e, "3", "SendBatch ×100, 4 goroutines vs 4 pipelines", r[0], r[1], 0.9)
	e.tbl.note("figure 3, last run: SDK %v; raw %v", cs, cr)
}

// Figures 4 and 5: draining a backlog of the 8 partitions with 1 consumer:
// Read+Ack (batch 100, and batch 800), and Run with a no-op handler
// (sequential, and WithKeyConcurrency(64)), against the raw drain:
// XREADGROUP over the 8 streams then one pipeline of one XACK per stream.
// Each run drains the same backlog through a new group.
func figDrain(t *testing.T, e *env) {
	ctx := context.Background()
	f := newFixture(t, nil, partitions, 0, nil)
	n := e.m.backlogN
	if err := f.fillBacklog(ctx, n); err != nil {
		t.Fatal(err)
	}
	groups := 0
	group := func(kind string) string { groups++; return kind + strconv.Itoa(groups) }

	readAck := func(batch int) timed {
		return func() (time.Duration, error) {
			c, err := f.consumer(ctx, group("sdk"), batch)
			if err != nil {
				return 0, err
			}
			defer shutdown(c)
			start := time.Now()
			err = sdkDrainReadAck(ctx, c, n)
			return time.Since(start), err
		}
	}
	raw := func(count int64) timed {
		return func() (time.Duration, error) {
			g := group("raw")
			if err := f.rawGroup(ctx, g); err != nil {
				return 0, err
			}
			start := time.Now()
			err := f.rawDrain(ctx, g, n, count)
			return time.Since(start), err
		}
	}
	run := func(opts ...segmenter.RunOption) timed {
		return func() (time.Duration, error) {
			acks := newAckCounter(n)
			c, err := f.consumer(ctx, group("run"), batchSize, segmenter.WithHooks(acks))
			if err != nil {
				return 0, err
			}
			defer shutdown(c)
			return sdkRunDrain(ctx, c, acks, 5*time.Minute, opts...)
		}
	}
	// Warm-up: one drain each, not counted.
	countPer := int64((batchSize + partitions - 1) / partitions) // 13: a batch of ~100 over 8 streams
	rates(t, 1, n, readAck(batchSize), raw(countPer))

	cs := make([]cost, 6)
	r := rates(t, e.m.runs, n,
		f.costed(n, &cs[0], raw(countPer)), f.costed(n, &cs[1], readAck(batchSize)),
		f.costed(n, &cs[2], raw(batchSize)), f.costed(n, &cs[3], readAck(batchSize*partitions)),
		f.costed(n, &cs[4], run()), f.costed(n, &cs[5], run(segmenter.WithKeyConcurrency(64))))
	rawDrain := r[0]
	throughputRow(e, "4", "Read+Ack drain, batch 100 vs XREADGROUP+XACK", r[1], rawDrain, 0.85)
	throughputRow(e, "4b", "Read+Ack drain, batch 800 vs COUNT 100 ×8", r[3], r[2], 0.85)
	throughputRow(e, "5", "Run no-op, sequential vs raw drain", r[4], rawDrain, 0.8)
	throughputRow(e, "5b", "Run no-op, WithKeyConcurrency(64) vs raw drain", r[5], rawDrain, 0.7)
	e.tbl.note("figures 4-5: a backlog of %d messages over %d partitions (%d keys), drained by 1 consumer through a new group per run; "+
		"the SDK's batch of 100 is split 13/13/13/13/12/12/12/12 over the partitions, so the raw baseline reads COUNT 13 per stream; "+
		"4b is the literal `XREADGROUP COUNT 100` over 8 streams (up to 800 per call) against the SDK at batch 800", n, partitions, numKeys)
	e.tbl.note("figure 4, last run: SDK %v; raw %v", cs[1], cs[0])
	e.tbl.note("figure 4b, last run: SDK %v; raw %v", cs[3], cs[2])
	e.tbl.note("figure 5, last run: %v", cs[4])
	e.tbl.note("figure 5b, last run: %v", cs[5])
}

// Figure 11: client allocations per message, and the heap of a consumer
// holding 1,024 partitions.
func figAllocs(t *testing.T, e *env) {
	ctx := context.Background()

	// SendBatch vs the raw pipeline.
	f := newFixture(t, nil, partitions, sendMaxLen, nil)
	batches := sdkBatches()
	const rounds = 50
	i := 0
	sdkA, sdkB := allocsPerMessage(rounds, batchSize, func() {
		if _, err := f.st.SendBatch(ctx, batches[i%len(batches)]); err != nil {
			t.Fatal(err)
		}
		i++
	})
	rawA, rawB := allocsPerMessage(rounds, batchSize, func() {
		if err := f.rawSendBatch(ctx, batchSize, 1); err != nil {
			t.Fatal(err)
		}
	})
	e.tbl.add(row{fig: "11", name: "allocs/msg, SendBatch ×100 vs pipeline",
		sdk: allocs(sdkA, sdkB), raw: allocs(rawA, rawB), ratio: ratio(sdkA / rawA)})

	// Read+Ack vs XREADGROUP + XACK.
	d := newFixture(t, nil, partitions, 0, nil)
	if err := d.fillBacklog(ctx, 2*(rounds+1)*batchSize); err != nil {
		t.Fatal(err)
	}
	c, err := d.consumer(ctx, "allocs", batchSize)
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(c)
	sdkA, sdkB = allocsPerMessage(rounds, batchSize, func() {
		msgs, err := c.Read(ctx, time.Second)
		if err == nil {
			err = c.Ack(ctx, msgs...)
		}
		if err != nil || len(msgs) != batchSize {
			t.Fatalf("read %d messages: %v", len(msgs), err)
		}
	})
	if err := d.rawGroup(ctx, "rawallocs"); err != nil {
		t.Fatal(err)
	}
	// COUNT 13 over 8 streams reads 104 messages per call.
	rawA, rawB = allocsPerMessage(rounds, 13*partitions, func() {
		if err := d.rawDrain(ctx, "rawallocs", 13*partitions, 13); err != nil {
			t.Fatal(err)
		}
	})
	e.tbl.add(row{fig: "11", name: "allocs/msg, Read+Ack vs XREADGROUP+XACK",
		sdk: allocs(sdkA, sdkB), raw: allocs(rawA, rawB), ratio: ratio(sdkA / rawA)})

	// A consumer holding memPartitions partitions.
	P := e.m.memPartitions
	rdb := newClient(t)
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	before := heapInUse()
	mf := newFixture(t, rdb, P, 0, nil)
	mc, err := mf.consumer(ctx, "mem", batchSize)
	if err != nil {
		t.Fatal(err)
	}
	after := heapInUse()
	runtime.KeepAlive(mf)
	shutdown(mc)
	grow := float64(after.inuse) - float64(before.inuse)
	live := float64(after.alloc) - float64(before.alloc)
	e.tbl.add(row{fig: "11", name: fmt.Sprintf("consumer heap, %d partitions held", P),
		sdk: fmt.Sprintf("%.2f MiB (%.0f B/partition)", grow/(1<<20), live/float64(P))})
	e.tbl.note("figure 11: allocations are runtime.MemStats.Mallocs/TotalAlloc deltas over %d batches divided by the messages (what testing.AllocsPerRun counts), background goroutines included; "+
		"the heap row is the HeapInuse (and HeapAlloc, per partition) growth after runtime.GC from before the Segmenter to a consumer holding all %d leases, on an already connected client", rounds, P)
}

// allocsPerMessage runs f rounds times (after one warm-up call) and returns
// the allocations and bytes allocated per message, f handling perRound
// messages.
func allocsPerMessage(rounds, perRound int, f func()) (allocs, bytes float64) {
	f()
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	for range rounds {
		f()
	}
	runtime.ReadMemStats(&b)
	msgs := float64(rounds * perRound)
	return float64(b.Mallocs-a.Mallocs) / msgs, float64(b.TotalAlloc-a.TotalAlloc) / msgs
}

type heap struct{ inuse, alloc uint64 }

func heapInUse() heap {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return heap{inuse: m.HeapInuse, alloc: m.HeapAlloc}
}

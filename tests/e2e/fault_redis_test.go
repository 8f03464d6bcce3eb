//go:build unix

package e2e

// The fault matrix, Redis itself: each test has a Redis server of its own
// (redistest.Standalone) to pause, freeze, restart, flush or fill.

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
	"github.com/segmenter/segmenter/internal/redistest"
)

// Redis runs out of memory (maxmemory with the noeviction policy) while a
// producer sends: the producer gets a clear error (Redis' OOM, with the
// stream named), while the consumers keep going: they drain what was sent,
// a consumer killed meanwhile has its partitions taken over, and a new one
// joins, all while Redis still refuses new messages.
func TestFaultMaxmemoryNoeviction(t *testing.T) {
	inst := redistest.Standalone(t, redistest.WithArgs("--maxmemory", "16mb", "--maxmemory-policy", "noeviction"))
	e := newEnvOn(t, &inst.Info)
	ctx := context.Background()
	const P = 4
	st := e.stream(defaultStream, P)
	o := func(name string) workerOpts { return workerOpts{name: name, work: 2 * time.Millisecond} }
	w1, w2, w3 := e.startWorker(o("w1")), e.startWorker(o("w2")), e.startWorker(o("w3"))
	e.waitBalanced(st.Name(), P, w1, w2, w3)
	// One message per send: a failed send added nothing.
	prod := e.startPaddedProducer(st, 40, 0, 1, time.Millisecond, 8000)
	select {
	case <-prod.done:
	case <-time.After(2 * hang):
		t.Fatalf("the producer never hit maxmemory (%d sent)", prod.sent.Load())
	}
	sendErr := prod.err
	if !redis.HasErrorPrefix(sendErr, "OOM") || !strings.Contains(sendErr.Error(), `stream "orders"`) {
		t.Fatalf("the producer stopped on %v, want Redis' OOM error naming the stream", sendErr)
	}
	prod.err = nil
	t.Logf("%d messages sent before: %v", prod.sent.Load(), sendErr)
	// Acks free a little memory (the pending entries): with maxmemory
	// set 2MB below what Redis uses now, it stays out of memory however
	// much the consumers ack.
	used := usedMemory(t, e.rdb)
	if err := e.rdb.ConfigSet(ctx, "maxmemory", strconv.FormatInt(max(used-2<<20, 1<<20), 10)).Err(); err != nil {
		t.Fatal(err)
	}
	stillFull := func(when string) {
		t.Helper()
		_, err := st.Send(ctx, &contracts.PMessage{PartitionKey: "probe", Data: []byte(strings.Repeat("x", 8000))})
		if !redis.HasErrorPrefix(err, "OOM") {
			t.Fatalf("%s: a send got %v, want OOM: the test no longer runs out of memory", when, err)
		}
	}
	stillFull("after the producer stopped")

	e.waitAllAcked(st, defaultGroup)
	stillFull("once the consumers drained the stream")
	w2.kill()
	e.waitBalanced(st.Name(), P, w1, w3)
	w4 := e.startWorker(o("w4"))
	e.waitBalanced(st.Name(), P, w1, w3, w4)
	stillFull("after a consumer died and another joined")
	stopAll(t, w1, w3, w4)
	opts := invariant.Options{MaxProcessingTime: 10 * time.Second}
	evs := e.checkWith(st.Name(), defaultGroup, opts, prod)
	e.logFigures(evs, opts, []*worker{w1, w2, w3, w4}, nil, nil)
}

// usedMemory returns Redis' used_memory.
func usedMemory(t *testing.T, rdb redis.UniversalClient) int64 {
	t.Helper()
	info, err := rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no used_memory in INFO memory:\n%s", info)
	return 0
}

// A Redis whose maxmemory-policy may evict any key (allkeys-lru) is
// reported when a consumer starts: a warning in its log and
// ErrEvictionPolicy to OnError. Consumption itself goes on (nothing was
// evicted here).
func TestFaultMaxmemoryAllkeysLRUWarns(t *testing.T) {
	inst := redistest.Standalone(t, redistest.WithArgs("--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"))
	e := newEnvOn(t, &inst.Info)
	const P = 4
	st := e.stream(defaultStream, P)
	w := e.startWorker(workerOpts{name: "w1"})
	e.waitBalanced(st.Name(), P, w)
	poll(t, hang, 20*time.Millisecond, func() bool {
		for _, err := range w.BackgroundErrors() {
			if strings.Contains(err, "Redis may evict the SDK's keys") && strings.Contains(err, "allkeys-lru") {
				return true
			}
		}
		return false
	}, "the consumer did not report the eviction policy: %v", lazy(func() string { return strings.Join(w.BackgroundErrors(), "; ") }))
	if !strings.Contains(w.sdkLog(), `"level":"WARN","msg":"Redis may evict the SDK's keys`) {
		t.Errorf("the SDK log has no warning of the eviction policy:\n%s", w.sdkLog())
	}
	prod := e.startProducer(st, 40, 1000, 20, 5*time.Millisecond)
	prod.finish(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, w)
	opts := invariant.Options{MaxProcessingTime: 10 * time.Second}
	evs := e.checkWith(st.Name(), defaultGroup, opts, prod)
	e.logFigures(evs, opts, []*worker{w}, nil, nil)
}

// Redis stops serving for two session timeouts while a producer sends:
// CLIENT PAUSE ALL (every client waits), or the server process frozen
// (SIGSTOP: its connections stay open, nothing answers). Leases and
// sessions expire meanwhile by Redis' own clock, all at once; when it comes
// back, the commands waiting run and the group settles. Nothing is lost or
// reordered and no partition had two owners at once.
func TestFaultRedisStopsServing(t *testing.T) {
	for _, how := range []string{"CLIENT PAUSE ALL", "SIGSTOP"} {
		t.Run(how, func(t *testing.T) {
			inst := redistest.Standalone(t)
			e := newEnvOn(t, &inst.Info)
			const P = 8
			st := e.stream(defaultStream, P)
			prod := e.startProducer(st, 100, 0, 10, 10*time.Millisecond)
			ws := []*worker{
				e.startWorker(workerOpts{name: "w1", work: time.Millisecond}),
				e.startWorker(workerOpts{name: "w2", work: time.Millisecond}),
				e.startWorker(workerOpts{name: "w3", work: time.Millisecond}),
			}
			e.waitBalanced(st.Name(), P, ws...)
			prod.waitSent(t, 1000)
			// Past the session, short of go-redis' read timeout (3s): the
			// clients wait rather than give up.
			const outage = 2*testSession + 500*time.Millisecond
			from := time.Now()
			if how == "SIGSTOP" {
				inst.Freeze()
				time.Sleep(outage) // the outage under test
				inst.Thaw()
			} else {
				pauser := inst.Client(t)
				if err := pauser.Do(context.Background(), "CLIENT", "PAUSE", outage.Milliseconds(), "ALL").Err(); err != nil {
					t.Fatal(err)
				}
			}
			prod.waitSent(t, int(prod.sent.Load())+1000)
			if waited := time.Since(from); waited < outage {
				t.Fatalf("the producer went on %v after the outage began, before its end: Redis did not stop serving", waited)
			}
			e.waitBalanced(st.Name(), P, ws...)
			prod.stop(t)
			e.waitAllAcked(st, defaultGroup)
			stopAll(t, ws...)
			opts := invariant.Options{MaxProcessingTime: 10 * time.Second}
			evs := e.checkWith(st.Name(), defaultGroup, opts, prod)
			e.logFigures(evs, opts, ws, nil, nil)
		})
	}
}

// SCRIPT FLUSH empties Redis' script cache every 100ms for two seconds
// while consumers (Read and Ack, and Run) work: every script call refused
// with NOSCRIPT is sent again with its source, and nothing is lost or
// reordered.
func TestFaultScriptFlush(t *testing.T) {
	inst := redistest.Standalone(t)
	e := newEnvOn(t, &inst.Info)
	ctx := context.Background()
	const P = 8
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 100, 0, 10, 10*time.Millisecond)
	ws := []*worker{
		e.startWorker(workerOpts{name: "w1", work: time.Millisecond}),
		e.startWorker(workerOpts{name: "w2", mode: "run", work: time.Millisecond}),
		e.startWorker(workerOpts{name: "w3", mode: "run", work: time.Millisecond}),
	}
	e.waitBalanced(st.Name(), P, ws...)
	prod.waitSent(t, 500)
	before := noScripts(t, e.rdb)
	for range 20 {
		if err := e.rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		prod.waitSent(t, int(prod.sent.Load())+100) // 100ms at 1000 messages/s
	}
	// A worker killed and one joining now: takeover scripts after a flush.
	ws[0].kill()
	if err := e.rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	ws[0] = e.startWorker(workerOpts{name: "w4", work: time.Millisecond})
	e.waitBalanced(st.Name(), P, ws...)
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, ws...)
	refused := noScripts(t, e.rdb) - before
	if refused == 0 {
		t.Fatal("no script call was refused with NOSCRIPT: the flushes tested nothing")
	}
	opts := invariant.Options{MaxProcessingTime: 10 * time.Second}
	evs := e.checkWith(st.Name(), defaultGroup, opts, prod)
	t.Logf("%d script calls refused with NOSCRIPT and sent again", refused)
	e.logFigures(evs, opts, ws, nil, nil)
}

// noScripts returns how many commands Redis refused with NOSCRIPT so far.
func noScripts(t *testing.T, rdb redis.UniversalClient) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "errorstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "errorstat_NOSCRIPT:count="); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

//go:build unix

package e2e

// The fault matrix, consumer processes: each test plays one fault while a
// producer sends, and ends with the invariant checker over the merged log
// of every process (nothing lost, per-key order, one owner at a time,
// nothing acked delivered again), plus what the fault itself promises.
// RELIABILITY.md lists them with their figures.

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmenter/segmenter/internal/invariant"
)

// logFigures logs the figures of a scenario (the log was checked already).
func (e *env) logFigures(evs []invariant.Event, opts invariant.Options, ws []*worker, kill, term []time.Duration) figures {
	e.t.Helper()
	f, _ := measure(evs, opts, ws...)
	f.KillTakeover, f.TermTakeover = kill, term
	e.t.Logf("figures %s: %v", e.t.Name(), f)
	if e.t.Failed() {
		e.keepLog(defaultStream, defaultGroup, evs)
	}
	return f
}

// The owner of partitions is killed (SIGKILL) while its Run handlers are
// working through messages: after its session timeout the others own its
// partitions, under greater epochs, and run its unfinished messages first,
// again (delivery count 2 or more), before anything newer of each
// partition.
func TestFaultKillMidHandler(t *testing.T) {
	e := newEnv(t)
	const P = 8
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 100, 0, 10, 10*time.Millisecond)
	o := func(name string, work time.Duration) workerOpts {
		return workerOpts{name: name, mode: "run", work: work}
	}
	w1, w3 := e.startWorker(o("w1", time.Millisecond)), e.startWorker(o("w3", time.Millisecond))
	victim := e.startWorker(o("w2", 20*time.Millisecond)) // always in a handler, with a backlog
	e.waitBalanced(st.Name(), P, w1, victim, w3)
	prod.waitSent(t, 1000)

	freezeHolding(e, victim, P)
	held := heldBy(e.leases(st.Name(), defaultGroup, P), "w2")
	pending := e.pendingOf(st.Name(), defaultGroup, "w2", P)
	killed := time.Now()
	victim.kill()
	e.waitBalanced(st.Name(), P, w1, w3)
	after := e.leases(st.Name(), defaultGroup, P)
	for p, old := range held {
		if after[p].epoch <= old {
			t.Errorf("partition %d: epoch %d after the takeover, not above the killed owner's %d", p, after[p].epoch, old)
		}
	}
	prod.waitSent(t, int(prod.sent.Load())+1000)
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, w1, w3)
	opts := invariant.Options{MaxProcessingTime: 10 * time.Second}
	evs := e.checkWith(st.Name(), defaultGroup, opts, prod)
	checkPendingFirst(t, evs, "w2", pending, held)
	kill := takeovers(st.Name(), held, killed, w1, w3)
	if len(kill) == 0 {
		t.Error("no partition of the killed owner was delivered by another")
	}
	for _, d := range kill {
		if d < testSession/2 {
			t.Errorf("a partition of the killed owner was delivered by another %v after SIGKILL, before its session (%v) could expire", d, testSession)
		}
	}
	e.logFigures(evs, opts, []*worker{w1, victim, w3}, kill, nil)
}

// A consumer is frozen (SIGSTOP) several times, each time for a quarter of
// its session timeout: shorter than its session and its leases, so nothing
// moves: the group keeps its generation, every partition its lease epoch,
// the frozen consumer is never fenced and nothing is delivered twice.
func TestFaultPauseShorterThanTheSession(t *testing.T) {
	e := newEnv(t)
	const P = 8
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 100, 0, 10, 10*time.Millisecond)
	w1 := e.startWorker(workerOpts{name: "w1"})
	w2 := e.startWorker(workerOpts{name: "w2", work: time.Millisecond})
	e.waitBalanced(st.Name(), P, w1, w2)
	prod.waitSent(t, 500)

	ctx := context.Background()
	gen := func() string { return e.rdb.HGet(ctx, e.keys.Assignment(st.Name(), defaultGroup), "gen").Val() }
	genBefore, before := gen(), e.leases(st.Name(), defaultGroup, P)
	seen := len(w2.PartitionEvents()) // the events of the joins, before the pauses
	const pause = testSession / 4
	for i := range 5 {
		w2.signal(syscall.SIGSTOP)
		time.Sleep(pause) // the fault under test
		w2.signal(syscall.SIGCONT)
		prod.waitSent(t, int(prod.sent.Load())+200) // it works between pauses
		t.Logf("pause %d of %v done", i+1, pause)
	}
	if g := gen(); g != genBefore {
		t.Errorf("the group's generation went from %s to %s across pauses of %v (session %v)", genBefore, g, pause, testSession)
	}
	for p, l := range e.leases(st.Name(), defaultGroup, P) {
		if l.owner != before[p].owner || l.epoch != before[p].epoch {
			t.Errorf("partition %d: lease %s/%d before the pauses, %s/%d after", p, before[p].owner, before[p].epoch, l.owner, l.epoch)
		}
	}
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	events := w2.PartitionEvents()[seen:] // since the pauses began, before the shutdown hands them over
	stopAll(t, w1, w2)
	opts := invariant.Options{MaxProcessingTime: 10 * time.Second}
	evs := e.checkWith(st.Name(), defaultGroup, opts, prod)
	if f := w2.Fenced(); len(f) > 0 {
		t.Errorf("the paused consumer was fenced: %v", f)
	}
	for _, ev := range events {
		if ev.kind != "assigned" {
			t.Errorf("the paused consumer reported partition %d %s", ev.partition, ev.kind)
		}
	}
	if s := invariant.Summarize(evs); s.Redelivered > 0 {
		t.Errorf("%d redeliveries across pauses shorter than the session: nothing should come twice", s.Redelivered)
	}
	e.logFigures(evs, opts, []*worker{w1, w2}, nil, nil)
}

// A consumer is stopped with SIGTERM (Read and Ack mode; and Run mode): it
// hands its partitions over at once, with everything it was given acked,
// so nothing is delivered twice (Run: nothing it started is handled again;
// the messages it had fetched but not started are handed back and may be
// delivered again, never handled twice).
func TestFaultTerminateHandsOverWithoutDuplicates(t *testing.T) {
	for _, mode := range []string{"read", "run"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t)
			const P = 8
			st := e.stream(defaultStream, P)
			prod := e.startProducer(st, 100, 0, 10, 10*time.Millisecond)
			o := func(name string) workerOpts { return workerOpts{name: name, mode: mode, work: time.Millisecond} }
			w1, w2, w3 := e.startWorker(o("w1")), e.startWorker(o("w2")), e.startWorker(o("w3"))
			e.waitBalanced(st.Name(), P, w1, w2, w3)
			prod.waitSent(t, 1000)

			held := heldBy(e.leases(st.Name(), defaultGroup, P), "w2")
			stopped := time.Now()
			w2.stop()
			for p, l := range e.leases(st.Name(), defaultGroup, P) {
				if l.owner == "w2" {
					t.Fatalf("partition %d: w2 exited after Shutdown still holding its lease (to expire, not handed over)", p)
				}
			}
			e.waitBalanced(st.Name(), P, w1, w3)
			prod.waitSent(t, int(prod.sent.Load())+1000)
			prod.stop(t)
			e.waitAllAcked(st, defaultGroup)
			stopAll(t, w1, w3)
			opts := invariant.Options{MaxProcessingTime: 10 * time.Second}
			evs := e.checkWith(st.Name(), defaultGroup, opts, prod)
			s := invariant.Summarize(evs)
			if mode == "read" && s.Redelivered > 0 {
				t.Errorf("%d redeliveries after a graceful hand-over: the stopped consumer acked everything it read", s.Redelivered)
			}
			type msgID struct {
				p  int
				id string
			}
			handled := map[msgID]int{}
			for _, ev := range evs {
				if ev.Kind == invariant.KindHandled && ev.Outcome == invariant.AckOK {
					handled[msgID{ev.Partition, ev.ID}]++
				}
			}
			for m, n := range handled {
				if n > 1 {
					t.Errorf("partition %d: %s was handled successfully %d times across a graceful hand-over", m.p, m.id, n)
				}
			}
			if t.Failed() {
				e.keepLog(st.Name(), defaultGroup, evs)
			}
			for _, w := range []*worker{w1, w2, w3} {
				if f := w.Fenced(); len(f) > 0 {
					t.Errorf("worker %s was fenced across a graceful hand-over: %v", w.name, f)
				}
			}
			term := takeovers(st.Name(), held, stopped, w1, w3)
			if len(term) == 0 {
				t.Error("no partition of the stopped consumer was delivered by another")
			}
			e.logFigures(evs, opts, []*worker{w1, w2, w3}, nil, term)
		})
	}
}

// Five rolling restarts of three workers (each worker in turn: SIGTERM,
// exit, a new process under the same name) and five restarts of all of
// them at once, while a producer sends: every message is acked, once, in
// per-key order.
func TestFaultRestartsFiveTimes(t *testing.T) {
	for _, how := range []string{"rolling", "all-at-once"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t)
			const P = 8
			st := e.stream(defaultStream, P)
			prod := e.startProducer(st, 200, 0, 20, 10*time.Millisecond)
			o := func(i int) workerOpts { return workerOpts{name: "w" + strconv.Itoa(i), batch: 50} }
			ws := []*worker{e.startWorker(o(1)), e.startWorker(o(2)), e.startWorker(o(3))}
			all := append([]*worker(nil), ws...)
			e.waitBalanced(st.Name(), P, ws...)
			var term []time.Duration
			for round := range 5 {
				prod.waitSent(t, int(prod.sent.Load())+300)
				if how == "rolling" {
					for i := range ws {
						others := append(append([]*worker(nil), ws[:i]...), ws[i+1:]...)
						held := heldBy(e.leases(st.Name(), defaultGroup, P), ws[i].name)
						at := time.Now()
						ws[i].stop()
						e.waitBalanced(st.Name(), P, others...)
						term = append(term, takeovers(st.Name(), held, at, others...)...)
						ws[i] = e.startWorker(o(i + 1))
						all = append(all, ws[i])
						e.waitBalanced(st.Name(), P, ws...)
					}
				} else {
					stopAll(t, ws...)
					for i := range ws {
						ws[i] = e.startWorker(o(i + 1))
						all = append(all, ws[i])
					}
					e.waitBalanced(st.Name(), P, ws...)
				}
				t.Logf("round %d done, %d sent", round+1, prod.sent.Load())
			}
			prod.stop(t)
			e.waitAllAcked(st, defaultGroup)
			stopAll(t, ws...)
			opts := invariant.Options{MaxProcessingTime: 10 * time.Second}
			evs := e.checkWith(st.Name(), defaultGroup, opts, prod)
			if s := invariant.Summarize(evs); s.Redelivered > 0 {
				t.Errorf("%d redeliveries across graceful restarts", s.Redelivered)
			}
			e.logFigures(evs, opts, all, nil, term)
		})
	}
}

// The group scales from one worker to four, one at a time, and back to
// one; then members flap: a new worker joins every 100ms and the one
// before it leaves (SIGTERM, or SIGKILL every third), ten times. The stable
// worker ends up with every partition and nothing was lost or reordered.
func TestFaultScaleUpDownAndFlappingJoins(t *testing.T) {
	e := newEnv(t)
	const P = 8
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 100, 0, 10, 10*time.Millisecond)
	stable := e.startWorker(workerOpts{name: "w1"})
	e.waitBalanced(st.Name(), P, stable)
	ws := []*worker{stable}
	all := []*worker{stable}
	for i := 2; i <= 4; i++ {
		w := e.startWorker(workerOpts{name: "w" + strconv.Itoa(i), work: time.Millisecond})
		ws, all = append(ws, w), append(all, w)
		e.waitBalanced(st.Name(), P, ws...)
		prod.waitSent(t, int(prod.sent.Load())+200)
	}
	for len(ws) > 1 {
		ws[len(ws)-1].stop()
		ws = ws[:len(ws)-1]
		e.waitBalanced(st.Name(), P, ws...)
		prod.waitSent(t, int(prod.sent.Load())+200)
	}
	flapping := time.Now() // before: graceful changes only
	var prev *worker
	var leaving []*worker
	for i := range 10 {
		w := e.startWorker(workerOpts{name: "f" + strconv.Itoa(i), work: time.Millisecond})
		all = append(all, w)
		if prev != nil {
			sig := syscall.SIGTERM
			if i%3 == 0 {
				sig = syscall.SIGKILL
			}
			prev.signal(sig)
			leaving = append(leaving, prev)
		}
		prev = w
		time.Sleep(100 * time.Millisecond) // the pace of the flapping is the fault under test
	}
	prev.stop()
	for _, w := range leaving {
		_ = w.waitExit(30 * time.Second) // SIGTERM: exit 0; SIGKILL: killed
		w.checkStderr()
	}
	e.waitBalanced(st.Name(), P, stable)
	prod.waitSent(t, int(prod.sent.Load())+300)
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, stable)
	opts := invariant.Options{MaxProcessingTime: 10 * time.Second}
	evs := e.checkWith(st.Name(), defaultGroup, opts, prod)
	// Scaling up and down hands partitions over once their messages are
	// acked: nothing came twice before the flapping (SIGKILL among it).
	for _, ev := range evs {
		if ev.Kind == invariant.KindDelivered && ev.DeliveryCount > 1 && ev.Start.Before(flapping) {
			t.Errorf("partition %d: %s delivered again (delivery %d, by %s) while the group only scaled up and down gracefully",
				ev.Partition, ev.ID, ev.DeliveryCount, ev.Consumer)
		}
	}
	e.logFigures(evs, opts, all, nil, nil)
}

// Run handlers panic on some messages (every second message of one key,
// the first two calls of each): the panic is an error to Run, which
// retries the message before anything newer of its partition; the worker
// process keeps running and every message is acked, in order.
func TestFaultHandlerPanics(t *testing.T) {
	e := newEnv(t)
	const P = 4
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 20, 2000, 20, 10*time.Millisecond)
	o := func(name string) workerOpts {
		return workerOpts{name: name, mode: "run", backoff: 5 * time.Millisecond,
			failKey: "k3", failEvery: 2, failTimes: 2, failHow: "panic"}
	}
	w1, w2 := e.startWorker(o("w1")), e.startWorker(o("w2"))
	e.waitBalanced(st.Name(), P, w1, w2)
	prod.finish(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, w1, w2) // checks that neither crashed
	opts := invariant.Options{MaxProcessingTime: 10 * time.Second}
	evs := e.checkWith(st.Name(), defaultGroup, opts, prod)
	s := invariant.Summarize(evs)
	// 100 messages of k3, 50 of them chosen, 2 panics each.
	if s.HandlerFailures < 100 {
		t.Errorf("%d handler calls failed, want the 100 panics injected", s.HandlerFailures)
	}
	logs := w1.sdkLog() + w2.sdkLog()
	if n := strings.Count(logs, `"msg":"handler panicked"`); n < 100 {
		t.Errorf("the SDK logged %d handler panics, want 100", n)
	}
	e.logFigures(evs, opts, []*worker{w1, w2}, nil, nil)
}

// A Run handler sleeps three times maxProcessingTime on some messages:
// while it runs, its message is kept from coming due (it is not delivered
// again, to this consumer or another), the partition's next messages wait
// for it, and each message is handled once.
func TestFaultHandlerSleepsPastMaxProcessingTime(t *testing.T) {
	// Sequentially a busy partition is not fetched; per key it is, while
	// the long handler runs.
	for _, mode := range []string{"run", "run-key"} {
		t.Run(mode, func(t *testing.T) { testHandlerSleepsPastMaxProcessingTime(t, mode) })
	}
}

func testHandlerSleepsPastMaxProcessingTime(t *testing.T, mode string) {
	e := newEnv(t)
	const P = 4
	const maxProc = 300 * time.Millisecond
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 20, 1000, 20, 10*time.Millisecond)
	o := func(name string) workerOpts {
		return workerOpts{name: name, mode: mode, maxProc: maxProc,
			failKey: "k5", failEvery: 10, failTimes: 1, failHow: "sleep", failSleep: 3 * maxProc}
	}
	w1, w2 := e.startWorker(o("w1")), e.startWorker(o("w2"))
	e.waitBalanced(st.Name(), P, w1, w2)
	prod.finish(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, w1, w2)
	// The checker's Due invariant assumes nobody keeps messages from coming
	// due, which Run does for messages in flight: it is checked against the
	// longest handler call instead.
	opts := invariant.Options{MaxProcessingTime: 3*maxProc + time.Second}
	if mode == "run-key" {
		opts.Order = invariant.OrderByKey
	}
	evs := e.checkWith(st.Name(), defaultGroup, opts, prod)
	type msgID struct {
		p  int
		id string
	}
	calls := map[msgID][]invariant.Event{}
	long := 0
	for _, ev := range evs {
		if ev.Kind == invariant.KindHandled {
			calls[msgID{ev.Partition, ev.ID}] = append(calls[msgID{ev.Partition, ev.ID}], ev)
			if ev.End.Sub(ev.Start) >= 3*maxProc {
				long++
			}
		}
	}
	if long < 5 {
		t.Errorf("%d handler calls ran past 3×maxProcessingTime, want the 5 injected", long)
	}
	for m, cs := range calls {
		if len(cs) > 1 {
			t.Errorf("partition %d: %s was handled %d times", m.p, m.id, len(cs))
		}
	}
	for _, ev := range evs {
		if ev.Kind != invariant.KindDelivered {
			continue
		}
		for _, c := range calls[msgID{ev.Partition, ev.ID}] {
			if ev.Start.After(c.Start.Add(clockSlack)) && ev.End.Before(c.End.Add(-clockSlack)) {
				t.Errorf("partition %d: %s was delivered again (by %s, delivery %d) while its handler call of %v ran",
					ev.Partition, ev.ID, ev.Consumer, ev.DeliveryCount, c.End.Sub(c.Start))
			}
		}
	}
	if s := invariant.Summarize(evs); s.Redelivered > 0 {
		t.Logf("%d redeliveries, none of a message while its handler ran", s.Redelivered)
		e.keepLog(st.Name(), defaultGroup, evs)
	}
	e.logFigures(evs, opts, []*worker{w1, w2}, nil, nil)
}

//go:build unix

package e2e

import (
	"cmp"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/segmenter/segmenter/internal/invariant"
)

// Consumers join one, then two, then four, while a producer sends: after
// each join every consumer owns 16/M partitions, the partitions a consumer
// keeps keep their lease (same epoch, never revoked: only moved partitions
// pause), and per-key order holds.
func TestJoinOneTwoFour(t *testing.T) {
	e := newEnv(t)
	const P = 16
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 200, 0, 10, 10*time.Millisecond)

	w1 := e.startWorker(workerOpts{name: "w1"})
	t.Logf("1 consumer: balanced %v after start", e.waitBalanced(st.Name(), P, w1))
	prod.waitSent(t, 500)

	before := e.leases(st.Name(), defaultGroup, P)
	w2 := e.startWorker(workerOpts{name: "w2"})
	t.Logf("2 consumers: balanced %v after the join", e.waitBalanced(st.Name(), P, w1, w2))
	e.checkKept(st.Name(), before, e.leases(st.Name(), defaultGroup, P), w1)
	prod.waitSent(t, int(prod.sent.Load())+500)

	before = e.leases(st.Name(), defaultGroup, P)
	w3 := e.startWorker(workerOpts{name: "w3"})
	w4 := e.startWorker(workerOpts{name: "w4"})
	t.Logf("4 consumers: balanced %v after the joins", e.waitBalanced(st.Name(), P, w1, w2, w3, w4))
	e.checkKept(st.Name(), before, e.leases(st.Name(), defaultGroup, P), w1, w2)
	prod.waitSent(t, int(prod.sent.Load())+500)

	sent := prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, w1, w2, w3, w4)
	e.check(st.Name(), defaultGroup, 10*time.Second, prod)
	t.Logf("%d messages", sent)
}

// One of three consumers shuts down (SIGTERM) mid-stream: it hands its
// partitions over (no lease of it is left to expire) and the others take
// them.
func TestGracefulLeave(t *testing.T) {
	e := newEnv(t)
	const P = 16
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 200, 0, 10, 10*time.Millisecond)
	w1 := e.startWorker(workerOpts{name: "w1", work: time.Millisecond})
	w2 := e.startWorker(workerOpts{name: "w2", work: time.Millisecond})
	w3 := e.startWorker(workerOpts{name: "w3", work: time.Millisecond})
	e.waitBalanced(st.Name(), P, w1, w2, w3)
	prod.waitSent(t, 1000)

	held := ownedBy(e.owners(st.Name(), defaultGroup, P), "w2")
	start := time.Now()
	w2.stop()
	exited := time.Since(start)
	for p, o := range e.owners(st.Name(), defaultGroup, P) {
		if o == "w2" {
			t.Fatalf("partition %d: w2 exited after Shutdown still holding its lease", p)
		}
	}
	balancedAfter := e.waitBalanced(st.Name(), P, w1, w3) + exited
	t.Logf("graceful leave: w2 (partitions %v) exited %v after SIGTERM; w1 and w3 balanced %v after SIGTERM", held, exited, balancedAfter)

	prod.waitSent(t, int(prod.sent.Load())+1000)
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, w1, w3)
	e.check(st.Name(), defaultGroup, 10*time.Second, prod)
}

// A consumer holding unacked messages is killed (SIGKILL): after its session
// timeout the others take its partitions, and deliver its pending messages
// first, again (delivery count 2+), before anything newer of each partition.
func TestCrashTakeover(t *testing.T) {
	e := newEnv(t)
	const P = 16
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 200, 0, 10, 10*time.Millisecond)
	w1 := e.startWorker(workerOpts{name: "w1", work: time.Millisecond})
	// The victim processes slowly: it always holds a batch in flight.
	victim := e.startWorker(workerOpts{name: "w2", work: 5 * time.Millisecond})
	w3 := e.startWorker(workerOpts{name: "w3", work: time.Millisecond})
	e.waitBalanced(st.Name(), P, w1, victim, w3)
	prod.waitSent(t, 1000)

	freezeHolding(e, victim, P)
	before := e.leases(st.Name(), defaultGroup, P)
	start := time.Now()
	victim.kill()
	pending := e.pendingOf(st.Name(), defaultGroup, "w2", P)
	victimEpoch := map[int]int64{}
	for p, l := range before {
		if l.owner == "w2" {
			victimEpoch[p] = l.epoch
		}
	}
	n := 0
	for _, ids := range pending {
		n += len(ids)
	}
	if n == 0 {
		t.Fatal("the victim held no unacked message when it was killed")
	}
	e.waitBalanced(st.Name(), P, w1, w3)
	took := time.Since(start)
	t.Logf("crash: w2 killed holding %d unacked messages on partitions %v; w1 and w3 balanced %v after SIGKILL (session timeout %v)",
		n, sortedKeys(victimEpoch), took, testSession)
	if took < testSession/2 {
		t.Errorf("the partitions moved %v after the kill, before the session timeout %v could expire", took, testSession)
	}
	after := e.leases(st.Name(), defaultGroup, P)
	for p, old := range victimEpoch {
		if after[p].epoch <= old {
			t.Errorf("partition %d: epoch %d after the takeover, not above the victim's %d", p, after[p].epoch, old)
		}
	}

	prod.waitSent(t, int(prod.sent.Load())+1000)
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, w1, w3)
	evs := e.check(st.Name(), defaultGroup, 10*time.Second, prod)
	checkPendingFirst(t, evs, "w2", pending, victimEpoch)
	e.logFigures(evs, invariant.Options{MaxProcessingTime: 10 * time.Second}, []*worker{w1, victim, w3},
		takeovers(st.Name(), victimEpoch, start, w1, w3), nil)
}

// A consumer is frozen (SIGSTOP) holding unacked messages, past its session
// timeout, until the others own its partitions and read them; then it
// resumes (SIGCONT): its reads and acks of those partitions are fenced, it
// rejoins, and its log merged with the others' keeps every invariant.
func TestZombieIsFenced(t *testing.T) {
	e := newEnv(t)
	const P = 16
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 200, 0, 10, 10*time.Millisecond)
	w1 := e.startWorker(workerOpts{name: "w1", work: time.Millisecond})
	// Batches of 2: the batch it holds when frozen spans at most 2 of its
	// 5 or 6 partitions. When it resumes, its ack of that batch is fenced,
	// and its lease renewal finds the others lost: its next Read reports
	// them fenced.
	zombie := e.startWorker(workerOpts{name: "w2", batch: 2, work: 5 * time.Millisecond})
	w3 := e.startWorker(workerOpts{name: "w3", work: time.Millisecond})
	e.waitBalanced(st.Name(), P, w1, zombie, w3)
	prod.waitSent(t, 1000)

	freezeBeforeAck(e, zombie, P)
	start := time.Now()
	frozen := map[int]int64{} // partition -> the zombie's epoch
	for p, l := range e.leases(st.Name(), defaultGroup, P) {
		if l.owner == "w2" {
			frozen[p] = l.epoch
		}
	}
	if len(frozen) == 0 {
		t.Fatal("the zombie held no partition when frozen")
	}
	// Its partitions belong to the others in Redis, and they read them.
	e.waitBalanced(st.Name(), P, w1, w3)
	took := time.Since(start)
	poll(t, hang, 20*time.Millisecond, func() bool {
		read := map[int]bool{}
		for _, w := range []*worker{w1, w3} {
			for _, g := range w.Got() {
				if old, ok := frozen[g.partition]; ok && g.epoch > old {
					read[g.partition] = true
				}
			}
		}
		return len(read) == len(frozen)
	}, "the new owners never read the zombie's partitions")
	t.Logf("zombie: w2 frozen with partitions %v; w1 and w3 balanced %v later, read them %v later",
		sortedKeys(frozen), took, time.Since(start))

	resumed := time.Now()
	zombie.signal(syscall.SIGCONT)
	poll(t, hang, 10*time.Millisecond, func() bool {
		ops := zombie.FencedOps(st.Name())
		return ops["read"] && ops["ack"]
	}, "the zombie did not get ErrFenced from both a Read and an Ack; its fenced lines: %v", lazy(func() string { return fmt.Sprint(zombie.Fenced()) }))
	t.Logf("zombie resumed: %v", zombie.Fenced())
	e.waitBalanced(st.Name(), P, w1, zombie, w3) // it rejoins as a new member

	prod.waitSent(t, int(prod.sent.Load())+1000)
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, w1, zombie, w3)
	evs := e.check(st.Name(), defaultGroup, 10*time.Second, prod)
	e.logFigures(evs, invariant.Options{MaxProcessingTime: 10 * time.Second}, []*worker{w1, zombie, w3}, nil, nil)
	// Nothing the zombie started under its old epochs after it resumed
	// succeeded: the others held those partitions by then.
	for _, ev := range evs {
		if ev.Consumer != "w2" || ev.Epoch != frozen[ev.Partition] || !ev.Start.After(resumed) {
			continue
		}
		if ev.Kind == invariant.KindDelivered || ev.Kind == invariant.KindAcked && ev.Outcome == invariant.AckOK {
			t.Errorf("the zombie's %s of %s (partition %d, old epoch %d) began %v after it resumed and succeeded",
				ev.Kind, ev.ID, ev.Partition, ev.Epoch, ev.Start.Sub(resumed))
		}
	}
}

// Three groups read one stream, each with its own consumers: each group gets
// every message, in per-key order, independently of the others.
func TestThreeGroupsOneStream(t *testing.T) {
	e := newEnv(t)
	const P = 8
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 100, 4000, 20, 10*time.Millisecond)
	g1 := e.startWorker(workerOpts{name: "a1", group: "g1", batch: 50})
	g2a := e.startWorker(workerOpts{name: "b1", group: "g2", batch: 5})
	g2b := e.startWorker(workerOpts{name: "b2", group: "g2", batch: 5})
	g3a := e.startWorker(workerOpts{name: "c1", group: "g3", work: time.Millisecond})
	e.waitBalanced(st.Name(), P, g1)
	e.waitBalanced(st.Name(), P, g2a, g2b)
	e.waitBalanced(st.Name(), P, g3a)
	prod.waitSent(t, 1500)
	g3b := e.startWorker(workerOpts{name: "c2", group: "g3", work: time.Millisecond}) // joins mid-stream
	e.waitBalanced(st.Name(), P, g3a, g3b)

	sent := prod.finish(t)
	for _, g := range []string{"g1", "g2", "g3"} {
		e.waitAllAcked(st, g)
	}
	stopAll(t, g1, g2a, g2b, g3a, g3b)
	for _, g := range []string{"g1", "g2", "g3"} {
		e.check(st.Name(), g, 10*time.Second, prod)
	}
	t.Logf("%d messages, each acked by 3 groups", sent)
}

// One worker process consumes two streams (one consumer of each on one
// Segmenter); a second joins, then the first leaves: both streams keep
// every invariant.
func TestTwoStreamsOneProcess(t *testing.T) {
	e := newEnv(t)
	orders, payments := e.stream("orders", 8), e.stream("payments", 4)
	po := e.startProducer(orders, 100, 0, 10, 10*time.Millisecond)
	pp := e.startProducer(payments, 50, 0, 5, 10*time.Millisecond)
	both := []string{"orders", "payments"}
	w1 := e.startWorker(workerOpts{name: "w1", streams: both})
	e.waitBalanced("orders", 8, w1)
	e.waitBalanced("payments", 4, w1)
	po.waitSent(t, 500)
	w2 := e.startWorker(workerOpts{name: "w2", streams: both, work: time.Millisecond})
	e.waitBalanced("orders", 8, w1, w2)
	e.waitBalanced("payments", 4, w1, w2)
	po.waitSent(t, int(po.sent.Load())+500)
	w1.stop()
	e.waitBalanced("orders", 8, w2)
	e.waitBalanced("payments", 4, w2)
	po.waitSent(t, int(po.sent.Load())+500)

	po.stop(t)
	pp.stop(t)
	e.waitAllAcked(orders, defaultGroup)
	e.waitAllAcked(payments, defaultGroup)
	stopAll(t, w2)
	e.check("orders", defaultGroup, 10*time.Second, po)
	e.check("payments", defaultGroup, 10*time.Second, pp)
}

// Four workers are restarted one after the other (SIGTERM, exit, a new
// process) while a producer sends 20,000 keyed messages over 500 keys: all
// of them are acked, in per-key order.
func TestRollingRestart(t *testing.T) {
	e := newEnv(t)
	const P, total = 16, 20000
	st := e.stream(defaultStream, P)
	ws := make([]*worker, 4)
	for i := range ws {
		ws[i] = e.startWorker(workerOpts{name: fmt.Sprintf("w%d", i+1), batch: 50})
	}
	e.waitBalanced(st.Name(), P, ws...)
	prod := e.startProducer(st, 500, total, 50, 20*time.Millisecond)
	prod.waitSent(t, 2000)
	for i := range ws {
		start := time.Now()
		ws[i].stop()
		stopped := time.Since(start)
		ws[i] = e.startWorker(workerOpts{name: fmt.Sprintf("w%d-%d", i+1, 2), batch: 50})
		d := e.waitBalanced(st.Name(), P, ws...)
		t.Logf("restart %d: old process exited %v after SIGTERM; new one balanced %v after its start (%d sent)",
			i+1, stopped, d, prod.sent.Load())
	}
	sent := prod.finish(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, ws...)
	e.check(st.Name(), defaultGroup, 10*time.Second, prod)
	if sent != total {
		t.Fatalf("sent %d, want %d", sent, total)
	}
}

// ---- helpers of the scenarios

func ownedBy(owners []string, name string) []int {
	var out []int
	for p, o := range owners {
		if o == name {
			out = append(out, p)
		}
	}
	return out
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// freezeHolding stops w (SIGSTOP) at a moment when it holds unacked
// messages in Redis, and leaves it stopped.
func freezeHolding(e *env, w *worker, partitions int) {
	e.t.Helper()
	poll(e.t, hang, 10*time.Millisecond, func() bool {
		w.signal(syscall.SIGSTOP)
		for _, ids := range e.pendingOf(defaultStream, w.group, w.name, partitions) {
			if len(ids) > 0 {
				return true
			}
		}
		w.signal(syscall.SIGCONT)
		return false
	}, "worker %s never held unacked messages", w.name)
}

// freezeBeforeAck stops w (SIGSTOP) at a moment when its log shows a batch
// delivered to it that it has not begun to ack (no Ack call in flight), with
// unacked messages of it pending in Redis, and leaves it stopped: its next
// Ack is of that batch.
func freezeBeforeAck(e *env, w *worker, partitions int) {
	e.t.Helper()
	poll(e.t, hang, 10*time.Millisecond, func() bool {
		w.signal(syscall.SIGSTOP)
		// Its own log shows a batch in its hands (Redis' pending list
		// alone would also count a Read whose reply is on its way: one
		// the worker drops on waking, leaving it nothing to ack).
		if !w.ackInFlight(defaultStream) && w.holdsUnacked(defaultStream) {
			for _, ids := range e.pendingOf(defaultStream, w.group, w.name, partitions) {
				if len(ids) > 0 {
					return true
				}
			}
		}
		w.signal(syscall.SIGCONT)
		return false
	}, "worker %s never held unacked messages outside an ack", w.name)
}

// checkKept checks, across a membership change from the leases before to
// the leases after, that every partition one of ws held before and still
// holds keeps its lease epoch and was never revoked or lost meanwhile:
// only the partitions that move pause (DESIGN invariant 5).
func (e *env) checkKept(stream string, before, after []lease, ws ...*worker) {
	e.t.Helper()
	for _, w := range ws {
		var kept []int
		for p := range before {
			if before[p].owner != w.name || after[p].owner != w.name {
				continue
			}
			kept = append(kept, p)
			if after[p].epoch != before[p].epoch {
				e.t.Errorf("partition %d stayed with %s but its lease epoch went from %d to %d: it was handed over and back",
					p, w.name, before[p].epoch, after[p].epoch)
			}
			for _, ev := range w.PartitionEvents() {
				if ev.stream == stream && ev.partition == p && ev.epoch == before[p].epoch && ev.kind != "assigned" {
					e.t.Errorf("partition %d stayed with %s under epoch %d, yet %s reported it %s", p, w.name, before[p].epoch, w.name, ev.kind)
				}
			}
		}
		if len(kept) == 0 {
			e.t.Errorf("%s kept none of its partitions across the change: nothing was checked", w.name)
		}
		e.t.Logf("%s kept partitions %v, same epochs, never revoked", w.name, kept)
	}
}

// checkPendingFirst checks that the messages pending for victim when it
// died were delivered by the partition's next owner again, oldest first,
// before anything else of the partition.
func checkPendingFirst(t *testing.T, evs []invariant.Event, victim string, pending map[int][]string, victimEpoch map[int]int64) {
	t.Helper()
	for p, ids := range pending {
		old, ok := victimEpoch[p]
		if !ok {
			t.Fatalf("partition %d: the victim had pending messages but no lease", p)
		}
		inPending := map[string]bool{}
		for _, id := range ids {
			inPending[id] = true
		}
		// The first epoch after the victim's.
		var next int64
		for _, ev := range evs {
			if ev.Kind == invariant.KindDelivered && ev.Partition == p && ev.Epoch > old && (next == 0 || ev.Epoch < next) {
				next = ev.Epoch
			}
		}
		var dels []invariant.Event
		for _, ev := range evs {
			if ev.Kind == invariant.KindDelivered && ev.Partition == p && ev.Epoch == next {
				dels = append(dels, ev)
			}
		}
		slices.SortStableFunc(dels, func(a, b invariant.Event) int {
			if c := a.Start.Compare(b.Start); c != 0 {
				return c
			}
			return cmp.Compare(a.Index, b.Index)
		})
		redelivered, other := 0, ""
		for _, d := range dels {
			if !inPending[d.ID] {
				if other == "" {
					other = d.ID
				}
				continue
			}
			if other != "" {
				t.Fatalf("partition %d: the victim's pending %s was delivered after %s under epoch %d", p, d.ID, other, next)
			}
			if d.DeliveryCount < 2 {
				t.Fatalf("partition %d: the victim's pending %s came back with delivery count %d", p, d.ID, d.DeliveryCount)
			}
			redelivered++
		}
		if redelivered != len(ids) {
			t.Fatalf("partition %d: %d of the victim's %d pending messages were delivered first under epoch %d", p, redelivered, len(ids), next)
		}
	}
}

//go:build unix

package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/segmenter/segmenter/internal/invariant"
)

// Three workers run Run with per-key concurrency while a producer sends
// keyed messages; one of them is killed (SIGKILL) holding messages in
// flight. The others take its partitions after its session timeout and
// deliver its pending messages first; every key keeps its order (the
// checker in per-key mode), and the keys of a partition were handled
// concurrently.
func TestRunPerKeyCrash(t *testing.T) {
	e := newEnv(t)
	const P = 8
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 120, 0, 10, 10*time.Millisecond)
	o := func(name string) workerOpts {
		return workerOpts{name: name, mode: "run-key", keyConcurrency: 8, work: 5 * time.Millisecond}
	}
	w1, victim, w3 := e.startWorker(o("w1")), e.startWorker(o("w2")), e.startWorker(o("w3"))
	e.waitBalanced(st.Name(), P, w1, victim, w3)
	prod.waitSent(t, 1000)

	freezeHolding(e, victim, P)
	before := e.leases(st.Name(), defaultGroup, P)
	victim.kill()
	pending := e.pendingOf(st.Name(), defaultGroup, "w2", P)
	victimEpoch := map[int]int64{}
	for p, l := range before {
		if l.owner == "w2" {
			victimEpoch[p] = l.epoch
		}
	}
	if len(pending) == 0 {
		t.Fatal("the victim held no unacked message when it was killed")
	}
	e.waitBalanced(st.Name(), P, w1, w3)
	prod.waitSent(t, int(prod.sent.Load())+1000)
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, w1, w3)
	evs := e.checkWith(st.Name(), defaultGroup, invariant.Options{MaxProcessingTime: 10 * time.Second, Order: invariant.OrderByKey}, prod)
	checkPendingFirst(t, evs, "w2", pending, victimEpoch)
	if n := concurrentKeys(evs); n == 0 {
		t.Error("no two keys of a partition were ever handled at the same time by one owner: per-key concurrency was not exercised")
	} else {
		t.Logf("%d handler calls overlapped a call of another key of their partition by the same owner", n)
	}
}

// Workers run Run sequentially (one message of a partition at a time):
// one, then two, then three join while a producer sends, then the second
// leaves gracefully. The partitions a worker keeps across a join keep their
// lease; every partition's messages are handled one at a time, in order.
func TestRunSequentialJoinAndLeave(t *testing.T) {
	e := newEnv(t)
	const P = 12
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 150, 0, 10, 10*time.Millisecond)
	o := func(name string) workerOpts {
		return workerOpts{name: name, mode: "run", work: time.Millisecond}
	}
	w1 := e.startWorker(o("w1"))
	e.waitBalanced(st.Name(), P, w1)
	prod.waitSent(t, 500)

	before := e.leases(st.Name(), defaultGroup, P)
	w2 := e.startWorker(o("w2"))
	e.waitBalanced(st.Name(), P, w1, w2)
	e.checkKept(st.Name(), before, e.leases(st.Name(), defaultGroup, P), w1)
	prod.waitSent(t, int(prod.sent.Load())+500)

	before = e.leases(st.Name(), defaultGroup, P)
	w3 := e.startWorker(o("w3"))
	e.waitBalanced(st.Name(), P, w1, w2, w3)
	e.checkKept(st.Name(), before, e.leases(st.Name(), defaultGroup, P), w1, w2)
	prod.waitSent(t, int(prod.sent.Load())+500)

	before = e.leases(st.Name(), defaultGroup, P)
	w2.stop()
	for p, owner := range e.owners(st.Name(), defaultGroup, P) {
		if owner == "w2" {
			t.Fatalf("partition %d: w2 exited after Shutdown still holding its lease", p)
		}
	}
	e.waitBalanced(st.Name(), P, w1, w3)
	e.checkKept(st.Name(), before, e.leases(st.Name(), defaultGroup, P), w1, w3)
	prod.waitSent(t, int(prod.sent.Load())+500)

	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, w1, w3)
	evs := e.check(st.Name(), defaultGroup, 10*time.Second, prod)
	if s := invariant.Summarize(evs); s.HandlerCalls < s.Sent {
		t.Errorf("%d handler calls for %d messages", s.HandlerCalls, s.Sent)
	}
}

// A worker runs Run with per-key concurrency, and its handler fails every
// fifth message of one key three times before it succeeds (Run retries it
// after a backoff). The key's later messages wait for it, in order, while
// the other keys of its partition keep flowing (checked while the producer
// still sends, so that there is something to flow).
func TestRunPerKeyRetriesHoldBackOnlyTheirKey(t *testing.T) {
	e := newEnv(t)
	const P, keys = 4, 40
	const failKey, failEvery, failTimes, wantHeld = "k7", 5, 3, 4
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, keys, 0, 10, 10*time.Millisecond)
	w := e.startWorker(workerOpts{name: "w1", mode: "run-key", keyConcurrency: 16, work: 2 * time.Millisecond,
		backoff: 20 * time.Millisecond, failKey: failKey, failEvery: failEvery, failTimes: failTimes})
	e.waitBalanced(st.Name(), P, w)
	// Until wantHeld messages of the key failed and then succeeded.
	poll(t, hang, 200*time.Millisecond, func() bool {
		failed, ok := map[string]int{}, map[string]bool{}
		for _, ev := range w.events(st.Name()) {
			if ev.Kind == invariant.KindHandled && ev.Key == failKey {
				if ev.Outcome == invariant.AckOK {
					ok[ev.ID] = true
				} else {
					failed[ev.ID]++
				}
			}
		}
		n := 0
		for id, f := range failed {
			if f >= failTimes && ok[id] {
				n++
			}
		}
		return n >= wantHeld
	}, "%d messages of key %s never failed %d times and then succeeded", wantHeld, failKey, failTimes)
	stopAt := time.Now()
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, w)
	evs := e.checkWith(st.Name(), defaultGroup, invariant.Options{MaxProcessingTime: 10 * time.Second, Order: invariant.OrderByKey}, prod)

	// Each failing message: its calls, and what else of its partition was
	// handled while it was held back.
	part := st.PartitionOf(failKey)
	type failing struct {
		failed       int
		first, okAt  time.Time
		otherKeys    map[string]bool
		sameKeyAfter int // calls of the key's later messages in between
	}
	byID := map[string]*failing{}
	var ids []string
	for _, ev := range evs {
		if ev.Kind != invariant.KindHandled || ev.Key != failKey {
			continue
		}
		f := byID[ev.ID]
		if f == nil {
			f = &failing{otherKeys: map[string]bool{}}
			byID[ev.ID] = f
			ids = append(ids, ev.ID)
		}
		switch {
		case ev.Outcome != invariant.AckOK:
			if f.failed == 0 || ev.Start.Before(f.first) {
				f.first = ev.Start
			}
			f.failed++
		case f.okAt.IsZero() || ev.Start.Before(f.okAt):
			f.okAt = ev.Start
		}
	}
	held := 0
	for _, id := range ids {
		f := byID[id]
		if f.failed == 0 {
			continue
		}
		if f.failed < failTimes || f.okAt.IsZero() {
			t.Errorf("%s of key %s: %d failed calls and a success at %v, want %d failures then a success", id, failKey, f.failed, f.okAt, failTimes)
			continue
		}
		if !f.okAt.Before(stopAt) {
			continue // the producer had stopped: the other keys may have been done
		}
		held++
		for _, ev := range evs {
			if ev.Kind != invariant.KindHandled || ev.Partition != part || ev.Start.Before(f.first) || !ev.Start.Before(f.okAt) {
				continue
			}
			if ev.Key != failKey {
				f.otherKeys[ev.Key] = true
			} else if ev.ID != id {
				f.sameKeyAfter++
			}
		}
		if f.sameKeyAfter > 0 {
			t.Errorf("%s of key %s was held back by its failures, yet %d calls of other messages of its key ran meanwhile", id, failKey, f.sameKeyAfter)
		}
		if len(f.otherKeys) == 0 {
			t.Errorf("%s of key %s was held back for %v by its failures, and no other key of partition %d was handled meanwhile",
				id, failKey, f.okAt.Sub(f.first), part)
		}
	}
	if held < wantHeld {
		t.Errorf("%d messages of key %s failed and then succeeded while the producer sent, want %d", held, failKey, wantHeld)
	}
	if t.Failed() {
		e.keepLog(st.Name(), defaultGroup, evs)
	}
	counts := make([]int, 0, len(ids))
	for _, id := range ids {
		if f := byID[id]; f.failed > 0 && f.okAt.Before(stopAt) {
			counts = append(counts, len(f.otherKeys))
		}
	}
	slices.Sort(counts)
	t.Logf("%d messages of key %s failed %d times each before succeeding; other keys of partition %d handled while each was held back: %v",
		held, failKey, failTimes, part, fmt.Sprint(counts))
}

// concurrentKeys counts the handler calls that overlap, under one owner, a
// call on a message of another key of their partition.
func concurrentKeys(evs []invariant.Event) int {
	type owner struct {
		consumer  string
		partition int
		epoch     int64
	}
	calls := map[owner][]invariant.Event{}
	for _, ev := range evs {
		if ev.Kind == invariant.KindHandled {
			o := owner{ev.Consumer, ev.Partition, ev.Epoch}
			calls[o] = append(calls[o], ev)
		}
	}
	n := 0
	for _, cs := range calls {
		slices.SortFunc(cs, func(a, b invariant.Event) int { return a.Start.Compare(b.Start) })
		for i, a := range cs {
			for _, b := range cs[i+1:] {
				if !b.Start.Before(a.End) {
					break
				}
				if b.Key != a.Key {
					n++
					break
				}
			}
		}
	}
	return n
}

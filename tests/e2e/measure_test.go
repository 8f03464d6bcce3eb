//go:build unix

package e2e

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
)

// TestMeasurements measures, and logs as a table, what the invariants do
// not pin down: how fast a partition moves on a graceful hand-over and
// after a crash with the default timings, and how many partitions a
// membership change moves against the minimum. Only sanity is asserted.
func TestMeasurements(t *testing.T) {
	e := newEnv(t)
	var rows []string
	rows = append(rows, measureGracefulHandover(e)...)
	rows = append(rows, measureCrashTakeover(e)...)
	rows = append(rows, measureMoves(e)...)
	t.Logf("measurements:\n%s", strings.Join(rows, "\n"))
}

// measureGracefulHandover: two in-process consumers with the Config defaults
// share 8 partitions; a message waits in each partition of A; A calls
// Shutdown. Measured: from the call to B's first read of a partition A held,
// and to the moment B had read every partition A held (the latest of B's
// first reads of them).
func measureGracefulHandover(e *env) []string {
	t := e.t
	ctx := context.Background()
	const P, reps = 8, 3
	st := e.stream("handover", P)
	segA := e.newSegmenter(segmenter.Config{}) // defaults: session 10s, heartbeat 1s, block 500ms
	segB := e.newSegmenter(segmenter.Config{})
	rec, sendRec := invariant.NewRecorder(), invariant.NewRecorder() // B's log, the sends
	e.addRecorder("handover", "g", rec)
	b, err := segB.RegisterConsumer(ctx, "handover", "g", 100, 30*time.Second, segmenter.WithConsumerName("B"))
	if err != nil {
		t.Fatal(err)
	}

	// B reads and acks, and notes when it first read each partition under
	// each epoch.
	type first struct {
		p     int
		epoch int64
	}
	var mu sync.Mutex
	firstRead := map[first]time.Time{}
	rctx, stopReading := context.WithCancel(ctx)
	readerDone := make(chan error, 1)
	go func() {
		for {
			start := time.Now()
			msgs, err := b.Read(rctx, time.Second)
			end := time.Now()
			if len(msgs) > 0 {
				rec.Delivered(b.ID(), msgs, start, end)
				mu.Lock()
				for _, m := range msgs {
					k := first{int(m.Partition), m.Epoch}
					if _, ok := firstRead[k]; !ok {
						firstRead[k] = end
					}
				}
				mu.Unlock()
				ackStart := time.Now()
				err := b.Ack(ctx, msgs...)
				outcome := invariant.AckOK
				if err != nil {
					outcome = invariant.AckError
				}
				rec.Acked(b.ID(), msgs, outcome, ackStart, time.Now())
			}
			switch {
			case rctx.Err() != nil:
				readerDone <- nil
				return
			case err != nil && !errors.Is(err, segmenter.ErrFenced):
				readerDone <- err
				return
			}
		}
	}()
	var stopOnce sync.Once
	var readerErr error
	stopB := func() error {
		stopOnce.Do(func() {
			stopReading()
			readerErr = <-readerDone
		})
		return readerErr
	}
	defer stopB()

	var handovers, alls, shutdowns []time.Duration
	for rep := range reps {
		name := fmt.Sprintf("A%d", rep)
		a, err := segA.RegisterConsumer(ctx, "handover", "g", 100, 30*time.Second, segmenter.WithConsumerName(name))
		if err != nil {
			t.Fatal(err)
		}
		var owners []string
		poll(t, hang, 20*time.Millisecond, func() bool {
			owners = e.owners("handover", "g", P)
			return balanced(owners, []string{name, "B"}) && len(a.Assignment()) == P/2
		}, "A and B never shared the partitions")
		held := ownedBy(owners, name)
		msgs := make([]*contracts.PMessage, 0, len(held))
		for _, p := range held {
			msgs = append(msgs, &contracts.PMessage{PartitionKey: keyFor(t, st, p, rep), Data: []byte("waiting")})
		}
		ids, err := st.SendBatch(ctx, msgs)
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range msgs {
			sendRec.Sent(ids[i], st.PartitionOf(m.PartitionKey), m.PartitionKey)
		}

		start := time.Now()
		if err := a.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		shutdowns = append(shutdowns, time.Since(start))
		var firstAt, lastAt time.Time
		poll(t, hang, 5*time.Millisecond, func() bool {
			mu.Lock()
			defer mu.Unlock()
			n := 0
			for k, at := range firstRead {
				if slices.Contains(held, k.p) && at.After(start) {
					n++
					if firstAt.IsZero() || at.Before(firstAt) {
						firstAt = at
					}
					if at.After(lastAt) {
						lastAt = at
					}
				}
			}
			return n == len(held)
		}, "B never read A's partitions")
		handovers = append(handovers, firstAt.Sub(start))
		alls = append(alls, lastAt.Sub(start))
	}
	e.waitAllAcked(st, "g")
	if err := stopB(); err != nil {
		t.Fatalf("B: %v", err)
	}
	e.check("handover", "g", 30*time.Second, &producer{st: st, rec: sendRec})
	return []string{
		fmt.Sprintf("graceful hand-over (defaults: heartbeat 1s, session 10s, block 500ms; 2 consumers, 8 partitions; %d runs): Shutdown -> first read by B: %s; Shutdown -> all %d of A's partitions read by B: %s; Shutdown returned after %s",
			reps, durations(handovers), P/2, durations(alls), durations(shutdowns)),
	}
}

// measureCrashTakeover: two worker processes with the default timings share
// 8 partitions; one is killed; a message waits in each of its partitions.
// Measured: from SIGKILL to the other's first read of one of them.
func measureCrashTakeover(e *env) []string {
	t := e.t
	ctx := context.Background()
	const P = 8
	st := e.stream("takeover", P)
	defaults := workerOpts{group: "g", streams: []string{"takeover"}, session: -1, heartbeat: -1, block: -1, maxProc: 30 * time.Second}
	o1, o2 := defaults, defaults
	o1.name, o2.name = "k1", "k2"
	survivor := e.startWorker(o1)
	victim := e.startWorker(o2)
	e.waitBalanced("takeover", P, survivor, victim)
	before := e.leases("takeover", "g", P)
	held := ownedBy(e.owners("takeover", "g", P), "k2")

	start := time.Now()
	victim.kill()
	killed := time.Since(start)
	rec := invariant.NewRecorder()
	msgs := make([]*contracts.PMessage, 0, len(held))
	for _, p := range held {
		msgs = append(msgs, &contracts.PMessage{PartitionKey: keyFor(t, st, p, 0), Data: []byte("waiting")})
	}
	ids, err := st.SendBatch(ctx, msgs)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs {
		rec.Sent(ids[i], st.PartitionOf(m.PartitionKey), m.PartitionKey)
	}
	var first time.Time
	poll(t, hang, 20*time.Millisecond, func() bool {
		for _, g := range survivor.Got() {
			if g.stream == "takeover" && slices.Contains(held, g.partition) && g.epoch > before[g.partition].epoch {
				first = g.at
				return true
			}
		}
		return false
	}, "the survivor never read the victim's partitions")
	e.waitBalanced("takeover", P, survivor)
	allAt := time.Since(start)
	e.waitAllAcked(st, "g")
	stopAll(t, survivor)
	e.check("takeover", "g", 30*time.Second, &producer{st: st, rec: rec})
	return []string{
		fmt.Sprintf("crash takeover (defaults: heartbeat 1s, session 10s; 2 worker processes, 8 partitions): SIGKILL -> first read of a victim's partition by the survivor: %s (process gone after %s; all %d of its partitions held by the survivor after at most %s)",
			first.Sub(start).Round(time.Millisecond), killed.Round(time.Millisecond), len(held), allAt.Round(time.Millisecond)),
	}
}

// measureMoves: worker processes join and leave a group of 16 partitions;
// for each membership change, the partitions whose lease owner (and epoch)
// changed between the stable states before and after, against the minimum
// any balanced assignment needs.
func measureMoves(e *env) []string {
	t := e.t
	const P = 16
	e.stream("moves", P)
	opts := func(name string) workerOpts {
		return workerOpts{name: name, group: "g", streams: []string{"moves"}}
	}
	gen := func() int64 {
		n, _ := e.rdb.HGet(context.Background(), e.keys.Assignment("moves", "g"), "gen").Int64()
		return n
	}
	var live []*worker
	rows := []string{"membership change on 16 partitions (session 1s, heartbeat 100ms) | moved (owner changed) | minimum | epochs bumped | generations | stable after"}
	step := func(what string, change func()) {
		t.Helper()
		before := e.leases("moves", "g", P)
		g0 := gen()
		start := time.Now()
		change()
		e.waitBalanced("moves", P, live...)
		took := time.Since(start)
		after := e.leases("moves", "g", P)
		moved, bumped := 0, 0
		beforeOwners := make([]string, P)
		for p := range P {
			beforeOwners[p] = before[p].owner
			if before[p].owner != after[p].owner {
				moved++
			}
			if before[p].epoch != after[p].epoch {
				bumped++
			}
		}
		names := make([]string, len(live))
		for i, w := range live {
			names[i] = w.name
		}
		least := minMoves(beforeOwners, names, P)
		rows = append(rows, fmt.Sprintf("%-34s | %2d | %2d | %2d | %d | %s", what, moved, least, bumped, gen()-g0, took.Round(time.Millisecond)))
		if moved < least {
			t.Errorf("%s: %d partitions moved, fewer than the minimum %d: the measurement is wrong", what, moved, least)
		}
	}
	remove := func(w *worker) {
		live = slices.DeleteFunc(live, func(x *worker) bool { return x == w })
	}
	for i := 1; i <= 5; i++ {
		what := fmt.Sprintf("join %d -> %d", i-1, i)
		if i == 1 {
			live = append(live, e.startWorker(opts("m1")))
			e.waitBalanced("moves", P, live...)
			continue
		}
		step(what, func() { live = append(live, e.startWorker(opts("m"+strconv.Itoa(i)))) })
	}
	m := slices.Clone(live) // by join order
	leave := func(w *worker) func() { return func() { remove(w); w.stop() } }
	crash := func(w *worker) func() { return func() { remove(w); w.kill() } }
	step("graceful leave 5 -> 4 (SIGTERM)", leave(m[1]))
	step("crash 4 -> 3 (SIGKILL)", crash(m[3]))
	step("graceful leave 3 -> 2 (SIGTERM)", leave(m[0]))
	step("join 2 -> 3", func() { live = append(live, e.startWorker(opts("m6"))) })
	step("graceful leave 3 -> 2 (SIGTERM)", leave(m[2]))
	step("graceful leave 2 -> 1 (SIGTERM)", leave(m[4]))
	stopAll(t, live...)
	return rows
}

// minMoves returns the fewest partitions that must change owner to go from
// owners (partition -> owner) to a balanced assignment over members: each
// member keeps at most its quota (floor or ceil of P/M, the ceil quotas going
// to the members that hold the most), the others' partitions move.
func minMoves(owners []string, members []string, partitions int) int {
	counts := make([]int, len(members))
	for i, m := range members {
		for _, o := range owners {
			if o == m {
				counts[i]++
			}
		}
	}
	slices.SortFunc(counts, func(a, b int) int { return cmp.Compare(b, a) })
	base, extra := partitions/len(members), partitions%len(members)
	kept := 0
	for i, c := range counts {
		q := base
		if i < extra {
			q++
		}
		kept += min(c, q)
	}
	return partitions - kept
}

// keyFor returns the n-th key (0-based) that st maps to partition p.
func keyFor(t *testing.T, st *segmenter.Stream, p, n int) string {
	t.Helper()
	for i := 0; i < 1_000_000; i++ {
		k := "key-" + strconv.Itoa(i)
		if st.PartitionOf(k) == p {
			if n == 0 {
				return k
			}
			n--
		}
	}
	t.Fatalf("no key for partition %d", p)
	return ""
}

// durations formats measurements as "min / median / max (all)".
func durations(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = d.Round(time.Millisecond).String()
	}
	return fmt.Sprintf("min %s, median %s, max %s (runs: %s)", s[0].Round(time.Millisecond), s[len(s)/2].Round(time.Millisecond),
		s[len(s)-1].Round(time.Millisecond), strings.Join(parts, ", "))
}

//go:build unix

package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
)

// DESIGN invariant 6: "a consumer that shuts down hands them over at once
// (well under a second on loopback)". With the Config defaults, consumer A
// shuts down just after consumer B heartbeated; B must hold A's partitions
// well under a second later (read here as: within half a second). A and B
// read and ack what comes before; a message waits in each partition when A
// leaves, and B delivers them: the log keeps every invariant.
func TestGracefulHandoverWithDefaultsIsWellUnderASecond(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const P = 8
	const maxProc = 30 * time.Second
	st := e.stream("handover", P)
	rec, sendRec := invariant.NewRecorder(), invariant.NewRecorder()
	send := func(n int) {
		t.Helper()
		var batch []*contracts.PMessage
		for p := range P {
			for i := range n {
				batch = append(batch, &contracts.PMessage{PartitionKey: keyFor(t, st, p, i), Data: []byte("m")})
			}
		}
		ids, err := st.SendBatch(ctx, batch)
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range batch {
			sendRec.Sent(ids[i], st.PartitionOf(m.PartitionKey), m.PartitionKey)
		}
	}
	segA := e.newSegmenter(segmenter.Config{}) // every timing at its default
	segB := e.newSegmenter(segmenter.Config{})
	b, err := segB.RegisterConsumer(ctx, "handover", "g", 10, maxProc, segmenter.WithConsumerName("B"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := segA.RegisterConsumer(ctx, "handover", "g", 10, maxProc, segmenter.WithConsumerName("A"))
	if err != nil {
		t.Fatal(err)
	}
	var owners []string
	poll(t, hang, 20*time.Millisecond, func() bool {
		owners = e.owners("handover", "g", P)
		return balanced(owners, []string{"A", "B"}) && len(a.Assignment()) == P/2 && len(b.Assignment()) == P/2
	}, "A and B never shared the partitions")
	held := ownedBy(owners, "A")
	readA, readB := startReader(t, rec, a), startReader(t, rec, b)
	send(3)
	e.waitAllAcked(st, "g")
	// A has nothing in flight; messages wait for it when it leaves.
	if err := readA.halt(); err != nil {
		t.Fatal(err)
	}
	send(1)

	// Just after a heartbeat of B (its session expiry moves in Redis).
	members := e.keys.Members("handover", "g")
	score := func() float64 { return e.rdb.ZScore(ctx, members, "B").Val() }
	last := score()
	eventually(t, func() bool { return score() != last }, "B never heartbeated")
	start := time.Now()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	shutdown := time.Since(start)
	poll(t, hang, 5*time.Millisecond, func() bool {
		owners := e.owners("handover", "g", P)
		for _, p := range held {
			if owners[p] != "B" {
				return false
			}
		}
		return true
	}, "B never took A's partitions")
	took := time.Since(start)
	t.Logf("A's Shutdown returned after %v; B held A's partitions %v after the call", shutdown, took)
	if took > 500*time.Millisecond {
		t.Errorf("graceful hand-over took %v with the default Config (HeartbeatInterval 1s): the remaining consumer learns of the new assignment only from its next heartbeat, so a hand-over takes up to a heartbeat interval, not \"well under a second\"", took)
	}
	e.waitAllAcked(st, "g")
	if err := readB.halt(); err != nil {
		t.Fatal(err)
	}
	evs := append(sendRec.Events(), rec.Events()...)
	t.Logf("invariant log:\n%v", invariant.Summarize(evs))
	if err := invariant.Check(evs, invariant.Options{MaxProcessingTime: maxProc, RequireAllAcked: true}); err != nil {
		t.Errorf("invariants violated:\n%v", err)
	}
}

// A consumer whose Read waits in Redis for new messages of the partitions it
// owns (none there) gains a partition holding a waiting message: Read must
// deliver it soon after the partition is acquired, not when its blocking
// wait (BlockInterval) ends. consumer.go's wait promises to wake on "a
// change of ownership".
func TestReadWakesWhenItGainsAPartition(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const P = 2
	st := e.stream("wake", P)
	const block = 5 * time.Second
	segB := e.newSegmenter(segmenter.Config{SessionTimeout: testSession, HeartbeatInterval: testHeartbeat, BlockInterval: block})
	b, err := segB.RegisterConsumer(ctx, "wake", "g", 10, 30*time.Second, segmenter.WithConsumerName("B"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := e.seg.RegisterConsumer(ctx, "wake", "g", 10, 30*time.Second, segmenter.WithConsumerName("A"))
	if err != nil {
		t.Fatal(err)
	}
	var owners []string
	poll(t, hang, 10*time.Millisecond, func() bool {
		owners = e.owners("wake", "g", P)
		return balanced(owners, []string{"A", "B"}) && len(b.Assignment()) == 1
	}, "A and B never shared the partitions")
	pa := ownedBy(owners, "A")[0]
	rec, sendRec := invariant.NewRecorder(), invariant.NewRecorder()
	key := keyFor(t, st, pa, 0)
	id, err := st.Send(ctx, &contracts.PMessage{PartitionKey: key, Data: []byte("waiting")})
	if err != nil {
		t.Fatal(err)
	}
	sendRec.Sent(id, pa, key)

	type result struct {
		msgs []*contracts.CMessage
		err  error
		at   time.Time
	}
	done := make(chan result, 1)
	go func() {
		msgs, err := recordedRead(ctx, rec, b, 2*block)
		done <- result{msgs, err, time.Now()}
	}()
	// B's Read is blocked in Redis (XREAD BLOCK on its empty partition).
	eventually(t, func() bool {
		list, err := e.rdb.ClientList(ctx).Result()
		return err == nil && slices.ContainsFunc(strings.Split(list, "\n"), func(l string) bool {
			return strings.Contains(l, " cmd=xread") && strings.Contains(l, " flags=b")
		})
	}, "B's Read never blocked in Redis")
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	poll(t, hang, 2*time.Millisecond, func() bool { return len(b.Assignment()) == P }, "B never acquired A's partition")
	acquired := time.Now()
	var r result
	select {
	case r = <-done:
	case <-time.After(hang):
		t.Fatal("B's Read never returned")
	}
	if r.err != nil || len(r.msgs) != 1 || int(r.msgs[0].Partition) != pa {
		t.Fatalf("B's Read returned %v, %v; want the message waiting in partition %d", r.msgs, r.err, pa)
	}
	if err := recordedAck(ctx, rec, b, r.msgs); err != nil {
		t.Fatal(err)
	}
	evs := append(sendRec.Events(), rec.Events()...)
	if err := invariant.Check(evs, invariant.Options{MaxProcessingTime: 30 * time.Second, RequireAllAcked: true}); err != nil {
		t.Errorf("invariants violated:\n%v", err)
	}
	shutdownStart := time.Now()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("B's Read delivered the gained partition's message %v after acquiring it; B's Shutdown then took %v (BlockInterval %v)",
		r.at.Sub(acquired), time.Since(shutdownStart), block)
	if late := r.at.Sub(acquired); late > time.Second {
		t.Errorf("B's Read delivered the waiting message of the partition it gained %v after acquiring it (BlockInterval %v): the blocking XREAD on its other partitions is not woken by a change of ownership", late, block)
	}
}

// eventually is redistest.Eventually with the suite's hang bound.
func eventually(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	poll(t, hang, 0, cond, msg)
}

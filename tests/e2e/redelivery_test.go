//go:build unix

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
)

// Two messages of a partition are delivered half a maxProcessingTime apart
// and not acked (processing failed). The first comes due and is redelivered;
// then the second comes due, while the first, redelivered since, is not due
// again yet. The second must be redelivered before anything newer of the
// partition (DESIGN invariants 1 and 4).
func TestRedeliveryOfALaterMessageComesBeforeNewer(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const maxProc = time.Second
	st := e.stream("s", 1)
	c, err := e.seg.RegisterConsumer(ctx, "s", "g", 10, maxProc)
	if err != nil {
		t.Fatal(err)
	}
	rec, sendRec := invariant.NewRecorder(), invariant.NewRecorder()
	e.addRecorder("s", "g", rec)
	send := func(data string) string {
		t.Helper()
		id, err := st.Send(ctx, &contracts.PMessage{PartitionKey: "k", Data: []byte(data)})
		if err != nil {
			t.Fatal(err)
		}
		sendRec.Sent(id, 0, "k")
		return id
	}
	read := func() []*contracts.CMessage {
		t.Helper()
		start := time.Now()
		msgs, err := c.Read(ctx, 2*time.Second)
		rec.Delivered(c.ID(), msgs, start, time.Now())
		if err != nil || len(msgs) == 0 {
			t.Fatalf("read: %v %v", msgs, err)
		}
		return msgs
	}
	// idle returns how long ago, by Redis' clock, id was last delivered.
	idle := func(id string) time.Duration {
		p, err := e.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
			Stream: e.keys.Partition("s", 0), Group: "g", Start: id, End: id, Count: 1,
		}).Result()
		if err != nil || len(p) != 1 {
			t.Fatalf("XPENDING %s: %v %v", id, p, err)
		}
		return p[0].Idle
	}
	ids := func(msgs []*contracts.CMessage) []string {
		out := make([]string, len(msgs))
		for i, m := range msgs {
			out[i] = m.Id
		}
		return out
	}

	m1 := send("1")
	if got := read(); len(got) != 1 || got[0].Id != m1 {
		t.Fatalf("first read %v, want %s", ids(got), m1)
	}
	poll(t, hang, 10*time.Millisecond, func() bool { return idle(m1) >= maxProc/2 }, "m1 idle")
	m2 := send("2")
	if got := read(); len(got) != 1 || got[0].Id != m2 {
		t.Fatalf("second read %v, want %s", ids(got), m2)
	}
	poll(t, hang, 10*time.Millisecond, func() bool { return idle(m1) >= maxProc }, "m1 due")
	if got := read(); len(got) != 1 || got[0].Id != m1 || got[0].DeliveryCount != 2 {
		t.Fatalf("read after m1 came due: %v, want %s redelivered", ids(got), m1)
	}
	m3 := send("3")
	poll(t, hang, 10*time.Millisecond, func() bool { return idle(m2) >= maxProc }, "m2 due")
	if d := idle(m1); d >= maxProc {
		t.Fatalf("m1 is due again already (idle %v): the test lost its timing", d)
	}
	got := read()
	if got[0].Id != m2 || got[0].DeliveryCount != 2 {
		t.Errorf("m2 (%s) was due for redelivery, m1 (%s) was not; the next read returned %v (first with delivery count %d), want %s redelivered first and %s (newer) after it",
			m2, m1, ids(got), got[0].DeliveryCount, m2, m3)
	}
	evs := append(sendRec.Events(), rec.Events()...)
	if err := invariant.Check(evs, invariant.Options{MaxProcessingTime: maxProc}); err != nil {
		t.Errorf("invariants violated:\n%v", err)
	}
}

// A message is delivered and not acked; newer ones of its partition wait.
// A Read runs while the message is not yet due: its first round takes the
// partition's full share of new messages, and (the batch being short, the
// other partition empty) a second round fills the batch from the same
// partition. By then the old message came due (a slow reply delays the
// second round here, deterministically). The batch must still keep the
// partition's order: the redelivery before the newer messages, or not in
// this batch at all (DESIGN invariant 1; Read: "each partition's messages
// in stream order, messages due for redelivery before newer ones").
func TestReadBatchKeepsOrderWhenARedeliveryComesDueDuringTheRead(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const maxProc = time.Second
	st := e.stream("fill", 2)
	net := newSlowNet()
	net.readDelay = 400 * time.Millisecond
	rdb := e.info.Client(t)
	rdb.AddHook(net)
	seg := e.newSegmenterOn(rdb, segmenter.Config{SessionTimeout: testSession, HeartbeatInterval: testHeartbeat, BlockInterval: testBlock})
	// Batch 4 over 2 partitions: a share of 2 each.
	c, err := seg.RegisterConsumer(ctx, "fill", "g", 4, maxProc)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Assignment()) != 2 {
		t.Fatalf("the consumer holds %v, want both partitions", c.Assignment())
	}
	rec, sendRec := invariant.NewRecorder(), invariant.NewRecorder()
	key := keyFor(t, st, 0, 0)
	send := func(data string) string {
		t.Helper()
		id, err := st.Send(ctx, &contracts.PMessage{PartitionKey: key, Data: []byte(data)})
		if err != nil {
			t.Fatal(err)
		}
		sendRec.Sent(id, 0, key)
		return id
	}
	read := func() []*contracts.CMessage {
		t.Helper()
		start := time.Now()
		msgs, err := c.Read(ctx, 2*time.Second)
		rec.Delivered(c.ID(), msgs, start, time.Now())
		if err != nil || len(msgs) == 0 {
			t.Fatalf("read: %v %v", msgs, err)
		}
		return msgs
	}
	old := send("old")
	if got := read(); len(got) != 1 || got[0].Id != old {
		t.Fatalf("first read %v, want %s", got, old)
	}
	newer := []string{send("n1"), send("n2"), send("n3")}
	poll(t, hang, 5*time.Millisecond, func() bool {
		p, err := e.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
			Stream: e.keys.Partition("fill", 0), Group: "g", Start: old, End: old, Count: 1,
		}).Result()
		return err == nil && len(p) == 1 && p[0].Idle >= maxProc*3/4
	}, "the old message never got idle")
	net.delayReads.Store(1) // the first round's reply takes 400ms: the old message comes due meanwhile
	got := read()
	ids := make([]string, len(got))
	for i, m := range got {
		ids[i] = fmt.Sprintf("%s(delivery %d)", m.Id, m.DeliveryCount)
	}
	t.Logf("old %s, newer %v; the read returned %v", old, newer, ids)
	if net.reads.Load() != 1 {
		t.Fatalf("the slow network held back %d reads, want 1: it no longer recognizes the SDK's read script", net.reads.Load())
	}
	for i := 1; i < len(got); i++ {
		if got[i].Partition == got[i-1].Partition && !idLess(got[i-1].Id, got[i].Id) {
			t.Errorf("one Read returned %s after %s of the same partition: the redelivery of the old message comes after newer ones", ids[i], ids[i-1])
		}
	}
	evs := append(sendRec.Events(), rec.Events()...)
	if err := invariant.Check(evs, invariant.Options{MaxProcessingTime: maxProc}); err != nil {
		t.Errorf("invariants violated:\n%v", err)
	}
}

// idLess compares stream entry IDs.
func idLess(a, b string) bool {
	var ams, aseq, bms, bseq uint64
	fmt.Sscanf(a, "%d-%d", &ams, &aseq)
	fmt.Sscanf(b, "%d-%d", &bms, &bseq)
	return ams < bms || ams == bms && aseq < bseq
}

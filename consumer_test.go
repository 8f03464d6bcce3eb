package segmenter_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
	"github.com/segmenter/segmenter/internal/keyspace"
	"github.com/segmenter/segmenter/internal/redistest"
)

func checkLog(t *testing.T, rec *invariant.Recorder, opts invariant.Options) {
	t.Helper()
	t.Logf("invariant log: %v", rec.Summary())
	if err := rec.Check(opts); err != nil {
		t.Fatalf("invariants violated:\n%v", err)
	}
}

func TestPerKeyOrderOver10000Messages(t *testing.T) {
	onBackends(t, func(t *testing.T, bk backend) { testPerKeyOrderOver10000Messages(t, bk.client(t)) })
	// A client that is not a *redis.Client takes the scripts' path for
	// every read and ack, and polls instead of blocking, as on a cluster.
	t.Run("scripts", func(t *testing.T) { testPerKeyOrderOver10000Messages(t, scriptsClient{redistest.Client(t)}) })
}

// scriptsClient hides the *redis.Client it wraps: the SDK then reads and
// acks through its scripts and polls, as with a cluster client.
type scriptsClient struct{ *redis.Client }

func testPerKeyOrderOver10000Messages(t *testing.T, rdb redis.UniversalClient) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), rdb)
	st, err := seg.RegisterStream(ctx, "orders", 8, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "orders", "billing", 100, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	const total, keys = 10000, 200
	sent := make(chan error, 1)
	go func() {
		// The producer sends while the consumer reads.
		for start := 0; start < total; start += 500 {
			batch := make([]*contracts.PMessage, 0, 500)
			for i := start; i < start+500; i++ {
				batch = append(batch, msg("user-"+strconv.Itoa(i%keys), strconv.Itoa(i/keys)))
			}
			ids, err := st.SendBatch(ctx, batch)
			if err != nil {
				sent <- err
				return
			}
			for i, m := range batch {
				rec.Sent(ids[i], st.PartitionOf(m.PartitionKey), m.PartitionKey)
			}
		}
		sent <- nil
	}()
	got := drain(t, c, rec, total, 2*time.Minute)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	// Belt and braces: the payload carries each key's sequence number.
	next := map[string]int{}
	partitions := map[uint32]bool{}
	for _, m := range got {
		seq, _ := strconv.Atoi(string(m.Data))
		if seq != next[m.PartitionKey] {
			t.Fatalf("key %s: got sequence %d, want %d", m.PartitionKey, seq, next[m.PartitionKey])
		}
		next[m.PartitionKey]++
		partitions[m.Partition] = true
	}
	if len(partitions) != 8 {
		t.Fatalf("messages came from %d partitions, want 8", len(partitions))
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: 30 * time.Second, RequireAllAcked: true})
}

func TestStartPositions(t *testing.T) { onBackends(t, testStartPositions) }

func testStartPositions(t *testing.T, bk backend) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), bk.client(t))
	st, err := seg.RegisterStream(ctx, "s", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("a", "old1"), msg("b", "old2"))
	earliest, err := seg.RegisterConsumer(ctx, "s", "earliest", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	latest, err := seg.RegisterConsumer(ctx, "s", "latest", 10, time.Minute, segmenter.WithStartPosition(segmenter.StartLatest))
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("a", "new"))
	if got := drain(t, earliest, nil, 3, 10*time.Second); len(got) != 3 {
		t.Fatalf("earliest group read %d messages, want 3", len(got))
	}
	got := drain(t, latest, nil, 1, 10*time.Second)
	if len(got) != 1 || string(got[0].Data) != "new" {
		t.Fatalf("latest group read %v, want only the new message", got)
	}
	if msgs, err := latest.Read(ctx, 0); err != nil || len(msgs) != 0 {
		t.Fatalf("latest group read more: %v %v", msgs, err)
	}
}

func TestRedeliveryComesBeforeNewerMessages(t *testing.T) {
	onBackends(t, testRedeliveryComesBeforeNewerMessages)
}

func testRedeliveryComesBeforeNewerMessages(t *testing.T, bk backend) {
	ctx := context.Background()
	rdb := bk.client(t)
	ns := redistest.Namespace(t)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	const maxProc = 200 * time.Millisecond
	c, err := seg.RegisterConsumer(ctx, "s", "g", 2, maxProc)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	ids := send(t, st, rec, msg("k", "0"), msg("k", "1"))
	first, err := read(t, c, rec, time.Second)
	if err != nil || len(first) != 2 {
		t.Fatalf("first read: %v %v", first, err)
	}
	if err := ack(t, c, rec, first[1]); err != nil { // m0 stays unacked
		t.Fatal(err)
	}
	newer := send(t, st, rec, msg("k", "2"), msg("k", "3"))
	// Wait, by Redis' own clock, until m0 is due.
	redistest.Eventually(t, 10*time.Second, func() bool {
		p, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
			Stream: keyspace.New(ns).Partition("s", 0), Group: "g", Start: ids[0], End: ids[0], Count: 1,
		}).Result()
		return err == nil && len(p) == 1 && p[0].Idle >= maxProc
	}, "m0 never came due")
	again, err := read(t, c, rec, time.Second)
	if err != nil || len(again) == 0 {
		t.Fatalf("read after maxProcessingTime: %v %v", again, err)
	}
	if again[0].Id != ids[0] || again[0].DeliveryCount != 2 || string(again[0].Data) != "0" {
		t.Fatalf("first message after the timeout is %s (count %d), want %s redelivered (count 2)", again[0].Id, again[0].DeliveryCount, ids[0])
	}
	if len(again) > 1 && again[1].Id != newer[0] {
		t.Fatalf("after the redelivery came %s, want %s", again[1].Id, newer[0])
	}
	if err := ack(t, c, rec, again...); err != nil {
		t.Fatal(err)
	}
	drain(t, c, rec, 2-len(again)+1, 10*time.Second)
	checkLog(t, rec, invariant.Options{MaxProcessingTime: maxProc, RequireAllAcked: true})
	if s := c.Stats(); s.Redelivered != 1 {
		t.Fatalf("stats %+v, want one redelivery", s)
	}
}

func TestCrashedConsumerIsTakenOverPendingFirst(t *testing.T) {
	onBackends(t, testCrashedConsumerIsTakenOverPendingFirst)
}

func testCrashedConsumerIsTakenOverPendingFirst(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdbA, cutA := bk.gatedClient(t)
	segA := newSegmenter(t, ns, rdbA)
	st, err := segA.RegisterStream(ctx, "s", 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	var batch []*contracts.PMessage
	for i := 0; i < 200; i++ {
		batch = append(batch, msg(fmt.Sprintf("k%d", i%20), strconv.Itoa(i/20)))
	}
	send(t, st, rec, batch...)
	a, err := segA.RegisterConsumer(ctx, "s", "g", 60, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	inFlight, err := read(t, a, rec, time.Second)
	if err != nil || len(inFlight) == 0 {
		t.Fatalf("A read %v %v", inFlight, err)
	}
	// A crashes holding unacked messages: it never renews, releases or acks.
	cutA.closed.Store(true)

	segB := newSegmenter(t, ns, bk.client(t))
	b, err := segB.RegisterConsumer(ctx, "s", "g", 50, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return len(b.Assignment()) == 4 }, "B never took over A's partitions")
	got := drain(t, b, rec, 200, time.Minute)

	type pid struct {
		p  uint32
		id string
	}
	pendingOfA := map[pid]bool{} // stream IDs repeat across partitions
	for _, m := range inFlight {
		pendingOfA[pid{m.Partition, m.Id}] = true
	}
	seenNew := map[uint32]bool{}
	for _, m := range got {
		if pendingOfA[pid{m.Partition, m.Id}] {
			if seenNew[m.Partition] {
				t.Fatalf("partition %d: A's pending %s came after newer messages", m.Partition, m.Id)
			}
			if m.DeliveryCount != 2 {
				t.Fatalf("A's pending %s has delivery count %d, want 2 (epoch %d, partition %d)", m.Id, m.DeliveryCount, m.Epoch, m.Partition)
			}
			continue
		}
		seenNew[m.Partition] = true
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: time.Minute, RequireAllAcked: true})
	for _, o := range b.Assignment() {
		if o.Epoch <= inFlight[0].Epoch {
			t.Fatalf("B's epoch %d is not above A's %d", o.Epoch, inFlight[0].Epoch)
		}
	}
}

func TestFencedConsumerGetsErrFencedOnAckAndRead(t *testing.T) {
	onBackends(t, testFencedConsumerGetsErrFencedOnAckAndRead)
}

func testFencedConsumerGetsErrFencedOnAckAndRead(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdbA, cutA := bk.gatedClient(t)
	segA := newSegmenter(t, ns, rdbA)
	st, err := segA.RegisterStream(ctx, "s", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	send(t, st, rec, msg(keyFor(t, st, 0, 0), "p0"), msg(keyFor(t, st, 1, 0), "p1"))
	a, err := segA.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	held := drainNoAck(t, a, rec, 2)

	// A is cut off (paused, partitioned): an ack whose outcome is unknown is
	// an error, never ErrFenced.
	cutA.closed.Store(true)
	if err := ack(t, a, rec, held...); err == nil || errors.Is(err, segmenter.ErrFenced) {
		t.Fatalf("ack while cut off: %v, want a non-fencing error", err)
	}
	segB := newSegmenter(t, ns, bk.client(t))
	b, err := segB.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return len(b.Assignment()) == 2 }, "B never got the partitions")
	drain(t, b, rec, 2, 10*time.Second)

	// A comes back: its ack of partition 0 is fenced, and Read reports the
	// loss of partition 1, without ever returning a message.
	cutA.closed.Store(false)
	var p0 []*contracts.CMessage
	for _, m := range held {
		if m.Partition == 0 {
			p0 = append(p0, m)
		}
	}
	err = ack(t, a, rec, p0...)
	var pe *segmenter.PartitionError
	if !errors.Is(err, segmenter.ErrFenced) || !errors.As(err, &pe) || pe.Partition != 0 {
		t.Fatalf("ack after losing the lease: %v, want ErrFenced for partition 0", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		msgs, err := read(t, a, rec, 50*time.Millisecond)
		if len(msgs) > 0 {
			t.Fatalf("fenced consumer read %v", msgs)
		}
		if err != nil {
			if !errors.Is(err, segmenter.ErrFenced) || !errors.As(err, &pe) || pe.Partition != 1 {
				t.Fatalf("read after losing the lease: %v, want ErrFenced for partition 1", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Read never reported the lost partition")
		}
	}
	if len(a.Assignment()) != 0 || a.Stats().Fenced != 2 {
		t.Fatalf("A still holds %v, stats %+v", a.Assignment(), a.Stats())
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: time.Minute, RequireAllAcked: true})
}

// drainNoAck reads n messages without acking them.
func drainNoAck(t *testing.T, c *segmenter.Consumer, rec *invariant.Recorder, n int) []*contracts.CMessage {
	t.Helper()
	var out []*contracts.CMessage
	deadline := time.Now().Add(10 * time.Second)
	for len(out) < n && time.Now().Before(deadline) {
		msgs, err := read(t, c, rec, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, msgs...)
	}
	if len(out) != n {
		t.Fatalf("read %d messages, want %d", len(out), n)
	}
	return out
}

func TestShutdownHandsPartitionsOver(t *testing.T) { onBackends(t, testShutdownHandsPartitionsOver) }

func testShutdownHandsPartitionsOver(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	seg := newSegmenter(t, ns, bk.client(t))
	st, err := seg.RegisterStream(ctx, "s", 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	a, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Assignment()) != 4 {
		t.Fatalf("a lone consumer holds %v after RegisterConsumer", a.Assignment())
	}
	var keys []string
	for p := 0; p < 4; p++ {
		keys = append(keys, keyFor(t, st, p, 0))
	}
	for _, k := range keys {
		send(t, st, rec, msg(k, "1"))
	}
	inFlight := drainNoAck(t, a, rec, 4)

	var events []segmenter.PartitionEvent
	var mu sync.Mutex
	b, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithPartitionListener(func(e segmenter.PartitionEvent) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}))
	if err != nil {
		t.Fatal(err)
	}
	// B joined: half the partitions move, each once A acked what it delivered.
	if err := ack(t, a, rec, inFlight...); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 5*time.Second, func() bool {
		return len(a.Assignment()) == 2 && len(b.Assignment()) == 2
	}, "the partitions were not shared: A %v, B %v", a.Assignment(), b.Assignment())

	for _, k := range keys {
		send(t, st, rec, msg(k, "2"))
	}
	fromA := drainNoAck(t, a, rec, 2)
	done := make(chan error, 1)
	go func() { done <- a.Shutdown(ctx) }()
	// Shutdown waits for what A delivered to be acked, then hands over.
	if err := ack(t, a, rec, fromA...); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := a.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	redistest.Eventually(t, 5*time.Second, func() bool { return len(b.Assignment()) == 4 }, "B never got A's partitions")
	for _, k := range keys {
		send(t, st, rec, msg(k, "3"))
	}
	drain(t, b, rec, 6, 10*time.Second)
	if _, err := a.Read(ctx, 0); !errors.Is(err, segmenter.ErrClosed) {
		t.Fatalf("Read after Shutdown: %v", err)
	}
	if err := a.Ack(ctx, inFlight...); !errors.Is(err, segmenter.ErrClosed) {
		t.Fatalf("Ack after Shutdown: %v", err)
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: time.Minute, RequireAllAcked: true})
	mu.Lock()
	defer mu.Unlock()
	assigned := 0
	for _, e := range events {
		if e.Kind != segmenter.PartitionAssigned || e.Epoch <= 0 {
			t.Fatalf("B's listener got %+v", e)
		}
		assigned++
	}
	if assigned != 4 {
		t.Fatalf("B's listener heard of %d partitions assigned, want 4: %+v", assigned, events)
	}
}

func TestPoisonEntryIsDeliveredInOrderNotPanicked(t *testing.T) {
	onBackends(t, testPoisonEntryIsDeliveredInOrderNotPanicked)
}

func testPoisonEntryIsDeliveredInOrderNotPanicked(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := bk.client(t)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	key := keyspace.New(ns).Partition("s", 0)
	send(t, st, nil, msg("k", "before"))
	for _, fields := range [][]any{
		{"foo", "bar"},                      // another tool's entry
		{"v", "9", "k", "x", "d", "y"},      // a future format
		{"v", "1", "d", "no key"},           // no partition key
		{"v", "1", "k", "x", "m.a", "only"}, // no data
	} {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: fields}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	send(t, st, nil, msg("k", "after"))
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got := drain(t, c, nil, 6, 10*time.Second)
	if string(got[0].Data) != "before" || string(got[5].Data) != "after" || segmenter.Poison(got[0]) != nil {
		t.Fatalf("healthy messages around the poison: %v / %v", got[0], got[5])
	}
	for _, m := range got[1:5] {
		err := segmenter.Poison(m)
		var pe *segmenter.PoisonError
		if !errors.Is(err, segmenter.ErrPoison) || !errors.As(err, &pe) || pe.ID != m.Id || len(m.Metadata) == 0 {
			t.Fatalf("entry %s: Poison = %v, metadata %v", m.Id, err, m.Metadata)
		}
	}
	if got[1].Metadata["foo"] != "bar" {
		t.Fatalf("raw fields of the foreign entry: %v", got[1].Metadata)
	}
	if s := c.Stats(); s.Poison != 4 || s.Acked != 6 {
		t.Fatalf("stats %+v", s)
	}
}

func TestTrimmedPendingMessagesAreCounted(t *testing.T) {
	onBackends(t, testTrimmedPendingMessagesAreCounted)
}

func testTrimmedPendingMessagesAreCounted(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := bk.client(t)
	logs := &logCapture{}
	seg := newSegmenterConfig(t, segmenter.Config{Namespace: ns, Client: rdb,
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelError}))})
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	ids := send(t, st, nil, msg("k", "1"), msg("k", "2"), msg("k", "3"))
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	drainNoAck(t, c, nil, 3)
	if err := rdb.XTrimMaxLen(ctx, keyspace.New(ns).Partition("s", 0), 0).Err(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, func() bool {
		msgs, err := c.Read(ctx, 20*time.Millisecond)
		if err != nil || len(msgs) != 0 {
			t.Fatalf("read after trimming: %v %v", msgs, err)
		}
		return c.Stats().Trimmed == 3
	}, "trimmed pending messages were not counted")
	// And logged, at error level, with the partition, count and first ID.
	var logged float64
	for _, r := range logs.records(t, "trimmed by retention before they were acked") {
		if r["level"] != "ERROR" || r["stream"] != "s" || r["group"] != "g" || r["partition"] != 0.0 {
			t.Fatalf("loss log %v", r)
		}
		if logged == 0 && r["first_id"] != ids[0] {
			t.Fatalf("loss log %v: first_id, want %s", r, ids[0])
		}
		logged += r["count"].(float64)
	}
	if logged != 3 {
		t.Fatalf("the loss logs add up to %v trimmed messages, want 3", logged)
	}
}

func TestDeletedStreamGivesErrGroupNotFound(t *testing.T) {
	onBackends(t, testDeletedStreamGivesErrGroupNotFound)
}

func testDeletedStreamGivesErrGroupNotFound(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := bk.client(t)
	seg := newSegmenter(t, ns, rdb)
	if _, err := seg.RegisterStream(ctx, "s", 1, 0); err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(ctx, keyspace.New(ns).Partition("s", 0)).Err(); err != nil {
		t.Fatal(err)
	}
	_, err = c.Read(ctx, time.Second)
	if !errors.Is(err, segmenter.ErrGroupNotFound) {
		t.Fatalf("read of a deleted partition: %v, want ErrGroupNotFound", err)
	}
	// Reported once; the group is not silently recreated.
	if msgs, err := c.Read(ctx, 100*time.Millisecond); err != nil || len(msgs) != 0 {
		t.Fatalf("second read: %v %v", msgs, err)
	}
	if n, err := rdb.Exists(ctx, keyspace.New(ns).Partition("s", 0)).Result(); err != nil || n != 0 {
		t.Fatalf("the partition was recreated: %d %v", n, err)
	}
}

func TestReadRespectsContextCancellation(t *testing.T) {
	seg := newSegmenter(t, redistest.Namespace(t), nil)
	ctx := context.Background()
	if _, err := seg.RegisterStream(ctx, "s", 2, 0); err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(cctx, time.Hour)
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Read returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second): // catches a hang only
		t.Fatal("Read ignored the cancelled context")
	}
}

func TestNackedMessagesComeBackFirst(t *testing.T) { onBackends(t, testNackedMessagesComeBackFirst) }

func testNackedMessagesComeBackFirst(t *testing.T, bk backend) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), bk.client(t))
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 2, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	ids := send(t, st, rec, msg("k", "0"), msg("k", "1"), msg("k", "2"))
	first := drainNoAck(t, c, rec, 2)
	if err := ack(t, c, rec, first[0]); err != nil {
		t.Fatal(err)
	}
	if err := c.Nack(first[1]); err != nil {
		t.Fatal(err)
	}
	again, err := read(t, c, rec, time.Second)
	if err != nil || len(again) == 0 || again[0].Id != ids[1] || again[0].DeliveryCount != 2 {
		t.Fatalf("after Nack: %v %v, want %s again first", again, err, ids[1])
	}
	if err := ack(t, c, rec, again...); err != nil {
		t.Fatal(err)
	}
	drain(t, c, rec, 3-1-len(again), 5*time.Second)
	checkLog(t, rec, invariant.Options{RequireAllAcked: true})
	if err := c.Nack(nil); !errors.Is(err, segmenter.ErrInvalidArgument) {
		t.Fatalf("Nack(nil): %v", err)
	}
}

func TestReadFillsTheBatchFromBusyPartitions(t *testing.T) {
	onBackends(t, testReadFillsTheBatchFromBusyPartitions)
}

func testReadFillsTheBatchFromBusyPartitions(t *testing.T, bk backend) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), bk.client(t))
	st, err := seg.RegisterStream(ctx, "s", 8, 0)
	if err != nil {
		t.Fatal(err)
	}
	var batch []*contracts.PMessage
	for i := 0; i < 100; i++ {
		batch = append(batch, msg(keyFor(t, st, 3, 0), strconv.Itoa(i)))
	}
	send(t, st, nil, batch...)
	c, err := seg.RegisterConsumer(ctx, "s", "g", 50, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Read(ctx, time.Second)
	if err != nil || len(got) != 50 {
		t.Fatalf("Read returned %d messages (%v), want a full batch of 50 from the one busy partition", len(got), err)
	}
	if err := c.Ack(ctx, got...); err != nil {
		t.Fatal(err)
	}
}

package rebalance_test

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/rebalance"
)

// pipes is a go-redis hook that counts the pipelines a client sends (not
// those setting up a connection) and the commands of the last one.
type pipes struct {
	n    atomic.Int64
	last atomic.Value // []string: command names
}

func (h *pipes) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *pipes) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *pipes) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if n := cmds[0].Name(); n == "client" || n == "hello" {
			return next(ctx, cmds) // a new connection's set-up
		}
		h.n.Add(1)
		names := make([]string, len(cmds))
		for i, c := range cmds {
			names[i] = c.Name()
		}
		h.last.Store(names)
		return next(ctx, cmds)
	}
}

func (h *pipes) lastNames() []string { v, _ := h.last.Load().([]string); return v }

// FetchAck acknowledges and reads in one round trip and one transaction:
// the acked entries leave the pending list, the new ones enter it.
func TestFetchAckAcksAndReadsInOneTransaction(t *testing.T) {
	f := newFixture(t)
	sent := f.add(t, 6)
	a := f.acquire(t, "A", time.Minute)
	first := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 3}, time.Hour)
	h := &pipes{}
	rdb := oneConnClient(t, h)
	res, acked := rebalance.FetchAck(f.ctx, rdb, "A", f.group, time.Hour,
		[]rebalance.FetchRequest{{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, Count: 3, FetchID: "2"}},
		[]rebalance.AckRequest{{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, IDs: ids(first)}})
	if n := h.n.Load(); n != 1 {
		t.Fatalf("%d round trips, want 1", n)
	}
	if names := h.lastNames(); !slices.Contains(names, "xack") || !slices.Contains(names, "xreadgroup") {
		t.Fatalf("the round trip sent %v, want the XACK and the XREADGROUP in it", names)
	}
	if acked[0].Err != nil || acked[0].Fenced || acked[0].Acked != 3 {
		t.Fatalf("ack: %+v, want 3 acked", acked[0])
	}
	if res[0].Err != nil || res[0].Fenced || !slices.Equal(ids(res[0]), sent[3:]) {
		t.Fatalf("read: %+v, want %v", res[0], sent[3:])
	}
	if got := f.pending(t); !slices.Equal(got, sent[3:]) {
		t.Fatalf("pending %v, want %v", got, sent[3:])
	}
}

// A lease that moves between the guard and the transaction leaves both the
// ack and the read undone: the old owner is fenced on both.
func TestFetchAckIsFencedBetweenCheckAndWork(t *testing.T) {
	f := newFixture(t)
	f.add(t, 6)
	a := f.acquire(t, "A", time.Minute)
	first := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 3}, time.Hour)
	h := &interleave{between: func() {
		if err := f.rdb.HSet(f.ctx, f.lease, "o", "B", "e", a.Epoch+1).Err(); err != nil {
			t.Error(err)
		}
	}}
	rdb := oneConnClient(t, h)
	res, acked := rebalance.FetchAck(f.ctx, rdb, "A", f.group, time.Hour,
		[]rebalance.FetchRequest{{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, Count: 3, FetchID: "2"}},
		[]rebalance.AckRequest{{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, IDs: ids(first)}})
	if !h.done {
		t.Fatal("FetchAck did not take the native path")
	}
	if !acked[0].Fenced || acked[0].Acked != 0 || !res[0].Fenced || len(res[0].Entries) != 0 {
		t.Fatalf("ack %+v, read %+v: want both fenced", acked[0], res[0])
	}
	if got := f.pending(t); !slices.Equal(got, ids(first)) {
		t.Fatalf("pending %v, want only the first read's %v: an ack or a read ran under the lost lease", got, ids(first))
	}
}

// A native read looks for messages due for redelivery unless the caller
// vouches that none can be (SkipDue): with the check, the due message comes
// first; without, the read reads on and says it did not look.
func TestNativeReadChecksDueMessagesUnlessSkipped(t *testing.T) {
	f := newFixture(t)
	sent := f.add(t, 2)
	a := f.acquire(t, "A", time.Minute)
	if r := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 1}, time.Hour); !slices.Equal(ids(r), sent[:1]) {
		t.Fatalf("first read %v", ids(r))
	}
	req := rebalance.FetchRequest{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, Count: 1, FetchID: "2", SkipDue: true}
	// Due after 1ms: once Redis says so, a read that skips the check
	// goes on with the next entry.
	deadline := time.Now().Add(5 * time.Second)
	for {
		p, err := f.rdb.XPendingExt(f.ctx, &redis.XPendingExtArgs{Stream: f.stream, Group: f.group, Idle: time.Millisecond, Start: "-", End: "+", Count: 1}).Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(p) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first entry never came due")
		}
		time.Sleep(time.Millisecond)
	}
	r := rebalance.Fetch(f.ctx, f.rdb, "A", f.group, time.Millisecond, []rebalance.FetchRequest{req})[0]
	if r.Err != nil || !r.DueSkipped || !slices.Equal(ids(r), sent[1:]) {
		t.Fatalf("read skipping the check: %+v, want %v, DueSkipped", r, sent[1:])
	}
	// Checked: the due one (the oldest) comes again first.
	req.SkipDue, req.FetchID = false, "3"
	r = rebalance.Fetch(f.ctx, f.rdb, "A", f.group, time.Millisecond, []rebalance.FetchRequest{req})[0]
	if r.Err != nil || r.DueSkipped || len(r.Entries) == 0 || r.Entries[0].ID != sent[0] || r.Deliveries[sent[0]] != 2 {
		t.Fatalf("read with the check: %+v, want %s again first (delivery 2)", r, sent[0])
	}
}

// A read queued behind a blocking XREAD on the same connection runs as
// soon as the XREAD returns, in the same round trip: the entry that woke
// the XREAD comes back read, fenced, in the group.
func TestQueuedFetchRunsRightBehindABlockingRead(t *testing.T) {
	f := newFixture(t)
	a := f.acquire(t, "A", time.Minute)
	h := &pipes{}
	rdb := oneConnClient(t, h)
	if !rebalance.CanFetchAck(f.ctx, rdb, []rebalance.FetchRequest{{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, Count: 10, FetchID: "1"}}) {
		t.Fatal("a single node does not run the native read")
	}
	conn := rdb.Conn()
	defer conn.Close()
	pipe := conn.Pipeline()
	xread := pipe.XRead(f.ctx, &redis.XReadArgs{Streams: []string{f.stream, "$"}, Count: 1, Block: 2 * time.Second})
	q := rebalance.QueueFetch(f.ctx, pipe, "A", f.group, time.Hour, []rebalance.FetchRequest{{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, Count: 10, FetchID: "1"}})
	ran := make(chan error, 1)
	go func() { _, err := pipe.Exec(f.ctx); ran <- err }()
	// The XREAD blocks in Redis; an entry then wakes it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		list, err := f.rdb.ClientList(f.ctx).Result()
		if err == nil && strings.Contains(list, " cmd=xread") && strings.Contains(list, " flags=b") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the XREAD never blocked")
		}
		time.Sleep(time.Millisecond)
	}
	sent := f.add(t, 1)
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if res, err := xread.Result(); err != nil || len(res) != 1 {
		t.Fatalf("XREAD: %v %v", res, err)
	}
	before := h.n.Load()
	r := q.Result(f.ctx, rdb)[0]
	if r.Err != nil || r.Fenced || !slices.Equal(ids(r), sent) {
		t.Fatalf("queued read: %+v, want %v", r, sent)
	}
	if n := h.n.Load() - before; n != 0 {
		t.Fatalf("the result took %d more round trips, want none", n)
	}
	if got := f.pending(t); !slices.Equal(got, sent) {
		t.Fatalf("pending %v, want %v", got, sent)
	}
}

package rebalance_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/internal/redistest"
	"github.com/segmenter/segmenter/rebalance"
)

// interleave is a go-redis hook that splits the next pipeline holding a
// WATCH after its guard (WATCH, EVAL) and runs between on another client
// before sending the rest (MULTI ... EXEC): another consumer acting between
// the fence check and the work. The client must have a pool of one
// connection, so that both halves go on the connection that WATCHes.
type interleave struct {
	between func()
	done    bool
}

func (h *interleave) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *interleave) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *interleave) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.done || len(cmds) < 3 || cmds[0].Name() != "watch" {
			return next(ctx, cmds)
		}
		h.done = true
		if err := next(ctx, cmds[:2]); err != nil {
			return err
		}
		h.between()
		return next(ctx, cmds[2:])
	}
}

func oneConnClient(t *testing.T, h redis.Hook) *redis.Client {
	t.Helper()
	opt := redistest.Client(t).Options()
	opt.PoolSize = 1
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	c.AddHook(h)
	return c
}

// A lease granted to another consumer after the native read's fence check
// passed aborts the read: the old owner gets Fenced, and nothing moved to
// the pending list under it.
func TestNativeReadIsFencedBetweenCheckAndRead(t *testing.T) {
	f := newFixture(t)
	f.add(t, 3)
	a := f.acquire(t, "A", time.Minute)
	h := &interleave{between: func() {
		// B takes the lease (as after A's expiry).
		if err := f.rdb.HSet(f.ctx, f.lease, "o", "B", "e", a.Epoch+1).Err(); err != nil {
			t.Error(err)
		}
	}}
	rdb := oneConnClient(t, h)
	r := rebalance.Fetch(f.ctx, rdb, "A", f.group, time.Hour, []rebalance.FetchRequest{{
		LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, Count: 10, FetchID: "1",
	}})[0]
	if !h.done {
		t.Fatal("the read did not take the native path")
	}
	if !r.Fenced || len(r.Entries) != 0 || r.Err != nil {
		t.Fatalf("read after the lease moved: %+v, want fenced", r)
	}
	if n, _ := f.rdb.XPending(f.ctx, f.stream, f.group).Result(); n.Count != 0 {
		t.Fatalf("%d entries went pending under the lost lease", n.Count)
	}
}

// The same for an acknowledgement: nothing is acked under a lease that
// moved between the check and the XACK.
func TestNativeAckIsFencedBetweenCheckAndAck(t *testing.T) {
	f := newFixture(t)
	f.add(t, 3)
	a := f.acquire(t, "A", time.Minute)
	got := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour)
	h := &interleave{between: func() {
		if err := f.rdb.HSet(f.ctx, f.lease, "o", "B", "e", a.Epoch+1).Err(); err != nil {
			t.Error(err)
		}
	}}
	rdb := oneConnClient(t, h)
	ack := rebalance.Ack(f.ctx, rdb, "A", f.group, []rebalance.AckRequest{{
		LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, IDs: ids(got),
	}})[0]
	if !h.done {
		t.Fatal("the ack did not take the native path")
	}
	if !ack.Fenced || ack.Acked != 0 {
		t.Fatalf("ack after the lease moved: %+v, want fenced", ack)
	}
	if n, _ := f.rdb.XPending(f.ctx, f.stream, f.group).Result(); n.Count != 3 {
		t.Fatalf("%d pending, want 3: the ack went through under the lost lease", n.Count)
	}
}

// A write to the lease by its own holder (a renewal) between the check and
// the read only sends the read through the scripts: it still reads.
func TestNativeReadAbortedByARenewalStillReads(t *testing.T) {
	f := newFixture(t)
	f.add(t, 3)
	a := f.acquire(t, "A", time.Minute)
	h := &interleave{between: func() {
		if res := rebalance.Renew(f.ctx, f.rdb, "A", time.Minute, []rebalance.Held{{Key: f.lease, Epoch: a.Epoch}}); res[0].Fenced || res[0].Err != nil {
			t.Errorf("renew: %+v", res[0])
		}
	}}
	rdb := oneConnClient(t, h)
	r := rebalance.Fetch(f.ctx, rdb, "A", f.group, time.Hour, []rebalance.FetchRequest{{
		LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, Count: 10, FetchID: "1",
	}})[0]
	if !h.done || r.Fenced || r.Err != nil || len(r.Entries) != 3 {
		t.Fatalf("read with a renewal in between: %+v (native %v)", r, h.done)
	}
	if n, _ := f.rdb.XPending(f.ctx, f.stream, f.group).Result(); n.Count != 3 {
		t.Fatalf("%d pending, want 3", n.Count)
	}
}

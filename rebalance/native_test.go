package rebalance_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
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

// loseFirstReply runs the next native pipeline, loses its reply, lets
// between act, and runs the very same pipeline again, as go-redis does
// after a lost reply (its retry).
type loseFirstReply struct {
	between func()
	done    bool
}

func (h *loseFirstReply) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *loseFirstReply) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *loseFirstReply) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.done || len(cmds) < 3 || cmds[0].Name() != "watch" {
			return next(ctx, cmds)
		}
		h.done = true
		_ = next(ctx, cmds) // the reply is lost
		h.between()
		return next(ctx, cmds)
	}
}

// A native read of two partitions ran but its reply was lost; before the
// retry, the first partition's lease moved. The retry is refused, and the
// second partition must still deliver the batch the lost run read, first.
func TestNativeReadRetriedAfterALeaseMovedLosesNoBatch(t *testing.T) {
	f, g := newFixture(t), newFixture(t)
	f.add(t, 3)
	sent := g.add(t, 6)
	a := f.acquire(t, "A", time.Minute)
	ga := g.acquire(t, "A", time.Minute)
	h := &loseFirstReply{between: func() {
		if err := f.rdb.HSet(f.ctx, f.lease, "o", "B", "e", a.Epoch+1).Err(); err != nil {
			t.Error(err)
		}
	}}
	rdb := oneConnClient(t, h)
	res := rebalance.Fetch(f.ctx, rdb, "A", f.group, time.Hour, []rebalance.FetchRequest{
		{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, Count: 3, FetchID: "X"},
		{LeaseKey: g.lease, StreamKey: g.stream, Epoch: ga.Epoch, Count: 3, FetchID: "X"},
	})
	if !h.done {
		t.Fatal("the read did not take the native path")
	}
	if !res[0].Fenced {
		t.Fatalf("the partition whose lease moved: %+v, want fenced", res[0])
	}
	if got := ids(res[1]); !slices.Equal(got, sent[:3]) {
		t.Fatalf("the other partition delivered %v, want the lost run's %v first", got, sent[:3])
	}
}

// A client that may not EVAL (an ACL allowing EVALSHA) would run the
// native transaction without its guard: it keeps to the scripts.
func TestNativePathIsNotTakenWithoutEVAL(t *testing.T) {
	f := newFixture(t)
	f.add(t, 3)
	a := f.acquire(t, "A", time.Minute)
	// Load every script (EVALSHA works for the restricted user then).
	_ = rebalance.Fetch(f.ctx, f.rdb, "A", f.group, time.Hour, []rebalance.FetchRequest{{
		LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, Count: 1, FetchID: "load", Cursor: "0-0",
	}})
	if err := f.rdb.XGroupSetID(f.ctx, f.stream, f.group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	if err := f.rdb.XGroupDelConsumer(f.ctx, f.stream, f.group, "A").Err(); err != nil {
		t.Fatal(err)
	}
	user := "noeval-" + strings.ReplaceAll(f.group+f.lease, ":", "")
	if len(user) > 60 {
		user = user[:60]
	}
	if err := f.rdb.Do(f.ctx, "ACL", "SETUSER", user, "reset", "on", ">pw", "+@all", "-eval", "~*", "&*").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.rdb.Do(context.Background(), "ACL", "DELUSER", user) })
	opt := f.rdb.Options()
	opt.Username, opt.Password = user, "pw"
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	// The lease is B's now: A must be fenced, and read nothing.
	if err := f.rdb.HSet(f.ctx, f.lease, "o", "B", "e", a.Epoch+1).Err(); err != nil {
		t.Fatal(err)
	}
	r := rebalance.Fetch(f.ctx, rdb, "A", f.group, time.Hour, []rebalance.FetchRequest{{
		LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, Count: 10, FetchID: "1",
	}})[0]
	if !r.Fenced {
		t.Fatalf("read under another's lease without EVAL: %+v, want fenced", r)
	}
	if n, _ := f.rdb.XPending(f.ctx, f.stream, f.group).Result(); n.Count != 0 {
		t.Fatalf("%d entries went pending under the lost lease", n.Count)
	}
	ack := rebalance.Ack(f.ctx, rdb, "A", f.group, []rebalance.AckRequest{{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, IDs: []string{"1-1"}}})[0]
	if !ack.Fenced {
		t.Fatalf("ack under another's lease without EVAL: %+v, want fenced", ack)
	}
}

// A native read returns the entries exactly as XRANGE shows them, fields in
// order, binary data and empty values included, over RESP2 and RESP3: two
// partitions with different counts in one native read.
func TestNativeReadReturnsEntriesAsStoredOverBothProtocols(t *testing.T) {
	for _, protocol := range []int{2, 3} {
		t.Run(fmt.Sprintf("RESP%d", protocol), func(t *testing.T) {
			f, g := newFixture(t), newFixture(t)
			values := [][]any{
				{"v", "1", "k", "user-1", "d", "plain"},
				{"v", "1", "k", "user-2", "d", "bin\r\n\x00\xff$3\r\n*1", "m.trace", ""},
				{"only", "one"},
			}
			for _, fx := range []fixture{f, g} {
				for _, v := range values {
					if err := fx.rdb.XAdd(fx.ctx, &redis.XAddArgs{Stream: fx.stream, Values: v}).Err(); err != nil {
						t.Fatal(err)
					}
				}
			}
			a, ga := f.acquire(t, "A", time.Minute), g.acquire(t, "A", time.Minute)
			opt := f.rdb.Options()
			opt.Protocol, opt.PoolSize = protocol, 1 // one connection: the hook's halves share it
			h := &interleave{between: func() {}}
			rdb := redis.NewClient(opt)
			rdb.AddHook(h)
			t.Cleanup(func() { _ = rdb.Close() })
			res := rebalance.Fetch(f.ctx, rdb, "A", f.group, time.Hour, []rebalance.FetchRequest{
				{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, Count: 3, FetchID: "1"},
				{LeaseKey: g.lease, StreamKey: g.stream, Epoch: ga.Epoch, Count: 2, FetchID: "1"},
			})
			if !h.done {
				t.Fatal("the read did not take the native path")
			}
			for i, fx := range []fixture{f, g} {
				r := res[i]
				if r.Err != nil || r.Fenced {
					t.Fatalf("partition %d: %+v", i, r)
				}
				want, err := fx.rdb.XRange(fx.ctx, fx.stream, "-", "+").Result()
				if err != nil {
					t.Fatal(err)
				}
				want = want[:3-i]
				if len(r.Entries) != len(want) {
					t.Fatalf("partition %d: %d entries, want %d", i, len(r.Entries), len(want))
				}
				for j, e := range r.Entries {
					var fields []string
					for _, v := range values[j] {
						fields = append(fields, v.(string))
					}
					if e.ID != want[j].ID || !slices.Equal(e.Fields, fields) {
						t.Fatalf("partition %d entry %d: %q %q, want %q %q", i, j, e.ID, e.Fields, want[j].ID, fields)
					}
				}
			}
		})
	}
}

package rebalance_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/internal/redistest"
	"github.com/segmenter/segmenter/rebalance"
)

// outOfMemory makes the server of rdb run out of memory with the
// noeviction policy: maxmemory well below what it uses, so that it refuses
// every write that may use memory however much is freed meanwhile.
func outOfMemory(t *testing.T, rdb *redis.Client) {
	t.Helper()
	ctx := context.Background()
	pipe := rdb.Pipeline()
	for i := range 512 {
		pipe.Set(ctx, "filler:"+strconv.Itoa(i), strings.Repeat("x", 4096), 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	info := rdb.Info(ctx, "memory").Val()
	_, v, _ := strings.Cut(info, "used_memory:")
	v, _, _ = strings.Cut(v, "\r\n")
	used, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("used_memory in %q: %v", info, err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", strconv.FormatInt(used-1<<20, 10)).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: "probe", Values: []any{"f", "v"}}).Err(); !redis.HasErrorPrefix(err, "OOM") {
		t.Fatalf("XADD on a server out of memory: %v, want OOM", err)
	}
}

// Out of memory (maxmemory, noeviction) Redis refuses producers, but the
// coordination of consumers goes on: heartbeats, lease grants, renewals
// and releases, fenced reads and acks, the coordinator lock and the
// commit of a rebalance, leaving. (Redis refuses a script's first write
// that may use memory; each script starts with one that uses none.)
func TestCoordinationGoesOnOutOfMemory(t *testing.T) { bothPaths(t, testCoordinationGoesOnOutOfMemory) }

func testCoordinationGoesOnOutOfMemory(t *testing.T) {
	inst := redistest.Standalone(t)
	f := newFixture(t)
	f.rdb = inst.Client(t)
	if err := f.rdb.XGroupCreateMkStream(f.ctx, f.stream, f.group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	sent := f.add(t, 3)
	g := rebalance.Group{Members: "test:{g}:members", Assignment: "test:{g}:assign", Coordinator: "test:{g}:coord"}
	outOfMemory(t, f.rdb)

	a := f.acquire(t, "A", time.Minute)
	if !a.Granted {
		t.Fatalf("acquire out of memory: %+v", a)
	}
	held := []rebalance.Held{{Key: f.lease, Epoch: a.Epoch}}
	res := rebalance.RunTick(f.ctx, f.rdb, rebalance.Tick{Group: g, Member: "A", Session: time.Minute, KnownGen: -1, Heartbeat: true, Renew: held})
	if res.Beat.Err != nil || res.Renewed[0].Err != nil || res.Renewed[0].Fenced {
		t.Fatalf("heartbeat and renewal out of memory: %+v", res)
	}
	if r := rebalance.Renew(f.ctx, f.rdb, "A", time.Minute, held)[0]; r.Err != nil || r.Fenced {
		t.Fatalf("renew out of memory: %+v", r)
	}
	if _, _, err := rebalance.Rebalance(f.ctx, f.rdb, g, "A:token", 1, time.Minute); err != nil {
		t.Fatalf("rebalance out of memory: %v", err)
	}
	r := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour)
	if got := ids(r); len(got) != len(sent) {
		t.Fatalf("fetch out of memory: %v, want %v", got, sent)
	}
	ack := rebalance.Ack(f.ctx, f.rdb, "A", f.group, []rebalance.AckRequest{{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, IDs: sent}})[0]
	if ack.Err != nil || ack.Fenced || ack.Acked != 3 {
		t.Fatalf("ack out of memory: %+v", ack)
	}
	if r := rebalance.Release(f.ctx, f.rdb, "A", held)[0]; r.Err != nil || r.Fenced {
		t.Fatalf("release out of memory: %+v", r)
	}
	if err := rebalance.Leave(f.ctx, f.rdb, g, "A"); err != nil {
		t.Fatalf("leave out of memory: %v", err)
	}
}

// Out of memory Redis refuses every command queued in a MULTI, so a native
// read runs nothing: that is no read of unknown outcome, and the fetch
// must not claim the whole pending list again (which would count another
// delivery of every message in flight).
func TestNativeReadOutOfMemoryClaimsNothing(t *testing.T) {
	inst := redistest.Standalone(t)
	f := newFixture(t)
	f.rdb = inst.Client(t)
	if err := f.rdb.XGroupCreateMkStream(f.ctx, f.stream, f.group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	sent := f.add(t, 1)
	a := f.acquire(t, "A", time.Minute)
	if r := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour); len(r.Entries) != 1 {
		t.Fatalf("first fetch: %v", ids(r))
	}
	outOfMemory(t, f.rdb)
	r := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour)
	if len(r.Entries) != 0 || r.Reclaimed {
		t.Fatalf("a plain fetch out of memory returned %v (reclaimed %v), want nothing", ids(r), r.Reclaimed)
	}
	p, err := f.rdb.XPendingExt(f.ctx, &redis.XPendingExtArgs{Stream: f.stream, Group: f.group, Start: "-", End: "+", Count: 10}).Result()
	if err != nil || len(p) != 1 || p[0].ID != sent[0] || p[0].RetryCount != 1 {
		t.Fatalf("pending after the fetch out of memory: %+v %v, want %s delivered once", p, err, sent[0])
	}
}

package rebalance_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/internal/redistest"
	"github.com/segmenter/segmenter/rebalance"
)

func newGroup(t *testing.T) (context.Context, *redis.Client, rebalance.Group) {
	ns := redistest.Namespace(t)
	return context.Background(), redistest.Client(t), rebalance.Group{
		Members:     "test:{" + ns + "}:members",
		Assignment:  "test:{" + ns + "}:assign",
		Coordinator: "test:{" + ns + "}:coord",
	}
}

func beat(t *testing.T, ctx context.Context, rdb *redis.Client, g rebalance.Group, member string, session time.Duration, known int64) rebalance.Beat {
	t.Helper()
	// A member that knows a generation knows its incarnation.
	var inc string
	if known >= 0 {
		inc = rdb.HGet(ctx, g.Assignment, "inc").Val()
	}
	b := rebalance.RunTick(ctx, rdb, rebalance.Tick{Group: g, Member: member, Session: session, KnownGen: known, KnownInc: inc, Heartbeat: true}).Beat
	if b.Err != nil {
		t.Fatal(b.Err)
	}
	return b
}

func TestHeartbeatCarriesGenerationAndShare(t *testing.T) {
	ctx, rdb, g := newGroup(t)
	b := beat(t, ctx, rdb, g, "a", time.Minute, -1)
	if !b.NeedRebalance || b.InAssignment || b.Gen != 0 {
		t.Fatalf("a new member's first heartbeat: %+v", b)
	}
	gen, moved, err := rebalance.Rebalance(ctx, rdb, g, "tok", 4, time.Second)
	if err != nil || gen != 1 || moved != 0 {
		t.Fatalf("first rebalance: gen %d moved %d err %v", gen, moved, err)
	}
	b = beat(t, ctx, rdb, g, "a", time.Minute, 0)
	if b.NeedRebalance || !b.InAssignment || b.Gen != 1 || !slices.Equal(b.Partitions, []int{0, 1, 2, 3}) {
		t.Fatalf("after the rebalance: %+v", b)
	}
	// Same generation: the share is not sent again.
	b = beat(t, ctx, rdb, g, "a", time.Minute, 1)
	if b.Partitions == nil || len(b.Partitions) != 0 || b.Gen != 1 {
		t.Fatalf("heartbeat at the known generation: %+v", b)
	}
	// A second member joins: a rebalance moves the fewest partitions.
	if b := beat(t, ctx, rdb, g, "b", time.Minute, -1); !b.NeedRebalance {
		t.Fatalf("join did not ask for a rebalance: %+v", b)
	}
	gen, moved, err = rebalance.Rebalance(ctx, rdb, g, "tok", 4, time.Second)
	if err != nil || gen != 2 || moved != 2 {
		t.Fatalf("rebalance after a join: gen %d moved %d err %v", gen, moved, err)
	}
	a, bb := beat(t, ctx, rdb, g, "a", time.Minute, 1), beat(t, ctx, rdb, g, "b", time.Minute, -1)
	if len(a.Partitions) != 2 || len(bb.Partitions) != 2 || slices.ContainsFunc(a.Partitions, func(p int) bool { return slices.Contains(bb.Partitions, p) }) {
		t.Fatalf("shares %v and %v", a.Partitions, bb.Partitions)
	}
	// A member leaves: the others are told to rebalance.
	if err := rebalance.Leave(ctx, rdb, g, "b"); err != nil {
		t.Fatal(err)
	}
	if b := beat(t, ctx, rdb, g, "a", time.Minute, 2); !b.NeedRebalance {
		t.Fatalf("leave did not ask for a rebalance: %+v", b)
	}
	if _, _, err := rebalance.Rebalance(ctx, rdb, g, "tok", 4, time.Second); err != nil {
		t.Fatal(err)
	}
	if b := beat(t, ctx, rdb, g, "a", time.Minute, 2); b.NeedRebalance || len(b.Partitions) != 4 {
		t.Fatalf("after the leave: %+v", b)
	}
}

func TestExpiredMemberIsEvictedAndItsShareMoves(t *testing.T) {
	ctx, rdb, g := newGroup(t)
	beat(t, ctx, rdb, g, "a", time.Minute, -1)
	beat(t, ctx, rdb, g, "dying", 50*time.Millisecond, -1)
	if _, _, err := rebalance.Rebalance(ctx, rdb, g, "tok", 6, time.Second); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 5*time.Second, func() bool {
		return beat(t, ctx, rdb, g, "a", time.Minute, 1).NeedRebalance
	}, "the expired member was never noticed")
	if _, _, err := rebalance.Rebalance(ctx, rdb, g, "tok", 6, time.Second); err != nil {
		t.Fatal(err)
	}
	snap, err := rebalance.ReadSnapshot(ctx, rdb, g)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(snap.Live, []string{"a"}) || len(snap.Assignment["a"]) != 6 || len(snap.Assignment) != 1 {
		t.Fatalf("snapshot after eviction: %+v", snap)
	}
	if n, _ := rdb.ZCard(ctx, g.Members).Result(); n != 1 {
		t.Fatalf("%d members left in the set, want 1", n)
	}
}

func TestRebalanceIsFencedByLockAndGeneration(t *testing.T) {
	ctx, rdb, g := newGroup(t)
	beat(t, ctx, rdb, g, "a", time.Minute, -1)
	if err := rdb.Set(ctx, g.Coordinator, "someone", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := rebalance.Rebalance(ctx, rdb, g, "tok", 4, time.Second); !errors.Is(err, rebalance.ErrCoordinatorBusy) {
		t.Fatalf("rebalance under another's lock: %v", err)
	}
	if v, _ := rdb.Get(ctx, g.Coordinator).Result(); v != "someone" {
		t.Fatalf("the other's lock was touched: %q", v)
	}
	rdb.Del(ctx, g.Coordinator)
	if _, _, err := rebalance.Rebalance(ctx, rdb, g, "tok", 4, time.Second); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.Exists(ctx, g.Coordinator).Result(); n != 0 {
		t.Fatal("the lock was not released after the rebalance")
	}
	// A commit by a caller whose lock is gone (it expired while the caller
	// was paused, and nobody or another member holds it now) writes
	// nothing, even at the current generation.
	gen, err := rebalance.Commit(ctx, rdb, g, "tok", 1, rebalance.Assignment{"intruder": {0, 1, 2, 3}})
	if !errors.Is(err, rebalance.ErrCoordinatorBusy) || gen != 1 {
		t.Fatalf("commit without the lock: gen %d err %v", gen, err)
	}
	if err := rdb.Set(ctx, g.Coordinator, "other", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	gen, err = rebalance.Commit(ctx, rdb, g, "tok", 1, rebalance.Assignment{"intruder": {0, 1, 2, 3}})
	if !errors.Is(err, rebalance.ErrCoordinatorBusy) || gen != 1 {
		t.Fatalf("commit under another's lock: gen %d err %v", gen, err)
	}
	// A commit computed from a stale generation writes nothing.
	gen, err = rebalance.Commit(ctx, rdb, g, "other", 0, rebalance.Assignment{"intruder": {0, 1, 2, 3}})
	if !errors.Is(err, rebalance.ErrGenerationChanged) || gen != 1 {
		t.Fatalf("stale commit: gen %d err %v", gen, err)
	}
	snap, err := rebalance.ReadSnapshot(ctx, rdb, g)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Gen != 1 || len(snap.Assignment["a"]) != 4 || len(snap.Assignment) != 1 {
		t.Fatalf("a stale commit changed the assignment: %+v", snap)
	}
}

func TestTickRenewsEveryLeaseAndFencesLostOnes(t *testing.T) {
	ctx, rdb, g := newGroup(t)
	ns := redistest.Namespace(t)
	keys := []string{"test:{" + ns + "}:l1", "test:{" + ns + "}:l2", "test:{" + ns + "}:l3"}
	grants := rebalance.Acquire(ctx, rdb, "A", time.Minute, keys)
	held := make([]rebalance.Held, len(keys))
	for i, gr := range grants {
		held[i] = rebalance.Held{Key: keys[i], Epoch: gr.Epoch}
	}
	held[1].Epoch-- // a lease A no longer holds under that epoch
	before, _ := rdb.HGet(ctx, keys[0], "x").Int64()
	res := rebalance.RunTick(ctx, rdb, rebalance.Tick{Group: g, Member: "A", Session: 2 * time.Minute, KnownGen: -1, Heartbeat: true, Renew: held})
	for i, r := range res.Renewed {
		if r.Err != nil || r.Fenced != (i == 1) {
			t.Fatalf("renewal %d: %+v", i, r)
		}
	}
	if after, _ := rdb.HGet(ctx, keys[0], "x").Int64(); after < before+50_000 {
		t.Fatalf("lease expiry went from %d to %d: not renewed for the 2 minutes asked", before, after)
	}
	if x, _ := rdb.HGet(ctx, keys[1], "x").Int64(); x > before+1000 {
		t.Fatal("a fenced lease was renewed")
	}
}

func TestLostAssignmentStartsANewIncarnation(t *testing.T) {
	ctx, rdb, g := newGroup(t)
	beat(t, ctx, rdb, g, "a", time.Minute, -1)
	for range 3 {
		if _, _, err := rebalance.Rebalance(ctx, rdb, g, "tok", 4, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	before := beat(t, ctx, rdb, g, "a", time.Minute, 0)
	if before.Gen != 3 || before.Incarnation == "" {
		t.Fatalf("before: %+v", before)
	}
	// A restart without persistence loses the assignment: generations
	// restart, under another incarnation, so members follow them.
	if err := rdb.Del(ctx, g.Assignment).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := rebalance.Rebalance(ctx, rdb, g, "tok", 4, time.Second); err != nil {
		t.Fatal(err)
	}
	after := rebalance.RunTick(ctx, rdb, rebalance.Tick{Group: g, Member: "a", Session: time.Minute, KnownGen: 3, KnownInc: before.Incarnation, Heartbeat: true}).Beat
	if after.Gen != 1 || after.Incarnation == "" || after.Incarnation == before.Incarnation || len(after.Partitions) != 4 {
		t.Fatalf("after the loss: %+v (before %+v)", after, before)
	}
}

func TestRolledBackGenerationGoesOnFromTheNewestSeen(t *testing.T) {
	ctx, rdb, g := newGroup(t)
	beat(t, ctx, rdb, g, "a", time.Minute, -1)
	for range 3 {
		if _, _, err := rebalance.Rebalance(ctx, rdb, g, "tok", 4, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	seen := beat(t, ctx, rdb, g, "a", time.Minute, -1)
	if seen.Gen != 3 || len(seen.Partitions) != 4 {
		t.Fatalf("before: %+v", seen)
	}
	// Known generation and incarnation: nothing to send.
	same := rebalance.RunTick(ctx, rdb, rebalance.Tick{Group: g, Member: "a", Session: time.Minute, KnownGen: 3, KnownInc: seen.Incarnation, Heartbeat: true}).Beat
	if same.Err != nil || same.Gen != 3 || len(same.Partitions) != 0 || same.NeedRebalance {
		t.Fatalf("known generation: %+v", same)
	}
	// An asynchronous failover loses the last commit: the server is back at
	// generation 2 of the same incarnation, which the member has seen past.
	if err := rdb.HSet(ctx, g.Assignment, "gen", "2").Err(); err != nil {
		t.Fatal(err)
	}
	back := rebalance.RunTick(ctx, rdb, rebalance.Tick{Group: g, Member: "a", Session: time.Minute, KnownGen: 3, KnownInc: seen.Incarnation, Heartbeat: true}).Beat
	if back.Err != nil || back.Gen != 3 || !back.NeedRebalance {
		t.Fatalf("after the rollback: %+v, want generation 3 and a rebalance", back)
	}
	gen, _, err := rebalance.Rebalance(ctx, rdb, g, "tok", 4, time.Second)
	if err != nil || gen != 4 {
		t.Fatalf("rebalance after the rollback: generation %d, %v; want 4", gen, err)
	}
	next := rebalance.RunTick(ctx, rdb, rebalance.Tick{Group: g, Member: "a", Session: time.Minute, KnownGen: 3, KnownInc: seen.Incarnation, Heartbeat: true}).Beat
	if next.Gen != 4 || len(next.Partitions) != 4 || next.Incarnation != seen.Incarnation {
		t.Fatalf("the next assignment: %+v", next)
	}
}

func TestReadMembersHeartbeatsAndEviction(t *testing.T) {
	ctx, rdb, g := newGroup(t)
	beat(t, ctx, rdb, g, "a", time.Minute, -1)
	beat(t, ctx, rdb, g, "b", 50*time.Millisecond, -1)
	if _, _, err := rebalance.Rebalance(ctx, rdb, g, "tok", 4, time.Second); err != nil {
		t.Fatal(err)
	}
	m, err := rebalance.ReadMembers(ctx, rdb, g)
	if err != nil {
		t.Fatal(err)
	}
	if m.Gen != 1 || len(m.Members) != 2 || m.Members[0].ID != "a" || m.Members[1].ID != "b" {
		t.Fatalf("members %+v, want a and b at generation 1", m)
	}
	for _, x := range m.Members {
		if !x.Assigned || len(x.Partitions) != 2 {
			t.Errorf("member %s: assigned %v partitions %v, want 2 partitions", x.ID, x.Assigned, x.Partitions)
		}
		if x.LastBeat.IsZero() || x.LastBeat.After(m.Now) || m.Now.Sub(x.LastBeat) > 10*time.Second {
			t.Errorf("member %s: last heartbeat %v, server time %v", x.ID, x.LastBeat, m.Now)
		}
		if !x.Expiry.After(x.LastBeat) {
			t.Errorf("member %s: session expiry %v not after its heartbeat %v", x.ID, x.Expiry, x.LastBeat)
		}
	}
	if got := m.Members[0].Expiry.Sub(m.Members[0].LastBeat); got != time.Minute {
		t.Errorf("a's session expiry is %v after its heartbeat, want 1m", got)
	}

	// b's session expires: a rebalance evicts it, with its heartbeat.
	redistest.Eventually(t, 5*time.Second, func() bool {
		m, err := rebalance.ReadMembers(ctx, rdb, g)
		return err == nil && m.Now.After(m.Members[1].Expiry)
	}, "b's session expired")
	if _, _, err := rebalance.Rebalance(ctx, rdb, g, "tok", 4, time.Second); err != nil {
		t.Fatal(err)
	}
	if rdb.HExists(ctx, g.Assignment, "hb:b").Val() {
		t.Error("the evicted member's heartbeat is still in the assignment hash")
	}
	// a leaves: its heartbeat goes with it.
	if err := rebalance.Leave(ctx, rdb, g, "a"); err != nil {
		t.Fatal(err)
	}
	if rdb.HExists(ctx, g.Assignment, "hb:a").Val() {
		t.Error("the member that left still has its heartbeat in the assignment hash")
	}
	m, err = rebalance.ReadMembers(ctx, rdb, g)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range m.Members {
		if !x.LastBeat.IsZero() || x.ID == "b" {
			t.Errorf("after leave and eviction: member %+v", x)
		}
	}
}

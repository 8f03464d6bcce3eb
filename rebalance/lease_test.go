package rebalance_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/internal/redistest"
	"github.com/segmenter/segmenter/rebalance"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// bothPaths runs test against the native reads and acks of a single node,
// then against the scripts alone (a cluster's path).
func bothPaths(t *testing.T, test func(t *testing.T)) {
	t.Run("native", test)
	t.Run("scripts", func(t *testing.T) {
		rebalance.UseScriptsOnly(t)
		test(t)
	})
}

type fixture struct {
	ctx    context.Context
	rdb    *redis.Client
	lease  string
	stream string
	group  string
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	ns := redistest.Namespace(t)
	f := fixture{
		ctx:    context.Background(),
		rdb:    redistest.Client(t),
		lease:  "test:{" + ns + "}:lease",
		stream: "test:{" + ns + "}:p",
		group:  "g",
	}
	if err := f.rdb.XGroupCreateMkStream(f.ctx, f.stream, f.group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f fixture) add(t *testing.T, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		id, err := f.rdb.XAdd(f.ctx, &redis.XAddArgs{Stream: f.stream, Values: []any{"n", i}}).Result()
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	return ids
}

func (f fixture) acquire(t *testing.T, owner string, ttl time.Duration) rebalance.Grant {
	t.Helper()
	g := rebalance.Acquire(f.ctx, f.rdb, owner, ttl, []string{f.lease})[0]
	if g.Err != nil {
		t.Fatal(g.Err)
	}
	return g
}

func (f fixture) fetch(t *testing.T, owner string, epoch int64, req rebalance.FetchRequest, redeliverAfter time.Duration) rebalance.FetchResult {
	t.Helper()
	req.LeaseKey, req.StreamKey, req.Epoch = f.lease, f.stream, epoch
	if req.FetchID == "" {
		req.FetchID = fmt.Sprint(time.Now().UnixNano())
	}
	r := rebalance.Fetch(f.ctx, f.rdb, owner, f.group, redeliverAfter, []rebalance.FetchRequest{req})[0]
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	return r
}

func ids(r rebalance.FetchResult) []string {
	out := make([]string, len(r.Entries))
	for i, e := range r.Entries {
		out[i] = e.ID
	}
	return out
}

func TestLeaseLifecycle(t *testing.T) {
	f := newFixture(t)
	a := f.acquire(t, "A", time.Minute)
	if !a.Granted || a.Holder != "A" || a.Epoch <= 0 {
		t.Fatalf("first acquire: %+v", a)
	}
	b := f.acquire(t, "B", time.Minute)
	if b.Granted || b.Holder != "A" || b.Epoch != a.Epoch || b.TTL <= 0 {
		t.Fatalf("acquire of a held lease: %+v", b)
	}
	held := []rebalance.Held{{Key: f.lease, Epoch: a.Epoch}}
	if r := rebalance.Renew(f.ctx, f.rdb, "A", time.Minute, held)[0]; r.Err != nil || r.Fenced {
		t.Fatalf("renew by holder: %+v", r)
	}
	stale := []rebalance.Held{{Key: f.lease, Epoch: a.Epoch - 1}}
	if r := rebalance.Renew(f.ctx, f.rdb, "A", time.Minute, stale)[0]; !r.Fenced {
		t.Fatalf("renew with a stale epoch: %+v", r)
	}
	if r := rebalance.Renew(f.ctx, f.rdb, "B", time.Minute, held)[0]; !r.Fenced {
		t.Fatalf("renew by a non-holder: %+v", r)
	}
	if r := rebalance.Release(f.ctx, f.rdb, "A", held)[0]; r.Err != nil || r.Fenced {
		t.Fatalf("release: %+v", r)
	}
	b = f.acquire(t, "B", time.Minute)
	if !b.Granted || b.Epoch <= a.Epoch {
		t.Fatalf("acquire after release: %+v (A had epoch %d)", b, a.Epoch)
	}
	if r := rebalance.Renew(f.ctx, f.rdb, "A", time.Minute, held)[0]; !r.Fenced {
		t.Fatalf("renew after losing the lease: %+v", r)
	}
	if r := rebalance.Release(f.ctx, f.rdb, "A", held)[0]; !r.Fenced {
		t.Fatalf("release of a lease held by another: %+v", r)
	}
}

func TestLeaseExpiresToAnotherOwnerWithGreaterEpoch(t *testing.T) {
	f := newFixture(t)
	a := f.acquire(t, "A", 50*time.Millisecond)
	var b rebalance.Grant
	redistest.Eventually(t, 5*time.Second, func() bool {
		b = f.acquire(t, "B", time.Minute)
		return b.Granted
	}, "B never got the expired lease")
	if b.Epoch <= a.Epoch {
		t.Fatalf("epoch went from %d to %d", a.Epoch, b.Epoch)
	}
}

func TestEpochNotReissuedAfterLeaseHashLost(t *testing.T) {
	f := newFixture(t)
	a := f.acquire(t, "A", time.Minute)
	// A restart without persistence (or an asynchronous failover) loses the hash.
	if err := f.rdb.Del(f.ctx, f.lease).Err(); err != nil {
		t.Fatal(err)
	}
	b := f.acquire(t, "B", time.Minute)
	if !b.Granted || b.Epoch <= a.Epoch {
		t.Fatalf("after losing the lease hash B got %+v, A had epoch %d", b, a.Epoch)
	}
}

func TestFetchAndAckAreFenced(t *testing.T) { bothPaths(t, testFetchAndAckAreFenced) }

func testFetchAndAckAreFenced(t *testing.T) {
	f := newFixture(t)
	f.add(t, 3)
	a := f.acquire(t, "A", time.Minute)
	r := rebalance.Fetch(f.ctx, f.rdb, "A", f.group, time.Hour, []rebalance.FetchRequest{{
		LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch - 1, Count: 10, FetchID: "1",
	}})[0]
	if !r.Fenced || len(r.Entries) != 0 {
		t.Fatalf("fetch with a stale epoch: %+v", r)
	}
	got := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour)
	if len(got.Entries) != 3 {
		t.Fatalf("fetch returned %d entries, want 3", len(got.Entries))
	}
	rebalance.Release(f.ctx, f.rdb, "A", []rebalance.Held{{Key: f.lease, Epoch: a.Epoch}})
	b := f.acquire(t, "B", time.Minute)

	ack := rebalance.Ack(f.ctx, f.rdb, "A", f.group, []rebalance.AckRequest{{
		LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, IDs: ids(got),
	}})[0]
	if !ack.Fenced || ack.Acked != 0 {
		t.Fatalf("ack by the old owner: %+v", ack)
	}
	if n, _ := f.rdb.XPending(f.ctx, f.stream, f.group).Result(); n.Count != 3 {
		t.Fatalf("fenced ack changed the pending list: %d pending", n.Count)
	}
	r = rebalance.Fetch(f.ctx, f.rdb, "A", f.group, 0, []rebalance.FetchRequest{{
		LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, Count: 10, FetchID: "2",
	}})[0]
	if !r.Fenced {
		t.Fatalf("fetch by the old owner: %+v", r)
	}
	ack = rebalance.Ack(f.ctx, f.rdb, "B", f.group, []rebalance.AckRequest{{
		LeaseKey: f.lease, StreamKey: f.stream, Epoch: b.Epoch, IDs: ids(got),
	}})[0]
	if ack.Fenced || ack.Err != nil || ack.Acked != 3 {
		t.Fatalf("ack by the new owner: %+v", ack)
	}
}

func TestTakeoverClaimsPendingFirstInOrder(t *testing.T) {
	bothPaths(t, testTakeoverClaimsPendingFirstInOrder)
}

func testTakeoverClaimsPendingFirstInOrder(t *testing.T) {
	f := newFixture(t)
	sent := f.add(t, 5)
	a := f.acquire(t, "A", time.Minute)
	first := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 3}, time.Hour)
	if !slices.Equal(ids(first), sent[:3]) {
		t.Fatalf("A read %v, want %v", ids(first), sent[:3])
	}
	// A vanishes without releasing; B takes over and claims from the start.
	if err := f.rdb.HSet(f.ctx, f.lease, "x", "0").Err(); err != nil {
		t.Fatal(err)
	}
	b := f.acquire(t, "B", time.Minute)
	if !b.Granted {
		t.Fatalf("B could not take the expired lease: %+v", b)
	}
	r := f.fetch(t, "B", b.Epoch, rebalance.FetchRequest{Count: 2, Cursor: "0-0"}, time.Hour)
	if !slices.Equal(ids(r), sent[:2]) || r.NextCursor == "" {
		t.Fatalf("B's first fetch: %v cursor %q, want %v and a cursor", ids(r), r.NextCursor, sent[:2])
	}
	for _, e := range r.Entries {
		if r.Deliveries[e.ID] != 2 {
			t.Fatalf("delivery count of %s is %d, want 2", e.ID, r.Deliveries[e.ID])
		}
	}
	r = f.fetch(t, "B", b.Epoch, rebalance.FetchRequest{Count: 3, Cursor: r.NextCursor, CursorIdle: r.NextCursorIdle}, time.Hour)
	if !slices.Equal(ids(r), sent[2:5]) || r.NextCursor != "" {
		t.Fatalf("B's second fetch: %v cursor %q, want the last pending then new: %v", ids(r), r.NextCursor, sent[2:5])
	}
	if r.Deliveries[sent[2]] != 2 || r.Deliveries[sent[3]] != 0 {
		t.Fatalf("deliveries %v: want %s redelivered and %s new", r.Deliveries, sent[2], sent[3])
	}
}

func TestRedeliveryGoesFirstOldestFirst(t *testing.T) {
	bothPaths(t, testRedeliveryGoesFirstOldestFirst)
}

func testRedeliveryGoesFirstOldestFirst(t *testing.T) {
	f := newFixture(t)
	sent := f.add(t, 5)
	a := f.acquire(t, "A", time.Minute)
	r := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 4}, time.Hour)
	if len(r.Entries) != 4 {
		t.Fatalf("read %d", len(r.Entries))
	}
	rebalance.Ack(f.ctx, f.rdb, "A", f.group, []rebalance.AckRequest{{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, IDs: []string{sent[1], sent[3]}}})
	// Not due yet: the new message comes.
	r = f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour)
	if !slices.Equal(ids(r), sent[4:5]) {
		t.Fatalf("before redelivery is due: %v, want %v", ids(r), sent[4:5])
	}
	f.add(t, 1)
	// Due (redelivery after 0): the unacked ones come back, oldest first,
	// and nothing newer of the partition comes in the same fetch.
	r = f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, 0)
	want := []string{sent[0], sent[2], sent[4]}
	if !slices.Equal(ids(r), want) {
		t.Fatalf("redelivery: %v, want %v", ids(r), want)
	}
	for _, id := range want {
		if r.Deliveries[id] != 2 {
			t.Fatalf("delivery count of %s: %d, want 2", id, r.Deliveries[id])
		}
	}
}

func TestRetriedFetchReclaimsInsteadOfSkipping(t *testing.T) {
	bothPaths(t, testRetriedFetchReclaimsInsteadOfSkipping)
}

func testRetriedFetchReclaimsInsteadOfSkipping(t *testing.T) {
	f := newFixture(t)
	sent := f.add(t, 4)
	a := f.acquire(t, "A", time.Minute)
	lost := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 2, FetchID: "same"}, time.Hour)
	if !slices.Equal(ids(lost), sent[:2]) {
		t.Fatalf("first fetch: %v", ids(lost))
	}
	// The reply was lost and the client retried the very same call: it must
	// get the first messages again, not the next ones.
	retry := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 2, FetchID: "same"}, time.Hour)
	if !slices.Equal(ids(retry), sent[:2]) || !retry.Reclaimed {
		t.Fatalf("retried fetch: %v (reclaimed %v), want %v reclaimed", ids(retry), retry.Reclaimed, sent[:2])
	}
	if lost.Reclaimed {
		t.Fatal("a first read says it reclaimed")
	}
	next := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10, FetchID: "next", Cursor: retry.NextCursor, CursorIdle: retry.NextCursorIdle}, time.Hour)
	if !slices.Equal(ids(next), sent[2:]) {
		t.Fatalf("after the retry: %v, want %v", ids(next), sent[2:])
	}
}

func TestTrimmedPendingEntriesAreReported(t *testing.T) {
	bothPaths(t, testTrimmedPendingEntriesAreReported)
}

func testTrimmedPendingEntriesAreReported(t *testing.T) {
	f := newFixture(t)
	sent := f.add(t, 3)
	a := f.acquire(t, "A", time.Minute)
	f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour)
	if err := f.rdb.XTrimMaxLen(f.ctx, f.stream, 0).Err(); err != nil {
		t.Fatal(err)
	}
	r := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, 0)
	if !slices.Equal(r.Trimmed, sent) || len(r.Entries) != 0 {
		t.Fatalf("trimmed %v entries %v, want trimmed %v", r.Trimmed, ids(r), sent)
	}
	if r.TopID != "0-0" {
		t.Fatalf("top of an empty partition: %q", r.TopID)
	}
}

func TestFetchOnMissingGroupIsNOGROUP(t *testing.T) { bothPaths(t, testFetchOnMissingGroupIsNOGROUP) }

func testFetchOnMissingGroupIsNOGROUP(t *testing.T) {
	f := newFixture(t)
	a := f.acquire(t, "A", time.Minute)
	if err := f.rdb.Del(f.ctx, f.stream).Err(); err != nil {
		t.Fatal(err)
	}
	r := rebalance.Fetch(f.ctx, f.rdb, "A", f.group, time.Hour, []rebalance.FetchRequest{{
		LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, Count: 1, FetchID: "1",
	}})[0]
	if !redis.HasErrorPrefix(r.Err, "NOGROUP") {
		t.Fatalf("fetch on a deleted stream: err %v", r.Err)
	}
}

func TestScriptsSurviveScriptFlush(t *testing.T) { bothPaths(t, testScriptsSurviveScriptFlush) }

func testScriptsSurviveScriptFlush(t *testing.T) {
	// SCRIPT FLUSH empties the server's script cache for every client, so
	// this test runs on a server of its own.
	inst := redistest.Standalone(t)
	rdb := inst.Client(t)
	ctx := context.Background()
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	g := rebalance.Acquire(ctx, rdb, "A", time.Minute, []string{"k1", "k2"})
	for _, x := range g {
		if x.Err != nil || !x.Granted {
			t.Fatalf("acquire after SCRIPT FLUSH: %+v", x)
		}
	}
}

func TestClaimRestartsWhenAPassedMessageComesDueAgain(t *testing.T) {
	bothPaths(t, testClaimRestartsWhenAPassedMessageComesDueAgain)
}

func testClaimRestartsWhenAPassedMessageComesDueAgain(t *testing.T) {
	f := newFixture(t)
	sent := f.add(t, 4)
	a := f.acquire(t, "A", time.Minute)
	f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 4}, time.Hour)
	// Everything is due: a claim starts and stops after two messages.
	r := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 2}, 0)
	if !slices.Equal(ids(r), sent[:2]) || r.NextCursor == "" {
		t.Fatalf("first part of the claim: %v cursor %q", ids(r), r.NextCursor)
	}
	// The claimed messages are due again (redelivery after 0) before the
	// claim went on: they go first, not sent[2:].
	r = f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 2, Cursor: r.NextCursor, CursorIdle: r.NextCursorIdle}, 0)
	if !slices.Equal(ids(r), sent[:2]) {
		t.Fatalf("claim continued past due messages: %v, want %v", ids(r), sent[:2])
	}
}

func TestTouchKeepsMessagesFromComingDue(t *testing.T) {
	f := newFixture(t)
	sent := f.add(t, 2)
	a := f.acquire(t, "A", time.Minute)
	f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 2}, time.Hour)
	// Let them idle, by Redis' clock, then touch one.
	redistest.Eventually(t, 5*time.Second, func() bool {
		p, err := f.rdb.XPendingExt(f.ctx, &redis.XPendingExtArgs{Stream: f.stream, Group: f.group, Start: "-", End: "+", Count: 1}).Result()
		return err == nil && len(p) == 1 && p[0].Idle >= 30*time.Millisecond
	}, "never idle")
	r := rebalance.Touch(f.ctx, f.rdb, "A", f.group, []rebalance.AckRequest{{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, IDs: sent[:1]}})[0]
	if r.Err != nil || r.Fenced || r.Acked != 1 {
		t.Fatalf("touch: %+v", r)
	}
	p, err := f.rdb.XPendingExt(f.ctx, &redis.XPendingExtArgs{Stream: f.stream, Group: f.group, Start: "-", End: "+", Count: 2}).Result()
	if err != nil || len(p) != 2 {
		t.Fatal(p, err)
	}
	if p[0].Idle >= 30*time.Millisecond || p[0].RetryCount != 1 || p[1].Idle < 30*time.Millisecond {
		t.Fatalf("after touching %s: %+v", sent[0], p)
	}
	if r := rebalance.Touch(f.ctx, f.rdb, "A", f.group, []rebalance.AckRequest{{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch - 1, IDs: sent}})[0]; !r.Fenced {
		t.Fatalf("touch with a stale epoch: %+v", r)
	}
}

func TestTakeoverRemovesDepartedConsumersOnceTheirPendingIsClaimed(t *testing.T) {
	f := newFixture(t)
	f.add(t, 3)
	a := f.acquire(t, "A", time.Minute)
	f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 3}, time.Hour)
	if err := f.rdb.HSet(f.ctx, f.lease, "x", "0").Err(); err != nil { // A vanished
		t.Fatal(err)
	}
	b := f.acquire(t, "B", time.Minute)
	consumers := func() map[string]int64 {
		cs, err := f.rdb.XInfoConsumers(f.ctx, f.stream, f.group).Result()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int64{}
		for _, c := range cs {
			out[c.Name] = c.Pending
		}
		return out
	}
	// A partial claim leaves A's entry: it still holds a pending message.
	r := f.fetch(t, "B", b.Epoch, rebalance.FetchRequest{Count: 2, Cursor: "0-0"}, time.Hour)
	if cs := consumers(); cs["A"] != 1 {
		t.Fatalf("after a partial claim: %v", cs)
	}
	f.fetch(t, "B", b.Epoch, rebalance.FetchRequest{Count: 2, Cursor: r.NextCursor, CursorIdle: r.NextCursorIdle}, time.Hour)
	if cs := consumers(); len(cs) != 1 || cs["B"] != 3 {
		t.Fatalf("after the whole pending list was claimed: %v, want only B with 3", cs)
	}
}

func TestAckOfSeveralPartitionsFencesEachOnItsOwn(t *testing.T) {
	bothPaths(t, testAckOfSeveralPartitionsFencesEachOnItsOwn)
}

func testAckOfSeveralPartitionsFencesEachOnItsOwn(t *testing.T) {
	f, g := newFixture(t), newFixture(t)
	fi, gi := f.add(t, 3), g.add(t, 2)
	a := f.acquire(t, "A", time.Minute)
	ga := g.acquire(t, "A", time.Minute)
	f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour)
	g.fetch(t, "A", ga.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour)
	res := rebalance.Ack(f.ctx, f.rdb, "A", f.group, []rebalance.AckRequest{
		{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, IDs: fi},
		{LeaseKey: g.lease, StreamKey: g.stream, Epoch: ga.Epoch - 1, IDs: gi}, // lost
	})
	if res[0].Err != nil || res[0].Fenced || res[0].Acked != 3 || !res[1].Fenced || res[1].Acked != 0 {
		t.Fatalf("acks %+v", res)
	}
	if p, _ := g.rdb.XPending(g.ctx, g.stream, g.group).Result(); p.Count != 2 {
		t.Fatalf("the fenced partition's messages were acked: %d pending", p.Count)
	}
}

// A reset that is not forced leaves a partition whose lease is held alone,
// in the same script as the reset: a consumer that took the lease after the
// caller looked reads on from where it was.
func TestResetLeavesAPartitionWithAHeldLeaseAlone(t *testing.T) {
	f := newFixture(t)
	ids := f.add(t, 3)
	if g := rebalance.Acquire(f.ctx, f.rdb, "A", time.Minute, []string{f.lease}); !g[0].Granted {
		t.Fatalf("acquire: %+v", g[0])
	}
	res := rebalance.ResetGroup(f.ctx, f.rdb, f.group, []string{f.stream}, []string{f.lease}, "latest", false, false)
	if res[0].Holder != "A" || res[0].Err != nil {
		t.Fatalf("reset while A holds the lease: %+v, want refused with holder A", res[0])
	}
	groups, err := f.rdb.XInfoGroups(f.ctx, f.stream).Result()
	if err != nil {
		t.Fatal(err)
	}
	if groups[0].LastDeliveredID != "0-0" {
		t.Fatalf("the refused reset moved the group to %s", groups[0].LastDeliveredID)
	}
	res = rebalance.ResetGroup(f.ctx, f.rdb, f.group, []string{f.stream}, []string{f.lease}, "latest", false, true)
	if res[0].Err != nil || res[0].Holder != "" || res[0].To != ids[2] {
		t.Fatalf("forced reset: %+v, want the group at %s", res[0], ids[2])
	}
}

// An ack whose first run acknowledged its messages but whose reply was
// lost, sent again (by go-redis, or by the SDK after a failed native ack)
// once the lease went to another consumer, is not reported as fenced: the
// ack's id in the lease says its first run did the work. Another ack under
// the lost lease is fenced and acknowledges nothing, also alongside another
// partition (one script for both on a single node).
func TestAckSentAgainAfterTheLeaseMovedIsNotFenced(t *testing.T) {
	bothPaths(t, func(t *testing.T) {
		f := newFixture(t)
		f.add(t, 2)
		other := newFixture(t)
		other.add(t, 1)
		a := f.acquire(t, "A", time.Minute)
		b := other.acquire(t, "A", time.Minute)
		read := func(fx fixture, epoch int64) []rebalance.Entry {
			r := fx.fetch(t, "A", epoch, rebalance.FetchRequest{LeaseKey: fx.lease, StreamKey: fx.stream, Epoch: epoch, Count: 10, FetchID: "f", Cursor: "0-0"}, time.Hour)
			if r.Err != nil || r.Fenced {
				t.Fatalf("fetch: %+v", r)
			}
			return r.Entries
		}
		got, gotOther := read(f, a.Epoch), read(other, b.Epoch)
		if len(got) != 2 || len(gotOther) != 1 {
			t.Fatalf("read %d and %d entries, want 2 and 1", len(got), len(gotOther))
		}
		done, held := got[0].ID, got[1].ID
		first := []rebalance.AckRequest{{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, IDs: []string{done}}}
		if r := rebalance.AckWithID(f.ctx, f.rdb, "A", f.group, "ack-1", first)[0]; r.Err != nil || r.Fenced || r.Acked != 1 {
			t.Fatalf("first ack: %+v", r)
		}
		// A's leases expire and B is granted them.
		for _, fx := range []fixture{f, other} {
			if err := fx.rdb.HSet(fx.ctx, fx.lease, "x", 0).Err(); err != nil {
				t.Fatal(err)
			}
			if g := fx.acquire(t, "B", time.Minute); !g.Granted {
				t.Fatalf("B not granted: %+v", g)
			}
		}
		if r := rebalance.AckWithID(f.ctx, f.rdb, "A", f.group, "ack-1", first)[0]; r.Err != nil || r.Fenced {
			t.Fatalf("the first ack sent again after the lease moved: %+v, want acknowledged", r)
		}
		for _, reqs := range [][]rebalance.AckRequest{
			{{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, IDs: []string{held}}},
			{{LeaseKey: f.lease, StreamKey: f.stream, Epoch: a.Epoch, IDs: []string{done, held}},
				{LeaseKey: other.lease, StreamKey: other.stream, Epoch: b.Epoch, IDs: []string{gotOther[0].ID}}},
		} {
			for i, r := range rebalance.Ack(f.ctx, f.rdb, "A", f.group, reqs) {
				if !r.Fenced {
					t.Fatalf("another ack under the lost lease (%d of %d): %+v, want fenced", i+1, len(reqs), r)
				}
			}
		}
		if n, _ := f.rdb.XPending(f.ctx, f.stream, f.group).Result(); n.Count != 1 {
			t.Fatalf("%d pending, want the held message only", n.Count)
		}
		if n, _ := other.rdb.XPending(other.ctx, other.stream, other.group).Result(); n.Count != 1 {
			t.Fatalf("the other partition has %d pending, want 1", n.Count)
		}
	})
}

// A release sent again with the same token (go-redis sends it again by
// itself when its reply is lost) succeeds again, also once the next owner
// took the lease, and frees nothing of the next owner's; another release
// of a lease another holds is fenced, as is one of a lease that expired and
// went to another consumer before it was released.
func TestReleaseSentAgainSucceeds(t *testing.T) {
	f := newFixture(t)
	a := f.acquire(t, "A", time.Minute)
	held := []rebalance.Held{{Key: f.lease, Epoch: a.Epoch, Token: "release-1"}}
	if r := rebalance.Release(f.ctx, f.rdb, "A", held)[0]; r.Err != nil || r.Fenced {
		t.Fatalf("release: %+v", r)
	}
	b := f.acquire(t, "B", time.Minute)
	if !b.Granted {
		t.Fatalf("B's acquire: %+v", b)
	}
	if r := rebalance.Release(f.ctx, f.rdb, "A", held)[0]; r.Err != nil || r.Fenced {
		t.Fatalf("A's release sent again after B took the lease: %+v, want released", r)
	}
	if g := f.acquire(t, "C", time.Minute); g.Granted || g.Holder != "B" {
		t.Fatalf("the release sent again freed B's lease: C got %+v", g)
	}
	if r := rebalance.Release(f.ctx, f.rdb, "A", []rebalance.Held{{Key: f.lease, Epoch: a.Epoch}})[0]; !r.Fenced {
		t.Fatalf("another release of A's, B holding the lease: %+v, want fenced", r)
	}
	// B's lease expires and goes to C: B never released it.
	if err := f.rdb.HSet(f.ctx, f.lease, "x", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if g := f.acquire(t, "C", time.Minute); !g.Granted {
		t.Fatalf("C's acquire of an expired lease: %+v", g)
	}
	if r := rebalance.Release(f.ctx, f.rdb, "B", []rebalance.Held{{Key: f.lease, Epoch: b.Epoch, Token: "release-2"}})[0]; r.Err != nil || !r.Fenced {
		t.Fatalf("B's release of a lease C took after it expired: %+v, want fenced", r)
	}
}

// Messages claimed for redelivery far apart in a long pending list get
// their own delivery count, each one (a count of 1 would hide a
// redelivery, from WithMaxDeliveries too).
func TestClaimedMessagesFarApartGetTheirDeliveryCounts(t *testing.T) {
	bothPaths(t, testClaimedFarApart)
}

func testClaimedFarApart(t *testing.T) {
	f := newFixture(t)
	sent := f.add(t, 40)
	a := f.acquire(t, "A", time.Minute)
	if r := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 40}, time.Hour); len(r.Entries) != 40 {
		t.Fatalf("first fetch: %d entries", len(r.Entries))
	}
	// The first and the last come due (idle an hour, delivered once); the
	// 38 between are fresh.
	for _, id := range []string{sent[0], sent[39]} {
		if err := f.rdb.Do(f.ctx, "XCLAIM", f.stream, f.group, "A", 0, id, "IDLE", 3600000, "RETRYCOUNT", 1).Err(); err != nil {
			t.Fatal(err)
		}
	}
	r := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Minute)
	if got := ids(r); len(got) != 2 || got[0] != sent[0] || got[1] != sent[39] {
		t.Fatalf("claim of the due messages: %v, want %s and %s", got, sent[0], sent[39])
	}
	for _, id := range []string{sent[0], sent[39]} {
		if n := r.Deliveries[id]; n != 2 {
			t.Errorf("%s claimed with delivery count %d, want 2", id, n)
		}
	}
}

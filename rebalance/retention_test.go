package rebalance_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/internal/redistest"
	"github.com/segmenter/segmenter/rebalance"
)

// rtExactClient returns a client to a dedicated server whose stream nodes
// hold one entry each, so that approximate trims (~) are exact and a test
// can tell which entry a trim stopped at.
func rtExactClient(t *testing.T) *redis.Client {
	t.Helper()
	return redistest.Standalone(t, redistest.WithArgs("--stream-node-max-entries", "1")).Client(t)
}

// rtAdd appends n entries with IDs 1-1 .. 1-n (IDs of one millisecond: the
// successor arithmetic works on the seq part) and returns their IDs.
func rtAdd(t *testing.T, rdb redis.Cmdable, key string, from, n int) []string {
	t.Helper()
	ctx := context.Background()
	pipe := rdb.Pipeline()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("1-%d", from+i)
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: key, ID: ids[i], Values: []any{"n", from + i}})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	return ids
}

// rtRead reads n new entries for group (as consumer "c") and returns their
// IDs.
func rtRead(t *testing.T, rdb redis.Cmdable, key, group string, n int) []string {
	t.Helper()
	if n == 0 {
		return nil
	}
	res, err := rdb.XReadGroup(context.Background(), &redis.XReadGroupArgs{
		Group: group, Consumer: "c", Streams: []string{key, ">"}, Count: int64(n),
	}).Result()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range res[0].Messages {
		ids = append(ids, m.ID)
	}
	if len(ids) != n {
		t.Fatalf("group %s read %d entries, want %d", group, len(ids), n)
	}
	return ids
}

func rtAck(t *testing.T, rdb redis.Cmdable, key, group string, ids []string) {
	t.Helper()
	if len(ids) == 0 {
		return
	}
	if err := rdb.XAck(context.Background(), key, group, ids...).Err(); err != nil {
		t.Fatal(err)
	}
}

func rtGroup(t *testing.T, rdb redis.Cmdable, key, group string) {
	t.Helper()
	if err := rdb.XGroupCreateMkStream(context.Background(), key, group, "0").Err(); err != nil {
		t.Fatal(err)
	}
}

// rtFirst returns the stream's first entry ID and its length.
func rtFirst(t *testing.T, rdb redis.Cmdable, key string) (string, int64) {
	t.Helper()
	ctx := context.Background()
	r, err := rdb.XRangeN(ctx, key, "-", "+", 1).Result()
	if err != nil {
		t.Fatal(err)
	}
	n, err := rdb.XLen(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(r) == 0 {
		return "", n
	}
	return r[0].ID, n
}

func rtTrim(t *testing.T, rdb redis.Cmdable, key string, maxLen int64) int64 {
	t.Helper()
	n, err := rebalance.TrimAcked(context.Background(), rdb, []string{key}, maxLen)
	if err != nil {
		t.Fatal(err)
	}
	return n[0]
}

func TestTrimAckedKeepsWhatEveryGroupNeeds(t *testing.T) {
	rdb := rtExactClient(t)
	key := "test:{" + redistest.Namespace(t) + "}:p"
	for _, g := range []string{"done", "pending", "behind"} {
		rtGroup(t, rdb, key, g)
	}
	ids := rtAdd(t, rdb, key, 1, 1000)
	// done: read and acked everything. pending: read everything, acked the
	// first 400 (needs ids[400] on). behind: read and acked 600 (needs
	// ids[600] on, the successor of its last-delivered-id).
	rtAck(t, rdb, key, "done", rtRead(t, rdb, key, "done", 1000))
	pending := rtRead(t, rdb, key, "pending", 1000)
	rtAck(t, rdb, key, "pending", pending[:400])
	rtAck(t, rdb, key, "behind", rtRead(t, rdb, key, "behind", 600))

	if n := rtTrim(t, rdb, key, 2000); n != 0 {
		t.Fatalf("trim of a stream shorter than maxLen removed %d", n)
	}
	if n := rtTrim(t, rdb, key, 100); n != 400 {
		t.Fatalf("trim removed %d, want the 400 entries below the oldest pending one", n)
	}
	if first, n := rtFirst(t, rdb, key); first != ids[400] || n != 600 {
		t.Fatalf("after the trim the stream starts at %s with %d entries, want %s with 600", first, n, ids[400])
	}
	if n := rtTrim(t, rdb, key, 100); n != 0 {
		t.Fatalf("a second trim removed %d", n)
	}

	rtAck(t, rdb, key, "pending", pending[400:])
	if n := rtTrim(t, rdb, key, 100); n != 200 {
		t.Fatalf("trim removed %d, want the 200 entries below what behind has not read", n)
	}
	if first, _ := rtFirst(t, rdb, key); first != ids[600] {
		t.Fatalf("the stream starts at %s, want %s: the successor of behind's last-delivered-id", first, ids[600])
	}

	// Everyone caught up: the trim keeps maxLen.
	rtAck(t, rdb, key, "behind", rtRead(t, rdb, key, "behind", 400))
	if n := rtTrim(t, rdb, key, 100); n != 300 {
		t.Fatalf("trim removed %d, want 300 (down to maxLen)", n)
	}
	if first, n := rtFirst(t, rdb, key); first != ids[900] || n != 100 {
		t.Fatalf("the stream starts at %s with %d entries, want %s with 100", first, n, ids[900])
	}
}

func TestTrimAckedWithoutGroupsTrimsToMaxLen(t *testing.T) {
	rdb := rtExactClient(t)
	ctx := context.Background()
	ns := redistest.Namespace(t)
	a, b, missing := "test:{"+ns+"}:a", "test:{"+ns+"}:b", "test:{"+ns+"}:missing"
	rtAdd(t, rdb, a, 1, 300)
	rtAdd(t, rdb, b, 1, 50)
	n, err := rebalance.TrimAcked(ctx, rdb, []string{a, b, missing}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if n[0] != 200 || n[1] != 0 || n[2] != 0 {
		t.Fatalf("trimmed %v, want [200 0 0]", n)
	}
	if _, l := rtFirst(t, rdb, a); l != 100 {
		t.Fatalf("stream without groups has %d entries, want 100", l)
	}
	if n, err := rebalance.TrimAcked(ctx, rdb, []string{a}, 0); err != nil || n[0] != 0 {
		t.Fatalf("maxLen 0 trimmed %v, %v", n, err)
	}
}

func TestTrimAckedNeverDropsAnEntryOfAGroupThatReadNothing(t *testing.T) {
	rdb := redistest.Client(t) // default node size: the trim is approximate
	key := "test:{" + redistest.Namespace(t) + "}:p"
	rtGroup(t, rdb, key, "fast")
	rtGroup(t, rdb, key, "idle")
	ids := rtAdd(t, rdb, key, 1, 5000)
	rtAck(t, rdb, key, "fast", rtRead(t, rdb, key, "fast", 5000))
	if n := rtTrim(t, rdb, key, 100); n != 0 {
		t.Fatalf("trimmed %d entries that the idle group has not read", n)
	}
	rtAck(t, rdb, key, "idle", rtRead(t, rdb, key, "idle", 2500))
	n := rtTrim(t, rdb, key, 100)
	if _, l := rtFirst(t, rdb, key); n == 0 || n > 2500 || l != 5000-n {
		t.Fatalf("trimmed %d, %d entries left; want 1 to 2500 trimmed, the rest left", n, l)
	}
	// The entries the idle group needs are all there.
	rest, err := rdb.XRange(context.Background(), key, ids[2500], "+").Result()
	if err != nil || len(rest) != 2500 {
		t.Fatalf("entries from %s: %d, %v; want 2500", ids[2500], len(rest), err)
	}
}

func TestCheckUnreadCountsEntriesTrimmedBeforeTheGroupReadThem(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Client(t)
	ns := redistest.Namespace(t)
	key, report := "test:{"+ns+"}:p", "test:{"+ns+"}:lease"
	rtGroup(t, rdb, key, "g")
	rtGroup(t, rdb, key, "fresh")
	ids := rtAdd(t, rdb, key, 1, 10)

	check := func(group string) rebalance.UnreadCheck {
		t.Helper()
		r, err := rebalance.CheckUnread(ctx, rdb, key, group)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// Before its first read a group has no read counter: unknown.
	if r := check("g"); r.Known || r.Lost != 0 || r.LastDeliveredID != "0-0" || r.FirstID != ids[0] {
		t.Fatalf("before the group read: %+v", r)
	}
	rtAck(t, rdb, key, "g", rtRead(t, rdb, key, "g", 3))
	if r := check("g"); !r.Known || r.Lost != 0 || r.LastDeliveredID != ids[2] {
		t.Fatalf("before any trim: %+v", r)
	}
	if err := rdb.XTrimMaxLen(ctx, key, 5).Err(); err != nil { // exact: drops ids[0..4]
		t.Fatal(err)
	}
	// The trim overtook g (last delivered ids[2], first entry ids[5]):
	// ids[3] and ids[4] are lost.
	r := check("g")
	want := rebalance.UnreadCheck{Known: true, Lost: 2, LastDeliveredID: ids[2], FirstID: ids[5], MaxDeletedID: "0-0"}
	if r != want {
		t.Fatalf("after the trim: %+v, want %+v", r, want)
	}
	// The loss stays counted as g reads on: in the middle of the stream
	// (unread entries counted with XRANGE), at its end, and after more
	// entries.
	rtRead(t, rdb, key, "g", 2)
	if r := check("g"); !r.Known || r.Lost != 2 || r.LastDeliveredID != ids[6] {
		t.Fatalf("after reading on: %+v", r)
	}
	rtRead(t, rdb, key, "g", 3)
	if r := check("g"); !r.Known || r.Lost != 2 {
		t.Fatalf("at the end: %+v", r)
	}
	rtAdd(t, rdb, key, 11, 5)
	if r := check("g"); !r.Known || r.Lost != 2 {
		t.Fatalf("after more entries: %+v", r)
	}
	// A group that has read nothing yet: unknown, though it lost 5.
	if r := check("fresh"); r.Known || r.Lost != 0 {
		t.Fatalf("group that read nothing: %+v", r)
	}

	// With a report key, each loss is New once.
	reportOnce := func() rebalance.UnreadCheck {
		t.Helper()
		r := rebalance.CheckUnreadAll(ctx, rdb, "g", []rebalance.UnreadRequest{{StreamKey: key, ReportKey: report}})[0]
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		return r.UnreadCheck
	}
	if r := reportOnce(); r.Lost != 2 || r.New != 2 {
		t.Fatalf("first report: %+v", r)
	}
	if r := reportOnce(); r.Lost != 2 || r.New != 0 {
		t.Fatalf("second report: %+v", r)
	}
	// g is at ids[9]; the stream holds ids[5..14]. Trim all but 2: ids[10],
	// ids[11] and ids[12] are lost too.
	if err := rdb.XTrimMaxLen(ctx, key, 2).Err(); err != nil {
		t.Fatal(err)
	}
	if r := reportOnce(); r.Lost != 5 || r.New != 3 {
		t.Fatalf("report after another loss: %+v", r)
	}
	// An empty stream: everything after g's position is gone.
	if err := rdb.XTrimMaxLen(ctx, key, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if r := reportOnce(); r.Lost != 7 || r.New != 2 || r.FirstID != "" {
		t.Fatalf("report on the emptied stream: %+v", r)
	}
	if r := check("g"); r.New != 0 || r.Lost != 7 {
		t.Fatalf("CheckUnread reports nothing as new: %+v", r)
	}

	if _, err := rebalance.CheckUnread(ctx, rdb, key, "nope"); !redis.HasErrorPrefix(err, "NOGROUP") {
		t.Fatalf("unknown group: %v, want NOGROUP", err)
	}
	if _, err := rebalance.CheckUnread(ctx, rdb, key+"x", "g"); err == nil {
		t.Fatal("missing stream: no error")
	}
}

func TestCheckUnreadFarFromBothEndsIsUnknown(t *testing.T) {
	rdb := redistest.Client(t)
	key := "test:{" + redistest.Namespace(t) + "}:p"
	rtGroup(t, rdb, key, "g")
	rtAdd(t, rdb, key, 1, 300)
	rtRead(t, rdb, key, "g", 50) // 50 from the start: counted from there
	r, err := rebalance.CheckUnread(context.Background(), rdb, key, "g")
	if err != nil || !r.Known || r.Lost != 0 {
		t.Fatalf("group 50 entries from the start: %+v, %v", r, err)
	}
	rtRead(t, rdb, key, "g", 100)
	r, err = rebalance.CheckUnread(context.Background(), rdb, key, "g")
	if err != nil || r.Known {
		t.Fatalf("group 150 entries from both ends: %+v, %v; want unknown", r, err)
	}
	rtRead(t, rdb, key, "g", 100) // 50 from the end: counted from there
	r, err = rebalance.CheckUnread(context.Background(), rdb, key, "g")
	if err != nil || !r.Known || r.Lost != 0 {
		t.Fatalf("group 50 entries from the end: %+v, %v", r, err)
	}
}

// BenchmarkTrimAcked measures one trim script call on a partition of 10,000
// entries read by three groups, each with pending entries: XLEN, XINFO
// GROUPS, three XPENDING and an XTRIM that removes nothing (a group still
// needs the first entry), plus the loopback round trip.
func BenchmarkTrimAcked(b *testing.B) {
	ctx := context.Background()
	rdb := redistest.Client(b)
	key := "test:{" + redistest.Namespace(b) + "}:p"
	pipe := rdb.Pipeline()
	for i := range 10000 {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{"k", "key", "d", i}})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		b.Fatal(err)
	}
	for i, g := range []string{"a", "b", "c"} {
		if err := rdb.XGroupCreate(ctx, key, g, "0").Err(); err != nil {
			b.Fatal(err)
		}
		if err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: g, Consumer: "c", Streams: []string{key, ">"}, Count: int64(1000 * (i + 1))}).Err(); err != nil {
			b.Fatal(err)
		}
	}
	keys := []string{key}
	b.ResetTimer()
	for b.Loop() {
		if _, err := rebalance.TrimAcked(ctx, rdb, keys, 1000); err != nil {
			b.Fatal(err)
		}
	}
}

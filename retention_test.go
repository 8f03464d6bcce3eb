package segmenter_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
	"github.com/segmenter/segmenter/internal/keyspace"
	"github.com/segmenter/segmenter/internal/redistest"
	"github.com/segmenter/segmenter/partition"
)

// partitionLens returns the length of every partition of st.
func partitionLens(t *testing.T, rdb redis.UniversalClient, ns string, st *segmenter.Stream) []int64 {
	t.Helper()
	ks := keyspace.New(ns)
	out := make([]int64, st.Partitions())
	for p := range out {
		n, err := rdb.XLen(context.Background(), ks.Partition(st.Name(), p)).Result()
		if err != nil {
			t.Fatal(err)
		}
		out[p] = n
	}
	return out
}

func sum(ns []int64) (s int64) {
	for _, n := range ns {
		s += n
	}
	return s
}

// sendRecorded sends n messages over keys key-0..key-(keys-1) in one batch
// and records them in every recorder.
func sendRecorded(t *testing.T, st *segmenter.Stream, from, n, keys int, recs ...*invariant.Recorder) {
	t.Helper()
	batch := make([]*contracts.PMessage, n)
	for i := range batch {
		batch[i] = msg("key-"+strconv.Itoa((from+i)%keys), strconv.Itoa(from+i))
	}
	ids := send(t, st, nil, batch...)
	for _, rec := range recs {
		for i, m := range batch {
			rec.Sent(ids[i], st.PartitionOf(m.PartitionKey), m.PartitionKey)
		}
	}
}

// nodeSlack is how many entries an approximate trim may leave beyond its
// target: up to one radix-tree node (stream-node-max-entries, default 100).
const nodeSlack = 100

func TestRetentionAckedKeepsEveryMessageALaggingGroupHasNotAcked(t *testing.T) {
	onBackends(t, testRetentionAckedKeepsEveryMessageALaggingGroupHasNotAcked)
}

func testRetentionAckedKeepsEveryMessageALaggingGroupHasNotAcked(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := bk.client(t)
	seg := newSegmenter(t, ns, rdb)
	const maxLen, parts = 100, 2
	st, err := seg.RegisterStream(ctx, "s", parts, maxLen, segmenter.WithRetention(segmenter.RetentionAcked))
	if err != nil {
		t.Fatal(err)
	}
	fast, err := seg.RegisterConsumer(ctx, "s", "fast", 100, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	slow, err := seg.RegisterConsumer(ctx, "s", "slow", 40, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	recFast, recSlow := invariant.NewRecorder(), invariant.NewRecorder()

	// The slow group reads the first messages and acks nothing for a while.
	sendRecorded(t, st, 0, 40, 20, recFast, recSlow)
	held := drainNoAck(t, slow, recSlow, 40)

	// Many more messages, 20 times maxLen, with the fast group acking as
	// they come: the producer trims as it goes, but the slow group's oldest
	// pending message holds every partition where it is.
	const total = 40 + 20*200
	acked := 0
	for sent := 40; sent < total; {
		sendRecorded(t, st, sent, 200, 20, recFast, recSlow)
		sent += 200
		acked += len(drain(t, fast, recFast, sent-acked, 10*time.Second))
	}
	if n, err := st.Trim(ctx); err != nil || n != 0 {
		t.Fatalf("Trim while the slow group lags removed %d, %v; want 0", n, err)
	}
	if lens := partitionLens(t, rdb, ns, st); sum(lens) != total {
		t.Fatalf("partitions hold %v = %d messages while the slow group lags, want all %d", lens, sum(lens), total)
	}

	// The slow group catches up: every message is there for it.
	if err := ack(t, slow, recSlow, held...); err != nil {
		t.Fatal(err)
	}
	drain(t, slow, recSlow, total-40, time.Minute)
	checkLog(t, recFast, invariant.Options{MaxProcessingTime: time.Minute, RequireAllAcked: true})
	checkLog(t, recSlow, invariant.Options{MaxProcessingTime: time.Minute, RequireAllAcked: true})
	if s := slow.Stats(); s.Trimmed != 0 || s.TrimmedUnread != 0 {
		t.Fatalf("slow group stats %+v: nothing may be trimmed", s)
	}

	// Now that every group acked everything, a trim brings each partition
	// to about maxLen.
	n, err := st.Trim(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lens := partitionLens(t, rdb, ns, st)
	for p, l := range lens {
		if l < maxLen || l > maxLen+nodeSlack {
			t.Fatalf("after Trim partition %d holds %d entries (all: %v), want %d to %d", p, l, lens, maxLen, maxLen+nodeSlack)
		}
	}
	if n != total-sum(lens) {
		t.Fatalf("Trim reports %d removed, the partitions lost %d", n, total-sum(lens))
	}
}

func TestRetentionAckedTrimsAsProducersSend(t *testing.T) {
	onBackends(t, testRetentionAckedTrimsAsProducersSend)
}

func testRetentionAckedTrimsAsProducersSend(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := bk.client(t)
	seg := newSegmenter(t, ns, rdb)
	const maxLen = 100
	st, err := seg.RegisterStream(ctx, "s", 2, maxLen, segmenter.WithRetention(segmenter.RetentionAcked))
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 100, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	// One by one with Send (a due trim rides in a pipeline with the XADD),
	// then in batches (due trims ride in the batch's pipeline).
	const single, batched = 600, 3000
	acked := 0
	for i := range single {
		key := "key-" + strconv.Itoa(i%10)
		id, err := st.Send(ctx, msg(key, strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		rec.Sent(id, st.PartitionOf(key), key)
		if i%50 == 49 {
			acked += len(drain(t, c, rec, i+1-acked, 10*time.Second))
		}
	}
	for sent := single; sent < single+batched; {
		sendRecorded(t, st, sent, 100, 10, rec)
		sent += 100
		acked += len(drain(t, c, rec, sent-acked, 10*time.Second))
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: time.Minute, RequireAllAcked: true})
	// Each partition was trimmed at least every max(maxLen/8, 64) sends,
	// so it holds at most maxLen, plus that interval, plus a node.
	lens := partitionLens(t, rdb, ns, st)
	for p, l := range lens {
		if l > maxLen+64+nodeSlack {
			t.Fatalf("partition %d holds %d entries (all: %v) after %d sends with maxLen %d", p, l, lens, single+batched, maxLen)
		}
	}
}

// logCapture is a slog handler target that keeps every record as JSON.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logCapture) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// records returns the records whose message contains msg.
func (l *logCapture) records(t *testing.T, msg string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.buf.String()), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m, _ := r["msg"].(string); strings.Contains(m, msg) {
			out = append(out, r)
		}
	}
	return out
}

func TestRetentionMaxLenCountsMessagesTrimmedBeforeTheGroupReadThem(t *testing.T) {
	onBackends(t, testRetentionMaxLenCountsMessagesTrimmedBeforeTheGroupReadThem)
}

func testRetentionMaxLenCountsMessagesTrimmedBeforeTheGroupReadThem(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := bk.client(t)
	logs := &logCapture{}
	seg := newSegmenterConfig(t, segmenter.Config{Namespace: ns, Client: rdb,
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelError}))})
	const maxLen = 100
	st, err := seg.RegisterStream(ctx, "s", 1, maxLen) // RetentionMaxLen, the default
	if err != nil {
		t.Fatal(err)
	}
	fast, err := seg.RegisterConsumer(ctx, "s", "fast", 100, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	slow, err := seg.RegisterConsumer(ctx, "s", "slow", 100, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// Both groups read the first 20; then the slow group stops reading
	// while 2000 more are sent.
	const first, more = 20, 2000
	sendRecorded(t, st, 0, first, 5)
	acked := len(drain(t, fast, nil, first, 10*time.Second))
	drain(t, slow, nil, first, 10*time.Second)
	for sent := first; sent < first+more; {
		sendRecorded(t, st, sent, 100, 5)
		sent += 100
		acked += len(drain(t, fast, nil, sent-acked, 10*time.Second))
	}
	info, err := rdb.XInfoStream(ctx, keyspace.New(ns).Partition("s", 0)).Result()
	if err != nil {
		t.Fatal(err)
	}
	trimmed := info.EntriesAdded - info.Length
	if trimmed <= first {
		t.Fatalf("only %d messages trimmed: the test needs the slow group overtaken", trimmed)
	}

	for i := range 2 { // the second check counts nothing again
		if err := slow.CheckRetention(ctx); err != nil {
			t.Fatal(err)
		}
		got := slow.Stats().TrimmedUnread
		if got == 0 || int64(got) > trimmed {
			t.Fatalf("check %d: TrimmedUnread %d, want above 0 and at most the %d trimmed", i, got, trimmed)
		}
		// The slow group read the first 20 of the trimmed entries: the
		// others it never saw.
		if int64(got) != trimmed-first {
			t.Fatalf("check %d: TrimmedUnread %d, want %d", i, got, trimmed-first)
		}
	}
	if err := fast.CheckRetention(ctx); err != nil || fast.Stats().TrimmedUnread != 0 {
		t.Fatalf("the fast group lost nothing: TrimmedUnread %d, %v", fast.Stats().TrimmedUnread, err)
	}
	// The background check may have reported part of the loss while the
	// messages were being sent: the logged losses add up, each counted once.
	recs := logs.records(t, "trimmed by retention before the group read them")
	var logged float64
	for _, r := range recs {
		if r["level"] != "ERROR" || r["stream"] != "s" || r["group"] != "slow" || r["partition"] != 0.0 ||
			r["last_delivered_id"] == "" || r["max_deleted_id"] == nil {
			t.Fatalf("loss log %v", r)
		}
		logged += r["lost"].(float64)
	}
	if len(recs) == 0 || logged != float64(trimmed-first) {
		t.Fatalf("%d loss logs adding up to %v, want %d", len(recs), logged, trimmed-first)
	}

	// Reported once per group: another consumer of the slow group (after a
	// restart, or a rebalance) does not count it again, and reading on
	// does not either.
	if err := slow.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := slow.CheckRetention(ctx); !errors.Is(err, segmenter.ErrClosed) {
		t.Fatalf("CheckRetention after Shutdown: %v, want ErrClosed", err)
	}
	again, err := seg.RegisterConsumer(ctx, "s", "slow", 100, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	drain(t, again, nil, int(info.Length), 10*time.Second)
	if err := again.CheckRetention(ctx); err != nil || again.Stats().TrimmedUnread != 0 {
		t.Fatalf("another consumer of the group: TrimmedUnread %d, %v; want 0", again.Stats().TrimmedUnread, err)
	}
	if n := len(logs.records(t, "trimmed by retention before the group read them")); n != 1 {
		t.Fatalf("%d loss logs, want still 1", n)
	}
}

func TestCheckRetentionOnADeletedPartitionIsErrGroupNotFound(t *testing.T) {
	onBackends(t, testCheckRetentionOnADeletedPartitionIsErrGroupNotFound)
}

func testCheckRetentionOnADeletedPartitionIsErrGroupNotFound(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := bk.client(t)
	seg := newSegmenter(t, ns, rdb)
	// Three partitions: one check covers them all; only the deleted one
	// fails.
	if _, err := seg.RegisterStream(ctx, "s", 3, 10); err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(ctx, keyspace.New(ns).Partition("s", 1)).Err(); err != nil {
		t.Fatal(err)
	}
	err = c.CheckRetention(ctx)
	var pe *segmenter.PartitionError
	if !errors.Is(err, segmenter.ErrGroupNotFound) || !errors.As(err, &pe) || pe.Partition != 1 {
		t.Fatalf("CheckRetention on a deleted partition: %v, want a PartitionError wrapping ErrGroupNotFound", err)
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok && len(j.Unwrap()) != 1 {
		t.Fatalf("CheckRetention: %v, want the deleted partition's error only", err)
	}
}

func TestRetentionIsPartOfTheStreamMetadata(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := redistest.Client(t)
	seg := newSegmenter(t, ns, rdb)
	streams := keyspace.New(ns).Streams()
	raw := func(name string) string {
		t.Helper()
		v, err := rdb.HGet(ctx, streams, name).Result()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	murmur := partition.Default.Name()

	acked, err := seg.RegisterStream(ctx, "acked", 2, 100, segmenter.WithRetention(segmenter.RetentionAcked))
	if err != nil || acked.Retention() != segmenter.RetentionAcked {
		t.Fatalf("register with RetentionAcked: %v, %v", acked, err)
	}
	if got, want := raw("acked"), "v1|2|100|"+murmur+"|acked"; got != want {
		t.Fatalf("metadata %q, want %q", got, want)
	}
	// The default retention writes the 4 fields older releases read.
	plain, err := seg.RegisterStream(ctx, "plain", 2, 100)
	if err != nil || plain.Retention() != segmenter.RetentionMaxLen {
		t.Fatalf("register with the default: %v, %v", plain, err)
	}
	if got, want := raw("plain"), "v1|2|100|"+murmur; got != want {
		t.Fatalf("metadata %q, want %q", got, want)
	}
	if _, err := seg.RegisterStream(ctx, "plain", 2, 100, segmenter.WithRetention(segmenter.RetentionMaxLen)); err != nil {
		t.Fatalf("RetentionMaxLen is the default: %v", err)
	}
	if got, err := seg.GetStream(ctx, "acked"); err != nil || got.Retention() != segmenter.RetentionAcked {
		t.Fatalf("GetStream: %v, %v", got, err)
	}

	// Metadata written before the field: RetentionMaxLen.
	if err := rdb.HSet(ctx, streams, "old", "v1|3|50|"+murmur).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := seg.GetStream(ctx, "old"); err != nil || got.Retention() != segmenter.RetentionMaxLen || got.Partitions() != 3 {
		t.Fatalf("GetStream of old metadata: %v, %v", got, err)
	}
	if _, err := seg.RegisterStream(ctx, "old", 3, 50); err != nil {
		t.Fatalf("RegisterStream over old metadata: %v", err)
	}

	for _, tc := range []struct {
		name string
		r    segmenter.Retention
	}{{"acked", segmenter.RetentionMaxLen}, {"plain", segmenter.RetentionAcked}, {"old", segmenter.RetentionAcked}} {
		parts, maxLen := 2, int64(100)
		if tc.name == "old" {
			parts, maxLen = 3, 50
		}
		before := raw(tc.name)
		_, err := seg.RegisterStream(ctx, tc.name, parts, maxLen, segmenter.WithRetention(tc.r))
		if !errors.Is(err, segmenter.ErrStreamConflict) {
			t.Errorf("stream %s registered again with %v: %v, want ErrStreamConflict", tc.name, tc.r, err)
		}
		if after := raw(tc.name); after != before {
			t.Errorf("stream %s metadata changed from %q to %q", tc.name, before, after)
		}
	}

	if _, err := seg.RegisterStream(ctx, "bad", 1, 10, segmenter.WithRetention(segmenter.Retention(7))); !errors.Is(err, segmenter.ErrInvalidArgument) {
		t.Fatalf("unknown Retention: %v, want ErrInvalidArgument", err)
	}
	if n, err := rdb.HExists(ctx, streams, "bad").Result(); err != nil || n {
		t.Fatalf("unknown Retention wrote metadata: %v %v", n, err)
	}
	if err := rdb.HSet(ctx, streams, "future", "v1|1|10|"+murmur+"|bogus").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := seg.GetStream(ctx, "future"); err == nil || !strings.Contains(err.Error(), "unreadable stream metadata") {
		t.Fatalf("unknown retention in metadata: %v", err)
	}
}

func TestTrimOfAStreamWithMaxLenRetention(t *testing.T) {
	onBackends(t, testTrimOfAStreamWithMaxLenRetention)
}

func testTrimOfAStreamWithMaxLenRetention(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := bk.client(t)
	seg := newSegmenter(t, ns, rdb)
	unbounded, err := seg.RegisterStream(ctx, "unbounded", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	sendRecorded(t, unbounded, 0, 500, 3)
	if n, err := unbounded.Trim(ctx); err != nil || n != 0 {
		t.Fatalf("Trim of a stream with maxLen 0: %d, %v", n, err)
	}
	// Entries the SDK did not trim (written around it) are trimmed by Trim,
	// to about maxLen, read or not.
	st, err := seg.RegisterStream(ctx, "s", 1, 100)
	if err != nil {
		t.Fatal(err)
	}
	key := keyspace.New(ns).Partition("s", 0)
	pipe := rdb.Pipeline()
	for i := range 1000 {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{"v", "1", "k", "a", "d", strconv.Itoa(i)}})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := st.Trim(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if l := partitionLens(t, rdb, ns, st)[0]; n == 0 || l < 100 || l > 100+nodeSlack || n+l != 1000 {
		t.Fatalf("Trim removed %d and left %d of 1000", n, l)
	}
}

// The background check runs every Config.RetentionCheckInterval: a loss
// is counted without a call to CheckRetention.
func TestRetentionCheckIntervalRunsTheBackgroundCheck(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := redistest.Client(t)
	seg := newSegmenterConfig(t, segmenter.Config{Namespace: ns, Client: rdb, RetentionCheckInterval: 20 * time.Millisecond})
	st, err := seg.RegisterStream(ctx, "s", 1, 100)
	if err != nil {
		t.Fatal(err)
	}
	slow, err := seg.RegisterConsumer(ctx, "s", "slow", 100, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	sendRecorded(t, st, 0, 20, 5)
	drain(t, slow, nil, 20, 10*time.Second) // its first read starts Redis' counters
	// Two losses, each counted by the background check before the next
	// one: the second needs a check after the one that counted the first,
	// far sooner than the 10s default would run it.
	sent := 20
	for round := range 2 {
		for end := sent + 1000; sent < end; sent += 100 {
			sendRecorded(t, st, sent, 100, 5)
		}
		info, err := rdb.XInfoStream(ctx, keyspace.New(ns).Partition("s", 0)).Result()
		if err != nil {
			t.Fatal(err)
		}
		want := uint64(info.EntriesAdded - info.Length - 20)
		redistest.Eventually(t, 5*time.Second, func() bool { return slow.Stats().TrimmedUnread == want },
			"round %d: the background check never counted the %d messages trimmed unread", round, want)
	}
}

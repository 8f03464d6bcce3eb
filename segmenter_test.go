package segmenter_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/keyspace"
	"github.com/segmenter/segmenter/internal/redistest"
	"github.com/segmenter/segmenter/partition"
)

func TestMain(m *testing.M) { redistest.MainWithURL(m) }

// keysOf lists the Redis keys of namespace ns.
func keysOf(t *testing.T, rdb redis.UniversalClient, ns string) []string {
	t.Helper()
	return slices.Collect(maps.Keys(snapshot(t, rdb, ns))) // every primary of a cluster
}

func TestNewSegmenterRejectsBadConfig(t *testing.T) {
	t.Setenv("REDIS_URL", "")
	rdb := redistest.Client(t)
	long := strings.Repeat("a", segmenter.MaxNameLength+1)
	cases := []struct {
		name string
		cfg  *segmenter.Config
		want []string // fragments of the error, every problem reported at once
	}{
		{"nil config", nil, []string{"nil Config"}},
		{"empty namespace and no redis", &segmenter.Config{}, []string{"namespace name is empty", "no Redis"}},
		{"namespace with a colon", &segmenter.Config{Namespace: "a:b", Client: rdb}, []string{`character ':'`}},
		{"namespace with a brace", &segmenter.Config{Namespace: "a{b", Client: rdb}, []string{`character '{'`}},
		{"namespace too long", &segmenter.Config{Namespace: long, Client: rdb}, []string{"maximum is 128"}},
		{"heartbeat not below session", &segmenter.Config{Namespace: "ns", Client: rdb, SessionTimeout: time.Second, HeartbeatInterval: time.Second}, []string{"HeartbeatInterval"}},
		{"heartbeat over half the session", &segmenter.Config{Namespace: "ns", Client: rdb, SessionTimeout: time.Second, HeartbeatInterval: 600 * time.Millisecond}, []string{"HeartbeatInterval"}},
		{"tiny ttl and bad block", &segmenter.Config{Namespace: "ns", Client: rdb, SessionTimeout: time.Millisecond, BlockInterval: -1}, []string{"SessionTimeout", "BlockInterval"}},
		{"bad url", &segmenter.Config{Namespace: "ns", RedisURL: "http://nope"}, []string{"RedisURL"}},
		{"bad poll and retention check", &segmenter.Config{Namespace: "ns", Client: rdb, PollInterval: -time.Second, RetentionCheckInterval: time.Microsecond}, []string{"PollInterval", "RetentionCheckInterval"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			seg, err := segmenter.NewSegmenter(tc.cfg)
			if !errors.Is(err, segmenter.ErrInvalidArgument) || seg != nil {
				t.Fatalf("got %v, %v; want ErrInvalidArgument", seg, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestBadInputWritesNothing(t *testing.T) { onBackends(t, testBadInputWritesNothing) }

func testBadInputWritesNothing(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := bk.client(t)
	seg := newSegmenter(t, ns, rdb)
	long := strings.Repeat("s", segmenter.MaxNameLength+1)

	badStreams := []struct {
		name       string
		stream     string
		partitions int
		maxLen     int64
	}{
		{"empty name", "", 4, 0},
		{"colon in name", "a:b", 4, 0},
		{"hash tag in name", "a}b", 4, 0},
		{"space in name", "a b", 4, 0},
		{"oversized name", long, 4, 0},
		{"zero partitions", "s", 0, 0},
		{"negative partitions", "s", -3, 0},
		{"too many partitions", "s", 1 << 20, 0},
		{"negative retention", "s", 4, -1},
		{"existing name, zero partitions", "orders", 0, 0},
	}
	for _, tc := range badStreams {
		t.Run("RegisterStream/"+tc.name, func(t *testing.T) {
			_, err := seg.RegisterStream(ctx, tc.stream, tc.partitions, tc.maxLen)
			if !errors.Is(err, segmenter.ErrInvalidArgument) {
				t.Fatalf("got %v, want ErrInvalidArgument", err)
			}
		})
	}
	if keys := keysOf(t, rdb, ns); len(keys) != 0 {
		t.Fatalf("rejected RegisterStream calls wrote %v", keys)
	}

	// Every kind of key the SDK writes exists before the rejected calls:
	// stream metadata, partitions with entries, a group with delivered,
	// acked and pending messages, its membership, assignment, leases and
	// dead letters. A write into any of them changes the snapshot.
	st, err := seg.RegisterStream(ctx, "orders", 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	var batch []*contracts.PMessage
	for p := 0; p < 4; p++ {
		batch = append(batch, msg(keyFor(t, st, p, 0), "a"), msg(keyFor(t, st, p, 0), "b"), msg(keyFor(t, st, p, 0), "c"))
	}
	send(t, st, nil, batch...)
	g0, err := seg.RegisterConsumer(ctx, "orders", "g0", 3, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got := drainNoAck(t, g0, nil, 3)
	if err := g0.Ack(ctx, got[0]); err != nil {
		t.Fatal(err)
	}
	if err := g0.DeadLetter(ctx, "test", got[1]); err != nil {
		t.Fatal(err)
	}
	if err := g0.Nack(got[2]); err != nil { // stays pending in Redis
		t.Fatal(err)
	}
	if err := g0.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// Group g1's only consumer is frozen: its membership and leases stay
	// in Redis, unchanged.
	rdb1 := bk.client(t)
	freeze := &freezer{}
	rdb1.AddHook(freeze)
	g1, err := newSegmenter(t, ns, rdb1).RegisterConsumer(ctx, "orders", "g1", 3, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	drainNoAck(t, g1, nil, 3)
	freeze.Freeze(t)
	before := snapshot(t, rdb, ns)
	for _, kind := range []string{"hash", "set", "zset", "stream"} {
		found := false
		for _, v := range before {
			found = found || strings.HasPrefix(v, kind+"\n")
		}
		if !found {
			t.Fatalf("no %s in the namespace before the rejected calls: %v", kind, before)
		}
	}

	for _, tc := range badStreams {
		t.Run("RegisterStream/existing/"+tc.name, func(t *testing.T) {
			if _, err := seg.RegisterStream(ctx, tc.stream, tc.partitions, tc.maxLen); !errors.Is(err, segmenter.ErrInvalidArgument) {
				t.Fatalf("got %v, want ErrInvalidArgument", err)
			}
		})
	}
	t.Run("RegisterStream/conflict", func(t *testing.T) {
		if _, err := seg.RegisterStream(ctx, "orders", 8, 0); !errors.Is(err, segmenter.ErrStreamConflict) {
			t.Fatalf("got %v, want ErrStreamConflict", err)
		}
	})
	for _, tc := range []struct {
		name string
		msgs []*contracts.PMessage
	}{
		{"nil message", []*contracts.PMessage{nil}},
		{"empty key", []*contracts.PMessage{{Data: []byte("x")}}},
		{"one bad in a batch", []*contracts.PMessage{msg("k", "ok"), {Data: []byte("x")}}},
		{"nil after good ones", []*contracts.PMessage{msg("k", "ok"), msg("j", "ok"), nil}},
	} {
		t.Run("Send/"+tc.name, func(t *testing.T) {
			if len(tc.msgs) == 1 {
				if _, err := st.Send(ctx, tc.msgs[0]); !errors.Is(err, segmenter.ErrInvalidArgument) {
					t.Fatalf("Send: got %v, want ErrInvalidArgument", err)
				}
			}
			if _, err := st.SendBatch(ctx, tc.msgs); !errors.Is(err, segmenter.ErrInvalidArgument) {
				t.Fatalf("SendBatch: got %v, want ErrInvalidArgument", err)
			}
		})
	}
	badStart := segmenter.WithStartPosition(segmenter.StartPosition(7))
	badPoison := segmenter.WithPoisonPolicy(segmenter.PoisonPolicy(9))
	negDeliveries := segmenter.WithMaxDeliveries(-1)
	for _, tc := range []struct {
		name           string
		stream         string
		batch          int
		maxProcessing  time.Duration
		opts           []segmenter.ConsumerOption
		wantNotFound   bool
		wantFragments  []string
		wantInvalidArg bool
	}{
		{name: "zero batch", stream: "orders", batch: 0, maxProcessing: time.Second, wantInvalidArg: true},
		{name: "huge batch", stream: "orders", batch: segmenter.MaxBatchSize + 1, maxProcessing: time.Second, wantInvalidArg: true},
		{name: "zero processing time", stream: "orders", batch: 1, maxProcessing: 0, wantInvalidArg: true},
		{name: "bad consumer name", stream: "orders", batch: 1, maxProcessing: time.Second, opts: []segmenter.ConsumerOption{segmenter.WithConsumerName("a b")}, wantInvalidArg: true},
		{name: "unknown start position", stream: "orders", batch: 1, maxProcessing: time.Second, opts: []segmenter.ConsumerOption{badStart},
			wantInvalidArg: true, wantFragments: []string{"StartPosition"}},
		{name: "unknown poison policy", stream: "orders", batch: 1, maxProcessing: time.Second, opts: []segmenter.ConsumerOption{badPoison},
			wantInvalidArg: true, wantFragments: []string{"PoisonPolicy"}},
		{name: "negative max deliveries", stream: "orders", batch: 1, maxProcessing: time.Second, opts: []segmenter.ConsumerOption{negDeliveries},
			wantInvalidArg: true, wantFragments: []string{"MaxDeliveries"}},
		{name: "every option at once", stream: "orders", batch: 1, maxProcessing: time.Second, opts: []segmenter.ConsumerOption{badStart, badPoison, negDeliveries},
			wantInvalidArg: true, wantFragments: []string{"StartPosition", "PoisonPolicy", "MaxDeliveries"}},
		{name: "all at once", stream: "", batch: 0, maxProcessing: 0, opts: []segmenter.ConsumerOption{badStart, badPoison, negDeliveries, segmenter.WithConsumerName("a:b")},
			wantInvalidArg: true, wantFragments: []string{"stream name", "group name", "consumer name", "batchSize", "maxProcessingTime", "StartPosition", "PoisonPolicy", "MaxDeliveries"}},
		{name: "unknown stream", stream: "nope", batch: 1, maxProcessing: time.Second, wantNotFound: true},
		{name: "unknown stream and bad options", stream: "nope", batch: 1, maxProcessing: time.Second, opts: []segmenter.ConsumerOption{badPoison}, wantInvalidArg: true},
	} {
		// Existing groups and a new one: none may be touched.
		for _, group := range []string{"g0", "g1", "g"} {
			if tc.name == "all at once" {
				group = ""
			}
			t.Run("RegisterConsumer/"+group+"/"+tc.name, func(t *testing.T) {
				c, err := seg.RegisterConsumer(ctx, tc.stream, group, tc.batch, tc.maxProcessing, tc.opts...)
				if c != nil {
					t.Fatal("got a consumer")
				}
				if tc.wantInvalidArg && !errors.Is(err, segmenter.ErrInvalidArgument) {
					t.Fatalf("got %v, want ErrInvalidArgument", err)
				}
				if tc.wantNotFound && !errors.Is(err, segmenter.ErrStreamNotFound) {
					t.Fatalf("got %v, want ErrStreamNotFound", err)
				}
				for _, f := range tc.wantFragments {
					if !strings.Contains(err.Error(), f) {
						t.Errorf("error %q does not mention %q", err, f)
					}
				}
			})
		}
		for _, group := range []string{"g:1", ""} {
			t.Run("RegisterConsumer/bad group "+strconv.Quote(group)+"/"+tc.name, func(t *testing.T) {
				c, err := seg.RegisterConsumer(ctx, tc.stream, group, tc.batch, tc.maxProcessing, tc.opts...)
				if c != nil || !errors.Is(err, segmenter.ErrInvalidArgument) || !strings.Contains(err.Error(), "group name") {
					t.Fatalf("got %v, %v; want ErrInvalidArgument about the group name", c, err)
				}
			})
		}
	}
	compareSnapshots(t, before, snapshot(t, rdb, ns))

	c, err := seg.RegisterConsumer(ctx, "orders", "g", 10, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(ctx, -time.Second); !errors.Is(err, segmenter.ErrInvalidArgument) {
		t.Fatalf("Read with a negative wait: %v", err)
	}
	for name, m := range map[string]*contracts.CMessage{
		"nil":           nil,
		"other stream":  {Id: "1-0", Stream: "x", Group: "g"},
		"other group":   {Id: "1-0", Stream: "orders", Group: "h"},
		"bad partition": {Id: "1-0", Stream: "orders", Group: "g", Partition: 9},
		"no id":         {Stream: "orders", Group: "g"},
	} {
		if err := c.Ack(ctx, m); !errors.Is(err, segmenter.ErrInvalidArgument) {
			t.Errorf("Ack of a message with %s: %v, want ErrInvalidArgument", name, err)
		}
	}
}

func TestRegisterStreamIsIdempotentAndDetectsConflicts(t *testing.T) {
	onBackends(t, testRegisterStreamIsIdempotentAndDetectsConflicts)
}

func testRegisterStreamIsIdempotentAndDetectsConflicts(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	seg := newSegmenter(t, ns, bk.client(t))
	st, err := seg.RegisterStream(ctx, "payments", 16, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if st.Partitions() != 16 || st.MaxLenPerPartition() != 1000 || st.Name() != "payments" {
		t.Fatalf("stream %+v", st)
	}
	// Another process of the namespace sees the same stream.
	other := newSegmenter(t, ns, bk.client(t))
	if _, err := other.RegisterStream(ctx, "payments", 16, 1000); err != nil {
		t.Fatalf("same parameters again: %v", err)
	}
	got, err := other.GetStream(ctx, "payments")
	if err != nil || got.Partitions() != 16 {
		t.Fatalf("GetStream: %v %v", got, err)
	}
	for name, call := range map[string]func() error{
		"partitions": func() error { _, err := other.RegisterStream(ctx, "payments", 8, 1000); return err },
		"retention":  func() error { _, err := other.RegisterStream(ctx, "payments", 16, 10); return err },
		"partitioner": func() error {
			_, err := other.RegisterStream(ctx, "payments", 16, 1000, segmenter.WithPartitioner(partition.FNV1a))
			return err
		},
	} {
		if err := call(); !errors.Is(err, segmenter.ErrStreamConflict) {
			t.Errorf("different %s: %v, want ErrStreamConflict", name, err)
		}
	}
	if _, err := other.GetStream(ctx, "missing"); !errors.Is(err, segmenter.ErrStreamNotFound) {
		t.Fatalf("GetStream of a missing stream: %v", err)
	}
}

func TestConcurrentRegisterStream(t *testing.T) { onBackends(t, testConcurrentRegisterStream) }

func testConcurrentRegisterStream(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	const n = 8
	segs := make([]*segmenter.Segmenter, n)
	for i := range segs {
		segs[i] = newSegmenter(t, ns, bk.client(t))
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	parts := make([]int, n)
	for i := range segs {
		wg.Go(func() {
			// Half ask for 4 partitions, half for 8: one wins, atomically.
			parts[i] = 4 + 4*(i%2)
			_, errs[i] = segs[i].RegisterStream(ctx, "race", parts[i], 0)
		})
	}
	wg.Wait()
	st, err := segs[0].GetStream(ctx, "race")
	if err != nil {
		t.Fatal(err)
	}
	for i, err := range errs {
		switch {
		case parts[i] == st.Partitions() && err != nil:
			t.Errorf("caller %d asked for the winning %d partitions and got %v", i, parts[i], err)
		case parts[i] != st.Partitions() && !errors.Is(err, segmenter.ErrStreamConflict):
			t.Errorf("caller %d asked for %d partitions (stream has %d) and got %v", i, parts[i], st.Partitions(), err)
		}
	}
	// Same parameters from everyone: everyone succeeds.
	for i := range segs {
		wg.Go(func() { _, errs[i] = segs[i].RegisterStream(ctx, "same", 3, 10) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("caller %d: %v", i, err)
		}
	}
}

func TestEntriesAreReadableWithXRANGE(t *testing.T) { onBackends(t, testEntriesAreReadableWithXRANGE) }

func testEntriesAreReadableWithXRANGE(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := bk.client(t)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	id, err := st.Send(ctx, &contracts.PMessage{PartitionKey: "user-42", Data: []byte("hello"), Metadata: map[string]string{"trace": "t1"}})
	if err != nil {
		t.Fatal(err)
	}
	p := st.PartitionOf("user-42")
	if want := partition.Default.Partition([]byte("user-42"), 3); p != want {
		t.Fatalf("PartitionOf = %d, murmur2 says %d", p, want)
	}
	entries, err := rdb.XRange(ctx, "seg:{"+ns+":s:"+string(rune('0'+p))+"}:p", "-", "+").Result()
	if err != nil || len(entries) != 1 || entries[0].ID != id {
		t.Fatalf("XRANGE: %v %v", entries, err)
	}
	want := map[string]any{"v": "1", "k": "user-42", "d": "hello", "m.trace": "t1"}
	for k, v := range want {
		if entries[0].Values[k] != v {
			t.Errorf("field %s = %v, want %v", k, entries[0].Values[k], v)
		}
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) { onBackends(t, testCloseLeavesNoGoroutines) }

func testCloseLeavesNoGoroutines(t *testing.T, bk backend) {
	ctx := context.Background()
	// The client is built from the URL, so Close must close it too.
	seg, err := segmenter.NewSegmenter(&segmenter.Config{Namespace: redistest.Namespace(t), RedisURL: bk.url(t), SessionTimeout: testSession, BlockInterval: testBlock})
	if err != nil {
		t.Fatal(err)
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	st, err := seg.RegisterStream(ctx, "s", 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	c1, err := seg.RegisterConsumer(ctx, "s", "g1", 10, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seg.RegisterConsumer(ctx, "s", "g2", 10, time.Second); err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("a", "1"), msg("b", "2"))
	if msgs := drain(t, c1, nil, 2, 10*time.Second); len(msgs) != 2 {
		t.Fatalf("read %d", len(msgs))
	}
	if err := seg.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := seg.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := c1.Read(ctx, 0); !errors.Is(err, segmenter.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	if _, err := st.Send(ctx, msg("a", "3")); !errors.Is(err, segmenter.ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
	if _, err := seg.RegisterStream(ctx, "t", 1, 0); !errors.Is(err, segmenter.ErrClosed) {
		t.Fatalf("RegisterStream after Close: %v", err)
	}
}

func TestUserClientIsNotClosed(t *testing.T) { onBackends(t, testUserClientIsNotClosed) }

func testUserClientIsNotClosed(t *testing.T, bk backend) {
	ctx := context.Background()
	rdb := bk.client(t)
	seg, err := segmenter.NewSegmenter(&segmenter.Config{Namespace: redistest.Namespace(t), Client: rdb})
	if err != nil {
		t.Fatal(err)
	}
	if err := seg.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("the caller's client was closed: %v", err)
	}
}

// reversed is a custom partitioner: not one of partition.ByName's.
type reversed struct{}

func (reversed) Name() string { return "reversed" }
func (reversed) Partition(key []byte, n int) int {
	return (n - 1) - partition.Default.Partition(key, n)
}

func TestCustomPartitioner(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	seg := newSegmenter(t, ns, nil)
	st, err := seg.RegisterStream(ctx, "s", 4, 0, segmenter.WithPartitioner(reversed{}))
	if err != nil {
		t.Fatal(err)
	}
	if st.Partitioner() != "reversed" || st.PartitionOf("k") != 3-partition.Default.Partition([]byte("k"), 4) {
		t.Fatalf("partitioner %s maps k to %d", st.Partitioner(), st.PartitionOf("k"))
	}
	other := newSegmenter(t, ns, nil)
	if _, err := other.GetStream(ctx, "s"); !errors.Is(err, segmenter.ErrInvalidArgument) {
		t.Fatalf("GetStream without the custom partitioner: %v", err)
	}
	if _, err := other.GetStream(ctx, "s", segmenter.WithPartitioner(partition.FNV1a)); !errors.Is(err, segmenter.ErrStreamConflict) {
		t.Fatalf("GetStream with another partitioner: %v", err)
	}
	st2, err := other.GetStream(ctx, "s", segmenter.WithPartitioner(reversed{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st2.Send(ctx, msg("k", "v")); err != nil {
		t.Fatal(err)
	}
	// A consumer needs no partitioner.
	c, err := other.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got := drain(t, c, nil, 1, 5*time.Second)
	if int(got[0].Partition) != st.PartitionOf("k") {
		t.Fatalf("message on partition %d, want %d", got[0].Partition, st.PartitionOf("k"))
	}
	// ... but its Stream cannot send: an error, not a panic.
	if _, err := c.Stream().Send(ctx, msg("k", "v")); !errors.Is(err, segmenter.ErrInvalidArgument) {
		t.Fatalf("Send through a consumer's Stream without the partitioner: %v", err)
	}
	if _, err := c.Stream().SendBatch(ctx, []*contracts.PMessage{msg("k", "v")}); !errors.Is(err, segmenter.ErrInvalidArgument) {
		t.Fatalf("SendBatch through a consumer's Stream without the partitioner: %v", err)
	}
}

// xaddLog is a go-redis hook that records the pipelines holding an XADD
// and counts the XADDs sent on their own (a new connection's set-up is
// neither).
type xaddLog struct {
	mu        sync.Mutex
	pipelines [][]redis.Cmder
	singles   int
}

func (h *xaddLog) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *xaddLog) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "xadd" {
			h.mu.Lock()
			h.singles++
			h.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}

func (h *xaddLog) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if slices.ContainsFunc(cmds, func(c redis.Cmder) bool { return c.Name() == "xadd" }) {
			h.mu.Lock()
			h.pipelines = append(h.pipelines, cmds)
			h.mu.Unlock()
		}
		return next(ctx, cmds)
	}
}

// SendBatch is one round trip, its XADDs grouped by partition, and returns
// the IDs in the order of the messages, each key's in the order sent.
func TestSendBatchIsOneRoundTripGroupedByPartition(t *testing.T) {
	ctx := context.Background()
	opt := redistest.Client(t).Options()
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	seg := newSegmenter(t, redistest.Namespace(t), rdb)
	st, err := seg.RegisterStream(ctx, "s", 8, 0)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []*contracts.PMessage
	for i := range 200 {
		msgs = append(msgs, msg("key-"+strconv.Itoa(i%37), strconv.Itoa(i)))
	}
	h := &xaddLog{}
	rdb.AddHook(h)
	ids, err := st.SendBatch(ctx, msgs)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.pipelines) != 1 || h.singles != 0 {
		t.Fatalf("SendBatch sent its XADDs in %d pipelines and %d on their own, want one pipeline", len(h.pipelines), h.singles)
	}
	// The XADDs of one partition are contiguous.
	seen, last := map[string]bool{}, ""
	xadds := 0
	for _, c := range h.pipelines[0] {
		if c.Name() != "xadd" {
			continue
		}
		xadds++
		key := fmt.Sprint(c.Args()[1])
		if key != last && seen[key] {
			t.Fatalf("the XADDs to %s are not grouped: it comes back after %s", key, last)
		}
		seen[key], last = true, key
	}
	if xadds != len(msgs) || len(seen) < 2 {
		t.Fatalf("%d XADDs over %d partitions, want %d over several", xadds, len(seen), len(msgs))
	}
	// IDs in the order of msgs: each one is the entry holding that message.
	for i, id := range ids {
		p := st.PartitionOf(msgs[i].PartitionKey)
		entries, err := rdb.XRange(ctx, keyspace.New(seg.Namespace()).Partition("s", p), id, id).Result()
		if err != nil || len(entries) != 1 || entries[0].Values["d"] != string(msgs[i].Data) {
			t.Fatalf("message %d: ID %s holds %v (%v), want data %s", i, id, entries, err, msgs[i].Data)
		}
	}
	// Each key's IDs grow in the order sent.
	lastID := map[string]string{}
	for i, id := range ids {
		k := msgs[i].PartitionKey
		if prev, ok := lastID[k]; ok && !idLess(prev, id) {
			t.Fatalf("key %s: message %d got ID %s, not after %s", k, i, id, prev)
		}
		lastID[k] = id
	}
}

// idLess compares stream entry IDs.
func idLess(a, b string) bool {
	ams, aseq, _ := strings.Cut(a, "-")
	bms, bseq, _ := strings.Cut(b, "-")
	am, _ := strconv.ParseUint(ams, 10, 64)
	bm, _ := strconv.ParseUint(bms, 10, 64)
	if am != bm {
		return am < bm
	}
	as, _ := strconv.ParseUint(aseq, 10, 64)
	bs, _ := strconv.ParseUint(bseq, 10, 64)
	return as < bs
}

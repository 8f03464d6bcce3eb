package segmenter_test

import (
	"context"
	"errors"
	"fmt"
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
	"github.com/segmenter/segmenter/internal/invariant"
	"github.com/segmenter/segmenter/internal/keyspace"
	"github.com/segmenter/segmenter/internal/redistest"
)

// streamRecorders records the deliveries and acks of a multi-stream
// consumer through its hooks, in one recorder per stream (partition numbers
// are per stream), so that the checker proves the invariants stream by
// stream.
type streamRecorders struct {
	mu   sync.Mutex
	recs map[string]*invariant.Recorder
}

func newStreamRecorders() *streamRecorders {
	return &streamRecorders{recs: make(map[string]*invariant.Recorder)}
}

func (s *streamRecorders) of(stream string) *invariant.Recorder {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.recs[stream]
	if r == nil {
		r = invariant.NewRecorder()
		s.recs[stream] = r
	}
	return r
}

func (s *streamRecorders) OnDeliver(e segmenter.DeliverEvent) {
	recordingHook{s.of(e.Stream)}.OnDeliver(e)
}
func (s *streamRecorders) OnAck(e segmenter.AckEvent) { recordingHook{s.of(e.Stream)}.OnAck(e) }

// check proves the invariants over every stream's log, requiring every
// sent message acked, and returns the messages delivered per stream.
func (s *streamRecorders) check(t *testing.T, maxProc time.Duration) map[string]int {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for stream, r := range s.recs {
		evs := r.Events()
		if err := invariant.Check(evs, invariant.Options{MaxProcessingTime: maxProc, RequireAllAcked: true}); err != nil {
			t.Fatalf("stream %s: invariants violated:\n%v", stream, err)
		}
		out[stream] = invariant.Summarize(evs).Messages
	}
	return out
}

// sendNumbered sends n messages over keys to st, recorded in recs, numbered per
// key ("<stream>/<n>").
func sendNumbered(t *testing.T, st *segmenter.Stream, recs *streamRecorders, keys, n int) {
	t.Helper()
	var batch []*contracts.PMessage
	for i := range n {
		batch = append(batch, msg("key-"+strconv.Itoa(i%keys), st.Name()+"/"+strconv.Itoa(i/keys)))
	}
	send(t, st, recs.of(st.Name()), batch...)
}

// readAll reads and acks with m until every stream of want got its count,
// checking that each message says which stream it came from and that each
// key's messages of a stream come in order.
func readAll(t *testing.T, m *segmenter.MultiConsumer, want map[string]int) {
	t.Helper()
	got := map[string]int{}
	next := map[string]int{} // stream/key -> next number
	deadline := time.Now().Add(hang)
	for !mapsEqual(got, want) {
		if time.Now().After(deadline) {
			t.Fatalf("received %v, want %v", got, want)
		}
		msgs, err := m.Read(context.Background(), 100*time.Millisecond)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		for _, x := range msgs {
			stream, n, _ := strings.Cut(string(x.Data), "/")
			if stream != x.Stream {
				t.Fatalf("message %s of stream %q says it came from %q", x.Id, stream, x.Stream)
			}
			k := x.Stream + "/" + x.PartitionKey
			if seq, _ := strconv.Atoi(n); seq != next[k] {
				t.Fatalf("stream %s key %s: got %d, want %d", x.Stream, x.PartitionKey, seq, next[k])
			}
			next[k]++
			got[x.Stream]++
		}
		if err := m.Ack(context.Background(), msgs...); err != nil {
			t.Fatalf("ack: %v", err)
		}
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestMultiConsumerBadInputWritesNothing(t *testing.T) {
	onBackends(t, testMultiConsumerBadInputWritesNothing)
}

func testMultiConsumerBadInputWritesNothing(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	seg := newSegmenter(t, ns, bk.client(t))
	if _, err := seg.RegisterStream(ctx, "tasks.a", 2, 0); err != nil {
		t.Fatal(err)
	}
	rdb := bk.client(t)
	before := slices.Sorted(slices.Values(keysOf(t, rdb, ns)))
	for _, tc := range []struct {
		name    string
		streams []string
		pattern string
		group   string
		batch   int
		want    error
		says    []string
	}{
		{name: "no streams", streams: []string{}, group: "g", batch: 10, want: segmenter.ErrInvalidArgument, says: []string{"no streams"}},
		{name: "listed twice", streams: []string{"tasks.a", "tasks.a"}, group: "g", batch: 10, want: segmenter.ErrInvalidArgument, says: []string{"listed twice"}},
		{name: "bad name and batch", streams: []string{"tasks:a"}, group: "g", batch: 0, want: segmenter.ErrInvalidArgument, says: []string{"tasks:a", "batchSize"}},
		{name: "unknown stream", streams: []string{"tasks.a", "nope"}, group: "g", batch: 10, want: segmenter.ErrStreamNotFound, says: []string{"nope"}},
		{name: "empty pattern", pattern: "", group: "g", batch: 10, want: segmenter.ErrInvalidArgument, says: []string{"pattern is empty"}},
		{name: "malformed pattern", pattern: "tasks.[a", group: "g", batch: 10, want: segmenter.ErrInvalidArgument, says: []string{"tasks.[a", "syntax error"}},
		{name: "character no name has", pattern: "tasks:*", group: "g", batch: 10, want: segmenter.ErrInvalidArgument, says: []string{"':'"}},
		{name: "pattern and bad group", pattern: "tasks.*", group: "", batch: 10, want: segmenter.ErrInvalidArgument, says: []string{"group name is empty"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.streams != nil {
				_, err = seg.RegisterMultiConsumer(ctx, tc.streams, tc.group, tc.batch, time.Second)
			} else {
				_, err = seg.RegisterPatternConsumer(ctx, tc.pattern, tc.group, tc.batch, time.Second)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		})
	}
	if after := slices.Sorted(slices.Values(keysOf(t, rdb, ns))); !slices.Equal(before, after) {
		t.Fatalf("bad input wrote to Redis: keys %v, then %v", before, after)
	}
	c, err := seg.RegisterConsumer(ctx, "tasks.a", "g", 10, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(ctx, 0, segmenter.WithMaxMessages(0)); !errors.Is(err, segmenter.ErrInvalidArgument) {
		t.Fatalf("Read with WithMaxMessages(0): %v", err)
	}
}

// A pattern consumer consumes the matching streams that exist when it is
// registered, and a matching stream registered later by another process
// (another Segmenter) within a heartbeat interval; never a stream the
// pattern does not match.
func TestPatternConsumerPicksUpStreamsRegisteredLater(t *testing.T) {
	onBackends(t, testPatternConsumerPicksUpStreamsRegisteredLater)
}

func testPatternConsumerPicksUpStreamsRegisteredLater(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	const heartbeat = 100 * time.Millisecond
	seg := newSegmenterConfig(t, segmenter.Config{Namespace: ns, Client: bk.client(t), HeartbeatInterval: heartbeat})
	other := newSegmenterConfig(t, segmenter.Config{Namespace: ns, Client: bk.client(t)})
	recs := newStreamRecorders()
	created, err := seg.RegisterStream(ctx, "tasks.event.created", 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	unrelated, err := seg.RegisterStream(ctx, "billing.event", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	m, err := seg.RegisterPatternConsumer(ctx, "tasks.*", "g", 50, 10*time.Second, segmenter.WithHooks(recs))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown(ctx)
	if got := m.Streams(); !slices.Equal(got, []string{"tasks.event.created"}) {
		t.Fatalf("streams %v, want [tasks.event.created]", got)
	}
	sendNumbered(t, created, recs, 8, 200)
	send(t, unrelated, nil, msg("k", "billing.event/0"))

	registered := time.Now()
	updated, err := other.RegisterStream(ctx, "tasks.event.updated", 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, hang, func() bool { return len(m.Streams()) == 2 }, "tasks.event.updated was not picked up")
	t.Logf("a stream registered by another process was picked up after %v (heartbeat interval %v)", time.Since(registered).Round(time.Millisecond), heartbeat)
	if a := m.Assignment()["tasks.event.updated"]; len(a) != 3 {
		t.Fatalf("holds %v of tasks.event.updated, want its 3 partitions", a)
	}
	sendNumbered(t, updated, recs, 8, 150)

	readAll(t, m, map[string]int{"tasks.event.created": 200, "tasks.event.updated": 150})
	got := recs.check(t, 10*time.Second)
	if _, ok := got["billing.event"]; ok {
		t.Fatalf("a stream the pattern does not match was consumed: %v", got)
	}
	if s := m.Stats(); s.Delivered != 350 || s.Acked != 350 {
		t.Fatalf("stats %+v, want 350 delivered and acked", s)
	}
}

// A pattern that matches nothing yet is no error: Read waits and returns
// nothing; a stream registered through the same Segmenter is consumed at
// once.
func TestPatternConsumerMatchingNothingWaits(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	// A heartbeat of 10s: only the registration through seg nudges it.
	seg := newSegmenterConfig(t, segmenter.Config{Namespace: ns, SessionTimeout: 30 * time.Second, HeartbeatInterval: 10 * time.Second})
	m, err := seg.RegisterPatternConsumer(ctx, "jobs.?", "g", 10, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown(ctx)
	msgs, err := m.Read(ctx, 50*time.Millisecond)
	if err != nil || len(msgs) != 0 || len(m.Streams()) != 0 {
		t.Fatalf("Read with nothing matched: %d messages, %v; streams %v", len(msgs), err, m.Streams())
	}
	// A Read waiting when the stream comes gets its message.
	type result struct {
		msgs []*contracts.CMessage
		err  error
	}
	done := make(chan result, 1)
	go func() {
		msgs, err := m.Read(ctx, hang)
		done <- result{msgs, err}
	}()
	st, err := seg.RegisterStream(ctx, "jobs.1", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seg.RegisterStream(ctx, "jobs.10", 2, 0); err != nil { // ? is one character
		t.Fatal(err)
	}
	redistest.Eventually(t, hang, func() bool { return len(m.Streams()) > 0 }, "jobs.1 was not picked up")
	send(t, st, nil, msg("k", "hello"))
	var r result
	select {
	case r = <-done:
	case <-time.After(hang): // catches a hang only
		t.Fatal("Read did not return")
	}
	if r.err != nil || len(r.msgs) != 1 || r.msgs[0].Stream != "jobs.1" || string(r.msgs[0].Data) != "hello" {
		t.Fatalf("Read: %v, %v", r.msgs, r.err)
	}
	if err := m.Ack(ctx, r.msgs...); err != nil {
		t.Fatal(err)
	}
	if got := m.Streams(); !slices.Equal(got, []string{"jobs.1"}) {
		t.Fatalf("streams %v, want [jobs.1]", got)
	}
}

// Two multi-stream consumers of one group, and a plain consumer of one of
// the streams in the same group: each stream's partitions are balanced over
// its own members, one assignment per stream.
func TestMultiConsumersBalanceEachStream(t *testing.T) {
	onBackends(t, testMultiConsumersBalanceEachStream)
}

func testMultiConsumersBalanceEachStream(t *testing.T, bk backend) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), bk.client(t))
	if _, err := seg.RegisterStream(ctx, "a", 4, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := seg.RegisterStream(ctx, "b", 2, 0); err != nil {
		t.Fatal(err)
	}
	m1, err := seg.RegisterMultiConsumer(ctx, []string{"a", "b"}, "g", 10, time.Second, segmenter.WithConsumerName("m1"))
	if err != nil {
		t.Fatal(err)
	}
	m2, err := seg.RegisterMultiConsumer(ctx, []string{"b", "a"}, "g", 10, time.Second, segmenter.WithConsumerName("m2"))
	if err != nil {
		t.Fatal(err)
	}
	count := func(m *segmenter.MultiConsumer) string {
		a := m.Assignment()
		return fmt.Sprintf("a:%d b:%d", len(a["a"]), len(a["b"]))
	}
	redistest.Eventually(t, hang, func() bool { return count(m1) == "a:2 b:1" && count(m2) == "a:2 b:1" },
		"not balanced per stream: m1 %v, m2 %v", streamsText(func() string { return count(m1) }), streamsText(func() string { return count(m2) }))
	if m1.ID() != "m1" || m1.Group() != "g" || !slices.Equal(m1.Streams(), []string{"a", "b"}) {
		t.Fatalf("m1: %s %s %v", m1.ID(), m1.Group(), m1.Streams())
	}
	// A plain consumer of a joins a's group only.
	c, err := seg.RegisterConsumer(ctx, "a", "g", 10, time.Second, segmenter.WithConsumerName("c"))
	if err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, hang, func() bool {
		n1, n2, n := len(m1.Assignment()["a"]), len(m2.Assignment()["a"]), len(c.Assignment())
		return n1+n2+n == 4 && n1 >= 1 && n2 >= 1 && n >= 1 && strings.HasSuffix(count(m1), "b:1") && strings.HasSuffix(count(m2), "b:1")
	}, "stream a not balanced over three members")
	// Shutdown hands every stream's partitions over.
	if err := m2.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, hang, func() bool { return strings.HasSuffix(count(m1), "b:2") }, "m1 did not take b's partitions")
	if _, err := m2.Read(ctx, 0); !errors.Is(err, segmenter.ErrClosed) {
		t.Fatalf("Read after Shutdown: %v", err)
	}
}

type streamsText func() string

func (l streamsText) String() string { return l() }

// Run over a list of streams handles every message of each, each key in
// order, with Stream set; a stream deleted in Redis while consumed is
// reported to OnError with ErrGroupNotFound, and one removed from the
// registry with ErrStreamNotFound, while the other streams go on.
func TestMultiConsumerRunAndDeletedStreams(t *testing.T) {
	onBackends(t, testMultiConsumerRunAndDeletedStreams)
}

func testMultiConsumerRunAndDeletedStreams(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	keys := keyspace.New(ns)
	var mu sync.Mutex
	var bg []error
	seg := newSegmenterConfig(t, segmenter.Config{Namespace: ns, Client: bk.client(t), HeartbeatInterval: 50 * time.Millisecond,
		OnError: func(err error) { mu.Lock(); bg = append(bg, err); mu.Unlock() }})
	recs := newStreamRecorders()
	names := []string{"s1", "s2", "s3"}
	streams := map[string]*segmenter.Stream{}
	for _, n := range names {
		st, err := seg.RegisterStream(ctx, n, 3, 0)
		if err != nil {
			t.Fatal(err)
		}
		streams[n] = st
	}
	m, err := seg.RegisterMultiConsumer(ctx, names, "g", 20, 10*time.Second, segmenter.WithHooks(recs))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		sendNumbered(t, streams[n], recs, 6, 120)
	}
	var hmu sync.Mutex
	next := map[string]int{}
	handled := map[string]int{}
	runCtx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() {
		runErr <- m.Run(runCtx, func(ctx context.Context, x *contracts.CMessage) error {
			stream, n, _ := strings.Cut(string(x.Data), "/")
			hmu.Lock()
			defer hmu.Unlock()
			k := x.Stream + "/" + x.PartitionKey
			if seq, _ := strconv.Atoi(n); stream != x.Stream || seq != next[k] {
				t.Errorf("%s: got %s, want %s/%d", k, x.Data, x.Stream, next[k])
			}
			next[k]++
			handled[x.Stream]++
			return nil
		})
	}()
	all := func(n int) func() bool {
		return func() bool {
			hmu.Lock()
			defer hmu.Unlock()
			return handled["s1"] == n && handled["s2"] == n && handled["s3"] == n
		}
	}
	redistest.Eventually(t, hang, all(120), "not every message handled")
	if err := m.Run(ctx, func(context.Context, *contracts.CMessage) error { return nil }); !errors.Is(err, segmenter.ErrInvalidArgument) {
		t.Fatalf("a second Run: %v", err)
	}

	// s2's partitions vanish in Redis; s3 leaves the registry.
	rdb := bk.client(t)
	for p := range 3 {
		if err := rdb.Del(ctx, keys.Partition("s2", p)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := rdb.HDel(ctx, keys.Streams(), "s3").Err(); err != nil {
		t.Fatal(err)
	}
	// s2's consumer finds NOGROUP only when it reads: give it news.
	for p := range 3 {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Partition("s2", p), Values: []string{"v", "1", "k", "k", "d", "x"}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	has := func(target error, stream string) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, err := range bg {
				if errors.Is(err, target) && strings.Contains(err.Error(), strconv.Quote(stream)) {
					return true
				}
			}
			return false
		}
	}
	redistest.Eventually(t, hang, has(segmenter.ErrGroupNotFound, "s2"), "the deleted stream s2 was not reported with ErrGroupNotFound")
	redistest.Eventually(t, hang, has(segmenter.ErrStreamNotFound, "s3"), "the unregistered stream s3 was not reported with ErrStreamNotFound")
	redistest.Eventually(t, hang, func() bool { return !slices.Contains(m.Streams(), "s3") }, "s3 still consumed")
	hmu.Lock() // s1's next messages are numbered from 0 again
	for k := range next {
		if strings.HasPrefix(k, "s1/") {
			next[k] = 0
		}
	}
	handled["s1"] = 0
	hmu.Unlock()
	sendNumbered(t, streams["s1"], recs, 6, 120)
	redistest.Eventually(t, hang, func() bool { hmu.Lock(); defer hmu.Unlock(); return handled["s1"] == 120 }, "s1 stopped after the others were deleted")
	stop()
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatalf("Run returned %v", err)
		}
	case <-time.After(hang): // catches a hang only
		t.Fatal("Run did not return")
	}
	if err := m.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(ctx, func(context.Context, *contracts.CMessage) error { return nil }); !errors.Is(err, segmenter.ErrClosed) {
		t.Fatalf("Run after Shutdown: %v", err)
	}
}

// Segmenter.Close shuts down a pattern consumer in the middle of Run, and
// leaves no goroutine behind.
func TestCloseShutsDownMultiConsumers(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Server(t)
	seg, err := segmenter.NewSegmenter(&segmenter.Config{Namespace: redistest.Namespace(t), RedisURL: srv.URL,
		SessionTimeout: testSession, BlockInterval: testBlock})
	if err != nil {
		t.Fatal(err)
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	st, err := seg.RegisterStream(ctx, "t.a", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	m, err := seg.RegisterPatternConsumer(ctx, "t.*", "g", 10, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 10)
	runErr := make(chan error, 1)
	go func() {
		runErr <- m.Run(ctx, func(_ context.Context, x *contracts.CMessage) error { got <- string(x.Data); return nil })
	}()
	send(t, st, nil, msg("k", "1"))
	if _, err := seg.RegisterStream(ctx, "t.b", 2, 0); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, hang, func() bool { return len(m.Streams()) == 2 }, "t.b not picked up")
	stb, err := seg.GetStream(ctx, "t.b")
	if err != nil {
		t.Fatal(err)
	}
	send(t, stb, nil, msg("k", "2"))
	for range 2 {
		select {
		case <-got:
		case <-time.After(hang): // catches a hang only
			t.Fatal("message not handled")
		}
	}
	if err := seg.Close(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-runErr:
		if !errors.Is(err, segmenter.ErrClosed) {
			t.Fatalf("Run returned %v, want ErrClosed", err)
		}
	case <-time.After(hang): // catches a hang only
		t.Fatal("Run did not return")
	}
	if _, err := m.Read(ctx, 0); !errors.Is(err, segmenter.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	if _, err := seg.RegisterPatternConsumer(ctx, "t.*", "g", 10, time.Second); !errors.Is(err, segmenter.ErrClosed) {
		t.Fatalf("RegisterPatternConsumer after Close: %v", err)
	}
}

func TestReadWithMaxMessages(t *testing.T) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), nil)
	st, err := seg.RegisterStream(ctx, "s", 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	c, err := seg.RegisterConsumer(ctx, "s", "g", 100, 10*time.Second, segmenter.WithHooks(recordingHook{rec}))
	if err != nil {
		t.Fatal(err)
	}
	sendKeyed(t, st, rec, 8, 40)
	total := 0
	for total < 40 {
		msgs, err := c.Read(ctx, time.Second, segmenter.WithMaxMessages(3))
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) == 0 || len(msgs) > 3 {
			t.Fatalf("Read with WithMaxMessages(3) returned %d messages", len(msgs))
		}
		if err := c.Ack(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
		total += len(msgs)
	}
	if err := invariant.Check(rec.Events(), invariant.Options{MaxProcessingTime: 10 * time.Second, RequireAllAcked: true}); err != nil {
		t.Fatal(err)
	}
}

// A Read that asks for fewer messages than the consumer has partitions to
// look at fetches them in turn within the one call: it finds a message in
// any of them without waiting (maxWait 0), not only in the one partition
// its budget would cover.
func TestReadWithFewerMessagesThanPartitionsLooksAtEvery(t *testing.T) {
	onBackends(t, testReadWithFewerMessagesThanPartitionsLooksAtEvery)
}

func testReadWithFewerMessagesThanPartitionsLooksAtEvery(t *testing.T, bk backend) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), bk.client(t))
	st, err := seg.RegisterStream(ctx, "s", 16, 0)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg(keyFor(t, st, 7, 0), "hello"))
	for _, tc := range []struct {
		group string
		batch int
		opts  []segmenter.ReadOption
	}{
		{"batch-of-one", 1, nil},
		{"max-messages-one", 100, []segmenter.ReadOption{segmenter.WithMaxMessages(1)}},
	} {
		c, err := seg.RegisterConsumer(ctx, "s", tc.group, tc.batch, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Assignment()) != 16 {
			t.Fatalf("%s holds %v", tc.group, c.Assignment())
		}
		msgs, err := c.Read(ctx, 0, tc.opts...)
		if err != nil || len(msgs) != 1 || msgs[0].Partition != 7 {
			t.Fatalf("%s: Read without waiting returned %v, %v; want the message of partition 7", tc.group, msgs, err)
		}
	}
}

package segmenter_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/keyspace"
	"github.com/segmenter/segmenter/internal/redistest"
)

// fetchFault is a go-redis hook on one consumer's client that acts on the
// consumer's fenced fetches (recognised by their fetch id, "<name>:<seq>").
//
//   - loseNext: the next fetch runs in Redis, but its reply is lost (the
//     client gets an error);
//   - holdNext: the next fetch runs in Redis, but its reply comes back only
//     after hold, and every other call of the client meanwhile waits too (a
//     stalled process or link).
type fetchFault struct {
	id       *regexp.Regexp
	loseNext atomic.Bool
	holdNext atomic.Bool
	hold     time.Duration
	until    atomic.Int64 // unix nanos: other calls wait until then
	held     chan struct{}
	fetches  atomic.Int64 // fetches that ran in Redis
	// failed: a fetch reply was lost; afterFailure counts the fetches since.
	failed       atomic.Bool
	afterFailure atomic.Int64
}

func newFetchFault(name string) *fetchFault {
	return &fetchFault{id: regexp.MustCompile("^" + regexp.QuoteMeta(name) + `:\d+$`), held: make(chan struct{}, 1)}
}

func (f *fetchFault) isFetch(cmds []redis.Cmder) bool {
	for _, c := range cmds {
		for _, a := range c.Args() {
			if s, ok := a.(string); ok && f.id.MatchString(s) {
				return true
			}
		}
	}
	return false
}

func (f *fetchFault) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (f *fetchFault) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (f *fetchFault) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		fetch := f.isFetch(cmds)
		switch {
		case fetch && f.loseNext.CompareAndSwap(true, false):
			_ = next(ctx, cmds)
			f.failed.Store(true)
			err := errors.New("test: fetch reply lost")
			for _, c := range cmds {
				c.SetErr(err)
			}
			return err
		case fetch && f.holdNext.CompareAndSwap(true, false):
			f.until.Store(time.Now().Add(f.hold).UnixNano())
			err := next(ctx, cmds)
			f.fetches.Add(1)
			f.held <- struct{}{}
			time.Sleep(f.hold) // the stall under test
			return err
		}
		if d := time.Until(time.Unix(0, f.until.Load())); d > 0 {
			time.Sleep(d) // the stall under test: nothing passes meanwhile
		}
		err := next(ctx, cmds)
		if fetch && err == nil {
			f.fetches.Add(1)
			if f.failed.Load() {
				f.afterFailure.Add(1)
			}
		}
		return err
	}
}

// A consumer whose fetch reply comes back after its lease's local validity
// (the process stalled, or its link) must not hand the messages out: another
// consumer may own the partition by then and have delivered them.
func TestFetchReplyPastTheLeaseValidityDeliversNothing(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Client(t)
	ff := newFetchFault("A")
	ff.hold = 2 * testSession // the validity is 4/5 of the session
	rdb.AddHook(ff)
	seg := newSegmenter(t, redistest.Namespace(t), rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithConsumerName("A"))
	if err != nil {
		t.Fatal(err)
	}
	sent := send(t, st, nil, msg("k", "0"), msg("k", "1"), msg("k", "2"))

	ff.holdNext.Store(true)
	msgs, err := a.Read(ctx, 0)
	if len(msgs) > 0 {
		t.Fatalf("a Read whose fetch came back past the lease's validity delivered %d messages (err %v)", len(msgs), err)
	}
	select {
	case <-ff.held:
	default:
		t.Fatal("the fetch was not held: the test did not test anything")
	}
	// Nothing is lost: once a renewal confirms the lease, the messages the
	// dropped reply carried are claimed again, first, in order.
	var got []*contracts.CMessage
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < len(sent) && time.Now().Before(deadline) {
		m, err := a.Read(ctx, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m...)
	}
	if len(got) != len(sent) {
		t.Fatalf("got %d of %d messages after the stall", len(got), len(sent))
	}
	for i, m := range got {
		if m.Id != sent[i] || m.DeliveryCount < 2 {
			t.Fatalf("message %d after the stall: %s (delivery %d), want %s redelivered", i, m.Id, m.DeliveryCount, sent[i])
		}
	}
	if err := a.Ack(ctx, got...); err != nil {
		t.Fatal(err)
	}
}

// After a fetch whose reply was lost the consumer claims the partition's
// whole pending list again (the read moved messages there unseen). The
// messages the application still holds are in that list: they must not be
// handed out a second time.
func TestReclaimAfterAFailedFetchSkipsHeldMessages(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Client(t)
	ff := newFetchFault("A")
	rdb.AddHook(ff)
	seg := newSegmenter(t, redistest.Namespace(t), rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := seg.RegisterConsumer(ctx, "s", "g", 5, time.Minute, segmenter.WithConsumerName("A"))
	if err != nil {
		t.Fatal(err)
	}
	var batch []*contracts.PMessage
	for i := range 10 {
		batch = append(batch, msg("k", strconv.Itoa(i)))
	}
	sent := send(t, st, nil, batch...)

	held, err := a.Read(ctx, time.Second)
	if err != nil || len(held) != 5 {
		t.Fatalf("first read: %d messages, %v", len(held), err)
	}
	// The next fetch reads the rest in Redis, but its reply is lost: the
	// consumer claims the pending list again (at once, or after reporting
	// the error), which holds the 5 it delivered too.
	ff.loseNext.Store(true)
	var rest []*contracts.CMessage
	if m, err := a.Read(ctx, 0); err == nil {
		rest = m
	}
	if ff.loseNext.Load() {
		t.Fatal("no fetch reply was lost: the test tested nothing")
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(rest) < 5 && time.Now().Before(deadline) {
		m, err := a.Read(ctx, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		rest = append(rest, m...)
	}
	for i, m := range rest {
		if m.Id != sent[5+i] {
			t.Fatalf("after the failed fetch, message %d is %s (data %s), want %s: the held messages came again", i, m.Id, m.Data, sent[5+i])
		}
	}
	if len(rest) != 5 {
		t.Fatalf("after the failed fetch: %d messages, want the 5 not yet read", len(rest))
	}
	if err := a.Ack(ctx, append(held, rest...)...); err != nil {
		t.Fatal(err)
	}
	if m, err := a.Read(ctx, 0); len(m) != 0 || err != nil {
		t.Fatalf("after acking everything: %d messages, %v", len(m), err)
	}
}

// The same under Run with per-key concurrency, which fetches while handlers
// run: a lost fetch reply must not make in-flight messages run twice.
func TestRunPerKeyFailedFetchRunsNothingTwice(t *testing.T) {
	for _, kc := range []int{0, 100} {
		t.Run(fmt.Sprint("keyConcurrency=", kc), func(t *testing.T) {
			ctx := context.Background()
			rdb := redistest.Client(t)
			ff := newFetchFault("A")
			rdb.AddHook(ff)
			seg := newSegmenter(t, redistest.Namespace(t), rdb)
			st, err := seg.RegisterStream(ctx, "s", 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			c, err := seg.RegisterConsumer(ctx, "s", "g", 100, time.Minute, segmenter.WithConsumerName("A"))
			if err != nil {
				t.Fatal(err)
			}
			var batch []*contracts.PMessage
			for i := range 10 {
				batch = append(batch, msg("A", strconv.Itoa(i)))
			}
			for i := range 10 {
				batch = append(batch, msg("B", strconv.Itoa(i)))
			}
			send(t, st, nil, batch...)
			var mu sync.Mutex
			seen := map[string][]string{}
			started, release := make(chan struct{}), make(chan struct{})
			var once sync.Once
			var opts []segmenter.RunOption
			if kc > 0 {
				opts = append(opts, segmenter.WithKeyConcurrency(kc))
			}
			stop := runUntil(t, c, func(ctx context.Context, m *contracts.CMessage) error {
				mu.Lock()
				seen[m.PartitionKey] = append(seen[m.PartitionKey], string(m.Data))
				mu.Unlock()
				if m.PartitionKey == "A" && string(m.Data) == "0" {
					once.Do(func() { close(started); <-release })
				}
				return nil
			}, opts...)
			<-started
			ff.loseNext.Store(true)
			// Let the consumer fetch again after the lost reply (per-key
			// mode fetches while A's first message is held).
			if kc > 0 {
				redistest.Eventually(t, 10*time.Second, func() bool { return ff.afterFailure.Load() > 0 }, "no fetch after the failure")
			}
			close(release)
			// Every message delivered was handled (a copy handed out again
			// would be delivered, then handled), and all were acked.
			redistest.Eventually(t, 10*time.Second, func() bool {
				mu.Lock()
				n := len(seen["A"]) + len(seen["B"])
				mu.Unlock()
				s := c.Stats()
				return s.Acked >= 20 && uint64(n) >= s.Delivered
			}, "not every message was handled and acked")
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, k := range []string{"A", "B"} {
				want := []string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}
				if fmt.Sprint(seen[k]) != fmt.Sprint(want) {
					t.Errorf("key %s handled %v, want each message once, in order", k, seen[k])
				}
			}
		})
	}
}

// A key whose messages keep failing holds back only itself, also once its
// backlog fills more than half of the partition's in-flight bound.
func TestRunPerKeyFailingBacklogOverHalfTheBoundDoesNotStallOtherKeys(t *testing.T) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), nil)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 100, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	const bound, bad, good = 20, 14, 100 // bad > bound/2
	var batch []*contracts.PMessage
	for i := range bad {
		batch = append(batch, msg("bad", strconv.Itoa(i)))
	}
	for i := range good {
		batch = append(batch, msg("good-"+strconv.Itoa(i%3), strconv.Itoa(i)))
	}
	send(t, st, nil, batch...)
	var handled atomic.Int64
	stop := runUntil(t, c, func(ctx context.Context, m *contracts.CMessage) error {
		if m.PartitionKey == "bad" {
			return errors.New("test: always fails")
		}
		handled.Add(1)
		return nil
	}, segmenter.WithKeyConcurrency(bound), segmenter.WithRetryBackoff(time.Millisecond, 5*time.Millisecond))
	redistest.Eventually(t, 10*time.Second, func() bool { return handled.Load() == good },
		"the other keys stalled behind the failing one")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// duringFetch is a go-redis hook that runs fn once, while the next fetch
// of a consumer is on its way (after it was prepared, before it runs).
type duringFetch struct {
	ff *fetchFault // only for its fetch recognition
	fn atomic.Pointer[func()]
}

func (h *duringFetch) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *duringFetch) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *duringFetch) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.ff.isFetch(cmds) {
			if fn := h.fn.Swap(nil); fn != nil {
				(*fn)()
			}
		}
		return next(ctx, cmds)
	}
}

// A Nack that races a fetch in flight still sends the nacked message
// first: the fetch delivers nothing of that partition, and the next one
// claims the nacked message before what the racing fetch read.
func TestNackDuringAFetchStillComesFirst(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Client(t)
	h := &duringFetch{ff: newFetchFault("A")}
	rdb.AddHook(h)
	seg := newSegmenter(t, redistest.Namespace(t), rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithConsumerName("A"))
	if err != nil {
		t.Fatal(err)
	}
	first := send(t, st, nil, msg("k", "0"))
	held := drainNoAck(t, c, nil, 1)
	second := send(t, st, nil, msg("k", "1"))
	nack := func() {
		if err := c.Nack(held...); err != nil {
			t.Error(err)
		}
	}
	h.fn.Store(&nack)
	var got []*contracts.CMessage
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < 2 && time.Now().Before(deadline) {
		m, err := c.Read(ctx, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m...)
	}
	if h.fn.Load() != nil {
		t.Fatal("no fetch ran: the test tested nothing")
	}
	if len(got) != 2 || got[0].Id != first[0] || got[1].Id != second[0] {
		ids := make([]string, len(got))
		for i, m := range got {
			ids[i] = m.Id
		}
		t.Fatalf("after a Nack during a fetch: %v, want the nacked %s first, then %s", ids, first[0], second[0])
	}
	if err := c.Ack(ctx, got...); err != nil {
		t.Fatal(err)
	}
}

// A consumer that took a partition over with an old message pending (the
// newer ones acked by the previous owner) waits for new entries after the
// last one, instead of fetching again and again from the old message.
func TestIdleReadAfterATakeoverDoesNotSpin(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdbA, cutA := gatedClient(t)
	segA := newSegmenter(t, ns, rdbA)
	st, err := segA.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k1", "1"), msg("k2", "2"), msg("k3", "3"))
	a, err := segA.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got := drainNoAck(t, a, nil, 3)
	if err := a.Ack(ctx, got[1:]...); err != nil {
		t.Fatal(err)
	}
	cutA.closed.Store(true) // A is gone with message 1 pending
	rdbB := redistest.Client(t)
	ff := newFetchFault("B")
	rdbB.AddHook(ff)
	b, err := newSegmenter(t, ns, rdbB).RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithConsumerName("B"))
	if err != nil {
		t.Fatal(err)
	}
	m := drainNoAck(t, b, nil, 1)
	if m[0].Id != got[0].Id {
		t.Fatalf("B got %s, want the pending %s", m[0].Id, got[0].Id)
	}
	before := ff.fetches.Load()
	if idle, err := b.Read(ctx, time.Second); len(idle) != 0 || err != nil {
		t.Fatalf("idle Read: %v %v", idle, err)
	}
	// A handful at most (the wait's own look at the partition): a busy
	// loop makes hundreds.
	if n := ff.fetches.Load() - before; n > 10 {
		t.Fatalf("an idle Read of 1s ran %d fetches", n)
	}
	if err := b.Ack(ctx, m...); err != nil {
		t.Fatal(err)
	}
}

// heldTicks is a go-redis hook that holds a consumer's next heartbeat (a
// pipeline naming the group's members key) for hold before it leaves, as
// a network that stalls would: it runs in Redis only then.
type heldTicks struct {
	members string
	hold    time.Duration
	next    atomic.Bool
	held    chan struct{}
}

func (h *heldTicks) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *heldTicks) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *heldTicks) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			for _, a := range c.Args() {
				if a == h.members && h.next.CompareAndSwap(true, false) {
					time.Sleep(h.hold) // the stall under test
					close(h.held)
				}
			}
		}
		return next(ctx, cmds)
	}
}

// A consumer's heartbeat is held up past its session timeout: meanwhile
// its partition goes to another consumer, which takes the lease. When the
// heartbeat at last runs, it tells the consumer that the partition is no
// longer its own; the consumer's release finds the lease held by the other
// one. That partition was lost, not handed over: the listener hears
// PartitionLost with ErrFenced, Stats counts it fenced, and the next Read
// reports it.
func TestReleaseOfALeaseTakenMeanwhileIsALoss(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdbA := redistest.Client(t)
	h := &heldTicks{members: keyspace.New(ns).Members("s", "g"), hold: 4 * testSession, held: make(chan struct{})}
	rdbA.AddHook(h)
	segA := newSegmenter(t, ns, rdbA)
	if _, err := segA.RegisterStream(ctx, "s", 1, 0); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var events []segmenter.PartitionEvent
	a, err := segA.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithConsumerName("A"),
		segmenter.WithPartitionListener(func(e segmenter.PartitionEvent) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
		}))
	if err != nil {
		t.Fatal(err)
	}
	own := a.Assignment()
	if len(own) != 1 {
		t.Fatalf("A holds %v, want the partition", own)
	}
	h.next.Store(true)
	b, err := newSegmenter(t, ns, nil).RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithConsumerName("B"))
	if err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return len(b.Assignment()) == 1 }, "B never took the partition over")
	select {
	case <-h.held:
	case <-time.After(10 * time.Second):
		t.Fatal("A's heartbeat was never held: the test tested nothing")
	}
	redistest.Eventually(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range events {
			if e.Epoch == own[0].Epoch && e.Kind != segmenter.PartitionAssigned {
				return true
			}
		}
		return false
	}, "A never learnt that it no longer holds the partition")
	mu.Lock()
	for _, e := range events {
		if e.Epoch != own[0].Epoch || e.Kind == segmenter.PartitionAssigned {
			continue
		}
		if e.Kind != segmenter.PartitionLost || !errors.Is(e.Err, segmenter.ErrFenced) {
			t.Errorf("A's partition, taken by B while A's heartbeat was held up, was reported %v (err %v), want lost with ErrFenced", e.Kind, e.Err)
		}
	}
	mu.Unlock()
	if s := a.Stats(); s.Fenced != 1 {
		t.Errorf("A's Stats().Fenced = %d, want 1", s.Fenced)
	}
	if _, err := a.Read(ctx, 0); !errors.Is(err, segmenter.ErrFenced) {
		t.Errorf("A's next Read returned %v, want the partition lost with ErrFenced", err)
	}
}

// outOfMemory makes the server of rdb refuse every write that may use
// memory (maxmemory well below what it uses, policy noeviction).
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
	_, v, _ := strings.Cut(rdb.Info(ctx, "memory").Val(), "used_memory:")
	v, _, _ = strings.Cut(v, "\r\n")
	used, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", strconv.FormatInt(used-1<<20, 10)).Err(); err != nil {
		t.Fatal(err)
	}
}

// While Redis is out of memory a consumer still joins a group that exists
// on every partition (Redis refuses XGROUP CREATE even where it would find
// the group), and reads and acks; a group that does not exist yet cannot
// be created, with Redis' error.
func TestRegisterConsumerOutOfMemoryJoinsAnExistingGroup(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Standalone(t).Client(t)
	seg := newSegmenter(t, redistest.Namespace(t), rdb)
	st, err := seg.RegisterStream(ctx, "s", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithConsumerName("A"))
	if err != nil {
		t.Fatal(err)
	}
	sent := send(t, st, nil, msg("k1", "1"), msg("k2", "2"))
	outOfMemory(t, rdb)
	if _, err := st.Send(ctx, msg("k3", "3")); !redis.HasErrorPrefix(err, "OOM") {
		t.Fatalf("a send out of memory: %v, want OOM", err)
	}
	b, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithConsumerName("B"))
	if err != nil {
		t.Fatalf("joining an existing group out of memory: %v", err)
	}
	if _, err := seg.RegisterConsumer(ctx, "s", "other", 10, time.Minute); !redis.HasErrorPrefix(err, "OOM") || !strings.Contains(err.Error(), `group "other"`) {
		t.Fatalf("a new group out of memory: %v, want Redis' OOM error naming the group", err)
	}
	got := map[string]bool{}
	redistest.Eventually(t, 10*time.Second, func() bool {
		for _, c := range []*segmenter.Consumer{a, b} {
			msgs, err := c.Read(ctx, 10*time.Millisecond)
			if err != nil && !errors.Is(err, segmenter.ErrFenced) {
				t.Fatalf("read out of memory: %v", err)
			}
			if err := c.Ack(ctx, msgs...); err != nil {
				t.Fatalf("ack out of memory: %v", err)
			}
			for _, m := range msgs {
				got[m.Id] = true
			}
		}
		return len(got) == len(sent)
	}, "the consumers did not read and ack the messages out of memory")
}

// A Redis whose maxmemory-policy lets it evict any key is reported at the
// Segmenter's first registration, once: a warning in the log and
// ErrEvictionPolicy to OnError. noeviction is not.
func TestEvictingMaxmemoryPolicyIsReported(t *testing.T) {
	for _, policy := range []string{"allkeys-lru", "noeviction"} {
		t.Run(policy, func(t *testing.T) {
			ctx := context.Background()
			rdb := redistest.Standalone(t, redistest.WithArgs("--maxmemory", "64mb", "--maxmemory-policy", policy)).Client(t)
			var mu sync.Mutex
			var reported []error
			logs := &logCapture{}
			seg := newSegmenterConfig(t, segmenter.Config{Namespace: redistest.Namespace(t), Client: rdb,
				Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
				OnError: func(err error) {
					mu.Lock()
					reported = append(reported, err)
					mu.Unlock()
				}})
			if _, err := seg.RegisterStream(ctx, "s", 1, 0); err != nil {
				t.Fatal(err)
			}
			if _, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			var evict []error
			for _, err := range reported {
				if errors.Is(err, segmenter.ErrEvictionPolicy) {
					evict = append(evict, err)
				}
			}
			logs.mu.Lock()
			logged := logs.buf.Len() > 0
			logs.mu.Unlock()
			var warned []map[string]any
			if logged {
				warned = logs.records(t, "evict")
			}
			if policy == "noeviction" {
				if len(evict) > 0 || len(warned) > 0 {
					t.Fatalf("noeviction was reported: %v %v", evict, warned)
				}
				return
			}
			if len(evict) != 1 || !strings.Contains(evict[0].Error(), "allkeys-lru") {
				t.Fatalf("OnError got %v, want ErrEvictionPolicy naming allkeys-lru once", evict)
			}
			if len(warned) != 1 || warned[0]["level"] != "WARN" || warned[0]["maxmemory_policy"] != "allkeys-lru" {
				t.Fatalf("logged %v, want one warning with the policy", warned)
			}
		})
	}
}

// replayedCall is a go-redis hook that loses the reply of a call that ran:
// the next pipeline that match accepts runs in Redis, then between runs
// (while the reply is lost); then, with again, the pipeline runs again, as
// go-redis' own retry would, and the caller gets the second reply, else
// the caller gets a connection error.
type replayedCall struct {
	match   func([]redis.Cmder) bool
	between func()
	again   bool
	armed   atomic.Bool
	played  atomic.Bool
}

var errReplyLost = errors.New("test: reply lost")

func (h *replayedCall) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *replayedCall) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *replayedCall) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !h.match(cmds) || !h.armed.CompareAndSwap(true, false) {
			return next(ctx, cmds)
		}
		_ = next(ctx, cmds)
		h.between()
		h.played.Store(true)
		if h.again {
			return next(ctx, cmds)
		}
		for _, c := range cmds {
			c.SetErr(errReplyLost)
		}
		return errReplyLost
	}
}

// callsScript reports whether cmds hold a call of one of the SDK's scripts
// (by its SHA-1 or its source) or a command named one of names.
func callsScript(t *testing.T, scripts []string, names ...string) func([]redis.Cmder) bool {
	var shas []string
	for _, s := range scripts {
		shas = append(shas, string(scriptMarker(t, s)))
	}
	return func(cmds []redis.Cmder) bool {
		for _, c := range cmds {
			for _, n := range names {
				if strings.EqualFold(c.Name(), n) {
					return true
				}
			}
			if a := c.Args(); len(a) > 1 && slices.Contains(shas, fmt.Sprint(a[1])) {
				return true
			}
		}
		return false
	}
}

// A consumer's ack runs in Redis but its reply is lost, and the lease goes
// to another consumer before the ack is sent again: the second run finds
// the lease another's. The messages were acknowledged all the same (by the
// first run): Ack must not report them fenced (they are not going to the
// next owner); the ack's id in the lease tells the second run that the
// first did the work, so Ack reports them acknowledged.
func TestAckRetriedAfterTheLeaseMovedIsNotFenced(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := redistest.Client(t)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithConsumerName("A"))
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "1"))
	got := drainNoAck(t, a, nil, 1)
	direct := redistest.Client(t)
	lease := keyspace.New(ns).Lease("s", 0, "g")
	h := &replayedCall{match: callsScript(t, []string{"ack", "ack_many"}, "xack"), between: func() {
		// The partition's next owner takes the lease.
		if err := direct.HSet(ctx, lease, "o", "B", "e", strconv.FormatInt(got[0].Epoch+1, 10)).Err(); err != nil {
			t.Error(err)
		}
	}}
	h.armed.Store(true)
	rdb.AddHook(h)
	err = a.Ack(ctx, got...)
	if !h.played.Load() {
		t.Fatal("the ack was not played twice: the test tested nothing")
	}
	if err != nil {
		t.Fatalf("an ack that ran, sent again after the lease moved, returned %v: want acknowledged (not ErrFenced)", err)
	}
	n, err2 := direct.XPending(ctx, keyspace.New(ns).Partition("s", 0), "g").Result()
	if err2 != nil || n.Count != 0 {
		t.Fatalf("pending after the ack: %+v %v, want none", n, err2)
	}
	if s := a.Stats(); s.Fenced != 0 {
		t.Fatalf("Stats().Fenced = %d after an ack that ran", s.Fenced)
	}
}

// A consumer hands a partition over: its release runs in Redis, the reply
// is lost, and the next owner takes the lease before go-redis sends the
// release again (go-redis does: a release is idempotent). The partition was
// handed over (revoked), not lost.
func TestReleaseRetriedAfterTheNextOwnerTookTheLeaseIsAHandOver(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := redistest.Client(t)
	seg := newSegmenter(t, ns, rdb)
	if _, err := seg.RegisterStream(ctx, "s", 1, 0); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var events []segmenter.PartitionEvent
	a, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithConsumerName("A"),
		segmenter.WithPartitionListener(func(e segmenter.PartitionEvent) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
		}))
	if err != nil {
		t.Fatal(err)
	}
	own := a.Assignment()
	direct := redistest.Client(t)
	lease := keyspace.New(ns).Lease("s", 0, "g")
	h := &replayedCall{match: callsScript(t, []string{"release"}), again: true, between: func() {
		if err := direct.HSet(ctx, lease, "o", "B", "e", strconv.FormatInt(own[0].Epoch+1, 10)).Err(); err != nil {
			t.Error(err)
		}
	}}
	h.armed.Store(true)
	rdb.AddHook(h)
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if !h.played.Load() {
		t.Fatal("the release was not played twice: the test tested nothing")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, e := range events {
		if e.Epoch == own[0].Epoch && e.Kind != segmenter.PartitionAssigned && e.Kind != segmenter.PartitionRevoked {
			t.Errorf("a partition handed over, its release sent again after the next owner took it, was reported %v (%v)", e.Kind, e.Err)
		}
	}
	if s := a.Stats(); s.Fenced != 0 {
		t.Errorf("Stats().Fenced = %d after a hand-over", s.Fenced)
	}
}

// failedCalls is a go-redis hook that fails, without sending them, the next
// n pipelines that match accepts (a connection that broke before they left).
type failedCalls struct {
	match func([]redis.Cmder) bool
	n     atomic.Int32
}

func (h *failedCalls) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *failedCalls) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *failedCalls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.match(cmds) && h.n.Add(-1) >= 0 {
			for _, c := range cmds {
				c.SetErr(errReplyLost)
			}
			return errReplyLost
		}
		return next(ctx, cmds)
	}
}

// Run's ack of a handled message fails (the native ack and the scripts'
// second try: Redis was away): Run sends it again, and the message is
// acked, handled once. (Left in flight, it would be kept from coming due
// for ever, and never acked.)
func TestRunSendsAFailedAckAgain(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := redistest.Client(t)
	h := &failedCalls{match: callsScript(t, []string{"ack", "ack_many"}, "xack")}
	rdb.AddHook(h)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	const maxProc = 300 * time.Millisecond
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, maxProc)
	if err != nil {
		t.Fatal(err)
	}
	h.n.Store(2)
	send(t, st, nil, msg("k", "1"))
	var handled atomic.Int32
	stop := runUntil(t, c, func(context.Context, *contracts.CMessage) error {
		handled.Add(1)
		return nil
	})
	direct := redistest.Client(t)
	redistest.Eventually(t, 10*time.Second, func() bool {
		n, err := direct.XPending(ctx, keyspace.New(ns).Partition("s", 0), "g").Result()
		return err == nil && n.Count == 0 && handled.Load() > 0
	}, "the message whose ack failed was never acked")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if h.n.Load() >= 0 {
		t.Fatal("the acks did not fail: the test tested nothing")
	}
	if n := handled.Load(); n != 1 {
		t.Fatalf("handled %d times, want once", n)
	}
}

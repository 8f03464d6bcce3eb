package segmenter_test

import (
	"context"
	"errors"
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

// A second Shutdown waits for the first, but no longer than its own ctx.
func TestConcurrentShutdownHonoursEachContext(t *testing.T) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), nil)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "0"))
	msgs := drainNoAck(t, c, nil, 1)
	// The first Shutdown waits for the message in flight (maxProcessingTime
	// is a minute).
	first := make(chan error, 1)
	go func() { first <- c.Shutdown(ctx) }()
	redistest.Eventually(t, 5*time.Second, func() bool {
		_, err := c.Read(ctx, 0)
		return errors.Is(err, segmenter.ErrClosed)
	}, "the first Shutdown did not start")
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	second := make(chan error, 1)
	go func() { second <- c.Shutdown(short) }()
	select {
	case err := <-second:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("second Shutdown: %v, want its context's deadline", err)
		}
	case <-time.After(10 * time.Second): // catches a hang only
		t.Fatal("the second Shutdown waited past its own context")
	}
	if err := c.Ack(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-first:
		if err != nil {
			t.Fatalf("first Shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first Shutdown did not return once the message was acked")
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown after the first: %v", err)
	}
}

// A partition listener may call the consumer (Read included).
func TestPartitionListenerMayCallTheConsumer(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	seg := newSegmenter(t, ns, nil)
	if _, err := seg.RegisterStream(ctx, "s", 4, 0); err != nil {
		t.Fatal(err)
	}
	var self atomic.Pointer[segmenter.Consumer]
	var mu sync.Mutex
	var calls, events int
	a, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithPartitionListener(func(e segmenter.PartitionEvent) {
		mu.Lock()
		events++
		mu.Unlock()
		c := self.Load()
		if c == nil {
			return
		}
		if _, err := c.Read(ctx, 0); err != nil && !errors.Is(err, segmenter.ErrClosed) {
			var pe *segmenter.PartitionError
			if !errors.As(err, &pe) {
				t.Errorf("Read from the listener: %v", err)
			}
		}
		_ = c.Assignment()
		mu.Lock()
		calls++
		mu.Unlock()
	}))
	if err != nil {
		t.Fatal(err)
	}
	self.Store(a)
	// A second consumer joins, then leaves: a loses partitions, then gets
	// them back, each time calling its listener from its own goroutines.
	b, err := newSegmenter(t, ns, nil).RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return len(b.Assignment()) == 2 && len(a.Assignment()) == 2 }, "the join did not balance")
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(a.Assignment()) == 4 && calls >= 4
	}, "the listener did not see the partitions come back (deadlocked?)")
}

// A group registered before that vanished from a partition (the partition
// was deleted) is created there again from its first entry, even for a
// consumer that asks to start at the latest: nothing sent since is skipped.
func TestVanishedGroupIsRecreatedFromTheStartAndReported(t *testing.T) {
	onBackends(t, testVanishedGroupIsRecreatedFromTheStartAndReported)
}

func testVanishedGroupIsRecreatedFromTheStartAndReported(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := bk.client(t)
	var reported atomic.Value
	seg := newSegmenterConfig(t, segmenter.Config{Namespace: ns, Client: rdb,
		OnError: func(err error) {
			if errors.Is(err, segmenter.ErrGroupNotFound) {
				reported.Store(err)
			}
		},
	})
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithStartPosition(segmenter.StartLatest))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(ctx, keyspace.New(ns).Partition("s", 0)).Err(); err != nil {
		t.Fatal(err)
	}
	sent := send(t, st, nil, msg("k", "after the deletion"))
	c, err = seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithStartPosition(segmenter.StartLatest))
	if err != nil {
		t.Fatal(err)
	}
	if reported.Load() == nil {
		t.Error("the recreated group was not reported to OnError")
	}
	got := drain(t, c, nil, 1, 5*time.Second)
	if got[0].Id != sent[0] {
		t.Fatalf("got %s, want %s", got[0].Id, sent[0])
	}
}

// redeliveries is a RedeliverHook.
type redeliveries struct {
	mu   sync.Mutex
	msgs []*contracts.CMessage
}

func (r *redeliveries) OnRedeliver(e segmenter.RedeliverEvent) {
	r.mu.Lock()
	r.msgs = append(r.msgs, e.Message)
	r.mu.Unlock()
}

func TestRedeliverHookSeesEveryRedelivery(t *testing.T) {
	onBackends(t, testRedeliverHookSeesEveryRedelivery)
}

func testRedeliverHookSeesEveryRedelivery(t *testing.T, bk backend) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), bk.client(t))
	st, err := seg.RegisterStream(ctx, "s", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	hook := &redeliveries{}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithHooks(hook))
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("a", "0"), msg("b", "1"))
	first := drainNoAck(t, c, nil, 2)
	if err := c.Nack(first[0]); err != nil {
		t.Fatal(err)
	}
	again := drainNoAck(t, c, nil, 1)
	if again[0].Id != first[0].Id || again[0].DeliveryCount != 2 {
		t.Fatalf("after the Nack: %s (delivery %d), want %s again", again[0].Id, again[0].DeliveryCount, first[0].Id)
	}
	hook.mu.Lock()
	defer hook.mu.Unlock()
	if len(hook.msgs) != 1 || hook.msgs[0].Id != first[0].Id || hook.msgs[0].DeliveryCount != 2 {
		t.Fatalf("redeliver hook saw %v, want the nacked message once", hook.msgs)
	}
	if err := c.Ack(ctx, append(first[1:], again...)...); err != nil {
		t.Fatal(err)
	}
}

// Under Run, a poison entry whose handler fails is dead-lettered at once:
// retrying cannot decode it, and its partition goes on.
func TestRunDeadLettersAPoisonEntryWhoseHandlerFails(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := redistest.Client(t)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	poisonID, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keyspace.New(ns).Partition("s", 0), Values: []any{"foreign", "x"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "after"))
	var mu sync.Mutex
	var handled []string
	stop := runUntil(t, c, func(ctx context.Context, m *contracts.CMessage) error {
		mu.Lock()
		handled = append(handled, m.Id)
		mu.Unlock()
		if segmenter.Poison(m) != nil {
			return errors.New("test: cannot decode")
		}
		return nil
	})
	redistest.Eventually(t, 10*time.Second, func() bool { s := c.Stats(); return s.Acked == 1 && s.DeadLettered == 1 },
		"the poison entry held its partition back")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != 2 || handled[0] != poisonID {
		t.Fatalf("handled %v, want the poison entry once, then the next message", handled)
	}
	dead, err := seg.DeadLetters(ctx, "s", "g", 10)
	if err != nil || len(dead) != 1 || dead[0].Message.Id != poisonID {
		t.Fatalf("dead letters %v, %v: want the poison entry", dead, err)
	}
}

// Under Run, a handler does not start once the partition's lease is past
// its local validity (renewals failing): the message is handed back and
// handled once Redis confirms the lease again.
func TestRunStartsNoHandlerPastTheLeaseValidity(t *testing.T) {
	onBackends(t, testRunStartsNoHandlerPastTheLeaseValidity)
}

func testRunStartsNoHandlerPastTheLeaseValidity(t *testing.T, bk backend) {
	ctx := context.Background()
	rdb, cut := bk.gatedClient(t)
	seg := newSegmenter(t, redistest.Namespace(t), rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	sent := send(t, st, nil, msg("k", "0"), msg("k", "1"))
	var mu sync.Mutex
	var calls []*contracts.CMessage
	stop := runUntil(t, c, func(ctx context.Context, m *contracts.CMessage) error {
		mu.Lock()
		first := len(calls) == 0
		calls = append(calls, m)
		mu.Unlock()
		if first {
			// The link breaks while the first message is handled, for
			// longer than the lease's validity.
			cut.closed.Store(true)
			time.Sleep(2 * testSession) // simulated work
			cut.closed.Store(false)
		}
		return nil
	})
	redistest.Eventually(t, 20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range calls {
			if m.Id == sent[1] {
				return true
			}
		}
		return false
	}, "the second message was never handled")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, m := range calls {
		if m.Id == sent[1] && m.DeliveryCount < 2 {
			t.Fatalf("message %s was handled under a lease past its validity (delivery %d)", m.Id, m.DeliveryCount)
		}
	}
}

// A Shutdown whose ctx ends while messages are in flight still hands the
// partitions over, and says so.
func TestShutdownPastItsContextReportsTheMessagesInFlight(t *testing.T) {
	onBackends(t, testShutdownPastItsContextReportsTheMessagesInFlight)
}

func testShutdownPastItsContextReportsTheMessagesInFlight(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	seg := newSegmenter(t, ns, bk.client(t))
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "0"))
	drainNoAck(t, a, nil, 1)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := a.Shutdown(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a message in flight past its ctx: %v, want its deadline", err)
	}
	b, err := newSegmenter(t, ns, bk.client(t)).RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got := drain(t, b, nil, 1, 5*time.Second) // handed over: no session timeout to wait
	if got[0].DeliveryCount != 2 {
		t.Fatalf("the next owner got %s with delivery %d, want it again", got[0].Id, got[0].DeliveryCount)
	}
}

package segmenter_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

// runUntil runs c.Run in a goroutine; the returned stop cancels it and
// returns Run's result.
func runUntil(t *testing.T, c *segmenter.Consumer, h segmenter.Handler, opts ...segmenter.RunOption) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h, opts...) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second): // catches a hang only
				t.Error("Run did not return")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// sendKeyed sends n messages over keys, recording them; the data is the
// key's sequence number.
func sendKeyed(t *testing.T, st *segmenter.Stream, rec *invariant.Recorder, keys, n int) {
	t.Helper()
	seq := map[string]int{}
	var batch []*contracts.PMessage
	for i := 0; i < n; i++ {
		k := "key-" + strconv.Itoa(i%keys)
		batch = append(batch, msg(k, strconv.Itoa(seq[k])))
		seq[k]++
		if len(batch) == 500 || i == n-1 {
			send(t, st, rec, batch...)
			batch = nil
		}
	}
}

func waitAcked(t *testing.T, rec *invariant.Recorder, timeout time.Duration) {
	t.Helper()
	redistest.Eventually(t, timeout, func() bool {
		s := invariant.Summarize(rec.Events())
		return s.Acked >= s.Sent
	}, "not every message was acked")
}

// recordedConsumer registers stream "s" of the given partitions in a new
// namespace and a consumer of group "g" whose deliveries and acks rec logs.
func recordedConsumer(t *testing.T, rdb redis.UniversalClient, partitions, batch int, maxProc time.Duration) (*segmenter.Stream, *segmenter.Consumer, *invariant.Recorder) {
	t.Helper()
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), rdb)
	st, err := seg.RegisterStream(ctx, "s", partitions, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	c, err := seg.RegisterConsumer(ctx, "s", "g", batch, maxProc, segmenter.WithHooks(recordingHook{rec}))
	if err != nil {
		t.Fatal(err)
	}
	return st, c, rec
}

func TestRunHandlesPartitionsConcurrentlyEachInOrder(t *testing.T) {
	onBackends(t, testRunHandlesPartitionsConcurrentlyEachInOrder)
}

func testRunHandlesPartitionsConcurrentlyEachInOrder(t *testing.T, bk backend) {
	st, c, rec := recordedConsumer(t, bk.client(t), 8, 100, 10*time.Second)
	sendKeyed(t, st, rec, 64, 3000)
	var mu sync.Mutex
	active := map[uint32]int{}
	maxPerPartition, maxTotal, total := 0, 0, 0
	next := map[string]int{}
	stop := runUntil(t, c, func(ctx context.Context, m *contracts.CMessage) error {
		mu.Lock()
		active[m.Partition]++
		total++
		maxPerPartition = max(maxPerPartition, active[m.Partition])
		maxTotal = max(maxTotal, total)
		if seq, _ := strconv.Atoi(string(m.Data)); seq != next[m.PartitionKey] {
			t.Errorf("key %s: got %d, want %d", m.PartitionKey, seq, next[m.PartitionKey])
		} else {
			next[m.PartitionKey]++
		}
		mu.Unlock()
		time.Sleep(50 * time.Microsecond) // the work: lets partitions overlap
		mu.Lock()
		active[m.Partition]--
		total--
		mu.Unlock()
		return nil
	})
	waitAcked(t, rec, time.Minute)
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v", err)
	}
	if maxPerPartition != 1 || maxTotal < 2 {
		t.Fatalf("at most %d handlers of one partition and %d in all ran at once; want 1 and more than 1", maxPerPartition, maxTotal)
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: 10 * time.Second, RequireAllAcked: true})
}

func TestRunPerKeyConcurrencyKeepsEachKeyInOrder(t *testing.T) {
	onBackends(t, testRunPerKeyConcurrencyKeepsEachKeyInOrder)
}

func testRunPerKeyConcurrencyKeepsEachKeyInOrder(t *testing.T, bk backend) {
	st, c, rec := recordedConsumer(t, bk.client(t), 1, 100, 10*time.Second)
	sendKeyed(t, st, rec, 16, 2000)
	var mu sync.Mutex
	activeKey := map[string]int{}
	maxKey, maxTotal, total := 0, 0, 0
	next := map[string]int{}
	stop := runUntil(t, c, func(ctx context.Context, m *contracts.CMessage) error {
		mu.Lock()
		activeKey[m.PartitionKey]++
		total++
		maxKey = max(maxKey, activeKey[m.PartitionKey])
		maxTotal = max(maxTotal, total)
		if seq, _ := strconv.Atoi(string(m.Data)); seq != next[m.PartitionKey] {
			t.Errorf("key %s: got %d, want %d", m.PartitionKey, seq, next[m.PartitionKey])
		} else {
			next[m.PartitionKey]++
		}
		mu.Unlock()
		time.Sleep(100 * time.Microsecond) // the work
		mu.Lock()
		activeKey[m.PartitionKey]--
		total--
		mu.Unlock()
		return nil
	}, segmenter.WithKeyConcurrency(32))
	waitAcked(t, rec, time.Minute)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if maxKey != 1 || maxTotal < 2 {
		t.Fatalf("one partition ran at most %d handlers of one key and %d in all at once; want 1 and more than 1", maxKey, maxTotal)
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: 10 * time.Second, RequireAllAcked: true})
}

// WithKeyConcurrency(n) bounds the messages of a partition in flight, so
// the handlers running at once, to n, from the first fetch on: a batch
// larger than n with more than n keys in it does not start a handler each.
func TestRunPerKeyConcurrencyBoundsHandlersInFlight(t *testing.T) {
	st, c, rec := recordedConsumer(t, nil, 1, 500, 10*time.Second)
	sendKeyed(t, st, rec, 200, 600)
	const bound = 8
	var mu sync.Mutex
	running, peak := 0, 0
	stop := runUntil(t, c, func(ctx context.Context, m *contracts.CMessage) error {
		mu.Lock()
		running++
		peak = max(peak, running)
		mu.Unlock()
		time.Sleep(time.Millisecond) // the work
		mu.Lock()
		running--
		mu.Unlock()
		return nil
	}, segmenter.WithKeyConcurrency(bound))
	waitAcked(t, rec, time.Minute)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if peak > bound || peak < 2 {
		t.Fatalf("at most %d handlers ran at once; want between 2 and the bound %d", peak, bound)
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: 10 * time.Second, RequireAllAcked: true})
}

type deliverHook func(segmenter.DeliverEvent)

func (h deliverHook) OnDeliver(e segmenter.DeliverEvent) { h(e) }

// An abort alone ends Run: its handlers are cancelled and it fetches
// nothing more (it does not go on handing every message back at once).
func TestRunAbortAloneStopsRun(t *testing.T) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), nil)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	var mu sync.Mutex
	var delivered []*contracts.CMessage
	collect := deliverHook(func(e segmenter.DeliverEvent) { mu.Lock(); delivered = append(delivered, e.Messages...); mu.Unlock() })
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, 10*time.Second, segmenter.WithHooks(recordingHook{rec}, collect))
	if err != nil {
		t.Fatal(err)
	}
	sendKeyed(t, st, rec, 1, 20)
	abort, abortRun := context.WithCancel(ctx)
	started := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, func(hctx context.Context, m *contracts.CMessage) error {
			select {
			case started <- struct{}{}:
			default:
			}
			<-hctx.Done() // runs until cancelled
			return hctx.Err()
		}, segmenter.WithAbort(abort))
	}()
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("no handler started")
	}
	abortRun()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after an abort: %v", err)
		}
	case <-time.After(30 * time.Second): // catches a hang only
		t.Fatal("Run did not return after its abort context ended")
	}
	if s := c.Stats(); s.Redelivered != 0 || s.Acked != 0 || s.Delivered > 10 {
		t.Fatalf("after the abort: %+v, want one batch delivered, nothing redelivered or acked", s)
	}
	// Run handed the batch back (a Nack); run again: every message is
	// handled, the handed-back batch first.
	mu.Lock()
	rec.Nacked(c.ID(), delivered, time.Now(), time.Now())
	mu.Unlock()
	stop := runUntil(t, c, func(context.Context, *contracts.CMessage) error { return nil })
	waitAcked(t, rec, time.Minute)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: 10 * time.Second, RequireAllAcked: true})

	// An abort over before Run starts: Run fetches nothing and returns.
	send(t, st, nil, msg("key-0", "late"))
	before := c.Stats().Delivered
	if err := c.Run(ctx, func(context.Context, *contracts.CMessage) error { return nil }, segmenter.WithAbort(abort)); err != nil {
		t.Fatalf("Run with an abort already over: %v", err)
	}
	if d := c.Stats().Delivered; d != before {
		t.Fatalf("Run with an abort already over delivered %d messages", d-before)
	}
}

func TestRunRetriesThenSucceedsInOrder(t *testing.T) {
	onBackends(t, testRunRetriesThenSucceedsInOrder)
}

func testRunRetriesThenSucceedsInOrder(t *testing.T, bk backend) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), bk.client(t))
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	var events []segmenter.HandlerEvent
	var mu sync.Mutex
	hook := handlerHook(func(e segmenter.HandlerEvent) { mu.Lock(); events = append(events, e); mu.Unlock() })
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, 10*time.Second, segmenter.WithHooks(recordingHook{rec}, hook))
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, rec, msg("k", "0"), msg("k", "1"), msg("k", "2"))
	var seen []string
	fails := 2
	stop := runUntil(t, c, func(ctx context.Context, m *contracts.CMessage) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, string(m.Data))
		if string(m.Data) == "1" && fails > 0 {
			fails--
			return errors.New("transient")
		}
		return nil
	}, segmenter.WithRetryBackoff(time.Millisecond, 5*time.Millisecond))
	waitAcked(t, rec, 10*time.Second)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(seen) != "[0 1 1 1 2]" {
		t.Fatalf("handled %v, want [0 1 1 1 2]", seen)
	}
	var attempts []int
	for _, e := range events {
		if string(e.Message.Data) == "1" && !e.End.IsZero() {
			attempts = append(attempts, e.Attempt)
		}
	}
	if fmt.Sprint(attempts) != "[1 2 3]" {
		t.Fatalf("handler hook saw attempts %v of message 1", attempts)
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: 10 * time.Second, RequireAllAcked: true})
}

type handlerHook func(segmenter.HandlerEvent)

func (h handlerHook) OnHandlerStart(segmenter.HandlerEvent) {}
func (h handlerHook) OnHandlerEnd(e segmenter.HandlerEvent) { h(e) }

func TestRunFailingKeyHoldsBackOnlyItself(t *testing.T) {
	onBackends(t, testRunFailingKeyHoldsBackOnlyItself)
}

func testRunFailingKeyHoldsBackOnlyItself(t *testing.T, bk backend) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), bk.client(t))
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 50, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var batch []*contracts.PMessage
	for i := 0; i < 200; i++ {
		batch = append(batch, msg([]string{"bad", "good1", "good2", "good3"}[i%4], strconv.Itoa(i/4)))
	}
	send(t, st, nil, batch...)
	var good, badTries atomic.Int64
	stop := runUntil(t, c, func(ctx context.Context, m *contracts.CMessage) error {
		if m.PartitionKey == "bad" {
			badTries.Add(1)
			if string(m.Data) != "0" {
				t.Errorf("a later message of the failing key ran: %s", m.Data)
			}
			return errors.New("permanent")
		}
		good.Add(1)
		return nil
	}, segmenter.WithKeyConcurrency(100), segmenter.WithRetryBackoff(time.Millisecond, 10*time.Millisecond))
	// Every other key flows although "bad" keeps failing for longer than
	// maxProcessingTime: its messages are kept from coming due meanwhile.
	redistest.Eventually(t, 30*time.Second, func() bool { return good.Load() == 150 }, "the other keys were held back")
	redistest.Eventually(t, 10*time.Second, func() bool { return badTries.Load() > 5 }, "the failing key was not retried")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if s := c.Stats(); s.Acked != 150 || s.Redelivered != 0 {
		t.Fatalf("stats %+v: want the 150 good ones acked and nothing redelivered", s)
	}
}

func TestRunCancelsHandlerContextOnRevocation(t *testing.T) {
	onBackends(t, testRunCancelsHandlerContextOnRevocation)
}

func testRunCancelsHandlerContextOnRevocation(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	seg := newSegmenter(t, ns, bk.client(t))
	st, err := seg.RegisterStream(ctx, "s", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg(keyFor(t, st, 0, 0), "x"), msg(keyFor(t, st, 1, 0), "y"))
	started := make(chan uint32, 2)
	cancelled := make(chan uint32, 2)
	abort, abortA := context.WithCancel(ctx)
	stopA := runUntil(t, a, func(ctx context.Context, m *contracts.CMessage) error {
		started <- m.Partition
		<-ctx.Done() // a handler that runs until told to stop
		cancelled <- m.Partition
		return ctx.Err()
	}, segmenter.WithAbort(abort))
	<-started
	<-started
	// B joins: one partition moves; A's handler of it is cancelled, B gets
	// the message again.
	b, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *contracts.CMessage, 2)
	stopB := runUntil(t, b, func(ctx context.Context, m *contracts.CMessage) error { got <- m; return nil })
	select {
	case p := <-cancelled:
		m := <-got
		if m.Partition != p || m.DeliveryCount != 2 {
			t.Fatalf("A's handler of partition %d was cancelled; B got partition %d delivery %d", p, m.Partition, m.DeliveryCount)
		}
	case <-time.After(20 * time.Second): // catches a hang only
		t.Fatal("A's handler was never cancelled")
	}
	if err := stopB(); err != nil {
		t.Fatal(err)
	}
	// A's other handler is still running: the abort cancels it at once.
	abortA()
	if err := stopA(); err != nil {
		t.Fatal(err)
	}
	if p := <-cancelled; a.Stats().Acked != 0 {
		t.Fatalf("aborted handler of partition %d was acked: %+v", p, a.Stats())
	}
}

func TestRunReturnsAfterInFlightHandlersAndLeaksNothing(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Server(t)
	seg, err := segmenter.NewSegmenter(&segmenter.Config{Namespace: redistest.Namespace(t), RedisURL: srv.URL, SessionTimeout: testSession, BlockInterval: testBlock})
	if err != nil {
		t.Fatal(err)
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	defer seg.Close(ctx)
	st, err := seg.RegisterStream(ctx, "s", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("a", "1"), msg("a", "2"))
	rctx, cancel := context.WithCancel(ctx)
	inHandler := make(chan struct{})
	release := make(chan struct{})
	var handled atomic.Int64
	done := make(chan error, 1)
	go func() {
		done <- c.Run(rctx, func(ctx context.Context, m *contracts.CMessage) error {
			if handled.Add(1) == 1 {
				close(inHandler)
				<-release // in flight while Run is asked to stop
			}
			return nil
		})
	}()
	<-inHandler
	cancel()
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v", err)
	}
	if handled.Load() != 1 || c.Stats().Acked != 1 {
		t.Fatalf("handled %d, stats %+v: want the in-flight one finished and acked, the next one handed back", handled.Load(), c.Stats())
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := seg.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRunValidatesItsArguments(t *testing.T) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), nil)
	if _, err := seg.RegisterStream(ctx, "s", 1, 0); err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	nop := func(context.Context, *contracts.CMessage) error { return nil }
	for name, call := range map[string]func() error{
		"nil handler":      func() error { return c.Run(ctx, nil) },
		"bad backoff":      func() error { return c.Run(ctx, nop, segmenter.WithRetryBackoff(time.Second, time.Millisecond)) },
		"negative per-key": func() error { return c.Run(ctx, nop, segmenter.WithKeyConcurrency(-1)) },
	} {
		if err := call(); !errors.Is(err, segmenter.ErrInvalidArgument) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestRunRetryExhaustionDeadLettersThenRedrive(t *testing.T) {
	onBackends(t, testRunRetryExhaustionDeadLettersThenRedrive)
}

func testRunRetryExhaustionDeadLettersThenRedrive(t *testing.T, bk backend) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), bk.client(t))
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, 10*time.Second, segmenter.WithMaxDeliveries(3), segmenter.WithHooks(recordingHook{rec}))
	if err != nil {
		t.Fatal(err)
	}
	ids := send(t, st, rec, msg("k", "ok1"), msg("k", "bad"), msg("k", "ok2"))
	var mu sync.Mutex
	var seen []string
	healed := atomic.Bool{}
	handler := func(ctx context.Context, m *contracts.CMessage) error {
		mu.Lock()
		seen = append(seen, string(m.Data))
		mu.Unlock()
		if string(m.Data) == "bad" && !healed.Load() {
			return errors.New("cannot process")
		}
		return nil
	}
	stop := runUntil(t, c, handler, segmenter.WithRetryBackoff(time.Millisecond, time.Millisecond))
	redistest.Eventually(t, 10*time.Second, func() bool { return c.Stats().Acked == 2 && c.Stats().DeadLettered == 1 }, "stats %+v", c.Stats())
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if fmt.Sprint(seen) != "[ok1 bad bad bad ok2]" {
		t.Fatalf("handled %v, want 3 attempts of bad, in order", seen)
	}
	mu.Unlock()
	checkLog(t, rec, invariant.Options{MaxProcessingTime: 10 * time.Second, RequireAllAcked: true,
		AllowLoss: func(id string) bool { return id == ids[1] }})

	dead, err := seg.DeadLetters(ctx, "s", "g", 10)
	if err != nil || len(dead) != 1 {
		t.Fatalf("dead letters %v %v", dead, err)
	}
	if d := dead[0]; d.OriginalID != ids[1] || string(d.Message.Data) != "bad" || d.Deliveries != 3 || !strings.Contains(d.Reason, "cannot process") {
		t.Fatalf("dead letter %+v (reason %q)", d, d.Reason)
	}
	// Fixed: re-drive it, and the group handles it again.
	healed.Store(true)
	if n, err := seg.RedriveDeadLetters(ctx, "s", "g", dead...); err != nil || n != 1 {
		t.Fatalf("re-drive: %d %v", n, err)
	}
	stop = runUntil(t, c, handler)
	redistest.Eventually(t, 10*time.Second, func() bool { return c.Stats().Acked == 3 }, "the re-driven message was not handled")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if dead, _ := seg.DeadLetters(ctx, "s", "g", 10); len(dead) != 0 {
		t.Fatalf("dead letters left after re-drive: %v", dead)
	}
}

func TestReadDeadLettersMessagesDeliveredTooOften(t *testing.T) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), nil)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, 20*time.Millisecond, segmenter.WithMaxDeliveries(2))
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "never acked"))
	// The application never acks: the message comes twice, then goes to the
	// dead letters instead of a third time.
	deliveries := 0
	redistest.Eventually(t, 10*time.Second, func() bool {
		msgs, err := c.Read(ctx, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			deliveries++
			if m.DeliveryCount > 2 {
				t.Fatalf("delivered with count %d beyond MaxDeliveries 2", m.DeliveryCount)
			}
		}
		return c.Stats().DeadLettered == 1
	}, "never dead-lettered")
	if deliveries != 2 {
		t.Fatalf("delivered %d times, want 2", deliveries)
	}
	dead, err := seg.DeadLetters(ctx, "s", "g", 10)
	if err != nil || len(dead) != 1 || !strings.Contains(dead[0].Reason, "MaxDeliveries") {
		t.Fatalf("dead letters %+v %v", dead, err)
	}
}

func TestPoisonPolicies(t *testing.T) { onBackends(t, testPoisonPolicies) }

func testPoisonPolicies(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := bk.client(t)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "1"))
	// Every kind of poison entry: another tool's, an unknown format
	// version, no partition key, no data.
	for _, v := range [][]any{
		{"foreign", "x"},
		{"v", "2", "k", "k", "d", "x"},
		{"v", "1", "d", "x"},
		{"v", "1", "k", "k"},
	} {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keyspace.New(ns).Partition("s", 0), Values: v}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	send(t, st, nil, msg("k", "2"))

	// Dead-lettered: never delivered, the partition goes on.
	dl, err := seg.RegisterConsumer(ctx, "s", "dl", 10, time.Minute, segmenter.WithPoisonPolicy(segmenter.PoisonDeadLetter))
	if err != nil {
		t.Fatal(err)
	}
	got := drain(t, dl, nil, 2, 10*time.Second)
	if string(got[0].Data) != "1" || string(got[1].Data) != "2" {
		t.Fatalf("delivered %v", got)
	}
	dead, err := seg.DeadLetters(ctx, "s", "dl", 10)
	if err != nil || len(dead) != 4 {
		t.Fatalf("dead letters %+v %v, want the 4 poison entries", dead, err)
	}
	for _, d := range dead {
		if !strings.HasPrefix(d.Reason, "poison") || d.Message.PoisonReason == "" {
			t.Fatalf("dead letter %+v", d)
		}
	}

	// A poison handler under Run.
	ph, err := seg.RegisterConsumer(ctx, "s", "ph", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var regular, poison []string
	stop := runUntil(t, ph, func(ctx context.Context, m *contracts.CMessage) error {
		mu.Lock()
		regular = append(regular, string(m.Data))
		mu.Unlock()
		return nil
	}, segmenter.WithPoisonHandler(func(ctx context.Context, m *contracts.CMessage) error {
		mu.Lock()
		if m.PoisonReason != "" {
			poison = append(poison, m.Metadata["foreign"]+m.Metadata["v"])
		}
		mu.Unlock()
		return nil
	}))
	redistest.Eventually(t, 10*time.Second, func() bool { return ph.Stats().Acked == 6 }, "not all handled")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(regular, poison) != "[1 2] [x 2 1 1]" {
		t.Fatalf("handler got %v, poison handler %v", regular, poison)
	}
}

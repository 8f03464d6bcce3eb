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

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
	"github.com/segmenter/segmenter/internal/redistest"
)

// hang is how long a test waits for something that must happen before it
// declares a hang. It bounds waits only; it asserts no speed.
const hang = 20 * time.Second

// blockingHandler returns a handler that reports each message it starts on
// started, runs until its ctx ends, then reports ctx's error on cancelled
// and returns it.
func blockingHandler(started chan<- *contracts.CMessage, cancelled chan<- error) segmenter.Handler {
	return func(ctx context.Context, m *contracts.CMessage) error {
		started <- m
		<-ctx.Done()
		cancelled <- ctx.Err()
		return ctx.Err()
	}
}

func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(hang): // catches a hang only
		t.Fatalf("%s never happened", what)
		var zero T
		return zero
	}
}

func TestRunCancelsHandlerContextWhenFenced(t *testing.T) {
	onBackends(t, testRunCancelsHandlerContextWhenFenced)
}

func testRunCancelsHandlerContextWhenFenced(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdbA, cutA := bk.gatedClient(t)
	segA := newSegmenter(t, ns, rdbA)
	st, err := segA.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := segA.RegisterConsumer(ctx, "s", "g", 10, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "x"))
	started := make(chan *contracts.CMessage, 1)
	cancelled := make(chan error, 1)
	stopA := runUntil(t, a, blockingHandler(started, cancelled))
	m := receive(t, started, "A's handler start")

	// A is cut off (paused, partitioned) while its handler runs; B takes
	// the partition once A's lease expires.
	cutA.closed.Store(true)
	segB := newSegmenter(t, ns, bk.client(t))
	b, err := segB.RegisterConsumer(ctx, "s", "g", 10, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, hang, func() bool { return len(b.Assignment()) == 1 }, "B never took the partition")
	select {
	case err := <-cancelled:
		// Stricter than required: A stopped its handler by its own clock.
		t.Logf("A's handler was cancelled while A was cut off: %v", err)
		cancelled <- err
	default:
		t.Logf("A's handler still runs while A is cut off and B owns its partition")
	}
	// A is back: it learns that it was fenced, and its handler is told.
	cutA.closed.Store(false)
	if err := receive(t, cancelled, "the cancellation of the fenced partition's handler"); !errors.Is(err, context.Canceled) {
		t.Fatalf("handler ctx ended with %v, want context.Canceled", err)
	}
	got := drain(t, b, nil, 1, hang)
	if got[0].Id != m.Id || got[0].DeliveryCount < 2 || got[0].Epoch <= m.Epoch {
		t.Fatalf("B got %s count %d epoch %d; A had %s epoch %d", got[0].Id, got[0].DeliveryCount, got[0].Epoch, m.Id, m.Epoch)
	}
	if err := stopA(); err != nil {
		t.Fatalf("A's Run returned %v", err)
	}
	if s := a.Stats(); s.Acked != 0 || s.Fenced != 1 {
		t.Fatalf("A's stats %+v: want nothing acked and one partition fenced", s)
	}
}

func TestRunCancelsHandlerContextOnShutdown(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	seg := newSegmenter(t, ns, nil)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	// maxProcessingTime is far beyond the test: only the cancellation
	// lets Shutdown hand the partition over.
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "x"))
	started := make(chan *contracts.CMessage, 1)
	cancelled := make(chan error, 1)
	runDone := make(chan error, 1)
	go func() { runDone <- c.Run(ctx, blockingHandler(started, cancelled)) }()
	m := receive(t, started, "the handler's start")

	sctx, cancel := context.WithTimeout(ctx, hang)
	defer cancel()
	if err := c.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if sctx.Err() != nil { // catches a hang only
		t.Fatal("Shutdown returned only when its ctx ended: the handler was not cancelled by the shutdown")
	}
	// The handler returned (it was cancelled) before Shutdown could
	// release the partition.
	select {
	case err := <-cancelled:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler ctx ended with %v, want context.Canceled", err)
		}
	default:
		t.Fatal("Shutdown returned while the handler's ctx was not cancelled")
	}
	if err := receive(t, runDone, "Run's return"); !errors.Is(err, segmenter.ErrClosed) {
		t.Fatalf("Run returned %v after Shutdown, want ErrClosed", err)
	}
	if s := c.Stats(); s.Acked != 0 {
		t.Fatalf("the cancelled message was acked: %+v", s)
	}
	// The next consumer gets the message again, at once.
	next, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	got := drain(t, next, nil, 1, hang)
	if got[0].Id != m.Id || got[0].DeliveryCount != 2 {
		t.Fatalf("next consumer got %s count %d, want %s again", got[0].Id, got[0].DeliveryCount, m.Id)
	}
}

func TestRunCancelsLongHandlerAfterMaxProcessingTime(t *testing.T) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), nil)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	const maxProc = 300 * time.Millisecond
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, maxProc)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "long"), msg("k", "next"))
	started := make(chan *contracts.CMessage, 2)
	type end struct {
		err error
		at  time.Time
	}
	ended := make(chan end, 2)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	runDone := make(chan error, 1)
	go func() {
		runDone <- c.Run(rctx, func(ctx context.Context, m *contracts.CMessage) error {
			started <- m
			<-ctx.Done() // respects its ctx, but would run for ever
			ended <- end{ctx.Err(), time.Now()}
			return ctx.Err()
		})
	}()
	m := receive(t, started, "the handler's start")
	stopped := time.Now()
	stop()
	e := receive(t, ended, "the long handler's cancellation")
	if !errors.Is(e.err, context.Canceled) {
		t.Fatalf("handler ctx ended with %v, want context.Canceled", e.err)
	}
	if waited := e.at.Sub(stopped); waited < maxProc {
		t.Fatalf("the handler was cancelled %v after Run's ctx ended: it had maxProcessingTime (%v) to finish", waited, maxProc)
	}
	if err := receive(t, runDone, "Run's return"); err != nil {
		t.Fatalf("Run returned %v", err)
	}
	if len(started) != 0 {
		t.Fatalf("Run started another message after its ctx ended: %v", <-started)
	}
	if s := c.Stats(); s.Acked != 0 {
		t.Fatalf("the cancelled message was acked: %+v", s)
	}
	// The message was handed back: Read delivers it again, first.
	got := drain(t, c, nil, 2, hang)
	if got[0].Id != m.Id || got[0].DeliveryCount != 2 || string(got[1].Data) != "next" {
		t.Fatalf("after Run: %s (count %d) then %q; want %s again, then next", got[0].Id, got[0].DeliveryCount, got[1].Data, m.Id)
	}
}

func TestRunTreatsAHandlerPanicAsAnError(t *testing.T) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), nil)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	var mu sync.Mutex
	var ends []segmenter.HandlerEvent
	hook := handlerHook(func(e segmenter.HandlerEvent) { mu.Lock(); ends = append(ends, e); mu.Unlock() })
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, 10*time.Second, segmenter.WithHooks(recordingHook{rec}, hook))
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, rec, msg("k", "0"), msg("k", "1"), msg("k", "2"))
	var seen []string
	panics := 2
	stop := runUntil(t, c, func(ctx context.Context, m *contracts.CMessage) error {
		mu.Lock()
		seen = append(seen, string(m.Data))
		boom := string(m.Data) == "1" && panics > 0
		if boom {
			panics--
		}
		mu.Unlock()
		if boom {
			panic("handler bug")
		}
		return nil
	}, segmenter.WithRetryBackoff(time.Millisecond, 5*time.Millisecond))
	waitAcked(t, rec, hang)
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(seen) != "[0 1 1 1 2]" {
		t.Fatalf("handled %v, want [0 1 1 1 2]: the panicking message retried in place", seen)
	}
	var outcomes []string
	for _, e := range ends {
		if string(e.Message.Data) == "1" {
			outcomes = append(outcomes, fmt.Sprintf("%d:%v", e.Attempt, e.Err != nil && strings.Contains(e.Err.Error(), "handler bug")))
		}
	}
	if fmt.Sprint(outcomes) != "[1:true 2:true 3:false]" {
		t.Fatalf("handler hook saw attempts of message 1 as %v, want two panics as errors, then a success", outcomes)
	}
	if s := c.Stats(); s.Acked != 3 || s.Redelivered != 0 {
		t.Fatalf("stats %+v: want all three acked, no redelivery", s)
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: 10 * time.Second, RequireAllAcked: true})
}

func TestRunRetryBackoffWaits(t *testing.T) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), nil)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "x"))
	const initial = 100 * time.Millisecond
	var mu sync.Mutex
	var starts, fails []time.Time
	stop := runUntil(t, c, func(ctx context.Context, m *contracts.CMessage) error {
		mu.Lock()
		defer mu.Unlock()
		starts = append(starts, time.Now())
		if len(starts) <= 3 {
			fails = append(fails, time.Now())
			return errors.New("transient")
		}
		return nil
	}, segmenter.WithRetryBackoff(initial, time.Second))
	redistest.Eventually(t, hang, func() bool { return c.Stats().Acked == 1 }, "the message was never handled")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(starts) != 4 {
		t.Fatalf("%d attempts, want 4", len(starts))
	}
	for i, want := range []time.Duration{initial, 2 * initial, 4 * initial} {
		if waited := starts[i+1].Sub(fails[i]); waited < want {
			t.Errorf("attempt %d started %v after attempt %d failed, want at least %v", i+2, waited, i+1, want)
		}
	}
}

// TestRunInFlightMessagesDoNotComeDue runs for many maxProcessingTimes while
// a failing message holds back others and a slow handler runs past
// maxProcessingTime: none of them is delivered again meanwhile.
func TestRunInFlightMessagesDoNotComeDue(t *testing.T) {
	onBackends(t, testRunInFlightMessagesDoNotComeDue)
}

func testRunInFlightMessagesDoNotComeDue(t *testing.T, bk backend) {
	const maxProc = 300 * time.Millisecond
	const failFor = 6 * maxProc // the failing key fails this long, then succeeds
	const slowFor = 3 * maxProc // the slow message's handler runs this long
	for _, mode := range []struct {
		name string
		opts []segmenter.RunOption
	}{
		{"sequential", nil},
		{"per-key", []segmenter.RunOption{segmenter.WithKeyConcurrency(100)}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			ctx := context.Background()
			seg := newSegmenter(t, redistest.Namespace(t), bk.client(t))
			st, err := seg.RegisterStream(ctx, "s", 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			rec := invariant.NewRecorder()
			c, err := seg.RegisterConsumer(ctx, "s", "g", 50, maxProc, segmenter.WithHooks(recordingHook{rec}))
			if err != nil {
				t.Fatal(err)
			}
			keys := []string{"bad", "slow", "good1", "good2"}
			var batch []*contracts.PMessage
			for i := 0; i < 80; i++ {
				batch = append(batch, msg(keys[i%4], strconv.Itoa(i/4)))
			}
			send(t, st, rec, batch...)
			var mu sync.Mutex
			handled := map[string]int{} // successful handlings by message ID
			var firstFail time.Time
			var goodDoneWhileBadFailed atomic.Int64
			var badFailing atomic.Bool
			badFailing.Store(true)
			opts := append([]segmenter.RunOption{segmenter.WithRetryBackoff(5*time.Millisecond, 20*time.Millisecond)}, mode.opts...)
			stop := runUntil(t, c, func(ctx context.Context, m *contracts.CMessage) error {
				switch {
				case m.PartitionKey == "bad" && string(m.Data) == "0":
					mu.Lock()
					if firstFail.IsZero() {
						firstFail = time.Now()
					}
					failing := time.Since(firstFail) < failFor
					mu.Unlock()
					if failing {
						return errors.New("not yet")
					}
					badFailing.Store(false)
				case m.PartitionKey == "slow" && string(m.Data) == "0":
					time.Sleep(slowFor) // the work: longer than maxProcessingTime
				case strings.HasPrefix(m.PartitionKey, "good") && badFailing.Load():
					goodDoneWhileBadFailed.Add(1)
				}
				mu.Lock()
				handled[m.Id]++
				mu.Unlock()
				return nil
			}, opts...)
			waitAcked(t, rec, time.Minute)
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			for id, n := range handled {
				if n != 1 {
					t.Errorf("message %s handled successfully %d times", id, n)
				}
			}
			if s := c.Stats(); s.Redelivered != 0 || s.Delivered != 80 || s.Acked != 80 {
				t.Fatalf("stats %+v: want 80 delivered once and acked, nothing redelivered", s)
			}
			if mode.name == "per-key" && goodDoneWhileBadFailed.Load() != 40 {
				t.Fatalf("%d of the 40 messages of other keys were handled while the failing key held back only itself", goodDoneWhileBadFailed.Load())
			}
			// Not the Due invariant: Run keeps in-flight messages from
			// coming due, which a log of deliveries and acks cannot show.
			checkLog(t, rec, invariant.Options{RequireAllAcked: true})
		})
	}
}

// A Run that ended leaves nothing read behind it: messages sent after it
// returned stay unread in Redis (not pending under the consumer, as they
// would be if a read the entry watcher carries for the consumer behind its
// blocking XREAD were left out), and the next Read gets them as first
// deliveries.
func TestRunThatEndedLeavesNothingRead(t *testing.T) {
	onBackends(t, testRunThatEndedLeavesNothingRead)
}

func testRunThatEndedLeavesNothingRead(t *testing.T, bk backend) {
	ctx := context.Background()
	rdb := bk.client(t)
	ns := redistest.Namespace(t)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int64
	stop := runUntil(t, c, func(context.Context, *contracts.CMessage) error { handled.Add(1); return nil })
	send(t, st, nil, msg("a", "0"), msg("b", "0"))
	redistest.Eventually(t, 10*time.Second, func() bool { return handled.Load() == 2 && c.Stats().Acked == 2 }, "not handled")
	// Idle now: waiting in Redis for the next entries.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("a", "1"), msg("b", "1"), msg("c", "1"))
	if redistest.Within(500*time.Millisecond, func() bool { return pendingTotal(t, rdb, ns, "s", "g", 2) > 0 }) {
		t.Fatalf("messages sent after Run returned were read: %d pending", pendingTotal(t, rdb, ns, "s", "g", 2))
	}
	msgs := drainNoAck(t, c, nil, 3)
	for _, m := range msgs {
		if m.DeliveryCount != 1 {
			t.Errorf("%s: delivery %d, want a first delivery", m.Id, m.DeliveryCount)
		}
	}
	if err := c.Ack(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
}

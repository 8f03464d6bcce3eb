package segmenter_test

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/redistest"
)

// eventLog is a hook of every kind, logging the events it sees.
type eventLog struct {
	mu     sync.Mutex
	kinds  []string
	dead   []segmenter.DeadLetterEvent
	parts  []segmenter.PartitionEvent
	acks   []segmenter.AckEvent
	starts int
	// redelivered counts OnRedeliver calls.
	redelivered int
}

func (l *eventLog) add(k string)                     { l.mu.Lock(); l.kinds = append(l.kinds, k); l.mu.Unlock() }
func (l *eventLog) OnDeliver(segmenter.DeliverEvent) { l.add("deliver") }
func (l *eventLog) OnAck(e segmenter.AckEvent) {
	l.mu.Lock()
	l.acks = append(l.acks, e)
	l.mu.Unlock()
	l.add("ack")
}
func (l *eventLog) OnRedeliver(segmenter.RedeliverEvent) {
	l.mu.Lock()
	l.redelivered++
	l.mu.Unlock()
}
func (l *eventLog) OnHandlerStart(segmenter.HandlerEvent) {
	l.mu.Lock()
	l.starts++
	l.mu.Unlock()
}
func (l *eventLog) OnHandlerEnd(segmenter.HandlerEvent) { l.add("handler") }
func (l *eventLog) OnDeadLetter(e segmenter.DeadLetterEvent) {
	l.mu.Lock()
	l.dead = append(l.dead, e)
	l.mu.Unlock()
	l.add("dead")
}
func (l *eventLog) OnPartition(e segmenter.PartitionEvent) {
	l.mu.Lock()
	l.parts = append(l.parts, e)
	l.mu.Unlock()
	l.add("partition")
}

func TestHooksSeeEveryKindOfEvent(t *testing.T) { onBackends(t, testHooksSeeEveryKindOfEvent) }

func testHooksSeeEveryKindOfEvent(t *testing.T, bk backend) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), bk.client(t))
	st, err := seg.RegisterStream(ctx, "s", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	log := &eventLog{}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithHooks(log))
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("a", "ok"), msg("a", "doomed"))
	msgs := drainNoAck(t, c, nil, 2)
	if err := c.Ack(ctx, msgs[0]); err != nil {
		t.Fatal(err)
	}
	if err := c.DeadLetter(ctx, "test", msgs[1]); err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("b", "run"))
	stop := runUntil(t, c, func(context.Context, *contracts.CMessage) error { return nil })
	redistest.Eventually(t, 10*time.Second, func() bool { return c.Stats().Acked == 2 }, "not handled")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	if len(log.dead) != 1 || log.dead[0].Reason != "test" || log.dead[0].DeadLetterID == "" || log.dead[0].Err != nil {
		t.Fatalf("dead-letter events %+v", log.dead)
	}
	assigned, revoked := 0, 0
	for _, e := range log.parts {
		switch e.Kind {
		case segmenter.PartitionAssigned:
			assigned++
		case segmenter.PartitionRevoked:
			revoked++
		}
	}
	if assigned != 2 || revoked != 2 {
		t.Fatalf("partition events %+v: want 2 assigned, 2 revoked at Shutdown", log.parts)
	}
	if log.starts != 1 || len(log.acks) != 2 || log.acks[0].Outcome != segmenter.Acked || log.acks[0].End.Before(log.acks[0].Start) {
		t.Fatalf("handler starts %d, acks %+v", log.starts, log.acks)
	}
	kinds := map[string]int{}
	for _, k := range log.kinds {
		kinds[k]++
	}
	if kinds["deliver"] != 2 || kinds["handler"] != 1 {
		t.Fatalf("events %v", kinds)
	}
}

func TestNotifyShutdownFirstSignalStopsSecondAborts(t *testing.T) {
	graceful, abort, stop := segmenter.NotifyShutdown(context.Background(), syscall.SIGUSR1)
	defer stop()
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-graceful.Done():
	case <-time.After(10 * time.Second): // catches a hang only
		t.Fatal("the first signal did not end the graceful context")
	}
	if abort.Err() != nil {
		t.Fatal("the first signal aborted")
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-abort.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the second signal did not abort")
	}
	if !errors.Is(abort.Err(), context.Canceled) {
		t.Fatal(abort.Err())
	}
}

// The outcomes hooks report beyond the happy path: an ack that failed (its
// outcome unknown), a fenced ack with the partition lost, and, under Run, a
// redelivery and a dead letter for too many deliveries.
func TestHooksSeeFailedAndFencedAcksLostPartitionsAndDeadLetters(t *testing.T) {
	onBackends(t, testHooksSeeFailedAndFencedAcksLostPartitionsAndDeadLetters)
}

func testHooksSeeFailedAndFencedAcksLostPartitionsAndDeadLetters(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdbA, cutA := bk.gatedClient(t)
	segA := newSegmenter(t, ns, rdbA)
	st, err := segA.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	logA := &eventLog{}
	a, err := segA.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithHooks(logA), segmenter.WithConsumerName("A"))
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "0"))
	msgs := drainNoAck(t, a, nil, 1)
	cutA.closed.Store(true)
	if err := a.Ack(ctx, msgs...); err == nil || errors.Is(err, segmenter.ErrFenced) {
		t.Fatalf("ack through a cut link: %v, want an error of unknown outcome", err)
	}
	// B takes the partition once A's lease expires; A's ack is then fenced.
	logB := &eventLog{}
	b, err := newSegmenter(t, ns, bk.client(t)).RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithHooks(logB),
		segmenter.WithMaxDeliveries(2), segmenter.WithConsumerName("B"))
	if err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return len(b.Assignment()) == 1 }, "B never got the partition")
	cutA.closed.Store(false)
	if err := a.Ack(ctx, msgs...); !errors.Is(err, segmenter.ErrFenced) {
		t.Fatalf("ack after the lease moved: %v, want ErrFenced", err)
	}
	// Under Run, B gets the message again and fails it until it is dead-
	// lettered (delivered more than twice).
	stop := runUntil(t, b, func(context.Context, *contracts.CMessage) error { return errors.New("test: fails") },
		segmenter.WithRetryBackoff(time.Millisecond, time.Millisecond))
	redistest.Eventually(t, 10*time.Second, func() bool { return b.Stats().DeadLettered == 1 }, "never dead-lettered")
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	logA.mu.Lock()
	outcomes := []segmenter.AckOutcome{}
	for _, e := range logA.acks {
		outcomes = append(outcomes, e.Outcome)
	}
	lost := 0
	for _, e := range logA.parts {
		if e.Kind == segmenter.PartitionLost && errors.Is(e.Err, segmenter.ErrFenced) {
			lost++
		}
	}
	logA.mu.Unlock()
	if len(outcomes) != 2 || outcomes[0] != segmenter.AckFailed || outcomes[1] != segmenter.AckFenced {
		t.Fatalf("A's ack outcomes %v, want [failed fenced]", outcomes)
	}
	if lost != 1 {
		t.Fatalf("A's partition events %+v: want it lost once, fenced", logA.parts)
	}
	logB.mu.Lock()
	defer logB.mu.Unlock()
	if len(logB.dead) != 1 || logB.dead[0].Message.Id != msgs[0].Id || logB.dead[0].Err != nil {
		t.Fatalf("B's dead-letter events %+v", logB.dead)
	}
	if logB.redelivered == 0 {
		t.Fatal("B's redelivery of A's message was not reported")
	}
}

// rebalanceLog is a RebalanceHook logging the events it sees.
type rebalanceLog struct {
	mu     sync.Mutex
	events []segmenter.RebalanceEvent
}

func (l *rebalanceLog) OnRebalance(e segmenter.RebalanceEvent) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

func (l *rebalanceLog) last() (segmenter.RebalanceEvent, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.events) == 0 {
		return segmenter.RebalanceEvent{}, false
	}
	return l.events[len(l.events)-1], true
}

// A RebalanceHook hears of every new generation a consumer learns, with the
// consumer's share: when it joins alone, when a second consumer joins, and
// when that one leaves.
func TestRebalanceHookSeesEachNewAssignment(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	seg := newSegmenter(t, ns, nil)
	if _, err := seg.RegisterStream(ctx, "s", 4, 0); err != nil {
		t.Fatal(err)
	}
	logA := &rebalanceLog{}
	if _, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithHooks(logA), segmenter.WithConsumerName("A")); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, func() bool {
		e, _ := logA.last()
		return len(e.Partitions) == 4
	}, "A alone never learned an assignment of the 4 partitions")
	first, _ := logA.last()
	if first.Stream != "s" || first.Group != "g" || first.Consumer != "A" || first.Generation < 1 {
		t.Fatalf("first event %+v", first)
	}

	b, err := newSegmenter(t, ns, nil).RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithConsumerName("B"))
	if err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, func() bool {
		e, _ := logA.last()
		return len(e.Partitions) == 2 && e.Generation > first.Generation
	}, "A never learned the assignment that gives B half the partitions")
	shared, _ := logA.last()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, func() bool {
		e, _ := logA.last()
		return len(e.Partitions) == 4 && e.Generation > shared.Generation
	}, "A never learned the assignment after B left")
	logA.mu.Lock()
	defer logA.mu.Unlock()
	for i := 1; i < len(logA.events); i++ {
		if logA.events[i].Generation <= logA.events[i-1].Generation {
			t.Errorf("generations not increasing: %+v", logA.events)
		}
	}
}

// nackLog is a NackHook.
type nackLog struct {
	mu     sync.Mutex
	events []segmenter.NackEvent
}

func (l *nackLog) OnNack(e segmenter.NackEvent) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

// A NackHook sees the messages Nack hands back, not those of a partition
// the consumer no longer holds.
func TestNackHookSeesMessagesHandedBack(t *testing.T) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), nil)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	log := &nackLog{}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithHooks(log), segmenter.WithConsumerName("A"))
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("a", "1"), msg("a", "2"))
	msgs := drainNoAck(t, c, nil, 2)
	before := time.Now()
	if err := c.Nack(msgs[1]); err != nil {
		t.Fatal(err)
	}
	stale := &contracts.CMessage{Id: msgs[0].Id, Partition: msgs[0].Partition, Stream: msgs[0].Stream, Group: msgs[0].Group,
		Epoch: msgs[0].Epoch - 1} // a delivery under an earlier lease: not ours to hand back
	if err := c.Nack(stale); err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(ctx, msgs[0]); err != nil {
		t.Fatal(err)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	if len(log.events) != 1 {
		t.Fatalf("nack events %+v, want one", log.events)
	}
	e := log.events[0]
	if e.Consumer != "A" || e.Stream != "s" || e.Group != "g" || len(e.Messages) != 1 || e.Messages[0].Id != msgs[1].Id || e.At.Before(before) {
		t.Fatalf("nack event %+v, want %s handed back by A", e, msgs[1].Id)
	}
}

package segmenter_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/keyspace"
	"github.com/segmenter/segmenter/internal/redistest"
)

// counter is a go-redis hook counting the commands a client sends, by name,
// and that can make the replies of pipelines get lost (the commands run, the
// client gets an error), as the ack's while loseAcks is set.
type counter struct {
	xread    atomic.Int64
	evalsha  atomic.Int64
	loseAcks atomic.Bool
}

func (h *counter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *counter) count(cmd redis.Cmder) {
	switch strings.ToLower(cmd.Name()) {
	case "xread":
		h.xread.Add(1)
	case "evalsha", "eval":
		h.evalsha.Add(1)
	}
}

func (h *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.count(cmd)
		return next(ctx, cmd)
	}
}

func (h *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			h.count(c)
		}
		err := next(ctx, cmds)
		if h.loseAcks.Load() { // the scripts ran; their replies are lost
			for _, c := range cmds {
				if c.Err() == nil { // it ran (a NOSCRIPT refusal did not)
					c.SetErr(errors.New("test: reply lost"))
				}
			}
		}
		return err
	}
}

func TestRunDoesNotSpinWhileAPartitionIsBusy(t *testing.T) {
	onBackends(t, testRunDoesNotSpinWhileAPartitionIsBusy)
}

func testRunDoesNotSpinWhileAPartitionIsBusy(t *testing.T, bk backend) {
	ctx := context.Background()
	rdb := bk.client(t)
	h := &counter{}
	rdb.AddHook(h)
	seg := newSegmenter(t, redistest.Namespace(t), rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 5, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		send(t, st, nil, msg("k", "x"))
	}
	start := h.xread.Load()
	stop := runUntil(t, c, func(ctx context.Context, m *contracts.CMessage) error {
		time.Sleep(10 * time.Millisecond) // the work: the partition stays busy with a backlog
		return nil
	})
	redistest.Eventually(t, 20*time.Second, func() bool { return c.Stats().Acked == 20 }, "not handled")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// ~200ms of work: a spinning waiter sent thousands of XREADs.
	if n := h.xread.Load() - start; n > 50 {
		t.Fatalf("%d XREAD calls while one busy partition worked through its backlog", n)
	}
}

func TestAckWithLostReplyLeavesNoFetchLoop(t *testing.T) {
	onBackends(t, testAckWithLostReplyLeavesNoFetchLoop)
}

func testAckWithLostReplyLeavesNoFetchLoop(t *testing.T, bk backend) {
	ctx := context.Background()
	rdb := bk.client(t)
	h := &counter{}
	rdb.AddHook(h)
	seg := newSegmenter(t, redistest.Namespace(t), rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	const maxProc = 50 * time.Millisecond
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, maxProc)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "x"))
	msgs := drainNoAck(t, c, nil, 1)
	h.loseAcks.Store(true)
	if err := c.Ack(ctx, msgs...); err == nil || errors.Is(err, segmenter.ErrFenced) {
		t.Fatalf("ack with a lost reply: %v, want an unknown outcome", err)
	}
	h.loseAcks.Store(false)
	if p, err := rdb.XPending(ctx, keyspace.New(seg.Namespace()).Partition("s", 0), "g").Result(); err != nil || p.Count != 0 {
		t.Fatalf("the ack did not run: %v %v", p, err)
	}
	// The ack did run. Once past maxProcessingTime, the consumer must not
	// keep fetching every few milliseconds for a redelivery that never comes.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if msgs, err := c.Read(ctx, 100*time.Millisecond); err != nil || len(msgs) != 0 {
			t.Fatalf("read %v %v", msgs, err)
		}
	}
	before := h.evalsha.Load()
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		if _, err := c.Read(ctx, 100*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	// Heartbeats and a few fetches: about 10 per second; the loop made ~180.
	if n := h.evalsha.Load() - before; n > 60 {
		t.Fatalf("%d scripts in one idle second after a lost ack reply", n)
	}
}

func TestOnErrorMayCallTheConsumer(t *testing.T) {
	ctx := context.Background()
	rdb, cut := gatedClient(t)
	var c atomic.Pointer[segmenter.Consumer]
	called := make(chan struct{}, 1)
	seg := newSegmenterConfig(t, segmenter.Config{Namespace: redistest.Namespace(t), Client: rdb,
		OnError: func(error) {
			if cc := c.Load(); cc != nil {
				cc.Assignment() // deadlocked when OnError ran under the consumer's lock
				select {
				case called <- struct{}{}:
				default:
				}
			}
		},
	})
	if _, err := seg.RegisterStream(ctx, "s", 2, 0); err != nil {
		t.Fatal(err)
	}
	cons, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	c.Store(cons)
	cut.closed.Store(true) // the next heartbeat fails: OnError
	select {
	case <-called:
	case <-time.After(10 * time.Second): // catches a hang only
		t.Fatal("OnError never returned")
	}
	cut.closed.Store(false)
	done := make(chan struct{})
	go func() { cons.Assignment(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the consumer is deadlocked")
	}
}

package segmenter_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
	"github.com/segmenter/segmenter/internal/redistest"
)

// pipelineLog is a go-redis hook that sorts the pipelines a client sends
// by what they carry, and can delay the reply of the next native read.
type pipelineLog struct {
	carried  atomic.Int64 // XACK and XREADGROUP in one pipeline (Run's acks in a fetch)
	watched  atomic.Int64 // XREAD and XREADGROUP in one pipeline (the watcher's read)
	fetches  atomic.Int64 // XREADGROUP without XREAD
	delay    atomic.Int64 // the next native read's reply comes this much later (ns)
	mu       sync.Mutex
	sawDelay bool
}

func (h *pipelineLog) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *pipelineLog) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *pipelineLog) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		has := func(name string) bool {
			return slices.ContainsFunc(cmds, func(c redis.Cmder) bool { return strings.EqualFold(c.Name(), name) })
		}
		read, xread, xack := has("xreadgroup"), has("xread"), has("xack")
		switch {
		case read && xack:
			h.carried.Add(1)
		case read && xread:
			h.watched.Add(1)
		case read:
			h.fetches.Add(1)
		}
		err := next(ctx, cmds)
		if d := time.Duration(h.delay.Load()); d > 0 && read && strings.EqualFold(cmds[0].Name(), "watch") && h.delay.CompareAndSwap(int64(d), 0) {
			time.Sleep(d) // the reply is on a slow link
			h.mu.Lock()
			h.sawDelay = true
			h.mu.Unlock()
		}
		return err
	}
}

// Run acknowledges what its handlers finished in its next fetch's
// transaction (one round trip and one fence check where an ack and a fetch
// took two), every invariant holding.
func TestRunCarriesAcksInItsNextFetch(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Client(t)
	h := &pipelineLog{}
	rdb.AddHook(h)
	seg := newSegmenterConfig(t, segmenter.Config{Namespace: redistest.Namespace(t), Client: rdb})
	st, err := seg.RegisterStream(ctx, "s", 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	c, err := seg.RegisterConsumer(ctx, "s", "g", 20, 10*time.Second, segmenter.WithHooks(recordingHook{rec}))
	if err != nil {
		t.Fatal(err)
	}
	sendKeyed(t, st, rec, 16, 2000)
	stop := runUntil(t, c, func(ctx context.Context, m *contracts.CMessage) error { return nil })
	waitAcked(t, rec, 30*time.Second)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d fetches carried acks, %d fetches alone", h.carried.Load(), h.fetches.Load())
	if h.carried.Load() == 0 {
		t.Fatal("no fetch carried the acks of the messages handled before it")
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: 10 * time.Second, RequireAllAcked: true})
}

// A Read waiting on an empty partition gets the entry that wakes it read
// in the watcher's round trip (the fenced read rides behind the XREAD
// BLOCK), with no fetch of its own after the wake-up.
func TestReadGetsTheWakingEntryReadBehindTheWatchersXREAD(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Client(t)
	h := &pipelineLog{}
	rdb.AddHook(h)
	seg := newSegmenterConfig(t, segmenter.Config{Namespace: redistest.Namespace(t), Client: rdb, BlockInterval: 10 * time.Second})
	st, err := seg.RegisterStream(ctx, "s", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := c.Read(ctx, 0); len(m) != 0 || err != nil {
		t.Fatalf("first read: %v %v", m, err)
	}
	done := make(chan []*contracts.CMessage, 1)
	go func() {
		m, _ := c.Read(ctx, 10*time.Second)
		done <- m
	}()
	redistest.Eventually(t, 10*time.Second, func() bool { return h.watched.Load() > 0 && blockedInXREAD(ctx, rdb) },
		"the watcher never blocked with the consumer's read behind its XREAD")
	fetches := h.fetches.Load()
	send(t, st, nil, msg(keyFor(t, st, 1, 0), "m"))
	var m []*contracts.CMessage
	select {
	case m = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Read did not return")
	}
	if len(m) != 1 || string(m[0].Data) != "m" {
		t.Fatalf("Read returned %v, want the message sent", m)
	}
	if n := h.fetches.Load() - fetches; n != 0 {
		t.Fatalf("%d fetches after the wake-up, want none: the watcher's round trip read the entry", n)
	}
	if err := c.Ack(ctx, m...); err != nil {
		t.Fatal(err)
	}
}

// blockedInXREAD reports whether a client of the server is blocked in an
// XREAD.
func blockedInXREAD(ctx context.Context, rdb *redis.Client) bool {
	list, err := rdb.ClientList(ctx).Result()
	return err == nil && slices.ContainsFunc(strings.Split(list, "\n"), func(l string) bool {
		return strings.Contains(l, " cmd=xread ") && strings.Contains(l, " flags=b")
	})
}

// A read that skipped the redelivery check in Redis (nothing in flight
// could be due by the consumer's clock) but whose reply came after a
// message in flight came due delivers nothing: the due message comes
// again first, before the newer one that read took.
func TestReadReplyAfterAMessageCameDueDeliversTheDueOneFirst(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Client(t)
	h := &pipelineLog{}
	rdb.AddHook(h)
	// A long session: the lease stays valid by the local clock while the
	// reply is late, so only the redelivery bound can hold the read back.
	seg := newSegmenterConfig(t, segmenter.Config{Namespace: redistest.Namespace(t), Client: rdb, SessionTimeout: 20 * time.Second})
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	const maxProc = 300 * time.Millisecond
	rec := invariant.NewRecorder()
	c, err := seg.RegisterConsumer(ctx, "s", "g", 1, maxProc)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, rec, msg("k", "0"), msg("k", "1"))
	first, err := read(t, c, rec, time.Second)
	if err != nil || len(first) != 1 || string(first[0].Data) != "0" {
		t.Fatalf("first read: %v %v", first, err)
	}
	// Not acked: it comes due during the next read, whose reply is late.
	h.delay.Store(int64(2 * maxProc))
	next, err := read(t, c, rec, 5*time.Second)
	if err != nil || len(next) != 1 {
		t.Fatalf("next read: %v %v", next, err)
	}
	h.mu.Lock()
	delayed := h.sawDelay
	h.mu.Unlock()
	if !delayed {
		t.Fatal("no native read was delayed: the test did not test")
	}
	if string(next[0].Data) != "0" || next[0].DeliveryCount != 2 {
		t.Fatalf("next read returned message %q (delivery %d), want the due message 0 again (delivery 2) before 1", next[0].Data, next[0].DeliveryCount)
	}
	if err := ack(t, c, rec, next...); err != nil {
		t.Fatal(err)
	}
	last, err := read(t, c, rec, 5*time.Second)
	if err != nil || len(last) != 1 || string(last[0].Data) != "1" {
		t.Fatalf("last read: %v %v, want message 1", last, err)
	}
	if err := ack(t, c, rec, last...); err != nil {
		t.Fatal(err)
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: maxProc, RequireAllAcked: true})
}

// A Read that waited leaves the watcher's read of its quiet partitions
// out when it returns empty; Reads that do not wait (polling) still get
// what that read took.
func TestPollingReadsGetWhatAnEarlierWaitsReadTook(t *testing.T) {
	ctx := context.Background()
	seg := newSegmenterConfig(t, segmenter.Config{Namespace: redistest.Namespace(t), BlockInterval: 10 * time.Second})
	st, err := seg.RegisterStream(ctx, "s", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, wait := range []time.Duration{0, 50 * time.Millisecond} { // the second waits, then returns empty
		if m, err := c.Read(ctx, wait); len(m) != 0 || err != nil {
			t.Fatalf("read on empty partitions: %v %v", m, err)
		}
	}
	send(t, st, nil, msg(keyFor(t, st, 0, 0), "a"), msg(keyFor(t, st, 1, 0), "b"))
	var got []*contracts.CMessage
	redistest.Eventually(t, 10*time.Second, func() bool {
		m, err := c.Read(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m...)
		return len(got) == 2
	}, "polling Reads never got the messages")
	if err := c.Ack(ctx, got...); err != nil {
		t.Fatal(err)
	}
}

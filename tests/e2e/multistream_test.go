//go:build unix

package e2e

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
)

// streamLog records what a multi-stream consumer does, through its hooks,
// in one recorder per stream, each added to the env's log of that stream
// and group (partition numbers are per stream).
type streamLog struct {
	e     *env
	group string
	mu    sync.Mutex
	recs  map[string]*invariant.Recorder
}

func newStreamLog(e *env, group string) *streamLog {
	return &streamLog{e: e, group: group, recs: make(map[string]*invariant.Recorder)}
}

func (l *streamLog) of(stream string) *invariant.Recorder {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.recs[stream]
	if r == nil {
		r = invariant.NewRecorder()
		l.recs[stream] = r
		l.e.addRecorder(stream, l.group, r)
	}
	return r
}

func (l *streamLog) OnDeliver(ev segmenter.DeliverEvent) {
	l.of(ev.Stream).Delivered(ev.Consumer, ev.Messages, ev.Start, ev.End)
}

func (l *streamLog) OnHandlerStart(segmenter.HandlerEvent) {}

func (l *streamLog) OnHandlerEnd(ev segmenter.HandlerEvent) {
	l.of(ev.Stream).Handled(ev.Consumer, ev.Message, ev.Attempt, ev.Err, ev.Start, ev.End)
}

func (l *streamLog) OnAck(ev segmenter.AckEvent) {
	msgs := make([]*contracts.CMessage, len(ev.IDs))
	for i, id := range ev.IDs {
		msgs[i] = &contracts.CMessage{Id: id, Partition: uint32(ev.Partition), Epoch: ev.Epoch, Stream: ev.Stream, Group: ev.Group}
	}
	l.of(ev.Stream).Acked(ev.Consumer, msgs, outcome(ev.Err), ev.Start, ev.End)
}

// patternRun is a pattern consumer running Run in the background.
type patternRun struct {
	m      *segmenter.MultiConsumer
	cancel context.CancelFunc
	done   chan error
}

func startPatternRun(t *testing.T, seg *segmenter.Segmenter, log *streamLog, pattern, name string) *patternRun {
	t.Helper()
	m, err := seg.RegisterPatternConsumer(context.Background(), pattern, log.group, 50, 10*time.Second,
		segmenter.WithConsumerName(name), segmenter.WithHooks(log))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &patternRun{m: m, cancel: cancel, done: make(chan error, 1)}
	go func() {
		r.done <- m.Run(ctx, func(ctx context.Context, msg *contracts.CMessage) error {
			if msg.Stream == "" {
				return errors.New("message without its stream")
			}
			return nil
		})
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop ends Run and shuts the consumer down, handing its partitions over.
func (r *patternRun) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Run returned %v", err)
		}
		r.done <- nil // a later stop returns at once
	case <-time.After(hang):
		t.Fatal("Run did not return")
	}
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	defer cancel()
	if err := r.m.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// A service subscribes to every stream matching "tasks.*", as with Redis
// Pub/Sub's PSUBSCRIBE, but nothing is lost while it is down: the messages
// sent to tasks.event.created and tasks.event.updated while no consumer ran
// all arrive, each key in order, once it is back; and a stream
// tasks.event.deleted registered by another process after it started is
// consumed too (within a heartbeat interval). A stream the pattern does not
// match is left alone. The checker proves every invariant, stream by stream.
func TestPatternConsumerGetsWhatWasSentWhileDownAndLaterStreams(t *testing.T) {
	e := newEnv(t)
	const group = "tasks-worker"
	created := e.stream("tasks.event.created", 4)
	updated := e.stream("tasks.event.updated", 3)
	other := e.stream("billing.event.created", 2)
	log := newStreamLog(e, group)
	cfg := segmenter.Config{SessionTimeout: testSession, HeartbeatInterval: testHeartbeat, BlockInterval: testBlock}

	// Once up, so that the group exists; then down.
	first := startPatternRun(t, e.newSegmenter(cfg), log, "tasks.*", "first")
	if got := first.m.Streams(); !slices.Equal(got, []string{created.Name(), updated.Name()}) {
		t.Fatalf("first consumer's streams %v", got)
	}
	first.stop(t)

	// While down.
	p1 := e.startProducer(created, 40, 1500, 50, 2*time.Millisecond)
	p2 := e.startProducer(updated, 30, 1200, 50, 2*time.Millisecond)
	p3 := e.startProducer(other, 10, 100, 50, 2*time.Millisecond)
	p1.finish(t)
	p2.finish(t)
	p3.finish(t)

	// Back up; then another process registers a new matching stream and
	// sends to it, and to a stream consumed already.
	second := startPatternRun(t, e.newSegmenter(cfg), log, "tasks.*", "second")
	registered := time.Now()
	deleted := e.stream("tasks.event.deleted", 5)
	poll(t, hang, 5*time.Millisecond, func() bool { return len(second.m.Streams()) == 3 }, "tasks.event.deleted was not picked up")
	t.Logf("tasks.event.deleted registered by another process picked up after %v (heartbeat interval %v)",
		time.Since(registered).Round(time.Millisecond), testHeartbeat)
	p4 := e.startProducer(deleted, 25, 1000, 50, 2*time.Millisecond)
	p5 := e.startProducer(created, 40, 400, 50, 2*time.Millisecond)
	p4.finish(t)
	p5.finish(t)

	e.waitAllAcked(created, group)
	e.waitAllAcked(updated, group)
	e.waitAllAcked(deleted, group)
	second.stop(t)

	e.check(created.Name(), group, 10*time.Second, p1, p5)
	e.check(updated.Name(), group, 10*time.Second, p2)
	evs := e.check(deleted.Name(), group, 10*time.Second, p4)
	if s := invariant.Summarize(evs); s.HandlerCalls < s.Sent {
		t.Errorf("tasks.event.deleted: %d handler calls for %d messages", s.HandlerCalls, s.Sent)
	}
	if got := e.events(other.Name(), group); len(got) != 0 {
		t.Fatalf("%d events of %s, which tasks.* does not match", len(got), other.Name())
	}
	if groups, err := e.rdb.SMembers(context.Background(), e.keys.Groups(other.Name())).Result(); err != nil || len(groups) != 0 {
		t.Fatalf("groups of %s: %v %v; want none", other.Name(), groups, err)
	}
}

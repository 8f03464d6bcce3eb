package segmenter_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
	"github.com/segmenter/segmenter/internal/redistest"
)

// worker reads and acks in a goroutine until stopped.
type worker struct {
	c      *segmenter.Consumer
	cancel context.CancelFunc
	done   chan struct{}
	fenced int
}

func startWorker(t *testing.T, seg *segmenter.Segmenter, stream, group string, rec *invariant.Recorder) *worker {
	t.Helper()
	c, err := seg.RegisterConsumer(context.Background(), stream, group, 50, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &worker{c: c, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			msgs, err := read(t, c, rec, 20*time.Millisecond)
			switch {
			case errors.Is(err, segmenter.ErrFenced):
				w.fenced++
				continue
			case errors.Is(err, segmenter.ErrClosed):
				return
			case err != nil:
				t.Errorf("read: %v", err)
				return
			}
			if err := ack(t, c, rec, msgs...); err != nil && !errors.Is(err, segmenter.ErrFenced) && !errors.Is(err, segmenter.ErrClosed) {
				t.Errorf("ack: %v", err)
				return
			}
		}
	}()
	t.Cleanup(w.stop)
	return w
}

func (w *worker) stop() {
	w.cancel()
	<-w.done
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = w.c.Shutdown(ctx)
}

func balanced(ws []*worker, partitions int) bool {
	seen := map[int]bool{}
	for _, w := range ws {
		n := len(w.c.Assignment())
		if n != partitions/len(ws) && n != (partitions+len(ws)-1)/len(ws) {
			return false
		}
		for _, o := range w.c.Assignment() {
			if seen[o.Partition] {
				return false
			}
			seen[o.Partition] = true
		}
	}
	return len(seen) == partitions
}

func TestJoinAndLeaveKeepBalanceAndOrder(t *testing.T) {
	onBackends(t, testJoinAndLeaveKeepBalanceAndOrder)
}

func testJoinAndLeaveKeepBalanceAndOrder(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	seg := newSegmenter(t, ns, bk.client(t))
	st, err := seg.RegisterStream(ctx, "s", 16, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	var sent sync.WaitGroup
	produce := func(from, n int) {
		sent.Go(func() {
			for i := from; i < from+n; i += 100 {
				var batch []*contracts.PMessage
				for j := i; j < i+100; j++ {
					batch = append(batch, msg("k"+strconv.Itoa(j%64), strconv.Itoa(j)))
				}
				send(t, st, rec, batch...)
			}
		})
	}
	ws := []*worker{startWorker(t, seg, "s", "g", rec)}
	produce(0, 2000)
	for len(ws) < 4 {
		ws = append(ws, startWorker(t, seg, "s", "g", rec))
		produce(len(ws)*10000, 2000)
		redistest.Eventually(t, 10*time.Second, func() bool { return balanced(ws, 16) },
			"%d consumers never shared 16 partitions evenly", len(ws))
	}
	// Two leave: the others take their partitions.
	ws[0].stop()
	ws[2].stop()
	ws = []*worker{ws[1], ws[3]}
	produce(90000, 2000)
	redistest.Eventually(t, 10*time.Second, func() bool { return balanced(ws, 16) }, "the remaining consumers never took over")
	sent.Wait()
	allAcked := func() bool {
		s := invariant.Summarize(rec.Events())
		return s.Acked >= s.Sent
	}
	if !redistest.Within(30*time.Second, allAcked) {
		for _, w := range ws {
			t.Logf("consumer %s holds %v, stats %+v", w.c.ID(), w.c.Assignment(), w.c.Stats())
		}
		t.Fatalf("not every message was acked: %v\n%v", invariant.Summarize(rec.Events()), rec.Check(invariant.Options{MaxProcessingTime: 10 * time.Second, RequireAllAcked: true}))
	}
	for _, w := range ws {
		w.stop()
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: 10 * time.Second, RequireAllAcked: true})
}

package segmenter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/rebalance"
)

// Handler processes one message. A nil return acknowledges it; an error
// has it retried, after a backoff, before anything newer of its partition
// (or, with WithKeyConcurrency, of its key). A panic counts as an error. ctx
// is cancelled when the message's partition is revoked or lost, when the
// consumer shuts down, and when Run's abort context ends.
type Handler func(ctx context.Context, msg *contracts.CMessage) error

// RunOption configures Run.
type RunOption interface{ applyRun(*runOptions) }

type runOptions struct {
	backoffMin, backoffMax time.Duration
	keyConcurrency         int // in-flight messages per partition; 0: one at a time
	poison                 Handler
	abort                  context.Context
}

type runOptionFunc func(*runOptions)

func (f runOptionFunc) applyRun(o *runOptions) { f(o) }

// WithRetryBackoff sets the wait before retrying a failed message: initial
// after the first failure, doubling up to max. Default 100ms up to 10s.
func WithRetryBackoff(initial, max time.Duration) RunOption {
	return runOptionFunc(func(o *runOptions) { o.backoffMin, o.backoffMax = initial, max })
}

// WithKeyConcurrency processes the messages of different keys of one
// partition concurrently, those of one key strictly in order, with at most
// maxInFlight messages of a partition in flight (handled or queued behind
// their key). A failing message holds back only its own key: the key's later
// messages wait while the other keys of the partition keep flowing, until
// the messages held back fill maxInFlight. Off (0) by default: a
// partition's messages are handled one after the other.
func WithKeyConcurrency(maxInFlight int) RunOption {
	return runOptionFunc(func(o *runOptions) { o.keyConcurrency = maxInFlight })
}

// WithPoisonHandler sets the handler of poison entries (see Poison), which
// otherwise go to Run's handler. A poison entry whose handler returns an
// error is moved to the dead letters at once (retrying cannot make it
// decodable); nil acknowledges it. With WithPoisonPolicy(PoisonDeadLetter)
// poison entries never reach Run.
func WithPoisonHandler(h Handler) RunOption {
	return runOptionFunc(func(o *runOptions) { o.poison = h })
}

// WithAbort gives Run a second context: when it ends, Run stops as when its
// own context ends, and the handlers' contexts are cancelled at once instead
// of after maxProcessingTime. NotifyShutdown makes the pair from a first and
// a second signal.
func WithAbort(abort context.Context) RunOption {
	return runOptionFunc(func(o *runOptions) { o.abort = abort })
}

// Run hands every message of the partitions the consumer owns to h, until
// ctx ends. Partitions are processed concurrently, each partition's
// messages in stream order, one after the other (or per key, with
// WithKeyConcurrency). A message is acknowledged when h returns nil and
// retried with backoff while h fails; with WithMaxDeliveries it goes to the
// dead letters once delivered more than that many times.
//
// When ctx ends, Run stops fetching, lets the handlers in flight finish (for
// at most maxProcessingTime, or until WithAbort's context ends; their
// context is then cancelled), hands the messages it had not started back
// (Nack) and returns nil. The end of WithAbort's context ends Run the same
// way, with the handlers' contexts cancelled at once. Call Shutdown
// afterwards to hand the partitions over. Run returns ErrClosed when the
// consumer is shut down. Run and Read must not be used at the same time.
//
// A handler should return soon after its context is cancelled: Run waits
// for it before returning, and a partition whose handler has not returned
// is not handled again in this process, even under a new lease.
func (c *Consumer) Run(ctx context.Context, h Handler, opts ...RunOption) error {
	o, err := runArgs(h, opts)
	if err != nil {
		return err
	}
	if !c.readMu.TryLock() {
		return invalid("Run or Read already running on this consumer")
	}
	defer c.readMu.Unlock()
	stop, cancelStop := context.WithCancel(ctx)
	defer cancelStop()
	r := &runner{
		c:       c,
		h:       h,
		o:       o,
		stop:    stop,
		idle:    make(chan struct{}, 1),
		parts:   make(map[int]*runPart),
		ackKick: make(chan struct{}, 1),
		ackStop: make(chan struct{}),
		keyWork: make(chan keyTask),
		keyQuit: make(chan struct{}),
	}
	r.abort, r.cancelAbort = context.WithCancel(context.WithoutCancel(ctx))
	if o.abort != nil {
		// An abort stops Run too, before it cancels the handlers: fetching
		// on with every handler cancelled would only hand each message
		// back at once.
		aborted := func() { cancelStop(); r.cancelAbort() }
		if o.abort.Err() != nil {
			aborted() // already over: fetch nothing
		}
		defer context.AfterFunc(o.abort, aborted)()
	}
	defer r.cancelAbort()
	return r.run()
}

// runArgs applies opts and checks Run's arguments, reporting every problem
// at once.
func runArgs(h Handler, opts []RunOption) (runOptions, error) {
	o := runOptions{backoffMin: 100 * time.Millisecond, backoffMax: 10 * time.Second}
	for _, opt := range opts {
		if opt != nil {
			opt.applyRun(&o)
		}
	}
	var errs []error
	if h == nil {
		errs = append(errs, invalid("nil Handler"))
	}
	if o.backoffMin <= 0 || o.backoffMax < o.backoffMin {
		errs = append(errs, invalid("retry backoff %v to %v: want 0 < initial <= max", o.backoffMin, o.backoffMax))
	}
	if o.keyConcurrency < 0 {
		errs = append(errs, invalid("key concurrency %d is negative", o.keyConcurrency))
	}
	return o, errors.Join(errs...)
}

// runner is one Run: a dispatcher (the calling goroutine) and partition
// workers.
type runner struct {
	c    *Consumer
	h    Handler
	o    runOptions
	stop context.Context // ends with Run's ctx or WithAbort's: fetch nothing, start nothing

	abort       context.Context // cancels every handler
	cancelAbort context.CancelFunc

	idle chan struct{} // a partition has room again, or acks were handed over
	wg   sync.WaitGroup

	// The workers' acks go to the dispatcher (ackBuf), whose next fetch
	// carries them when it can; else it hands them to the acker
	// (ackSend), which sends the acks of every partition gathered
	// meanwhile in one round trip.
	ackMu   sync.Mutex
	ackBuf  []*contracts.CMessage
	ackSend []*contracts.CMessage
	ackKick chan struct{}
	ackStop chan struct{}
	ackerWG sync.WaitGroup

	mu    sync.Mutex
	parts map[int]*runPart
	// retryAt: per-key mode refused a partition with some room only to
	// fetch in batches; the dispatcher looks again then.
	retryAt time.Time

	// Per-key mode: a key with messages and no worker is handed to an idle
	// worker, or to a new one; a worker idle for keyIdle ends.
	keyWork chan keyTask
	keyQuit chan struct{} // closed by finish: idle workers end
}

// keyTask is a key of a partition whose queued messages need a worker.
type keyTask struct {
	rp  *runPart
	key string
}

// keyIdle is how long a per-key worker waits for another key before it ends.
const keyIdle = time.Second

// keyFetchGap is how long, in per-key mode, a partition with in-flight
// messages and less than half its room free waits before it is fetched
// anyway: fetches come in batches, yet a key held back by failures never
// stops the other keys of its partition.
const keyFetchGap = 5 * time.Millisecond

// runPart is Run's state of one partition under one epoch.
type runPart struct {
	p        int
	epoch    int64
	ctx      context.Context // the partition's: cancelled on revoke, loss, shutdown
	hctx     context.Context // its handlers': ctx's values of Run's, cancelled with ctx or the abort
	hcancel  context.CancelFunc
	op       *ownedPartition // the consumer's state of it (nil: no longer held)
	inflight int             // handed to workers, not finished
	fetched  time.Time       // per-key mode: when it was last let fetch
	keys     map[string][]*contracts.CMessage
	acks     []*contracts.CMessage // per-key mode: handled, to ack
	acksFrom time.Time             // when the oldest of acks was handled
}

func (r *runner) run() error {
	r.ackerWG.Go(r.acker)
	defer r.finish()
	c := r.c
	defer c.releaseRead() // before finish: nothing read is left behind Run
	lastTouch := time.Now()
	touchEvery := c.maxProc / 3
	for r.stop.Err() == nil {
		if time.Since(lastTouch) >= touchEvery {
			c.touchInflight(r.stop, touchEvery)
			lastTouch = time.Now()
		}
		acks := r.handedAcks()
		msgs, err := c.fetchRound(r.stop, c.batch, r.limit, &acks)
		r.sendAcks(acks) // those the fetch did not carry
		var pe *PartitionError
		switch {
		case errors.Is(err, ErrClosed):
			return ErrClosed
		case err != nil && r.stop.Err() != nil:
			return nil
		case errors.As(err, &pe) && (errors.Is(err, ErrFenced) || errors.Is(err, ErrGroupNotFound)):
			continue // the partition is dropped and its handlers cancelled
		case err != nil:
			c.seg.reportError(err)
			r.sleep(c.seg.cfg.BlockInterval)
			continue
		}
		if len(msgs) > 0 {
			r.dispatch(msgs)
			continue
		}
		d := min(c.seg.cfg.BlockInterval, touchEvery)
		r.mu.Lock()
		if !r.retryAt.IsZero() {
			d = min(d, max(time.Until(r.retryAt), time.Millisecond))
			r.retryAt = time.Time{}
		}
		r.mu.Unlock()
		if msgs, _ := c.wait(r.stop, d, c.batch, r.idle, r.limit); len(msgs) > 0 {
			r.dispatch(msgs)
		}
	}
	return nil
}

// limit is how many messages partition p may be fetched now.
func (r *runner) limit(p int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	rp := r.parts[p]
	if rp == nil || rp.inflight == 0 {
		if r.o.keyConcurrency > 0 {
			return min(r.c.batch, r.o.keyConcurrency) // the bound holds from the first fetch
		}
		return r.c.batch
	}
	// Handlers of an earlier epoch of the partition still running (they
	// were cancelled, but have not returned): nothing of the new epoch
	// starts alongside them.
	if r.o.keyConcurrency == 0 || rp.ctx.Err() != nil {
		return 0
	}
	room := r.o.keyConcurrency - rp.inflight
	if room <= 0 {
		return 0
	}
	if room < r.o.keyConcurrency/2 {
		// Fetch in batches, not a message per finished one.
		if next := rp.fetched.Add(keyFetchGap); time.Now().Before(next) {
			if r.retryAt.IsZero() || next.Before(r.retryAt) {
				r.retryAt = next
			}
			return 0
		}
	}
	rp.fetched = time.Now()
	return room
}

// sleep waits d (after an error); the acks handed over meanwhile go to
// the acker.
func (r *runner) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		r.sendAcks(r.handedAcks())
		select {
		case <-r.stop.Done():
			return
		case <-t.C:
			return
		case <-r.idle:
		}
	}
}

// dispatch hands fetched messages to the partition workers.
func (r *runner) dispatch(msgs []*contracts.CMessage) {
	byPart := make(map[int][]*contracts.CMessage)
	var order []int
	for _, m := range msgs {
		p := int(m.Partition)
		if _, ok := byPart[p]; !ok {
			order = append(order, p)
		}
		byPart[p] = append(byPart[p], m)
	}
	// The partitions' contexts first: c.mu is never taken under r.mu.
	type held struct {
		ctx context.Context
		op  *ownedPartition
	}
	pctx := make(map[int]held, len(order))
	for _, p := range order {
		ctx, op := r.c.partitionContext(p, byPart[p][0].Epoch)
		pctx[p] = held{ctx, op}
	}
	if len(msgs) < r.c.batch {
		// Caught up (the batch did not fill): the workers started here
		// run first. A goroutine started here waits, else, for this one
		// to block, which takes its next fetch round and wait: on a busy
		// machine the hand-off that costs a message's latency most. This
		// one goes on on another core meanwhile. Not when a backlog is
		// drained: then the next fetch matters more.
		defer runtime.Gosched()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range order {
		ms := byPart[p]
		rp := r.parts[p]
		if rp == nil || rp.epoch != ms[0].Epoch {
			if rp != nil {
				rp.hcancel() // an earlier epoch's: cancelled with its partition already
			}
			rp = &runPart{p: p, epoch: ms[0].Epoch, ctx: pctx[p].ctx, op: pctx[p].op, keys: make(map[string][]*contracts.CMessage)}
			rp.hctx, rp.hcancel = r.handlerContext(rp)
			r.parts[p] = rp
		}
		rp.inflight += len(ms)
		if r.o.keyConcurrency == 0 {
			r.wg.Add(1)
			go r.runSequential(rp, ms)
			continue
		}
		for _, m := range ms {
			q, running := rp.keys[m.PartitionKey]
			rp.keys[m.PartitionKey] = append(q, m)
			if !running {
				task := keyTask{rp, m.PartitionKey}
				select {
				case r.keyWork <- task: // an idle worker takes it
				default:
					r.wg.Add(1)
					go r.keyWorker(task)
				}
			}
		}
	}
}

// keyWorker handles the messages of one key after the other, as they are
// handed to it, until it has been idle for keyIdle or Run finishes.
func (r *runner) keyWorker(task keyTask) {
	defer r.wg.Done()
	// One timer, re-armed only when it fires: setting it again after
	// every key cost more than many a handler.
	t := time.NewTimer(keyIdle)
	defer t.Stop()
	for {
		r.runKey(task.rp, task.key)
		done := time.Now()
		for next := false; !next; {
			select {
			case task = <-r.keyWork:
				next = true
			case <-t.C:
				idle := time.Since(done)
				if idle >= keyIdle {
					return
				}
				t.Reset(keyIdle - idle)
			case <-r.keyQuit:
				return
			}
		}
	}
}

// handlerContext is the context of rp's handlers: the values of Run's ctx,
// cancelled with the partition or by the abort.
func (r *runner) handlerContext(rp *runPart) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.stop))
	stop1 := context.AfterFunc(rp.ctx, cancel)
	stop2 := context.AfterFunc(r.abort, cancel)
	return ctx, func() { stop1(); stop2(); cancel() }
}

// runSequential handles one partition's batch, message after message.
func (r *runner) runSequential(rp *runPart, ms []*contracts.CMessage) {
	defer r.wg.Done()
	hctx := rp.hctx
	var acks []*contracts.CMessage
	progress := func() { r.ack(acks); acks = acks[:0] }
	for i, m := range ms {
		if !r.handle(hctx, rp, m, &acks, progress) {
			_ = r.c.Nack(ms[i:]...)
			break
		}
	}
	r.ack(acks)
	r.finished(rp, len(ms))
}

// runKey handles the queued messages of one key of a partition, in order,
// until the key's queue is empty. Acks are gathered per partition and sent
// in batches.
func (r *runner) runKey(rp *runPart, key string) {
	hctx := rp.hctx
	progress := func() { r.ack(r.takeAcks(rp, true)) }
	var acks []*contracts.CMessage
	r.mu.Lock()
	for {
		q := rp.keys[key]
		if len(q) == 0 {
			delete(rp.keys, key)
			last := len(rp.keys) == 0 // the partition is idle: ack now
			r.mu.Unlock()
			if last {
				progress()
			}
			return
		}
		m := q[0]
		r.mu.Unlock()

		acks = acks[:0]
		ok := r.handle(hctx, rp, m, &acks, progress)

		r.mu.Lock()
		if !ok {
			rest := rp.keys[key]
			delete(rp.keys, key)
			r.mu.Unlock()
			progress()
			_ = r.c.Nack(rest...)
			r.finished(rp, len(rest))
			return
		}
		// One critical section per message: its key's queue, its ack and
		// the partition's room.
		rp.keys[key] = rp.keys[key][1:]
		if len(rp.acks) == 0 {
			rp.acksFrom = time.Now()
		}
		rp.acks = append(rp.acks, acks...)
		send := r.takeAcksLocked(rp, false)
		wake := r.finishedLocked(rp, 1)
		if send != nil || wake {
			r.mu.Unlock()
			r.ack(send) // wakes the dispatcher too
			if wake {
				r.wakeDispatcher()
			}
			r.mu.Lock()
		}
	}
}

// takeAcks returns rp's gathered acks to send now: all of them when force,
// else once there are enough or the oldest has waited long enough.
func (r *runner) takeAcks(rp *runPart, force bool) []*contracts.CMessage {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.takeAcksLocked(rp, force)
}

func (r *runner) takeAcksLocked(rp *runPart, force bool) []*contracts.CMessage {
	if len(rp.acks) == 0 || !force && len(rp.acks) < 64 && time.Since(rp.acksFrom) < 5*time.Millisecond {
		return nil
	}
	acks := rp.acks
	rp.acks = nil
	return acks
}

// finished records n messages of rp done and wakes the dispatcher when
// that may let it fetch the partition.
func (r *runner) finished(rp *runPart, n int) {
	r.mu.Lock()
	wake := r.finishedLocked(rp, n)
	r.mu.Unlock()
	if wake {
		r.wakeDispatcher()
	}
}

// finishedLocked records n messages of rp done, and reports whether the
// dispatcher is to be woken: when limit may now let it fetch the partition
// (see limit: the partition is idle, its room reached half the bound, or
// it has room again, to fetch after keyFetchGap; in between, the
// dispatcher's own retry time covers it). Waking it for every message in
// per-key mode cost a fetch round for each.
func (r *runner) finishedLocked(rp *runPart, n int) bool {
	before := rp.inflight
	rp.inflight -= n
	k := r.o.keyConcurrency
	if k == 0 || rp.inflight == 0 {
		return true
	}
	roomBefore, room := k-before, k-rp.inflight
	return roomBefore <= 0 && room > 0 || roomBefore < k/2 && room >= k/2
}

func (r *runner) wakeDispatcher() {
	select {
	case r.idle <- struct{}{}:
	default:
	}
}

// handle runs the handler on m until it succeeds (m is added to acks), m is
// dead-lettered, or handling must stop (false: hand m back). progress acks
// what was handled so far, before a wait.
func (r *runner) handle(ctx context.Context, rp *runPart, m *contracts.CMessage, acks *[]*contracts.CMessage, progress func()) bool {
	h := r.h
	poison := m.PoisonReason != ""
	if poison && r.o.poison != nil {
		h = r.o.poison
	}
	var lastErr error
	for attempt := 1; ; attempt++ {
		if max := r.c.opts.maxDeliveries; max > 0 && int(m.DeliveryCount)+attempt-1 > max {
			progress()
			return r.deadLetter(ctx, m, r.maxDeliveriesReason(m, attempt-1, lastErr))
		}
		// The lease may have passed to another consumer by the local clock
		// (renewals failing): start nothing before Redis confirms it.
		if ctx.Err() != nil || r.stop.Err() != nil || rp.op == nil || !r.c.stillValid(rp.op) {
			return false
		}
		err := r.call(ctx, h, m, attempt)
		if err == nil {
			*acks = append(*acks, m)
			return true
		}
		lastErr = err
		r.c.log.Warn("handler failed", "partition", m.Partition, "id", m.Id, "attempt", attempt, "err", err)
		progress() // what was handled is not redone after a crash
		if poison && ctx.Err() == nil {
			// Retrying cannot make an entry decodable: it would hold its
			// partition (or key) back for ever.
			return r.deadLetter(ctx, m, "poison entry ("+m.PoisonReason+"), handler failed: "+err.Error())
		}
		if !r.backoff(ctx, attempt) {
			return false
		}
	}
}

// maxDeliveriesReason is the dead-letter reason of m, delivered too often.
// Run's retries count as deliveries: it adds them to m.DeliveryCount.
func (r *runner) maxDeliveriesReason(m *contracts.CMessage, attempts int, lastErr error) string {
	m.DeliveryCount += uint32(max(attempts-1, 0))
	reason := fmt.Sprintf("delivered %d times (MaxDeliveries %d)", m.DeliveryCount, r.c.opts.maxDeliveries)
	if lastErr != nil {
		reason += ": " + lastErr.Error()
	}
	return reason
}

// deadLetter moves m to the dead letters, retrying while the move fails.
func (r *runner) deadLetter(ctx context.Context, m *contracts.CMessage, reason string) bool {
	for attempt := 1; ; attempt++ {
		err := r.c.DeadLetter(context.WithoutCancel(ctx), reason, m)
		if err == nil {
			return true
		}
		if errors.Is(err, ErrFenced) || errors.Is(err, ErrClosed) {
			return false
		}
		r.c.seg.reportError(err)
		if !r.backoff(ctx, attempt) {
			return false
		}
	}
}

// backoff waits before retry number attempt; false when handling must stop.
func (r *runner) backoff(ctx context.Context, attempt int) bool {
	d := r.o.backoffMin << min(attempt-1, 30)
	if d <= 0 || d > r.o.backoffMax {
		d = r.o.backoffMax
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-r.stop.Done():
		return false
	case <-t.C:
		return true
	}
}

// call runs the handler once, with the handler hooks; a panic is an error.
func (r *runner) call(ctx context.Context, h Handler, m *contracts.CMessage, attempt int) (err error) {
	c := r.c
	var ev HandlerEvent
	if len(c.hooks.handler) > 0 {
		ev = HandlerEvent{Stream: c.stream.name, Group: c.group, Consumer: c.id, Message: m, Attempt: attempt, Start: time.Now()}
		for _, hk := range c.hooks.handler {
			hk.OnHandlerStart(ev)
		}
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("segmenter: handler panicked: %v", p)
			c.log.Error("handler panicked", "partition", m.Partition, "id", m.Id, "panic", p, "stack", string(debug.Stack()))
		}
		if len(c.hooks.handler) > 0 {
			ev.End, ev.Err = time.Now(), err
			for _, hk := range c.hooks.handler {
				hk.OnHandlerEnd(ev)
			}
		}
	}()
	return h(ctx, m)
}

// ack hands handled messages to the dispatcher, and wakes it: its next
// fetch carries their acknowledgement, or it hands them to the acker.
func (r *runner) ack(msgs []*contracts.CMessage) {
	if len(msgs) == 0 {
		return
	}
	r.ackMu.Lock()
	r.ackBuf = append(r.ackBuf, msgs...)
	r.ackMu.Unlock()
	r.wakeDispatcher()
}

// handedAcks returns the messages handed over by ack since the last call.
func (r *runner) handedAcks() []*contracts.CMessage {
	r.ackMu.Lock()
	defer r.ackMu.Unlock()
	msgs := r.ackBuf
	r.ackBuf = nil
	return msgs
}

// sendAcks has the acker acknowledge msgs.
func (r *runner) sendAcks(msgs []*contracts.CMessage) {
	if len(msgs) == 0 {
		return
	}
	r.ackMu.Lock()
	r.ackSend = append(r.ackSend, msgs...)
	r.ackMu.Unlock()
	select {
	case r.ackKick <- struct{}{}:
	default:
	}
}

// acker acknowledges what the dispatcher hands it, all partitions in one
// call. An ack of unknown outcome (Redis away) is sent again, BlockInterval
// later, while the consumer holds the message's partition under its epoch:
// the message stays in flight meanwhile (kept from coming due), and a
// failure must not leave it unacked for ever. When stopped, it sends what
// is left once: what fails then goes to the partition's next owner.
func (r *runner) acker() {
	var again []*contracts.CMessage
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		stopping := false
		select {
		case <-r.ackKick:
		case <-retry.C:
		case <-r.ackStop:
			stopping = true
		}
		r.ackMu.Lock()
		msgs := append(again, r.ackSend...)
		r.ackSend = nil
		if stopping { // the workers are done: what they handed over last
			msgs = append(msgs, r.ackBuf...)
			r.ackBuf = nil
		}
		r.ackMu.Unlock()
		again = nil
		if len(msgs) > 0 {
			err := r.c.Ack(context.WithoutCancel(r.stop), msgs...)
			again = r.c.unknownAcks(msgs, err)
			if len(again) > 0 && !stopping {
				retry.Reset(r.c.seg.cfg.BlockInterval)
			}
		}
		if stopping {
			return
		}
	}
}

// unknownAcks reports the errors of err, Ack's of msgs, other than ErrFenced
// and ErrClosed, and returns the messages whose ack failed with them (an
// outcome Ack cannot know) and whose partition the consumer still holds
// under their epoch.
func (c *Consumer) unknownAcks(msgs []*contracts.CMessage, err error) []*contracts.CMessage {
	if err == nil {
		return nil
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	failed := make(map[int]bool)
	var report []error
	for _, e := range errs {
		if errors.Is(e, ErrFenced) || errors.Is(e, ErrClosed) {
			continue
		}
		report = append(report, e)
		var pe *PartitionError
		if errors.As(e, &pe) {
			failed[pe.Partition] = true
		}
	}
	if len(report) > 0 {
		c.seg.reportError(errors.Join(report...))
	}
	if len(failed) == 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*contracts.CMessage
	for _, m := range msgs {
		if op, ok := c.parts[int(m.Partition)]; ok && failed[int(m.Partition)] && op.epoch == m.Epoch {
			out = append(out, m)
		}
	}
	return out
}

// finish waits for the workers: the handlers in flight finish within
// maxProcessingTime, then their context is cancelled.
func (r *runner) finish() {
	close(r.keyQuit) // idle key workers end; busy ones when their key is done
	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(r.c.maxProc)
	select {
	case <-done:
	case <-t.C:
		r.c.log.Warn("handlers still running after maxProcessingTime: cancelling them")
		r.cancelAbort()
		<-done
	case <-r.abort.Done():
		<-done
	}
	t.Stop()
	r.cancelAbort()
	r.mu.Lock()
	for _, rp := range r.parts {
		rp.hcancel()
	}
	r.mu.Unlock()
	close(r.ackStop) // the workers are done: send their last acks
	r.ackerWG.Wait()
}

// partitionContext returns the context and the state of partition p under
// epoch, or a cancelled context and nil when the consumer no longer holds it.
func (c *Consumer) partitionContext(p int, epoch int64) (context.Context, *ownedPartition) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if op, ok := c.parts[p]; ok && op.epoch == epoch && !op.revoking {
		return op.ctx, op
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx, nil
}

// touchInflight resets, in Redis, the idle time of delivered messages that
// have been in flight for olderThan or more, so that they do not come due
// for redelivery while they are still being handled.
func (c *Consumer) touchInflight(ctx context.Context, olderThan time.Duration) {
	now := time.Now()
	c.mu.Lock()
	var reqs []rebalance.AckRequest
	var parts []int
	for p, op := range c.parts {
		if op.revoking {
			continue
		}
		var ids []string
		for id, d := range op.inflight {
			if now.Sub(d.at) >= olderThan {
				ids = append(ids, id)
			}
		}
		if len(ids) > 0 {
			reqs = append(reqs, rebalance.AckRequest{LeaseKey: c.leaseKeys[p], StreamKey: c.stream.keys[p], Epoch: op.epoch, IDs: ids})
			parts = append(parts, p)
		}
	}
	c.mu.Unlock()
	if len(reqs) == 0 {
		return
	}
	res := rebalance.Touch(ctx, c.seg.rdb, c.id, c.group, reqs)
	defer c.flushEvents()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, x := range res {
		op, ok := c.parts[parts[i]]
		if !ok || op.epoch != reqs[i].Epoch {
			continue
		}
		switch {
		case x.Fenced:
			c.dropLocked(parts[i], ErrFenced, true)
		case x.Err != nil:
			c.reportLocked(parts[i], fmt.Errorf("keep in-flight messages from coming due: %w", x.Err))
		default:
			for _, id := range reqs[i].IDs {
				if _, ok := op.inflight[id]; ok {
					op.deliverLocked(id, now, now) // reset in Redis after now
				}
			}
		}
	}
}

// NotifyShutdown returns two contexts for a graceful stop: graceful ends at
// the first of the signals (stop fetching, let handlers finish), abort at
// the second (cancel the handlers: pass it to Run with WithAbort). stop
// releases the signals; call it when done. With no signals it listens for
// os.Interrupt.
func NotifyShutdown(parent context.Context, signals ...os.Signal) (graceful, abort context.Context, stop func()) {
	if len(signals) == 0 {
		signals = []os.Signal{os.Interrupt}
	}
	graceful, cancelGraceful := context.WithCancel(parent)
	abort, cancelAbort := context.WithCancel(parent)
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, signals...)
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for n := 0; n < 2; {
			select {
			case <-ch:
				n++
				if n == 1 {
					cancelGraceful()
				} else {
					cancelAbort()
				}
			case <-quit:
				return
			}
		}
	})
	var once sync.Once
	stop = func() {
		once.Do(func() {
			signal.Stop(ch)
			close(quit)
			wg.Wait()
			cancelGraceful()
			cancelAbort()
		})
	}
	return graceful, abort, stop
}

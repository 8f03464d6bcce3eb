package segmenter

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/rebalance"
)

// entryWatcher tells the consumers of a Segmenter when entries arrive in the
// partitions they found empty (quiet): one goroutine waits in one read-only
// XREAD BLOCK over every quiet partition of every consumer, on a connection
// of its own. XREAD changes no state, so it needs no fence. When a consumer's
// quiet set grows while the XREAD is blocked, the XREAD is re-armed at once
// (CLIENT UNBLOCK), so that no quiet partition goes unwatched; where CLIENT
// UNBLOCK is refused (an ACL), the XREAD blocks for short times instead.
//
// On a single node (*redis.Client, Sentinel included) a Segmenter has one;
// on a Redis Cluster, one per quiet partition key, on the primary serving
// its slot (see watchers). The goroutine runs while there are subscribers,
// and Close waits for it.
//
// On a single node a subscriber may give it a fenced read of its quiet
// partitions (see Consumer.wait): the watcher sends it right behind the
// XREAD, in one pipeline on its connection, and Redis runs it as soon as
// the XREAD returns. The reply of a pipeline must come within the client's
// ReadTimeout, so such an XREAD blocks for less (block).
type entryWatcher struct {
	seg *Segmenter
	// node returns the client of the Redis node to block on: the
	// Segmenter's own client on a single node; on a cluster, a client of
	// the primary serving the watched key's slot (see watchers).
	node func(ctx context.Context) (*redis.Client, error)
	// failed, if set, is told of an XREAD that failed (a node gone, a slot
	// moved) before the watcher connects again.
	failed func(err error)

	mu    sync.Mutex
	subs  map[*Consumer]map[string]string // consumer -> stream key -> from ID
	reads map[*Consumer]*watchRead        // reads to send with the next XREAD
	// awaited: consumers whose reads just ran; the next XREAD waits a
	// little for their next reads (readGrace) rather than go without them
	// and be unblocked at once to take them.
	awaited  map[*Consumer]bool
	armed    map[string]string // the XREAD in flight: key -> from ID
	seq      uint64            // counts the XREADs sent
	id       int64             // the connection's client ID (0: unknown)
	client   *redis.Client     // the node client the connection came from
	noUnblk  bool              // CLIENT UNBLOCK was refused
	running  bool
	retrying bool   // an unblocker goroutine runs
	rearmSeq uint64 // the XREAD it is to unblock
	closed   bool
	wake     chan struct{} // a subscription came while none was armed
	wg       sync.WaitGroup
}

// watchBlock bounds one XREAD of the watcher; shortBlock when it cannot be
// re-armed by CLIENT UNBLOCK.
const (
	watchBlock = 5 * time.Second
	shortBlock = 20 * time.Millisecond
)

// readGrace bounds how long the watcher waits, after reads ran, for their
// consumers' next reads (see entryWatcher.awaited): a consumer that got
// messages hands them out, then waits again, within well under it.
const readGrace = 2 * time.Millisecond

func newEntryWatcher(s *Segmenter, node func(ctx context.Context) (*redis.Client, error)) *entryWatcher {
	return &entryWatcher{
		seg:     s,
		node:    node,
		subs:    make(map[*Consumer]map[string]string),
		reads:   make(map[*Consumer]*watchRead),
		awaited: make(map[*Consumer]bool),
		wake:    make(chan struct{}, 1),
	}
}

// pipelines reports whether the watcher may send its subscribers' reads:
// not where it cannot be re-armed (CLIENT UNBLOCK refused), as its XREAD
// then returns every shortBlock.
func (w *entryWatcher) pipelines() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.noUnblk
}

// block is the longest an XREAD that carries reads blocks: less than the
// client's ReadTimeout, which bounds the reply of a pipeline.
func (w *entryWatcher) block() time.Duration {
	c, ok := w.seg.rdb.(*redis.Client)
	if !ok {
		return watchBlock
	}
	rt := c.Options().ReadTimeout
	if rt <= 0 { // no read deadline
		return watchBlock
	}
	return min(watchBlock, rt*3/4)
}

// watch makes sub (stream key -> the newest entry ID c has seen in it) c's
// quiet set: c hears of an entry newer than sub[k] in any k of it. read,
// when not nil, is sent with the next XREAD. It returns at once, after
// re-arming the XREAD in flight when it does not cover the set (or carry
// the read).
func (w *entryWatcher) watch(c *Consumer, sub map[string]string, read *watchRead) {
	w.mu.Lock()
	if w.closed || c.shutdownStarted.Load() {
		// (Shutdown's unwatch may have run already: no stale subscription.)
		if read != nil {
			w.withdrawLocked(read)
		}
		w.mu.Unlock()
		return
	}
	if len(sub) == 0 {
		delete(w.subs, c)
		delete(w.awaited, c)
		if read != nil {
			w.withdrawLocked(read)
		}
		w.mu.Unlock()
		return
	}
	w.subs[c] = sub
	if w.awaited[c] {
		delete(w.awaited, c)
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
	if read != nil {
		if old := w.reads[c]; old != nil {
			w.withdrawLocked(old)
		}
		w.reads[c] = read
	}
	if !w.running {
		w.running = true
		w.wg.Add(1)
		go w.run()
		w.mu.Unlock()
		return
	}
	if w.armed == nil {
		w.mu.Unlock()
		select {
		case w.wake <- struct{}{}:
		default:
		}
		return
	}
	covered := read == nil
	for k, id := range sub {
		if a, ok := w.armed[k]; !ok || newerID(a, id) {
			covered = false
			break
		}
	}
	seq, id, unblock := w.seq, w.id, !w.noUnblk && w.id != 0
	w.mu.Unlock()
	if !covered && unblock {
		w.rearm(seq, id)
	}
}

// rearm has the XREAD number seq (or a later one it was asked to) unblocked
// so that it starts again with the current subscriptions. A goroutine of
// the watcher does it, so that the caller goes on at once; an XREAD still
// on its way to Redis cannot be unblocked yet: the goroutine tries again,
// for a while.
func (w *entryWatcher) rearm(seq uint64, id int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.rearmSeq = max(w.rearmSeq, seq)
	if w.retrying {
		return // the running unblocker takes the new seq
	}
	w.retrying = true
	w.wg.Add(1)
	go w.unblocker(id)
}

// unblocker unblocks the XREAD w.rearmSeq names, until it is unblocked or
// has returned by itself.
func (w *entryWatcher) unblocker(id int64) {
	defer w.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	d := 100 * time.Microsecond
	for {
		w.mu.Lock()
		seq := w.rearmSeq
		if w.armed == nil || w.seq != seq || w.closed || ctx.Err() != nil {
			// It returned (the next XREAD has the new set), or give up.
			w.retrying = false
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
		n, err := w.unblockClient().ClientUnblock(ctx, id).Result()
		if err == nil && n == 1 {
			w.mu.Lock()
			done := w.rearmSeq == seq // else a later request came: go on
			if done {
				w.retrying = false
			}
			w.mu.Unlock()
			if done {
				return
			}
			continue
		}
		if err != nil && (redis.HasErrorPrefix(err, "NOPERM") || redis.HasErrorPrefix(err, "ERR unknown")) {
			w.mu.Lock()
			w.noUnblk, w.retrying = true, false
			w.mu.Unlock()
			return
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		d = min(2*d, 20*time.Millisecond)
	}
}

// unblock sends CLIENT UNBLOCK for the XREAD number seq; it reports whether
// nothing more is to be done (unblocked, returned meanwhile, or refused).
func (w *entryWatcher) unblock(ctx context.Context, seq uint64, id int64) bool {
	w.mu.Lock()
	pending := w.armed != nil && w.seq == seq
	w.mu.Unlock()
	if !pending {
		return true // it returned: the next XREAD has the new set
	}
	n, err := w.unblockClient().ClientUnblock(ctx, id).Result()
	if err != nil {
		if redis.HasErrorPrefix(err, "NOPERM") || redis.HasErrorPrefix(err, "ERR unknown") {
			w.mu.Lock()
			w.noUnblk = true
			w.mu.Unlock()
		}
		return ctx.Err() != nil || err != nil
	}
	return n == 1
}

// The states of a watchRead (under the watcher's lock).
const (
	readQueued    = iota // to go with the next XREAD
	readSent             // its pipeline is on its way: seq is its XREAD
	readRan              // its pipeline ran: done is (about to be) closed
	readWithdrawn        // never sent
)

// withdrawLocked gives read back unsent: its consumer, waiting on done,
// finds it withdrawn and fetches its partitions itself.
func (w *entryWatcher) withdrawLocked(read *watchRead) {
	if read.state != readQueued {
		return
	}
	if w.reads[read.c] == read {
		delete(w.reads, read.c)
	}
	read.state = readWithdrawn
	close(read.done)
}

// collect takes read back: a read not sent yet is withdrawn (false); one
// sent is waited for, its XREAD unblocked if it still blocks (true: its
// pipeline ran, read.q holds its replies).
func (w *entryWatcher) collect(read *watchRead) bool {
	w.mu.Lock()
	switch read.state {
	case readQueued:
		w.withdrawLocked(read)
		fallthrough
	case readWithdrawn:
		w.mu.Unlock()
		return false
	case readSent:
		seq, id, unblock := read.seq, w.id, !w.noUnblk && w.id != 0
		w.mu.Unlock()
		if unblock {
			w.rearm(seq, id)
		}
	default:
		w.mu.Unlock()
	}
	<-read.done
	return true
}

// unwatch drops c's subscription; the last one lets the goroutine end (and
// give its connection back) at once.
func (w *entryWatcher) unwatch(c *Consumer) {
	w.mu.Lock()
	delete(w.subs, c)
	delete(w.awaited, c)
	if rd := w.reads[c]; rd != nil {
		w.withdrawLocked(rd)
	}
	last, seq, id := len(w.subs) == 0 && w.armed != nil, w.seq, w.id
	unblock := !w.noUnblk && id != 0
	w.mu.Unlock()
	if last && unblock {
		w.rearm(seq, id)
	}
}

// run waits for entries until no consumer subscribes or the watcher closes.
func (w *entryWatcher) run() {
	defer w.wg.Done()
	ctx := context.Background()
	var conn *redis.Conn
	defer func() {
		if conn != nil {
			_ = conn.Close()
		}
	}()
	var grace *time.Timer
	defer func() {
		if grace != nil {
			grace.Stop()
		}
	}()
	for {
		w.mu.Lock()
		if len(w.awaited) > 0 && !w.closed {
			// Reads just ran: give their consumers a moment to send the
			// next ones with this XREAD.
			w.mu.Unlock()
			if grace == nil {
				grace = time.NewTimer(readGrace)
			} else {
				grace.Reset(readGrace)
			}
			for waiting := true; waiting; {
				select {
				case <-grace.C:
					waiting = false
				case <-w.wake:
					w.mu.Lock()
					waiting = len(w.awaited) > 0 && !w.closed
					w.mu.Unlock()
				}
			}
			w.mu.Lock()
			clear(w.awaited)
		}
		if w.closed || len(w.subs) == 0 {
			w.running, w.armed = false, nil
			for _, rd := range w.reads {
				w.withdrawLocked(rd)
			}
			w.mu.Unlock()
			return
		}
		var err error
		if conn == nil {
			w.mu.Unlock()
			conn, err = w.connect(ctx)
			w.mu.Lock()
		}
		var res []redis.XStream
		var sending []*watchRead
		switch {
		case err != nil:
			// No connection: every subscriber is told below, as after a
			// failed XREAD.
			w.mu.Unlock()
		case w.closed:
			w.mu.Unlock()
			continue
		default:
			var args *redis.XReadArgs
			args, sending = w.armLocked()
			w.mu.Unlock()
			res, err = w.xread(ctx, conn, args, sending)
		}

		notify := make(map[*Consumer][]string)
		w.mu.Lock()
		w.armed = nil
		failed := err != nil && !errors.Is(err, redis.Nil)
		for _, rd := range sending {
			rd.state = readRan
			if _, ok := w.subs[rd.c]; ok && !failed {
				w.awaited[rd.c] = true
			}
		}
		for c, sub := range w.subs {
			if failed {
				// Every subscriber fetches: its fetch reports the error.
				for k := range sub {
					notify[c] = append(notify[c], k)
				}
				delete(w.subs, c)
				continue
			}
			for _, x := range res {
				if from, ok := sub[x.Stream]; ok && len(x.Messages) > 0 && newerID(x.Messages[0].ID, from) {
					if !readsKey(sending, c, x.Stream) { // else its read has it
						notify[c] = append(notify[c], x.Stream)
					}
					// Watched on from the entry seen: the consumer reads it
					// and, drained again, waits from it or a newer one,
					// which this XREAD covers (no re-arm); an entry after it
					// wakes the consumer again.
					sub[x.Stream] = x.Messages[0].ID
				}
			}
			if len(sub) == 0 {
				delete(w.subs, c)
			}
		}
		closed := w.closed
		w.mu.Unlock()
		for _, rd := range sending {
			close(rd.done)
		}
		for c, keys := range notify {
			c.entriesArrived(keys)
		}
		if failed && !closed {
			// A broken connection is replaced; either way, do not spin.
			if conn != nil {
				_ = conn.Close()
				conn = nil
			}
			w.fail(err)
		}
	}
}

// connect opens the watcher's connection to its node and learns its client
// ID (for CLIENT UNBLOCK).
func (w *entryWatcher) connect(ctx context.Context) (*redis.Conn, error) {
	client, err := w.node(ctx)
	if err != nil {
		return nil, err
	}
	conn := client.Conn()
	id, err := conn.ClientID(ctx).Result()
	if err != nil {
		id = 0
	}
	w.mu.Lock()
	w.id, w.client = id, client
	w.mu.Unlock()
	return conn, nil
}

// armLocked returns the XREAD covering every subscription (from the oldest
// position any subscriber waits from) and the reads to send behind it, and
// records them as in flight.
func (w *entryWatcher) armLocked() (*redis.XReadArgs, []*watchRead) {
	armed := make(map[string]string)
	for _, sub := range w.subs {
		for k, id := range sub {
			if a, ok := armed[k]; !ok || newerID(a, id) {
				armed[k] = id // the oldest: news for any subscriber wakes it
			}
		}
	}
	streams := make([]string, 0, 2*len(armed))
	for k := range armed {
		streams = append(streams, k)
	}
	for _, k := range streams[:len(armed)] {
		streams = append(streams, armed[k])
	}
	w.armed = armed
	w.seq++
	// Re-armed by CLIENT UNBLOCK whenever its set must change (and at
	// Close), the XREAD can block long: an idle Segmenter costs Redis one
	// call per watchBlock.
	block := watchBlock
	if w.noUnblk || w.id == 0 {
		block = shortBlock
	}
	var sending []*watchRead
	for c, rd := range w.reads {
		if _, ok := w.subs[c]; !ok {
			w.withdrawLocked(rd) // its consumer fetches them itself
			continue
		}
		delete(w.reads, c)
		sending = append(sending, rd)
		rd.state, rd.seq = readSent, w.seq
	}
	return &redis.XReadArgs{Streams: streams, Count: 1, Block: block}, sending
}

// xread runs the XREAD on conn, with the reads of sending right behind it
// in one pipeline: Redis runs them the moment the XREAD returns, in the
// same round trip.
func (w *entryWatcher) xread(ctx context.Context, conn *redis.Conn, args *redis.XReadArgs, sending []*watchRead) ([]redis.XStream, error) {
	if len(sending) == 0 {
		return conn.XRead(ctx, args).Result()
	}
	args.Block = min(args.Block, w.block())
	pipe := conn.Pipeline()
	xread := pipe.XRead(ctx, args)
	for _, rd := range sending {
		rd.q = rebalance.QueueFetch(ctx, pipe, rd.c.id, rd.c.group, rd.c.maxProc, rd.plan.reqs)
	}
	sent := time.Now()
	_, _ = pipe.Exec(ctx)
	replied := time.Now()
	res, err := xread.Result()
	for _, rd := range sending {
		rd.sent, rd.plan.replied = sent, replied
	}
	return res, err
}

// fail reports a failed connection or XREAD and waits a BlockInterval
// (less when the watcher closes) before the next attempt.
func (w *entryWatcher) fail(err error) {
	if w.failed != nil {
		w.failed(err)
	}
	w.pause(w.seg.cfg.BlockInterval)
}

// unblockClient returns a client of the node the watcher's connection is
// on, for CLIENT UNBLOCK.
func (w *entryWatcher) unblockClient() *redis.Client {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.client
}

// readsKey reports whether one of reads is c's and reads stream key.
func readsKey(reads []*watchRead, c *Consumer, key string) bool {
	for _, rd := range reads {
		if rd.c == c && slices.ContainsFunc(rd.plan.reqs, func(r rebalance.FetchRequest) bool { return r.StreamKey == key }) {
			return true
		}
	}
	return false
}

// pause waits d, or less when the watcher closes.
func (w *entryWatcher) pause(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return
		case <-w.wake:
			w.mu.Lock()
			closed := w.closed
			w.mu.Unlock()
			if closed {
				return
			}
		}
	}
}

// shut marks the watcher closed: its goroutine ends once its XREAD
// returns.
func (w *entryWatcher) shut() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// close stops the watcher and waits for its goroutines.
func (w *entryWatcher) close() {
	w.shut()
	// Unblock the XREAD, also one still on its way to Redis (for a while:
	// else it ends by itself within its block).
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for d := 100 * time.Microsecond; ; d = min(2*d, 20*time.Millisecond) {
		w.mu.Lock()
		running, pending, seq, id := w.running, w.armed != nil, w.seq, w.id
		unblock := !w.noUnblk && id != 0
		w.mu.Unlock()
		if !running || !unblock {
			break
		}
		if pending && w.unblock(ctx, seq, id) {
			break
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		if ctx.Err() != nil {
			break
		}
	}
	w.wg.Wait()
}

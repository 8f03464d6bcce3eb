package segmenter

import (
	"context"
	"errors"
	"fmt"
	"path"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmenter/segmenter/contracts"
)

// MultiConsumer is one member of a consumer group over several streams: a
// fixed list of streams (RegisterMultiConsumer), or every stream of the
// namespace whose name matches a glob pattern, like Redis' PSUBSCRIBE
// (RegisterPatternConsumer), streams registered later included. One Read,
// Ack, Nack, Run and Shutdown serve all its streams; CMessage.Stream says
// which stream a message came from.
//
// # One assignment per stream
//
// A MultiConsumer is made of one Consumer per stream, all under the same
// consumer name. Each stream keeps its own group membership, assignment,
// leases and epochs, exactly as with RegisterConsumer: with M members on a
// stream of P partitions, each holds ⌊P/M⌋ or ⌈P/M⌉ of that stream's
// partitions, a join or leave moves the fewest partitions of each stream,
// and per-key order and single ownership hold per stream, checked in Redis
// by the same fenced scripts. The partitions of all the streams do not share
// one assignment: that would need a group key spanning streams (every
// stream's group lives in hash slots of its own, so that each script touches
// one slot), and a balance over the union would leave a member with all of
// one stream and none of another. One assignment per stream also lets a
// MultiConsumer and plain consumers of one of its streams share a group: they
// balance that stream's partitions between them.
//
// # Streams that come and go
//
// The consumer lists the namespace's streams every Config.HeartbeatInterval
// (at once when a stream is registered through the same Segmenter), so a
// matching stream registered anywhere is consumed within a heartbeat
// interval. A group that the consumer creates on a stream found after it was
// registered starts at the stream's first entry (whatever WithStartPosition
// says): everything in such a stream was sent after the consumer started. A
// pattern that matches nothing yet is no error: Read and Run wait. A stream
// whose partitions were deleted in Redis while consumed reports
// ErrGroupNotFound for each partition (from Read; under Run, to
// Config.OnError), as a Consumer does; a stream removed from the namespace's
// registry is no longer consumed, and the next Read (under Run,
// Config.OnError) reports it with ErrStreamNotFound.
//
// Read must not be called concurrently with itself or with Run; Ack, Nack,
// Assignment, Stats and Shutdown may be called from any goroutine.
type MultiConsumer struct {
	seg      *Segmenter
	group    string
	id       string
	batch    int
	maxProc  time.Duration
	opts     []ConsumerOption // the caller's, then the consumer name and listener
	listener func(PartitionEvent)
	start    StartPosition
	pattern  string   // "" for a list
	list     []string // the listed streams, nil for a pattern

	readMu  sync.Mutex // one Read or Run at a time
	running atomic.Bool
	rescan  chan struct{} // asks the discovery loop to list the streams now

	mu      sync.Mutex
	cons    map[string]*Consumer
	gone    []*Consumer   // consumers of streams no longer consumed
	names   []string      // the keys of cons, sorted
	changed chan struct{} // closed and replaced when cons changes or Shutdown starts
	errs    []error       // for the next Read: streams no longer consumed
	rotate  int
	closing bool

	ctx             context.Context // root of the discovery loop
	cancel          context.CancelFunc
	wg              sync.WaitGroup // the discovery loop and stream removals
	shutdownStarted atomic.Bool
	shutdownErr     error // set before done is closed
	done            chan struct{}
}

// RegisterMultiConsumer joins group on every stream of streams, as one
// consumer, and returns it (see MultiConsumer). The arguments and options are
// those of RegisterConsumer and apply to every stream; WithConsumerName names
// the consumer on all of them. Every stream must be registered
// (ErrStreamNotFound names the first that is not, and nothing is written);
// an empty list or a name listed twice is ErrInvalidArgument.
func (s *Segmenter) RegisterMultiConsumer(ctx context.Context, streams []string, group string, batchSize int, maxProcessingTime time.Duration, opts ...ConsumerOption) (*MultiConsumer, error) {
	o, err := consumerArgs(group, batchSize, maxProcessingTime, opts)
	errs := []error{err}
	if len(streams) == 0 {
		errs = append(errs, invalid("no streams to consume"))
	}
	seen := make(map[string]bool, len(streams))
	for _, name := range streams {
		if err := validateName("stream", name); err != nil {
			errs = append(errs, err)
		} else if seen[name] {
			errs = append(errs, invalid("stream %q is listed twice", name))
		}
		seen[name] = true
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	// Every stream exists before any group is created.
	for _, name := range streams {
		if _, err := s.lookupStream(ctx, name); err != nil {
			return nil, err
		}
	}
	m := s.newMultiConsumer(group, batchSize, maxProcessingTime, o, opts)
	m.list = slices.Sorted(slices.Values(streams))
	return m, m.start0(ctx, m.list)
}

// RegisterPatternConsumer joins group, as one consumer, on every stream of
// the namespace whose name matches pattern, now and as streams are
// registered later (see MultiConsumer), and returns it. The arguments and
// options are those of RegisterConsumer and apply to every stream.
//
// pattern is a glob, as in Redis' PSUBSCRIBE and path.Match: * matches any
// run of characters, ? one character, [abc] and [a-z] one of a set, [^abc]
// one outside it, and \ quotes the character after it; "tasks.*" matches
// "tasks.event.created". A pattern that is malformed or holds a character no
// stream name can have is ErrInvalidArgument. A pattern that matches no
// stream yet is no error: the consumer waits for one.
func (s *Segmenter) RegisterPatternConsumer(ctx context.Context, pattern, group string, batchSize int, maxProcessingTime time.Duration, opts ...ConsumerOption) (*MultiConsumer, error) {
	o, err := consumerArgs(group, batchSize, maxProcessingTime, opts)
	if perr := validatePattern(pattern); perr != nil {
		err = errors.Join(perr, err)
	}
	if err != nil {
		return nil, err
	}
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	m := s.newMultiConsumer(group, batchSize, maxProcessingTime, o, opts)
	m.pattern = pattern
	names, err := m.matching(ctx)
	if err != nil {
		return nil, err
	}
	return m, m.start0(ctx, names)
}

// validatePattern checks a stream name pattern.
func validatePattern(p string) error {
	if p == "" {
		return invalid("stream pattern is empty")
	}
	if len(p) > 4*MaxNameLength {
		return invalid("stream pattern is %d bytes long, the maximum is %d", len(p), 4*MaxNameLength)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_.-*?[]^\\", c) >= 0) {
			return invalid("stream pattern %q has character %q at byte %d: stream names have only A-Z a-z 0-9 _ . -, and a pattern adds * ? [ ] ^ \\", p, c, i)
		}
	}
	if _, err := path.Match(p, ""); err != nil {
		return invalid("stream pattern %q: %v", p, err)
	}
	return nil
}

func (s *Segmenter) newMultiConsumer(group string, batch int, maxProc time.Duration, o consumerOptions, opts []ConsumerOption) *MultiConsumer {
	m := &MultiConsumer{
		seg:      s,
		group:    group,
		id:       o.name,
		batch:    batch,
		maxProc:  maxProc,
		listener: o.listener,
		start:    o.start,
		rescan:   make(chan struct{}, 1),
		cons:     make(map[string]*Consumer),
		changed:  make(chan struct{}),
		done:     make(chan struct{}),
	}
	m.opts = append(slices.Clip(opts), WithConsumerName(o.name), WithPartitionListener(m.onPartition))
	m.ctx, m.cancel = context.WithCancel(context.Background())
	return m
}

// start0 registers the consumers of the streams found at registration,
// then starts the discovery loop. On failure it shuts down what it started.
func (m *MultiConsumer) start0(ctx context.Context, names []string) error {
	s := m.seg
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if s.multis == nil {
		s.multis = make(map[*MultiConsumer]struct{})
	}
	s.multis[m] = struct{}{}
	s.mu.Unlock()
	for _, name := range names {
		err := m.add(ctx, name, m.start)
		if errors.Is(err, ErrStreamNotFound) && m.pattern != "" {
			continue // removed since it was listed
		}
		if err != nil {
			_ = m.Shutdown(context.WithoutCancel(ctx))
			return err
		}
	}
	m.wg.Add(1)
	go m.discover()
	return nil
}

// ID returns the consumer's name, the same in the group of every stream.
func (m *MultiConsumer) ID() string { return m.id }

// Group returns the consumer's group.
func (m *MultiConsumer) Group() string { return m.group }

// Pattern returns the pattern the consumer was registered with ("" for a
// list of streams).
func (m *MultiConsumer) Pattern() string { return m.pattern }

// Streams returns the names of the streams consumed now, sorted.
func (m *MultiConsumer) Streams() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.names)
}

// Assignment returns, for each stream consumed, the partitions held now with
// the epoch of each lease.
func (m *MultiConsumer) Assignment() map[string][]Owned {
	out := make(map[string][]Owned)
	for _, c := range m.consumers() {
		out[c.stream.name] = c.Assignment()
	}
	return out
}

// Stats returns the counters of the consumer, summed over its streams
// (those it no longer consumes included).
func (m *MultiConsumer) Stats() Stats {
	var t Stats
	m.mu.Lock()
	all := slices.Clone(m.gone)
	for _, c := range m.cons {
		all = append(all, c)
	}
	m.mu.Unlock()
	for _, c := range all {
		s := c.Stats()
		t.Delivered += s.Delivered
		t.Redelivered += s.Redelivered
		t.Acked += s.Acked
		t.Fenced += s.Fenced
		t.Trimmed += s.Trimmed
		t.TrimmedUnread += s.TrimmedUnread
		t.Poison += s.Poison
		t.DeadLettered += s.DeadLettered
	}
	return t
}

// consumers returns the consumers of the streams, in name order.
func (m *MultiConsumer) consumers() []*Consumer {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Consumer, len(m.names))
	for i, n := range m.names {
		out[i] = m.cons[n]
	}
	return out
}

// wanted reports whether the consumer consumes stream name when it exists.
func (m *MultiConsumer) wanted(name string) bool {
	if m.pattern == "" {
		_, found := slices.BinarySearch(m.list, name)
		return found
	}
	ok, _ := path.Match(m.pattern, name) // validated
	return ok
}

// matching lists the registered streams the consumer wants, sorted.
func (m *MultiConsumer) matching(ctx context.Context) ([]string, error) {
	all, err := m.seg.rdb.HKeys(ctx, m.seg.keys.Streams()).Result()
	if err != nil {
		return nil, fmt.Errorf("segmenter: list the streams of namespace %q: %w", m.seg.cfg.Namespace, err)
	}
	var names []string
	for _, n := range all {
		if validateName("stream", n) == nil && m.wanted(n) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names, nil
}

// add registers the consumer of stream name.
func (m *MultiConsumer) add(ctx context.Context, name string, start StartPosition) error {
	opts := append(slices.Clip(m.opts), WithStartPosition(start))
	c, err := m.seg.RegisterConsumer(ctx, name, m.group, m.batch, m.maxProc, opts...)
	if err != nil {
		return err
	}
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		// Shut down meanwhile (ctx may be the cancelled one of the
		// discovery loop): leave the group at once all the same.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.maxProc)
		defer cancel()
		return c.Shutdown(sctx)
	}
	m.cons[name] = c
	m.names = slices.Sorted(func(yield func(string) bool) {
		for n := range m.cons {
			if !yield(n) {
				return
			}
		}
	})
	m.notifyLocked()
	m.mu.Unlock()
	c.log.Info("stream added to multi-stream consumer", "pattern", m.pattern)
	return nil
}

func (m *MultiConsumer) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// onPartition is the partition listener of every stream's consumer: it
// calls the caller's listener and, under Run (which goes on with the other
// partitions), reports partitions whose group vanished to Config.OnError.
func (m *MultiConsumer) onPartition(e PartitionEvent) {
	if m.listener != nil {
		m.listener(e)
	}
	if e.Kind == PartitionLost && errors.Is(e.Err, ErrGroupNotFound) && m.running.Load() {
		m.seg.reportError(&PartitionError{Stream: e.Stream, Group: m.group, Partition: e.Partition, Err: e.Err})
	}
}

// streamRegistered tells the consumer that stream name was just registered
// through its Segmenter: it lists the streams now rather than at its next
// heartbeat.
func (m *MultiConsumer) streamRegistered(name string) {
	if !m.wanted(name) {
		return
	}
	select {
	case m.rescan <- struct{}{}:
	default:
	}
}

// discover lists the streams every heartbeat interval (or when asked) and
// starts and stops the consumers of those that came and went.
func (m *MultiConsumer) discover() {
	defer m.wg.Done()
	t := time.NewTicker(m.seg.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		case <-m.rescan:
		}
		m.scan(m.ctx)
	}
}

// scan starts the consumers of the wanted streams that exist and have none,
// and stops those of streams no longer registered.
func (m *MultiConsumer) scan(ctx context.Context) {
	names, err := m.matching(ctx)
	if err != nil {
		if ctx.Err() == nil {
			m.seg.reportError(fmt.Errorf("segmenter: consumer %q group %q: %w", m.id, m.group, err))
		}
		return
	}
	m.mu.Lock()
	var gone []*Consumer
	for name, c := range m.cons {
		if _, found := slices.BinarySearch(names, name); !found {
			gone = append(gone, c)
		}
	}
	var fresh []string
	for _, name := range names {
		if _, ok := m.cons[name]; !ok {
			fresh = append(fresh, name)
		}
	}
	m.mu.Unlock()
	for _, c := range gone {
		m.removeGone(c)
	}
	for _, name := range fresh {
		// Everything in a stream found now was sent since the consumer
		// started: its group starts at the stream's first entry.
		err := m.add(ctx, name, StartEarliest)
		if err != nil && !errors.Is(err, ErrStreamNotFound) && !errors.Is(err, ErrClosed) && ctx.Err() == nil {
			m.seg.reportError(fmt.Errorf("segmenter: consumer %q group %q: consume stream %q: %w", m.id, m.group, name, err))
		}
	}
}

// removeGone stops consuming the stream of c, no longer registered.
func (m *MultiConsumer) removeGone(c *Consumer) {
	name := c.stream.name
	err := fmt.Errorf("%w: stream %q is no longer registered in namespace %q: consumer %q of group %q stopped consuming it",
		ErrStreamNotFound, name, m.seg.cfg.Namespace, m.id, m.group)
	m.mu.Lock()
	if m.closing || m.cons[name] != c {
		m.mu.Unlock()
		return
	}
	delete(m.cons, name)
	m.gone = append(m.gone, c)
	m.names = slices.DeleteFunc(m.names, func(n string) bool { return n == name })
	if m.running.Load() {
		defer m.seg.reportError(err)
	} else {
		m.errs = append(m.errs, err)
	}
	m.notifyLocked()
	m.mu.Unlock()
	c.log.Warn("stream removed from multi-stream consumer: no longer registered", "pattern", m.pattern)
	// Its messages in flight can no longer be acked by Run; hand the
	// partitions over within maxProcessingTime at the latest.
	m.wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), m.maxProc)
		defer cancel()
		_ = c.Shutdown(ctx)
	})
}

// Read returns up to the batch size of messages (fewer with
// WithMaxMessages) from the partitions the consumer holds, of one stream at
// a time: successive Reads take the streams with messages in turn. Each
// partition's messages come in stream order, those due for redelivery
// first, as from Consumer.Read. When no stream has any it waits up to
// maxWait (0: do not wait) for messages in any stream, or for a stream to
// appear, and then returns an empty batch and a nil error.
//
// Errors are those of Consumer.Read, about one stream's partition
// (*PartitionError names it), and ErrStreamNotFound once for a stream no
// longer registered. After Shutdown, Read returns ErrClosed.
func (m *MultiConsumer) Read(ctx context.Context, maxWait time.Duration, opts ...ReadOption) ([]*contracts.CMessage, error) {
	if _, err := readBudget(m.batch, maxWait, opts); err != nil {
		return nil, err
	}
	m.readMu.Lock()
	defer m.readMu.Unlock()
	deadline := time.Now().Add(maxWait)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m.mu.Lock()
		if m.closing {
			m.mu.Unlock()
			return nil, ErrClosed
		}
		if len(m.errs) > 0 {
			err := m.errs[0]
			m.errs = m.errs[1:]
			m.mu.Unlock()
			return nil, err
		}
		cons := make([]*Consumer, len(m.names))
		if n := len(m.names); n > 0 {
			m.rotate = (m.rotate + 1) % n
			for i := range cons {
				cons[i] = m.cons[m.names[(m.rotate+i)%n]]
			}
		}
		changed := m.changed
		m.mu.Unlock()
		for _, c := range cons {
			msgs, err := c.Read(ctx, 0, opts...)
			if errors.Is(err, ErrClosed) {
				continue // removed meanwhile, or shutting down (seen above next time)
			}
			if len(msgs) > 0 || err != nil {
				return msgs, err
			}
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return nil, nil
		}
		if err := m.waitAny(ctx, cons, min(remaining, m.seg.cfg.BlockInterval), changed); err != nil {
			return nil, err
		}
	}
}

// waitAny waits up to d for something to read in any of cons (see
// Consumer.wait), a change of the streams consumed, or the end of ctx.
func (m *MultiConsumer) waitAny(ctx context.Context, cons []*Consumer, d time.Duration, changed <-chan struct{}) error {
	cases := make([]reflect.SelectCase, 0, 3+2*len(cons))
	cases = append(cases,
		reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())},
		reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(changed)})
	for _, c := range cons {
		ch, cd := c.armWait(d)
		d = min(d, cd)
		cases = append(cases,
			reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ch)},
			reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(c.newEntries)})
	}
	t := time.NewTimer(d)
	defer t.Stop()
	cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(t.C)})
	if i, _, _ := reflect.Select(cases); i == 0 {
		return ctx.Err()
	}
	return nil
}

// byStream splits msgs by the consumer of their stream, in the order of
// their first message. Messages of streams no longer consumed are returned
// apart.
func (m *MultiConsumer) byStream(msgs []*contracts.CMessage) (order []*Consumer, groups map[*Consumer][]*contracts.CMessage, orphans []*contracts.CMessage, err error) {
	groups = make(map[*Consumer][]*contracts.CMessage)
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, msg := range msgs {
		switch {
		case msg == nil:
			return nil, nil, nil, invalid("message %d is nil", i)
		case msg.Group != m.group:
			return nil, nil, nil, invalid("message %d (%s) was read from stream %q group %q, not group %q", i, msg.Id, msg.Stream, msg.Group, m.group)
		}
		c, ok := m.cons[msg.Stream]
		if !ok {
			if !m.wanted(msg.Stream) {
				return nil, nil, nil, invalid("message %d (%s) was read from stream %q, which consumer %q does not consume", i, msg.Id, msg.Stream, m.id)
			}
			orphans = append(orphans, msg)
			continue
		}
		if err := c.checkMessage(i, msg); err != nil {
			return nil, nil, nil, err
		}
		if _, seen := groups[c]; !seen {
			order = append(order, c)
		}
		groups[c] = append(groups[c], msg)
	}
	return order, groups, orphans, nil
}

// Ack acknowledges messages returned by Read, each through the consumer of
// its stream (see Consumer.Ack): the error joins a *PartitionError for each
// partition that failed, ErrFenced when its lease was lost. A message of a
// stream no longer consumed is not acked: a *PartitionError wrapping
// ErrClosed says so, and it goes to the partition's next owner. Messages of
// another group or of a stream the consumer never consumes are
// ErrInvalidArgument, and nothing is acked.
func (m *MultiConsumer) Ack(ctx context.Context, msgs ...*contracts.CMessage) error {
	order, groups, orphans, err := m.byStream(msgs)
	if err != nil {
		return err
	}
	var errs []error
	for _, msg := range orphans {
		errs = append(errs, &PartitionError{Stream: msg.Stream, Group: m.group, Partition: int(msg.Partition), Err: ErrClosed})
	}
	if len(order) == 1 {
		return errors.Join(append(errs, order[0].Ack(ctx, groups[order[0]]...))...)
	}
	// The streams' acks run concurrently: one round trip's time in all.
	res := make([]error, len(order))
	var wg sync.WaitGroup
	for i, c := range order {
		wg.Go(func() { res[i] = c.Ack(ctx, groups[c]...) })
	}
	wg.Wait()
	return errors.Join(append(errs, res...)...)
}

// Nack hands messages returned by Read back unprocessed, each to the
// consumer of its stream (see Consumer.Nack): they are delivered again
// first. Messages of a stream no longer consumed go to the partition's next
// owner anyway. Nack does no I/O.
func (m *MultiConsumer) Nack(msgs ...*contracts.CMessage) error {
	order, groups, _, err := m.byStream(msgs)
	if err != nil {
		return err
	}
	for _, c := range order {
		if err := c.Nack(groups[c]...); err != nil {
			return err
		}
	}
	return nil
}

// DeadLetter moves messages returned by Read to the dead letters of their
// stream's group, each through the consumer of its stream (see
// Consumer.DeadLetter).
func (m *MultiConsumer) DeadLetter(ctx context.Context, reason string, msgs ...*contracts.CMessage) error {
	order, groups, orphans, err := m.byStream(msgs)
	if err != nil {
		return err
	}
	var errs []error
	for _, msg := range orphans {
		errs = append(errs, &PartitionError{Stream: msg.Stream, Group: m.group, Partition: int(msg.Partition), Err: ErrClosed})
	}
	for _, c := range order {
		errs = append(errs, c.DeadLetter(ctx, reason, groups[c]...))
	}
	return errors.Join(errs...)
}

// Run hands every message of the partitions the consumer holds, in every
// stream it consumes (those it starts consuming meanwhile included), to h,
// until ctx ends, as Consumer.Run does for one stream: the partitions of
// all streams are processed concurrently, each partition's messages in
// stream order, with the same options and the same handling of failures,
// stops and aborts. Run returns nil when ctx (or WithAbort's context) ends,
// once every stream's handlers finished, and ErrClosed when the consumer is
// shut down. Run and Read must not be used at the same time.
func (m *MultiConsumer) Run(ctx context.Context, h Handler, opts ...RunOption) error {
	o, err := runArgs(h, opts)
	if err != nil {
		return err
	}
	if !m.readMu.TryLock() {
		return invalid("Run or Read already running on this consumer")
	}
	defer m.readMu.Unlock()
	m.running.Store(true)
	defer m.running.Store(false)
	stop, cancelStop := context.WithCancel(ctx)
	defer cancelStop()
	if o.abort != nil {
		defer context.AfterFunc(o.abort, cancelStop)()
	}
	// Errors of streams removed before Run: to OnError, as under Run.
	m.mu.Lock()
	pending := m.errs
	m.errs = nil
	m.mu.Unlock()
	for _, err := range pending {
		m.seg.reportError(err)
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	started := make(map[*Consumer]bool)
	for {
		m.mu.Lock()
		closing, changed := m.closing, m.changed
		var fresh []*Consumer
		for _, name := range m.names {
			if c := m.cons[name]; !started[c] {
				fresh = append(fresh, c)
			}
		}
		m.mu.Unlock()
		if closing {
			return ErrClosed
		}
		if stop.Err() != nil {
			return nil
		}
		for _, c := range fresh {
			started[c] = true
			wg.Go(func() {
				err := c.Run(ctx, h, opts...)
				if err != nil && !errors.Is(err, ErrClosed) {
					m.seg.reportError(fmt.Errorf("segmenter: consumer %q group %q: run stream %q: %w", m.id, m.group, c.stream.name, err))
				}
			})
		}
		select {
		case <-stop.Done():
		case <-changed:
		}
	}
}

// Shutdown stops the consumer on every stream at once, as Consumer.Shutdown
// does for one: each stream's partitions are handed over as soon as the
// messages delivered from them are acked, nacked or past maxProcessingTime
// (bounded by ctx). It stops looking for new streams first. Shutdown is
// idempotent and safe to call concurrently; every call waits for the first
// to finish, or returns ctx's error when its own ctx ends first.
func (m *MultiConsumer) Shutdown(ctx context.Context) error {
	if m.shutdownStarted.CompareAndSwap(false, true) {
		m.mu.Lock()
		m.closing = true
		all := make([]*Consumer, 0, len(m.cons))
		for _, c := range m.cons {
			all = append(all, c)
		}
		m.notifyLocked()
		m.mu.Unlock()
		m.cancel() // no stream is added from now on
		errs := make([]error, len(all))
		var wg sync.WaitGroup
		for i, c := range all {
			wg.Go(func() { errs[i] = c.Shutdown(ctx) })
		}
		wg.Wait()
		m.wg.Wait()
		m.seg.mu.Lock()
		delete(m.seg.multis, m)
		m.seg.mu.Unlock()
		m.shutdownErr = errors.Join(errs...)
		close(m.done)
		return m.shutdownErr
	}
	select {
	case <-m.done:
		return m.shutdownErr
	case <-ctx.Done():
		select {
		case <-m.done:
			return m.shutdownErr
		default:
			return ctx.Err()
		}
	}
}

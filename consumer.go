package segmenter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/partition"
	"github.com/segmenter/segmenter/rebalance"
)

// StartPosition is where a new consumer group starts reading a stream.
type StartPosition int

const (
	// StartEarliest makes a new group read every message still in the
	// stream, including those sent before the group existed. The default.
	StartEarliest StartPosition = iota
	// StartLatest makes a new group read only messages sent after it was
	// created.
	StartLatest
)

// ConsumerOption configures RegisterConsumer.
type ConsumerOption interface{ applyConsumer(*consumerOptions) }

type consumerOptions struct {
	start         StartPosition
	name          string
	listener      func(PartitionEvent)
	hooks         []Hook
	maxDeliveries int
	poison        PoisonPolicy
}

type consumerOptionFunc func(*consumerOptions)

func (f consumerOptionFunc) applyConsumer(o *consumerOptions) { f(o) }

// WithStartPosition sets where the group starts when RegisterConsumer creates
// it. A group that already exists keeps its position. Default StartEarliest.
func WithStartPosition(p StartPosition) ConsumerOption {
	return consumerOptionFunc(func(o *consumerOptions) { o.start = p })
}

// WithConsumerName names the consumer (in logs, leases and the Redis
// consumer group). It must be unique within the group at any time. Default:
// a random UUID.
func WithConsumerName(name string) ConsumerOption {
	return consumerOptionFunc(func(o *consumerOptions) { o.name = name })
}

// PartitionEventKind says what happened to a partition of a consumer.
type PartitionEventKind int

const (
	// PartitionAssigned: the consumer acquired the partition's lease; its
	// pending messages are delivered first.
	PartitionAssigned PartitionEventKind = iota + 1
	// PartitionRevoked: the consumer handed the partition over (a rebalance
	// moved it, or Shutdown), after its delivered messages were acked or
	// passed maxProcessingTime.
	PartitionRevoked
	// PartitionLost: the consumer lost the partition without handing it
	// over: its lease was granted to another consumer (ErrFenced), or the
	// group vanished from the partition in Redis (ErrGroupNotFound).
	PartitionLost
)

func (k PartitionEventKind) String() string {
	switch k {
	case PartitionAssigned:
		return "assigned"
	case PartitionRevoked:
		return "revoked"
	case PartitionLost:
		return "lost"
	}
	return "unknown"
}

// PartitionEvent tells a consumer's listener that it gained or lost a
// partition, as Kafka's rebalance listener does.
type PartitionEvent struct {
	Stream    string // the stream of the partition
	Kind      PartitionEventKind
	Partition int
	Epoch     int64 // the epoch of the lease gained or lost
	Err       error // why a partition was lost
}

// WithPartitionListener calls f for every partition the consumer gains or
// loses, in order. Calls are serialized, come from the consumer's own
// goroutines (the background loop, Read, Ack), and must return quickly; f
// may call the consumer's methods, except Shutdown.
func WithPartitionListener(f func(PartitionEvent)) ConsumerOption {
	return consumerOptionFunc(func(o *consumerOptions) { o.listener = f })
}

// WithMaxDeliveries moves a message delivered more than n times to the
// group's dead letters (with the reason and its original stream ID) and
// acknowledges it, instead of delivering it again. Run's retries of a
// failing handler count as deliveries. 0, the default, never dead-letters.
func WithMaxDeliveries(n int) ConsumerOption {
	return consumerOptionFunc(func(o *consumerOptions) { o.maxDeliveries = n })
}

// PoisonPolicy says what a consumer does with a poison entry: one this SDK
// did not write or cannot decode.
type PoisonPolicy int

const (
	// PoisonDeliver delivers poison entries like any other message, in
	// order (Poison(msg) reports them); Run gives them to the handler set
	// with WithPoisonHandler, else to its handler. The default.
	PoisonDeliver PoisonPolicy = iota
	// PoisonDeadLetter moves poison entries to the group's dead letters
	// without delivering them.
	PoisonDeadLetter
)

// WithPoisonPolicy sets what the consumer does with poison entries.
// Default PoisonDeliver.
func WithPoisonPolicy(p PoisonPolicy) ConsumerOption {
	return consumerOptionFunc(func(o *consumerOptions) { o.poison = p })
}

// MaxBatchSize bounds the batch size of a consumer.
const MaxBatchSize = 10000

// Consumer is one member of a consumer group of a stream. It owns partitions
// through leases, reads their messages in order and acknowledges them.
//
// Read must not be called concurrently with itself; Ack, Assignment, Stats
// and Shutdown may be called from any goroutine.
type Consumer struct {
	seg       *Segmenter
	stream    *Stream
	group     string
	id        string
	batch     int
	maxProc   time.Duration
	log       *slog.Logger
	leaseKeys []string
	groupKeys rebalance.Group
	listener  func(PartitionEvent)
	hooks     hooks
	opts      consumerOptions

	readMu     sync.Mutex    // one Read at a time
	tickMu     sync.Mutex    // one tick at a time; leave waits for the one in flight
	wake       chan struct{} // asks the background loop for a tick now
	newEntries chan struct{} // the waiter saw new entries (or failed)

	mu        sync.Mutex
	parts     map[int]*ownedPartition
	broken    map[int]bool     // partitions whose group vanished in Redis
	toRelease []rebalance.Held // their leases, released outside the lock
	gen       int64            // the latest generation seen, -1 before the first
	inc       string           // the incarnation of the assignment gen belongs to
	assigned  map[int]bool     // this member's partitions in generation gen
	events    []PartitionEvent // for the listener, sent outside the lock
	bgErrs    []error          // for Config.OnError, reported outside the lock
	errs      []error          // partition errors for the next Read
	changed   chan struct{}    // closed and replaced when ownership changes
	rotate    int
	closing   bool
	flushing  bool // a flushEvents is calling the listener and hooks
	fetchSeq  uint64
	fetching  int // fetches sent and not yet applied (see ownedPartition.acked)
	leftOut   int // partitions the last fetch left out for want of budget

	// wread is the read the entry watcher sends for the consumer behind
	// its XREAD, until Read or Run collects it (they alone touch it: one
	// at a time).
	wread *watchRead

	stats     stats
	retention retentionState // see retention.go

	ctx             context.Context // root of the consumer's background loop
	cancel          context.CancelFunc
	wg              sync.WaitGroup
	shutdownStarted atomic.Bool
	shutdownErr     error // set before done is closed
	done            chan struct{}
	born            time.Time // the origin of ownedPartition.valid
}

// ownedPartition is the local state of a partition whose lease we hold.
type ownedPartition struct {
	epoch      int64
	ctx        context.Context // cancelled when the partition is revoked, lost or released
	cancel     context.CancelFunc
	revoking   bool      // assigned elsewhere: fetch nothing, release once drained
	validUntil time.Time // after it, deliver nothing before Redis confirms the lease
	// valid mirrors validUntil, as nanoseconds since the consumer's born,
	// for checks without the lock (Run, before each handler call).
	valid atomic.Int64
	// cursor continues a claim of the pending list ("" when none); a claim
	// runs after every grant and after every fetch whose reply may be lost.
	cursor     string
	cursorIdle time.Duration
	lastID     string // the newest entry ID seen in the partition ("" before the first fetch)
	// quiet: the last fetch found nothing to deliver and no claim is in
	// progress. A quiet partition is not fetched again until the waiter
	// sees a new entry in it, a message of it comes due, or quietUntil.
	quiet      bool
	quietUntil time.Time
	news       bool                // the watcher saw an entry after lastID (cleared by the next fetch)
	inRead     bool                // in the read the entry watcher sends (Consumer.wread): fetched by nothing else
	inflight   map[string]delivery // delivered, not yet acked
	// sentFloor is at or before the sent time of every message in
	// inflight (when it is not empty): a bound on when one can come due.
	sentFloor time.Time
	// nacks counts Nack calls on the partition; sentNacks is its value
	// when the fetch in flight was sent.
	nacks, sentNacks uint64
	// acked holds the messages acked while a fetch was in flight (ID ->
	// when the ack returned): that fetch may have claimed them before the
	// ack ran in Redis, and must not hand them out again.
	acked map[string]time.Time
	// releaseToken identifies the release of this lease across its
	// attempts (see rebalance.Release): "" until the first.
	releaseToken string
}

// delivery is when a message in flight was delivered: at is when the reply
// carrying it came back (when the application got it), sent when the fetch
// (or the touch that last reset its idle time in Redis) was sent. Redis
// delivered it in between.
type delivery struct{ at, sent time.Time }

// deliverLocked records the message id of op as delivered (again).
func (op *ownedPartition) deliverLocked(id string, at, sent time.Time) {
	if len(op.inflight) == 0 || sent.Before(op.sentFloor) {
		op.sentFloor = sent
	}
	op.inflight[id] = delivery{at: at, sent: sent}
}

// Stats are counters of a consumer since it was registered.
type Stats struct {
	Delivered   uint64 // messages returned by Read, redeliveries included
	Redelivered uint64 // of which redeliveries (delivery count > 1)
	Acked       uint64 // messages acknowledged
	Fenced      uint64 // partitions lost to another consumer while held
	Trimmed     uint64 // pending messages trimmed by retention before they were acked: lost
	// TrimmedUnread estimates the messages trimmed by retention before this
	// group read them at all: lost (see Stream retention).
	TrimmedUnread uint64
	Poison        uint64 // entries not written by this SDK
	DeadLettered  uint64 // messages moved to the group's dead letters
}

type stats struct {
	delivered, redelivered, acked, fenced, trimmed, trimmedUnread, poison, deadLettered atomic.Uint64
}

// Owned is a partition a consumer holds, with the epoch of its lease.
type Owned struct {
	Partition int
	Epoch     int64
}

// RegisterConsumer joins group on stream as a new consumer and returns it.
// The group is created on every partition if missing (at WithStartPosition's
// position). batchSize bounds the messages of one Read; a message not acked
// within maxProcessingTime is delivered again, before anything newer of its
// partition. It returns ErrStreamNotFound for a stream never registered.
//
// The consumer holds the leases of the partitions it owns and renews them in
// the background until Shutdown.
func (s *Segmenter) RegisterConsumer(ctx context.Context, stream, group string, batchSize int, maxProcessingTime time.Duration, opts ...ConsumerOption) (*Consumer, error) {
	o, err := consumerArgs(group, batchSize, maxProcessingTime, opts)
	if serr := validateName("stream", stream); serr != nil {
		err = errors.Join(serr, err)
	}
	if err != nil {
		return nil, err
	}
	meta, err := s.lookupStream(ctx, stream)
	if err != nil {
		return nil, err
	}
	// A consumer never hashes keys: any partitioner will do.
	p, err := partition.ByName(meta.partitioner)
	if err != nil {
		p = unknownPartitioner{meta.partitioner}
	}
	st := newStream(s, stream, meta, p)
	if err := s.createGroup(ctx, st, group, o.start); err != nil {
		return nil, err
	}

	c := &Consumer{
		seg:        s,
		stream:     st,
		group:      group,
		id:         o.name,
		batch:      batchSize,
		maxProc:    maxProcessingTime,
		log:        s.log.With("stream", stream, "group", group, "consumer", o.name),
		parts:      make(map[int]*ownedPartition),
		broken:     make(map[int]bool),
		gen:        -1,
		assigned:   map[int]bool{},
		listener:   o.listener,
		hooks:      newHooks(append(append([]Hook(nil), s.cfg.Hooks...), o.hooks...)),
		opts:       o,
		wake:       make(chan struct{}, 1),
		newEntries: make(chan struct{}, 1),
		changed:    make(chan struct{}),
		done:       make(chan struct{}),
		born:       time.Now(),
	}
	c.leaseKeys = make([]string, st.Partitions())
	for i := range c.leaseKeys {
		c.leaseKeys[i] = s.keys.Lease(stream, i, group)
	}
	c.groupKeys = rebalance.Group{
		Members:     s.keys.Members(stream, group),
		Assignment:  s.keys.Assignment(stream, group),
		Coordinator: s.keys.Coordinator(stream, group),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())

	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	s.notify.add(ctx, c)
	// Join: heartbeat, rebalance, learn the assignment, acquire what is
	// free, so that a lone consumer owns its partitions before its first Read.
	for i := 0; i < 3 && c.tick(ctx); i++ {
	}
	c.wg.Add(1)
	go c.loop()
	// Registered only now, so that a concurrent Close shuts down a
	// consumer that is whole; one that came after Close is shut down here.
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.consumers[c] = struct{}{}
	}
	s.mu.Unlock()
	if closed {
		_ = c.Shutdown(ctx)
		return nil, ErrClosed
	}
	c.log.Debug("consumer registered", "partitions", st.Partitions(), "owned", len(c.Assignment()))
	return c, nil
}

// consumerArgs applies opts and checks the arguments of RegisterConsumer
// but the stream, reporting every problem at once.
func consumerArgs(group string, batchSize int, maxProcessingTime time.Duration, opts []ConsumerOption) (consumerOptions, error) {
	o := consumerOptions{start: StartEarliest}
	for _, opt := range opts {
		if opt != nil {
			opt.applyConsumer(&o)
		}
	}
	if o.name == "" {
		o.name = uuid.NewString()
	}
	var errs []error
	for _, n := range [][2]string{{"group", group}, {"consumer", o.name}} {
		if err := validateName(n[0], n[1]); err != nil {
			errs = append(errs, err)
		}
	}
	if batchSize < 1 || batchSize > MaxBatchSize {
		errs = append(errs, invalid("batchSize is %d, must be 1 to %d", batchSize, MaxBatchSize))
	}
	if maxProcessingTime < time.Millisecond {
		errs = append(errs, invalid("maxProcessingTime %v is below 1ms", maxProcessingTime))
	}
	if o.start != StartEarliest && o.start != StartLatest {
		errs = append(errs, invalid("unknown StartPosition %d", o.start))
	}
	if o.maxDeliveries < 0 {
		errs = append(errs, invalid("MaxDeliveries %d is negative", o.maxDeliveries))
	}
	if o.poison != PoisonDeliver && o.poison != PoisonDeadLetter {
		errs = append(errs, invalid("unknown PoisonPolicy %d", o.poison))
	}
	return o, errors.Join(errs...)
}

// createGroup creates group on every partition of st where it is missing.
// A new group starts at start; a group registered before that is missing on
// a partition (the partition was deleted or flushed) is created there anew
// at the partition's start, never at its end, and reported: only entries
// that are gone are lost.
func (s *Segmenter) createGroup(ctx context.Context, st *Stream, group string, start StartPosition) error {
	known, err := s.rdb.SIsMember(ctx, s.keys.Groups(st.name), group).Result()
	if err != nil {
		return fmt.Errorf("segmenter: create group %q on stream %q: %w", group, st.name, err)
	}
	pos := "0"
	if start == StartLatest && !known {
		pos = "$"
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StatusCmd, st.Partitions())
	for i, key := range st.keys {
		cmds[i] = pipe.XGroupCreateMkStream(ctx, key, group, pos)
	}
	add := pipe.SAdd(ctx, s.keys.Groups(st.name), group)
	_, _ = pipe.Exec(ctx)
	var recreated, refused []int
	for i, cmd := range cmds {
		switch err := cmd.Err(); {
		case err == nil && known:
			recreated = append(recreated, i)
		case err != nil && redis.HasErrorPrefix(err, "OOM"):
			refused = append(refused, i)
		case err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP"):
			return fmt.Errorf("segmenter: create group %q on stream %q partition %d: %w", group, st.name, i, err)
		}
	}
	if len(refused) > 0 {
		// Out of memory (maxmemory, noeviction), Redis refuses XGROUP
		// CREATE even where the group exists: a consumer joins all the
		// same where it does.
		pipe := s.rdb.Pipeline()
		infos := make([]*redis.XInfoGroupsCmd, len(refused))
		for j, i := range refused {
			infos[j] = pipe.XInfoGroups(ctx, st.keys[i])
		}
		_, _ = pipe.Exec(ctx)
		for j, i := range refused {
			gs, _ := infos[j].Result()
			if !slices.ContainsFunc(gs, func(g redis.XInfoGroup) bool { return g.Name == group }) {
				return fmt.Errorf("segmenter: create group %q on stream %q partition %d: %w", group, st.name, i, cmds[i].Err())
			}
		}
	}
	if err := add.Err(); err != nil && !(known && redis.HasErrorPrefix(err, "OOM")) {
		return fmt.Errorf("segmenter: register group %q of stream %q: %w", group, st.name, err)
	}
	if len(recreated) > 0 {
		s.reportError(fmt.Errorf("segmenter: stream %q group %q was missing on partitions %v (deleted or flushed): created again from their first entry: %w",
			st.name, group, recreated, ErrGroupNotFound))
	}
	return nil
}

// unknownPartitioner stands for a custom partitioner a consumer's process
// does not have; consumers never hash keys.
type unknownPartitioner struct{ name string }

func (u unknownPartitioner) Name() string { return u.name }

func (u unknownPartitioner) Partition([]byte, int) int {
	panic("segmenter: stream uses partitioner " + u.name + ": get it with GetStream and WithPartitioner")
}

// ID returns the consumer's name, unique in its group.
func (c *Consumer) ID() string { return c.id }

// Group returns the consumer's group.
func (c *Consumer) Group() string { return c.group }

// Stream returns the stream the consumer reads.
func (c *Consumer) Stream() *Stream { return c.stream }

// Assignment returns the partitions the consumer holds now, with the epoch of
// each lease, in partition order.
func (c *Consumer) Assignment() []Owned {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Owned, 0, len(c.parts))
	for p, op := range c.parts {
		out = append(out, Owned{Partition: p, Epoch: op.epoch})
	}
	slices.SortFunc(out, func(a, b Owned) int { return a.Partition - b.Partition })
	return out
}

// Stats returns the consumer's counters.
func (c *Consumer) Stats() Stats {
	return Stats{
		Delivered:     c.stats.delivered.Load(),
		Redelivered:   c.stats.redelivered.Load(),
		Acked:         c.stats.acked.Load(),
		Fenced:        c.stats.fenced.Load(),
		Trimmed:       c.stats.trimmed.Load(),
		TrimmedUnread: c.stats.trimmedUnread.Load(),
		Poison:        c.stats.poison.Load(),
		DeadLettered:  c.stats.deadLettered.Load(),
	}
}

func (c *Consumer) session() time.Duration { return c.seg.cfg.SessionTimeout }

// setValidLocked sets until when op may be delivered without news from Redis.
func (c *Consumer) setValidLocked(op *ownedPartition, until time.Time) {
	op.validUntil = until
	op.valid.Store(int64(until.Sub(c.born)))
}

// stillValid reports, without the lock, whether op may still be delivered
// by the local clock.
func (c *Consumer) stillValid(op *ownedPartition) bool {
	return int64(time.Since(c.born)) < op.valid.Load()
}

// validity is how long after sending a successful grant or renewal the
// consumer keeps delivering a partition on its own: the lease TTL (the
// session timeout) less a margin for clock rate differences and the
// request's own travel.
func (c *Consumer) validity() time.Duration { return c.session() - c.session()/5 }

// loop runs a tick every heartbeat interval, sooner while the consumer waits
// for a partition to be handed over to it or hands one over itself.
func (c *Consumer) loop() {
	defer c.wg.Done()
	interval := c.seg.cfg.HeartbeatInterval
	const firstRetry = 5 * time.Millisecond
	retry := firstRetry
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		case <-c.wake:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		}
		next := interval
		urgent := c.tick(c.ctx)
		c.checkRetention(c.ctx) // at most every RetentionCheckInterval
		if urgent {
			next, retry = min(retry, interval), min(2*retry, interval)
		} else {
			retry = firstRetry
		}
		t.Reset(next)
	}
}

// tickTimeout bounds the round trip of one tick of the background loop to
// half the session: with a heartbeat interval of at most half the session,
// heartbeats are never further apart than the session.
func (c *Consumer) tickTimeout() time.Duration { return c.session() / 2 }

func (c *Consumer) wakeLoop() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// tick heartbeats, renews the leases held and asks for the assigned
// partitions not held, in one round trip; then applies a new assignment,
// releases revoked partitions once drained, and rebalances the group when
// the heartbeat says so. It reports whether another tick should follow
// soon (a hand-over in progress).
func (c *Consumer) tick(ctx context.Context) (urgent bool) {
	c.tickMu.Lock() // leave must not interleave with a heartbeat in flight
	defer c.tickMu.Unlock()
	defer c.flushEvents()
	c.mu.Lock()
	closing := c.closing
	t := rebalance.Tick{
		Group:     c.groupKeys,
		Member:    c.id,
		Session:   c.session(),
		KnownGen:  c.gen,
		KnownInc:  c.inc,
		Heartbeat: !closing, // a leaving member must not rejoin
	}
	// A lease is renewed once half its validity is gone: a few heartbeats
	// apart (each renewal extends it by a session), so that renewals that
	// fail still leave several heartbeats to retry before the consumer
	// stops delivering the partition (renewing at every heartbeat cost an
	// idle group's Redis most of its load).
	heldParts := make([]int, 0, len(c.parts))
	renewBy := time.Now().Add(c.session() / 2)
	for p, op := range c.parts {
		if op.validUntil.Before(renewBy) {
			t.Renew = append(t.Renew, rebalance.Held{Key: c.leaseKeys[p], Epoch: op.epoch})
			heldParts = append(heldParts, p)
		}
	}
	var askParts []int
	if !closing {
		for p := range c.assigned {
			if _, held := c.parts[p]; !held && !c.broken[p] {
				t.Acquire = append(t.Acquire, c.leaseKeys[p])
				askParts = append(askParts, p)
			}
		}
	}
	c.mu.Unlock()

	sent := time.Now()
	// Bounded, so that a node that does not answer (a cluster node cut
	// off, whose commands go-redis retries) cannot hold the heartbeats up
	// past the session: the member stays in its group, and only the
	// partitions on that node pause.
	tctx, cancel := context.WithTimeout(ctx, c.tickTimeout())
	res := rebalance.RunTick(tctx, c.seg.rdb, t)
	cancel()
	quiet := ctx.Err() != nil // shutting down: record what happened, report nothing

	c.mu.Lock()
	for i, r := range res.Renewed {
		p := heldParts[i]
		op, ok := c.parts[p]
		if !ok || op.epoch != t.Renew[i].Epoch {
			continue
		}
		switch {
		case r.Err != nil:
			if !quiet {
				c.reportLocked(p, fmt.Errorf("renew lease: %w", r.Err))
			}
		case r.Fenced:
			c.dropLocked(p, ErrFenced, true)
		default:
			c.setValidLocked(op, sent.Add(c.validity()))
		}
	}
	gained := false
	for i, g := range res.Grants {
		p := askParts[i]
		switch {
		case g.Err != nil:
			if !quiet {
				c.reportLocked(p, fmt.Errorf("acquire lease: %w", g.Err))
			}
		case g.Granted:
			pctx, cancel := context.WithCancel(c.ctx)
			op := &ownedPartition{
				epoch:    g.Epoch,
				ctx:      pctx,
				cancel:   cancel,
				cursor:   "0-0", // deliver the pending list first
				inflight: make(map[string]delivery),
			}
			c.setValidLocked(op, sent.Add(c.validity()))
			c.parts[p] = op
			gained = true
			c.events = append(c.events, PartitionEvent{Kind: PartitionAssigned, Partition: p, Epoch: g.Epoch})
			c.log.Info("partition acquired", "partition", p, "epoch", g.Epoch)
		}
	}
	need := false
	var learned *RebalanceEvent // for the hooks, called outside the lock
	if t.Heartbeat {
		b := res.Beat
		switch {
		case b.Err != nil:
			if !quiet {
				c.reportLocked(-1, fmt.Errorf("heartbeat: %w", b.Err))
			}
		case b.Gen > c.gen || (c.gen < 0 && b.Gen == 0) || b.Incarnation != c.inc:
			// Never act on a generation older than one already seen, unless
			// the assignment was lost and its history started anew.
			c.gen, c.inc = b.Gen, b.Incarnation
			c.assigned = make(map[int]bool, len(b.Partitions))
			for _, p := range b.Partitions {
				if p >= 0 && p < len(c.leaseKeys) {
					c.assigned[p] = true
				}
			}
			c.log.Debug("assignment", "generation", b.Gen, "partitions", b.Partitions)
			if len(c.hooks.rebalance) > 0 {
				learned = &RebalanceEvent{Stream: c.stream.name, Group: c.group, Consumer: c.id,
					Generation: b.Gen, Partitions: slices.Clone(b.Partitions)}
			}
			urgent = true
		}
		need = b.NeedRebalance && b.Err == nil
	}
	// Partitions no longer ours: stop fetching them, release once drained.
	now := time.Now()
	var release []rebalance.Held
	var releaseParts []int
	for p, op := range c.parts {
		if closing || !c.assigned[p] {
			op.revoking = true
			op.cancel() // Run's handlers of the partition stop
		}
		if op.revoking && c.drainedLocked(op, now) {
			release = append(release, c.releaseOfLocked(p, op))
			releaseParts = append(releaseParts, p)
		}
		if op.revoking {
			urgent = true
		}
	}
	for p := range c.assigned {
		if _, held := c.parts[p]; !held && !closing && !c.broken[p] {
			urgent = true // waiting for the previous owner to hand it over
		}
	}
	if gained {
		c.notifyLocked()
	}
	c.mu.Unlock()

	if learned != nil {
		for _, h := range c.hooks.rebalance {
			h.OnRebalance(*learned)
		}
	}
	if len(release) > 0 {
		c.releasePartitions(ctx, releaseParts, release)
	}
	if need && !closing {
		gen, moved, err := rebalance.Rebalance(ctx, c.seg.rdb, c.groupKeys, c.id+":"+uuid.NewString(), c.stream.Partitions(), c.session())
		switch {
		case err == nil:
			c.log.Info("group rebalanced", "generation", gen, "moved", moved)
			c.seg.notify.publish(ctx, c)
			urgent = true
		case errors.Is(err, rebalance.ErrCoordinatorBusy), errors.Is(err, rebalance.ErrGenerationChanged):
			urgent = true // another member is at it, or got there first: learn the result soon
		default:
			c.seg.reportError(fmt.Errorf("segmenter: stream %q group %q consumer %q: rebalance: %w", c.stream.name, c.group, c.id, err))
		}
	}
	return urgent
}

// drainedLocked reports whether a revoked partition can be released: none
// of its delivered messages is waiting for an ack, except ones past
// maxProcessingTime (due for redelivery to the next owner anyway), or its
// lease is no longer ours by the local clock.
func (c *Consumer) drainedLocked(op *ownedPartition, now time.Time) bool {
	if !now.Before(op.validUntil) {
		return true
	}
	for _, d := range op.inflight {
		if now.Before(d.at.Add(c.maxProc)) {
			return false
		}
	}
	return true
}

// releaseOfLocked returns what releases op, partition p's lease: the same
// token for every attempt, so that one sent again after a reply was lost is
// known for what it is (not a loss).
func (c *Consumer) releaseOfLocked(p int, op *ownedPartition) rebalance.Held {
	if op.releaseToken == "" {
		op.releaseToken = uuid.NewString()
	}
	return rebalance.Held{Key: c.leaseKeys[p], Epoch: op.epoch, Token: op.releaseToken}
}

// releasePartitions releases the leases of parts and forgets them.
func (c *Consumer) releasePartitions(ctx context.Context, parts []int, held []rebalance.Held) {
	res := rebalance.Release(ctx, c.seg.rdb, c.id, held)
	defer c.seg.notify.publish(ctx, c) // the next owners take them now
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, r := range res {
		p := parts[i]
		op, ok := c.parts[p]
		if !ok || op.epoch != held[i].Epoch {
			continue
		}
		if r.Err != nil {
			c.reportLocked(p, fmt.Errorf("release lease: %w", r.Err))
			continue // retried on the next tick; else it expires
		}
		if r.Fenced {
			// The lease was not ours any more: it expired and went to
			// another consumer (a heartbeat held up past the session
			// brought the news late). A loss, not a hand-over.
			c.dropLocked(p, ErrFenced, true)
			continue
		}
		op.cancel()
		delete(c.parts, p)
		c.events = append(c.events, PartitionEvent{Kind: PartitionRevoked, Partition: p, Epoch: op.epoch})
		c.log.Info("partition handed over", "partition", p, "epoch", op.epoch)
	}
	c.notifyLocked()
}

// reportLocked queues a background error (partition -1: the group's) for
// Config.OnError, which flushEvents calls outside the lock.
func (c *Consumer) reportLocked(p int, err error) {
	if p >= 0 {
		err = &PartitionError{Stream: c.stream.name, Group: c.group, Partition: p, Err: err}
	} else {
		err = fmt.Errorf("segmenter: stream %q group %q consumer %q: %w", c.stream.name, c.group, c.id, err)
	}
	c.bgErrs = append(c.bgErrs, err)
}

// flushEvents gives the queued background errors to Config.OnError and the
// queued partition events to the listener and hooks, in order. One
// goroutine flushes at a time; a call made meanwhile (from another
// goroutine, or from a listener calling the consumer) leaves its events to
// that one, so callbacks may call the consumer.
func (c *Consumer) flushEvents() {
	c.mu.Lock()
	if c.flushing {
		c.mu.Unlock()
		return
	}
	c.flushing = true
	for len(c.events) > 0 || len(c.bgErrs) > 0 {
		events, errs := c.events, c.bgErrs
		c.events, c.bgErrs = nil, nil
		c.mu.Unlock()
		for _, err := range errs {
			c.seg.reportError(err)
		}
		for _, e := range events {
			e.Stream = c.stream.name
			if c.listener != nil {
				c.listener(e)
			}
			for _, h := range c.hooks.partition {
				h.OnPartition(e)
			}
		}
		c.mu.Lock()
	}
	c.flushing = false
	c.mu.Unlock()
}

// dropLocked forgets partition p; with queue, err is returned by the next Read.
func (c *Consumer) dropLocked(p int, err error, queue bool) {
	op, ok := c.parts[p]
	if !ok {
		return
	}
	op.cancel()
	delete(c.parts, p)
	if errors.Is(err, ErrFenced) {
		c.stats.fenced.Add(1)
	}
	c.log.Warn("partition lost", "partition", p, "epoch", op.epoch, "err", err)
	c.events = append(c.events, PartitionEvent{Kind: PartitionLost, Partition: p, Epoch: op.epoch, Err: err})
	if queue {
		c.errs = append(c.errs, &PartitionError{Stream: c.stream.name, Group: c.group, Partition: p, Err: err})
	}
	c.notifyLocked()
}

func (c *Consumer) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Read returns up to the batch size of messages (fewer with
// WithMaxMessages) from the partitions the consumer owns, each partition's
// messages in stream order, messages due for redelivery before newer ones of
// their partition. When there are none it waits for new messages up to
// maxWait (0: do not wait) and then returns an empty batch and a nil error.
//
// Every read runs, in Redis, after a check that the consumer still holds the
// partition's lease under its epoch. A partition found lost is dropped and
// Read returns a *PartitionError wrapping ErrFenced once; later Reads go on
// with the other partitions. After Shutdown, Read returns ErrClosed.
func (c *Consumer) Read(ctx context.Context, maxWait time.Duration, opts ...ReadOption) ([]*contracts.CMessage, error) {
	budget, err := readBudget(c.batch, maxWait, opts)
	if err != nil {
		return nil, err
	}
	defer c.flushEvents() // after the unlock: a listener may call Read
	c.readMu.Lock()
	defer c.readMu.Unlock()
	deadline := time.Now().Add(maxWait)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		msgs, err := c.fetchRound(ctx, budget, nil, nil)
		if len(msgs) > 0 || err != nil {
			return msgs, err
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return nil, nil
		}
		msgs, err = c.wait(ctx, min(remaining, c.seg.cfg.BlockInterval), budget, nil, nil)
		if len(msgs) > 0 || err != nil {
			return msgs, err
		}
	}
}

// keepValid returns the messages of msgs whose partition is still held,
// under their epoch, with a lease valid at now by the local clock. The
// others stay pending in Redis; their partitions claim the pending list
// again before reading anything new.
func (c *Consumer) keepValid(msgs []*contracts.CMessage, now time.Time) []*contracts.CMessage {
	c.mu.Lock()
	defer c.mu.Unlock()
	kept := msgs[:0]
	var back []*contracts.CMessage
	for _, m := range msgs {
		op, ok := c.parts[int(m.Partition)]
		if ok && op.epoch == m.Epoch && now.Before(op.validUntil) {
			kept = append(kept, m)
			continue
		}
		back = append(back, m)
	}
	c.handBackLocked(back)
	return kept
}

// handBackLocked undoes the delivery of msgs, fetched but not handed out:
// they stay pending in Redis, and their partitions claim the pending list
// again before reading anything new, so they come first.
func (c *Consumer) handBackLocked(msgs []*contracts.CMessage) {
	for _, m := range msgs {
		c.stats.delivered.Add(^uint64(0))
		if m.DeliveryCount > 1 {
			c.stats.redelivered.Add(^uint64(0))
		}
		if m.PoisonReason != "" {
			c.stats.poison.Add(^uint64(0))
		}
		if op, ok := c.parts[int(m.Partition)]; ok && op.epoch == m.Epoch {
			delete(op.inflight, m.Id)
			op.cursor, op.cursorIdle, op.quiet = "0-0", 0, false
		}
	}
}

// onDeliver tells the deliver hooks of a batch.
func (c *Consumer) onDeliver(msgs []*contracts.CMessage, start, end time.Time) {
	if len(c.hooks.deliver) > 0 {
		ev := DeliverEvent{Stream: c.stream.name, Group: c.group, Consumer: c.id, Messages: msgs, Start: start, End: end}
		for _, h := range c.hooks.deliver {
			h.OnDeliver(ev)
		}
	}
	if len(c.hooks.redeliver) > 0 {
		for _, m := range msgs {
			if m.DeliveryCount > 1 {
				ev := RedeliverEvent{Stream: c.stream.name, Group: c.group, Consumer: c.id, Message: m}
				for _, h := range c.hooks.redeliver {
					h.OnRedeliver(ev)
				}
			}
		}
	}
}

// fetchRound fetches, without waiting, up to budget messages from the
// partitions the consumer may deliver now (at most limit(p) from partition p
// when limit is not nil). It returns the messages or the first error. When
// acks is not nil, the first fetch may carry the acknowledgement of *acks
// (see fetchOnce).
func (c *Consumer) fetchRound(ctx context.Context, budget int, limit func(int) int, acks *[]*contracts.CMessage) ([]*contracts.CMessage, error) {
	// The watcher's read of an earlier wait, if it ran or one of its
	// partitions must be fetched otherwise (Read with no wait never waits
	// for it).
	if read := c.wread; read != nil && (read.finished() || c.mustCollect(read)) {
		if msgs := c.collect(ctx, read, budget, limit); len(msgs) > 0 {
			return msgs, nil
		}
	}
	// A batch all dead-lettered on the way is no reason to wait: go on.
	// Nor are partitions left out for want of budget (fewer messages
	// asked for than partitions to fetch): each fetch takes the next ones
	// in turn, and a partition found empty waits for the entry watcher, so
	// this ends once every partition was looked at.
	for deadRounds, rounds := 0, 0; deadRounds < 4 && rounds <= len(c.leaseKeys); rounds++ {
		msgs, err, dead := c.fetchOnce(ctx, budget, limit, acks)
		if len(msgs) > 0 || err != nil {
			return msgs, err
		}
		c.mu.Lock()
		leftOut := c.leftOut
		c.mu.Unlock()
		switch {
		case dead > 0:
			deadRounds++
		case leftOut == 0:
			return nil, nil
		}
	}
	return nil, nil
}

// fetchOnce is one fetchRound; dead counts the messages it dead-lettered.
//
// With acks (Run's), a fetch that runs natively on a single node also
// acknowledges *acks, in its own transaction, behind the same guard: one
// round trip and one fence check where an Ack and a fetch take two. The
// outcome is reported as Ack reports it (hooks, counters), an error of
// unknown outcome to Config.OnError as Run's acker does, and *acks then
// holds only the messages whose ack's outcome is unknown, for the caller to
// send again; otherwise the caller sends them all.
func (c *Consumer) fetchOnce(ctx context.Context, budget int, limit func(int) int, acks *[]*contracts.CMessage) (_ []*contracts.CMessage, _ error, dead int) {
	plan, err := c.prepareFetch(budget, limit)
	if err != nil || plan == nil {
		return nil, err, 0
	}
	var groups []ackGroup
	var carried []*contracts.CMessage
	if acks != nil && len(*acks) > 0 && rebalance.CanFetchAck(ctx, c.seg.rdb, plan.reqs) {
		if g, err := c.groupAcks(*acks); err == nil {
			groups, carried, *acks = g, *acks, nil
		}
	}
	start := time.Now()
	var res []rebalance.FetchResult
	if groups != nil {
		// Acks are sent even when ctx ends (as Run's acker sends them).
		var acked []rebalance.AckResult
		res, acked = rebalance.FetchAck(context.WithoutCancel(ctx), c.seg.rdb, c.id, c.group, c.maxProc, plan.reqs, c.ackRequests(groups))
		// The acks ran before the read, or before a fallback read was
		// sent: the read cannot have claimed their messages first.
		// Those of unknown outcome go back to the caller, which sends them
		// again (Run's acker), as for an Ack of its own.
		*acks = c.unknownAcks(carried, c.applyAck(groups, acked, start, false))
	} else {
		res = rebalance.Fetch(ctx, c.seg.rdb, c.id, c.group, c.maxProc, plan.reqs)
	}
	msgs, err := c.applyFetch(plan, res, start, true)
	c.releaseBroken()
	if err == nil && len(msgs) > 0 && len(msgs) < budget {
		// Partitions that filled their share may hold more: one more
		// round among them fills the batch.
		msgs = c.fillBatch(ctx, budget, msgs, plan, res, limit)
	}
	return c.deliver(ctx, msgs, err, start)
}

// deliver hands fetched messages out (the dead letters taken out, and the
// leases' validity checked at the moment of delivery), with fetch error err
// queued for the next call if some are delivered. dead counts the messages
// dead-lettered.
func (c *Consumer) deliver(ctx context.Context, msgs []*contracts.CMessage, err error, start time.Time) (_ []*contracts.CMessage, _ error, dead int) {
	if n := len(msgs); n > 0 && (c.opts.maxDeliveries > 0 || c.opts.poison == PoisonDeadLetter) {
		msgs = c.deadLetterDelivered(ctx, msgs, c.deadLetterReason)
		dead = n - len(msgs)
	}
	if len(msgs) > 0 {
		// The moment of delivery, checked against the leases' validity
		// once more: the batch-filling round and the dead letters took
		// round trips since the replies were checked (the process may have
		// been paused meanwhile). A partition delivered now was still ours
		// now, whatever happens to the process after.
		end := time.Now()
		msgs = c.keepValid(msgs, end)
		if err != nil {
			c.mu.Lock()
			c.errs = append(c.errs, err) // for the next call
			c.mu.Unlock()
		}
		if len(msgs) == 0 {
			return nil, err, dead
		}
		c.onDeliver(msgs, start, end)
		return msgs, nil, dead
	}
	return nil, err, dead
}

// fillBatch runs a second fetch round among the partitions whose first
// round returned a full share.
func (c *Consumer) fillBatch(ctx context.Context, budget int, msgs []*contracts.CMessage, plan *fetchPlan, res []rebalance.FetchResult, limit func(int) int) []*contracts.CMessage {
	full := make(map[int]int)
	for i, r := range res {
		if r.Err == nil && !r.Fenced && len(r.Entries) == plan.reqs[i].Count {
			left := MaxBatchSize
			if limit != nil {
				left = limit(plan.parts[i]) - len(r.Entries)
			}
			if left > 0 {
				full[plan.parts[i]] = left
			}
		}
	}
	if len(full) == 0 {
		return msgs
	}
	plan2, err := c.prepareFetch(budget-len(msgs), func(p int) int { return full[p] })
	if err != nil || plan2 == nil {
		return msgs
	}
	// This round starts no claim of messages due for redelivery: one that
	// came due since the first round must not follow newer messages of its
	// partition in this batch. It goes first in the next one.
	sent := time.Now()
	res2 := rebalance.Fetch(ctx, c.seg.rdb, c.id, c.group, rebalance.NeverDue, plan2.reqs)
	more, err := c.applyFetch(plan2, res2, sent, false)
	if err != nil {
		c.mu.Lock()
		c.errs = append(c.errs, err) // for the next call
		c.mu.Unlock()
	}
	return append(msgs, more...)
}

// fetchPlan is one fetch round: a request per partition, and what the
// consumer must check of each reply.
type fetchPlan struct {
	reqs  []rebalance.FetchRequest
	parts []int
	// notDueUntil[i], for a request that skips the redelivery check in
	// Redis (SkipDue): until when none of its partition's messages in
	// flight can be due, by the consumer's clock (zero: none in flight).
	// A reply that comes later is not delivered.
	notDueUntil []time.Time
	// watched: the entry watcher sends it behind its XREAD (see
	// watchRead), which replied is when its reply came; it does not count
	// in Consumer.fetching (it reads nothing but new entries, and any claim
	// its fallback makes is sent after it returned).
	watched bool
	replied time.Time
}

// prepareFetch returns a fetch request for each partition the consumer may
// deliver now (among those with limit(p) > 0, when limit is not nil),
// sharing budget among them; or the first queued partition error. It
// returns nil when there is nothing to fetch.
func (c *Consumer) prepareFetch(budget int, limit func(int) int) (*fetchPlan, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return nil, ErrClosed
	}
	if len(c.errs) > 0 {
		err := c.errs[0]
		c.errs = c.errs[1:]
		return nil, err
	}
	now := time.Now()
	ready := make([]int, 0, len(c.parts))
	var caps []int // limit(ready[i])
	for p, op := range c.parts {
		if !now.Before(op.validUntil) || op.revoking || op.inRead {
			continue
		}
		if op.quiet && now.Before(op.quietUntil) && !c.dueLocked(op, now) {
			continue // nothing there: the waiter tells when something comes
		}
		if limit != nil {
			n := limit(p)
			if n <= 0 {
				continue
			}
			caps = append(caps, n)
		}
		ready = append(ready, p)
	}
	c.leftOut = max(0, len(ready)-budget)
	plan := c.planLocked(ready, caps, budget, now, 0)
	if plan != nil {
		c.fetching++ // until applyFetch
	}
	return plan, nil
}

// planLocked shares budget among the partitions of ready (at most caps[i]
// for ready[i] when caps is not nil) and returns their fetch requests, nil
// when ready is empty. A request skips the redelivery check in Redis when
// nothing of its partition can come due within horizon + the usual margin
// (see notDueUntilLocked): horizon is how late its reply may come.
func (c *Consumer) planLocked(ready, caps []int, budget int, now time.Time, horizon time.Duration) *fetchPlan {
	if len(ready) == 0 {
		return nil
	}
	order := make([]int, len(ready))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return ready[a] - ready[b] })
	// Rotate the start so that, when the batch is smaller than the number of
	// partitions, every partition gets its turn.
	c.rotate = (c.rotate + 1) % len(ready)
	n := min(len(ready), budget)
	base, extra := budget/n, budget%n
	plan := &fetchPlan{
		reqs:        make([]rebalance.FetchRequest, n),
		parts:       make([]int, n),
		notDueUntil: make([]time.Time, n),
	}
	prefix := c.id + ":"
	for i := range n {
		k := order[(c.rotate+i)%len(ready)]
		p := ready[k]
		op := c.parts[p]
		c.fetchSeq++
		count := base
		if i < extra {
			count++
		}
		if caps != nil {
			count = min(count, caps[k])
		}
		op.sentNacks = op.nacks
		plan.parts[i] = p
		r := &plan.reqs[i]
		*r = rebalance.FetchRequest{
			LeaseKey:   c.leaseKeys[p],
			StreamKey:  c.stream.keys[p],
			Epoch:      op.epoch,
			Count:      count,
			Cursor:     op.cursor,
			CursorIdle: op.cursorIdle,
			FetchID:    prefix + strconv.FormatUint(c.fetchSeq, 10),
			NeedTop:    op.lastID == "",
		}
		if op.cursor == "" {
			plan.notDueUntil[i], r.SkipDue = c.notDueUntilLocked(op, now, horizon)
		}
	}
	return plan
}

// applyFetch turns fetch results into messages and updates the partitions'
// state (dueChecked: the fetch looked for messages due for redelivery). It
// returns the messages and the first error.
func (c *Consumer) applyFetch(plan *fetchPlan, res []rebalance.FetchResult, sent time.Time, dueChecked bool) ([]*contracts.CMessage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !plan.watched {
		c.fetching--
	}
	parts, reqs := plan.parts, plan.reqs
	if plan.watched {
		for i, p := range parts {
			if op, ok := c.parts[p]; ok && op.epoch == reqs[i].Epoch {
				op.inRead = false
			}
		}
	}
	var firstErr error
	now := time.Now()
	replied := now // when the reply came
	if !plan.replied.IsZero() {
		replied = plan.replied
	}
	// The messages, and their data, come from one allocation each.
	total, size := 0, 0
	for _, r := range res {
		total += len(r.Entries)
		for _, e := range r.Entries {
			size += dataSize(e.Fields)
		}
	}
	slab := make([]contracts.CMessage, total)
	data := make([]byte, 0, size)
	msgs := make([]*contracts.CMessage, 0, total)
	for i, r := range res {
		p := parts[i]
		op, ok := c.parts[p]
		if !ok || op.epoch != reqs[i].Epoch || op.revoking || c.closing {
			// Dropped or being handed over meanwhile (its release may be
			// under way): what was read stays pending, and the next owner
			// delivers it first.
			continue
		}
		switch {
		case r.Fenced:
			c.dropLocked(p, ErrFenced, true)
			continue
		case !now.Before(op.validUntil):
			// The reply came after the lease's local validity (the process
			// or its link stalled): another consumer may own the partition
			// by now and have delivered these. Deliver nothing; once a
			// renewal confirms the lease, the pending list is claimed again.
			op.cursor, op.cursorIdle = "0-0", 0
			continue
		case r.DueSkipped && !plan.notDueUntil[i].IsZero() && !replied.Before(plan.notDueUntil[i]):
			// The read skipped the redelivery check, and its reply came
			// after a message in flight may have come due: it may have
			// read newer ones before it. Deliver nothing; the pending
			// list is claimed again, oldest first.
			op.cursor, op.cursorIdle, op.quiet = "0-0", 0, false
			continue
		case r.Err != nil && redis.HasErrorPrefix(r.Err, "NOGROUP"):
			c.toRelease = append(c.toRelease, rebalance.Held{Key: c.leaseKeys[p], Epoch: op.epoch})
			c.broken[p] = true // never silently recreated: the user must act
			c.dropLocked(p, fmt.Errorf("%w: %v", ErrGroupNotFound, r.Err), true)
			continue
		case r.Err != nil:
			// The outcome is unknown: the read may have moved messages to
			// the pending list unseen. Claim it before reading anything new.
			op.cursor, op.cursorIdle = "0-0", 0
			if firstErr == nil {
				firstErr = &PartitionError{Stream: c.stream.name, Group: c.group, Partition: p, Err: r.Err}
			}
			continue
		}
		if op.nacks != op.sentNacks {
			// Nacked while this fetch was on its way: what it read stays
			// pending, and the next fetch claims it all, the nacked
			// messages first.
			op.cursor, op.cursorIdle, op.quiet = "0-0", 0, false
			continue
		}
		if dueChecked && !r.DueSkipped && reqs[i].Cursor == "" && len(r.Deliveries) == 0 && r.NextCursor == "" {
			// Nothing was due in Redis when the fetch ran, so messages
			// delivered a maxProcessingTime before it was sent are no longer
			// pending: an ack whose reply was lost did succeed.
			for id, d := range op.inflight {
				if !d.at.Add(c.maxProc).After(sent) {
					delete(op.inflight, id)
				}
			}
		}
		op.cursor, op.cursorIdle = r.NextCursor, r.NextCursorIdle
		if len(r.Trimmed) > 0 {
			c.stats.trimmed.Add(uint64(len(r.Trimmed)))
			c.log.Error("pending messages were trimmed by retention before they were acked: lost",
				"partition", p, "count", len(r.Trimmed), "first_id", r.Trimmed[0])
			for _, id := range r.Trimmed {
				delete(op.inflight, id)
			}
		}
		if n := len(r.Entries); n > 0 && newerID(r.Entries[n-1].ID, op.lastID) {
			op.lastID = r.Entries[n-1].ID
		}
		if newerID(r.TopID, op.lastID) {
			op.lastID = r.TopID
		}
		news := op.news
		op.news = false
		if len(r.Entries) == 0 {
			if r.TopUnknown && news {
				// The watcher saw an entry after the newest one seen, yet
				// nothing was there to read: entries delivered before (by
				// another owner) lie between. Look the last entry up (the
				// scripts do) before waiting from it again.
				op.lastID = ""
				continue
			}
			if r.NextCursor == "" && !r.More {
				op.quiet, op.quietUntil = true, now.Add(c.quietFor())
			}
			continue
		}
		// Fewer entries than asked for, and no claim to go on with: the
		// partition is drained for now. It is watched from its newest entry
		// (an entry that came meanwhile wakes the watcher at once) instead
		// of being fetched again to find it empty.
		op.quiet = r.NextCursor == "" && !r.More && len(r.Entries) < reqs[i].Count
		op.quietUntil = now.Add(c.quietFor())
		// Acks that returned before this fetch was sent ran in Redis before
		// it: it cannot have claimed their messages.
		for id, at := range op.acked {
			if at.Before(sent) {
				delete(op.acked, id)
			}
		}
		// A claim of the whole pending list (after a lost reply or a Nack)
		// also returns messages the application still holds: they are not
		// handed out twice; nor are claimed messages whose ack ran after
		// the claim.
		for _, e := range r.Entries {
			if d, held := op.inflight[e.ID]; r.Reclaimed && held && now.Before(d.at.Add(c.maxProc)) {
				op.deliverLocked(e.ID, now, sent) // the claim reset its idle time in Redis
				continue
			}
			if _, done := op.acked[e.ID]; done {
				continue
			}
			m := &slab[len(msgs)]
			m.Id, m.Partition, m.DeliveryCount, m.Epoch = e.ID, uint32(p), 1, op.epoch
			m.Stream, m.Group = c.stream.name, c.group
			if r.Deliveries != nil {
				if n, ok := r.Deliveries[e.ID]; ok {
					m.DeliveryCount = uint32(n)
				}
			}
			decodeEntryInto(e.Fields, m, &data)
			if m.PoisonReason != "" {
				c.stats.poison.Add(1)
				c.log.Warn("poison entry", "partition", p, "id", e.ID, "reason", m.PoisonReason)
			}
			if m.DeliveryCount > 1 {
				c.stats.redelivered.Add(1)
			}
			op.deliverLocked(e.ID, now, sent)
			msgs = append(msgs, m)
		}
	}
	c.stats.delivered.Add(uint64(len(msgs)))
	return msgs, firstErr
}

// wait blocks up to d for something to read: a new entry in a partition
// found empty, a change of ownership, a delivered message coming due for
// redelivery, a signal on extra, or the end of ctx. New entries come from
// the Segmenter's entry watchers (a read-only XREAD BLOCK over the quiet
// partitions of its consumers: see watchers); where there are none (a
// client other than a *redis.Client or a *redis.ClusterClient), quiet
// partitions are polled.
//
// On a single node the watcher also sends, right behind its XREAD and on
// its connection, the fenced read of the quiet partitions the consumer may
// fetch (limit, as for fetchRound): Redis runs it as soon as the XREAD
// returns, so that the entry that woke it is read in the same round trip,
// not in a fetch after the wake-up. wait returns what that read delivered.
// It leaves the read out when it wakes for something else (an ack handed
// over, room in a partition, news of another one), and collects it (CLIENT
// UNBLOCK) only when one of its partitions must be fetched otherwise (a
// claim, a message due) or ctx ends.
func (c *Consumer) wait(ctx context.Context, d time.Duration, budget int, extra <-chan struct{}, limit func(int) int) ([]*contracts.CMessage, error) {
	pipelined := c.seg.watch.pipelines() && rebalance.Native(ctx, c.seg.rdb)
	changed, d, read := c.arm(d, budget, limit, pipelined)
	var readDone <-chan struct{}
	if read != nil {
		readDone = read.done
	}
	t := time.NewTimer(d)
	defer t.Stop()
	var err error
	select {
	case <-ctx.Done():
		err = ctx.Err()
	case <-changed:
	case <-c.newEntries:
	case <-extra:
	case <-t.C:
	case <-readDone:
	}
	if read == nil || !read.finished() && (err != nil || !c.mustCollect(read)) {
		// Left out: its partitions wait for it, the next wait or fetch
		// round takes it. (At the end of ctx it is not waited for.)
		return nil, err
	}
	msgs := c.collect(ctx, read, budget, limit)
	if len(msgs) > 0 {
		return msgs, nil // ctx's end shows at the next call
	}
	return nil, err
}

// armWait prepares a wait of up to d without a read behind the watcher's
// XREAD (a MultiConsumer waits on several consumers at once): it has the
// entry watcher watch the quiet partitions, and returns the channel closed
// by a change of ownership and how long to wait at most (shorter when a
// delivered message comes due, or where quiet partitions are polled). A
// signal on c.newEntries ends the wait too.
func (c *Consumer) armWait(d time.Duration) (<-chan struct{}, time.Duration) {
	changed, d, _ := c.arm(d, c.batch, nil, false)
	return changed, d
}

// arm prepares a wait of up to d, as armWait; with pipelined, it also has
// the watcher send a fenced read of up to budget messages of the quiet
// partitions behind its XREAD (see wait), and returns the read out.
func (c *Consumer) arm(d time.Duration, budget int, limit func(int) int, pipelined bool) (<-chan struct{}, time.Duration, *watchRead) {
	c.mu.Lock()
	changed := c.changed
	if due, ok := c.nextDueLocked(); ok {
		d = min(d, max(time.Until(due), 5*time.Millisecond))
	}
	var from map[int]string
	if !c.seg.watch.usable() {
		d = min(d, c.seg.cfg.PollInterval)
	} else if d >= time.Millisecond && !c.closing {
		// Every quiet partition held, from the newest entry seen in it.
		// Only quiet ones: the others are fetched as soon as they may be
		// (and a busy one's backlog would wake the watcher at once).
		from = make(map[int]string, len(c.parts))
		for p, op := range c.parts {
			if op.quiet && !op.revoking && op.lastID != "" {
				from[p] = op.lastID
			}
		}
	}
	var sendRead *watchRead
	if from != nil && c.wread == nil && pipelined {
		sendRead = c.watchReadLocked(from, budget, limit)
		c.wread = sendRead
	}
	read := c.wread
	c.mu.Unlock()
	if from != nil {
		c.seg.watch.watch(c, from, sendRead)
	}
	return changed, d, read
}

// watchRead is a fenced read that the entry watcher sends for a consumer
// right behind its XREAD BLOCK (see wait). While it is out, its partitions
// are fetched by nothing else.
type watchRead struct {
	c    *Consumer
	plan *fetchPlan
	// Set by the watcher: q, sent and plan.replied once the pipeline
	// ran, when it closes done; state and seq under its lock.
	q     *rebalance.QueuedFetch
	done  chan struct{}
	sent  time.Time
	state int
	seq   uint64
}

func (r *watchRead) finished() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// watchReadLocked prepares the read of the partitions of from that the
// consumer may fetch now with the native read (none with a claim to do, a
// known position, limit(p) > 0 when limit is not nil), nil if there are
// none.
func (c *Consumer) watchReadLocked(from map[int]string, budget int, limit func(int) int) *watchRead {
	if c.closing || len(c.errs) > 0 {
		return nil
	}
	now := time.Now()
	var ready, caps []int
	for p := range from {
		op := c.parts[p]
		if op == nil || op.revoking || op.inRead || op.cursor != "" || !now.Before(op.validUntil) {
			continue
		}
		if limit != nil {
			n := limit(p)
			if n <= 0 {
				continue
			}
			caps = append(caps, n)
		}
		ready = append(ready, p)
	}
	if limit == nil {
		caps = nil
	}
	// Its reply may come a whole block later: that long, nothing of its
	// partitions may come due unchecked.
	plan := c.planLocked(ready, caps, budget, now, c.seg.watch.block())
	if plan == nil {
		return nil
	}
	plan.watched = true
	for _, p := range plan.parts {
		c.parts[p].inRead = true
	}
	return &watchRead{c: c, plan: plan, done: make(chan struct{})}
}

// mustCollect reports whether a partition of the read out must be fetched
// otherwise now: a claim to do (a Nack, a delivery abandoned), a message
// due for redelivery, or the partition lost or handed over.
func (c *Consumer) mustCollect(read *watchRead) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	for i, p := range read.plan.parts {
		op, ok := c.parts[p]
		if !ok || op.epoch != read.plan.reqs[i].Epoch || op.revoking || op.cursor != "" || c.dueLocked(op, now) {
			return true
		}
	}
	return false
}

// releaseRead takes back the read the entry watcher may still have out for
// the consumer (see wait), and hands back whatever it read: they come again
// first, to whoever reads the partition next. A Run that ends leaves
// nothing read behind it.
func (c *Consumer) releaseRead() {
	c.mu.Lock()
	read := c.wread
	c.mu.Unlock()
	if read != nil {
		_ = c.collect(context.Background(), read, 0, nil)
	}
}

// collect takes the read out back, asking the watcher to end its XREAD at
// once if it is still blocked, and returns what it delivered, up to budget
// messages, as a fetch round does (a short batch filled by a second round,
// with limit); an error is queued for the next fetch round to return. A
// read planned for a larger budget (by a wait of a call that asked for
// more) hands what is over budget back, as keepValid does: it comes again
// first.
func (c *Consumer) collect(ctx context.Context, read *watchRead, budget int, limit func(int) int) []*contracts.CMessage {
	ran := c.seg.watch.collect(read)
	c.mu.Lock()
	c.wread = nil
	if !ran {
		for i, p := range read.plan.parts {
			if op, ok := c.parts[p]; ok && op.epoch == read.plan.reqs[i].Epoch {
				op.inRead = false
			}
		}
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	res := read.q.Result(context.WithoutCancel(ctx), c.seg.rdb)
	msgs, err := c.applyFetch(read.plan, res, read.sent, true)
	c.releaseBroken()
	if err == nil && len(msgs) > 0 && len(msgs) < budget {
		msgs = c.fillBatch(ctx, budget, msgs, read.plan, res, limit)
	}
	if len(msgs) > budget {
		c.mu.Lock()
		c.handBackLocked(msgs[budget:])
		c.mu.Unlock()
		msgs = msgs[:budget]
	}
	msgs, err, _ = c.deliver(ctx, msgs, err, read.sent)
	if err != nil {
		c.mu.Lock()
		c.errs = append(c.errs, err)
		c.mu.Unlock()
	}
	return msgs
}

// entriesArrived marks the partitions of the stream keys for the next fetch
// and wakes a waiting Read or Run.
func (c *Consumer) entriesArrived(keys []string) {
	c.mu.Lock()
	for _, k := range keys {
		if op, ok := c.parts[c.stream.partitionOfKey(k)]; ok {
			op.quiet, op.news = false, true
		}
	}
	c.mu.Unlock()
	select {
	case c.newEntries <- struct{}{}:
	default:
	}
}

// quietFor bounds how long a quiet partition goes unfetched. With the
// entry watchers it is a safety net (they report news long before);
// without them, quiet partitions are polled this often.
func (c *Consumer) quietFor() time.Duration {
	if c.seg.watch.usable() {
		return 5 * time.Second
	}
	return c.seg.cfg.PollInterval
}

// newerID reports whether stream entry ID a is newer than b ("" is oldest).
func newerID(a, b string) bool {
	if b == "" {
		return a != ""
	}
	ams, aseq, _ := strings.Cut(a, "-")
	bms, bseq, _ := strings.Cut(b, "-")
	if len(ams) != len(bms) {
		return len(ams) > len(bms)
	}
	if ams != bms {
		return ams > bms
	}
	if len(aseq) != len(bseq) {
		return len(aseq) > len(bseq)
	}
	return aseq > bseq
}

// dueLocked reports whether a message delivered from op has passed
// maxProcessingTime without an ack.
func (c *Consumer) dueLocked(op *ownedPartition, now time.Time) bool {
	for _, d := range op.inflight {
		if !now.Before(d.at.Add(c.maxProc)) {
			return true
		}
	}
	return false
}

// notDueUntilLocked returns until when, by the consumer's clock, no message
// of op can be due for redelivery in Redis, and whether that is far enough
// ahead for a fetch sent now to skip the check in Redis (the XPENDING IDLE
// of the native read's guard, which walks the whole pending list when
// nothing is due). It holds because, while no claim is in progress (none
// was started by a grant, a lost reply, a Nack or a delivery dropped), every
// message of op pending in Redis is in op.inflight, and Redis delivered
// each one after its fetch was sent. The zero time: nothing in flight, so
// nothing can come due.
func (c *Consumer) notDueUntilLocked(op *ownedPartition, now time.Time, late time.Duration) (time.Time, bool) {
	if len(op.inflight) == 0 {
		return time.Time{}, true
	}
	// Redis measures idle times in whole milliseconds, by its own clock.
	slack := c.maxProc/50 + 2*time.Millisecond
	horizon := c.maxProc/10 + late // the fetch must return before then
	until := op.sentFloor.Add(c.maxProc - slack)
	if now.Add(horizon).Before(until) {
		return until, true
	}
	// The bound is old: tighten it to the oldest message still in flight.
	floor := now
	for _, d := range op.inflight {
		if d.sent.Before(floor) {
			floor = d.sent
		}
	}
	op.sentFloor = floor
	until = floor.Add(c.maxProc - slack)
	return until, now.Add(horizon).Before(until)
}

// nextDueLocked returns when the oldest delivered, unacked message comes due
// for redelivery.
func (c *Consumer) nextDueLocked() (time.Time, bool) {
	var oldest time.Time
	for _, op := range c.parts {
		for _, d := range op.inflight {
			if oldest.IsZero() || d.at.Before(oldest) {
				oldest = d.at
			}
		}
	}
	if oldest.IsZero() {
		return time.Time{}, false
	}
	return oldest.Add(c.maxProc), true
}

// Ack acknowledges messages returned by Read, so they are not delivered
// again. The ack of each partition runs in Redis after a check that the
// consumer still holds its lease under the epoch the message was delivered
// with: messages of a partition lost meanwhile are not acked and Ack returns
// a *PartitionError wrapping ErrFenced (they will be delivered to the new
// owner); messages no longer pending (acked already: by an earlier Ack whose
// reply was lost and that the client sent again, or by the new owner) are
// not reported fenced, since they will not be delivered again. Acking a
// message twice is harmless.
func (c *Consumer) Ack(ctx context.Context, msgs ...*contracts.CMessage) error {
	groups, err := c.groupAcks(msgs)
	if err != nil || len(groups) == 0 {
		return err
	}
	select {
	case <-c.done:
		return ErrClosed
	default:
	}
	reqs := c.ackRequests(groups)
	start := time.Now()
	res := rebalance.Ack(ctx, c.seg.rdb, c.id, c.group, reqs)
	c.mu.Lock()
	racing := c.fetching > 0
	c.mu.Unlock()
	return c.applyAck(groups, res, start, racing)
}

// ackGroup is the messages to ack of one partition, delivered under one
// epoch.
type ackGroup struct {
	p     int
	epoch int64
	ids   []string
	n     int
}

// groupAcks validates msgs and groups them by partition and epoch, in the
// order of their first message.
func (c *Consumer) groupAcks(msgs []*contracts.CMessage) ([]ackGroup, error) {
	var groups []ackGroup
	var index map[[2]int64]int // with many groups
	of := make([]int32, len(msgs))
	for i, m := range msgs {
		if err := c.checkMessage(i, m); err != nil {
			return nil, err
		}
		p, e := int(m.Partition), m.Epoch
		g := -1
		if index != nil {
			if j, ok := index[[2]int64{int64(p), e}]; ok {
				g = j
			}
		} else {
			for j := range groups {
				if groups[j].p == p && groups[j].epoch == e {
					g = j
					break
				}
			}
		}
		if g < 0 {
			g = len(groups)
			groups = append(groups, ackGroup{p: p, epoch: e})
			switch {
			case index != nil:
				index[[2]int64{int64(p), e}] = g
			case len(groups) == 16:
				index = make(map[[2]int64]int)
				for j, x := range groups {
					index[[2]int64{int64(x.p), x.epoch}] = j
				}
			}
		}
		of[i] = int32(g)
		groups[g].n++
	}
	// One array holds every group's IDs.
	ids := make([]string, len(msgs))
	off := 0
	for j := range groups {
		n := groups[j].n
		groups[j].ids = ids[off : off : off+n]
		off += n
	}
	for i, m := range msgs {
		g := &groups[of[i]]
		g.ids = append(g.ids, m.Id)
	}
	return groups, nil
}

func (c *Consumer) ackRequests(groups []ackGroup) []rebalance.AckRequest {
	reqs := make([]rebalance.AckRequest, len(groups))
	for i, g := range groups {
		reqs[i] = rebalance.AckRequest{LeaseKey: c.leaseKeys[g.p], StreamKey: c.stream.keys[g.p], Epoch: g.epoch, IDs: g.ids}
	}
	return reqs
}

// applyAck reports the outcome of the acks of groups (sent at start) to the
// hooks and updates the in-flight bookkeeping. racing: a fetch may have
// been in flight while the acks ran, and may have claimed their messages
// before them.
func (c *Consumer) applyAck(groups []ackGroup, res []rebalance.AckResult, start time.Time, racing bool) error {
	if len(c.hooks.ack) > 0 {
		end := time.Now()
		for i, r := range res {
			ev := AckEvent{Stream: c.stream.name, Group: c.group, Consumer: c.id, Partition: groups[i].p,
				Epoch: groups[i].epoch, IDs: groups[i].ids, Outcome: Acked, Err: r.Err, Start: start, End: end}
			switch {
			case r.Err != nil:
				ev.Outcome = AckFailed
			case r.Fenced:
				ev.Outcome, ev.Err = AckFenced, ErrFenced
			}
			for _, h := range c.hooks.ack {
				h.OnAck(ev)
			}
		}
	}

	defer c.flushEvents()
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for i, r := range res {
		k := groups[i]
		switch {
		case r.Err != nil:
			errs = append(errs, &PartitionError{Stream: c.stream.name, Group: c.group, Partition: k.p, Err: fmt.Errorf("ack: %w", r.Err)})
		case r.Fenced:
			// A partition being handed over was released by us: the
			// hand-over completes it, it is no loss.
			if op, ok := c.parts[k.p]; ok && op.epoch == k.epoch && !op.revoking {
				c.dropLocked(k.p, ErrFenced, false) // reported here, not again by Read
			}
			errs = append(errs, &PartitionError{Stream: c.stream.name, Group: c.group, Partition: k.p, Err: ErrFenced})
		default:
			c.stats.acked.Add(uint64(len(k.ids)))
			if op, ok := c.parts[k.p]; ok {
				// Only a fetch in flight now can have claimed these before
				// the ack ran (a later one is sent after it returned).
				now := time.Now()
				if racing && op.acked == nil {
					op.acked = make(map[string]time.Time)
				}
				for _, id := range k.ids {
					delete(op.inflight, id)
					if racing {
						op.acked[id] = now
					}
				}
				if op.revoking {
					c.wakeLoop() // it may be drained: hand it over now
				}
			}
		}
	}
	return errors.Join(errs...)
}

// Nack hands messages returned by Read back without acknowledging them:
// they are delivered again, first (before anything newer of their
// partition), to this consumer or to the partition's next owner. Use it for
// messages that will not be processed now, e.g. when stopping. Delivered
// messages that are neither acked nor nacked stay with the application: they
// are delivered again only once they pass maxProcessingTime. Nack does no
// I/O.
func (c *Consumer) Nack(msgs ...*contracts.CMessage) error {
	for i, m := range msgs {
		if err := c.checkMessage(i, m); err != nil {
			return err
		}
	}
	var back []*contracts.CMessage
	c.mu.Lock()
	for _, m := range msgs {
		op, ok := c.parts[int(m.Partition)]
		if !ok || op.epoch != m.Epoch {
			continue // no longer ours: its next owner delivers it
		}
		delete(op.inflight, m.Id)
		op.nacks++
		op.cursor, op.cursorIdle, op.quiet = "0-0", 0, false
		if op.revoking {
			c.wakeLoop()
		}
		back = append(back, m)
	}
	c.mu.Unlock()
	if len(back) > 0 && len(c.hooks.nack) > 0 {
		ev := NackEvent{Stream: c.stream.name, Group: c.group, Consumer: c.id, Messages: back, At: time.Now()}
		for _, h := range c.hooks.nack {
			h.OnNack(ev)
		}
	}
	return nil
}

// checkMessage validates message i given to Ack or Nack.
func (c *Consumer) checkMessage(i int, m *contracts.CMessage) error {
	switch {
	case m == nil:
		return invalid("message %d is nil", i)
	case m.Stream != c.stream.name || m.Group != c.group:
		return invalid("message %d (%s) was read from stream %q group %q, not %q %q", i, m.Id, m.Stream, m.Group, c.stream.name, c.group)
	case int(m.Partition) >= c.stream.Partitions():
		return invalid("message %d has partition %d, stream has %d", i, m.Partition, c.stream.Partitions())
	case m.Id == "":
		return invalid("message %d has no ID", i)
	}
	return nil
}

// Shutdown stops the consumer and hands its partitions over: it stops
// fetching, leaves the group (whose partitions are assigned to the remaining
// members at once), and releases each partition's lease as soon as the
// messages it delivered from it are acked, nacked or past maxProcessingTime
// (bounded by ctx), so the next owner takes it without waiting for a session
// timeout: a partition with nothing in flight is handed over at once.
// Unacked messages are delivered to the next owner. Shutdown is idempotent
// and safe to call concurrently; every call waits for the first to finish,
// or returns ctx's error when its own ctx ends first.
func (c *Consumer) Shutdown(ctx context.Context) error {
	if c.shutdownStarted.CompareAndSwap(false, true) {
		c.mu.Lock()
		c.closing = true
		c.notifyLocked()
		c.mu.Unlock()
		c.shutdownErr = c.leave(ctx)
		c.seg.notify.remove(c)
		c.seg.watch.unwatch(c)
		c.seg.mu.Lock()
		delete(c.seg.consumers, c)
		c.seg.mu.Unlock()
		close(c.done)
		return c.shutdownErr
	}
	// Another call runs it: wait for it, or for this call's ctx.
	select {
	case <-c.done:
		return c.shutdownErr
	case <-ctx.Done():
		select {
		case <-c.done:
			return c.shutdownErr
		default:
			return ctx.Err()
		}
	}
}

// leave takes the consumer out of its group and hands its partitions over.
func (c *Consumer) leave(ctx context.Context) error {
	var errs []error
	// A heartbeat in flight would put the member back after Leave.
	c.tickMu.Lock()
	if err := rebalance.Leave(ctx, c.seg.rdb, c.groupKeys, c.id); err != nil {
		errs = append(errs, fmt.Errorf("segmenter: leave group: %w", err))
	} else {
		_, _, err := rebalance.Rebalance(ctx, c.seg.rdb, c.groupKeys, c.id+":"+uuid.NewString(), c.stream.Partitions(), c.session())
		if err != nil && !errors.Is(err, rebalance.ErrCoordinatorBusy) && !errors.Is(err, rebalance.ErrGenerationChanged) {
			// The others rebalance on their next heartbeat anyway.
			c.log.Warn("rebalance on leave", "err", err)
		}
		c.seg.notify.publish(ctx, c)
	}
	c.tickMu.Unlock()
	// The background loop, still renewing, releases each partition once
	// drained.
	c.wakeLoop()
	for {
		// Wait only for partitions whose lease is ours by the local clock:
		// the others are another's by now, or will be when they expire.
		now := time.Now()
		c.mu.Lock()
		n, changed := 0, c.changed
		for _, op := range c.parts {
			if now.Before(op.validUntil) {
				n++
			}
		}
		c.mu.Unlock()
		if n == 0 {
			break
		}
		if err := ctx.Err(); err != nil {
			// Released below all the same: messages still in flight go to
			// the next owner while the application may be processing them.
			errs = append(errs, fmt.Errorf("segmenter: shutdown: %d partitions handed over with messages in flight: %w", n, err))
			break
		}
		select {
		case <-ctx.Done():
		case <-changed:
		}
	}
	c.cancel() // no renewal may race with the release below
	c.wg.Wait()
	c.mu.Lock()
	held := make([]rebalance.Held, 0, len(c.parts))
	parts := make([]int, 0, len(c.parts))
	for p, op := range c.parts {
		held = append(held, c.releaseOfLocked(p, op))
		parts = append(parts, p)
	}
	c.mu.Unlock()
	if len(held) > 0 {
		// Release even when ctx is done: otherwise the partitions wait a
		// session timeout.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		c.releasePartitions(rctx, parts, held)
		cancel()
		c.mu.Lock()
		if len(c.parts) > 0 {
			c.log.Warn("leases not released: they expire after the session timeout", "count", len(c.parts))
			for _, op := range c.parts {
				op.cancel()
			}
			c.parts = make(map[int]*ownedPartition)
		}
		c.mu.Unlock()
	}
	c.flushEvents()
	c.log.Info("consumer shut down")
	return errors.Join(errs...)
}

// releaseBroken releases the leases of partitions whose group vanished.
func (c *Consumer) releaseBroken() {
	c.mu.Lock()
	held := c.toRelease
	c.toRelease = nil
	c.mu.Unlock()
	if len(held) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, 2*time.Second)
	defer cancel()
	rebalance.Release(ctx, c.seg.rdb, c.id, held)
}

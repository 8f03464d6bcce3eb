// Command worker is the consumer process of the end-to-end tests: it joins a
// consumer group on one or more streams, reads and acknowledges until it is
// signalled, and logs every delivery and ack as JSON lines (internal/invariant)
// so that the test can prove the invariants over the logs of every process,
// including the ones it killed.
//
// With -mode read (the default) it calls Read and Ack itself; with -mode run
// it hands a handler to Consumer.Run (each partition's messages one after
// the other), with -mode run-key to Run with WithKeyConcurrency. In the Run
// modes the log comes from the SDK's hooks: every fetch (DeliverHook), every
// handler call (HandlerHook) and every ack with its outcome (AckHook); a
// message whose handler succeeded is logged as an ack in flight until the
// AckHook reports it, so that a kill in between counts as an ack that may
// have run. Failed reads are logged too (Read's errors; in the Run modes
// every partition error reported to Config.OnError), and Nacks (in the Run
// modes, from the NackHook: the messages Run hands back).
//
// It prints one line to stdout for each thing a test may wait for:
//
//	ready STREAM                     registered on STREAM
//	owned STREAM P,P,...             its assignment of STREAM changed ("-": none)
//	assigned STREAM P EPOCH          a partition event (also revoked, lost)
//	got STREAM P EPOCH UNIXNANO      the first delivery of partition P under EPOCH
//	fenced STREAM OP ERR             Read or Ack returned ErrFenced
//	error STREAM OP ERR              Read or Ack returned another error
//	bgerror ERR                      an error reported to Config.OnError
//	stats STREAM NAME=N ...          the consumer's Stats, when they changed
//	shutdown done                    Shutdown returned after SIGTERM/SIGINT
//	shutdown error ERR               Shutdown failed (the exit status is 1)
//
// With -fail-key the handler (Run modes) fails, panics or sleeps (-fail-how)
// on some messages of one key; in read mode -fail-how sleep holds the batch
// of such a message that long before acking it. With -sdk-log the SDK's own
// log goes to a file (JSON lines).
//
// On SIGTERM or SIGINT it stops reading (Run: ends Run's context, which
// lets the handlers in flight finish and acks them), acks what it holds,
// calls Shutdown (bounded by -shutdown) and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
)

type options struct {
	redisURL, namespace, group, name, logPath string
	streams                                   []string
	batch                                     int
	maxProc, session, heartbeat, block        time.Duration
	readWait, work, shutdown                  time.Duration
	noAckEvery, nackEvery                     int

	mode           string // read, run or run-key
	keyConcurrency int
	backoff        time.Duration
	failKey        string // Run: the handler fails some messages of this key
	failEvery      int    // of the key's messages, those numbered (Data) a multiple of failEvery
	failTimes      int    // fail their first failTimes calls in this process
	failHow        string // error, panic or sleep
	failSleep      time.Duration
	sdkLog         string // the SDK's log (JSON lines); "" for none
}

func parseFlags() (options, error) {
	var o options
	var streams string
	flag.StringVar(&o.redisURL, "redis", "", "Redis URL (required)")
	flag.StringVar(&o.namespace, "namespace", "", "segmenter namespace (required)")
	flag.StringVar(&streams, "stream", "", "stream to consume; several separated by commas (required)")
	flag.StringVar(&o.group, "group", "", "consumer group (required)")
	flag.StringVar(&o.name, "name", "", "consumer name (required)")
	flag.StringVar(&o.logPath, "log", "", "event log path (JSON lines); with several streams it must contain {stream} (required)")
	flag.IntVar(&o.batch, "batch", 10, "batch size of a Read")
	flag.DurationVar(&o.maxProc, "maxproc", 10*time.Second, "maxProcessingTime")
	flag.DurationVar(&o.session, "session", time.Second, "Config.SessionTimeout (0: the SDK default)")
	flag.DurationVar(&o.heartbeat, "heartbeat", 100*time.Millisecond, "Config.HeartbeatInterval (0: the SDK default)")
	flag.DurationVar(&o.block, "block", 0, "Config.BlockInterval (0: the SDK default)")
	flag.DurationVar(&o.readWait, "read", 100*time.Millisecond, "maxWait of each Read")
	flag.DurationVar(&o.work, "work", 0, "processing time per message")
	flag.DurationVar(&o.shutdown, "shutdown", 10*time.Second, "bound of Shutdown")
	flag.IntVar(&o.noAckEvery, "noack-every", 0, "leave every n-th batch unacked, as a failed processing would (0: ack all)")
	flag.IntVar(&o.nackEvery, "nack-every", 0, "hand every n-th batch back with Nack instead of acking it (0: none; read mode)")
	flag.StringVar(&o.mode, "mode", "read", "read (Read and Ack), run (Consumer.Run) or run-key (Run with WithKeyConcurrency)")
	flag.IntVar(&o.keyConcurrency, "key-concurrency", 8, "WithKeyConcurrency's bound (run-key mode)")
	flag.DurationVar(&o.backoff, "backoff", 20*time.Millisecond, "initial retry backoff of Run (doubling up to 8 times that)")
	flag.StringVar(&o.failKey, "fail-key", "", "run modes: the handler fails some messages of this partition key")
	flag.IntVar(&o.failEvery, "fail-every", 5, "with -fail-key: the key's messages whose number (their data) is a multiple of this fail")
	flag.IntVar(&o.failTimes, "fail-times", 3, "with -fail-key: how many calls of each such message fail before one succeeds")
	flag.StringVar(&o.failHow, "fail-how", "error", "with -fail-key: how such a call fails: error (Run: the handler returns an error), panic (Run: the handler panics) or sleep (-fail-sleep, then it succeeds; read mode: the batch is acked that much later)")
	flag.DurationVar(&o.failSleep, "fail-sleep", time.Second, "with -fail-how sleep: how long")
	flag.StringVar(&o.sdkLog, "sdk-log", "", "write the SDK's log to this file (JSON lines, level info)")
	flag.Parse()
	var missing []string
	for _, f := range []struct{ name, v string }{
		{"redis", o.redisURL}, {"namespace", o.namespace}, {"stream", streams},
		{"group", o.group}, {"name", o.name}, {"log", o.logPath},
	} {
		if f.v == "" {
			missing = append(missing, "-"+f.name)
		}
	}
	if len(missing) > 0 {
		return o, fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	switch o.mode {
	case "read", "run", "run-key":
	default:
		return o, fmt.Errorf("-mode %q: want read, run or run-key", o.mode)
	}
	switch o.failHow {
	case "sleep":
	case "error", "panic":
		if o.mode == "read" && o.failKey != "" {
			return o, fmt.Errorf("-fail-how %s needs a Run mode (read mode: sleep only)", o.failHow)
		}
	default:
		return o, fmt.Errorf("-fail-how %q: want error, panic or sleep", o.failHow)
	}
	if o.failEvery < 1 {
		return o, fmt.Errorf("-fail-every %d: want 1 or more", o.failEvery)
	}
	o.streams = strings.Split(streams, ",")
	if len(o.streams) > 1 && !strings.Contains(o.logPath, "{stream}") {
		return o, errors.New("-log must contain {stream} when -stream names several streams")
	}
	return o, nil
}

// out serializes stdout lines.
var outMu sync.Mutex

func say(format string, args ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

func main() {
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

// member is the consumer of one stream with its log.
type member struct {
	o        options
	stream   string
	c        atomic.Pointer[segmenter.Consumer]
	rec      *invariant.Recorder
	logFile  *os.File
	ownedMu  sync.Mutex
	lastOwn  string
	lastStat segmenter.Stats
	gotEpoch map[int]int64 // partition -> epoch of the last "got" line; read loop (Run: its fetches) only

	// Run modes: the acks in flight of the messages handled successfully,
	// by partition, epoch and ID, oldest first.
	acksMu  sync.Mutex
	pending map[ackKey][]*invariant.PendingAck
	attMu   sync.Mutex
	calls   map[string]int // message ID -> handler calls in this process (failures injected)
}

type ackKey struct {
	p     int
	epoch int64
	id    string
}

func run(o options) error {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	var byStreamMu sync.Mutex
	byStream := make(map[string]*member)
	logger := slog.New(slog.DiscardHandler)
	if o.sdkLog != "" {
		f, err := os.OpenFile(o.sdkLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		logger = slog.New(slog.NewJSONHandler(f, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	seg, err := segmenter.NewSegmenter(&segmenter.Config{
		Logger:            logger,
		RedisURL:          o.redisURL,
		Namespace:         o.namespace,
		SessionTimeout:    o.session,
		HeartbeatInterval: o.heartbeat,
		BlockInterval:     o.block,
		OnError: func(err error) {
			fmt.Fprintln(os.Stderr, "worker: background:", err)
			say("bgerror %s", oneLine(err))
			if o.mode == "read" {
				return // Read returns the errors of its fetches itself
			}
			// Run reports the errors of its fetches here only, among the
			// other background errors: count each partition error as a
			// failed fetch of its partition.
			now := time.Now()
			for _, pe := range partitionErrors(err) {
				byStreamMu.Lock()
				m := byStream[pe.Stream]
				byStreamMu.Unlock()
				if m != nil && pe.Group == o.group {
					m.rec.ReadError(o.name, pe.Partition, pe, now, now)
				}
			}
		},
	})
	if err != nil {
		return err
	}
	defer seg.Close(context.Background())

	members := make([]*member, 0, len(o.streams))
	for _, st := range o.streams {
		m, err := join(o, seg, st, func(m *member) {
			byStreamMu.Lock()
			byStream[st] = m
			byStreamMu.Unlock()
		})
		if err != nil {
			return err
		}
		defer m.logFile.Close()
		members = append(members, m)
	}

	statsDone := make(chan struct{})
	var statsWG sync.WaitGroup
	statsWG.Add(1)
	go func() {
		defer statsWG.Done()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-statsDone:
				return
			case <-t.C:
			}
			for _, m := range members {
				m.printStats()
			}
		}
	}()
	stopping := make(chan struct{})
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	runErrs := make([]error, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if o.mode == "read" {
				m.consume(stopping)
				return
			}
			runErrs[i] = m.run(runCtx)
		}()
	}
	<-stop
	close(stopping)
	stopRun()
	wg.Wait()
	close(statsDone)
	statsWG.Wait()

	// Every delivered message was acked (or its ack failed): hand over.
	var errs []error
	for i, m := range members {
		if err := runErrs[i]; err != nil {
			errs = append(errs, fmt.Errorf("stream %s: Run: %w", m.stream, err))
		}
		ctx, cancel := context.WithTimeout(context.Background(), o.shutdown)
		err := m.c.Load().Shutdown(ctx)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("stream %s: %w", m.stream, err))
		}
		m.printOwned()
		m.printStats()
		if err := m.rec.Err(); err != nil {
			errs = append(errs, fmt.Errorf("stream %s: event log: %w", m.stream, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		say("shutdown error %s", oneLine(err))
		return err
	}
	say("shutdown done")
	return nil
}

// join registers the consumer of stream; known is called with the member
// before it registers, so that its background errors find it.
func join(o options, seg *segmenter.Segmenter, stream string, known func(*member)) (*member, error) {
	path := strings.ReplaceAll(o.logPath, "{stream}", stream)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	m := &member{o: o, stream: stream, rec: invariant.NewRecorder(), logFile: f, gotEpoch: make(map[int]int64),
		pending: make(map[ackKey][]*invariant.PendingAck), calls: make(map[string]int)}
	m.rec.SetOutput(f)
	known(m)
	opts := []segmenter.ConsumerOption{
		segmenter.WithConsumerName(o.name),
		segmenter.WithPartitionListener(m.onEvent),
	}
	if o.mode != "read" {
		opts = append(opts, segmenter.WithHooks(runHooks{m}))
	} else {
		opts = append(opts, segmenter.WithHooks(deliverHook{m}))
	}
	c, err := seg.RegisterConsumer(context.Background(), stream, o.group, o.batch, o.maxProc, opts...)
	if err != nil {
		f.Close()
		return nil, err
	}
	m.c.Store(c)
	say("ready %s", stream)
	m.printOwned()
	return m, nil
}

// onEvent reports a partition event and the assignment it leaves. Events
// queued during RegisterConsumer arrive before the consumer is known: the
// assignment is printed once it is.
func (m *member) onEvent(e segmenter.PartitionEvent) {
	line := fmt.Sprintf("%s %s %d %d", e.Kind, m.stream, e.Partition, e.Epoch)
	if e.Err != nil {
		line += " " + oneLine(e.Err)
	}
	say("%s", line)
	m.printOwned()
}

// printOwned prints the assignment when it differs from the last one
// printed. Reading and printing under one lock keeps the last line current.
func (m *member) printOwned() {
	c := m.c.Load()
	if c == nil {
		return
	}
	m.ownedMu.Lock()
	defer m.ownedMu.Unlock()
	parts := make([]string, 0, 16)
	for _, ow := range c.Assignment() {
		parts = append(parts, strconv.Itoa(ow.Partition))
	}
	s := "-"
	if len(parts) > 0 {
		s = strings.Join(parts, ",")
	}
	if s == m.lastOwn {
		return
	}
	m.lastOwn = s
	say("owned %s %s", m.stream, s)
}

// printStats prints the consumer's Stats when they changed since the last
// line.
func (m *member) printStats() {
	c := m.c.Load()
	if c == nil {
		return
	}
	m.ownedMu.Lock()
	defer m.ownedMu.Unlock()
	st := c.Stats()
	if st == m.lastStat {
		return
	}
	m.lastStat = st
	say("stats %s delivered=%d redelivered=%d acked=%d fenced=%d trimmed=%d trimmedunread=%d poison=%d deadlettered=%d",
		m.stream, st.Delivered, st.Redelivered, st.Acked, st.Fenced, st.Trimmed, st.TrimmedUnread, st.Poison, st.DeadLettered)
}

// consume reads, processes and acks until stopping is closed.
func (m *member) consume(stopping <-chan struct{}) {
	c := m.c.Load()
	batches := 0
	for {
		select {
		case <-stopping:
			return
		default:
		}
		start := time.Now()
		msgs, err := c.Read(context.Background(), m.o.readWait)
		end := time.Now()
		if len(msgs) > 0 {
			m.announce(msgs, end) // logged by deliverHook
		}
		if err != nil {
			m.report("read", err)
			if errors.Is(err, segmenter.ErrClosed) {
				return
			}
			p := -1
			var pe *segmenter.PartitionError
			if errors.As(err, &pe) {
				p = pe.Partition
			}
			m.rec.ReadError(c.ID(), p, err, start, end)
			if !errors.Is(err, segmenter.ErrFenced) {
				time.Sleep(50 * time.Millisecond) // Redis is away: do not spin
			}
			continue
		}
		if len(msgs) == 0 {
			continue
		}
		if m.o.work > 0 {
			time.Sleep(m.o.work * time.Duration(len(msgs))) // the processing itself
		}
		for _, msg := range msgs {
			if m.failing(msg) {
				time.Sleep(m.o.failSleep) // past maxProcessingTime, say
				break
			}
		}
		batches++
		if m.o.noAckEvery > 0 && batches%m.o.noAckEvery == 0 {
			continue // failed: redelivered after maxProcessingTime
		}
		if m.o.nackEvery > 0 && batches%m.o.nackEvery == 0 {
			start := time.Now()
			err := c.Nack(msgs...) // handed back: delivered again at once
			m.rec.Nacked(c.ID(), msgs, start, time.Now())
			if err != nil {
				m.report("nack", err)
			}
			continue
		}
		m.ack(c, msgs)
	}
}

// announce prints the first delivery of each partition under a new epoch.
func (m *member) announce(msgs []*contracts.CMessage, at time.Time) {
	for _, msg := range msgs {
		p := int(msg.Partition)
		if m.gotEpoch[p] != msg.Epoch {
			m.gotEpoch[p] = msg.Epoch
			say("got %s %d %d %d", m.stream, p, msg.Epoch, at.UnixNano())
		}
	}
}

// ack acknowledges msgs one partition (and epoch) at a time, so that each
// call has one outcome to log.
func (m *member) ack(c *segmenter.Consumer, msgs []*contracts.CMessage) {
	type pe struct {
		p     uint32
		epoch int64
	}
	groups := make(map[pe][]*contracts.CMessage)
	var order []pe
	for _, msg := range msgs {
		k := pe{msg.Partition, msg.Epoch}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], msg)
	}
	slices.SortFunc(order, func(a, b pe) int { return int(a.p) - int(b.p) })
	for _, k := range order {
		batch := groups[k]
		pending := m.rec.BeginAck(c.ID(), batch)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.Ack(ctx, batch...)
		cancel()
		switch {
		case err == nil:
			pending.Done(invariant.AckOK)
		case errors.Is(err, segmenter.ErrFenced):
			pending.Done(invariant.AckFenced)
		default:
			pending.Done(invariant.AckError)
		}
		if err != nil {
			m.report("ack", err)
		}
	}
}

func (m *member) report(op string, err error) {
	if errors.Is(err, segmenter.ErrFenced) {
		say("fenced %s %s %s", m.stream, op, oneLine(err))
		return
	}
	say("error %s %s %s", m.stream, op, oneLine(err))
}

func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

// run hands the messages to Consumer.Run until ctx ends.
func (m *member) run(ctx context.Context) error {
	opts := []segmenter.RunOption{segmenter.WithRetryBackoff(m.o.backoff, 8*m.o.backoff)}
	if m.o.mode == "run-key" {
		opts = append(opts, segmenter.WithKeyConcurrency(m.o.keyConcurrency))
	}
	err := m.c.Load().Run(ctx, m.handle, opts...)
	if errors.Is(err, segmenter.ErrClosed) {
		return nil
	}
	return err
}

// handle is the Run handler: it works -work per message and fails the
// messages chosen by -fail-key a few times.
func (m *member) handle(ctx context.Context, msg *contracts.CMessage) error {
	if m.failing(msg) {
		switch m.o.failHow {
		case "panic":
			panic("injected panic")
		case "sleep":
			t := time.NewTimer(m.o.failSleep) // past maxProcessingTime, say
			defer t.Stop()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
			}
		default:
			return errors.New("injected failure")
		}
	}
	if m.o.work > 0 {
		t := time.NewTimer(m.o.work) // the processing itself
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// failing reports whether this call on msg is one -fail-key chose to fail:
// the key's messages numbered a multiple of -fail-every, their first
// -fail-times calls in this process.
func (m *member) failing(msg *contracts.CMessage) bool {
	if m.o.failKey == "" || msg.PartitionKey != m.o.failKey {
		return false
	}
	num, _, _ := strings.Cut(string(msg.Data), " ") // the test producer's number, then padding
	n, err := strconv.Atoi(num)
	if err != nil || n%m.o.failEvery != 0 {
		return false
	}
	m.attMu.Lock()
	defer m.attMu.Unlock()
	m.calls[msg.Id]++
	return m.calls[msg.Id] <= m.o.failTimes
}

// deliverHook logs every batch Read delivers, with the SDK's moment of
// delivery (the moment its lease was last checked), not the moment Read's
// caller got to record it: a process paused in between must not look as if
// it delivered later.
type deliverHook struct{ m *member }

func (h deliverHook) OnDeliver(ev segmenter.DeliverEvent) {
	h.m.rec.Delivered(ev.Consumer, ev.Messages, ev.Start, ev.End)
}

// runHooks logs what Run does (see the package documentation).
type runHooks struct{ m *member }

func (h runHooks) OnDeliver(ev segmenter.DeliverEvent) {
	h.m.rec.Delivered(ev.Consumer, ev.Messages, ev.Start, ev.End)
	h.m.announce(ev.Messages, ev.End)
}

// OnNack logs the messages Run hands back (it fetched them and did not
// start them): they come again at once.
func (h runHooks) OnNack(ev segmenter.NackEvent) {
	h.m.rec.Nacked(ev.Consumer, ev.Messages, ev.At, ev.At)
}

func (h runHooks) OnHandlerStart(segmenter.HandlerEvent) {}

func (h runHooks) OnHandlerEnd(ev segmenter.HandlerEvent) {
	m := h.m
	m.rec.Handled(ev.Consumer, ev.Message, ev.Attempt, ev.Err, ev.Start, ev.End)
	if ev.Err != nil {
		return
	}
	// Run acks it next: an ack in flight from now on.
	pa := m.rec.BeginAck(ev.Consumer, []*contracts.CMessage{ev.Message})
	k := ackKey{int(ev.Message.Partition), ev.Message.Epoch, ev.Message.Id}
	m.acksMu.Lock()
	m.pending[k] = append(m.pending[k], pa)
	m.acksMu.Unlock()
}

func (h runHooks) OnAck(ev segmenter.AckEvent) {
	m := h.m
	outcome := invariant.AckOK
	switch ev.Outcome {
	case segmenter.AckFenced:
		outcome = invariant.AckFenced
	case segmenter.AckFailed:
		outcome = invariant.AckError
	}
	var unknown []*contracts.CMessage
	m.acksMu.Lock()
	for _, id := range ev.IDs {
		k := ackKey{ev.Partition, ev.Epoch, id}
		q := m.pending[k]
		if len(q) == 0 {
			unknown = append(unknown, &contracts.CMessage{Id: id, Partition: uint32(ev.Partition), Epoch: ev.Epoch})
			continue
		}
		q[0].Done(outcome)
		if len(q) == 1 {
			delete(m.pending, k)
		} else {
			m.pending[k] = q[1:]
		}
	}
	m.acksMu.Unlock()
	if len(unknown) > 0 { // not from a handler call: log the call as it is
		m.rec.Acked(ev.Consumer, unknown, outcome, ev.Start, ev.End)
	}
	if ev.Err != nil {
		m.report("ack", &segmenter.PartitionError{Stream: ev.Stream, Group: ev.Group, Partition: ev.Partition, Err: ev.Err})
	}
}

// partitionErrors returns the partition errors in err's tree, outermost
// first (an errors.Join of several is reported by Run's acker).
func partitionErrors(err error) []*segmenter.PartitionError {
	switch x := err.(type) {
	case *segmenter.PartitionError:
		return []*segmenter.PartitionError{x}
	case interface{ Unwrap() []error }:
		var out []*segmenter.PartitionError
		for _, e := range x.Unwrap() {
			out = append(out, partitionErrors(e)...)
		}
		return out
	case interface{ Unwrap() error }:
		return partitionErrors(x.Unwrap())
	}
	return nil
}

// Command worker is the consumer process of the end-to-end tests: it joins a
// consumer group on one or more streams, reads and acknowledges until it is
// signalled, and logs every delivery and ack as JSON lines (internal/invariant)
// so that the test can prove the invariants over the logs of every process,
// including the ones it killed.
//
// It prints one line to stdout for each thing a test may wait for:
//
//	ready STREAM                     registered on STREAM
//	owned STREAM P,P,...             its assignment of STREAM changed ("-": none)
//	assigned STREAM P EPOCH          a partition event (also revoked, lost)
//	got STREAM P EPOCH UNIXNANO      the first delivery of partition P under EPOCH
//	fenced STREAM OP ERR             Read or Ack returned ErrFenced
//	error STREAM OP ERR              Read or Ack returned another error
//	shutdown done                    Shutdown returned after SIGTERM/SIGINT
//	shutdown error ERR               Shutdown failed (the exit status is 1)
//
// On SIGTERM or SIGINT it stops reading, acks what it holds, calls Shutdown
// (bounded by -shutdown) and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
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
	noAckEvery                                int
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
	gotEpoch map[int]int64 // partition -> epoch of the last "got" line; read loop only
}

func run(o options) error {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	seg, err := segmenter.NewSegmenter(&segmenter.Config{
		RedisURL:          o.redisURL,
		Namespace:         o.namespace,
		SessionTimeout:    o.session,
		HeartbeatInterval: o.heartbeat,
		BlockInterval:     o.block,
		OnError: func(err error) {
			fmt.Fprintln(os.Stderr, "worker: background:", err)
		},
	})
	if err != nil {
		return err
	}
	defer seg.Close(context.Background())

	members := make([]*member, 0, len(o.streams))
	for _, st := range o.streams {
		m, err := join(o, seg, st)
		if err != nil {
			return err
		}
		defer m.logFile.Close()
		members = append(members, m)
	}

	stopping := make(chan struct{})
	var wg sync.WaitGroup
	for _, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.consume(stopping)
		}()
	}
	<-stop
	close(stopping)
	wg.Wait()

	// Every delivered message was acked (or its ack failed): hand over.
	var errs []error
	for _, m := range members {
		ctx, cancel := context.WithTimeout(context.Background(), o.shutdown)
		err := m.c.Load().Shutdown(ctx)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("stream %s: %w", m.stream, err))
		}
		m.printOwned()
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

func join(o options, seg *segmenter.Segmenter, stream string) (*member, error) {
	path := strings.ReplaceAll(o.logPath, "{stream}", stream)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	m := &member{o: o, stream: stream, rec: invariant.NewRecorder(), logFile: f, gotEpoch: make(map[int]int64)}
	m.rec.SetOutput(f)
	c, err := seg.RegisterConsumer(context.Background(), stream, o.group, o.batch, o.maxProc,
		segmenter.WithConsumerName(o.name),
		segmenter.WithPartitionListener(m.onEvent))
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
			m.rec.Delivered(c.ID(), msgs, start, end)
			m.announce(msgs, end)
		}
		if err != nil {
			m.report("read", err)
			if errors.Is(err, segmenter.ErrClosed) {
				return
			}
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
		batches++
		if m.o.noAckEvery > 0 && batches%m.o.noAckEvery == 0 {
			continue // failed: redelivered after maxProcessingTime
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

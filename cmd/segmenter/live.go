package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
)

const (
	liveStream      = "live"
	liveGroup       = "live"  // the group of the consumers the keys stop and start
	liveSlowGroup   = "audit" // a second group, with one slow consumer: it lags
	liveMaxProcTime = 10 * time.Second
	liveSession     = 3 * time.Second
	liveMaxMoves    = 8 // moves shown
	liveMaxDeliver  = 3 // a message failing more often goes to the dead letters
	// liveFailData is the data of a message the demo's handlers fail: send
	// one with `segmenter send -stream live -key k -data fail` to see it
	// retried, then dead-lettered.
	liveFailData = "fail"
)

// liveConfig configures demo -live.
type liveConfig struct {
	Consumers  int           // consumers of group live at the start
	Partitions int           // partitions of the stream
	Rate       int           // messages sent per second
	SlowRate   int           // messages per second group audit's consumer handles; 0: no such group
	Work       time.Duration // time group live's handler takes per message
	Duration   time.Duration // 0: until q, or interrupted
	Refresh    time.Duration // how often the view is drawn
	Namespace  string
	RedisURL   string // "": an embedded in-process server
	ANSI       bool   // redraw in place with ANSI escapes, else print frame after frame
}

func (cfg *liveConfig) validate() error {
	var problems []string
	if cfg.Consumers < 1 || cfg.Consumers > 9 {
		problems = append(problems, fmt.Sprintf("-consumers is %d, must be 1 to 9 (a digit key each)", cfg.Consumers))
	}
	if cfg.Partitions < 1 {
		problems = append(problems, fmt.Sprintf("-partitions is %d, must be at least 1", cfg.Partitions))
	}
	if cfg.Rate < 1 {
		problems = append(problems, fmt.Sprintf("-rate is %d, must be at least 1", cfg.Rate))
	}
	if cfg.SlowRate < 0 {
		problems = append(problems, fmt.Sprintf("-slow-rate is %d, must be 0 (no slow group) or more", cfg.SlowRate))
	}
	if cfg.Work < 0 || cfg.Duration < 0 || cfg.Refresh <= 0 {
		problems = append(problems, "-work and -duration must not be negative, -refresh must be positive")
	}
	if len(problems) > 0 {
		return usagef("%s", strings.Join(problems, "; "))
	}
	return nil
}

// liveResult is what a live demo observed.
type liveResult struct {
	Sent, Processed int64
	Violations      []string
	Moves           int
}

// liveConsumer is one consumer of group live: running, or stopped by a key.
type liveConsumer struct {
	name      string
	c         *segmenter.Consumer // nil while stopped
	stop      context.CancelFunc  // ends its Run
	done      chan error          // Run's error, once it returned
	processed atomic.Int64
	lastCount int64 // processed at the last frame
	rate      float64
}

// liveMove is a line of the view's log of moves.
type liveMove struct {
	at   time.Duration
	text string
}

// live is a running live demo.
type live struct {
	cfg   liveConfig
	seg   *segmenter.Segmenter
	st    *segmenter.Stream
	run   string // this run's ID, in every message
	start time.Time
	ctx   context.Context // the demo's

	mu        sync.Mutex
	consumers []*liveConsumer
	holder    map[int]string    // partition -> the consumer of group live that holds it or held it last
	epoch     map[int]int64     // partition -> the epoch of that holder's lease
	released  map[int]time.Time // partition -> when its last holder let it go (absent: held)
	moves     []liveMove
	nmoves    int
	gen       int64
	last      map[string]int // key -> last sequence number delivered first
	bad       []string

	sent       atomic.Int64
	slowDone   atomic.Int64
	wg         sync.WaitGroup
	lastSent   int64
	sendRate   float64
	lastFrame  time.Time
	frames     int
	slow       *segmenter.Consumer
	slowCancel context.CancelFunc
	slowErr    chan error
}

// liveDemo runs demo -live until q, ctx's end or cfg.Duration, reading
// keys from in and drawing the view on out.
func liveDemo(ctx context.Context, cfg liveConfig, in io.Reader, out io.Writer) (res liveResult, err error) {
	if err := cfg.validate(); err != nil {
		return res, err
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "demo-" + strings.ReplaceAll(uuid.NewString(), "-", "")[:8]
	}
	url, closeRedis, err := demoRedis(cfg.RedisURL, out)
	if err != nil {
		return res, err
	}
	defer closeRedis()
	l := &live{cfg: cfg, run: uuid.NewString(), holder: map[int]string{}, epoch: map[int]int64{},
		released: map[int]time.Time{}, last: map[string]int{}, ctx: ctx}
	l.seg, err = segmenter.NewSegmenter(&segmenter.Config{RedisURL: url, Namespace: cfg.Namespace, SessionTimeout: liveSession,
		Hooks: []segmenter.Hook{generationHook{l}}})
	if err != nil {
		return res, asUsage(err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), demoShutdownTime)
		defer cancel()
		if cerr := l.seg.Close(cctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close: %w", cerr))
		}
	}()
	if l.st, err = l.seg.RegisterStream(ctx, liveStream, cfg.Partitions, 0); err != nil {
		return res, asUsage(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	if cfg.Duration > 0 {
		runCtx, cancel = context.WithTimeout(ctx, cfg.Duration)
	}
	defer cancel()
	l.start, l.lastFrame = time.Now(), time.Now()

	for i := 1; i <= cfg.Consumers; i++ {
		if err := l.startConsumer(ctx, fmt.Sprintf("c%d", i)); err != nil {
			l.stopAll(ctx)
			return res, err
		}
	}
	if cfg.SlowRate > 0 {
		if err := l.startSlow(ctx); err != nil {
			l.stopAll(ctx)
			return res, err
		}
	}
	prodCtx, stopProducer := context.WithCancel(runCtx)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.produce(prodCtx)
	}()

	keys, stopKeys := readKeys(in)
	defer stopKeys()
	tick := time.NewTicker(cfg.Refresh)
	defer tick.Stop()
	if cfg.ANSI {
		fmt.Fprint(out, "\x1b[2J")
	}
	l.draw(out, "")
	var loopErr error
loop:
	for {
		select {
		case <-runCtx.Done():
			break loop
		case <-tick.C:
			l.draw(out, "")
		case k, ok := <-keys:
			if !ok {
				keys = nil // no more input: run on until the duration or an interrupt
				continue
			}
			note, quit, err := l.key(ctx, k)
			if err != nil {
				loopErr = err
				break loop
			}
			if quit {
				break loop
			}
			l.draw(out, note)
		}
	}
	stopProducer()
	l.wg.Wait()
	l.stopAll(context.WithoutCancel(ctx))
	l.draw(out, "stopped")
	res = l.result()
	printLiveSummary(out, res, time.Since(l.start))
	if loopErr != nil {
		return res, loopErr
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("interrupted")
	}
	return res, nil
}

// readKeys reads lines of keys from in until it ends or stopKeys is
// called. stopKeys closes in when it can be closed (a file, a pipe), which
// ends a read in progress, and waits for the reader; a reader that cannot
// be closed is left to end with the process.
func readKeys(in io.Reader) (<-chan string, func()) {
	keys := make(chan string)
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(keys)
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			select {
			case keys <- strings.TrimSpace(sc.Text()):
			case <-quit:
				return
			}
		}
	}()
	var once sync.Once
	return keys, func() {
		once.Do(func() {
			close(quit)
			if c, ok := in.(io.Closer); ok {
				_ = c.Close()
				<-done
			}
		})
	}
}

// key acts on one line of input.
func (l *live) key(ctx context.Context, k string) (note string, quit bool, err error) {
	switch {
	case k == "":
		return "", false, nil
	case k == "q":
		return "quitting", true, nil
	case k == "+":
		l.mu.Lock()
		name := fmt.Sprintf("c%d", len(l.consumers)+1)
		n := len(l.consumers)
		l.mu.Unlock()
		if n >= 9 {
			return "at most 9 consumers", false, nil
		}
		return "", false, l.startConsumer(ctx, name) // noted there
	}
	n, convErr := strconv.Atoi(k)
	l.mu.Lock()
	if convErr != nil || n < 1 || n > len(l.consumers) {
		l.mu.Unlock()
		return fmt.Sprintf("unknown key %q: 1-%d stop or start a consumer, + adds one, q quits", k, len(l.consumers)), false, nil
	}
	lc := l.consumers[n-1]
	running := lc.c != nil
	l.mu.Unlock()
	if running {
		start := time.Now()
		if err := l.stopConsumer(ctx, lc); err != nil {
			return "", false, err
		}
		return fmt.Sprintf("%s stopped: it handed its partitions over in %s", lc.name, human(time.Since(start))), false, nil
	}
	return "", false, l.startConsumer(ctx, lc.name) // noted there
}

// note logs a line among the moves.
func (l *live) note(text string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.noteLocked(text)
}

func (l *live) noteLocked(text string) {
	l.moves = append(l.moves, liveMove{at: time.Since(l.start), text: text})
	if len(l.moves) > liveMaxMoves {
		l.moves = l.moves[len(l.moves)-liveMaxMoves:]
	}
}

// startConsumer registers consumer name of group live (again, when it was
// stopped) and runs it.
func (l *live) startConsumer(ctx context.Context, name string) error {
	l.mu.Lock()
	var lc *liveConsumer
	for _, x := range l.consumers {
		if x.name == name {
			lc = x
		}
	}
	if lc == nil {
		lc = &liveConsumer{name: name}
		l.consumers = append(l.consumers, lc)
	}
	l.mu.Unlock()
	c, err := l.seg.RegisterConsumer(ctx, liveStream, liveGroup, 100, liveMaxProcTime,
		segmenter.WithConsumerName(name), segmenter.WithMaxDeliveries(liveMaxDeliver),
		segmenter.WithPartitionListener(func(e segmenter.PartitionEvent) { l.partitionEvent(name, e) }))
	if err != nil {
		return fmt.Errorf("start consumer %s: %w", name, err)
	}
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	l.mu.Lock()
	lc.c, lc.stop, lc.done = c, stop, done
	l.noteLocked(name + " started")
	l.mu.Unlock()
	go func() {
		done <- c.Run(runCtx, func(hctx context.Context, m *contracts.CMessage) error { return l.handle(hctx, lc, m) },
			segmenter.WithRetryBackoff(50*time.Millisecond, 500*time.Millisecond))
	}()
	return nil
}

// stopConsumer ends a consumer's Run and shuts it down: its partitions go
// to the others at once.
func (l *live) stopConsumer(ctx context.Context, lc *liveConsumer) error {
	l.mu.Lock()
	c, stop, done := lc.c, lc.stop, lc.done
	lc.c = nil
	l.mu.Unlock()
	if c == nil {
		return nil
	}
	stop()
	runErr := <-done
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), demoShutdownTime)
	defer cancel()
	if err := c.Shutdown(sctx); err != nil {
		return fmt.Errorf("stop consumer %s: %w", lc.name, err)
	}
	if runErr != nil && !errors.Is(runErr, context.Canceled) {
		return fmt.Errorf("consumer %s: %w", lc.name, runErr)
	}
	return nil
}

// stopAll stops every consumer, the slow one too.
func (l *live) stopAll(ctx context.Context) {
	l.mu.Lock()
	cs := slices.Clone(l.consumers)
	l.mu.Unlock()
	var wg sync.WaitGroup
	for _, lc := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = l.stopConsumer(ctx, lc)
		}()
	}
	wg.Wait()
	if l.slow != nil {
		l.slowCancel()
		<-l.slowErr
		sctx, cancel := context.WithTimeout(ctx, demoShutdownTime)
		defer cancel()
		_ = l.slow.Shutdown(sctx)
		l.slow = nil
	}
}

// partitionEvent records who holds which partition of group live, and the
// moves: a partition let go by one consumer and taken by another. The
// events of two consumers can come in either order (the new owner may
// report its grant before the old one reports its release): epochs tell
// which is newer.
func (l *live) partitionEvent(name string, e segmenter.PartitionEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := e.Partition
	switch e.Kind {
	case segmenter.PartitionAssigned:
		if e.Epoch <= l.epoch[p] {
			return
		}
		if prev := l.holder[p]; prev != "" && prev != name {
			l.nmoves++
			l.noteLocked(fmt.Sprintf("partition %d: %s -> %s", p, prev, name))
		}
		l.holder[p], l.epoch[p] = name, e.Epoch
		delete(l.released, p)
	case segmenter.PartitionRevoked, segmenter.PartitionLost:
		if l.holder[p] == name && l.epoch[p] == e.Epoch {
			l.released[p] = time.Now() // the holder stays known: the next owner moves it from there
		}
	}
}

// generationHook counts the generations of group live.
type generationHook struct{ l *live }

func (h generationHook) OnRebalance(e segmenter.RebalanceEvent) {
	if e.Group != liveGroup {
		return
	}
	h.l.mu.Lock()
	h.l.gen = max(h.l.gen, e.Generation)
	h.l.mu.Unlock()
}

// handle is group live's handler: it checks per-key order on first
// deliveries, fails messages whose data is liveFailData, and takes
// cfg.Work.
func (l *live) handle(ctx context.Context, lc *liveConsumer, m *contracts.CMessage) error {
	if string(m.Data) == liveFailData {
		return errors.New("demo: this message always fails")
	}
	var p demoPayload
	if err := json.Unmarshal(m.Data, &p); err == nil && p.Run == l.run && m.DeliveryCount == 1 {
		l.mu.Lock()
		if prev, ok := l.last[p.Key]; ok && p.Seq <= prev {
			l.bad = append(l.bad, fmt.Sprintf("%s: seq %d delivered after seq %d (partition %d, entry %s)", p.Key, p.Seq, prev, m.Partition, m.Id))
		}
		l.last[p.Key] = max(l.last[p.Key], p.Seq)
		l.mu.Unlock()
	}
	if l.cfg.Work > 0 {
		t := time.NewTimer(l.cfg.Work)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	lc.processed.Add(1)
	return nil
}

// startSlow runs group audit's one consumer, which handles at most
// cfg.SlowRate messages a second: it lags.
func (l *live) startSlow(ctx context.Context) error {
	c, err := l.seg.RegisterConsumer(ctx, liveStream, liveSlowGroup, 10, liveMaxProcTime, segmenter.WithConsumerName("audit-1"))
	if err != nil {
		return fmt.Errorf("start the slow consumer: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.slow, l.slowCancel, l.slowErr = c, cancel, make(chan error, 1)
	every := time.Second / time.Duration(l.cfg.SlowRate)
	var mu sync.Mutex
	next := time.Now()
	go func() {
		l.slowErr <- c.Run(runCtx, func(hctx context.Context, m *contracts.CMessage) error {
			mu.Lock() // one message every `every`, over all partitions
			wait := time.Until(next)
			next = time.Now().Add(max(wait, 0)).Add(every)
			mu.Unlock()
			if wait > 0 {
				t := time.NewTimer(wait)
				defer t.Stop()
				select {
				case <-t.C:
				case <-hctx.Done():
					return hctx.Err()
				}
			}
			l.slowDone.Add(1)
			return nil
		})
	}()
	return nil
}

// produce sends cfg.Rate messages a second over demoKeys keys until ctx
// ends.
func (l *live) produce(ctx context.Context) {
	const step = 20 * time.Millisecond
	tick := time.NewTicker(step)
	defer tick.Stop()
	seq := make(map[string]int, demoKeys)
	due := 0.0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		due += float64(l.cfg.Rate) * step.Seconds()
		n := int(due)
		due -= float64(n)
		if n == 0 {
			continue
		}
		batch := make([]*contracts.PMessage, 0, n)
		for range n {
			key := fmt.Sprintf("user-%d", rand.IntN(demoKeys))
			seq[key]++
			data, _ := json.Marshal(demoPayload{Run: l.run, Key: key, Seq: seq[key]})
			batch = append(batch, &contracts.PMessage{PartitionKey: key, Data: data})
		}
		if _, err := l.st.SendBatch(ctx, batch); err != nil {
			if ctx.Err() != nil {
				return
			}
			l.note("send failed: " + err.Error())
			continue
		}
		l.sent.Add(int64(n))
	}
}

// draw prints the view: in place with ANSI escapes, else as one more frame.
func (l *live) draw(out io.Writer, note string) {
	lagCtx, cancel := context.WithTimeout(context.WithoutCancel(l.ctx), time.Second)
	lags, lagErr := l.seg.Lag(lagCtx, liveStream)
	cancel()
	now := time.Now()
	dt := now.Sub(l.lastFrame).Seconds()
	l.mu.Lock()
	defer l.mu.Unlock()
	if note != "" {
		l.noteLocked(note)
	}
	var b strings.Builder
	if l.cfg.ANSI {
		b.WriteString("\x1b[H") // home; each line clears its rest, the frame clears below it
	} else if l.frames > 0 {
		b.WriteString("\n")
	}
	l.frames++
	sent := l.sent.Load()
	if dt > 0.05 {
		l.sendRate = float64(sent-l.lastSent) / dt
		l.lastSent = sent
	}
	elapsed := now.Sub(l.start)
	fmt.Fprintf(&b, "segmenter demo -live: namespace %s, stream %s (%d partitions), %s, generation %d\n",
		l.cfg.Namespace, liveStream, l.cfg.Partitions, elapsed.Round(100*time.Millisecond), l.gen)
	fmt.Fprintf(&b, "sent %d (%.0f msg/s)\n\n", sent, l.sendRate)
	groupLag := func(g string) string {
		if l.cfg.RedisURL == "" {
			return "lag n/a (the embedded server does not track it: set REDIS_URL)"
		}
		if lagErr != nil {
			return "lag ? (" + lagErr.Error() + ")"
		}
		for _, gl := range lags {
			if gl.Group == g {
				return fmt.Sprintf("lag %d, pending %d", gl.Lag, gl.Pending)
			}
		}
		return "lag -"
	}
	var processed int64
	var total float64
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONSUMER\tSTATE\tPARTITIONS\tMSG/S\tPROCESSED")
	held := map[string][]int{}
	for p, name := range l.holder {
		if _, free := l.released[p]; !free {
			held[name] = append(held[name], p)
		}
	}
	for _, lc := range l.consumers {
		n := lc.processed.Load()
		processed += n
		if dt > 0.05 {
			lc.rate = float64(n-lc.lastCount) / dt
			lc.lastCount = n
		}
		total += lc.rate
		state := "running"
		if lc.c == nil {
			state = "stopped"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%d\n", lc.name, state, partitionList(held[lc.name]), lc.rate, n)
	}
	fmt.Fprintf(&b, "group %s: processed %d (%.0f msg/s), %s, per-key order violations %d\n",
		liveGroup, processed, total, groupLag(liveGroup), len(l.bad))
	_ = tw.Flush()
	if l.cfg.SlowRate > 0 {
		fmt.Fprintf(&b, "\ngroup %s (one consumer handling %d msg/s): processed %d, %s\n",
			liveSlowGroup, l.cfg.SlowRate, l.slowDone.Load(), groupLag(liveSlowGroup))
	}
	fmt.Fprintf(&b, "\nmoves and events (%d partitions moved so far):\n", l.nmoves)
	for _, m := range l.moves {
		fmt.Fprintf(&b, "  %7s  %s\n", m.at.Round(100*time.Millisecond), m.text)
	}
	fmt.Fprintf(&b, "\nkeys, then Enter: 1-%d stop/start that consumer, + add one, q quit\n", len(l.consumers))
	if l.cfg.Duration > 0 {
		fmt.Fprintf(&b, "running for %s more\n", max(l.cfg.Duration-elapsed, 0).Round(100*time.Millisecond))
	}
	frame := b.String()
	if l.cfg.ANSI {
		frame = strings.ReplaceAll(frame, "\n", "\x1b[K\n") + "\x1b[J"
	}
	l.lastFrame = now
	_, _ = io.WriteString(out, frame)
}

func (l *live) result() liveResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	res := liveResult{Sent: l.sent.Load(), Violations: slices.Clone(l.bad), Moves: l.nmoves}
	for _, lc := range l.consumers {
		res.Processed += lc.processed.Load()
	}
	return res
}

func printLiveSummary(out io.Writer, r liveResult, d time.Duration) {
	fmt.Fprintf(out, "\nsent %d, processed %d by group %s in %s, %d partition moves\n", r.Sent, r.Processed, liveGroup, d.Round(100*time.Millisecond), r.Moves)
	if len(r.Violations) == 0 {
		fmt.Fprintln(out, "per-key order: OK")
		return
	}
	fmt.Fprintf(out, "per-key order: VIOLATED (%d)\n", len(r.Violations))
	for i, v := range r.Violations {
		if i == maxViolationsOut {
			fmt.Fprintf(out, "  ... and %d more\n", len(r.Violations)-i)
			break
		}
		fmt.Fprintf(out, "  %s\n", v)
	}
}

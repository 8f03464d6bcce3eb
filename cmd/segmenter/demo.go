package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/uuid"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
)

const (
	demoStream       = "events"
	demoGroup        = "demo"
	demoKeys         = 50  // keys user-0 .. user-49
	demoSendChunk    = 100 // messages per SendBatch
	demoBatchSize    = 100
	demoMaxProcTime  = 5 * time.Second
	demoReadWait     = 500 * time.Millisecond
	demoShutdownTime = 10 * time.Second
	maxViolationsOut = 20 // violations printed
)

// demoConfig configures one run of the demo.
type demoConfig struct {
	Messages   int
	Partitions int
	Namespace  string // "" picks demo-<random>
	Timeout    time.Duration
	// RedisURL is the server to use; "" starts an embedded in-process
	// server (miniredis).
	RedisURL string
	// Logger receives the SDK's logs; nil discards them.
	Logger *slog.Logger
}

// demoResult is what a run of the demo observed.
type demoResult struct {
	Sent        int
	Received    int // distinct messages received
	Redelivered int // deliveries with a delivery count above 1
	Stale       int // messages left over from an earlier run in the same namespace, acked and ignored
	Partitions  int
	Keys        int      // distinct keys received
	Violations  []string // per-key order violations, poison and payload errors
	Duration    time.Duration
	Stats       segmenter.Stats
}

// demoPayload is the data of a demo message.
type demoPayload struct {
	Run string `json:"run"` // the run that sent it
	Key string `json:"key"`
	Seq int    `json:"seq"` // 1, 2, ... per key, in the order sent
}

func demoCommand() (*flag.FlagSet, runFunc) {
	cfg := demoConfig{}
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.IntVar(&cfg.Messages, "messages", 2000, "number of messages to send")
	fs.IntVar(&cfg.Partitions, "partitions", 8, "number of partitions of the stream")
	fs.StringVar(&cfg.Namespace, "namespace", "", "namespace of the demo's keys (default demo-<random>)")
	fs.DurationVar(&cfg.Timeout, "timeout", 60*time.Second, "give up when not every message was received by then")
	verbose := fs.Bool("v", false, "log the SDK's messages (lease grants, fencing, errors) to stderr")
	var lcfg liveConfig
	liveMode := fs.Bool("live", false, "run several consumers and show, refreshing, their partitions, throughput, lag and the moves when one is stopped or started (keys on stdin)")
	fs.IntVar(&lcfg.Consumers, "consumers", 3, "-live: consumers of group live at the start (1 to 9)")
	fs.IntVar(&lcfg.Rate, "rate", 200, "-live: messages sent per second")
	fs.IntVar(&lcfg.SlowRate, "slow-rate", 20, "-live: messages per second the one consumer of a second group, audit, handles (it lags); 0: no second group")
	fs.DurationVar(&lcfg.Work, "work", 2*time.Millisecond, "-live: time group live's handler takes per message")
	fs.DurationVar(&lcfg.Duration, "duration", 0, "-live: stop after this long (0: when q is typed, or interrupted)")
	fs.DurationVar(&lcfg.Refresh, "refresh", 500*time.Millisecond, "-live: how often the view is redrawn")
	plain := fs.Bool("plain", false, "-live: print the view frame after frame, without redrawing in place (the default when stdout is not a terminal)")
	return fs, func(ctx context.Context, inv invocation) int {
		cfg.RedisURL = inv.env(envRedisURL)
		if *verbose {
			cfg.Logger = slog.New(slog.NewTextHandler(inv.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		}
		if *liveMode {
			for _, name := range []string{"messages", "timeout"} {
				if explicit(fs, name) {
					return exitCode(inv.stderr, "demo", usagef("-%s applies to demo without -live only", name))
				}
			}
			lcfg.Partitions, lcfg.Namespace, lcfg.RedisURL = cfg.Partitions, cfg.Namespace, cfg.RedisURL
			if !explicit(fs, "partitions") {
				lcfg.Partitions = 12
			}
			lcfg.ANSI = !*plain && isTerminal(inv.stdout)
			res, err := liveDemo(ctx, lcfg, inv.stdin, inv.stdout)
			if err == nil && len(res.Violations) > 0 {
				err = fmt.Errorf("%d violation(s) of per-key order", len(res.Violations))
			}
			return exitCode(inv.stderr, "demo", err)
		}
		for _, name := range []string{"consumers", "rate", "slow-rate", "work", "duration", "refresh", "plain"} {
			if explicit(fs, name) {
				return exitCode(inv.stderr, "demo", usagef("-%s applies to demo -live only", name))
			}
		}
		res, err := demo(ctx, cfg, inv.stdout)
		if err == nil && len(res.Violations) > 0 {
			err = fmt.Errorf("%d violation(s) of per-key order", len(res.Violations))
		}
		return exitCode(inv.stderr, "demo", err)
	}
}

// explicit reports whether flag name was given on the command line.
func explicit(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}

func (cfg *demoConfig) validate() error {
	var problems []string
	if cfg.Messages < 1 {
		problems = append(problems, fmt.Sprintf("-messages is %d, must be at least 1", cfg.Messages))
	}
	if cfg.Partitions < 1 {
		problems = append(problems, fmt.Sprintf("-partitions is %d, must be at least 1", cfg.Partitions))
	}
	if cfg.Timeout <= 0 {
		problems = append(problems, fmt.Sprintf("-timeout is %v, must be positive", cfg.Timeout))
	}
	if len(problems) > 0 {
		return usagef("%s", strings.Join(problems, "; "))
	}
	return nil
}

// demo runs the demo and prints its progress and summary to out. It returns
// an error when the demo could not run to the end; order violations are in
// the result.
func demo(ctx context.Context, cfg demoConfig, out io.Writer) (res demoResult, err error) {
	if err := cfg.validate(); err != nil {
		return res, err
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "demo-" + strings.ReplaceAll(uuid.NewString(), "-", "")[:8]
	}
	// Shutdown runs even when ctx was cancelled (SIGINT), bounded on its own.
	cleanupCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), demoShutdownTime)
	}

	url, closeRedis, err := demoRedis(cfg.RedisURL, out)
	if err != nil {
		return res, err
	}
	defer closeRedis()

	seg, err := segmenter.NewSegmenter(&segmenter.Config{RedisURL: url, Namespace: cfg.Namespace, Logger: cfg.Logger})
	if err != nil {
		return res, asUsage(err)
	}
	defer func() {
		cctx, cancel := cleanupCtx()
		defer cancel()
		if cerr := seg.Close(cctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close: %w", cerr))
		}
	}()

	st, err := seg.RegisterStream(ctx, demoStream, cfg.Partitions, 0)
	if err != nil {
		return res, asUsage(err)
	}
	c, err := seg.RegisterConsumer(ctx, demoStream, demoGroup, demoBatchSize, demoMaxProcTime)
	if err != nil {
		return res, err
	}
	defer func() {
		cctx, cancel := cleanupCtx()
		defer cancel()
		if serr := c.Shutdown(cctx); serr != nil {
			err = errors.Join(err, fmt.Errorf("consumer shutdown: %w", serr))
		}
	}()
	fmt.Fprintf(out, "namespace %s, stream %s (%d partitions), group %s: sending %d messages over %d keys\n",
		cfg.Namespace, demoStream, st.Partitions(), demoGroup, cfg.Messages, demoKeys)

	runCtx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	start := time.Now()
	var wg sync.WaitGroup
	var sendErr error
	runID := uuid.NewString()
	wg.Add(1)
	go func() {
		defer wg.Done()
		sendErr = produce(runCtx, st, runID, cfg.Messages)
		if sendErr != nil {
			cancel() // stop the consumer: the rest will never come
		}
	}()
	res, consumeErr := consume(runCtx, c, runID, cfg.Messages)
	res.Duration = time.Since(start)
	wg.Wait()
	res.Sent = cfg.Messages
	res.Partitions = st.Partitions()
	res.Stats = c.Stats()

	switch {
	case consumeErr == nil && sendErr == nil:
	case ctx.Err() != nil:
		return res, fmt.Errorf("interrupted after receiving %d of %d messages", res.Received, cfg.Messages)
	case errors.Is(runCtx.Err(), context.DeadlineExceeded):
		return res, fmt.Errorf("timed out after %v: received %d of %d messages", cfg.Timeout, res.Received, cfg.Messages)
	case sendErr != nil:
		return res, fmt.Errorf("send: %w", sendErr)
	default:
		return res, fmt.Errorf("consume: %w", consumeErr)
	}
	printSummary(out, res)
	if cfg.RedisURL != "" {
		fmt.Fprintf(out, "the demo's keys stay in Redis; look at them with: segmenter inspect -namespace %s -stream %s\n",
			cfg.Namespace, demoStream)
	}
	return res, nil
}

// demoRedis returns the URL of the Redis server of a demo: url, or an
// embedded in-process server (miniredis) when url is "", which close stops.
// It says which on out.
func demoRedis(url string, out io.Writer) (_ string, close func(), err error) {
	if url != "" {
		rdb, err := segmenter.NewRedisClient(url)
		if err != nil {
			return "", nil, usagef("%s: %v", envRedisURL, err)
		}
		fmt.Fprintf(out, "redis: %s from REDIS_URL\n", addrOf(rdb))
		_ = rdb.Close()
		return url, func() {}, nil
	}
	mr, err := miniredis.Run()
	if err != nil {
		return "", nil, fmt.Errorf("start embedded Redis: %w", err)
	}
	fmt.Fprintf(out, "redis: embedded in-process server (miniredis) at %s, since REDIS_URL is unset\n", mr.Addr())
	return "redis://" + mr.Addr(), mr.Close, nil
}

// asUsage marks an invalid argument of the SDK (a bad namespace, say) as a
// usage error.
func asUsage(err error) error {
	if errors.Is(err, segmenter.ErrInvalidArgument) {
		return &usageError{msg: err.Error()}
	}
	return err
}

// produce sends n messages over demoKeys keys, every key once per round of
// demoKeys messages in a random order, in chunks of
// demoSendChunk with SendBatch. Each message carries the run's ID and its
// key's sequence number.
func produce(ctx context.Context, st *segmenter.Stream, run string, n int) error {
	seq := make(map[string]int, demoKeys)
	batch := make([]*contracts.PMessage, 0, demoSendChunk)
	var order []int // the keys of one round, each once, shuffled
	for i := 0; i < n; i++ {
		if i%demoKeys == 0 {
			order = rand.Perm(demoKeys)
		}
		key := fmt.Sprintf("user-%d", order[i%demoKeys])
		seq[key]++
		data, err := json.Marshal(demoPayload{Run: run, Key: key, Seq: seq[key]})
		if err != nil {
			return err
		}
		batch = append(batch, &contracts.PMessage{PartitionKey: key, Data: data})
		if len(batch) == demoSendChunk || i == n-1 {
			if _, err := st.SendBatch(ctx, batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	return nil
}

// consume reads and acks until n distinct messages of run were received,
// checking that the first deliveries of every key come in increasing sequence
// order.
func consume(ctx context.Context, c *segmenter.Consumer, run string, n int) (demoResult, error) {
	var res demoResult
	type entry struct {
		partition uint32
		id        string // unique within its partition only
	}
	seen := make(map[entry]struct{}, n) // messages received
	last := make(map[string]int)        // key -> last sequence number delivered first
	for len(seen) < n {
		msgs, err := c.Read(ctx, demoReadWait)
		if err != nil {
			if errors.Is(err, segmenter.ErrFenced) {
				continue // the partition is dropped; its messages come again
			}
			res.Received, res.Keys = len(seen), len(last)
			return res, err
		}
		for _, m := range msgs {
			if perr := segmenter.Poison(m); perr != nil {
				res.Violations = append(res.Violations, perr.Error())
				continue
			}
			var p demoPayload
			if err := json.Unmarshal(m.Data, &p); err != nil || p.Key != m.PartitionKey {
				res.Violations = append(res.Violations, fmt.Sprintf("partition %d entry %s: unexpected payload %q", m.Partition, m.Id, m.Data))
				continue
			}
			if p.Run != run {
				res.Stale++
				continue
			}
			if m.DeliveryCount > 1 {
				res.Redelivered++
			}
			seen[entry{m.Partition, m.Id}] = struct{}{}
			if m.DeliveryCount > 1 {
				continue // order is checked on first deliveries
			}
			if prev, ok := last[p.Key]; ok && p.Seq <= prev {
				res.Violations = append(res.Violations, fmt.Sprintf("%s: seq %d delivered after seq %d (partition %d, entry %s)",
					p.Key, p.Seq, prev, m.Partition, m.Id))
			}
			last[p.Key] = max(last[p.Key], p.Seq)
		}
		// Ack even when interrupted meanwhile: Shutdown then need not wait
		// for these messages to pass maxProcessingTime.
		if err := c.Ack(context.WithoutCancel(ctx), msgs...); err != nil && !errors.Is(err, segmenter.ErrFenced) {
			res.Received, res.Keys = len(seen), len(last)
			return res, err
		}
	}
	res.Received, res.Keys = len(seen), len(last)
	return res, nil
}

func printSummary(out io.Writer, r demoResult) {
	fmt.Fprintf(out, "messages sent: %d\n", r.Sent)
	fmt.Fprintf(out, "messages received: %d (redeliveries: %d)\n", r.Received, r.Redelivered)
	if r.Stale > 0 {
		fmt.Fprintf(out, "messages of earlier runs in this namespace: %d (acked, not counted)\n", r.Stale)
	}
	fmt.Fprintf(out, "partitions: %d\n", r.Partitions)
	fmt.Fprintf(out, "keys: %d\n", r.Keys)
	if len(r.Violations) == 0 {
		fmt.Fprintln(out, "per-key order: OK")
	} else {
		fmt.Fprintf(out, "per-key order: VIOLATED (%d)\n", len(r.Violations))
		for i, v := range r.Violations {
			if i == maxViolationsOut {
				fmt.Fprintf(out, "  ... and %d more\n", len(r.Violations)-i)
				break
			}
			fmt.Fprintf(out, "  %s\n", v)
		}
	}
	fmt.Fprintf(out, "duration: %v\n", r.Duration.Round(time.Millisecond))
	if s := r.Duration.Seconds(); s > 0 {
		fmt.Fprintf(out, "throughput: %.0f msg/s\n", float64(r.Received)/s)
	}
	fmt.Fprintf(out, "consumer stats: delivered %d, redelivered %d, acked %d, fenced %d, trimmed %d, poison %d\n",
		r.Stats.Delivered, r.Stats.Redelivered, r.Stats.Acked, r.Stats.Fenced, r.Stats.Trimmed, r.Stats.Poison)
}

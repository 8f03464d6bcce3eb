package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
)

// stamped returns a payload of payloadSize bytes whose first 8 carry at,
// the send time as an offset from a base time.
func stamped(at time.Duration) []byte {
	b := make([]byte, payloadSize)
	copy(b, payload)
	binary.LittleEndian.PutUint64(b, uint64(at))
	return b
}

func stampOf(data []byte) time.Duration {
	if len(data) < 8 {
		return 0
	}
	return time.Duration(binary.LittleEndian.Uint64(data))
}

// pace calls send(i, at) rate times a second until d passed or ctx ends;
// at is the time of the call since base. It returns how many it sent.
func pace(ctx context.Context, base time.Time, rate int, d time.Duration, send func(i int, at time.Duration) error) (int, error) {
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for i := 0; ; i++ {
		due := start.Add(time.Duration(i) * interval)
		if w := time.Until(due); w > 0 {
			time.Sleep(w)
		}
		if time.Since(start) >= d || ctx.Err() != nil {
			return i, nil
		}
		if err := send(i, time.Since(base)); err != nil {
			return i, err
		}
	}
}

// latencies collects send → handler latencies of messages sent after warm.
type latencies struct {
	mu   sync.Mutex
	warm time.Duration
	ds   []time.Duration
	seen atomic.Int64
}

func (l *latencies) record(base time.Time, data []byte) {
	now := time.Since(base)
	at := stampOf(data)
	l.seen.Add(1)
	if at < l.warm {
		return
	}
	l.mu.Lock()
	l.ds = append(l.ds, now-at)
	l.mu.Unlock()
}

func (l *latencies) sorted() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := slices.Clone(l.ds)
	slices.Sort(s)
	return s
}

const latencyRate = 2000 // messages per second

// Figure 6: latency from Send to the handler at a fixed 2,000 msg/s, vs a
// raw XADD read by an XREADGROUP BLOCK loop that acks each batch; and the
// same at 20 msg/s (6b), where a consumer mostly waits.
func figLatency(t *testing.T, e *env) {
	f := newFixture(t, nil, partitions, sendMaxLen, nil) // default timings
	for _, tc := range []struct {
		fig        string
		rate       int
		dur, warm  time.Duration
		withTarget bool
	}{
		{"6", latencyRate, e.m.latencyDur, e.m.latencyWarm, true},
		{"6b", 20, e.m.latencyDur, e.m.latencyWarm, false},
	} {
		s, r, cs, cr := measureLatency(t, f, tc.fig, tc.rate, tc.dur, tc.warm)
		for _, q := range []struct {
			name string
			q    float64
		}{{"p50", 0.50}, {"p99", 0.99}, {"p99.9", 0.999}} {
			if tc.rate*int(tc.dur/time.Second) < 1000 && q.q > 0.99 {
				continue // too few samples
			}
			sv, rv := percentile(s, q.q), percentile(r, q.q)
			row := row{fig: tc.fig + " " + q.name, name: fmt.Sprintf("latency Send → handler, %d msg/s, %s", tc.rate, q.name),
				sdk: dur(sv), raw: dur(rv), ratio: ratio(float64(sv) / float64(rv))}
			if tc.withTarget && q.name == "p99" {
				row.target, row.met = "≤ 2× raw", met(float64(sv) <= 2*float64(rv))
			}
			e.tbl.add(row)
		}
		e.tbl.note("figure %s: %d msg/s for %v after %v of warm-up, default Config: %d (SDK) and %d (raw) samples, max %v (SDK) and %v (raw); ratio is SDK/raw, lower is better; "+
			"per message (producer and consumer): SDK %.1f round trips, Redis CPU %.0f µs (%s); raw %.1f round trips, Redis CPU %.0f µs (%s)",
			tc.fig, tc.rate, tc.dur, tc.warm, len(s), len(r), dur(s[len(s)-1]), dur(r[len(r)-1]),
			float64(cs.trips)/float64(cs.n), float64(cs.redis)/1e3/float64(cs.n), cs.topCommands(3),
			float64(cr.trips)/float64(cr.n), float64(cr.redis)/1e3/float64(cr.n), cr.topCommands(3))
	}
}

// measureLatency returns the sorted send → handler latencies of the SDK
// and of the raw baseline, and what each cost.
func measureLatency(t *testing.T, f *fixture, fig string, rate int, d, warm time.Duration) (sdkLat, rawLat []time.Duration, sdkCost, rawCost cost) {
	ctx := context.Background()
	total := warm + d
	group := "lat" + strings.ReplaceAll(fig, " ", "")

	// The SDK: Send, and Run's handler.
	sdk := &latencies{warm: warm}
	c, err := f.consumer(ctx, group, batchSize, segmenter.WithStartPosition(segmenter.StartLatest))
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now()
	rctx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() {
		ran <- c.Run(rctx, func(_ context.Context, m *contracts.CMessage) error {
			sdk.record(base, m.Data)
			return nil
		})
	}()
	var sent int
	_, err = f.costed(1, &sdkCost, func() (time.Duration, error) {
		sent, err = pace(ctx, base, rate, total, func(i int, at time.Duration) error {
			_, err := f.st.Send(ctx, &contracts.PMessage{PartitionKey: keyNames[(7*i)%numKeys], Data: stamped(at)})
			return err
		})
		return 0, err
	})()
	if err != nil {
		t.Fatal(err)
	}
	sdkCost.n = sent
	if _, err := waitFor(10*time.Second, time.Millisecond, func() bool { return sdk.seen.Load() >= int64(sent) }); err != nil {
		t.Fatalf("SDK: handled %d of %d messages: %v", sdk.seen.Load(), sent, err)
	}
	stop()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	shutdown(c)

	// Raw: XADD, and a consumer blocking in XREADGROUP over the 8 streams.
	raw := &latencies{warm: warm}
	pipe := f.rdb.Pipeline()
	for _, k := range f.rawKeys {
		pipe.XGroupCreateMkStream(ctx, k, group, "$")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	streams := slices.Clone(f.rawKeys)
	for range f.rawKeys {
		streams = append(streams, ">")
	}
	base = time.Now()
	rctx, stop = context.WithCancel(ctx)
	rawDone := make(chan error, 1)
	go func() {
		args := &redis.XReadGroupArgs{Group: group, Consumer: "raw", Streams: streams, Count: batchSize, Block: 500 * time.Millisecond}
		for rctx.Err() == nil {
			res, err := f.rdb.XReadGroup(rctx, args).Result()
			if errors.Is(err, redis.Nil) {
				continue
			}
			if err != nil {
				if rctx.Err() != nil {
					break
				}
				rawDone <- err
				return
			}
			pipe := f.rdb.Pipeline()
			for _, s := range res {
				ids := make([]string, len(s.Messages))
				for i, m := range s.Messages {
					d, _ := m.Values["d"].(string)
					raw.record(base, []byte(d))
					ids[i] = m.ID
				}
				pipe.XAck(rctx, s.Stream, group, ids...)
			}
			if _, err := pipe.Exec(rctx); err != nil && rctx.Err() == nil {
				rawDone <- err
				return
			}
		}
		rawDone <- nil
	}()
	_, err = f.costed(1, &rawCost, func() (time.Duration, error) {
		sent, err = pace(ctx, base, rate, total, func(i int, at time.Duration) error {
			a := f.rawXAddArgs(7 * i)
			a.Values = rawValues(keyNames[(7*i)%numKeys], stamped(at))
			return f.rdb.XAdd(ctx, a).Err()
		})
		return 0, err
	})()
	if err != nil {
		t.Fatal(err)
	}
	rawCost.n = sent
	if _, err := waitFor(10*time.Second, time.Millisecond, func() bool { return raw.seen.Load() >= int64(sent) }); err != nil {
		t.Fatalf("raw: read %d of %d messages: %v", raw.seen.Load(), sent, err)
	}
	stop()
	if err := <-rawDone; err != nil {
		t.Fatal(err)
	}
	return sdk.sorted(), raw.sorted(), sdkCost, rawCost
}

// firstReads records when a reader first read each partition since arm.
type firstReads struct {
	mu    sync.Mutex
	armed time.Time
	first map[int]time.Time
}

func (fr *firstReads) arm() time.Time {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	fr.armed = time.Now()
	fr.first = map[int]time.Time{}
	return fr.armed
}

func (fr *firstReads) saw(p int, at time.Time) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	if fr.first == nil || at.Before(fr.armed) {
		return
	}
	if _, ok := fr.first[p]; !ok {
		fr.first[p] = at
	}
}

// readAll returns the first read of each of ps, or false if one is missing.
func (fr *firstReads) readAll(ps []int) ([]time.Time, bool) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	out := make([]time.Time, len(ps))
	for i, p := range ps {
		at, ok := fr.first[p]
		if !ok {
			return nil, false
		}
		out[i] = at
	}
	return out, true
}

// reader reads and acks with c until stop is called, noting first reads.
func reader(t *testing.T, c *segmenter.Consumer, fr *firstReads) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		for ctx.Err() == nil {
			msgs, err := c.Read(ctx, time.Second)
			now := time.Now()
			for _, m := range msgs {
				fr.saw(int(m.Partition), now)
			}
			if len(msgs) > 0 {
				if err := c.Ack(context.Background(), msgs...); err != nil && !errors.Is(err, segmenter.ErrFenced) {
					done <- err
					return
				}
			}
			if err != nil && ctx.Err() == nil && !errors.Is(err, segmenter.ErrFenced) {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("reader: %v", err)
		}
	}
}

// firstOf returns the earliest first read among ps, false if none.
func (fr *firstReads) firstOf(ps []int) (time.Time, bool) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	var first time.Time
	for _, p := range ps {
		if at, ok := fr.first[p]; ok && (first.IsZero() || at.Before(first)) {
			first = at
		}
	}
	return first, !first.IsZero()
}

func partitionsOf(c *segmenter.Consumer) []int {
	var ps []int
	for _, o := range c.Assignment() {
		ps = append(ps, o.Partition)
	}
	return ps
}

// sendOneEach sends one message to each partition of ps.
func sendOneEach(ctx context.Context, st *segmenter.Stream, ps []int) error {
	msgs := make([]*contracts.PMessage, len(ps))
	for i, p := range ps {
		msgs[i] = &contracts.PMessage{PartitionKey: keyForPartition(st, p, 0), Data: payload}
	}
	_, err := st.SendBatch(ctx, msgs)
	return err
}

func spread(ts []time.Time, t0 time.Time) (first, last time.Duration) {
	first, last = time.Duration(1<<62), 0
	for _, at := range ts {
		first, last = min(first, at.Sub(t0)), max(last, at.Sub(t0))
	}
	return first, last
}

// pair waits until a and b hold half of the partitions each.
func pair(a, b *segmenter.Consumer, p int) error {
	_, err := waitFor(60*time.Second, 2*time.Millisecond, func() bool {
		return len(a.Assignment()) == p/2 && len(b.Assignment()) == p/2
	})
	return err
}

// Figure 7: graceful hand-over with the default timings: from A.Shutdown()
// to B's first read of a partition A held, a message waiting in each.
func figHandover(t *testing.T, e *env) {
	ctx := context.Background()
	f := newFixture(t, nil, partitions, 0, nil)
	segA := newSegmenter(t, newClient(t), f.ns, nil)
	segB := newSegmenter(t, newClient(t), f.ns, nil)
	b, err := segB.RegisterConsumer(ctx, sdkStream, "g", batchSize, 30*time.Second, segmenter.WithConsumerName("B"))
	if err != nil {
		t.Fatal(err)
	}
	fr := &firstReads{}
	stop := reader(t, b, fr)
	defer stop()
	var firsts, alls, shutdowns []time.Duration
	for rep := range e.m.handoverReps {
		a, err := segA.RegisterConsumer(ctx, sdkStream, "g", batchSize, 30*time.Second, segmenter.WithConsumerName(fmt.Sprintf("A%d", rep)))
		if err != nil {
			t.Fatal(err)
		}
		if err := pair(a, b, partitions); err != nil {
			t.Fatalf("A and B never shared the partitions: A %v, B %v", a.Assignment(), b.Assignment())
		}
		held := partitionsOf(a)
		if err := sendOneEach(ctx, f.st, held); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		t0 := fr.arm()
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = a.Shutdown(sctx)
		shutdowns = append(shutdowns, time.Since(t0))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		var reads []time.Time
		if _, err := waitFor(30*time.Second, time.Millisecond, func() bool {
			var ok bool
			reads, ok = fr.readAll(held)
			return ok
		}); err != nil {
			t.Fatalf("B never read every partition A held (%v): %v", held, err)
		}
		first, last := spread(reads, t0)
		firsts, alls = append(firsts, first), append(alls, last)
	}
	m := medianDur(firsts)
	e.tbl.add(row{fig: "7", name: "graceful hand-over, Shutdown → first read",
		sdk: dur(m), target: "≤ 100 ms", met: met(m <= 100*time.Millisecond)})
	e.tbl.note("figure 7: %d hand-overs of 4 of 8 partitions, default Config (heartbeat 1s, session 10s); first read %s (median %s, max %s); "+
		"all 4 partitions read %s (median %s); A.Shutdown() returned after %s",
		len(firsts), durs(firsts), dur(m), dur(slices.Max(firsts)), durs(alls), dur(medianDur(alls)), durs(shutdowns))
}

// Figure 8: crash takeover: A's client is cut; from the cut to B's first
// read of a partition A held.
func figCrash(t *testing.T, e *env) {
	ctx := context.Background()
	cfg := e.m.crashCfg
	session, heartbeat := 10*time.Second, time.Second // the defaults
	if cfg != nil {
		session, heartbeat = cfg.SessionTimeout, cfg.HeartbeatInterval
	}
	f := newFixture(t, nil, partitions, 0, nil)
	segB := newSegmenter(t, newClient(t), f.ns, cfg)
	b, err := segB.RegisterConsumer(ctx, sdkStream, "g", batchSize, 30*time.Second, segmenter.WithConsumerName("B"))
	if err != nil {
		t.Fatal(err)
	}
	fr := &firstReads{}
	stop := reader(t, b, fr)
	defer stop()
	var firsts []time.Duration
	for rep := range e.m.crashReps {
		rdbA, cut := gatedClient(t)
		segA := newSegmenter(t, rdbA, f.ns, cfg)
		a, err := segA.RegisterConsumer(ctx, sdkStream, "g", batchSize, 30*time.Second, segmenter.WithConsumerName(fmt.Sprintf("A%d", rep)))
		if err != nil {
			t.Fatal(err)
		}
		if err := pair(a, b, partitions); err != nil {
			t.Fatalf("A and B never shared the partitions: A %v, B %v", a.Assignment(), b.Assignment())
		}
		held := partitionsOf(a)
		t0 := fr.arm()
		cut.closed.Store(true)
		if err := sendOneEach(ctx, f.st, held); err != nil {
			t.Fatal(err)
		}
		var first time.Time
		if _, err := waitFor(3*session+10*time.Second, time.Millisecond, func() bool {
			var ok bool
			first, ok = fr.firstOf(held)
			return ok
		}); err != nil {
			t.Fatalf("B never read a partition A held (%v): %v", held, err)
		}
		firsts = append(firsts, first.Sub(t0))
		// A is still cut: its Shutdown gives up on Redis and returns.
		sctx, cancel := context.WithTimeout(ctx, 2*session)
		_ = a.Shutdown(sctx)
		cancel()
	}
	m := medianDur(firsts)
	limit := session + heartbeat
	timing := "default Config (session 10s, heartbeat 1s)"
	if cfg != nil {
		timing = fmt.Sprintf("SMOKE timings (session %v, heartbeat %v)", session, heartbeat)
	}
	e.tbl.add(row{fig: "8", name: "crash takeover, cut → first read",
		sdk: dur(m), target: "≤ " + dur(limit), met: met(m <= limit)})
	e.tbl.note("figure 8: %d crash(es), %s; A's client fails every command from the cut (a go-redis hook); takeovers %s",
		len(firsts), timing, durs(firsts))
}

func durs(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = dur(d)
	}
	return strings.Join(s, ", ")
}

// deliveries records handler calls per partition.
type deliveries struct {
	mu sync.Mutex
	at map[int][]time.Time
}

func (d *deliveries) add(p int, at time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.at == nil {
		d.at = map[int][]time.Time{}
	}
	d.at[p] = append(d.at[p], at)
}

// maxGap returns the longest gap between consecutive deliveries of ps
// whose later delivery falls in (from, to].
func (d *deliveries) maxGap(ps []int, from, to time.Time) time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	var g time.Duration
	for _, p := range ps {
		ts := d.at[p]
		for i := 1; i < len(ts); i++ {
			if ts[i].After(from) && !ts[i].After(to) {
				g = max(g, ts[i].Sub(ts[i-1]))
			}
		}
	}
	return g
}

// Figure 9: a consumer joins a group of 1 (8 partitions, 2,000 msg/s):
// time to its first message, and the longest stall of the partitions the
// first consumer keeps.
func figJoin(t *testing.T, e *env) {
	ctx := context.Background()
	f := newFixture(t, nil, partitions, sendMaxLen, nil)
	keys := make([][]string, partitions)
	for p := range keys {
		for j := range 16 {
			keys[p] = append(keys[p], keyForPartition(f.st, p, j))
		}
	}
	segA := newSegmenter(t, newClient(t), f.ns, nil)
	segB := newSegmenter(t, newClient(t), f.ns, nil)
	var joins, stalls, before []time.Duration
	for rep := range e.m.joinReps {
		group := fmt.Sprintf("join%d", rep)
		a, err := segA.RegisterConsumer(ctx, sdkStream, group, batchSize, 30*time.Second,
			segmenter.WithConsumerName("A"), segmenter.WithStartPosition(segmenter.StartLatest))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := waitFor(30*time.Second, time.Millisecond, func() bool { return len(a.Assignment()) == partitions }); err != nil {
			t.Fatal("A never held every partition")
		}
		dA := &deliveries{}
		rctx, stopRuns := context.WithCancel(ctx)
		var wg sync.WaitGroup
		runErrs := make(chan error, 2)
		wg.Go(func() {
			runErrs <- a.Run(rctx, func(_ context.Context, m *contracts.CMessage) error {
				dA.add(int(m.Partition), time.Now())
				return nil
			})
		})
		pctx, stopProducer := context.WithCancel(ctx)
		produced := make(chan error, 1)
		go func() {
			_, err := pace(pctx, time.Now(), latencyRate, time.Hour, func(i int, _ time.Duration) error {
				p := i % partitions
				_, err := f.st.Send(pctx, &contracts.PMessage{PartitionKey: keys[p][(i/partitions)%len(keys[p])], Data: payload})
				if pctx.Err() != nil {
					return nil
				}
				return err
			})
			produced <- err
		}()
		steadyFrom := time.Now().Add(e.m.joinSteady / 4)
		time.Sleep(e.m.joinSteady)

		t0 := time.Now()
		var bFirst atomic.Int64 // ns since t0
		b, err := segB.RegisterConsumer(ctx, sdkStream, group, batchSize, 30*time.Second, segmenter.WithConsumerName("B"))
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			runErrs <- b.Run(rctx, func(_ context.Context, m *contracts.CMessage) error {
				bFirst.CompareAndSwap(0, int64(time.Since(t0)))
				return nil
			})
		})
		if _, err := waitFor(60*time.Second, time.Millisecond, func() bool {
			return bFirst.Load() > 0 && len(a.Assignment()) == partitions/2 && len(b.Assignment()) == partitions/2
		}); err != nil {
			t.Fatalf("the join never completed: A %v, B %v, B's first message %v", a.Assignment(), b.Assignment(), time.Duration(bFirst.Load()))
		}
		time.Sleep(e.m.joinSteady / 2)
		end := time.Now()
		stopProducer()
		if err := <-produced; err != nil {
			t.Fatal(err)
		}
		unmoved := partitionsOf(a)
		stopRuns()
		wg.Wait()
		close(runErrs)
		for err := range runErrs {
			if err != nil {
				t.Fatal(err)
			}
		}
		shutdown(b)
		shutdown(a)
		joins = append(joins, time.Duration(bFirst.Load()))
		stalls = append(stalls, dA.maxGap(unmoved, t0, end))
		before = append(before, dA.maxGap(unmoved, steadyFrom, t0))
	}
	mj, ms := medianDur(joins), medianDur(stalls)
	e.tbl.add(row{fig: "9", name: "join at 2,000 msg/s: joiner's first message",
		sdk: dur(mj)})
	e.tbl.add(row{fig: "9b", name: "join: longest gap of the kept partitions",
		sdk: dur(ms), raw: dur(medianDur(before)) + " before the join", target: "≤ 10 ms", met: met(ms <= 10*time.Millisecond)})
	e.tbl.note("figure 9: %d join(s), default Config, 250 msg/s per partition (a message every 4 ms, so a gap of ~4 ms is no stall); joiner's first message %s; longest gap of the kept partitions from the join to %v after the hand-over %s (before the join: %s)",
		len(joins), durs(joins), e.m.joinSteady/2, durs(stalls), durs(before))
}

// member is one consumer of figure 10, with its own client and Segmenter.
type member struct {
	c   *segmenter.Consumer
	cut *gate
}

// balanced reports whether the consumers hold every partition, each
// ⌊P/M⌋ or ⌈P/M⌉.
func balanced(ms []*member, P int) bool {
	lo, hi := P/len(ms), (P+len(ms)-1)/len(ms)
	total := 0
	for _, m := range ms {
		n := len(m.c.Assignment())
		if n < lo || n > hi {
			return false
		}
		total += n
	}
	return total == P
}

// Figure 10: a group of 64 consumers on 1,024 partitions in one process,
// each consumer with its own go-redis client and Segmenter (as 64
// processes would be): convergence after a join and after a crash, and the
// Redis load of an idle group.
func figGroup(t *testing.T, e *env) {
	ctx := context.Background()
	M, P, cfg := e.m.groupMembers, e.m.groupParts, e.m.groupCfg
	f := newFixture(t, nil, P, 0, cfg)
	join := func(i int) (*member, error) {
		rdb, g := gatedClient(t)
		seg := newSegmenter(t, rdb, f.ns, cfg)
		c, err := seg.RegisterConsumer(ctx, sdkStream, "g", batchSize, 30*time.Second, segmenter.WithConsumerName(fmt.Sprintf("c%02d", i)))
		if err != nil {
			return nil, err
		}
		return &member{c: c, cut: g}, nil
	}
	members := make([]*member, M-1)
	var wg sync.WaitGroup
	errs := make([]error, M-1)
	t0 := time.Now()
	for i := range M - 1 {
		wg.Go(func() { members[i], errs[i] = join(i) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	defer func() {
		var wg sync.WaitGroup
		for _, m := range members {
			wg.Go(func() { shutdown(m.c) })
		}
		wg.Wait()
	}()
	if _, err := waitFor(5*time.Minute, 5*time.Millisecond, func() bool { return balanced(members, P) }); err != nil {
		t.Fatalf("%d consumers never balanced", M-1)
	}
	cold := time.Since(t0) // from the first RegisterConsumer

	// A join.
	t0 = time.Now()
	last, err := join(M - 1)
	if err != nil {
		t.Fatal(err)
	}
	members = append(members, last)
	if _, err := waitFor(5*time.Minute, 5*time.Millisecond, func() bool { return balanced(members, P) }); err != nil {
		t.Fatalf("never balanced after the join")
	}
	joinTime := time.Since(t0)

	// Idle load: heartbeats and lease renewals only.
	time.Sleep(min(2*time.Second, e.m.idleWindow))
	idle, err := measureLoad(ctx, f.rdb, e.m.idleWindow)
	if err != nil {
		t.Fatal(err)
	}

	// Idle load with every consumer in Run, waiting for messages.
	rctx, stopRuns := context.WithCancel(ctx)
	var runs sync.WaitGroup
	for _, m := range members {
		runs.Go(func() {
			_ = m.c.Run(rctx, func(context.Context, *contracts.CMessage) error { return nil })
		})
	}
	time.Sleep(min(2*time.Second, e.m.idleWindow))
	running, err := measureLoad(ctx, f.rdb, e.m.idleWindow)
	stopRuns()
	runs.Wait()
	if err != nil {
		t.Fatal(err)
	}

	// A crash: the last consumer's client is cut.
	crashed := members[M-1]
	rest := members[:M-1]
	t0 = time.Now()
	crashed.cut.closed.Store(true)
	if _, err := waitFor(5*time.Minute, 5*time.Millisecond, func() bool { return balanced(rest, P) }); err != nil {
		t.Fatalf("never balanced after the crash")
	}
	crashTime := time.Since(t0)
	session := cfg.SessionTimeout
	hb := cfg.HeartbeatInterval
	if hb == 0 {
		hb = min(time.Second, session/3)
	}

	name := fmt.Sprintf("%d×%d", M, P)
	e.tbl.add(row{fig: "10", name: name + ": a join → balanced", sdk: dur(joinTime)})
	e.tbl.add(row{fig: "10b", name: name + fmt.Sprintf(": a crash → balanced, session %v", session), sdk: dur(crashTime),
		target: "≤ " + dur(session+hb), met: met(crashTime <= session+hb)})
	e.tbl.add(row{fig: "10c", name: name + " idle: Redis commandstats",
		sdk: fmt.Sprintf("%.2f%% core, %.0f calls/s", idle.pct(), idle.callsPerSec()), target: "≤ 1%", met: met(idle.pct() <= 1)})
	e.tbl.add(row{fig: "10d", name: name + " idle: Redis process CPU",
		sdk: fmt.Sprintf("%.2f%% core", idle.cpuPct())})
	e.tbl.add(row{fig: "10e", name: name + " idle in Run: commandstats (CPU)",
		sdk: fmt.Sprintf("%.2f%% core, %.0f calls/s (%.2f%%)", running.pct(), running.callsPerSec(), running.cpuPct())})
	e.tbl.note("figure 10: %d consumers in one process, each with its own go-redis client and Segmenter; SessionTimeout %v, heartbeat %v (for this figure only); "+
		"forming the group of %d from nothing took %s; the crash cuts one consumer's client (a go-redis hook)", M, session, hb, M-1, dur(cold))
	e.tbl.note("figure 10c idle, per command over %v (commands inside scripts and transactions are part of evalsha's, eval's and exec's time): %s", e.m.idleWindow, idle.detail())
	e.tbl.note("figure 10e idle in Run, per command: %s", running.detail())
}

// load is the Redis work seen over a window.
type load struct {
	window time.Duration
	cmds   map[string]cmdStat
	cpu    time.Duration
}

// Commands the SDK sends itself; the others seen run inside its scripts or
// its MULTI/EXEC transactions (their time is counted in evalsha's, eval's
// or exec's). info is the harness's.
var topLevel = map[string]bool{"evalsha": true, "eval": true, "xread": true, "publish": true, "set": true,
	"subscribe": true, "ping": true, "hello": true, "client|setinfo": true, "xadd": true, "xgroup|create": true, "sadd": true, "hget": true, "hsetnx": true,
	"watch": true, "multi": true, "exec": true, "client|unblock": true, "client|id": true, "sismember": true}

// isTop reports whether command k of stats ran at top level: when no
// script ran, every command did.
func isTop(stats map[string]cmdStat, k string) bool {
	if _, ok := stats["evalsha"]; !ok {
		if _, ok := stats["eval"]; !ok {
			return true
		}
	}
	return topLevel[k]
}

func measureLoad(ctx context.Context, rdb *redis.Client, window time.Duration) (load, error) {
	s0, err := commandStats(ctx, rdb)
	if err != nil {
		return load{}, err
	}
	c0, err := redisCPU(ctx, rdb)
	if err != nil {
		return load{}, err
	}
	start := time.Now()
	time.Sleep(window)
	s1, err := commandStats(ctx, rdb)
	if err != nil {
		return load{}, err
	}
	c1, err := redisCPU(ctx, rdb)
	if err != nil {
		return load{}, err
	}
	return load{window: time.Since(start), cmds: statsDelta(s0, s1), cpu: c1 - c0}, nil
}

func (l load) topUsec() (usec, calls int64) {
	for k, v := range l.cmds {
		if isTop(l.cmds, k) {
			usec += v.usec
			calls += v.calls
		}
	}
	return usec, calls
}

// pct is the share of one core the top-level commands took.
func (l load) pct() float64 {
	u, _ := l.topUsec()
	return 100 * float64(u) / float64(l.window.Microseconds())
}

func (l load) callsPerSec() float64 {
	_, c := l.topUsec()
	return float64(c) / l.window.Seconds()
}

func (l load) cpuPct() float64 { return 100 * l.cpu.Seconds() / l.window.Seconds() }

func (l load) detail() string {
	names := make([]string, 0, len(l.cmds))
	for k := range l.cmds {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool { return l.cmds[names[i]].usec > l.cmds[names[j]].usec })
	var parts []string
	for _, k := range names {
		v := l.cmds[k]
		mark := ""
		if !isTop(l.cmds, k) {
			mark = " (in scripts or transactions)"
		}
		parts = append(parts, fmt.Sprintf("%s%s %.0f calls/s, %.0f µs/s, %.1f µs/call", k, mark,
			float64(v.calls)/l.window.Seconds(), float64(v.usec)/l.window.Seconds(), float64(v.usec)/float64(v.calls)))
	}
	return strings.Join(parts, "; ")
}

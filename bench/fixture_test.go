package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/keyspace"
	"github.com/segmenter/segmenter/internal/redistest"
)

// The workload every figure shares unless it says otherwise.
const (
	payloadSize = 100   // bytes of data per message
	partitions  = 8     // partitions of the stream
	batchSize   = 100   // messages per SendBatch, per pipeline, per Read
	numKeys     = 1000  // distinct partition keys, cycled
	sendMaxLen  = 10000 // MAXLEN ~ per partition for the send figures: trimming is active
	// sdkStream and rawStream have names of the same length, so that the
	// raw baseline writes keys of the same shape and size as the SDK's.
	sdkStream = "s"
	rawStream = "r"
)

// payload is the data of every message: 100 fixed pseudo-random bytes.
var payload = func() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, payloadSize)
	for i := range b {
		b[i] = byte('a' + r.IntN(26))
	}
	return b
}()

// keyNames are the partition keys, all of the same length.
var keyNames = func() []string {
	k := make([]string, numKeys)
	for i := range k {
		k[i] = fmt.Sprintf("user-%04d", i)
	}
	return k
}()

// newClient returns a client to the benchmark server, closed with tb.
func newClient(tb testing.TB) *redis.Client {
	tb.Helper()
	return redistest.Server(tb).Client(tb)
}

// fixture is one namespace on the benchmark server: a Segmenter, the SDK
// stream sdkStream and the raw baseline's keys for rawStream, whose
// partition i holds exactly the keys the SDK sends to its partition i.
type fixture struct {
	tb      testing.TB
	rdb     *redis.Client
	seg     *segmenter.Segmenter
	ns      string
	st      *segmenter.Stream
	keys    keyspace.Space
	part    []int    // partition of keyNames[i]
	sdkKeys []string // the SDK stream's partition keys
	rawKeys []string // the raw baseline's stream keys, same shape
	maxLen  int64
	trips   *tripCounter  // round trips and commands of rdb
	stats   *redis.Client // for INFO, not counted by trips
}

// newFixture registers sdkStream with the given partition count and
// retention in a fresh namespace; cfg (may be nil) sets the timings. The
// namespace's keys are deleted with tb.
func newFixture(tb testing.TB, rdb *redis.Client, nparts int, maxLen int64, cfg *segmenter.Config) *fixture {
	tb.Helper()
	ctx := context.Background()
	if rdb == nil {
		rdb = newClient(tb)
	}
	ns := redistest.Namespace(tb)
	seg := newSegmenter(tb, rdb, ns, cfg)
	st, err := seg.RegisterStream(ctx, sdkStream, nparts, maxLen)
	if err != nil {
		tb.Fatal(err)
	}
	trips := &tripCounter{}
	rdb.AddHook(trips)
	f := &fixture{tb: tb, rdb: rdb, seg: seg, ns: ns, st: st, keys: keyspace.New(ns), maxLen: maxLen, trips: trips, stats: newClient(tb)}
	f.part = make([]int, numKeys)
	for i, k := range keyNames {
		f.part[i] = st.PartitionOf(k)
	}
	for i := range nparts {
		f.sdkKeys = append(f.sdkKeys, f.keys.Partition(sdkStream, i))
		f.rawKeys = append(f.rawKeys, f.keys.Partition(rawStream, i))
	}
	tb.Cleanup(func() { dropNamespace(rdb, ns) })
	return f
}

// newSegmenter returns a Segmenter on rdb in namespace ns with cfg's
// timings (nil: the defaults), closed with tb.
func newSegmenter(tb testing.TB, rdb redis.UniversalClient, ns string, cfg *segmenter.Config) *segmenter.Segmenter {
	tb.Helper()
	c := segmenter.Config{}
	if cfg != nil {
		c = *cfg
	}
	c.Namespace, c.Client = ns, rdb
	seg, err := segmenter.NewSegmenter(&c)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = seg.Close(ctx)
	})
	return seg
}

// dropNamespace deletes every key of namespace ns.
func dropNamespace(rdb *redis.Client, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	iter := rdb.Scan(ctx, 0, "seg:{"+ns+"*", 1000).Iterator()
	var batch []string
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 1000 {
			rdb.Unlink(ctx, batch...)
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		rdb.Unlink(ctx, batch...)
	}
}

// sdkMessages returns the n-th window of count messages over keyNames.
func sdkMessages(start, count int) []*contracts.PMessage {
	msgs := make([]*contracts.PMessage, count)
	for i := range msgs {
		msgs[i] = &contracts.PMessage{PartitionKey: keyNames[(start+i)%numKeys], Data: payload}
	}
	return msgs
}

// sdkBatches returns the batches of batchSize messages that cover keyNames
// once; senders cycle through them.
func sdkBatches() [][]*contracts.PMessage {
	out := make([][]*contracts.PMessage, numKeys/batchSize)
	for i := range out {
		out[i] = sdkMessages(i*batchSize, batchSize)
	}
	return out
}

// rawValues is the field layout of an SDK entry (see codec.go: v, k, d),
// written by hand.
func rawValues(key string, data []byte) []any {
	return []any{"v", "1", "k", key, "d", data}
}

// keyForPartition returns the n-th key (from 0) that st maps to partition p.
func keyForPartition(st *segmenter.Stream, p, n int) string {
	for i := 0; ; i++ {
		k := "key-" + strconv.Itoa(p) + "-" + strconv.Itoa(i)
		if st.PartitionOf(k) == p {
			if n == 0 {
				return k
			}
			n--
		}
	}
}

// waitFor polls cond every step until it holds, and returns how long that
// took, or an error after timeout.
func waitFor(timeout, step time.Duration, cond func() bool) (time.Duration, error) {
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			return time.Since(start), fmt.Errorf("condition not met within %v", timeout)
		}
		time.Sleep(step)
	}
	return time.Since(start), nil
}

// gate is a go-redis hook that cuts a client off the network while closed:
// every command fails without reaching Redis, as for a crashed or
// partitioned process.
type gate struct{ closed atomic.Bool }

var errCut = errors.New("bench: network cut")

func (g *gate) DialHook(next redis.DialHook) redis.DialHook { return next }

func (g *gate) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if g.closed.Load() {
			cmd.SetErr(errCut)
			return errCut
		}
		return next(ctx, cmd)
	}
}

func (g *gate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if g.closed.Load() {
			for _, c := range cmds {
				c.SetErr(errCut)
			}
			return errCut
		}
		return next(ctx, cmds)
	}
}

// tripCounter is a go-redis hook that counts round trips (a command, or a
// pipeline) and commands.
type tripCounter struct{ trips, cmds atomic.Int64 }

func (c *tripCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *tripCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.trips.Add(1)
		c.cmds.Add(1)
		return next(ctx, cmd)
	}
}

func (c *tripCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.trips.Add(1)
		c.cmds.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// cost is where the time of a workload went, per message.
type cost struct {
	n                   int
	wall, redis, client time.Duration
	trips, cmds         int64
	stats               map[string]cmdStat // INFO commandstats deltas
}

func (c cost) String() string {
	per := func(d time.Duration) float64 { return float64(d) / 1e3 / float64(c.n) }
	return fmt.Sprintf("%.1f µs/msg wall; CPU per msg: Redis %.1f µs, client %.1f µs; per 100 msgs: %.1f round trips, %.0f commands; Redis per msg: %s",
		per(c.wall), per(c.redis), per(c.client), 100*float64(c.trips)/float64(c.n), 100*float64(c.cmds)/float64(c.n), c.topCommands(4))
}

// topCommands lists the n top-level commands that took the most Redis time.
func (c cost) topCommands(n int) string {
	var names []string
	for k, v := range c.stats {
		if isTop(c.stats, k) && v.usec > 0 {
			names = append(names, k)
		}
	}
	slices.SortFunc(names, func(a, b string) int { return int(c.stats[b].usec - c.stats[a].usec) })
	var parts []string
	for _, k := range names[:min(n, len(names))] {
		v := c.stats[k]
		parts = append(parts, fmt.Sprintf("%s %.2f calls × %.1f µs", k, float64(v.calls)/float64(c.n), float64(v.usec)/float64(v.calls)))
	}
	return strings.Join(parts, ", ")
}

// costed wraps a workload of n messages on f to record its cost in *out
// (the last run's): Redis CPU from INFO cpu, commands from INFO
// commandstats, this process' CPU from getrusage, round trips from f's
// tripCounter.
func (f *fixture) costed(n int, out *cost, t func() (time.Duration, error)) func() (time.Duration, error) {
	return func() (time.Duration, error) {
		ctx := context.Background()
		s0, err := commandStats(ctx, f.stats)
		if err != nil {
			return 0, err
		}
		r0, err := redisCPU(ctx, f.stats)
		if err != nil {
			return 0, err
		}
		c0 := processCPU()
		t0, m0 := f.trips.trips.Load(), f.trips.cmds.Load()
		d, err := t()
		c1 := processCPU()
		t1, m1 := f.trips.trips.Load(), f.trips.cmds.Load()
		r1, err2 := redisCPU(ctx, f.stats)
		s1, err3 := commandStats(ctx, f.stats)
		if err := errors.Join(err, err2, err3); err != nil {
			return 0, err
		}
		*out = cost{n: n, wall: d, redis: r1 - r0, client: c1 - c0, trips: t1 - t0, cmds: m1 - m0, stats: statsDelta(s0, s1)}
		return d, nil
	}
}

// statsDelta returns s1 - s0 for the commands called in between, without
// the INFO calls that read them.
func statsDelta(s0, s1 map[string]cmdStat) map[string]cmdStat {
	out := map[string]cmdStat{}
	for k, v := range s1 {
		d := cmdStat{calls: v.calls - s0[k].calls, usec: v.usec - s0[k].usec}
		if d.calls > 0 && k != "info" {
			out[k] = d
		}
	}
	return out
}

// gatedClient returns a new client to the benchmark server with a gate.
func gatedClient(tb testing.TB) (*redis.Client, *gate) {
	rdb := newClient(tb)
	g := &gate{}
	rdb.AddHook(g)
	return rdb, g
}

// serverInfo returns the fields of INFO section as a map.
func serverInfo(ctx context.Context, rdb *redis.Client, section string) (map[string]string, error) {
	s, err := rdb.Info(ctx, section).Result()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "#") {
			out[k] = v
		}
	}
	return out, nil
}

// cmdStat is one command's line of INFO commandstats.
type cmdStat struct {
	calls int64
	usec  int64
}

// commandStats reads INFO commandstats.
func commandStats(ctx context.Context, rdb *redis.Client) (map[string]cmdStat, error) {
	info, err := serverInfo(ctx, rdb, "commandstats")
	if err != nil {
		return nil, err
	}
	out := map[string]cmdStat{}
	for k, v := range info {
		name, ok := strings.CutPrefix(k, "cmdstat_")
		if !ok {
			continue
		}
		var s cmdStat
		for _, kv := range strings.Split(v, ",") {
			f, val, _ := strings.Cut(kv, "=")
			n, _ := strconv.ParseInt(val, 10, 64)
			switch f {
			case "calls":
				s.calls = n
			case "usec":
				s.usec = n
			}
		}
		out[name] = s
	}
	return out, nil
}

// redisCPU returns the server's user+system CPU time so far.
func redisCPU(ctx context.Context, rdb *redis.Client) (time.Duration, error) {
	info, err := serverInfo(ctx, rdb, "cpu")
	if err != nil {
		return 0, err
	}
	u, err1 := strconv.ParseFloat(info["used_cpu_user"], 64)
	s, err2 := strconv.ParseFloat(info["used_cpu_sys"], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("INFO cpu: %w", err)
	}
	return time.Duration((u + s) * float64(time.Second)), nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianDur(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(median(xs))
}

// percentile returns the q-quantile (0..1) of sorted, by nearest rank.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

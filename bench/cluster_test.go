package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/keyspace"
	"github.com/segmenter/segmenter/internal/redistest"
)

// Figure 12: the consume side on a Redis Cluster of three primaries (with a
// replica each; redistest starts one of redis-server processes on this
// machine, so the client and the three primaries share its cores), next to
// raw go-redis ClusterClient doing the same reads and acks in the same run.
// One XREADGROUP cannot span slots and every partition has a slot of its
// own, so the raw baseline reads each partition with an XREADGROUP of its
// own, all of them in one pipeline (one per primary, in parallel: go-redis
// splits a cluster pipeline by node), then acks in one more; its consumer
// waiting for messages blocks one XREADGROUP per partition, each on a
// connection of its own.

// clusterFixture is fixture on a cluster: one namespace, a Segmenter and
// the SDK stream.
type clusterFixture struct {
	tb      testing.TB
	rdb     *redis.ClusterClient
	seg     *segmenter.Segmenter
	st      *segmenter.Stream
	part    []int
	sdkKeys []string
}

func newClusterFixture(tb testing.TB, nparts int, maxLen int64) *clusterFixture {
	tb.Helper()
	ctx := context.Background()
	rdb := redistest.ClusterClient(tb)
	ns := redistest.Namespace(tb)
	seg := newSegmenter(tb, rdb, ns, nil)
	st, err := seg.RegisterStream(ctx, sdkStream, nparts, maxLen)
	if err != nil {
		tb.Fatal(err)
	}
	f := &clusterFixture{tb: tb, rdb: rdb, seg: seg, st: st}
	f.part = make([]int, numKeys)
	for i, k := range keyNames {
		f.part[i] = st.PartitionOf(k)
	}
	keys := keyspace.New(ns)
	for i := range nparts {
		f.sdkKeys = append(f.sdkKeys, keys.Partition(sdkStream, i))
	}
	return f
}

func (f *clusterFixture) fillBacklog(ctx context.Context, n int) error {
	for sent := 0; sent < n; {
		k := min(1000, n-sent)
		pipe := f.rdb.Pipeline()
		for j := range k {
			key := (sent + j) % numKeys
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: f.sdkKeys[f.part[key]], Values: rawValues(keyNames[key], payload)})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		sent += k
	}
	return nil
}

func (f *clusterFixture) consumer(ctx context.Context, group string, batch int, opts ...segmenter.ConsumerOption) (*segmenter.Consumer, error) {
	c, err := f.seg.RegisterConsumer(ctx, sdkStream, group, batch, 30*time.Second, opts...)
	if err != nil {
		return nil, err
	}
	if _, err := waitFor(30*time.Second, time.Millisecond, func() bool { return len(c.Assignment()) == f.st.Partitions() }); err != nil {
		_ = c.Shutdown(ctx)
		return nil, fmt.Errorf("consumer never held every partition: %w", err)
	}
	return c, nil
}

// rawGroup creates group on every partition, at its start ("0") or end.
func (f *clusterFixture) rawGroup(ctx context.Context, group, start string) error {
	pipe := f.rdb.Pipeline()
	for _, k := range f.sdkKeys {
		pipe.XGroupCreateMkStream(ctx, k, group, start)
	}
	_, err := pipe.Exec(ctx)
	return err
}

// rawDrain reads n messages with one XREADGROUP COUNT count per partition,
// all in one cluster pipeline, and acks each round's messages with one
// pipeline of one XACK per partition.
func (f *clusterFixture) rawDrain(ctx context.Context, group string, n int, count int64) error {
	for got := 0; got < n; {
		pipe := f.rdb.Pipeline()
		reads := make([]*redis.XStreamSliceCmd, len(f.sdkKeys))
		for i, k := range f.sdkKeys {
			reads[i] = pipe.XReadGroup(ctx, &redis.XReadGroupArgs{Group: group, Consumer: "raw", Streams: []string{k, ">"}, Count: count, Block: -1})
		}
		_, _ = pipe.Exec(ctx)
		acks := f.rdb.Pipeline()
		round := 0
		for _, r := range reads {
			res, err := r.Result()
			if errors.Is(err, redis.Nil) {
				continue
			}
			if err != nil {
				return err
			}
			for _, s := range res {
				if len(s.Messages) == 0 {
					continue
				}
				ids := make([]string, len(s.Messages))
				for i, m := range s.Messages {
					ids[i] = m.ID
				}
				acks.XAck(ctx, s.Stream, group, ids...)
				round += len(ids)
			}
		}
		if round == 0 {
			return fmt.Errorf("backlog exhausted after %d of %d messages", got, n)
		}
		if _, err := acks.Exec(ctx); err != nil {
			return err
		}
		got += round
	}
	return nil
}

func figCluster(t *testing.T, e *env) {
	ctx := context.Background()
	f := newClusterFixture(t, partitions, 0)
	n := e.m.backlogN
	if err := f.fillBacklog(ctx, n); err != nil {
		t.Fatal(err)
	}
	groups := 0
	group := func(kind string) string { groups++; return kind + strconv.Itoa(groups) }
	readAck := func() (time.Duration, error) {
		c, err := f.consumer(ctx, group("sdk"), batchSize)
		if err != nil {
			return 0, err
		}
		defer shutdown(c)
		start := time.Now()
		err = sdkDrainReadAck(ctx, c, n)
		return time.Since(start), err
	}
	countPer := int64((batchSize + partitions - 1) / partitions)
	raw := func() (time.Duration, error) {
		g := group("raw")
		if err := f.rawGroup(ctx, g, "0"); err != nil {
			return 0, err
		}
		start := time.Now()
		err := f.rawDrain(ctx, g, n, countPer)
		return time.Since(start), err
	}
	run := func() (time.Duration, error) {
		acks := newAckCounter(n)
		c, err := f.consumer(ctx, group("run"), batchSize, segmenter.WithHooks(acks))
		if err != nil {
			return 0, err
		}
		defer shutdown(c)
		return sdkRunDrain(ctx, c, acks, 5*time.Minute)
	}
	rates(t, 1, n, readAck, raw) // warm-up
	r := rates(t, e.m.runs, n, raw, readAck, run)
	throughputRow(e, "12", "cluster: Read+Ack drain, batch 100 vs XREADGROUP+XACK per partition", r[1], r[0], 0.8)
	throughputRow(e, "12b", "cluster: Run no-op, sequential vs raw drain", r[2], r[0], 0.8)

	// Latency, against raw on the cluster and the SDK on a single node.
	sdkLat, rawLat := f.latency(t, "12", latencyRate, e.m.latencyDur, e.m.latencyWarm)
	single := newFixture(t, nil, partitions, sendMaxLen, nil)
	singleLat, _, _, _ := measureLatency(t, single, "12s", latencyRate, e.m.latencyDur, e.m.latencyWarm)
	for _, q := range []struct {
		name string
		q    float64
	}{{"p50", 0.50}, {"p99", 0.99}} {
		sv, rv, nv := percentile(sdkLat, q.q), percentile(rawLat, q.q), percentile(singleLat, q.q)
		e.tbl.add(row{fig: "12c " + q.name, name: fmt.Sprintf("cluster: latency Send → handler, %d msg/s, %s", latencyRate, q.name),
			sdk: dur(sv), raw: dur(rv), ratio: ratio(float64(sv) / float64(rv))})
		r := row{fig: "12d " + q.name, name: fmt.Sprintf("cluster vs single node: SDK latency, %d msg/s, %s (raw column: single node)", latencyRate, q.name),
			sdk: dur(sv), raw: dur(nv), ratio: ratio(float64(sv) / float64(nv))}
		if q.name == "p50" {
			r.target, r.met = "≤ 2× single node", met(float64(sv) <= 2*float64(nv))
		}
		e.tbl.add(r)
	}

	// Idle load of one consumer holding 16 partitions, waiting in Run.
	idleCluster, err := clusterIdle(t, e.m.idleWindow)
	if err != nil {
		t.Fatal(err)
	}
	e.tbl.note("figure 12: a Redis Cluster of 3 primaries with a replica each (redis-server processes on this machine, sharing its 2 cores with the client); "+
		"a backlog of %d messages over %d partitions; raw reads COUNT %d per partition, one XREADGROUP per partition in one cluster pipeline, then one XACK per partition; "+
		"12c/12d at %d msg/s for %v after %v of warm-up; raw waits in one blocking XREADGROUP per partition; "+
		"an idle consumer of 16 partitions in Run costs the cluster %.1f commands/s (%s)",
		n, partitions, countPer, latencyRate, e.m.latencyDur, e.m.latencyWarm, idleCluster.perSec, idleCluster.top)
}

// latency measures Send → handler on the cluster for the SDK (Run), then
// for raw go-redis (XADD, and one goroutine per partition blocking in
// XREADGROUP, acking each batch).
func (f *clusterFixture) latency(t *testing.T, fig string, rate int, d, warm time.Duration) (sdkLat, rawLat []time.Duration) {
	ctx := context.Background()
	total := warm + d
	group := "lat" + fig
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
	sent, err := pace(ctx, base, rate, total, func(i int, at time.Duration) error {
		_, err := f.st.Send(ctx, &contracts.PMessage{PartitionKey: keyNames[(7*i)%numKeys], Data: stamped(at)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := waitFor(10*time.Second, time.Millisecond, func() bool { return sdk.seen.Load() >= int64(sent) }); err != nil {
		t.Fatalf("SDK: handled %d of %d messages: %v", sdk.seen.Load(), sent, err)
	}
	stop()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	shutdown(c)

	raw := &latencies{warm: warm}
	rawGroup := group + "raw"
	if err := f.rawGroup(ctx, rawGroup, "$"); err != nil {
		t.Fatal(err)
	}
	base = time.Now()
	rctx, stop = context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make([]error, len(f.sdkKeys))
	for i, k := range f.sdkKeys {
		wg.Go(func() {
			args := &redis.XReadGroupArgs{Group: rawGroup, Consumer: "raw", Streams: []string{k, ">"}, Count: batchSize, Block: 500 * time.Millisecond}
			for rctx.Err() == nil {
				res, err := f.rdb.XReadGroup(rctx, args).Result()
				if errors.Is(err, redis.Nil) {
					continue
				}
				if err != nil {
					if rctx.Err() == nil {
						errs[i] = err
					}
					return
				}
				for _, s := range res {
					ids := make([]string, len(s.Messages))
					for j, m := range s.Messages {
						d, _ := m.Values["d"].(string)
						raw.record(base, []byte(d))
						ids[j] = m.ID
					}
					if err := f.rdb.XAck(rctx, s.Stream, rawGroup, ids...).Err(); err != nil && rctx.Err() == nil {
						errs[i] = err
						return
					}
				}
			}
		})
	}
	sent, err = pace(ctx, base, rate, total, func(i int, at time.Duration) error {
		key := (7 * i) % numKeys
		return f.rdb.XAdd(ctx, &redis.XAddArgs{Stream: f.sdkKeys[f.part[key]], MaxLen: sendMaxLen, Approx: true,
			Values: rawValues(keyNames[key], stamped(at))}).Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := waitFor(10*time.Second, time.Millisecond, func() bool { return raw.seen.Load() >= int64(sent) }); err != nil {
		t.Fatalf("raw: read %d of %d messages: %v", raw.seen.Load(), sent, err)
	}
	stop()
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return sdk.sorted(), raw.sorted()
}

// idleLoad is the load an idle consumer puts on the cluster.
type idleLoad struct {
	perSec float64
	top    string
}

// clusterIdle measures the commands per second that one consumer holding
// 16 partitions, waiting in Run with nothing to read, sends to the
// cluster's primaries (default timings).
func clusterIdle(t *testing.T, window time.Duration) (idleLoad, error) {
	ctx := context.Background()
	f := newClusterFixture(t, 16, 0)
	c, err := f.consumer(ctx, "idle", batchSize)
	if err != nil {
		return idleLoad{}, err
	}
	defer shutdown(c)
	rctx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- c.Run(rctx, func(context.Context, *contracts.CMessage) error { return nil }) }()
	defer func() { stop(); <-ran }()
	// Let it settle: its first fetches find every partition empty.
	time.Sleep(min(2*time.Second, window))
	stats := func() (map[string]cmdStat, error) {
		out := map[string]cmdStat{}
		var mu sync.Mutex
		err := f.rdb.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			s, err := commandStats(ctx, node)
			mu.Lock()
			defer mu.Unlock()
			for k, v := range s {
				o := out[k]
				o.calls += v.calls
				o.usec += v.usec
				out[k] = o
			}
			return err
		})
		return out, err
	}
	s0, err := stats()
	if err != nil {
		return idleLoad{}, err
	}
	start := time.Now()
	time.Sleep(window) // the measurement window
	s1, err := stats()
	if err != nil {
		return idleLoad{}, err
	}
	l := load{window: time.Since(start), cmds: statsDelta(s0, s1)}
	_, calls := l.topUsec()
	var names []string
	for k, v := range l.cmds {
		if isTop(l.cmds, k) && v.calls > 0 {
			names = append(names, k)
		}
	}
	slices.SortFunc(names, func(a, b string) int { return int(l.cmds[b].calls - l.cmds[a].calls) })
	var top []string
	for _, k := range names[:min(4, len(names))] {
		top = append(top, fmt.Sprintf("%s %.1f/s", k, float64(l.cmds[k].calls)/l.window.Seconds()))
	}
	return idleLoad{perSec: float64(calls) / l.window.Seconds(), top: strings.Join(top, ", ")}, nil
}

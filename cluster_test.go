package segmenter_test

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/internal/keyspace"
	"github.com/segmenter/segmenter/internal/redistest"
)

// The behaviour particular to a Redis Cluster. The tests that matter on
// both a single node and a cluster run on both (see backends).

// A stream's partitions spread over the primaries: each partition has a
// slot of its own.
func TestClusterPartitionsSpreadOverEveryPrimary(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.ClusterClient(t)
	ns := redistest.Namespace(t)
	seg := newSegmenter(t, ns, rdb)
	if _, err := seg.RegisterStream(ctx, "s", 16, 0); err != nil {
		t.Fatal(err)
	}
	keys := keyspace.New(ns)
	var streams []string
	for p := range 16 {
		streams = append(streams, keys.Partition("s", p))
	}
	var n atomic.Int32 // ForEachMaster runs the primaries concurrently
	if err := rdb.ForEachMaster(ctx, func(context.Context, *redis.Client) error { n.Add(1); return nil }); err != nil {
		t.Fatal(err)
	}
	primaries := int(n.Load())
	if got := servedBy(t, rdb, streams...); len(got) != primaries {
		t.Fatalf("16 partitions on %d primaries (%v), want all %d", len(got), got, primaries)
	}
}

// nodePipelines is a hook for the node clients of a cluster client: it
// counts, per node, the pipelines that carry at least one EVALSHA of a
// script (by its SHA-1: see scriptMarker).
type nodePipelines struct {
	mu     sync.Mutex
	counts map[string]map[string]int // shape -> node -> pipelines
}

func (h *nodePipelines) hookFor(addr string) redis.Hook { return nodeHook{h, addr} }

type nodeHook struct {
	h    *nodePipelines
	addr string
}

func (n nodeHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (n nodeHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (n nodeHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		seen := map[string]bool{}
		for _, c := range cmds {
			a := c.Args()
			if len(a) < 3 || !strings.EqualFold(fmt.Sprint(a[0]), "evalsha") {
				continue
			}
			seen[fmt.Sprint(a[1])] = true
		}
		n.h.mu.Lock()
		for shape := range seen {
			if n.h.counts[shape] == nil {
				n.h.counts[shape] = map[string]int{}
			}
			n.h.counts[shape][n.addr]++
		}
		n.h.mu.Unlock()
		return next(ctx, cmds)
	}
}

func (h *nodePipelines) take(sha []byte) map[string]int {
	shape := string(sha)
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.counts[shape]
	delete(h.counts, shape)
	return out
}

// On a cluster, the fenced reads of one fetch, and the fenced acks of one
// Ack, go to each primary in one pipeline, the primaries in parallel: not
// one round trip per partition.
func TestClusterFetchAndAckAreOnePipelinePerNode(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClusterClient(redistest.Cluster(t).Options())
	t.Cleanup(func() { _ = rdb.Close() })
	h := &nodePipelines{counts: map[string]map[string]int{}}
	rdb.OnNewNode(func(node *redis.Client) { node.AddHook(h.hookFor(node.Options().Addr)) })
	ns := redistest.Namespace(t)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 16, 0)
	if err != nil {
		t.Fatal(err)
	}
	keys := keyspace.New(ns)
	var streams []string
	for p := range 16 {
		streams = append(streams, keys.Partition("s", p))
		send(t, st, nil, msg(keyFor(t, st, p, 0), "m"))
	}
	want := servedBy(t, rdb, streams...)
	for node := range want {
		want[node] = 1
	}
	fetchSHA, ackSHA := scriptMarker(t, "fetch"), scriptMarker(t, "ack")
	// Each group's first Read fetches all 16 partitions at once.
	for round := range 3 {
		c, err := seg.RegisterConsumer(ctx, "s", fmt.Sprint("g", round), 1000, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		h.take(fetchSHA)
		msgs, err := c.Read(ctx, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		fetches := h.take(fetchSHA)
		if len(msgs) != 16 {
			t.Fatalf("round %d: read %d messages, want one of each of the 16 partitions", round, len(msgs))
		}
		if err := c.Ack(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
		acks := h.take(ackSHA)
		if round == 0 {
			continue // the scripts were loaded: a second pipeline per node with EVAL
		}
		if !maps.Equal(fetches, want) {
			t.Fatalf("round %d: fetch pipelines per node %v, want one per node %v", round, fetches, want)
		}
		if !maps.Equal(acks, want) {
			t.Fatalf("round %d: ack pipelines per node %v, want one per node %v", round, acks, want)
		}
	}
}

// An idle consumer on a cluster waits in Redis, not by polling: one
// blocked XREAD per partition it holds, on the primary serving that
// partition; the reads end when the consumer shuts down.
func TestClusterIdleConsumerWaitsInRedisPerPartition(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.ClusterClient(t)
	ns := redistest.Namespace(t)
	// Polling would wait a minute: only the watchers can wake Read.
	seg := newSegmenterConfig(t, segmenter.Config{Namespace: ns, Client: rdb, PollInterval: time.Minute})
	st, err := seg.RegisterStream(ctx, "s", 8, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 100, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := c.Read(ctx, 0); len(m) != 0 || err != nil {
		t.Fatalf("first read: %v %v", m, err)
	}
	keys := keyspace.New(ns)
	var streams []string
	for p := range 8 {
		streams = append(streams, keys.Partition("s", p))
	}
	want := servedBy(t, rdb, streams...)
	for round := range 3 {
		done := make(chan error, 1)
		go func() {
			msgs, err := c.Read(ctx, 30*time.Second)
			if err == nil && len(msgs) != 1 {
				err = fmt.Errorf("read %d messages, want 1", len(msgs))
			}
			if err == nil {
				err = c.Ack(ctx, msgs...)
			}
			done <- err
		}()
		redistest.Eventually(t, 10*time.Second, func() bool { return maps.Equal(blockedReads(t, rdb, ns), want) },
			"round %d: blocked XREADs per primary %v, want one per partition %v", round, lazyBlocked(t, rdb, ns), want)
		send(t, st, nil, msg(keyFor(t, st, round, 0), "m"))
		if err := <-done; err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return len(blockedReads(t, rdb, ns)) == 0 },
		"XREADs still blocked after Shutdown: %v", lazyBlocked(t, rdb, ns))
}

type lazyString func() string

func (l lazyString) String() string { return l() }

func lazyBlocked(t *testing.T, rdb *redis.ClusterClient, ns string) fmt.Stringer {
	return lazyString(func() string { return fmt.Sprint(blockedReads(t, rdb, ns)) })
}

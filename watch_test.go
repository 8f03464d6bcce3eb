package segmenter_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
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

// xreadLog is a go-redis hook that logs the streams of every XREAD (alone
// or in a pipeline: the watcher sends its consumers' reads behind it) and
// the CLIENT UNBLOCK calls, in order.
type xreadLog struct {
	mu  sync.Mutex
	log []string // "xread k1 k2 ..." or "unblock"
}

func (h *xreadLog) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *xreadLog) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.logCmd(cmd)
		return next(ctx, cmd)
	}
}
func (h *xreadLog) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			h.logCmd(cmd)
		}
		return next(ctx, cmds)
	}
}

func (h *xreadLog) logCmd(cmd redis.Cmder) {
	a := cmd.Args()
	switch name := strings.ToLower(fmt.Sprint(a[0])); {
	case name == "xread":
		var keys []string
		for i, x := range a {
			if strings.EqualFold(fmt.Sprint(x), "streams") {
				rest := a[i+1:]
				for _, k := range rest[:len(rest)/2] {
					keys = append(keys, fmt.Sprint(k))
				}
			}
		}
		slices.Sort(keys)
		h.add("xread " + strings.Join(keys, " "))
	case name == "client" && len(a) > 1 && strings.EqualFold(fmt.Sprint(a[1]), "unblock"):
		h.add("unblock")
	}
}

func (h *xreadLog) add(s string) {
	h.mu.Lock()
	h.log = append(h.log, s)
	h.mu.Unlock()
}

// rearmedWith reports whether, after entry from of the log, an UNBLOCK was
// followed by an XREAD over exactly keys.
func (h *xreadLog) rearmedWith(from int, keys ...string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	slices.Sort(keys)
	want := "xread " + strings.Join(keys, " ")
	unblocked := false
	for _, e := range h.log[min(from, len(h.log)):] {
		switch {
		case e == "unblock":
			unblocked = true
		case unblocked && e == want:
			return true
		}
	}
	return false
}

func (h *xreadLog) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.log)
}

// A partition that becomes empty while the watcher is blocked on the others
// (here: one the consumer just gained) is added to the wait at once (CLIENT
// UNBLOCK, then a new XREAD): its next message wakes Read, which would
// otherwise wait out the watcher's XREAD (longer than Read's maxWait here).
func TestReadWakesForAPartitionThatWentQuietWhileTheWatcherWaited(t *testing.T) {
	onBackends(t, testReadWakesForAPartitionThatWentQuietWhileTheWatcherWaited)
}

func testReadWakesForAPartitionThatWentQuietWhileTheWatcherWaited(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := bk.client(t)
	hook := &xreadLog{}
	rdb.AddHook(hook)
	seg, err := segmenter.NewSegmenter(&segmenter.Config{Namespace: ns, Client: rdb, SessionTimeout: testSession})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = seg.Close(context.Background()) })
	st, err := seg.RegisterStream(ctx, "s", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	// B (its own Segmenter, so its own watcher) shares the partitions with A.
	b, err := newSegmenter(t, ns, bk.client(t)).RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithConsumerName("B"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithConsumerName("A"))
	if err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return len(a.Assignment()) == 1 && len(b.Assignment()) == 1 }, "A and B never shared the partitions")
	mine := a.Assignment()[0].Partition
	other := 1 - mine
	keys := keyspace.New(ns)
	// A waits on its partition alone.
	if m, err := a.Read(ctx, 0); len(m) != 0 || err != nil {
		t.Fatalf("first read: %v %v", m, err)
	}
	mark := hook.len()
	done := make(chan []*contracts.CMessage, 1)
	go func() {
		m, _ := a.Read(ctx, 3*time.Second)
		done <- m
	}()
	// B leaves: A gains the other partition, finds it empty, and must have
	// the watcher re-armed with it.
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if cl, ok := rdb.(*redis.ClusterClient); ok {
		// On a cluster each quiet partition has an XREAD of its own, on
		// the primary serving it.
		want := servedBy(t, cl, keys.Partition("s", mine), keys.Partition("s", other))
		redistest.Eventually(t, 10*time.Second, func() bool {
			return maps.Equal(blockedReads(t, cl, ns), want)
		}, "no XREAD blocked on the primary of the partition that went quiet")
	} else {
		redistest.Eventually(t, 10*time.Second, func() bool {
			return hook.rearmedWith(mark, keys.Partition("s", mine), keys.Partition("s", other))
		}, "the watcher was not re-armed with the partition that went quiet")
	}
	send(t, st, nil, msg(keyFor(t, st, other, 0), "m"))
	m := <-done
	if len(m) != 1 || string(m[0].Data) != "m" {
		t.Fatalf("a message on the partition that went quiet did not wake Read: got %v", m)
	}
	if err := a.Ack(ctx, m...); err != nil {
		t.Fatal(err)
	}
}

// blockedReads returns, per primary of the cluster, how many XREADs of the
// watchers of namespace ns are blocked there.
func blockedReads(t *testing.T, rdb *redis.ClusterClient, ns string) map[string]int {
	t.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	out := map[string]int{}
	err := rdb.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		list, err := node.ClientList(ctx).Result()
		if err != nil {
			return err
		}
		for _, line := range strings.Split(list, "\n") {
			if strings.Contains(line, " name=segmenter-watch:"+ns+" ") && strings.Contains(line, " cmd=xread ") && strings.Contains(line, " flags=b ") {
				mu.Lock()
				out[node.Options().Addr]++
				mu.Unlock()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// servedBy returns, per primary of the cluster, how many of keys its slots
// hold.
func servedBy(t *testing.T, rdb *redis.ClusterClient, keys ...string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, k := range keys {
		node, err := rdb.MasterForKey(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		out[node.Options().Addr]++
	}
	return out
}

package segmenter_test

import (
	"context"
	"fmt"
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

// xreadLog is a go-redis hook that logs the streams of every XREAD and the
// CLIENT UNBLOCK calls, in order.
type xreadLog struct {
	mu  sync.Mutex
	log []string // "xread k1 k2 ..." or "unblock"
}

func (h *xreadLog) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *xreadLog) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
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
		return next(ctx, cmd)
	}
}
func (h *xreadLog) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
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
// is added to the wait at once (CLIENT UNBLOCK, then a new XREAD): its next
// message wakes Read, which would otherwise wait out the watcher's XREAD
// (longer than Read's maxWait here).
func TestReadWakesForAPartitionThatWentQuietWhileTheWatcherWaited(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := redistest.Client(t)
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
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	keys := keyspace.New(ns)
	k0, k1 := keyFor(t, st, 0, 0), keyFor(t, st, 1, 0)
	send(t, st, nil, msg(k0, "m0"))
	drain(t, c, nil, 1, 5*time.Second) // partition 0 drained; 1 found empty
	// A Read waits: the watcher blocks on both partitions.
	mark := hook.len()
	done := make(chan []*contracts.CMessage, 1)
	go func() {
		m, _ := c.Read(ctx, 3*time.Second)
		done <- m
	}()
	redistest.Eventually(t, 10*time.Second, func() bool {
		return hook.len() > mark
	}, "the watcher never waited")
	// A message on partition 1 wakes it; partition 1 is read, and found
	// drained again while the watcher waits on partition 0 alone.
	send(t, st, nil, msg(k1, "m1"))
	m := <-done
	if len(m) != 1 || string(m[0].Data) != "m1" {
		t.Fatalf("first wait returned %v", m)
	}
	if err := c.Ack(ctx, m...); err != nil {
		t.Fatal(err)
	}
	mark = hook.len()
	go func() {
		m, _ := c.Read(ctx, 3*time.Second)
		done <- m
	}()
	redistest.Eventually(t, 10*time.Second, func() bool {
		return hook.rearmedWith(mark, keys.Partition("s", 0), keys.Partition("s", 1))
	}, "the watcher was not re-armed with the partition that went quiet")
	send(t, st, nil, msg(k1, "m2"))
	m = <-done
	if len(m) != 1 || string(m[0].Data) != "m2" {
		t.Fatalf("a message on the partition that went quiet did not wake Read: got %v", m)
	}
	if err := c.Ack(ctx, m...); err != nil {
		t.Fatal(err)
	}
}

//go:build unix

package e2e

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/internal/invariant"
	"github.com/segmenter/segmenter/internal/redistest"
)

// Faults of a Redis Cluster, with worker processes and the checker over
// their merged log. The cluster is one of redis-server processes
// (redistest.NewCluster), three primaries with a replica each.

// slotOf returns the slot of partition p of stream.
func (e *env) slotOf(stream string, p int) int {
	e.t.Helper()
	slot, err := e.rdb.ClusterKeySlot(context.Background(), e.keys.Partition(stream, p)).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return int(slot)
}

// checkEpochsNeverReissued fails the test when, by the workers' "assigned"
// lines, one epoch of a partition was granted to two consumers, or a grant
// after since got an epoch not above every grant before it.
func checkEpochsNeverReissued(t *testing.T, since time.Time, ws ...*worker) {
	t.Helper()
	type grant struct {
		worker string
		epoch  int64
		at     time.Time
	}
	byPart := map[int][]grant{}
	for _, w := range ws {
		w.mu.Lock()
		for _, ev := range w.partEvents {
			if ev.kind == "assigned" {
				byPart[ev.partition] = append(byPart[ev.partition], grant{w.name, ev.epoch, ev.at})
			}
		}
		w.mu.Unlock()
	}
	after := 0
	for p, gs := range byPart {
		owner := map[int64]string{}
		var before int64
		for _, g := range gs {
			if o, ok := owner[g.epoch]; ok && o != g.worker {
				t.Fatalf("partition %d: epoch %d granted to %s and to %s", p, g.epoch, o, g.worker)
			}
			owner[g.epoch] = g.worker
			if g.at.Before(since) {
				before = max(before, g.epoch)
			}
		}
		for _, g := range gs {
			if !g.at.Before(since) {
				after++
				if g.epoch <= before {
					t.Fatalf("partition %d: epoch %d granted to %s after the failover, not above %d granted before", p, g.epoch, g.worker, before)
				}
			}
		}
	}
	t.Logf("epochs: %d grants after the failover, each above every earlier grant of its partition, none to two consumers", after)
}

// A primary serving partitions is killed (SIGKILL) while three consumers
// read and a producer sends: its replica takes over (cluster-node-timeout
// 500ms), the consumers follow, the run completes with every message
// delivered in order and acked, and no epoch is granted twice.
func TestClusterPrimaryKilledMidRun(t *testing.T) {
	cl := redistest.NewCluster(t)
	e := newClusterEnv(t, cl)
	const P = 16
	st := e.stream(defaultStream, P)
	prod := e.startRetryingProducer(st, 200, 0, 10, 10*time.Millisecond)
	ws := []*worker{
		e.startWorker(workerOpts{name: "w1"}),
		e.startWorker(workerOpts{name: "w2"}),
		e.startWorker(workerOpts{name: "w3"}),
	}
	e.waitBalanced(st.Name(), P, ws...)
	prod.waitSent(t, 1000)

	victim := cl.PrimaryOf(e.slotOf(st.Name(), 0))
	replica := cl.ReplicaOf(victim)
	var held []int
	for p := range P {
		if cl.PrimaryOf(e.slotOf(st.Name(), p)) == victim {
			held = append(held, p)
		}
	}
	killed := time.Now()
	cl.Kill(victim)
	t.Logf("killed primary %s (partitions %v); replica %s", victim, held, replica)
	redistest.Eventually(t, hang, func() bool {
		for _, r := range cl.Topology() {
			if r.Addr == replica {
				return r.Primary
			}
		}
		return false
	}, "replica %s never took over", replica)
	cl.WaitHealthy(hang)
	promoted := time.Since(killed)
	sent := prod.sent.Load()
	prod.waitSent(t, int(sent)+1000)
	t.Logf("replica promoted %v after the kill; producer retried %d batches", promoted, prod.retries.Load())

	// The old primary comes back, as a replica of the new one.
	cl.Start(victim)
	prod.waitSent(t, int(prod.sent.Load())+500)
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, ws...)
	e.check(st.Name(), defaultGroup, 10*time.Second, prod)
	checkEpochsNeverReissued(t, killed, ws...)
}

// The slot of a partition moves to another primary while consumers read
// and a producer sends, one key at a time (the partition's stream, its
// lease), as `redis-cli --cluster reshard` moves them: scripts whose keys
// are split between the two primaries get TRYAGAIN, keys already moved
// answer ASK, and once the slot is handed over MOVED; nothing is lost and
// order holds.
func TestClusterReshardMidRun(t *testing.T) {
	cl := redistest.NewCluster(t)
	e := newClusterEnv(t, cl)
	const P = 8
	st := e.stream(defaultStream, P)
	prod := e.startRetryingProducer(st, 100, 0, 10, 10*time.Millisecond)
	ws := []*worker{
		e.startWorker(workerOpts{name: "w1"}),
		e.startWorker(workerOpts{name: "w2"}),
	}
	e.waitBalanced(st.Name(), P, ws...)
	prod.waitSent(t, 500)

	slot := e.slotOf(st.Name(), 0)
	from := cl.PrimaryOf(slot)
	var to string
	for _, r := range cl.Topology() {
		if r.Primary && !r.Failed && r.Addr != from {
			to = r.Addr
			break
		}
	}
	t.Logf("moving slot %d (partition 0) from %s to %s", slot, from, to)
	cl.BeginMigration(slot, to)
	prod.waitSent(t, int(prod.sent.Load())+300)
	for cl.MigrateKeys(slot, to, 1) > 0 {
		// The partition works on with its keys split between the nodes.
		prod.waitSent(t, int(prod.sent.Load())+300)
	}
	prod.waitSent(t, int(prod.sent.Load())+300)
	cl.FinishMigration(slot, to)
	if got := cl.PrimaryOf(slot); got != to {
		t.Fatalf("slot %d served by %s after the migration, want %s", slot, got, to)
	}
	prod.waitSent(t, int(prod.sent.Load())+500)
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, ws...)
	e.check(st.Name(), defaultGroup, 10*time.Second, prod)
	t.Logf("producer retried %d batches", prod.retries.Load())
}

// shardCut is the Dialer of a cluster client that cuts it off one node:
// while cut, its connections to that node are closed and new ones refused,
// while the other nodes answer as usual.
type shardCut struct {
	mu    sync.Mutex
	addr  string
	conns []net.Conn
}

func (s *shardCut) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.addr != "" && addr == s.addr {
		return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("test: cut off this node")}
	}
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err == nil {
		s.conns = append(s.conns, c)
	}
	return c, err
}

// set cuts the client off addr ("": heals the cut).
func (s *shardCut) set(addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addr = addr
	if addr == "" {
		return
	}
	kept := s.conns[:0]
	for _, c := range s.conns {
		if c.RemoteAddr().String() == addr {
			_ = c.Close()
			continue
		}
		kept = append(kept, c)
	}
	s.conns = kept
}

// startPatientReader is startReader for a consumer whose reads may fail for
// a while (cut off the network): it records each failed read and goes on
// after a short pause.
func startPatientReader(t *testing.T, rec *invariant.Recorder, c *segmenter.Consumer) *reader {
	ctx, cancel := context.WithCancel(context.Background())
	r := &reader{c: c, cancel: cancel, done: make(chan error, 1)}
	go func() {
		pause := time.NewTimer(0)
		defer pause.Stop()
		for {
			msgs, err := recordedRead(ctx, rec, c, 100*time.Millisecond)
			if len(msgs) > 0 {
				_ = recordedAck(context.Background(), rec, c, msgs) // a failed ack is redelivered
			}
			if ctx.Err() != nil || errors.Is(err, segmenter.ErrClosed) {
				r.done <- nil
				return
			}
			if err != nil && !errors.Is(err, segmenter.ErrFenced) {
				pause.Reset(20 * time.Millisecond) // no busy loop on a dead link
				select {
				case <-ctx.Done():
				case <-pause.C:
				}
			}
		}
	}()
	t.Cleanup(func() { _ = r.halt() })
	return r
}

// One consumer is cut off one primary only (not the one holding its
// group's membership) for longer than its session, then reconnected. It
// stays in its group (its heartbeats are not held up by the node that does
// not answer), so its partitions stay assigned to it: those on that
// primary pause (it stops delivering them at the end of its leases' local
// validity, and nobody else is granted them meanwhile), every other
// partition goes on, and once it reaches the primary again it renews the
// leases and delivers their pending messages first.
func TestClusterConsumerCutOffFromOneShard(t *testing.T) {
	cl := redistest.NewCluster(t)
	e := newClusterEnv(t, cl)
	ctx := context.Background()
	const P = 12
	st := e.stream(defaultStream, P)
	prod := e.startRetryingProducer(st, 120, 0, 10, 10*time.Millisecond)
	cfg := segmenter.Config{SessionTimeout: testSession, HeartbeatInterval: testHeartbeat, BlockInterval: testBlock}
	cut := &shardCut{}
	opt := cl.Options()
	opt.Dialer = cut.dial
	rdbA := redis.NewClusterClient(opt)
	t.Cleanup(func() { _ = rdbA.Close() })
	cA, err := e.newSegmenterOn(rdbA, cfg).RegisterConsumer(ctx, st.Name(), defaultGroup, 20, 10*time.Second, segmenter.WithConsumerName("A"))
	if err != nil {
		t.Fatal(err)
	}
	cB, err := e.newSegmenterOn(cl.Client(t), cfg).RegisterConsumer(ctx, st.Name(), defaultGroup, 20, 10*time.Second, segmenter.WithConsumerName("B"))
	if err != nil {
		t.Fatal(err)
	}
	recA, recB := invariant.NewRecorder(), invariant.NewRecorder()
	e.addRecorder(st.Name(), defaultGroup, recA)
	e.addRecorder(st.Name(), defaultGroup, recB)
	rA, rB := startPatientReader(t, recA, cA), startPatientReader(t, recB, cB)
	poll(t, hang, 20*time.Millisecond, func() bool { return balanced(e.owners(st.Name(), defaultGroup, P), []string{"A", "B"}) },
		"partitions not balanced over A and B")
	prod.waitSent(t, 500)

	membership, err := e.rdb.ClusterKeySlot(ctx, e.keys.Members(st.Name(), defaultGroup)).Result()
	if err != nil {
		t.Fatal(err)
	}
	group := cl.PrimaryOf(int(membership))
	victim := ""
	var paused []int
	for _, o := range cA.Assignment() {
		if addr := cl.PrimaryOf(e.slotOf(st.Name(), o.Partition)); addr != group && (victim == "" || addr == victim) {
			victim = addr
			paused = append(paused, o.Partition)
		}
	}
	if victim == "" {
		t.Fatalf("A holds no partition outside the primary of its group (%s): %v", group, cA.Assignment())
	}
	t.Logf("cutting A off %s, which serves its partitions %v", victim, paused)
	cut.set(victim)
	// Long enough for A's leases there to expire: A stops delivering them
	// and the other partitions go on.
	sent := prod.sent.Load()
	redistest.Eventually(t, hang, func() bool {
		ls := e.leases(st.Name(), defaultGroup, P)
		now := time.Now().UnixMilli()
		for _, p := range paused {
			if ls[p].owner == "A" && ls[p].expiry > now {
				return false
			}
		}
		return true
	}, "A's leases on %s never expired", victim)
	// A stays in its group (its heartbeats reach the group's primary) and
	// its other partitions go on.
	acked := cA.Stats().Acked
	redistest.Eventually(t, hang, func() bool { return cA.Stats().Acked >= acked+100 },
		"A acked nothing more while cut off %s", victim)
	prod.waitSent(t, int(sent)+1000)
	before := cA.Assignment()
	cut.set("")
	poll(t, hang, 20*time.Millisecond, func() bool {
		ls := e.leases(st.Name(), defaultGroup, P)
		for _, p := range paused {
			if ls[p].owner != "A" || ls[p].expiry <= time.Now().UnixMilli() {
				return false
			}
		}
		return true
	}, "A never took its partitions on %s back", victim)
	prod.waitSent(t, int(prod.sent.Load())+500)
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	if err := errors.Join(rA.halt(), rB.halt()); err != nil {
		t.Fatal(err)
	}
	e.check(st.Name(), defaultGroup, 10*time.Second, prod)
	var held, heldBefore []int
	for _, o := range cA.Assignment() {
		held = append(held, o.Partition)
	}
	for _, o := range before {
		heldBefore = append(heldBefore, o.Partition)
	}
	if !slices.Equal(held, heldBefore) {
		t.Fatalf("A's partitions moved: %v while cut off, %v after", heldBefore, held)
	}
}

package segmenter_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
	"github.com/segmenter/segmenter/internal/keyspace"
	"github.com/segmenter/segmenter/internal/redistest"
)

// lossyProxy forwards TCP connections to a Redis server. It can lose the
// reply of chosen requests: after forwarding a client write that contains
// one of its markers and that cut selects, it waits for the server's reply,
// drops it and closes both sides. The command ran; the client sees a broken
// connection, as after a network failure, and go-redis retries it
// (Options.MaxRetries).
type lossyProxy struct {
	l       net.Listener
	target  string
	markers [][]byte
	tail    int            // bytes kept between reads to find a marker split across two
	cut     func(int) bool // cut(n): lose the reply of the n-th write with a marker (from 1)

	mu      sync.Mutex
	writes  int // writes with a marker seen
	closed  bool
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
	lost    atomic.Int64 // replies lost
	matches atomic.Int64 // writes with a marker
}

func newLossyProxy(t *testing.T, target string, markers [][]byte, cut func(int) bool) *lossyProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &lossyProxy{l: l, target: target, markers: markers, cut: cut, conns: map[net.Conn]struct{}{}}
	for _, m := range markers {
		p.tail = max(p.tail, len(m)-1)
	}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *lossyProxy) Addr() string { return p.l.Addr().String() }

func (p *lossyProxy) close() {
	p.l.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *lossyProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *lossyProxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
	}
}

func (p *lossyProxy) accept() {
	defer p.wg.Done()
	for {
		cc, err := p.l.Accept()
		if err != nil {
			return
		}
		sc, err := net.Dial("tcp", p.target)
		if err != nil {
			cc.Close()
			continue
		}
		if !p.track(cc, sc) {
			cc.Close()
			sc.Close()
			return
		}
		p.wg.Add(1)
		go p.serve(cc, sc)
	}
}

// marked reports whether a marker ends in window after byte old (the bytes
// before old were looked at already).
func (p *lossyProxy) marked(window []byte, old int) bool {
	for _, m := range p.markers {
		from := max(0, old-len(m)+1)
		if i := bytes.Index(window[from:], m); i >= 0 {
			return true
		}
	}
	return false
}

func (p *lossyProxy) serve(cc, sc net.Conn) {
	defer p.wg.Done()
	var armed atomic.Bool // the next reply bytes are lost
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			cc.Close()
			sc.Close()
			p.untrack(cc, sc)
		})
	}
	var wg sync.WaitGroup
	wg.Go(func() { // client -> server
		defer closeBoth()
		buf := make([]byte, 64<<10)
		var tail []byte
		for {
			n, err := cc.Read(buf)
			if n > 0 {
				window := append(tail, buf[:n]...)
				if p.marked(window, len(tail)) {
					p.matches.Add(1)
					p.mu.Lock()
					p.writes++
					lose := p.cut(p.writes)
					p.mu.Unlock()
					if lose {
						armed.Store(true) // before the server can answer
					}
				}
				if _, err := sc.Write(buf[:n]); err != nil {
					return
				}
				tail = append([]byte(nil), window[max(0, len(window)-p.tail):]...)
			}
			if err != nil {
				return
			}
		}
	})
	wg.Go(func() { // server -> client
		defer closeBoth()
		buf := make([]byte, 64<<10)
		for {
			n, err := sc.Read(buf)
			if n > 0 {
				if armed.Load() {
					p.lost.Add(1)
					return // the reply is lost with the connection
				}
				if _, err := cc.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	wg.Wait()
}

// scriptMarker returns what identifies, on the wire, a call of the SDK's
// Lua script name: its SHA-1 (EVALSHA), built as the rebalance package
// builds it (the prelude, a newline, the script).
func scriptMarker(t *testing.T, name string) []byte {
	t.Helper()
	prelude, err := os.ReadFile("rebalance/lua/prelude.lua")
	if err != nil {
		t.Fatal(err)
	}
	body, err := os.ReadFile("rebalance/lua/" + name + ".lua")
	if err != nil {
		t.Fatal(err)
	}
	return []byte(redis.NewScript(string(prelude) + "\n" + string(body)).Hash())
}

// lossyProxies are the proxies of one client: one per Redis node.
type lossyProxies []*lossyProxy

func (ps lossyProxies) lost() (n int64) {
	for _, p := range ps {
		n += p.lost.Load()
	}
	return n
}

func (ps lossyProxies) matches() (n int64) {
	for _, p := range ps {
		n += p.matches.Load()
	}
	return n
}

// proxiedSegmenter returns a Segmenter in namespace ns whose client reaches
// bk's Redis through lossy proxies (one per node of a cluster, which then
// count the writes with a marker together), with go-redis' default
// retries.
func proxiedSegmenter(t *testing.T, bk backend, ns string, markers [][]byte, cut func(int) bool) (*segmenter.Segmenter, lossyProxies) {
	t.Helper()
	var rdb redis.UniversalClient
	var ps lossyProxies
	if bk.cluster() {
		var writes atomic.Int64
		shared := func(int) bool { return cut(int(writes.Add(1))) }
		via := map[string]string{}
		for _, addr := range redistest.Cluster(t).Addrs {
			p := newLossyProxy(t, addr, markers, shared)
			ps = append(ps, p)
			via[addr] = p.Addr()
		}
		opts := redistest.Cluster(t).Options()
		opts.MaxRetries = 3 // go-redis' default, spelled out: the retries are the point
		opts.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if p, ok := via[addr]; ok {
				addr = p
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
		rdb = redis.NewClusterClient(opts)
	} else {
		opts, err := redis.ParseURL(redistest.Server(t).URL)
		if err != nil {
			t.Fatal(err)
		}
		p := newLossyProxy(t, opts.Addr, markers, cut)
		ps = append(ps, p)
		opts.Addr = p.Addr()
		opts.MaxRetries = 3 // go-redis' default, spelled out: the retries are the point
		rdb = redis.NewClient(opts)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	seg := newSegmenterConfig(t, segmenter.Config{Namespace: ns, Client: rdb,
		SessionTimeout: 3 * time.Second, // no lease is lost to the retries' backoff
	})
	return seg, ps
}

// pendingTotal is the number of messages of group pending in Redis on
// every partition of stream.
func pendingTotal(t *testing.T, rdb redis.UniversalClient, ns, stream, group string, partitions int) int64 {
	t.Helper()
	var n int64
	for p := 0; p < partitions; p++ {
		x, err := rdb.XPending(context.Background(), keyspace.New(ns).Partition(stream, p), group).Result()
		if err != nil {
			t.Fatal(err)
		}
		n += x.Count
	}
	return n
}

// firstDeliveriesInOrder checks that each key's messages were first
// delivered in the order sent (their data is the key's sequence number).
func firstDeliveriesInOrder(t *testing.T, delivered []*contracts.CMessage) {
	t.Helper()
	type pid struct {
		p  uint32
		id string
	}
	seen := map[pid]bool{}
	next := map[string]int{}
	reported := 0
	for _, m := range delivered {
		if seen[pid{m.Partition, m.Id}] {
			continue
		}
		seen[pid{m.Partition, m.Id}] = true
		seq, _ := strconv.Atoi(string(m.Data))
		if seq != next[m.PartitionKey] {
			if reported++; reported <= 20 {
				t.Errorf("key %s (partition %d): message %d (%s, delivery %d) was first delivered before message %d", m.PartitionKey, m.Partition, seq, m.Id, m.DeliveryCount, next[m.PartitionKey])
			}
			continue
		}
		next[m.PartitionKey]++
	}
}

// checkBatch checks that the n-th Read returned each partition's messages
// in stream order, each once, and says precisely what it returned if not.
func checkBatch(t *testing.T, n int, msgs []*contracts.CMessage) {
	t.Helper()
	type pid struct {
		p  uint32
		id string
	}
	at := map[pid]int{}
	last := map[uint32]int{} // partition -> index of its newest message so far
	for i, m := range msgs {
		if j, ok := at[pid{m.Partition, m.Id}]; ok {
			t.Errorf("Read %d returned partition %d's %s twice: at index %d (delivery %d) and at index %d (delivery %d)",
				n, m.Partition, m.Id, j, msgs[j].DeliveryCount, i, m.DeliveryCount)
			continue
		}
		at[pid{m.Partition, m.Id}] = i
		if j, ok := last[m.Partition]; ok && !streamIDLess(msgs[j].Id, m.Id) {
			t.Errorf("Read %d returned partition %d's %s (index %d, delivery %d) after newer %s (index %d)",
				n, m.Partition, m.Id, i, m.DeliveryCount, msgs[j].Id, j)
			continue
		}
		last[m.Partition] = i
	}
}

// streamIDLess reports whether stream entry ID a is older than b.
func streamIDLess(a, b string) bool {
	parse := func(id string) (uint64, uint64) {
		ms, seq, _ := strings.Cut(id, "-")
		x, _ := strconv.ParseUint(ms, 10, 64)
		y, _ := strconv.ParseUint(seq, 10, 64)
		return x, y
	}
	ams, aseq := parse(a)
	bms, bseq := parse(b)
	return ams < bms || ams == bms && aseq < bseq
}

// consumeThroughLostReplies reads and acks until every message sent is
// delivered and nothing is pending in Redis, tolerating errors of unknown
// outcome from Read and Ack (never ErrFenced: the consumer is alone).
func consumeThroughLostReplies(t *testing.T, c *segmenter.Consumer, rec *invariant.Recorder, rdb redis.UniversalClient, ns string, partitions int) (delivered []*contracts.CMessage, readErrs, ackErrs int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute) // catches a hang only
	reads := 0
	for {
		s := invariant.Summarize(rec.Events())
		if s.Messages >= s.Sent && pendingTotal(t, rdb, ns, "s", "g", partitions) == 0 {
			return delivered, readErrs, ackErrs
		}
		if time.Now().After(deadline) {
			t.Fatalf("not done before the deadline: %v; pending in Redis %d", s, pendingTotal(t, rdb, ns, "s", "g", partitions))
		}
		msgs, err := read(t, c, rec, 100*time.Millisecond)
		if errors.Is(err, segmenter.ErrFenced) {
			t.Fatalf("a lone consumer was fenced on read: %v", err)
		}
		if err != nil {
			readErrs++
			t.Logf("read: %v", err)
		}
		reads++
		checkBatch(t, reads, msgs)
		delivered = append(delivered, msgs...)
		if err := ack(t, c, rec, msgs...); err != nil {
			if errors.Is(err, segmenter.ErrFenced) {
				t.Fatalf("an ack whose reply was lost was reported as fenced: %v", err)
			}
			ackErrs++
			t.Logf("ack: %v", err)
		}
	}
}

func TestLostFetchRepliesLoseNothingAndKeepOrder(t *testing.T) {
	onBackends(t, testLostFetchRepliesLoseNothingAndKeepOrder)
}

func testLostFetchRepliesLoseNothingAndKeepOrder(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	// The fetch script, by EVALSHA or by EVAL (its source is the only
	// one with XREADGROUP in it), and the native read (XREADGROUP).
	markers := [][]byte{scriptMarker(t, "fetch"), []byte("XREADGROUP")}
	// Every third fetch loses its reply, and fetches 30 to 37 in a row
	// do: the native read's first run and its three retries, then the
	// scripts' four, so Read itself fails.
	cut := func(n int) bool { return n%3 == 0 || n >= 30 && n <= 37 }
	seg, proxy := proxiedSegmenter(t, bk, ns, markers, cut)
	direct := bk.client(t)
	producer := newSegmenter(t, ns, direct)
	const partitions = 4
	st, err := producer.RegisterStream(ctx, "s", partitions, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	sendKeyed(t, st, rec, 16, 2000)
	// A message a lost reply left pending unseen would come back after
	// maxProcessingTime, behind newer ones: the checks below would see it.
	const maxProc = 2 * time.Second
	c, err := seg.RegisterConsumer(ctx, "s", "g", 50, maxProc)
	if err != nil {
		t.Fatal(err)
	}
	delivered, readErrs, ackErrs := consumeThroughLostReplies(t, c, rec, direct, ns, partitions)
	t.Logf("%d fetch writes, %d replies lost; %d Read and %d Ack errors; stats %+v", proxy.matches(), proxy.lost(), readErrs, ackErrs, c.Stats())
	if proxy.lost() < 5 || readErrs == 0 {
		t.Fatalf("only %d fetch replies were lost and Read failed %d times: the test did not test", proxy.lost(), readErrs)
	}
	firstDeliveriesInOrder(t, delivered)
	checkLog(t, rec, invariant.Options{MaxProcessingTime: maxProc, RequireAllAcked: true})
	if s := c.Stats(); s.Fenced != 0 {
		t.Fatalf("stats %+v: a lone consumer was fenced", s)
	}
}

func TestLostAckRepliesAreNotFenced(t *testing.T) { onBackends(t, testLostAckRepliesAreNotFenced) }

func testLostAckRepliesAreNotFenced(t *testing.T, bk backend) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	// Both ack scripts (one partition's, and the one that acks several
	// partitions of a single node at once) and the native ack (XACK).
	markers := [][]byte{scriptMarker(t, "ack"), scriptMarker(t, "ack_many"), []byte("XACK")}
	// Every second ack loses its reply; acks 20 to 27 in a row do (the
	// native ack and its three retries, then the scripts'), so Ack itself
	// fails with an outcome it cannot know.
	cut := func(n int) bool { return n%2 == 0 || n >= 20 && n <= 27 }
	seg, proxy := proxiedSegmenter(t, bk, ns, markers, cut)
	direct := bk.client(t)
	producer := newSegmenter(t, ns, direct)
	const partitions = 4
	st, err := producer.RegisterStream(ctx, "s", partitions, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	sendKeyed(t, st, rec, 16, 1000)
	// Short maxProcessingTime: a message whose ack failed for good is
	// delivered again soon, if the ack did not run.
	const maxProc = 500 * time.Millisecond
	c, err := seg.RegisterConsumer(ctx, "s", "g", 20, maxProc)
	if err != nil {
		t.Fatal(err)
	}
	delivered, readErrs, ackErrs := consumeThroughLostReplies(t, c, rec, direct, ns, partitions)
	t.Logf("%d ack writes, %d replies lost; %d Read and %d Ack errors; stats %+v", proxy.matches(), proxy.lost(), readErrs, ackErrs, c.Stats())
	if proxy.lost() < 5 || ackErrs == 0 {
		t.Fatalf("only %d ack replies were lost and Ack failed %d times: the test did not test", proxy.lost(), ackErrs)
	}
	firstDeliveriesInOrder(t, delivered)
	checkLog(t, rec, invariant.Options{MaxProcessingTime: maxProc, RequireAllAcked: true})
	if s := c.Stats(); s.Fenced != 0 {
		t.Fatalf("stats %+v: a lost ack reply was taken for a lost lease", s)
	}
	if len(c.Assignment()) != partitions {
		t.Fatalf("the consumer holds %v after lost ack replies, want all %d partitions", c.Assignment(), partitions)
	}
}

// TestRunWithLostFetchRepliesKeepsEachKeysOrder: under Run, a lost fetch
// reply never makes a handler see a key's message after a newer one of
// that key (the handler's work keeps messages in flight across the retry).
func TestRunWithLostFetchRepliesKeepsEachKeysOrder(t *testing.T) {
	onBackends(t, testRunWithLostFetchRepliesKeepsEachKeysOrder)
}

func testRunWithLostFetchRepliesKeepsEachKeysOrder(t *testing.T, bk backend) {
	for _, mode := range []struct {
		name string
		opts []segmenter.RunOption
	}{
		{"sequential", nil},
		{"per-key", []segmenter.RunOption{segmenter.WithKeyConcurrency(32)}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			ctx := context.Background()
			ns := redistest.Namespace(t)
			markers := [][]byte{scriptMarker(t, "fetch"), []byte("XREADGROUP")}
			seg, proxy := proxiedSegmenter(t, bk, ns, markers, func(n int) bool { return n%2 == 0 })
			direct := bk.client(t)
			producer := newSegmenter(t, ns, direct)
			st, err := producer.RegisterStream(ctx, "s", 2, 0)
			if err != nil {
				t.Fatal(err)
			}
			c, err := seg.RegisterConsumer(ctx, "s", "g", 20, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			const total = 160
			sendKeyed(t, st, nil, 8, total)
			var mu sync.Mutex
			last := map[string]int{} // the newest sequence number handled, per key
			handled := map[string]bool{}
			var violations []string
			stop := runUntil(t, c, func(ctx context.Context, m *contracts.CMessage) error {
				seq, _ := strconv.Atoi(string(m.Data))
				mu.Lock()
				if l, ok := last[m.PartitionKey]; ok && seq < l && len(violations) < 20 {
					violations = append(violations, fmt.Sprintf("key %s: message %d (%s, delivery %d) handled after message %d", m.PartitionKey, seq, m.Id, m.DeliveryCount, l))
				}
				last[m.PartitionKey] = max(last[m.PartitionKey], seq)
				handled[m.PartitionKey+"/"+string(m.Data)] = true
				mu.Unlock()
				time.Sleep(30 * time.Millisecond) // the work: messages stay in flight
				return nil
			}, mode.opts...)
			redistest.Eventually(t, time.Minute, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(handled) == total && pendingTotal(t, direct, ns, "s", "g", 2) == 0
			}, "not every message was handled and acked")
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d fetch writes, %d replies lost; stats %+v", proxy.matches(), proxy.lost(), c.Stats())
			if proxy.lost() < 3 {
				t.Fatalf("only %d fetch replies were lost: the test did not test", proxy.lost())
			}
			mu.Lock()
			defer mu.Unlock()
			for _, v := range violations {
				t.Error(v)
			}
		})
	}
}

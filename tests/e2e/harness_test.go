//go:build unix

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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

// Short timings: a lost lease moves within about a second.
const (
	testSession   = time.Second
	testHeartbeat = 100 * time.Millisecond
	testBlock     = 50 * time.Millisecond

	defaultStream = "orders"
	defaultGroup  = "billing"

	// clockSlack is the tolerance of the checker on times of different
	// processes of this host (wall clock).
	clockSlack = 20 * time.Millisecond

	// hang bounds every wait: it only catches a hang, it is no timing claim.
	hang = 60 * time.Second
)

// env is one test's view of the shared Redis: its namespace, a client, a
// Segmenter for the producer, and the worker processes it started.
type env struct {
	t    *testing.T
	info *redistest.Info // nil on a cluster
	rdb  redis.UniversalClient
	url  string // the workers' RedisURL
	ns   string
	keys keyspace.Space
	dir  string
	seg  *segmenter.Segmenter

	mu      sync.Mutex
	workers []*worker
	extra   map[string][]*invariant.Recorder // stream/group -> in-process recorders
}

// newEnv checks that Redis runs in a Docker container (unless REDIS_URL
// names a server) and returns the test's environment.
func newEnv(t *testing.T) *env {
	t.Helper()
	info := redistest.Server(t)
	line := fmt.Sprintf("e2e: redis backend %s (%s) at %s", info.Backend, info.Detail, info.Addr)
	sharedBackend.CompareAndSwap(nil, &line)
	return newEnvOn(t, info)
}

// newEnvOn is newEnv on the server info (a Standalone one).
func newEnvOn(t *testing.T, info *redistest.Info) *env {
	t.Helper()
	t.Logf("redis backend %s (%s) at %s", info.Backend, info.Detail, info.Addr)
	if info.Backend != redistest.BackendDocker && os.Getenv(redistest.EnvURL) == "" {
		t.Fatalf("the end-to-end tests must run against a Docker container (dockertest), got backend %q; set %s to use another server",
			info.Backend, redistest.EnvURL)
	}
	return newEnvWith(t, info, info.Client(t), info.URL)
}

// newClusterEnv is newEnv on a Redis Cluster (of redis-server processes:
// see redistest.NewCluster).
func newClusterEnv(t *testing.T, cl *redistest.ClusterInstance) *env {
	t.Helper()
	t.Logf("redis backend: a cluster of %s", strings.Join(cl.Addrs, " "))
	u := "redis://" + cl.Addrs[0] + "?cluster=true"
	for _, a := range cl.Addrs[1:] {
		u += "&addr=" + a
	}
	return newEnvWith(t, nil, cl.Client(t), u)
}

func newEnvWith(t *testing.T, info *redistest.Info, rdb redis.UniversalClient, url string) *env {
	t.Helper()
	e := &env{
		t:     t,
		info:  info,
		rdb:   rdb,
		url:   url,
		ns:    redistest.Namespace(t),
		dir:   t.TempDir(),
		extra: make(map[string][]*invariant.Recorder),
	}
	e.keys = keyspace.New(e.ns)
	e.seg = e.newSegmenter(segmenter.Config{SessionTimeout: testSession, HeartbeatInterval: testHeartbeat, BlockInterval: testBlock})
	return e
}

// newSegmenter returns a Segmenter of e's namespace with cfg's timings,
// closed when the test ends.
func (e *env) newSegmenter(cfg segmenter.Config) *segmenter.Segmenter {
	e.t.Helper()
	return e.newSegmenterOn(e.rdb, cfg)
}

// newSegmenterOn is newSegmenter on the client rdb.
func (e *env) newSegmenterOn(rdb redis.UniversalClient, cfg segmenter.Config) *segmenter.Segmenter {
	e.t.Helper()
	cfg.Namespace = e.ns
	cfg.Client = rdb
	seg, err := segmenter.NewSegmenter(&cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = seg.Close(ctx)
	})
	return seg
}

func (e *env) stream(name string, partitions int) *segmenter.Stream {
	e.t.Helper()
	st, err := e.seg.RegisterStream(context.Background(), name, partitions, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

func (e *env) addWorker(w *worker) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.workers = append(e.workers, w)
}

// poll is redistest.Eventually calling cond at most every interval (cond
// may query Redis).
func poll(t *testing.T, timeout, interval time.Duration, cond func() bool, msgAndArgs ...any) {
	t.Helper()
	var last time.Time
	redistest.Eventually(t, timeout, func() bool {
		if time.Since(last) < interval {
			return false
		}
		last = time.Now()
		return cond()
	}, msgAndArgs...)
}

// lazy formats a value when a failure message is printed.
type lazy func() string

func (l lazy) String() string { return l() }

// ---- producer

// producer sends keyed messages in batches and records them as sent.
type producer struct {
	st      *segmenter.Stream
	rec     *invariant.Recorder
	sent    atomic.Int64 // messages sent (and recorded)
	failed  atomic.Int64 // batches that failed (tolerated)
	retries atomic.Int64 // batches sent again after a failure
	// unknown counts the messages of failed sends that were sent again:
	// Redis may have appended them the first time too (a lost reply), and
	// then delivers them twice, once under an ID in no log.
	unknown atomic.Int64
	stopC   chan struct{}
	done    chan struct{}
	err     error
}

// startProducer sends batches of batch messages every interval, over keys
// keys ("k0".."k<keys-1>", each key's messages numbered in order), until
// total were sent (0: until stopped).
func (e *env) startProducer(st *segmenter.Stream, keys, total, batch int, interval time.Duration) *producer {
	return e.startProducerWith(st, producerOpts{keys: keys, total: total, batch: batch, interval: interval})
}

// startRetryingProducer is startProducer with a producer that retries a
// batch that failed (as through a failover) instead of stopping: the
// messages of a failed attempt that Redis did append are in no log, and
// the retry appends them again, later.
func (e *env) startRetryingProducer(st *segmenter.Stream, keys, total, batch int, interval time.Duration) *producer {
	return e.startProducerWith(st, producerOpts{keys: keys, total: total, batch: batch, interval: interval, retry: true})
}

// startPaddedProducer is startProducer with pad bytes more in each
// message's data (after its number and a space).
func (e *env) startPaddedProducer(st *segmenter.Stream, keys, total, batch int, interval time.Duration, pad int) *producer {
	return e.startProducerWith(st, producerOpts{keys: keys, total: total, batch: batch, interval: interval, pad: pad})
}

// producerOpts configures startProducerWith (see startProducer).
type producerOpts struct {
	keys, total, batch int
	interval           time.Duration
	pad                int // bytes added to each message's data
	// tolerate: a failed send (Redis away) is counted in failed and the
	// producer goes on with the next batch. The failed batch is not
	// recorded as sent: its messages may or may not be in the stream.
	tolerate bool
	// retry: a failed send is sent again (see startRetryingProducer).
	retry bool
}

func (e *env) startProducerWith(st *segmenter.Stream, o producerOpts) *producer {
	keys, total, batch, interval := o.keys, o.total, o.batch, o.interval
	p := &producer{st: st, rec: invariant.NewRecorder(), stopC: make(chan struct{}), done: make(chan struct{})}
	padding := ""
	if o.pad > 0 {
		padding = " " + strings.Repeat("x", o.pad)
	}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		i := 0
		for total == 0 || i < total {
			n := batch
			if total > 0 {
				n = min(n, total-i)
			}
			msgs := make([]*contracts.PMessage, n)
			for j := range msgs {
				k := i + j
				msgs[j] = &contracts.PMessage{PartitionKey: "k" + strconv.Itoa(k%keys), Data: []byte(strconv.Itoa(k/keys) + padding)}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			ids, err := st.SendBatch(ctx, msgs)
			cancel()
			for err != nil && o.retry {
				// The messages Redis acknowledged are sent; the others may
				// or may not be there (a lost reply): sent again.
				var again []*contracts.PMessage
				for j, m := range msgs {
					if ids != nil && ids[j] != "" {
						p.rec.Sent(ids[j], st.PartitionOf(m.PartitionKey), m.PartitionKey)
					} else {
						again = append(again, m)
					}
				}
				p.retries.Add(1)
				p.unknown.Add(int64(len(again)))
				p.sent.Add(int64(len(msgs) - len(again)))
				select {
				case <-p.stopC:
					return
				case <-tick.C:
				}
				msgs = again
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				ids, err = st.SendBatch(ctx, msgs)
				cancel()
			}
			switch {
			case err != nil && o.tolerate:
				p.failed.Add(1)
				ids = nil
			case err != nil:
				p.err = err
				return
			}
			for j, m := range msgs {
				if ids != nil {
					p.rec.Sent(ids[j], st.PartitionOf(m.PartitionKey), m.PartitionKey)
				}
			}
			i += n
			if ids != nil {
				p.sent.Add(int64(len(msgs)))
			}
			select {
			case <-p.stopC:
				return
			case <-tick.C:
			}
		}
	}()
	e.t.Cleanup(func() { p.halt() })
	return p
}

func (p *producer) halt() {
	select {
	case <-p.stopC:
	default:
		close(p.stopC)
	}
	<-p.done
}

// stop stops the producer and returns how many messages it sent.
func (p *producer) stop(t *testing.T) int {
	t.Helper()
	p.halt()
	if p.err != nil {
		t.Fatalf("producer: %v", p.err)
	}
	return int(p.sent.Load())
}

// finish waits until a producer with a total sent everything.
func (p *producer) finish(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(2 * hang):
		t.Fatalf("producer did not finish: %d sent", p.sent.Load())
	}
	return p.stop(t)
}

// waitSent waits until at least n messages were sent.
func (p *producer) waitSent(t *testing.T, n int) {
	t.Helper()
	redistest.Eventually(t, hang, func() bool { return p.sent.Load() >= int64(n) || p.err != nil && p.isDone() },
		"producer sent %v of %d messages", lazy(func() string { return strconv.FormatInt(p.sent.Load(), 10) }), n)
	if p.err != nil && p.isDone() {
		t.Fatalf("producer: %v", p.err)
	}
}

func (p *producer) isDone() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ---- Redis state

// lease is a partition's lease for a group as Redis holds it.
type lease struct {
	owner  string
	epoch  int64
	expiry int64 // ms, server time
}

func (e *env) leases(stream, group string, partitions int) []lease {
	e.t.Helper()
	ctx := context.Background()
	pipe := e.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, partitions)
	for p := range cmds {
		cmds[p] = pipe.HMGet(ctx, e.keys.Lease(stream, p, group), "o", "e", "x")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		e.t.Fatalf("read leases: %v", err)
	}
	out := make([]lease, partitions)
	for p, c := range cmds {
		v := c.Val()
		s := func(i int) string {
			if i < len(v) {
				if x, ok := v[i].(string); ok {
					return x
				}
			}
			return ""
		}
		epoch, _ := strconv.ParseInt(s(1), 10, 64)
		expiry, _ := strconv.ParseInt(s(2), 10, 64)
		out[p] = lease{owner: s(0), epoch: epoch, expiry: expiry}
	}
	return out
}

// owners returns the lease owner of every partition ("" when free).
func (e *env) owners(stream, group string, partitions int) []string {
	ls := e.leases(stream, group, partitions)
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.owner
	}
	return out
}

// balanced reports whether, by the leases in Redis, every partition is held
// by one of members and each member holds floor or ceil of P/M.
func balanced(owners []string, members []string) bool {
	if len(members) == 0 {
		return false
	}
	counts := make(map[string]int, len(members))
	for _, m := range members {
		counts[m] = 0
	}
	for _, o := range owners {
		if _, ok := counts[o]; !ok {
			return false
		}
		counts[o]++
	}
	lo := len(owners) / len(members)
	hi := lo
	if len(owners)%len(members) != 0 {
		hi++
	}
	for _, n := range counts {
		if n < lo || n > hi {
			return false
		}
	}
	return true
}

// waitBalanced waits until the workers hold stream's partitions in balance,
// by the leases in Redis and by what each worker says it holds.
func (e *env) waitBalanced(stream string, partitions int, ws ...*worker) time.Duration {
	e.t.Helper()
	start := time.Now()
	names := make([]string, len(ws))
	for i, w := range ws {
		names[i] = w.name
	}
	group := ws[0].group
	var owners []string
	poll(e.t, hang, 20*time.Millisecond, func() bool {
		owners = e.owners(stream, group, partitions)
		if !balanced(owners, names) {
			return false
		}
		for _, w := range ws {
			var want []int
			for p, o := range owners {
				if o == w.name {
					want = append(want, p)
				}
			}
			if !slices.Equal(w.Owned(stream), want) {
				return false
			}
		}
		return true
	}, "stream %s: partitions not balanced over %v; lease owners %v", stream, names, lazy(func() string { return fmt.Sprint(owners) }))
	return time.Since(start)
}

// waitAllAcked waits until every message of stream was delivered to group
// and acked, by the group's state in Redis.
func (e *env) waitAllAcked(st *segmenter.Stream, group string) {
	e.t.Helper()
	ctx := context.Background()
	var state string
	poll(e.t, 2*hang, 50*time.Millisecond, func() bool {
		pipe := e.rdb.Pipeline()
		groups := make([]*redis.XInfoGroupsCmd, st.Partitions())
		tops := make([]*redis.XMessageSliceCmd, st.Partitions())
		for p := range groups {
			key := e.keys.Partition(st.Name(), p)
			groups[p] = pipe.XInfoGroups(ctx, key)
			tops[p] = pipe.XRevRangeN(ctx, key, "+", "-", 1)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			state = err.Error()
			return false
		}
		pending, behind := 0, 0
		for p := range groups {
			top := "0-0"
			if ms := tops[p].Val(); len(ms) > 0 {
				top = ms[0].ID
			}
			found := false
			for _, g := range groups[p].Val() {
				if g.Name != group {
					continue
				}
				found = true
				pending += int(g.Pending)
				if g.LastDeliveredID != top {
					behind++
				}
			}
			if !found {
				behind++
			}
		}
		state = fmt.Sprintf("%d pending, %d partitions with undelivered messages", pending, behind)
		return pending == 0 && behind == 0
	}, "stream %s group %s: not every message acked (%s)", st.Name(), group, lazy(func() string { return state }))
}

// pendingOf returns the IDs pending for consumer in each partition.
func (e *env) pendingOf(stream, group, consumer string, partitions int) map[int][]string {
	e.t.Helper()
	ctx := context.Background()
	out := make(map[int][]string)
	for p := 0; p < partitions; p++ {
		ps, err := e.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
			Stream: e.keys.Partition(stream, p), Group: group, Start: "-", End: "+", Count: 100000, Consumer: consumer,
		}).Result()
		if err != nil {
			e.t.Fatalf("XPENDING: %v", err)
		}
		for _, x := range ps {
			out[p] = append(out[p], x.ID)
		}
	}
	return out
}

// ---- logs and invariants

// events returns the log of stream and group: the producer's sends and the
// deliveries and acks of every worker of the group (and in-process
// recorders added with addRecorder). Every time is on the wall clock, as
// the workers' logs are.
func (e *env) events(stream, group string, producers ...*producer) []invariant.Event {
	e.t.Helper()
	var all []invariant.Event
	for _, p := range producers {
		if p.st.Name() == stream {
			all = append(all, p.rec.Events()...)
		}
	}
	e.mu.Lock()
	for _, r := range e.extra[stream+"/"+group] {
		all = append(all, r.Events()...)
	}
	workers := slices.Clone(e.workers)
	e.mu.Unlock()
	for i := range all {
		all[i].Start, all[i].End = all[i].Start.Round(0), all[i].End.Round(0)
	}
	read := map[string]bool{} // a worker restarted under its name appends to its log
	for _, w := range workers {
		if w.group != group || !slices.Contains(w.streams, stream) {
			continue
		}
		path := strings.ReplaceAll(w.logPath, "{stream}", stream)
		if read[path] {
			continue
		}
		read[path] = true
		f, err := os.Open(path)
		if errors.Is(err, os.ErrNotExist) {
			continue // it died before registering
		}
		if err != nil {
			e.t.Fatal(err)
		}
		evs, err := invariant.ReadJSON(f)
		f.Close()
		if err != nil {
			e.t.Fatalf("log of worker %s: %v", w.name, err)
		}
		all = append(all, evs...)
	}
	return all
}

// keepLog writes the merged log to $E2E_LOG_DIR, when set, for a post
// mortem (a CI artifact).
func (e *env) keepLog(stream, group string, evs []invariant.Event) {
	dir := os.Getenv("E2E_LOG_DIR")
	if dir == "" {
		return
	}
	name := strings.NewReplacer("/", "_", " ", "_").Replace(e.t.Name()) + "." + stream + "." + group + ".jsonl"
	path := filepath.Join(dir, name)
	f, err := os.Create(path)
	if err != nil {
		e.t.Logf("keep the log: %v", err)
		return
	}
	defer f.Close()
	if err := invariant.WriteEvents(f, evs); err != nil {
		e.t.Logf("keep the log: %v", err)
		return
	}
	e.t.Logf("merged log kept in %s", path)
}

// addRecorder adds an in-process recorder's log to stream and group.
func (e *env) addRecorder(stream, group string, r *invariant.Recorder) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.extra[stream+"/"+group] = append(e.extra[stream+"/"+group], r)
}

// check proves the invariants over the merged log of stream and group,
// requiring every message acked, and returns the log.
func (e *env) check(stream, group string, maxProc time.Duration, producers ...*producer) []invariant.Event {
	e.t.Helper()
	return e.checkWith(stream, group, invariant.Options{MaxProcessingTime: maxProc}, producers...)
}

// checkWith is check with the checker's options opts (the consumers'
// MaxProcessingTime, the order mode); it requires every message acked and
// sets the clock slack.
func (e *env) checkWith(stream, group string, opts invariant.Options, producers ...*producer) []invariant.Event {
	e.t.Helper()
	evs := e.events(stream, group, producers...)
	sum := invariant.Summarize(evs)
	e.t.Logf("invariant log of stream %s group %s:\n%v", stream, group, sum)
	opts.RequireAllAcked, opts.Slack = true, clockSlack
	err := invariant.Check(evs, opts)
	if err != nil {
		e.keepLog(stream, group, evs)
		e.t.Fatalf("stream %s group %s: invariants violated:\n%v", stream, group, err)
	}
	sent, unknown := 0, 0
	for _, p := range producers {
		if p.st.Name() == stream {
			for _, ev := range p.rec.Events() {
				if ev.Kind == invariant.KindSent {
					sent++
				}
			}
			unknown += int(p.unknown.Load())
		}
	}
	// Acked (AckOK) may miss a message whose only ack was cut short by a
	// SIGKILL: Check counted it, and waitAllAcked saw it acked in Redis.
	if sum.Sent != sent || sum.Messages < sent || sum.Messages > sent+unknown {
		e.t.Fatalf("stream %s group %s: the log has %d sent and %d delivered, the producers sent %d (and %d that may have been appended twice)",
			stream, group, sum.Sent, sum.Messages, sent, unknown)
	}
	return evs
}

// ---- in-process consumers, recorded

// recordedRead is one Read of c, recorded in rec: its messages, or its
// error (except ErrClosed and the end of ctx).
func recordedRead(ctx context.Context, rec *invariant.Recorder, c *segmenter.Consumer, maxWait time.Duration) ([]*contracts.CMessage, error) {
	start := time.Now()
	msgs, err := c.Read(ctx, maxWait)
	end := time.Now()
	rec.Delivered(c.ID(), msgs, start, end)
	if err != nil && !errors.Is(err, segmenter.ErrClosed) && ctx.Err() == nil {
		p := -1
		var pe *segmenter.PartitionError
		if errors.As(err, &pe) {
			p = pe.Partition
		}
		rec.ReadError(c.ID(), p, err, start, end)
	}
	return msgs, err
}

// recordedAck acks msgs with c one partition (and epoch) at a time, so that
// each call has one outcome, records each call in rec, and returns the
// errors joined.
func recordedAck(ctx context.Context, rec *invariant.Recorder, c *segmenter.Consumer, msgs []*contracts.CMessage) error {
	type pe struct {
		p     uint32
		epoch int64
	}
	groups := make(map[pe][]*contracts.CMessage)
	var order []pe
	for _, m := range msgs {
		k := pe{m.Partition, m.Epoch}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], m)
	}
	var errs []error
	for _, k := range order {
		start := time.Now()
		err := c.Ack(ctx, groups[k]...)
		rec.Acked(c.ID(), groups[k], outcome(err), start, time.Now())
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// reader reads and acks with an in-process consumer until halted,
// recording what it does.
type reader struct {
	c      *segmenter.Consumer
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// startReader starts reading with c into rec; it is halted when the test
// ends at the latest.
func startReader(t *testing.T, rec *invariant.Recorder, c *segmenter.Consumer) *reader {
	ctx, cancel := context.WithCancel(context.Background())
	r := &reader{c: c, cancel: cancel, done: make(chan error, 1)}
	go func() {
		for {
			msgs, err := recordedRead(ctx, rec, c, 100*time.Millisecond)
			if len(msgs) > 0 {
				_ = recordedAck(context.Background(), rec, c, msgs) // a failed ack is redelivered
			}
			switch {
			case ctx.Err() != nil || errors.Is(err, segmenter.ErrClosed):
				r.done <- nil
				return
			case err != nil && !errors.Is(err, segmenter.ErrFenced):
				r.done <- fmt.Errorf("consumer %s: read: %w", c.ID(), err)
				return
			}
		}
	}()
	t.Cleanup(func() { _ = r.halt() })
	return r
}

// halt stops the reader and returns the error that stopped it earlier, if
// any.
func (r *reader) halt() error {
	r.once.Do(func() {
		r.cancel()
		r.err = <-r.done
	})
	return r.err
}

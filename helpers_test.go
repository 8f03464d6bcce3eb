package segmenter_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
	"github.com/segmenter/segmenter/internal/redistest"
)

// Fast timings: a lost lease moves in ~300ms.
const (
	testSession = 300 * time.Millisecond
	testBlock   = 50 * time.Millisecond
)

// backend is a Redis deployment the tests run on.
type backend struct {
	name   string
	client func(t *testing.T) redis.UniversalClient
	url    func(t *testing.T) string // for Config.RedisURL
}

// backends are the deployments every test that matters for a cluster runs
// on: a single node, and a Redis Cluster of three primaries with a replica
// each (internal/redistest starts both).
var backends = []backend{
	{"single node",
		func(t *testing.T) redis.UniversalClient { return redistest.Client(t) },
		func(t *testing.T) string { return redistest.Server(t).URL }},
	{"cluster",
		func(t *testing.T) redis.UniversalClient { return redistest.ClusterClient(t) },
		func(t *testing.T) string { return clusterURL(redistest.Cluster(t).Addrs) }},
}

// clusterURL is the Config.RedisURL of a cluster with these seeds.
func clusterURL(addrs []string) string {
	u := "redis://" + addrs[0] + "?cluster=true"
	for _, a := range addrs[1:] {
		u += "&addr=" + a
	}
	return u
}

// onBackends runs f as a subtest on each backend.
func onBackends(t *testing.T, f func(t *testing.T, b backend)) {
	t.Helper()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

// cluster reports whether b is a Redis Cluster.
func (b backend) cluster() bool { return b.name == "cluster" }

// gatedClient returns a new client of b that the returned gate can cut off.
func (b backend) gatedClient(t *testing.T) (redis.UniversalClient, *gate) {
	t.Helper()
	rdb := b.client(t)
	g := &gate{}
	rdb.AddHook(g)
	return rdb, g
}

// newSegmenter returns a Segmenter on the test server in namespace ns, using
// rdb (a client the test owns) or a fresh client when rdb is nil.
func newSegmenter(t *testing.T, ns string, rdb redis.UniversalClient) *segmenter.Segmenter {
	t.Helper()
	return newSegmenterConfig(t, segmenter.Config{Namespace: ns, Client: rdb})
}

// newSegmenterConfig returns a Segmenter of cfg, closed when the test ends;
// an unset Client, SessionTimeout or BlockInterval gets the test's.
func newSegmenterConfig(t *testing.T, cfg segmenter.Config) *segmenter.Segmenter {
	t.Helper()
	if cfg.Client == nil {
		cfg.Client = redistest.Client(t)
	}
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = testSession
	}
	if cfg.BlockInterval == 0 {
		cfg.BlockInterval = testBlock
	}
	seg, err := segmenter.NewSegmenter(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = seg.Close(ctx)
	})
	return seg
}

// gate is a go-redis hook that cuts a client off the network while closed:
// every command fails without reaching Redis.
type gate struct{ closed atomic.Bool }

var errCut = errors.New("test: network cut")

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

// gatedClient returns a client to the test server that the returned gate
// can cut off.
func gatedClient(t *testing.T) (*redis.Client, *gate) {
	t.Helper()
	rdb := redistest.Client(t)
	g := &gate{}
	rdb.AddHook(g)
	return rdb, g
}

// keyFor returns a partition key that the stream maps to partition p.
func keyFor(t *testing.T, st *segmenter.Stream, p int, n int) string {
	t.Helper()
	for i := 0; i < 100000; i++ {
		k := fmt.Sprintf("key-%d-%d", p, i)
		if st.PartitionOf(k) == p {
			if n == 0 {
				return k
			}
			n--
		}
	}
	t.Fatalf("no key for partition %d", p)
	return ""
}

// send sends msgs and records them.
func send(t *testing.T, st *segmenter.Stream, rec *invariant.Recorder, msgs ...*contracts.PMessage) []string {
	t.Helper()
	ids, err := st.SendBatch(context.Background(), msgs)
	if err != nil {
		t.Fatal(err)
	}
	if rec != nil {
		for i, m := range msgs {
			rec.Sent(ids[i], st.PartitionOf(m.PartitionKey), m.PartitionKey)
		}
	}
	return ids
}

func msg(key string, data string) *contracts.PMessage {
	return &contracts.PMessage{PartitionKey: key, Data: []byte(data)}
}

// read calls Read and records what it delivered.
func read(t *testing.T, c *segmenter.Consumer, rec *invariant.Recorder, maxWait time.Duration) ([]*contracts.CMessage, error) {
	t.Helper()
	start := time.Now()
	msgs, err := c.Read(context.Background(), maxWait)
	if rec != nil && len(msgs) > 0 {
		rec.Delivered(c.ID(), msgs, start, time.Now())
	}
	return msgs, err
}

// ack calls Ack and records each partition's outcome: one Ack call may be
// fenced for one partition and succeed for the others.
func ack(t *testing.T, c *segmenter.Consumer, rec *invariant.Recorder, msgs ...*contracts.CMessage) error {
	t.Helper()
	start := time.Now()
	err := c.Ack(context.Background(), msgs...)
	if rec != nil && len(msgs) > 0 {
		end := time.Now()
		byPartition := map[uint32][]*contracts.CMessage{}
		for _, m := range msgs {
			byPartition[m.Partition] = append(byPartition[m.Partition], m)
		}
		for p, ms := range byPartition {
			rec.Acked(c.ID(), ms, ackOutcome(err, int(p)), start, end)
		}
	}
	return err
}

// ackOutcome finds partition p's outcome in the error returned by Ack.
func ackOutcome(err error, p int) invariant.AckOutcome {
	if err == nil {
		return invariant.AckOK
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		var pe *segmenter.PartitionError
		if !errors.As(e, &pe) {
			return invariant.AckError // not about one partition: unknown
		}
		if pe.Partition == p {
			if errors.Is(pe, segmenter.ErrFenced) {
				return invariant.AckFenced
			}
			return invariant.AckError
		}
	}
	return invariant.AckOK
}

// drain reads and acks until want messages were acked in total or the
// deadline passes.
func drain(t *testing.T, c *segmenter.Consumer, rec *invariant.Recorder, want int, timeout time.Duration) []*contracts.CMessage {
	t.Helper()
	var all []*contracts.CMessage
	deadline := time.Now().Add(timeout)
	for len(all) < want {
		if time.Now().After(deadline) {
			t.Fatalf("drained %d of %d messages before the deadline", len(all), want)
		}
		msgs, err := read(t, c, rec, 100*time.Millisecond)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if err := ack(t, c, rec, msgs...); err != nil {
			t.Fatalf("ack: %v", err)
		}
		all = append(all, msgs...)
	}
	return all
}

// recordingHook records, through the consumer's hooks, every delivery and
// ack into an invariant recorder: what Run does is checked like Read/Ack.
type recordingHook struct{ rec *invariant.Recorder }

func (h recordingHook) OnDeliver(e segmenter.DeliverEvent) {
	h.rec.Delivered(e.Consumer, e.Messages, e.Start, e.End)
}

func (h recordingHook) OnAck(e segmenter.AckEvent) {
	msgs := make([]*contracts.CMessage, len(e.IDs))
	for i, id := range e.IDs {
		msgs[i] = &contracts.CMessage{Id: id, Partition: uint32(e.Partition), Epoch: e.Epoch, Stream: e.Stream, Group: e.Group}
	}
	outcome := invariant.AckOK
	switch e.Outcome {
	case segmenter.AckFenced:
		outcome = invariant.AckFenced
	case segmenter.AckFailed:
		outcome = invariant.AckError
	}
	h.rec.Acked(e.Consumer, msgs, outcome, e.Start, e.End)
}

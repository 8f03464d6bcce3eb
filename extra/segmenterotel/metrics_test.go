package segmenterotel_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/extra/segmenterotel"
	"github.com/segmenter/segmenter/internal/redistest"
)

// The example takes its server from REDIS_URL, which MainWithURL sets.
func TestMain(m *testing.M) { redistest.MainWithURL(m) }

// collected is one collection of a ManualReader.
type collected struct {
	t  *testing.T
	rm metricdata.ResourceMetrics
}

func collect(t *testing.T, r *sdkmetric.ManualReader) collected {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return collected{t: t, rm: rm}
}

func (c collected) find(name string) (metricdata.Metrics, bool) {
	for _, sm := range c.rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// int64s returns the data points of an int64 sum or gauge by partition
// ("" for the points without one), keeping those with attribute kv.
func (c collected) int64s(name string, kv attribute.KeyValue) map[string]int64 {
	c.t.Helper()
	m, ok := c.find(name)
	if !ok {
		c.t.Fatalf("no instrument %s", name)
	}
	var points []metricdata.DataPoint[int64]
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		if !d.IsMonotonic {
			c.t.Errorf("%s is not monotonic", name)
		}
		points = d.DataPoints
	case metricdata.Gauge[int64]:
		points = d.DataPoints
	default:
		c.t.Fatalf("%s has data %T", name, m.Data)
	}
	out := map[string]int64{}
	for _, p := range points {
		if v, ok := p.Attributes.Value(kv.Key); !ok || v != kv.Value {
			continue
		}
		part, _ := p.Attributes.Value("messaging.destination.partition.id")
		out[part.AsString()] = p.Value
	}
	return out
}

// A real run: 10 messages handled by Run, one of which always fails and is
// dead-lettered after 2 deliveries; then 5 more sent and left unread. A
// ManualReader's collection afterwards holds the consumer's figures.
func TestMetricsAfterARun(t *testing.T) {
	running := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, running) }) // the last cleanup: after the Segmenter is closed
	ctx := context.Background()
	seg, err := segmenter.NewSegmenter(&segmenter.Config{Client: redistest.Client(t), Namespace: redistest.Namespace(t), SessionTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = seg.Close(context.Background()) })
	st, err := seg.RegisterStream(ctx, "orders", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = provider.Shutdown(context.Background()) })
	m, err := segmenterotel.New(segmenterotel.WithMeterProvider(provider))
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "orders", "billing", 100, time.Minute, segmenter.WithHooks(m),
		segmenter.WithConsumerName("worker-1"), segmenter.WithMaxDeliveries(2))
	if err != nil {
		t.Fatal(err)
	}
	m.Observe(c)
	for i := range 10 {
		data := fmt.Sprint(i)
		if i == 3 {
			data = "fail"
		}
		if _, err := st.Send(ctx, &contracts.PMessage{PartitionKey: fmt.Sprint("user-", i), Data: []byte(data)}); err != nil {
			t.Fatal(err)
		}
	}
	var calls, failures atomic.Int64
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.Run(runCtx, func(_ context.Context, msg *contracts.CMessage) error {
			calls.Add(1)
			if string(msg.Data) == "fail" {
				failures.Add(1)
				return errors.New("test: always fails")
			}
			return nil
		}, segmenter.WithRetryBackoff(time.Millisecond, time.Millisecond))
	}()
	redistest.Eventually(t, 10*time.Second, func() bool {
		s := c.Stats()
		return s.Acked+s.DeadLettered >= 10 && s.DeadLettered == 1
	}, "the run never handled the 10 messages")
	stop()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := st.Send(ctx, &contracts.PMessage{PartitionKey: fmt.Sprint("later-", i), Data: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}

	got := collect(t, reader)
	s := c.Stats()
	me := attribute.String("messaging.client.id", "worker-1")
	for name, want := range map[string]uint64{
		"segmenter.messages.delivered":      s.Delivered,
		"segmenter.messages.redelivered":    s.Redelivered,
		"segmenter.messages.acked":          s.Acked,
		"segmenter.messages.dead_lettered":  s.DeadLettered,
		"segmenter.messages.poison":         s.Poison,
		"segmenter.messages.trimmed":        s.Trimmed,
		"segmenter.messages.trimmed_unread": s.TrimmedUnread,
		"segmenter.partitions.fenced":       s.Fenced,
	} {
		if v := got.int64s(name, me); len(v) != 1 || v[""] != int64(want) {
			t.Errorf("%s = %v, want %d (Stats)", name, v, want)
		}
	}
	if s.Delivered < 10 || s.Acked != 9 || s.DeadLettered != 1 {
		t.Errorf("stats %+v: want 10 delivered or more, 9 acked, 1 dead-lettered", s)
	}
	if v := got.int64s("segmenter.partitions.held", me); v[""] != 2 {
		t.Errorf("partitions held %v, want 2", v)
	}
	lag, pending := got.int64s("segmenter.partition.lag", me), got.int64s("segmenter.partition.pending", me)
	if len(lag) != 2 || lag["0"]+lag["1"] != 5 || pending["0"]+pending["1"] != 0 {
		t.Errorf("lag %v, pending %v; want 5 over partitions 0 and 1 (sent after the run), none pending", lag, pending)
	}
	if v := got.int64s("segmenter.rebalances", me); v[""] < 1 {
		t.Errorf("rebalances %v, want at least 1 (the consumer's join)", v)
	}
	h, ok := got.find("segmenter.handler.duration")
	if !ok {
		t.Fatal("no handler duration histogram")
	}
	hist, ok := h.Data.(metricdata.Histogram[float64])
	if !ok || h.Unit != "s" {
		t.Fatalf("handler duration: %T in %q", h.Data, h.Unit)
	}
	counts := map[string]uint64{}
	for _, p := range hist.DataPoints {
		o, _ := p.Attributes.Value("outcome")
		counts[o.AsString()] += p.Count
	}
	if counts["ok"] != 9 || counts["error"] != uint64(failures.Load()) || counts["ok"]+counts["error"] != uint64(calls.Load()) {
		t.Errorf("handler calls by outcome %v; want 9 ok, %d errors (%d calls)", counts, failures.Load(), calls.Load())
	}

	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	got = collect(t, reader)
	if held, ok := got.find("segmenter.partitions.held"); ok {
		t.Errorf("a consumer shut down is still reported: %+v", held.Data)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
}

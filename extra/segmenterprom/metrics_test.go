package segmenterprom_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/extra/segmenterprom"
	"github.com/segmenter/segmenter/internal/redistest"
)

// The example takes its server from REDIS_URL, which MainWithURL sets.
func TestMain(m *testing.M) { redistest.MainWithURL(m) }

// gathered indexes a registry's samples by name and labels.
type gathered map[string]*dto.Metric

func gather(t *testing.T, reg *prometheus.Registry) gathered {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := gathered{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			out[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = m
		}
	}
	return out
}

func (g gathered) value(t *testing.T, key string) float64 {
	t.Helper()
	m, ok := g[key]
	if !ok {
		var keys []string
		for k := range g {
			keys = append(keys, k)
		}
		t.Fatalf("no sample %s; have %v", key, keys)
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("sample %s is neither a counter nor a gauge", key)
	return 0
}

// A real run: 10 messages handled by Run, one of which always fails and is
// dead-lettered after 2 deliveries; then 5 more sent and left unread. The
// registry scraped afterwards holds the consumer's figures.
func TestMetricsAfterARun(t *testing.T) {
	running := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, running) }) // the last cleanup: after the Segmenter is closed
	ctx := context.Background()
	rdb := redistest.Client(t)
	seg, err := segmenter.NewSegmenter(&segmenter.Config{Client: rdb, Namespace: redistest.Namespace(t), SessionTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = seg.Close(context.Background()) })
	st, err := seg.RegisterStream(ctx, "orders", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	m := segmenterprom.New(segmenterprom.WithBuckets([]float64{0.001, 0.01, 0.1, 1}))
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)

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

	g := gather(t, reg)
	s := c.Stats()
	who := "consumer=worker-1,group=billing,stream=orders"
	for name, want := range map[string]uint64{
		"segmenter_messages_delivered_total":      s.Delivered,
		"segmenter_messages_redelivered_total":    s.Redelivered,
		"segmenter_messages_acked_total":          s.Acked,
		"segmenter_messages_dead_lettered_total":  s.DeadLettered,
		"segmenter_messages_poison_total":         s.Poison,
		"segmenter_messages_trimmed_total":        s.Trimmed,
		"segmenter_messages_trimmed_unread_total": s.TrimmedUnread,
		"segmenter_partitions_fenced_total":       s.Fenced,
	} {
		if got := g.value(t, name+"{"+who+"}"); got != float64(want) {
			t.Errorf("%s = %v, want %d (Stats)", name, got, want)
		}
	}
	if s.Delivered < 10 || s.Acked != 9 || s.DeadLettered != 1 {
		t.Errorf("stats %+v: want 10 delivered or more, 9 acked, 1 dead-lettered", s)
	}
	if got := g.value(t, "segmenter_partitions_held{"+who+"}"); got != 2 {
		t.Errorf("partitions held %v, want 2", got)
	}
	var lag, pending float64
	for p := range 2 {
		where := fmt.Sprintf("{consumer=worker-1,group=billing,partition=%d,stream=orders}", p)
		lag += g.value(t, "segmenter_partition_lag"+where)
		pending += g.value(t, "segmenter_partition_pending"+where)
	}
	if lag != 5 || pending != 0 {
		t.Errorf("lag %v, pending %v over the partitions; want 5 (sent after the run), 0", lag, pending)
	}
	if got := g.value(t, "segmenter_rebalances_total{"+who+"}"); got < 1 {
		t.Errorf("rebalances %v, want at least 1 (the consumer's join)", got)
	}
	var handled uint64
	for _, outcome := range []string{"ok", "error"} {
		h := g["segmenter_handler_duration_seconds{group=billing,outcome="+outcome+",stream=orders}"].GetHistogram()
		if h == nil {
			t.Fatalf("no handler histogram for outcome %s", outcome)
		}
		handled += h.GetSampleCount()
		if outcome == "error" && h.GetSampleCount() != uint64(failures.Load()) {
			t.Errorf("handler errors %d, want %d", h.GetSampleCount(), failures.Load())
		}
		if outcome == "ok" && h.GetSampleCount() != 9 {
			t.Errorf("handler successes %d, want 9", h.GetSampleCount())
		}
	}
	if handled != uint64(calls.Load()) {
		t.Errorf("handler calls observed %d, want %d", handled, calls.Load())
	}

	// The same figures over HTTP, as Prometheus scrapes them.
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`segmenter_messages_acked_total{consumer="worker-1",group="billing",stream="orders"} %d`, s.Acked)
	if !strings.Contains(string(body), want) {
		t.Errorf("scrape lacks %q:\n%s", want, body)
	}

	// Shut down: forgotten at the next scrape.
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	g = gather(t, reg)
	if _, ok := g["segmenter_messages_acked_total{"+who+"}"]; ok {
		t.Error("a consumer shut down is still exported")
	}
}

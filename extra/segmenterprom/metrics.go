// Package segmenterprom exports the metrics of segmenter consumers to
// Prometheus (github.com/prometheus/client_golang).
//
// A Metrics is both a segmenter hook and a prometheus.Collector: register
// it, pass it to the consumers' hooks, and observe each consumer:
//
//	m := segmenterprom.New()
//	prometheus.MustRegister(m)
//	c, err := seg.RegisterConsumer(ctx, "payments", "billing", 100, 30*time.Second, segmenter.WithHooks(m))
//	...
//	m.Observe(c)
//
// The counters come from Consumer.Stats and the gauges from
// Consumer.Assignment and Consumer.Lag, read when Prometheus scrapes (Lag
// costs one Redis round trip per observed consumer and scrape); the handler
// duration histogram and the rebalance counter come from the hooks, as
// events happen. A consumer that was shut down is forgotten at the next
// scrape.
//
// Metrics (prefix segmenter_, labels stream, group, consumer):
//
//	segmenter_messages_delivered_total      counter  messages delivered, redeliveries included (Stats.Delivered)
//	segmenter_messages_redelivered_total    counter  of which redeliveries (Stats.Redelivered)
//	segmenter_messages_acked_total          counter  messages acknowledged (Stats.Acked)
//	segmenter_messages_dead_lettered_total  counter  messages moved to the dead letters (Stats.DeadLettered)
//	segmenter_messages_poison_total         counter  entries segmenter did not write (Stats.Poison)
//	segmenter_messages_trimmed_total        counter  pending messages lost to retention (Stats.Trimmed)
//	segmenter_messages_trimmed_unread_total counter  messages trimmed before the group read them (Stats.TrimmedUnread)
//	segmenter_partitions_fenced_total       counter  partitions lost to another consumer while held (Stats.Fenced)
//	segmenter_partitions_held               gauge    partitions whose lease the consumer holds
//	segmenter_partition_lag                 gauge    entries not yet delivered to the group, per held partition (label partition)
//	segmenter_partition_pending             gauge    messages delivered and not acked, per held partition (label partition)
//	segmenter_rebalances_total              counter  new assignments of the group the consumer learned
//	segmenter_handler_duration_seconds      histogram Run handler calls (labels stream, group, outcome ok|error)
//
// Summed over the consumers of a group, partition_lag and
// partition_pending give the group's lag and pending messages (each
// consumer exports the partitions it holds). A partition whose lag Redis
// cannot tell has no partition_lag sample.
package segmenterprom

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segmenter/segmenter"
)

// Option configures New.
type Option interface{ apply(*options) }

type options struct {
	namespace  string
	buckets    []float64
	lagTimeout time.Duration
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithNamespace sets the metric names' prefix. Default "segmenter".
func WithNamespace(ns string) Option { return optionFunc(func(o *options) { o.namespace = ns }) }

// WithBuckets sets the buckets of the handler duration histogram, in
// seconds. Default prometheus.DefBuckets.
func WithBuckets(b []float64) Option { return optionFunc(func(o *options) { o.buckets = b }) }

// WithLagTimeout bounds the Redis round trip that reads an observed
// consumer's lag during a scrape. Default 2s.
func WithLagTimeout(d time.Duration) Option { return optionFunc(func(o *options) { o.lagTimeout = d }) }

// Metrics is a segmenter hook (HandlerHook, RebalanceHook) and a
// prometheus.Collector. It is safe for concurrent use.
type Metrics struct {
	o options

	handler    *prometheus.HistogramVec
	rebalances *prometheus.CounterVec

	counters []statCounter
	held     *prometheus.Desc
	lag      *prometheus.Desc
	pending  *prometheus.Desc

	mu        sync.Mutex
	consumers map[*segmenter.Consumer]struct{}
}

// statCounter is a counter read from Consumer.Stats.
type statCounter struct {
	desc *prometheus.Desc
	get  func(segmenter.Stats) uint64
}

var consumerLabels = []string{"stream", "group", "consumer"}

// New returns Metrics with no consumer observed yet.
func New(opts ...Option) *Metrics {
	o := options{namespace: "segmenter", buckets: prometheus.DefBuckets, lagTimeout: 2 * time.Second}
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
		}
	}
	name := func(n string) string { return prometheus.BuildFQName(o.namespace, "", n) }
	m := &Metrics{
		o: o,
		handler: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    name("handler_duration_seconds"),
			Help:    "Duration of Run handler calls, by outcome (ok, error).",
			Buckets: o.buckets,
		}, []string{"stream", "group", "outcome"}),
		rebalances: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: name("rebalances_total"),
			Help: "New assignments of the group that the consumer learned.",
		}, consumerLabels),
		held:      prometheus.NewDesc(name("partitions_held"), "Partitions whose lease the consumer holds.", consumerLabels, nil),
		lag:       prometheus.NewDesc(name("partition_lag"), "Entries of a held partition not yet delivered to the group.", append(consumerLabels, "partition"), nil),
		pending:   prometheus.NewDesc(name("partition_pending"), "Messages of a held partition delivered and not acked.", append(consumerLabels, "partition"), nil),
		consumers: make(map[*segmenter.Consumer]struct{}),
	}
	counter := func(n, help string, get func(segmenter.Stats) uint64) statCounter {
		return statCounter{desc: prometheus.NewDesc(name(n), help, consumerLabels, nil), get: get}
	}
	m.counters = []statCounter{
		counter("messages_delivered_total", "Messages delivered, redeliveries included.", func(s segmenter.Stats) uint64 { return s.Delivered }),
		counter("messages_redelivered_total", "Messages delivered again.", func(s segmenter.Stats) uint64 { return s.Redelivered }),
		counter("messages_acked_total", "Messages acknowledged.", func(s segmenter.Stats) uint64 { return s.Acked }),
		counter("messages_dead_lettered_total", "Messages moved to the group's dead letters.", func(s segmenter.Stats) uint64 { return s.DeadLettered }),
		counter("messages_poison_total", "Entries that segmenter did not write or cannot decode.", func(s segmenter.Stats) uint64 { return s.Poison }),
		counter("messages_trimmed_total", "Pending messages trimmed by retention before they were acked: lost.", func(s segmenter.Stats) uint64 { return s.Trimmed }),
		counter("messages_trimmed_unread_total", "Messages trimmed by retention before the group read them: lost.", func(s segmenter.Stats) uint64 { return s.TrimmedUnread }),
		counter("partitions_fenced_total", "Partitions lost to another consumer while held.", func(s segmenter.Stats) uint64 { return s.Fenced }),
	}
	return m
}

// Observe adds c's counters and gauges to the scrapes, until Forget(c) or
// until c is shut down.
func (m *Metrics) Observe(c *segmenter.Consumer) {
	m.mu.Lock()
	m.consumers[c] = struct{}{}
	m.mu.Unlock()
}

// Forget stops exporting c's metrics.
func (m *Metrics) Forget(c *segmenter.Consumer) {
	m.mu.Lock()
	delete(m.consumers, c)
	m.mu.Unlock()
	m.rebalances.DeleteLabelValues(c.Stream().Name(), c.Group(), c.ID())
}

// OnHandlerStart implements segmenter.HandlerHook.
func (m *Metrics) OnHandlerStart(segmenter.HandlerEvent) {}

// OnHandlerEnd implements segmenter.HandlerHook.
func (m *Metrics) OnHandlerEnd(e segmenter.HandlerEvent) {
	outcome := "ok"
	if e.Err != nil {
		outcome = "error"
	}
	m.handler.WithLabelValues(e.Stream, e.Group, outcome).Observe(e.End.Sub(e.Start).Seconds())
}

// OnRebalance implements segmenter.RebalanceHook.
func (m *Metrics) OnRebalance(e segmenter.RebalanceEvent) {
	m.rebalances.WithLabelValues(e.Stream, e.Group, e.Consumer).Inc()
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.handler.Describe(ch)
	m.rebalances.Describe(ch)
	for _, c := range m.counters {
		ch <- c.desc
	}
	ch <- m.held
	ch <- m.lag
	ch <- m.pending
}

// Collect implements prometheus.Collector: it reads the observed consumers'
// counters, partitions and lag.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.handler.Collect(ch)
	m.rebalances.Collect(ch)
	m.mu.Lock()
	cs := make([]*segmenter.Consumer, 0, len(m.consumers))
	for c := range m.consumers {
		cs = append(cs, c)
	}
	m.mu.Unlock()
	for _, c := range cs {
		ctx, cancel := context.WithTimeout(context.Background(), m.o.lagTimeout)
		lags, err := c.Lag(ctx)
		cancel()
		if errors.Is(err, segmenter.ErrClosed) {
			m.Forget(c)
			continue
		}
		labels := []string{c.Stream().Name(), c.Group(), c.ID()}
		stats := c.Stats()
		for _, sc := range m.counters {
			ch <- prometheus.MustNewConstMetric(sc.desc, prometheus.CounterValue, float64(sc.get(stats)), labels...)
		}
		ch <- prometheus.MustNewConstMetric(m.held, prometheus.GaugeValue, float64(len(c.Assignment())), labels...)
		for _, l := range lags { // the partitions read; a failed read exports none
			p := strconv.Itoa(l.Partition)
			if l.Lag != segmenter.LagUnknown {
				ch <- prometheus.MustNewConstMetric(m.lag, prometheus.GaugeValue, float64(l.Lag), append(labels, p)...)
			}
			ch <- prometheus.MustNewConstMetric(m.pending, prometheus.GaugeValue, float64(l.Pending), append(labels, p)...)
		}
	}
}

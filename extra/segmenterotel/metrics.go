// Package segmenterotel exports the metrics of segmenter consumers through
// OpenTelemetry (go.opentelemetry.io/otel/metric).
//
// A Metrics is a segmenter hook; observe each consumer to export its
// counters and gauges:
//
//	m, err := segmenterotel.New(segmenterotel.WithMeterProvider(provider))
//	c, err := seg.RegisterConsumer(ctx, "payments", "billing", 100, 30*time.Second, segmenter.WithHooks(m))
//	m.Observe(c)
//	defer m.Close()
//
// The counters come from Consumer.Stats and the gauges from
// Consumer.Assignment and Consumer.Lag, read in the instruments' callback
// when the reader collects (Lag costs one Redis round trip per observed
// consumer and collection); the handler duration histogram and the
// rebalance counter are recorded by the hooks as events happen. A consumer
// that was shut down is forgotten at the next collection.
//
// Instruments (attributes messaging.system = "segmenter",
// messaging.destination.name = the stream, messaging.consumer.group.name,
// messaging.client.id = the consumer):
//
//	segmenter.messages.delivered       counter    messages delivered, redeliveries included (Stats.Delivered)
//	segmenter.messages.redelivered     counter    of which redeliveries (Stats.Redelivered)
//	segmenter.messages.acked           counter    messages acknowledged (Stats.Acked)
//	segmenter.messages.dead_lettered   counter    messages moved to the dead letters (Stats.DeadLettered)
//	segmenter.messages.poison          counter    entries segmenter did not write (Stats.Poison)
//	segmenter.messages.trimmed         counter    pending messages lost to retention (Stats.Trimmed)
//	segmenter.messages.trimmed_unread  counter    messages trimmed before the group read them (Stats.TrimmedUnread)
//	segmenter.partitions.fenced        counter    partitions lost to another consumer while held (Stats.Fenced)
//	segmenter.partitions.held          gauge      partitions whose lease the consumer holds
//	segmenter.partition.lag            gauge      entries not yet delivered to the group, per held partition (messaging.destination.partition.id)
//	segmenter.partition.pending        gauge      messages delivered and not acked, per held partition
//	segmenter.rebalances               counter    new assignments of the group the consumer learned
//	segmenter.handler.duration         histogram  Run handler calls, in seconds (outcome = ok | error; no messaging.client.id)
package segmenterotel

import (
	"context"
	"errors"
	"strconv"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/segmenter/segmenter"
)

// ScopeName is the instrumentation scope of the meter.
const ScopeName = "github.com/segmenter/segmenter/extra/segmenterotel"

// Option configures New.
type Option interface{ apply(*options) }

type options struct {
	provider metric.MeterProvider
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithMeterProvider sets the meter provider. Default otel.GetMeterProvider().
func WithMeterProvider(p metric.MeterProvider) Option {
	return optionFunc(func(o *options) { o.provider = p })
}

// Metrics is a segmenter hook (HandlerHook, RebalanceHook) that also
// reports the observed consumers' counters and gauges. It is safe for
// concurrent use.
type Metrics struct {
	handler    metric.Float64Histogram
	rebalances metric.Int64Counter
	counters   []statCounter
	held       metric.Int64ObservableGauge
	lag        metric.Int64ObservableGauge
	pending    metric.Int64ObservableGauge
	reg        metric.Registration

	mu        sync.Mutex
	consumers map[*segmenter.Consumer]struct{}
}

type statCounter struct {
	inst metric.Int64ObservableCounter
	get  func(segmenter.Stats) uint64
}

// New creates the instruments and returns Metrics with no consumer
// observed yet. Close unregisters the callback.
func New(opts ...Option) (*Metrics, error) {
	var o options
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
		}
	}
	if o.provider == nil {
		o.provider = otel.GetMeterProvider()
	}
	meter := o.provider.Meter(ScopeName)
	m := &Metrics{consumers: make(map[*segmenter.Consumer]struct{})}
	var errs []error
	keep := func(err error) { errs = append(errs, err) }
	var err error
	m.handler, err = meter.Float64Histogram("segmenter.handler.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of Run handler calls, by outcome (ok, error)."))
	keep(err)
	m.rebalances, err = meter.Int64Counter("segmenter.rebalances", metric.WithUnit("{rebalance}"),
		metric.WithDescription("New assignments of the group that the consumer learned."))
	keep(err)
	counter := func(name, unit, desc string, get func(segmenter.Stats) uint64) {
		c, err := meter.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		keep(err)
		m.counters = append(m.counters, statCounter{inst: c, get: get})
	}
	counter("segmenter.messages.delivered", "{message}", "Messages delivered, redeliveries included.", func(s segmenter.Stats) uint64 { return s.Delivered })
	counter("segmenter.messages.redelivered", "{message}", "Messages delivered again.", func(s segmenter.Stats) uint64 { return s.Redelivered })
	counter("segmenter.messages.acked", "{message}", "Messages acknowledged.", func(s segmenter.Stats) uint64 { return s.Acked })
	counter("segmenter.messages.dead_lettered", "{message}", "Messages moved to the group's dead letters.", func(s segmenter.Stats) uint64 { return s.DeadLettered })
	counter("segmenter.messages.poison", "{message}", "Entries that segmenter did not write or cannot decode.", func(s segmenter.Stats) uint64 { return s.Poison })
	counter("segmenter.messages.trimmed", "{message}", "Pending messages trimmed by retention before they were acked: lost.", func(s segmenter.Stats) uint64 { return s.Trimmed })
	counter("segmenter.messages.trimmed_unread", "{message}", "Messages trimmed by retention before the group read them: lost.", func(s segmenter.Stats) uint64 { return s.TrimmedUnread })
	counter("segmenter.partitions.fenced", "{partition}", "Partitions lost to another consumer while held.", func(s segmenter.Stats) uint64 { return s.Fenced })
	m.held, err = meter.Int64ObservableGauge("segmenter.partitions.held", metric.WithUnit("{partition}"),
		metric.WithDescription("Partitions whose lease the consumer holds."))
	keep(err)
	m.lag, err = meter.Int64ObservableGauge("segmenter.partition.lag", metric.WithUnit("{message}"),
		metric.WithDescription("Entries of a held partition not yet delivered to the group."))
	keep(err)
	m.pending, err = meter.Int64ObservableGauge("segmenter.partition.pending", metric.WithUnit("{message}"),
		metric.WithDescription("Messages of a held partition delivered and not acked."))
	keep(err)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	insts := []metric.Observable{m.held, m.lag, m.pending}
	for _, c := range m.counters {
		insts = append(insts, c.inst)
	}
	m.reg, err = meter.RegisterCallback(m.observe, insts...)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// Close unregisters the instruments' callback: the observed consumers are
// no longer reported.
func (m *Metrics) Close() error { return m.reg.Unregister() }

// Observe reports c's counters and gauges, until Forget(c) or until c is
// shut down.
func (m *Metrics) Observe(c *segmenter.Consumer) {
	m.mu.Lock()
	m.consumers[c] = struct{}{}
	m.mu.Unlock()
}

// Forget stops reporting c.
func (m *Metrics) Forget(c *segmenter.Consumer) {
	m.mu.Lock()
	delete(m.consumers, c)
	m.mu.Unlock()
}

func consumerAttrs(stream, group, consumer string) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String("messaging.system", "segmenter"),
		attribute.String("messaging.destination.name", stream),
		attribute.String("messaging.consumer.group.name", group),
		attribute.String("messaging.client.id", consumer),
	}
}

// observe is the instruments' callback.
func (m *Metrics) observe(ctx context.Context, o metric.Observer) error {
	m.mu.Lock()
	cs := make([]*segmenter.Consumer, 0, len(m.consumers))
	for c := range m.consumers {
		cs = append(cs, c)
	}
	m.mu.Unlock()
	var errs []error
	for _, c := range cs {
		lags, err := c.Lag(ctx)
		if errors.Is(err, segmenter.ErrClosed) {
			m.Forget(c)
			continue
		}
		if err != nil {
			errs = append(errs, err) // the partitions read are still reported
		}
		attrs := consumerAttrs(c.Stream().Name(), c.Group(), c.ID())
		set := metric.WithAttributes(attrs...)
		stats := c.Stats()
		for _, sc := range m.counters {
			o.ObserveInt64(sc.inst, int64(sc.get(stats)), set)
		}
		o.ObserveInt64(m.held, int64(len(c.Assignment())), set)
		for _, l := range lags {
			pset := metric.WithAttributes(append(attrs, attribute.String("messaging.destination.partition.id", strconv.Itoa(l.Partition)))...)
			if l.Lag != segmenter.LagUnknown {
				o.ObserveInt64(m.lag, l.Lag, pset)
			}
			o.ObserveInt64(m.pending, l.Pending, pset)
		}
	}
	return errors.Join(errs...)
}

// OnHandlerStart implements segmenter.HandlerHook.
func (m *Metrics) OnHandlerStart(segmenter.HandlerEvent) {}

// OnHandlerEnd implements segmenter.HandlerHook.
func (m *Metrics) OnHandlerEnd(e segmenter.HandlerEvent) {
	outcome := "ok"
	if e.Err != nil {
		outcome = "error"
	}
	m.handler.Record(context.Background(), e.End.Sub(e.Start).Seconds(), metric.WithAttributes(
		attribute.String("messaging.system", "segmenter"),
		attribute.String("messaging.destination.name", e.Stream),
		attribute.String("messaging.consumer.group.name", e.Group),
		attribute.String("outcome", outcome),
	))
}

// OnRebalance implements segmenter.RebalanceHook.
func (m *Metrics) OnRebalance(e segmenter.RebalanceEvent) {
	m.rebalances.Add(context.Background(), 1, metric.WithAttributes(consumerAttrs(e.Stream, e.Group, e.Consumer)...))
}

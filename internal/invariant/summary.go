package invariant

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Summary counts what a log holds, for test logs.
type Summary struct {
	Events    int // events in the log
	Malformed int // of which unusable (see Malformed)
	Sent      int // distinct messages recorded as sent
	Delivered int // deliveries, redeliveries included
	Messages  int // distinct messages delivered
	// Redelivered counts the deliveries after the first of their message,
	// split by whether the epoch differs from the previous delivery's
	// (after an ownership change) or not (after a timeout or a failed
	// call).
	Redelivered              int
	RedeliveredAfterHandover int
	RedeliveredAfterTimeout  int
	// FirstRedelivered counts the messages whose first logged delivery had
	// a delivery count above 1: an earlier delivery never reached the log.
	FirstRedelivered int
	// Duplicated counts the messages delivered more than once (by the
	// deliveries logged, or a first logged delivery count above 1);
	// MaxDeliveries is the most deliveries of one message (by count or
	// by the log, whichever is higher).
	Duplicated      int
	MaxDeliveries   int
	Acked           int // distinct messages acked successfully
	AckFenced       int // messages of fenced acks
	AckUnknown      int // messages of acks of unknown outcome, unfinished ones included
	Nacked          int // messages of nacks
	ReadErrors      int // failed reads
	HandlerCalls    int // calls of Run handlers
	HandlerFailures int // of which failed
	Consumers       []string
	Partitions      []PartitionSummary
}

// PartitionSummary is the part of a Summary about one partition.
type PartitionSummary struct {
	Partition int
	Messages  int // distinct messages delivered
	Epochs    []EpochSummary
}

// EpochSummary is one lease epoch of a partition seen in the log.
type EpochSummary struct {
	Epoch     int64
	Consumers []string // the consumers that delivered or acked under it (one, normally)
	Delivered int      // deliveries under it
}

// Summarize counts what events hold.
func Summarize(events []Event) Summary {
	c := newChecker(events, Options{})
	s := Summary{Events: len(events), Malformed: c.malformed, ReadErrors: len(c.global)}
	consumers := make(map[string]bool)
	for _, r := range c.global {
		consumers[r.Consumer] = true
	}
	for _, pt := range c.parts {
		for _, f := range pt.faults {
			consumers[f.Consumer] = true
			switch f.Kind {
			case KindNacked:
				s.Nacked++
			case KindReadError:
				s.ReadErrors++
			}
		}
		ps := PartitionSummary{Partition: pt.p}
		epochs := make(map[int64]*EpochSummary)
		epoch := func(r *rec) *EpochSummary {
			consumers[r.Consumer] = true
			e := epochs[r.Epoch]
			if e == nil {
				e = &EpochSummary{Epoch: r.Epoch}
				epochs[r.Epoch] = e
			}
			if !slices.Contains(e.Consumers, r.Consumer) {
				e.Consumers = append(e.Consumers, r.Consumer)
			}
			return e
		}
		for _, m := range pt.order {
			if len(m.sent) > 0 {
				s.Sent++
			}
			if len(m.dels) > 0 {
				s.Messages++
				ps.Messages++
				if m.dels[0].DeliveryCount > 1 {
					s.FirstRedelivered++
				}
				most := len(m.dels)
				for _, d := range m.dels {
					most = max(most, int(d.DeliveryCount))
				}
				if most > 1 {
					s.Duplicated++
				}
				s.MaxDeliveries = max(s.MaxDeliveries, most)
			}
			for i, d := range m.dels {
				s.Delivered++
				epoch(d).Delivered++
				if i == 0 {
					continue
				}
				s.Redelivered++
				if d.Epoch != m.dels[i-1].Epoch {
					s.RedeliveredAfterHandover++
				} else {
					s.RedeliveredAfterTimeout++
				}
			}
			acked := false
			for _, k := range m.acks {
				switch {
				case k.Outcome == AckOK && !k.open:
					acked = true
					epoch(k)
				case k.Outcome == AckFenced:
					s.AckFenced++
					consumers[k.Consumer] = true
				default:
					s.AckUnknown++
					consumers[k.Consumer] = true
				}
			}
			if acked {
				s.Acked++
			}
			for _, h := range m.handled {
				consumers[h.Consumer] = true
				s.HandlerCalls++
				if h.Outcome != AckOK {
					s.HandlerFailures++
				}
			}
		}
		for _, e := range epochs {
			slices.Sort(e.Consumers)
			ps.Epochs = append(ps.Epochs, *e)
		}
		slices.SortFunc(ps.Epochs, func(a, b EpochSummary) int { return cmp.Compare(a.Epoch, b.Epoch) })
		s.Partitions = append(s.Partitions, ps)
	}
	for name := range consumers {
		s.Consumers = append(s.Consumers, name)
	}
	slices.Sort(s.Consumers)
	return s
}

// String formats the summary on several lines.
func (s Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d events (%d malformed): %d messages sent, %d delivered; %d deliveries, %d redeliveries (%d after an ownership change, %d after a timeout), %d messages first seen redelivered\n",
		s.Events, s.Malformed, s.Sent, s.Messages, s.Delivered, s.Redelivered, s.RedeliveredAfterHandover, s.RedeliveredAfterTimeout, s.FirstRedelivered)
	if s.Duplicated > 0 {
		fmt.Fprintf(&b, "%d messages delivered more than once, at most %d times\n", s.Duplicated, s.MaxDeliveries)
	}
	fmt.Fprintf(&b, "%d messages acked; %d fenced and %d unknown ack outcomes; %d nacked; %d read errors\n", s.Acked, s.AckFenced, s.AckUnknown, s.Nacked, s.ReadErrors)
	if s.HandlerCalls > 0 {
		fmt.Fprintf(&b, "%d handler calls, %d failed\n", s.HandlerCalls, s.HandlerFailures)
	}
	fmt.Fprintf(&b, "%d consumers: %s", len(s.Consumers), strings.Join(s.Consumers, ", "))
	for _, p := range s.Partitions {
		fmt.Fprintf(&b, "\npartition %d: %d messages delivered; epochs:", p.Partition, p.Messages)
		for _, e := range p.Epochs {
			fmt.Fprintf(&b, " %d %s (%d deliveries)", e.Epoch, strings.Join(e.Consumers, "+"), e.Delivered)
		}
	}
	return b.String()
}

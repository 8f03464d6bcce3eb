//go:build unix

package e2e

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/segmenter/segmenter/internal/invariant"
)

// figures are what fault runs measured, as RELIABILITY.md reports them.
type figures struct {
	Runs     int
	Messages int // distinct messages sent
	// Violations found by the checker, by kind.
	Lost              int // loss
	OrderViolations   int // order, due, handler order
	OverlappingOwners int // single owner, stale delivery
	AckedRedelivered  int
	OtherViolations   int // delivery count, unjustified duplicate, malformed
	// Duplicated counts the messages delivered more than once, MaxDeliveries
	// the most deliveries of one message.
	Duplicated, MaxDeliveries int
	// FencedRejections counts the reads and acks that returned ErrFenced
	// to the application (Redis refused a consumer past its lease; Run
	// reports its refused acks, not its refused fetches); PartitionsFenced
	// the partitions consumers lost that way (a read, ack, renewal or
	// release found the lease another's).
	FencedRejections, PartitionsFenced int
	// KillTakeover and TermTakeover are, for each partition held by a
	// worker killed (SIGKILL) or stopped (SIGTERM), the time from the
	// signal to its first delivery by another consumer.
	KillTakeover, TermTakeover []time.Duration
	// CleanKillTakeover and CleanTermTakeover are the same, for signals
	// sent with no other fault going on (the soak's last two).
	CleanKillTakeover, CleanTermTakeover []time.Duration
}

// violations reports whether the checker found anything.
func (f figures) violations() int {
	return f.Lost + f.OrderViolations + f.OverlappingOwners + f.AckedRedelivered + f.OtherViolations
}

// add adds g's figures to f.
func (f *figures) add(g figures) {
	f.Runs += g.Runs
	f.Messages += g.Messages
	f.Lost += g.Lost
	f.OrderViolations += g.OrderViolations
	f.OverlappingOwners += g.OverlappingOwners
	f.AckedRedelivered += g.AckedRedelivered
	f.OtherViolations += g.OtherViolations
	f.Duplicated += g.Duplicated
	f.MaxDeliveries = max(f.MaxDeliveries, g.MaxDeliveries)
	f.FencedRejections += g.FencedRejections
	f.PartitionsFenced += g.PartitionsFenced
	f.KillTakeover = append(f.KillTakeover, g.KillTakeover...)
	f.TermTakeover = append(f.TermTakeover, g.TermTakeover...)
	f.CleanKillTakeover = append(f.CleanKillTakeover, g.CleanKillTakeover...)
	f.CleanTermTakeover = append(f.CleanTermTakeover, g.CleanTermTakeover...)
}

// measure returns the figures of one run: the log evs checked with opts,
// the workers' fenced calls.
func measure(evs []invariant.Event, opts invariant.Options, ws ...*worker) (figures, []*invariant.Violation) {
	vs := invariant.Violations(evs, opts)
	s := invariant.Summarize(evs)
	f := figures{Runs: 1, Messages: s.Sent, Duplicated: s.Duplicated, MaxDeliveries: s.MaxDeliveries}
	for _, v := range vs {
		switch v.Invariant {
		case invariant.Loss:
			f.Lost++
		case invariant.Order, invariant.Due, invariant.HandlerOrder:
			f.OrderViolations++
		case invariant.SingleOwner, invariant.StaleDelivery:
			f.OverlappingOwners++
		case invariant.AckedRedelivered:
			f.AckedRedelivered++
		default:
			f.OtherViolations++
		}
	}
	seen := map[*worker]bool{}
	for _, w := range ws {
		if !seen[w] {
			seen[w] = true
			f.FencedRejections += len(w.Fenced())
			f.PartitionsFenced += w.partitionsFenced()
		}
	}
	return f, vs
}

// String formats the figures on one line.
func (f figures) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "runs=%d messages=%d lost=%d order-violations=%d overlapping-owners=%d acked-redelivered=%d other-violations=%d duplicated=%d max-deliveries=%d fenced-rejections=%d partitions-fenced=%d",
		f.Runs, f.Messages, f.Lost, f.OrderViolations, f.OverlappingOwners, f.AckedRedelivered, f.OtherViolations, f.Duplicated, f.MaxDeliveries, f.FencedRejections, f.PartitionsFenced)
	if len(f.KillTakeover) > 0 {
		fmt.Fprintf(&b, " sigkill-takeover=%s", percentiles(f.KillTakeover))
	}
	if len(f.TermTakeover) > 0 {
		fmt.Fprintf(&b, " sigterm-takeover=%s", percentiles(f.TermTakeover))
	}
	if len(f.CleanKillTakeover) > 0 {
		fmt.Fprintf(&b, " sigkill-takeover-alone=%s", percentiles(f.CleanKillTakeover))
	}
	if len(f.CleanTermTakeover) > 0 {
		fmt.Fprintf(&b, " sigterm-takeover-alone=%s", percentiles(f.CleanTermTakeover))
	}
	return b.String()
}

// percentiles formats p50/p99/max (n samples) of ds.
func percentiles(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration {
		i := int(q*float64(len(s))+0.999999) - 1 // nearest rank
		return s[min(max(i, 0), len(s)-1)]
	}
	r := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	return fmt.Sprintf("p50 %s/p99 %s/max %s (n=%d)", r(at(0.50)), r(at(0.99)), r(s[len(s)-1]), len(s))
}

// takeovers returns, for each partition of held, the time from at (when
// its owner was signalled) to the first delivery of it under a newer epoch
// than before[p] by one of others. A partition not delivered again (no
// message came) has no sample.
func takeovers(stream string, held map[int]int64, at time.Time, others ...*worker) []time.Duration {
	var out []time.Duration
	for p, epoch := range held {
		var first time.Time
		for _, w := range others {
			for _, g := range w.Got() {
				if g.stream == stream && g.partition == p && g.epoch > epoch && g.at.After(at) && (first.IsZero() || g.at.Before(first)) {
					first = g.at
				}
			}
		}
		if !first.IsZero() {
			out = append(out, first.Sub(at))
		}
	}
	slices.Sort(out)
	return out
}

// heldBy returns the partitions (with their epochs) that name holds by the
// leases.
func heldBy(ls []lease, name string) map[int]int64 {
	out := map[int]int64{}
	for p, l := range ls {
		if l.owner == name {
			out[p] = l.epoch
		}
	}
	return out
}

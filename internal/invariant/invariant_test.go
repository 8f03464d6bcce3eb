package invariant

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmenter/segmenter/contracts"
)

var base = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

func at(ms int) time.Time { return base.Add(time.Duration(ms) * time.Millisecond) }

// logb builds synthetic logs; times are in milliseconds from base.
type logb struct {
	evs   []Event
	batch int64
	keys  map[string]string // message ID -> key, when not keyOf(ID)
}

// withKey gives the messages ids the partition key key.
func (b *logb) withKey(key string, ids ...string) {
	if b.keys == nil {
		b.keys = make(map[string]string)
	}
	for _, id := range ids {
		b.keys[id] = key
	}
}

func (b *logb) key(id string) string {
	if k, ok := b.keys[id]; ok {
		return k
	}
	return keyOf(id)
}

// dm is one delivered message: partition, ID, delivery count.
type dm struct {
	p  int
	id string
	dc uint32
}

func d(p int, id string, dc uint32) dm { return dm{p, id, dc} }

func keyOf(id string) string { return "k" + id }

func (b *logb) sent(p int, ids ...string) {
	for _, id := range ids {
		b.evs = append(b.evs, Event{Kind: KindSent, Partition: p, Key: b.key(id), ID: id, Start: base, End: base})
	}
}

func (b *logb) read(consumer string, epoch int64, s, e int, msgs ...dm) {
	b.batch++
	for i, m := range msgs {
		b.evs = append(b.evs, Event{Kind: KindDelivered, Consumer: consumer, Partition: m.p, Key: b.key(m.id), ID: m.id,
			Epoch: epoch, DeliveryCount: m.dc, Batch: b.batch, Index: i, Start: at(s), End: at(e)})
	}
}

func (b *logb) ack(consumer string, epoch int64, out AckOutcome, s, e, p int, ids ...string) {
	b.batch++
	for i, id := range ids {
		b.evs = append(b.evs, Event{Kind: KindAcked, Consumer: consumer, Partition: p, Key: b.key(id), ID: id,
			Epoch: epoch, DeliveryCount: 1, Outcome: out, Batch: b.batch, Index: i, Start: at(s), End: at(e)})
	}
}

// ackStarted logs an ack whose call never finished.
func (b *logb) ackStarted(consumer string, epoch int64, s, p int, ids ...string) {
	b.batch++
	for i, id := range ids {
		b.evs = append(b.evs, Event{Kind: KindAckStarted, Consumer: consumer, Partition: p, Key: b.key(id), ID: id,
			Epoch: epoch, Batch: b.batch, Index: i, Start: at(s), End: at(s)})
	}
}

// nack logs a Nack call.
func (b *logb) nack(consumer string, epoch int64, s, e, p int, ids ...string) {
	b.batch++
	for i, id := range ids {
		b.evs = append(b.evs, Event{Kind: KindNacked, Consumer: consumer, Partition: p, Key: b.key(id), ID: id,
			Epoch: epoch, DeliveryCount: 1, Batch: b.batch, Index: i, Start: at(s), End: at(e)})
	}
}

// readErr logs a failed read of partition p (-1: of every partition).
func (b *logb) readErr(consumer string, s, e, p int) {
	b.batch++
	b.evs = append(b.evs, Event{Kind: KindReadError, Consumer: consumer, Partition: p, Batch: b.batch, Err: "i/o timeout", Start: at(s), End: at(e)})
}

// handled logs a handler call on message id of partition p.
func (b *logb) handled(consumer string, epoch int64, s, e, p int, id string, attempt int, ok bool) {
	b.batch++
	ev := Event{Kind: KindHandled, Consumer: consumer, Partition: p, Key: b.key(id), ID: id, Epoch: epoch, DeliveryCount: 1,
		Attempt: attempt, Outcome: AckOK, Batch: b.batch, Start: at(s), End: at(e)}
	if !ok {
		ev.Outcome, ev.Err = AckError, "failed"
	}
	b.evs = append(b.evs, ev)
}

// violations returns the violations joined in err.
func violations(err error) []*Violation {
	var out []*Violation
	var walk func(error)
	walk = func(err error) {
		if v, ok := err.(*Violation); ok {
			out = append(out, v)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
		}
	}
	walk(err)
	return out
}

func invariantsOf(err error) []Invariant {
	var out []Invariant
	for _, v := range violations(err) {
		if !slices.Contains(out, v.Invariant) {
			out = append(out, v.Invariant)
		}
	}
	slices.Sort(out)
	return out
}

const maxProc = 500 // ms

func TestCheck(t *testing.T) {
	opts := Options{MaxProcessingTime: maxProc * time.Millisecond}
	withAcks := opts
	withAcks.RequireAllAcked = true
	byKey := opts
	byKey.Order = OrderByKey
	allow := func(ids ...string) Options {
		o := opts
		o.AllowLoss = func(id string) bool { return slices.Contains(ids, id) }
		return o
	}

	tests := []struct {
		name  string
		build func(b *logb)
		opts  Options
		want  []Invariant // nil: must pass
		// mention is a text the error must contain.
		mention string
	}{
		{
			name: "clean single consumer",
			opts: withAcks,
			build: func(b *logb) {
				b.sent(0, "1-0", "2-0", "3-0", "4-0", "5-0")
				b.sent(1, "1-0", "1-1")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1), d(0, "2-0", 1), d(1, "1-0", 1), d(0, "3-0", 1))
				b.ack("c1", 1, AckOK, 2, 3, 0, "1-0", "2-0", "3-0")
				b.ack("c1", 1, AckOK, 2, 3, 1, "1-0")
				b.read("c1", 1, 4, 5, d(0, "4-0", 1), d(1, "1-1", 1), d(0, "5-0", 1))
				b.ack("c1", 1, AckOK, 6, 7, 0, "4-0", "5-0")
				b.ack("c1", 1, AckOK, 6, 7, 1, "1-1")
			},
		},
		{
			name: "clean handover",
			opts: withAcks,
			build: func(b *logb) {
				b.sent(0, "1-0", "2-0", "3-0", "4-0", "5-0", "6-0")
				b.read("a", 1, 0, 1, d(0, "1-0", 1), d(0, "2-0", 1), d(0, "3-0", 1), d(0, "4-0", 1))
				b.ack("a", 1, AckOK, 2, 3, 0, "1-0", "2-0")
				b.read("b", 2, 1000, 1001, d(0, "3-0", 2), d(0, "4-0", 2), d(0, "5-0", 1), d(0, "6-0", 1))
				b.ack("a", 1, AckFenced, 1500, 1501, 0, "3-0") // a late ack of the old owner
				b.ack("b", 2, AckOK, 1002, 1003, 0, "3-0", "4-0", "5-0", "6-0")
			},
		},
		{
			name: "clean redelivery after timeout",
			opts: withAcks,
			build: func(b *logb) {
				b.sent(0, "1-0", "2-0", "3-0")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1), d(0, "2-0", 1))
				b.ack("c1", 1, AckOK, 2, 3, 0, "2-0")
				b.read("c1", 1, 600, 601, d(0, "1-0", 2), d(0, "3-0", 1))
				b.ack("c1", 1, AckOK, 602, 603, 0, "1-0", "3-0")
			},
		},

		// Order.
		{
			name:    "order: newer message first delivered before older",
			opts:    opts,
			want:    []Invariant{Order},
			mention: "1-0 was first delivered",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "2-0", 1))
				b.read("c1", 1, 5, 6, d(0, "1-0", 1))
			},
		},
		{
			name: "order near miss: overlapping first deliveries",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 10, d(0, "2-0", 1))
				b.read("c2", 2, 5, 15, d(0, "1-0", 1))
			},
		},
		{
			name: "order near miss: other partitions are independent",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(1, "2-0", 1))
				b.read("c1", 1, 5, 6, d(0, "1-0", 1))
			},
		},
		{
			name: "order near miss: IDs compare as numbers",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "9-5", 1), d(0, "9-10", 1), d(0, "10-0", 1))
			},
		},
		{
			name:    "order: reversed within one read",
			opts:    opts,
			want:    []Invariant{Order},
			mention: "returned 1-0 (index 1) after newer 2-0",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "2-0", 1), d(0, "1-0", 1))
			},
		},
		{
			name:    "order: one read returns a message twice",
			opts:    opts,
			want:    []Invariant{Order},
			mention: "twice",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1), d(0, "1-0", 1))
			},
		},
		{
			name: "order with slack: within tolerance",
			opts: Options{Slack: 5 * time.Millisecond},
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "2-0", 1))
				b.read("c1", 1, 4, 6, d(0, "1-0", 1))
			},
		},
		{
			name: "order with slack: beyond tolerance",
			opts: Options{Slack: 2 * time.Millisecond},
			want: []Invariant{Order},
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "2-0", 1))
				b.read("c1", 1, 4, 6, d(0, "1-0", 1))
			},
		},

		// Due.
		{
			name:    "due: newer message delivered while older one is due",
			opts:    opts,
			want:    []Invariant{Due},
			mention: "1-0 was due for redelivery",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 600, 601, d(0, "2-0", 1))
			},
		},
		{
			name:    "due: redelivery of a newer message while an older one is due",
			opts:    opts,
			want:    []Invariant{Due},
			mention: "returned newer 2-0",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 300, 301, d(0, "2-0", 1))
				b.read("c1", 1, 900, 901, d(0, "2-0", 2))
			},
		},
		{
			name:    "due: fenced ack does not count",
			opts:    opts,
			want:    []Invariant{Due},
			mention: "1-0 was due",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.ack("c1", 1, AckFenced, 100, 101, 0, "1-0")
				b.read("c1", 1, 600, 601, d(0, "2-0", 1))
			},
		},
		{
			name: "due near miss: read may have run before the timeout",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 400, 700, d(0, "2-0", 1))
			},
		},
		{
			name: "due near miss: within the Redis clock margin",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 502, 503, d(0, "2-0", 1))
			},
		},
		{
			name: "due near miss: ack may have run before the read",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.ack("c1", 1, AckOK, 550, 650, 0, "1-0")
				b.read("c1", 1, 600, 601, d(0, "2-0", 1))
			},
		},
		{
			name: "due near miss: ack of unknown outcome",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.ack("c1", 1, AckError, 100, 101, 0, "1-0")
				b.read("c1", 1, 600, 601, d(0, "2-0", 1))
			},
		},
		{
			name: "due near miss: ack that never returned",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.ackStarted("c1", 1, 100, 0, "1-0")
				b.read("c1", 1, 600, 601, d(0, "2-0", 1))
			},
		},
		{
			name: "due near miss: redelivered first in the same read",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 600, 601, d(0, "1-0", 2), d(0, "2-0", 1))
			},
		},
		{
			name: "due near miss: redelivered just before",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 595, 599, d(0, "1-0", 2))
				b.read("c1", 1, 600, 601, d(0, "2-0", 1))
			},
		},
		{
			name: "due near miss: overlapping redelivery by another consumer",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c2", 2, 590, 700, d(0, "1-0", 2))
				b.read("c2", 2, 600, 601, d(0, "2-0", 1))
			},
		},
		{
			name: "due near miss: delivery count gap shows an unlogged redelivery",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 600, 601, d(0, "2-0", 1))
				b.read("c1", 1, 1200, 1201, d(0, "1-0", 3))
			},
		},
		{
			name: "due: no gap in the delivery counts",
			opts: opts,
			want: []Invariant{Due},
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 600, 601, d(0, "2-0", 1))
				b.read("c1", 1, 1200, 1201, d(0, "1-0", 2))
			},
		},
		{
			name: "due near miss: message allowed to be lost",
			opts: allow("1-0"),
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 600, 601, d(0, "2-0", 1))
			},
		},
		{
			name: "due near miss: disabled without MaxProcessingTime",
			opts: Options{},
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 600, 601, d(0, "2-0", 1))
			},
		},

		// Loss.
		{
			name:    "loss: sent, never delivered",
			opts:    opts,
			want:    []Invariant{Loss},
			mention: "2-0 (key \"k2-0\") was sent but never delivered",
			build: func(b *logb) {
				b.sent(0, "1-0", "2-0")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
			},
		},
		{
			name: "loss near miss: allowed",
			opts: allow("2-0"),
			build: func(b *logb) {
				b.sent(0, "1-0", "2-0")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
			},
		},
		{
			name:    "loss: delivered, never acked",
			opts:    withAcks,
			want:    []Invariant{Loss},
			mention: "never acked (no ack)",
			build: func(b *logb) {
				b.sent(0, "1-0")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
			},
		},
		{
			name:    "loss: only a fenced ack",
			opts:    withAcks,
			want:    []Invariant{Loss},
			mention: "ack outcomes: fenced",
			build: func(b *logb) {
				b.sent(0, "1-0")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.ack("c1", 1, AckFenced, 2, 3, 0, "1-0")
			},
		},
		{
			name: "loss near miss: ack of unknown outcome, not redelivered",
			opts: withAcks,
			build: func(b *logb) {
				b.sent(0, "1-0")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.ack("c1", 1, AckError, 2, 3, 0, "1-0")
			},
		},
		{
			name: "loss near miss: ack that never returned",
			opts: withAcks,
			build: func(b *logb) {
				b.sent(0, "1-0")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.ackStarted("c1", 1, 2, 0, "1-0")
			},
		},
		{
			name: "loss: ack of unknown outcome, then redelivered and not acked",
			opts: withAcks,
			want: []Invariant{Loss},
			build: func(b *logb) {
				b.sent(0, "1-0")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.ack("c1", 1, AckError, 2, 3, 0, "1-0")
				b.read("c1", 1, 600, 601, d(0, "1-0", 2))
			},
		},
		{
			name:    "loss: delivered with another key",
			opts:    opts,
			want:    []Invariant{Loss},
			mention: "has key \"k1-0\" in a sent but key \"other\"",
			build: func(b *logb) {
				b.sent(0, "1-0")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.evs[len(b.evs)-1].Key = "other"
			},
		},

		// Single owner.
		{
			// A read that starts after a newer epoch's returned also
			// returns after it.
			name:    "single owner: old epoch reads after the new epoch",
			opts:    opts,
			want:    []Invariant{SingleOwner, StaleDelivery},
			mention: "under a newer epoch had returned",
			build: func(b *logb) {
				b.read("c2", 2, 50, 51, d(0, "1-0", 2))
				b.read("c1", 1, 100, 101, d(0, "3-0", 1))
			},
		},
		{
			name:    "single owner: old epoch acks after the new epoch",
			opts:    opts,
			want:    []Invariant{SingleOwner},
			mention: "ack (ok) by \"c1\" epoch 1",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c2", 2, 50, 51, d(0, "1-0", 2))
				b.ack("c1", 1, AckOK, 100, 101, 0, "1-0")
			},
		},
		{
			name: "single owner near miss: fenced ack of the old epoch",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c2", 2, 50, 51, d(0, "1-0", 2))
				b.ack("c1", 1, AckFenced, 100, 101, 0, "1-0")
				b.ack("c1", 1, AckError, 100, 101, 0, "1-0")
			},
		},
		{
			name: "single owner near miss: overlapping operations",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 40, 52, d(0, "2-0", 1))
				b.read("c2", 2, 50, 55, d(0, "1-0", 2))
			},
		},
		{
			name:    "single owner: two consumers under one epoch",
			opts:    opts,
			want:    []Invariant{SingleOwner},
			mention: "epoch 1 used by two consumers",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c2", 1, 2, 3, d(0, "2-0", 1))
			},
		},
		{
			name: "single owner near miss: one epoch per partition",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c2", 1, 2, 3, d(1, "2-0", 1))
			},
		},

		// Acked, then redelivered.
		{
			name:    "acked redelivered",
			opts:    opts,
			want:    []Invariant{AckedRedelivered},
			mention: "1-0 was delivered again",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.ack("c1", 1, AckOK, 10, 11, 0, "1-0")
				b.read("c2", 2, 20, 21, d(0, "1-0", 2))
			},
		},
		{
			name: "acked redelivered near miss: ack overlaps the read",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.ack("c1", 1, AckOK, 10, 30, 0, "1-0")
				b.read("c2", 2, 20, 25, d(0, "1-0", 2))
			},
		},
		{
			name: "acked redelivered near miss: ack of unknown outcome",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.ack("c1", 1, AckError, 10, 11, 0, "1-0")
				b.read("c1", 1, 20, 21, d(0, "1-0", 2))
			},
		},

		// Delivery count.
		{
			name:    "delivery count zero",
			opts:    opts,
			want:    []Invariant{DeliveryCount},
			mention: "delivery count 0",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 0))
			},
		},
		{
			name:    "delivery count stays the same",
			opts:    opts,
			want:    []Invariant{DeliveryCount},
			mention: "again with the same delivery count 1",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c2", 2, 600, 601, d(0, "1-0", 1))
			},
		},
		{
			name:    "delivery count goes down",
			opts:    opts,
			want:    []Invariant{DeliveryCount},
			mention: "went down from 3",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 3))
				b.read("c1", 1, 600, 601, d(0, "1-0", 2))
			},
		},
		{
			// Redis ran the second first: c1's under the old epoch, then
			// c2's, within [5ms, 15ms].
			name: "delivery count near miss: overlapping deliveries",
			opts: opts,
			build: func(b *logb) {
				b.read("c2", 2, 0, 20, d(0, "1-0", 3))
				b.read("c1", 1, 5, 15, d(0, "1-0", 2))
			},
		},

		// Duplicate.
		{
			name:    "duplicate: redelivered at once under the same epoch",
			opts:    opts,
			want:    []Invariant{Duplicate},
			mention: "1-0 was delivered again in a read (delivery count 2)",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 10, 11, d(0, "1-0", 2))
			},
		},
		{
			name: "duplicate near miss: under a newer epoch",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c2", 2, 10, 11, d(0, "1-0", 2))
			},
		},
		{
			name: "duplicate near miss: within the slack of the max processing time",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 497, 498, d(0, "1-0", 2))
			},
		},
		{
			name:    "duplicate: sooner than the max processing time",
			opts:    opts,
			want:    []Invariant{Duplicate},
			mention: "sooner than the max processing time 500ms",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 480, 481, d(0, "1-0", 2))
			},
		},
		{
			name: "duplicate near miss: after a nack",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.nack("c1", 1, 5, 6, 0, "1-0")
				b.read("c1", 1, 10, 11, d(0, "1-0", 2))
			},
		},
		{
			name: "duplicate near miss: a nack of another message of the partition",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1), d(0, "2-0", 1))
				b.nack("c1", 1, 5, 6, 0, "2-0")
				b.read("c1", 1, 10, 11, d(0, "1-0", 2), d(0, "2-0", 2))
			},
		},
		{
			name:    "duplicate: a nack before the previous delivery does not count",
			opts:    opts,
			want:    []Invariant{Duplicate},
			mention: "read (delivery count 3)",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.nack("c1", 1, 2, 3, 0, "1-0")
				b.read("c1", 1, 10, 11, d(0, "1-0", 2))
				b.read("c1", 1, 20, 21, d(0, "1-0", 3))
			},
		},
		{
			name:    "duplicate: a nack by another consumer does not count",
			opts:    opts,
			want:    []Invariant{Duplicate},
			mention: "of partition 0 by \"c1\"",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.nack("c2", 2, 5, 6, 0, "1-0")
				b.read("c1", 1, 10, 11, d(0, "1-0", 2))
			},
		},
		{
			name:    "duplicate: a nack of another partition does not count",
			opts:    opts,
			want:    []Invariant{Duplicate},
			mention: "1-0 was delivered again",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1), d(1, "1-0", 1))
				b.nack("c1", 1, 5, 6, 1, "1-0")
				b.read("c1", 1, 10, 11, d(0, "1-0", 2))
			},
		},
		{
			name: "duplicate near miss: after a read error of the partition",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.readErr("c1", 5, 6, 0)
				b.read("c1", 1, 10, 11, d(0, "1-0", 2))
			},
		},
		{
			name: "duplicate near miss: after a read error of every partition",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.readErr("c1", 5, 6, -1)
				b.read("c1", 1, 10, 11, d(0, "1-0", 2))
			},
		},
		{
			name:    "duplicate: a read error of another partition does not count",
			opts:    opts,
			want:    []Invariant{Duplicate},
			mention: "1-0 was delivered again",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.readErr("c1", 5, 6, 1)
				b.read("c1", 1, 10, 11, d(0, "1-0", 2))
			},
		},
		{
			name: "duplicate near miss: after an ack of unknown outcome",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.ack("c1", 1, AckError, 5, 6, 0, "1-0")
				b.read("c1", 1, 10, 11, d(0, "1-0", 2))
			},
		},
		{
			name: "duplicate near miss: after an ack that never returned",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.ackStarted("c1", 1, 5, 0, "1-0")
				b.read("c1", 1, 10, 11, d(0, "1-0", 2))
			},
		},
		{
			name:    "duplicate: a fenced ack does not count",
			opts:    opts,
			want:    []Invariant{Duplicate},
			mention: "1-0 was delivered again",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.ack("c1", 1, AckFenced, 5, 6, 0, "1-0")
				b.read("c1", 1, 10, 11, d(0, "1-0", 2))
			},
		},
		{
			name: "duplicate near miss: the previous delivery is not in the log",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 10, 11, d(0, "1-0", 3))
			},
		},
		{
			name: "duplicate near miss: disabled without MaxProcessingTime",
			opts: Options{},
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 10, 11, d(0, "1-0", 2))
			},
		},

		// Stale delivery.
		{
			name:    "stale delivery: an old epoch's read returns after the new epoch's",
			opts:    opts,
			want:    []Invariant{StaleDelivery},
			mention: "returned 40ms after a read (delivery count 1) by \"c2\" epoch 2",
			build: func(b *logb) {
				b.read("c1", 1, 0, 100, d(0, "2-0", 1))
				b.read("c2", 2, 50, 60, d(0, "1-0", 1))
			},
		},
		{
			name: "stale delivery near miss: the old epoch's read returns first",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 55, d(0, "2-0", 1))
				b.read("c2", 2, 50, 60, d(0, "1-0", 1))
			},
		},
		{
			name: "stale delivery near miss: within the slack",
			opts: Options{MaxProcessingTime: maxProc * time.Millisecond, Slack: 50 * time.Millisecond},
			build: func(b *logb) {
				b.read("c1", 1, 0, 100, d(0, "2-0", 1))
				b.read("c2", 2, 50, 60, d(0, "1-0", 1))
			},
		},
		{
			name: "stale delivery near miss: another partition",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 100, d(0, "2-0", 1))
				b.read("c2", 2, 50, 60, d(1, "1-0", 1))
			},
		},
		{
			name: "stale delivery near miss: an old epoch's fenced ack returns late",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c2", 2, 50, 60, d(0, "1-0", 2))
				b.ack("c1", 1, AckFenced, 40, 100, 0, "1-0")
			},
		},

		// Handler order.
		{
			name: "handler order: retried until it succeeds, then the next",
			opts: withAcks,
			build: func(b *logb) {
				b.sent(0, "1-0", "2-0")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1), d(0, "2-0", 1))
				b.handled("c1", 1, 2, 3, 0, "1-0", 1, false)
				b.handled("c1", 1, 10, 11, 0, "1-0", 2, true)
				b.handled("c1", 1, 12, 13, 0, "2-0", 1, true)
				b.ack("c1", 1, AckOK, 14, 15, 0, "1-0", "2-0")
			},
		},
		{
			name:    "handler order: moves on from a failed message",
			opts:    opts,
			want:    []Invariant{HandlerOrder},
			mention: "2-0 was handled in a handler call (attempt 1, ok) by \"c1\" epoch 1 at [+10ms, +11ms] after a handler call (attempt 1, failed)",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1), d(0, "2-0", 1))
				b.handled("c1", 1, 2, 3, 0, "1-0", 1, false)
				b.handled("c1", 1, 10, 11, 0, "2-0", 1, true)
			},
		},
		{
			name:    "handler order: overlapping calls of one owner",
			opts:    opts,
			want:    []Invariant{HandlerOrder},
			mention: "started while a handler call (attempt 1, ok) by \"c1\" epoch 1 at [+2ms, +10ms] of 1-0",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1), d(0, "2-0", 1))
				b.handled("c1", 1, 2, 10, 0, "1-0", 1, true)
				b.handled("c1", 1, 5, 12, 0, "2-0", 1, true)
			},
		},
		{
			name:    "handler order: first handled out of stream order",
			opts:    opts,
			want:    []Invariant{HandlerOrder},
			mention: "1-0 was first handled in a handler call",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1), d(0, "2-0", 1))
				b.handled("c1", 1, 2, 3, 0, "2-0", 1, true)
				b.handled("c1", 1, 5, 6, 0, "1-0", 1, true)
			},
		},
		{
			name: "handler order near miss: the old owner's call still runs",
			opts: opts,
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1), d(0, "2-0", 1))
				b.handled("c1", 1, 2, 100, 0, "1-0", 1, true)
				b.read("c2", 2, 50, 51, d(0, "1-0", 2), d(0, "2-0", 2))
				b.handled("c2", 2, 52, 53, 0, "1-0", 1, true)
				b.handled("c2", 2, 54, 55, 0, "2-0", 1, true)
			},
		},
		{
			name: "handler order near miss: a redelivered message handled again after newer ones",
			opts: withAcks,
			build: func(b *logb) {
				b.sent(0, "1-0", "2-0")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1), d(0, "2-0", 1))
				b.handled("c1", 1, 2, 3, 0, "1-0", 1, true)
				b.ack("c1", 1, AckError, 4, 5, 0, "1-0")
				b.handled("c1", 1, 6, 7, 0, "2-0", 1, true)
				b.ack("c1", 1, AckOK, 8, 9, 0, "2-0")
				b.read("c1", 1, 600, 601, d(0, "1-0", 2))
				b.handled("c1", 1, 602, 603, 0, "1-0", 1, true)
				b.ack("c1", 1, AckOK, 604, 605, 0, "1-0")
			},
		},

		// Per-key order.
		{
			name: "per key: keys of a partition are independent",
			opts: byKey,
			build: func(b *logb) {
				perKeyLog(b)
			},
		},
		{
			name:    "per key: the same log breaks partition order",
			opts:    opts,
			want:    []Invariant{HandlerOrder},
			mention: "started while",
			build: func(b *logb) {
				perKeyLog(b)
			},
		},
		{
			name:    "per key: a key's message handled before an older one of the key",
			opts:    byKey,
			want:    []Invariant{HandlerOrder},
			mention: "handler-order: partition 0 key \"A\": 1-0 was first handled",
			build: func(b *logb) {
				b.withKey("A", "1-0", "3-0")
				b.withKey("B", "2-0")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1), d(0, "2-0", 1), d(0, "3-0", 1))
				b.handled("c1", 1, 2, 3, 0, "3-0", 1, true)
				b.handled("c1", 1, 2, 3, 0, "2-0", 1, true)
				b.handled("c1", 1, 5, 6, 0, "1-0", 1, true)
			},
		},
		{
			name:    "per key: a key moves on from a failed message",
			opts:    byKey,
			want:    []Invariant{HandlerOrder},
			mention: "3-0 was handled in a handler call (attempt 1, ok)",
			build: func(b *logb) {
				b.withKey("A", "1-0", "3-0")
				b.withKey("B", "2-0")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1), d(0, "2-0", 1), d(0, "3-0", 1))
				b.handled("c1", 1, 2, 3, 0, "1-0", 1, false)
				b.handled("c1", 1, 2, 3, 0, "2-0", 1, true)
				b.handled("c1", 1, 5, 6, 0, "3-0", 1, true)
			},
		},
		{
			name: "per key near miss: newer message of another key first delivered",
			opts: byKey,
			build: func(b *logb) {
				b.withKey("A", "1-0")
				b.withKey("B", "2-0")
				b.read("c1", 1, 0, 1, d(0, "2-0", 1))
				b.read("c1", 1, 5, 6, d(0, "1-0", 1))
			},
		},
		{
			name:    "per key: newer message of the key first delivered",
			opts:    byKey,
			want:    []Invariant{Order},
			mention: "order: partition 0 key \"A\": 1-0 was first delivered",
			build: func(b *logb) {
				b.withKey("A", "1-0", "2-0")
				b.read("c1", 1, 0, 1, d(0, "2-0", 1))
				b.read("c1", 1, 5, 6, d(0, "1-0", 1))
			},
		},
		{
			name: "per key near miss: another key's message is due",
			opts: byKey,
			build: func(b *logb) {
				b.withKey("A", "1-0")
				b.withKey("B", "2-0")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 600, 601, d(0, "2-0", 1))
			},
		},
		{
			name:    "per key: the key's older message is due",
			opts:    byKey,
			want:    []Invariant{Due},
			mention: "due: partition 0 key \"A\": 1-0 was due for redelivery",
			build: func(b *logb) {
				b.withKey("A", "1-0", "2-0")
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.read("c1", 1, 600, 601, d(0, "2-0", 1))
			},
		},

		// Malformed.
		{
			name:    "malformed: bad ID",
			opts:    opts,
			want:    []Invariant{Malformed},
			mention: "bad stream entry ID",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "x", 1))
			},
		},
		{
			name:    "malformed: ends before it starts",
			opts:    opts,
			want:    []Invariant{Malformed},
			mention: "ends 5ms before it starts",
			build: func(b *logb) {
				b.read("c1", 1, 10, 5, d(0, "1-0", 1))
			},
		},
		{
			name:    "malformed: handler call without outcome",
			opts:    opts,
			want:    []Invariant{Malformed},
			mention: "handler call without outcome",
			build: func(b *logb) {
				b.handled("c1", 1, 2, 3, 0, "1-0", 1, true)
				b.evs[len(b.evs)-1].Outcome = AckFenced
			},
		},
		{
			name:    "malformed: read error of partition -2",
			opts:    opts,
			want:    []Invariant{Malformed},
			mention: "negative partition",
			build: func(b *logb) {
				b.readErr("c1", 2, 3, -2)
			},
		},
		{
			name:    "malformed: ack without outcome",
			opts:    opts,
			want:    []Invariant{Malformed},
			mention: "unknown ack outcome",
			build: func(b *logb) {
				b.read("c1", 1, 0, 1, d(0, "1-0", 1))
				b.ack("c1", 1, 0, 2, 3, 0, "1-0")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b logb
			tt.build(&b)
			err := Check(b.evs, tt.opts)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("want no violation, got:\n%v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want %v, got no violation", tt.want)
			}
			t.Logf("%v", err)
			want := slices.Sorted(slices.Values(tt.want))
			if got := invariantsOf(err); !slices.Equal(got, want) {
				t.Errorf("violated %v, want %v; error:\n%v", got, want, err)
			}
			for _, inv := range want {
				if !strings.Contains(err.Error(), string(inv)+": partition ") {
					t.Errorf("error does not mention %q:\n%v", inv, err)
				}
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("error does not contain %q:\n%v", tt.mention, err)
			}
			var v *Violation
			if !errors.As(err, &v) {
				t.Errorf("errors.As finds no *Violation in %v", err)
			}
		})
	}
}

// perKeyLog is a partition whose keys A and B are handled concurrently:
// A's first message fails once while B's flows.
func perKeyLog(b *logb) {
	b.withKey("A", "1-0", "3-0")
	b.withKey("B", "2-0", "4-0")
	b.sent(0, "1-0", "2-0", "3-0", "4-0")
	b.read("c1", 1, 0, 1, d(0, "1-0", 1), d(0, "2-0", 1), d(0, "3-0", 1), d(0, "4-0", 1))
	b.handled("c1", 1, 2, 3, 0, "1-0", 1, false)
	b.handled("c1", 1, 2, 4, 0, "2-0", 1, true)
	b.handled("c1", 1, 5, 6, 0, "4-0", 1, true)
	b.handled("c1", 1, 10, 11, 0, "1-0", 2, true)
	b.handled("c1", 1, 12, 13, 0, "3-0", 1, true)
	b.ack("c1", 1, AckOK, 14, 15, 0, "1-0", "2-0", "3-0", "4-0")
}

func TestCheckNamesTheParties(t *testing.T) {
	var b logb
	b.read("alice", 7, 0, 1, d(3, "1-0", 1))
	b.read("bob", 8, 600, 601, d(3, "2-0", 1))
	err := Check(b.evs, Options{MaxProcessingTime: maxProc * time.Millisecond})
	vs := violations(err)
	if len(vs) != 1 {
		t.Fatalf("want one violation, got %v", err)
	}
	v := vs[0]
	if v.Invariant != Due || v.Partition != 3 || !slices.Equal(v.IDs, []string{"1-0", "2-0"}) {
		t.Errorf("got %+v", v)
	}
	for _, s := range []string{`"alice" epoch 7`, `"bob" epoch 8`, "partition 3", "[+0s, +1ms]", "[+600ms, +601ms]"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error does not mention %s:\n%v", s, err)
		}
	}
}

func TestCheckCapsTheReport(t *testing.T) {
	var b logb
	for i := range 50 {
		b.sent(0, fmt.Sprintf("%d-0", i+1))
	}
	b.read("c1", 1, 0, 1, d(1, "1-0", 0)) // one delivery count violation
	err := Check(b.evs, Options{})
	if got := len(violations(err)); got != 20 {
		t.Errorf("got %d violations in the error, want 20", got)
	}
	msg := err.Error()
	for _, s := range []string{"51 violations (loss 50, delivery-count 1)", "31 more violations not shown", "delivery-count: partition 1"} {
		if !strings.Contains(msg, s) {
			t.Errorf("error does not contain %q:\n%s", s, msg)
		}
	}
}

func msgs(p uint32, epoch int64, ids ...string) []*contracts.CMessage {
	var out []*contracts.CMessage
	for _, id := range ids {
		out = append(out, &contracts.CMessage{Id: id, PartitionKey: keyOf(id), Partition: p, Epoch: epoch, DeliveryCount: 1, Stream: "s", Group: "g"})
	}
	return out
}

// timed runs f between two readings of the clock, as a test harness does.
func timed(f func()) (start, end time.Time) {
	start = time.Now()
	f()
	return start, time.Now()
}

func recordHandover(r *Recorder) {
	for _, id := range []string{"1-0", "2-0", "3-0"} {
		r.Sent(id, 0, keyOf(id))
	}
	first := msgs(0, 1, "1-0", "2-0")
	s, e := timed(func() {})
	r.Delivered("a", first, s, e)
	s, e = timed(func() {})
	r.Acked("a", first[:1], AckOK, s, e)
	second := msgs(0, 2, "2-0", "3-0")
	second[0].DeliveryCount = 2
	s, e = timed(func() {})
	r.Delivered("b", second, s, e)
	r.BeginAck("b", second).Done(AckOK)
	r.BeginAck("a", first[1:]).Done(AckFenced)
}

func TestRecorder(t *testing.T) {
	r := NewRecorder()
	recordHandover(r)
	evs := r.Events()
	if len(evs) != 3+2+1+2+2+2+1+1 {
		t.Fatalf("got %d events", len(evs))
	}
	d := evs[3]
	if d.Kind != KindDelivered || d.Consumer != "a" || d.ID != "1-0" || d.Key != "k1-0" || d.Epoch != 1 || d.DeliveryCount != 1 || d.Index != 0 || d.Batch == 0 {
		t.Errorf("delivery event: %+v", d)
	}
	if evs[4].Batch != d.Batch || evs[4].Index != 1 {
		t.Errorf("second message of the read: %+v", evs[4])
	}
	if err := r.Check(Options{MaxProcessingTime: time.Hour, RequireAllAcked: true}); err != nil {
		t.Fatal(err)
	}
	s := r.Summary()
	if s.Sent != 3 || s.Delivered != 4 || s.Messages != 3 || s.Redelivered != 1 || s.RedeliveredAfterHandover != 1 ||
		s.RedeliveredAfterTimeout != 0 || s.Acked != 3 || s.AckFenced != 1 || s.AckUnknown != 0 ||
		!slices.Equal(s.Consumers, []string{"a", "b"}) || len(s.Partitions) != 1 || len(s.Partitions[0].Epochs) != 2 {
		t.Errorf("summary: %+v", s)
	}
	t.Log(s)
}

func TestSummary(t *testing.T) {
	var b logb
	b.sent(0, "1-0", "2-0", "3-0")
	b.read("a", 1, 0, 1, d(0, "1-0", 1), d(0, "2-0", 1))
	b.read("a", 1, 600, 601, d(0, "1-0", 2), d(0, "2-0", 2))
	b.read("b", 2, 2000, 2001, d(0, "1-0", 3), d(0, "3-0", 2))
	b.ack("b", 2, AckOK, 2002, 2003, 0, "1-0", "3-0")
	b.ackStarted("a", 1, 700, 0, "2-0")
	s := Summarize(b.evs)
	want := Summary{Events: len(b.evs), Sent: 3, Delivered: 6, Messages: 3, Redelivered: 3, RedeliveredAfterHandover: 1,
		RedeliveredAfterTimeout: 2, FirstRedelivered: 1, Duplicated: 3, MaxDeliveries: 3, Acked: 2, AckUnknown: 1, Consumers: []string{"a", "b"},
		Partitions: []PartitionSummary{{Partition: 0, Messages: 3, Epochs: []EpochSummary{
			{Epoch: 1, Consumers: []string{"a"}, Delivered: 4}, {Epoch: 2, Consumers: []string{"b"}, Delivered: 2}}}}}
	if fmt.Sprint(s) != fmt.Sprint(want) {
		t.Errorf("got  %+v\nwant %+v", s, want)
	}
	str := s.String()
	for _, sub := range []string{"3 redeliveries (1 after an ownership change, 2 after a timeout)", "3 messages delivered more than once, at most 3 times", "partition 0: 3 messages delivered; epochs: 1 a (4 deliveries) 2 b (2 deliveries)"} {
		if !strings.Contains(str, sub) {
			t.Errorf("summary does not contain %q:\n%s", sub, str)
		}
	}
}

// Violations returns every violation Check reports, uncapped: 30 messages
// never delivered are 30 loss violations, where Check's error lists 20.
func TestViolationsAreEveryOneCheckFinds(t *testing.T) {
	var b logb
	ids := make([]string, 30)
	for i := range ids {
		ids[i] = fmt.Sprintf("%d-0", i+1)
	}
	b.sent(0, ids...)
	vs := Violations(b.evs, Options{})
	if len(vs) != 30 {
		t.Fatalf("%d violations, want 30", len(vs))
	}
	for _, v := range vs {
		if v.Invariant != Loss {
			t.Fatalf("violation %v, want loss", v)
		}
	}
	err := Check(b.evs, Options{})
	if err == nil || !strings.Contains(err.Error(), "30 violations (loss 30)") || !strings.Contains(err.Error(), "10 more violations not shown") {
		t.Fatalf("Check: %v", err)
	}
	b = logb{}
	b.sent(0, "1-0")
	b.read("a", 1, 0, 1, d(0, "1-0", 1))
	if vs := Violations(b.evs, Options{}); vs != nil {
		t.Fatalf("a clean log: %v", vs)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	r := NewRecorder()
	recordHandover(r)
	unfinished := r.BeginAck("b", msgs(0, 2, "9-0"))
	_ = unfinished // never done: the process "died"
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(buf.String(), "\n"); n != len(r.Events()) {
		t.Errorf("%d lines for %d events", n, len(r.Events()))
	}
	got, err := ReadJSON(&buf)
	if err != nil {
		t.Fatal(err)
	}
	want := r.Events()
	if len(got) != len(want) {
		t.Fatalf("read %d events, wrote %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if !g.Start.Equal(w.Start) || !g.End.Equal(w.End) {
			t.Errorf("event %d: times %v %v, want %v %v", i, g.Start, g.End, w.Start, w.End)
		}
		g.Start, g.End, w.Start, w.End = time.Time{}, time.Time{}, time.Time{}, time.Time{}
		if g != w {
			t.Errorf("event %d: got %+v, want %+v", i, g, w)
		}
	}
	if got[len(got)-1].Kind != KindAckStarted {
		t.Errorf("last event: %+v", got[len(got)-1])
	}
	opts := Options{MaxProcessingTime: time.Hour, RequireAllAcked: true}
	if err := Check(got, opts); err != nil {
		t.Error(err)
	}
	// A log of another process, read back (wall clock), merged with the
	// events of this one (monotonic clock).
	other := NewRecorder()
	s, e := timed(func() {})
	other.Delivered("w", msgs(1, 1, "1-0"), s, e)
	s, e = timed(func() {})
	other.Acked("w", msgs(1, 1, "1-0"), AckOK, s, e)
	buf.Reset()
	if err := other.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	loaded, err := ReadJSON(&buf)
	if err != nil {
		t.Fatal(err)
	}
	merged := append(r.Events(), loaded...)
	if err := Check(merged, opts); err != nil {
		t.Error(err)
	}
	if s := Summarize(merged); len(s.Partitions) != 2 || !slices.Equal(s.Consumers, []string{"a", "b", "w"}) {
		t.Errorf("merged summary: %v", s)
	}
}

func TestReadJSON(t *testing.T) {
	var buf bytes.Buffer
	var b logb
	b.read("c1", 1, 0, 1, d(0, "1-0", 1), d(0, "2-0", 1))
	if err := WriteEvents(&buf, b.evs); err != nil {
		t.Fatal(err)
	}
	line := strings.SplitAfter(buf.String(), "\n")[0]
	for _, s := range []string{`"kind":"delivered"`, `"consumer":"c1"`, `"id":"1-0"`, `"start":"2024-01-02T03:04:05Z"`, `"end":"2024-01-02T03:04:05.001Z"`} {
		if !strings.Contains(line, s) {
			t.Errorf("line %s lacks %s", line, s)
		}
	}

	// A last line cut short, by a process killed while writing, is dropped.
	cut := buf.String()[:buf.Len()-20]
	evs, err := ReadJSON(strings.NewReader(cut))
	if err != nil || len(evs) != 1 {
		t.Errorf("cut log: %d events, %v", len(evs), err)
	}
	// Garbage is an error.
	_, err = ReadJSON(strings.NewReader(line + "{\"kind\":\"nope\"}\n"))
	if err == nil || !strings.Contains(err.Error(), "event 2") {
		t.Errorf("bad kind: %v", err)
	}
	_, err = ReadJSON(strings.NewReader("not json\n"))
	if err == nil {
		t.Error("not JSON: no error")
	}
	if err := WriteEvents(&buf, []Event{{}}); err == nil {
		t.Error("event without kind written")
	}
}

func TestSetOutput(t *testing.T) {
	var buf bytes.Buffer
	r := NewRecorder()
	r.SetOutput(&buf)
	r.Sent("1-0", 0, "k")
	p := r.BeginAck("c", msgs(0, 1, "1-0"))
	// The ack in flight is in the output before it returns.
	evs, err := ReadJSON(bytes.NewReader(buf.Bytes()))
	if err != nil || len(evs) != 2 || evs[1].Kind != KindAckStarted {
		t.Fatalf("output before Done: %+v, %v", evs, err)
	}
	p.Done(AckOK)
	p.Done(AckError) // ignored
	r.SetOutput(nil)
	r.Sent("2-0", 0, "k")
	evs, err = ReadJSON(&buf)
	if err != nil || len(evs) != 3 || evs[2].Kind != KindAcked || evs[2].Outcome != AckOK || evs[2].Batch != evs[1].Batch {
		t.Fatalf("output: %+v, %v", evs, err)
	}
	if len(r.Events()) != 4 || r.Err() != nil {
		t.Errorf("%d events, err %v", len(r.Events()), r.Err())
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestSetOutputError(t *testing.T) {
	r := NewRecorder()
	r.SetOutput(failWriter{})
	r.Sent("1-0", 0, "k")
	if err := r.Err(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("Err() = %v", err)
	}
}

func TestRecorderConcurrent(t *testing.T) {
	r := NewRecorder()
	const workers, rounds = 8, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			consumer := fmt.Sprintf("c%d", w)
			for i := range rounds {
				ids := []string{fmt.Sprintf("%d-0", 2*i+1), fmt.Sprintf("%d-0", 2*i+2)}
				for _, id := range ids {
					r.Sent(id, w, keyOf(id))
				}
				batch := msgs(uint32(w), int64(w+1), ids...)
				s, e := timed(func() {})
				r.Delivered(consumer, batch, s, e)
				if i%2 == 0 {
					s, e = timed(func() {})
					r.Acked(consumer, batch, AckOK, s, e)
				} else {
					r.BeginAck(consumer, batch).Done(AckOK)
				}
				if i%10 == 0 {
					_ = r.Events()
					_ = r.Summary()
				}
			}
		})
	}
	wg.Wait()
	evs := r.Events()
	if want := workers * rounds * (2 + 2 + 2) * 1; len(evs) < want {
		t.Fatalf("got %d events, want at least %d", len(evs), want)
	}
	batches := make(map[int64]string)
	for _, ev := range evs {
		if ev.Kind == KindDelivered {
			if c, ok := batches[ev.Batch]; ok && c != ev.Consumer {
				t.Fatalf("batch %d used by %s and %s", ev.Batch, c, ev.Consumer)
			}
			batches[ev.Batch] = ev.Consumer
		}
	}
	if len(batches) != workers*rounds {
		t.Errorf("%d read batches, want %d", len(batches), workers*rounds)
	}
	if err := r.Check(Options{MaxProcessingTime: time.Hour, RequireAllAcked: true}); err != nil {
		t.Error(err)
	}
}

// bigLog is a clean log of about n events: a consumer per partition, a
// handover in the middle of each partition, reads of 10 messages acked at
// once, and every 7th message acked only after its redelivery.
func bigLog(n int) []Event {
	var b logb
	const parts = 4
	perPart := n / parts / 3
	for p := range parts {
		clock := 0
		var redo []dm
		for first := 0; first < perPart; first += 10 {
			epoch := int64(1)
			consumer := fmt.Sprintf("a%d", p)
			if first >= perPart/2 {
				epoch, consumer = 2, fmt.Sprintf("b%d", p)
				if len(redo) > 0 && first < perPart/2+10 {
					clock += 1000 // the lease of a runs out
				}
			}
			batch := slices.Clone(redo)
			redo = nil
			for i := first; i < min(first+10, perPart); i++ {
				id := fmt.Sprintf("%d-%d", 1700000000000+i/3, i%3)
				b.sent(p, id)
				batch = append(batch, d(p, id, 1))
			}
			b.read(consumer, epoch, clock, clock+1, batch...)
			var acked []string
			for _, m := range batch {
				if m.dc == 1 && hash(m.id)%7 == 0 {
					m.dc = 2
					redo = append(redo, m)
					continue
				}
				acked = append(acked, m.id)
			}
			b.ack(consumer, epoch, AckOK, clock+2, clock+3, p, acked...)
			clock += 4
		}
		if len(redo) > 0 {
			b.read(fmt.Sprintf("b%d", p), 2, clock, clock+1, redo...)
			var ids []string
			for _, m := range redo {
				ids = append(ids, m.id)
			}
			b.ack(fmt.Sprintf("b%d", p), 2, AckOK, clock+2, clock+3, p, ids...)
		}
	}
	return b.evs
}

func hash(s string) int {
	h := 0
	for _, c := range s {
		h = h*31 + int(c)
	}
	return max(h, -h)
}

func TestLargeLog(t *testing.T) {
	evs := bigLog(100_000)
	if len(evs) < 100_000 {
		t.Fatalf("only %d events", len(evs))
	}
	// The redeliveries come within 4ms: set maxProcessingTime below that.
	opts := Options{MaxProcessingTime: time.Millisecond, RequireAllAcked: true}
	// Every 7th message is due at the next read, where it comes first.
	if err := Check(evs, opts); err != nil {
		t.Fatalf("clean log: %v", err)
	}
	s := Summarize(evs)
	if s.Redelivered == 0 || s.Acked != s.Sent || s.Sent < 30_000 {
		t.Errorf("summary: %v", s)
	}
	t.Log(s)

	// One message never redelivered is found.
	var broken []Event
	var dropped string
	for _, ev := range evs {
		if dropped == "" && ev.Kind == KindDelivered && ev.DeliveryCount == 2 {
			dropped = ev.ID
		}
		if dropped != "" && ev.ID == dropped && ev.Partition == 0 && (ev.DeliveryCount == 2 || ev.Kind == KindAcked) {
			continue
		}
		broken = append(broken, ev)
	}
	err := Check(broken, opts)
	t.Log(err)
	if got := invariantsOf(err); !slices.Equal(got, []Invariant{Due, Loss}) {
		t.Errorf("violated %v, want due and loss:\n%v", got, err)
	}
}

func BenchmarkCheck(b *testing.B) {
	evs := bigLog(100_000)
	opts := Options{MaxProcessingTime: time.Millisecond, RequireAllAcked: true}
	for b.Loop() {
		if err := Check(evs, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// The events of Run (handler calls) and of the calls that make a consumer
// deliver its pending messages again at once (Nack, a failed read) are
// recorded, survive a JSON round trip, and justify what follows them.
func TestRecorderHandlerNackAndReadError(t *testing.T) {
	r := NewRecorder()
	for _, id := range []string{"1-0", "2-0"} {
		r.Sent(id, 0, keyOf(id))
	}
	batch := msgs(0, 1, "1-0", "2-0")
	s, e := timed(func() {})
	r.Delivered("c", batch, s, e)
	s, e = timed(func() {})
	r.Handled("c", batch[0], 1, errors.New("boom"), s, e)
	s, e = timed(func() {})
	r.Handled("c", batch[0], 2, nil, s, e)
	s, e = timed(func() {})
	r.Nacked("c", batch[1:], s, e)
	s, e = timed(func() {})
	r.ReadError("c", -1, errors.New("i/o timeout"), s, e)
	again := msgs(0, 1, "2-0")
	again[0].DeliveryCount = 2
	s, e = timed(func() {})
	r.Delivered("c", again, s, e) // at once, after the nack
	s, e = timed(func() {})
	r.Handled("c", again[0], 1, nil, s, e)
	r.BeginAck("c", append(batch[:1:1], again...)).Done(AckOK)

	evs := r.Events()
	var kinds []Kind
	for _, ev := range evs {
		kinds = append(kinds, ev.Kind)
	}
	want := []Kind{KindSent, KindSent, KindDelivered, KindDelivered, KindHandled, KindHandled, KindNacked, KindReadError,
		KindDelivered, KindHandled, KindAckStarted, KindAckStarted, KindAcked, KindAcked}
	if !slices.Equal(kinds, want) {
		t.Fatalf("kinds %v, want %v", kinds, want)
	}
	if h := evs[4]; h.Attempt != 1 || h.Outcome != AckError || h.Err != "boom" || h.ID != "1-0" || h.Epoch != 1 {
		t.Errorf("failed handler call: %+v", h)
	}
	if h := evs[5]; h.Attempt != 2 || h.Outcome != AckOK || h.Err != "" {
		t.Errorf("handler call: %+v", h)
	}
	if x := evs[7]; x.Partition != -1 || x.ID != "" || x.Err != "i/o timeout" || x.Batch == 0 {
		t.Errorf("read error: %+v", x)
	}
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"kind":"handled"`, `"kind":"nacked"`, `"kind":"read-error"`, `"attempt":2`, `"err":"boom"`} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("JSON lacks %s:\n%s", s, buf.String())
		}
	}
	got, err := ReadJSON(&buf)
	if err != nil || len(got) != len(evs) {
		t.Fatalf("read back %d events, %v", len(got), err)
	}
	opts := Options{MaxProcessingTime: time.Hour, RequireAllAcked: true}
	for name, log := range map[string][]Event{"recorded": evs, "read back": got} {
		if err := Check(log, opts); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Without the nack and the read error, the redelivery is a duplicate.
	bare := slices.DeleteFunc(slices.Clone(evs), func(ev Event) bool { return ev.Kind == KindNacked || ev.Kind == KindReadError })
	if got := invariantsOf(Check(bare, opts)); !slices.Equal(got, []Invariant{Duplicate}) {
		t.Errorf("without the nack and read error: violated %v, want duplicate", got)
	}
	sum := r.Summary()
	if sum.Nacked != 1 || sum.ReadErrors != 1 || sum.HandlerCalls != 3 || sum.HandlerFailures != 1 || sum.Acked != 2 {
		t.Errorf("summary: %+v", sum)
	}
	if str := sum.String(); !strings.Contains(str, "1 nacked; 1 read errors") || !strings.Contains(str, "3 handler calls, 1 failed") {
		t.Errorf("summary: %s", str)
	}
}

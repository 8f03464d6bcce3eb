package invariant

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Options configures Check.
type Options struct {
	// MaxProcessingTime is the consumers' maxProcessingTime: a message
	// delivered that long ago and not acked is due for redelivery (with
	// consumers of different values, the largest). Zero disables the Due
	// invariant.
	MaxProcessingTime time.Duration
	// Slack is an extra tolerance on every comparison of times, for logs
	// merged from several processes (wall clocks). Default 0.
	Slack time.Duration
	// AllowLoss reports the messages that may leave the pending list without
	// being acked by the application (trimmed by retention, dead-lettered):
	// they are exempt from the Loss and Due invariants. Nil: none.
	AllowLoss func(id string) bool
	// RequireAllAcked makes Loss also require an ack of every sent message
	// (AckOK, or an ack of unknown outcome not followed by a redelivery).
	RequireAllAcked bool
	// Order is the unit whose messages keep their order: OrderByPartition
	// (the default), or OrderByKey for consumers that process the keys of
	// a partition concurrently (Run with WithKeyConcurrency). It applies to
	// Order, Due and HandlerOrder.
	Order OrderMode
}

// OrderMode is the unit of order of Options.Order.
type OrderMode uint8

// The order modes.
const (
	// OrderByPartition: the messages of a partition keep stream order.
	OrderByPartition OrderMode = iota
	// OrderByKey: the messages of a partition with one key keep stream
	// order; those of different keys are independent.
	OrderByKey
)

// Invariant names one of the invariants Check proves.
type Invariant string

// The invariants; see the package documentation.
const (
	// Order: a Read returns each partition's messages in increasing ID
	// order, and first deliveries follow ID order.
	Order Invariant = "order"
	// Due: no message is delivered while an older message of its partition
	// is due for redelivery.
	Due Invariant = "due"
	// Loss: every sent message is delivered (and acked, with
	// RequireAllAcked), with the key it was sent with.
	Loss Invariant = "loss"
	// SingleOwner: the operations of an older epoch never run after those
	// of a newer one, and one epoch has one consumer.
	SingleOwner Invariant = "single-owner"
	// AckedRedelivered: a message acked successfully is not delivered again.
	AckedRedelivered Invariant = "acked-redelivered"
	// DeliveryCount: delivery counts are at least 1 and go up with every
	// delivery.
	DeliveryCount Invariant = "delivery-count"
	// Duplicate: a message is delivered again only under a newer lease
	// epoch than its previous delivery, or at least MaxProcessingTime after
	// it, or after a Nack, a read error or an ack of unknown outcome of its
	// partition by the consumer in between.
	Duplicate Invariant = "duplicate"
	// StaleDelivery: no Read under an older epoch returns a partition's
	// messages after a Read under a newer epoch returned some.
	StaleDelivery Invariant = "stale-delivery"
	// HandlerOrder: the handler calls of one owner (consumer and epoch) of
	// a partition (of a key, with OrderByKey) run one at a time and move on
	// from a message only once a call on it succeeded; the first handler
	// call of each message follows stream order.
	HandlerOrder Invariant = "handler-order"
	// Malformed: an event the checker cannot use (unknown kind, bad ID,
	// missing or reversed times).
	Malformed Invariant = "malformed"
)

var invariants = []Invariant{Order, Due, Loss, SingleOwner, StaleDelivery, Duplicate, HandlerOrder, AckedRedelivered, DeliveryCount, Malformed}

// Violation is one violation of an invariant found by Check. The error
// returned by Check joins them; find them with errors.As.
type Violation struct {
	// Invariant is the invariant violated.
	Invariant Invariant
	// Partition is the partition concerned.
	Partition int
	// Key is the partition key concerned, for the invariants checked per
	// key (Options.Order OrderByKey).
	Key string
	// IDs are the messages concerned, the main one first.
	IDs    []string
	Detail string
}

// Error describes the violation.
func (v *Violation) Error() string {
	if v.Key != "" {
		return fmt.Sprintf("%s: partition %d key %q: %s", v.Invariant, v.Partition, v.Key, v.Detail)
	}
	return fmt.Sprintf("%s: partition %d: %s", v.Invariant, v.Partition, v.Detail)
}

// maxReported bounds the violations listed in Check's error.
const maxReported = 20

// redisClockMargin covers Redis measuring idle times in whole milliseconds.
const redisClockMargin = 2 * time.Millisecond

// never is a time after every recorded one (an ack whose call never ended).
const never = int64(1) << 62

// Check proves the invariants over events, a log of one consumer group, and
// returns nil or an error joining the violations found (at most 20 of them,
// after a line counting all of them per invariant). A violation is reported
// only when it happened whatever the instants at which the recorded calls
// ran in Redis, within their [Start, End] intervals widened by opts.Slack.
func Check(events []Event, opts Options) error {
	c := newChecker(events, opts)
	c.run()
	return c.err()
}

// Violations is Check returning every violation found (none: nil), neither
// joined nor capped, for tools that count them.
func Violations(events []Event, opts Options) []*Violation {
	c := newChecker(events, opts)
	c.run()
	return c.viol
}

// run checks every invariant, collecting the violations in c.viol.
func (c *checker) run() {
	for _, pt := range c.parts {
		for _, u := range c.units(pt) {
			c.checkBatchOrder(u)
			c.checkFirstOrder(u, false)
			c.checkDue(u)
			c.checkFirstOrder(u, true)
			c.checkHandlerCalls(u)
		}
		c.checkOwner(pt)
		c.checkStale(pt)
		c.checkDuplicates(pt)
		c.checkMessages(pt)
	}
}

// streamID is a parsed stream entry ID.
type streamID struct{ ms, seq uint64 }

func parseID(s string) (streamID, bool) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return streamID{}, false
	}
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	if err1 != nil || err2 != nil {
		return streamID{}, false
	}
	return streamID{ms, seq}, true
}

func (a streamID) cmp(b streamID) int {
	if c := cmp.Compare(a.ms, b.ms); c != 0 {
		return c
	}
	return cmp.Compare(a.seq, b.seq)
}

// rec is an event as the checker uses it.
type rec struct {
	Event
	sid  streamID
	s, e int64 // Start and End in ns from the reference time
	open bool  // an ack that never finished: End unknown
}

type msg struct {
	id      string
	sid     streamID
	key     string // of its first send, else of its first delivery
	sent    []*rec
	dels    []*rec // sorted by (s, e)
	acks    []*rec // every outcome, unfinished acks as AckError
	handled []*rec // handler calls, sorted by (s, e)
}

// call is the deliveries of one partition by one Read call.
type call struct {
	consumer string
	batch    int64
	s, e     int64
	dels     []*rec // sorted by Index
}

// part is a partition, or with OrderByKey one key of a partition (a unit
// of order, see units).
type part struct {
	p     int
	key   string // the unit's key, "" for a whole partition
	msgs  map[streamID]*msg
	order []*msg // by ID
	calls []*call
	// faults are the events after which the partition's consumer may
	// deliver its pending messages again at once: nacks, read errors and
	// acks of unknown outcome, sorted by start.
	faults []*rec
}

type checker struct {
	opts      Options
	slack     int64
	t0        int64
	parts     []*part // by partition
	global    []*rec  // read errors of every partition of their consumer
	viol      []*Violation
	malformed int
}

func hasMonotonic(t time.Time) bool { return t != t.Round(0) }

func newChecker(events []Event, opts Options) *checker {
	c := &checker{opts: opts, slack: int64(min(max(opts.Slack, 0), time.Duration(1)<<60))}
	// One time line for all events: offsets from a reference, on the
	// monotonic clock between times that both carry a reading, else on the
	// wall clock.
	var ref time.Time
	for i := range events {
		if t := events[i].Start; !t.IsZero() {
			if ref.IsZero() {
				ref = t
			}
			if hasMonotonic(t) {
				ref = t
				break
			}
		}
	}
	at := func(t time.Time) int64 { return int64(t.Sub(ref)) }

	type callKey struct {
		consumer string
		batch    int64
		index    int
	}
	finished := make(map[callKey]bool)
	for i := range events {
		if ev := &events[i]; ev.Kind == KindAcked {
			finished[callKey{ev.Consumer, ev.Batch, ev.Index}] = true
		}
	}

	recs := make([]rec, 0, len(events))
	for i := range events {
		r := rec{Event: events[i]}
		if !c.prepare(i, &r, at) {
			continue
		}
		if r.Kind == KindAckStarted {
			if finished[callKey{r.Consumer, r.Batch, r.Index}] {
				continue
			}
			r.Kind, r.Outcome, r.open, r.e = KindAcked, AckError, true, never
		}
		recs = append(recs, r)
	}

	byPart := make(map[int]*part)
	type pcallKey struct {
		p        int
		consumer string
		batch    int64
	}
	calls := make(map[pcallKey]*call)
	first := true
	for i := range recs {
		r := &recs[i]
		if r.Kind != KindSent {
			if first || r.s < c.t0 {
				c.t0, first = r.s, false
			}
		}
		if r.Kind == KindReadError && r.Partition < 0 {
			c.global = append(c.global, r)
			continue
		}
		pt := byPart[r.Partition]
		if pt == nil {
			pt = &part{p: r.Partition, msgs: make(map[streamID]*msg)}
			byPart[r.Partition] = pt
		}
		if r.Kind == KindReadError {
			pt.faults = append(pt.faults, r)
			continue
		}
		m := pt.msgs[r.sid]
		if m == nil {
			m = &msg{id: r.ID, sid: r.sid}
			pt.msgs[r.sid] = m
		}
		switch r.Kind {
		case KindSent:
			m.sent = append(m.sent, r)
		case KindDelivered:
			m.dels = append(m.dels, r)
			k := pcallKey{r.Partition, r.Consumer, r.Batch}
			cl := calls[k]
			if cl == nil {
				cl = &call{consumer: r.Consumer, batch: r.Batch, s: r.s, e: r.e}
				calls[k] = cl
				pt.calls = append(pt.calls, cl)
			}
			cl.s, cl.e = min(cl.s, r.s), max(cl.e, r.e)
			cl.dels = append(cl.dels, r)
		case KindAcked:
			m.acks = append(m.acks, r)
			if r.Outcome == AckError {
				pt.faults = append(pt.faults, r)
			}
		case KindNacked:
			pt.faults = append(pt.faults, r)
		case KindHandled:
			m.handled = append(m.handled, r)
		}
	}
	for _, pt := range byPart {
		for _, m := range pt.msgs {
			pt.order = append(pt.order, m)
			slices.SortStableFunc(m.dels, byTime)
			slices.SortStableFunc(m.handled, byTime)
			switch {
			case len(m.sent) > 0:
				m.key = m.sent[0].Key
			case len(m.dels) > 0:
				m.key = m.dels[0].Key
			case len(m.handled) > 0:
				m.key = m.handled[0].Key
			}
		}
		slices.SortFunc(pt.order, func(a, b *msg) int { return a.sid.cmp(b.sid) })
		slices.SortStableFunc(pt.faults, byTime)
		for _, cl := range pt.calls {
			slices.SortStableFunc(cl.dels, func(a, b *rec) int { return cmp.Compare(a.Index, b.Index) })
		}
		c.parts = append(c.parts, pt)
	}
	slices.SortFunc(c.parts, func(a, b *part) int { return cmp.Compare(a.p, b.p) })
	return c
}

// prepare validates event i and fills in r's ID and times; it reports the
// event and returns false when it cannot be used.
func (c *checker) prepare(i int, r *rec, at func(time.Time) int64) bool {
	bad := func(format string, args ...any) bool {
		c.malformed++
		c.add(Malformed, r.Partition, []string{r.ID}, fmt.Sprintf("event %d (%s of %q): ", i, r.Kind, r.ID)+fmt.Sprintf(format, args...))
		return false
	}
	if r.Kind < KindSent || r.Kind > KindHandled {
		return bad("unknown kind")
	}
	if r.Partition < 0 && (r.Kind != KindReadError || r.Partition != -1) {
		return bad("negative partition")
	}
	if r.Kind != KindReadError {
		sid, ok := parseID(r.ID)
		if !ok {
			return bad("bad stream entry ID")
		}
		r.sid = sid
	}
	if r.Kind == KindSent {
		if !r.Start.IsZero() {
			r.s = at(r.Start)
			r.e = r.s
		}
		return true
	}
	if r.Start.IsZero() || (r.Kind != KindAckStarted && r.End.IsZero()) {
		return bad("no start or end time")
	}
	r.s = at(r.Start)
	r.e = r.s
	if r.Kind != KindAckStarted {
		r.e = at(r.End)
	}
	if r.e < r.s {
		if r.s-r.e > c.slack {
			return bad("ends %v before it starts", time.Duration(r.s-r.e))
		}
		r.e = r.s
	}
	if r.Kind == KindAcked && (r.Outcome < AckOK || r.Outcome > AckError) {
		return bad("unknown ack outcome %d", r.Outcome)
	}
	if r.Kind == KindHandled && r.Outcome != AckOK && r.Outcome != AckError {
		return bad("handler call without outcome ok or error (%d)", r.Outcome)
	}
	return true
}

func (c *checker) add(inv Invariant, p int, ids []string, detail string) {
	c.viol = append(c.viol, &Violation{Invariant: inv, Partition: p, IDs: ids, Detail: detail})
}

// addIn adds a violation found in the unit of order pt.
func (c *checker) addIn(inv Invariant, pt *part, ids []string, detail string) {
	c.viol = append(c.viol, &Violation{Invariant: inv, Partition: pt.p, Key: pt.key, IDs: ids, Detail: detail})
}

func (c *checker) err() error {
	if len(c.viol) == 0 {
		return nil
	}
	groups := make(map[Invariant][]*Violation)
	for _, v := range c.viol {
		groups[v.Invariant] = append(groups[v.Invariant], v)
	}
	var counts []string
	for _, inv := range invariants {
		if n := len(groups[inv]); n > 0 {
			counts = append(counts, fmt.Sprintf("%s %d", inv, n))
		}
	}
	out := []error{fmt.Errorf("invariant: %d violations (%s)", len(c.viol), strings.Join(counts, ", "))}
	// Round robin over the invariants, so that one of them cannot hide the
	// others.
	shown := 0
	for next := 0; shown < min(maxReported, len(c.viol)); next++ {
		for _, inv := range invariants {
			if g := groups[inv]; next < len(g) && shown < maxReported {
				out = append(out, g[next])
				shown++
			}
		}
	}
	if n := len(c.viol) - shown; n > 0 {
		out = append(out, fmt.Errorf("invariant: %d more violations not shown", n))
	}
	return errors.Join(out...)
}

// at formats a time of the log as an offset from its first event.
func (c *checker) at(t int64) string {
	if t >= never {
		return "?"
	}
	return "+" + time.Duration(t-c.t0).Round(time.Microsecond).String()
}

// op describes the operation of r.
func (c *checker) op(r *rec) string {
	var what string
	switch r.Kind {
	case KindDelivered:
		what = fmt.Sprintf("read (delivery count %d)", r.DeliveryCount)
	case KindAcked:
		what = "ack (" + r.Outcome.String() + ")"
		if r.open {
			what = "ack (never returned)"
		}
	case KindHandled:
		what = fmt.Sprintf("handler call (attempt %d, ok)", r.Attempt)
		if r.Outcome != AckOK {
			what = fmt.Sprintf("handler call (attempt %d, failed)", r.Attempt)
		}
	case KindNacked:
		what = "nack"
	case KindReadError:
		what = "read error"
		if r.Partition < 0 {
			what = "read error (every partition)"
		}
	default:
		what = r.Kind.String()
	}
	return fmt.Sprintf("%s by %q epoch %d at [%s, %s]", what, r.Consumer, r.Epoch, c.at(r.s), c.at(r.e))
}

// checkBatchOrder: one Read returns a partition's messages in increasing ID
// order, each once.
func (c *checker) checkBatchOrder(pt *part) {
	for _, cl := range pt.calls {
		for k := 1; k < len(cl.dels); k++ {
			a, b := cl.dels[k-1], cl.dels[k]
			if o := a.sid.cmp(b.sid); o == 0 {
				c.addIn(Order, pt, []string{a.ID}, fmt.Sprintf("one %s returned %s twice (indexes %d and %d)", c.op(a), a.ID, a.Index, b.Index))
				break
			} else if o > 0 {
				c.addIn(Order, pt, []string{b.ID, a.ID}, fmt.Sprintf("one %s returned %s (index %d) after newer %s (index %d)", c.op(a), b.ID, b.Index, a.ID, a.Index))
				break
			}
		}
	}
}

// checkFirstOrder: no message is first delivered (with handled, first
// handled: its first handler call) definitely before an older message of its
// unit is.
func (c *checker) checkFirstOrder(pt *part, handled bool) {
	type late struct {
		a      *msg
		b      *rec // the first delivery of a newer message, definitely earlier
		others int
	}
	inv, verb := Order, "delivered"
	recs := func(m *msg) []*rec { return m.dels }
	if handled {
		inv, verb = HandlerOrder, "handled"
		recs = func(m *msg) []*rec { return m.handled }
	}
	var lates []*late
	byMsg := make(map[*msg]*late)
	var latest *rec // the latest first delivery of the older messages so far
	var latestMsg *msg
	for _, m := range pt.order {
		rs := recs(m)
		if len(rs) == 0 {
			continue
		}
		firstStart := rs[0]
		firstEnd := rs[0]
		for _, d := range rs {
			if d.e < firstEnd.e {
				firstEnd = d
			}
		}
		if latest != nil && latest.s > firstEnd.e+c.slack {
			if l := byMsg[latestMsg]; l != nil {
				l.others++
			} else {
				l = &late{a: latestMsg, b: firstEnd}
				byMsg[latestMsg] = l
				lates = append(lates, l)
			}
		}
		if latest == nil || firstStart.s > latest.s {
			latest, latestMsg = firstStart, m
		}
	}
	for _, l := range lates {
		more := ""
		if l.others > 0 {
			more = fmt.Sprintf(" (and %d more newer messages)", l.others)
		}
		c.addIn(inv, pt, []string{l.a.id, l.b.ID}, fmt.Sprintf("%s was first %s in a %s, after newer %s was %s in a %s%s",
			l.a.id, verb, c.op(recs(l.a)[0]), l.b.ID, verb, c.op(l.b), more))
	}
}

// checkDue: when a Read delivers a message, no older message of its
// partition is definitely due for redelivery: delivered at least
// MaxProcessingTime before the read by every delivery that may have run
// before it, not acked by any ack that may have run before it, and with no
// unlogged delivery that may have run in between.
//
// It sweeps the reads in order of End, keeping in a segment tree over the
// partition's messages (by ID) the time from which each one is due, given
// the deliveries and acks that may have run before the read.
func (c *checker) checkDue(pt *part) {
	if c.opts.MaxProcessingTime <= 0 || len(pt.calls) == 0 {
		return
	}
	wait := int64(c.opts.MaxProcessingTime+redisClockMargin) + c.slack
	type state struct {
		entered  int    // deliveries that may have run before the read
		last     *rec   // of those, the one ending last
		maxCount uint32 // of those, the highest delivery count
		closed   bool   // acked (maybe) or exempt
	}
	type update struct {
		t    int64 // applies to the reads ending at t or later
		rank int
		ack  bool
	}
	n := len(pt.order)
	st := make([]state, n)
	rankOf := make(map[*msg]int, n)
	var ups []update
	for i, m := range pt.order {
		rankOf[m] = i
		if c.opts.AllowLoss != nil && c.opts.AllowLoss(m.id) {
			st[i].closed = true
			continue
		}
		for _, d := range m.dels {
			ups = append(ups, update{t: d.s - c.slack, rank: i})
		}
		for _, k := range m.acks {
			if k.Outcome == AckOK || k.Outcome == AckError {
				ups = append(ups, update{t: k.s - c.slack, rank: i, ack: true})
			}
		}
	}
	slices.SortStableFunc(ups, func(a, b update) int { return cmp.Compare(a.t, b.t) })
	calls := slices.Clone(pt.calls)
	slices.SortStableFunc(calls, func(a, b *call) int { return cmp.Compare(a.e, b.e) })

	tree := newMinTree(n)
	reported := make(map[int]bool)
	j := 0
	for _, cl := range calls {
		for ; j < len(ups) && ups[j].t <= cl.e; j++ {
			u := ups[j]
			s := &st[u.rank]
			if s.closed {
				continue
			}
			if u.ack {
				s.closed = true
				tree.set(u.rank, never)
				continue
			}
			m := pt.order[u.rank]
			d := m.dels[s.entered]
			s.entered++
			if s.last == nil || d.e > s.last.e {
				s.last = d
			}
			s.maxCount = max(s.maxCount, d.DeliveryCount)
			due := s.last.e + wait
			if unloggedDelivery(m, s.maxCount) {
				due = never
			}
			tree.set(u.rank, due)
		}
		top := 0
		for _, d := range cl.dels {
			top = max(top, rankOf[pt.msgs[d.sid]])
		}
		due, rank := tree.min(top)
		if rank < 0 || due > cl.s || reported[rank] {
			continue
		}
		reported[rank] = true
		a := pt.order[rank]
		var b *rec
		for _, d := range cl.dels {
			if d.sid.cmp(a.sid) > 0 {
				b = d
				break
			}
		}
		last := st[rank].last
		c.addIn(Due, pt, []string{a.id, b.ID}, fmt.Sprintf("%s was due for redelivery (last delivered in a %s, not acked since) when a %s returned newer %s, %v after; max processing time %v",
			a.id, c.op(last), c.op(b), b.ID, time.Duration(cl.s-last.e).Round(time.Microsecond), c.opts.MaxProcessingTime))
	}
}

// unloggedDelivery reports whether the delivery counts of m show a delivery
// missing from the log after the logged ones of highest count maxCount.
func unloggedDelivery(m *msg, maxCount uint32) bool {
	higher, next := false, false
	for _, d := range m.dels {
		higher = higher || d.DeliveryCount > maxCount
		next = next || d.DeliveryCount == maxCount+1
	}
	return higher && !next
}

// minTree is a segment tree of times, giving the minimum of a prefix and
// where it is.
type minTree struct {
	size int
	v    []int64
	i    []int32
}

func newMinTree(n int) *minTree {
	size := 1
	for size < n {
		size <<= 1
	}
	t := &minTree{size: size, v: make([]int64, 2*size), i: make([]int32, 2*size)}
	for k := range t.v {
		t.v[k] = never
	}
	for k := 0; k < size; k++ {
		t.i[size+k] = int32(k)
	}
	for k := size - 1; k >= 1; k-- {
		t.i[k] = t.i[2*k]
	}
	return t
}

func (t *minTree) set(k int, v int64) {
	p := t.size + k
	t.v[p] = v
	for p >>= 1; p >= 1; p >>= 1 {
		l, r := 2*p, 2*p+1
		if t.v[r] < t.v[l] {
			t.v[p], t.i[p] = t.v[r], t.i[r]
		} else {
			t.v[p], t.i[p] = t.v[l], t.i[l]
		}
	}
}

// min returns the minimum over positions [0, n) and its position, or
// (never, -1) when it is never.
func (t *minTree) min(n int) (int64, int) {
	best, at := never, -1
	for l, r := t.size, t.size+n; l < r; l, r = l>>1, r>>1 {
		if l&1 == 1 {
			if t.v[l] < best {
				best, at = t.v[l], int(t.i[l])
			}
			l++
		}
		if r&1 == 1 {
			r--
			if t.v[r] < best {
				best, at = t.v[r], int(t.i[r])
			}
		}
	}
	return best, at
}

// checkOwner: the successful operations (deliveries and AckOK acks) of an
// older epoch may all have run before those of a newer epoch, and those of
// one epoch come from one consumer.
func (c *checker) checkOwner(pt *part) {
	type epoch struct {
		epoch            int64
		consumer         *rec
		minEnd, maxStart *rec
		others           map[string]bool
	}
	byEpoch := make(map[int64]*epoch)
	var epochs []*epoch
	visit := func(r *rec) {
		ep := byEpoch[r.Epoch]
		if ep == nil {
			ep = &epoch{epoch: r.Epoch, consumer: r, minEnd: r, maxStart: r}
			byEpoch[r.Epoch] = ep
			epochs = append(epochs, ep)
		}
		if r.e < ep.minEnd.e {
			ep.minEnd = r
		}
		if r.s > ep.maxStart.s {
			ep.maxStart = r
		}
		if r.Consumer != ep.consumer.Consumer && !ep.others[r.Consumer] {
			if ep.others == nil {
				ep.others = make(map[string]bool)
			}
			ep.others[r.Consumer] = true
			c.add(SingleOwner, pt.p, []string{ep.consumer.ID, r.ID}, fmt.Sprintf("epoch %d used by two consumers: %s of %s and %s of %s",
				r.Epoch, c.op(ep.consumer), ep.consumer.ID, c.op(r), r.ID))
		}
	}
	for _, m := range pt.order {
		for _, d := range m.dels {
			visit(d)
		}
		for _, k := range m.acks {
			if k.Outcome == AckOK && !k.open {
				visit(k)
			}
		}
	}
	slices.SortFunc(epochs, func(a, b *epoch) int { return cmp.Compare(a.epoch, b.epoch) })
	var found []*Violation
	var newer *rec // the operation ending first among the newer epochs
	for i := len(epochs) - 1; i >= 0; i-- {
		ep := epochs[i]
		if newer != nil && ep.maxStart.s > newer.e+c.slack {
			x := ep.maxStart
			found = append(found, &Violation{Invariant: SingleOwner, Partition: pt.p, IDs: []string{x.ID, newer.ID},
				Detail: fmt.Sprintf("a %s of %s started after a %s of %s under a newer epoch had returned", c.op(x), x.ID, c.op(newer), newer.ID)})
		}
		if newer == nil || ep.minEnd.e < newer.e {
			newer = ep.minEnd
		}
	}
	slices.Reverse(found)
	c.viol = append(c.viol, found...)
}

// checkMessages checks each message: Loss, AckedRedelivered and
// DeliveryCount.
func (c *checker) checkMessages(pt *part) {
	for _, m := range pt.order {
		exempt := c.opts.AllowLoss != nil && c.opts.AllowLoss(m.id)
		c.checkLoss(pt, m, exempt)
		c.checkKeys(pt, m)
		c.checkAckedRedelivered(pt, m)
		c.checkCounts(pt, m)
	}
}

func (c *checker) checkLoss(pt *part, m *msg, exempt bool) {
	if len(m.sent) == 0 || exempt {
		return
	}
	if len(m.dels) == 0 {
		c.add(Loss, pt.p, []string{m.id}, fmt.Sprintf("%s (key %q) was sent but never delivered", m.id, m.sent[0].Key))
		return
	}
	if !c.opts.RequireAllAcked {
		return
	}
	lastStart := m.dels[len(m.dels)-1].s
	for _, k := range m.acks {
		// An ack of unknown outcome counts unless a later delivery shows
		// that it did not run.
		if (k.Outcome == AckOK && !k.open) || (k.Outcome == AckError && k.e+c.slack >= lastStart) {
			return
		}
	}
	outcomes := "no ack"
	if len(m.acks) > 0 {
		var names []string
		for _, k := range m.acks {
			names = append(names, k.Outcome.String())
		}
		outcomes = "ack outcomes: " + strings.Join(names, ", ")
	}
	last := m.dels[len(m.dels)-1]
	c.add(Loss, pt.p, []string{m.id}, fmt.Sprintf("%s was delivered %d times (last in a %s) but never acked (%s)",
		m.id, len(m.dels), c.op(last), outcomes))
}

func (c *checker) checkKeys(pt *part, m *msg) {
	var ref *rec
	if len(m.sent) > 0 {
		ref = m.sent[0]
	} else if len(m.dels) > 0 {
		ref = m.dels[0]
	} else {
		return
	}
	for _, r := range append(slices.Clip(m.sent), m.dels...) {
		if r.Key != ref.Key {
			c.add(Loss, pt.p, []string{m.id}, fmt.Sprintf("%s has key %q in a %s but key %q in a %s", m.id, ref.Key, ref.Kind, r.Key, c.op(r)))
			return
		}
	}
}

func (c *checker) checkAckedRedelivered(pt *part, m *msg) {
	var acked *rec
	for _, k := range m.acks {
		if k.Outcome == AckOK && !k.open && (acked == nil || k.e < acked.e) {
			acked = k
		}
	}
	if acked == nil {
		return
	}
	for _, d := range m.dels {
		if d.s > acked.e+c.slack {
			c.add(AckedRedelivered, pt.p, []string{m.id}, fmt.Sprintf("%s was delivered again in a %s after an %s", m.id, c.op(d), c.op(acked)))
			return
		}
	}
}

func (c *checker) checkCounts(pt *part, m *msg) {
	for _, d := range m.dels {
		if d.DeliveryCount < 1 {
			c.add(DeliveryCount, pt.p, []string{m.id}, fmt.Sprintf("%s has delivery count 0 in a %s", m.id, c.op(d)))
			return
		}
	}
	if len(m.dels) < 2 {
		return
	}
	byEnd := slices.Clone(m.dels)
	slices.SortStableFunc(byEnd, func(a, b *rec) int { return cmp.Compare(a.e, b.e) })
	var top *rec // highest count among the deliveries definitely before d
	j := 0
	for _, d := range m.dels {
		for ; j < len(byEnd) && byEnd[j].e+c.slack < d.s; j++ {
			if top == nil || byEnd[j].DeliveryCount > top.DeliveryCount {
				top = byEnd[j]
			}
		}
		switch {
		case top == nil || d.DeliveryCount > top.DeliveryCount:
		case d.DeliveryCount < top.DeliveryCount:
			c.add(DeliveryCount, pt.p, []string{m.id}, fmt.Sprintf("%s delivery count went down from %d in a %s to %d in a %s",
				m.id, top.DeliveryCount, c.op(top), d.DeliveryCount, c.op(d)))
			return
		default:
			c.add(DeliveryCount, pt.p, []string{m.id}, fmt.Sprintf("%s was delivered again with the same delivery count %d in a %s, after a %s",
				m.id, d.DeliveryCount, c.op(d), c.op(top)))
			return
		}
	}
}

// byTime orders events by start, then end.
func byTime(a, b *rec) int { return cmp.Or(cmp.Compare(a.s, b.s), cmp.Compare(a.e, b.e)) }

// units returns the units of order of partition pt: pt itself, or with
// OrderByKey one unit per key, holding the key's messages and, of every
// Read, the deliveries of the key.
func (c *checker) units(pt *part) []*part {
	if c.opts.Order != OrderByKey {
		return []*part{pt}
	}
	byKey := make(map[string]*part)
	var out []*part
	unit := func(key string) *part {
		u := byKey[key]
		if u == nil {
			u = &part{p: pt.p, key: key, msgs: make(map[streamID]*msg)}
			byKey[key] = u
			out = append(out, u)
		}
		return u
	}
	for _, m := range pt.order {
		u := unit(m.key)
		u.msgs[m.sid] = m
		u.order = append(u.order, m)
	}
	for _, cl := range pt.calls {
		sub := make(map[string]*call)
		for _, d := range cl.dels {
			key := pt.msgs[d.sid].key
			k := sub[key]
			if k == nil {
				k = &call{consumer: cl.consumer, batch: cl.batch, s: cl.s, e: cl.e}
				sub[key] = k
				u := unit(key)
				u.calls = append(u.calls, k)
			}
			k.dels = append(k.dels, d)
		}
	}
	return out
}

// checkHandlerCalls: the handler calls of one owner (consumer and epoch) of
// the unit run one at a time, and the owner moves on from a message only
// after a call on it succeeded (a failing message holds back its unit).
// Owners are separate: a consumer that lost a partition may still be
// running a handler of it when the next owner starts.
func (c *checker) checkHandlerCalls(pt *part) {
	type owner struct {
		consumer string
		epoch    int64
	}
	byOwner := make(map[owner][]*rec)
	var owners []owner
	for _, m := range pt.order {
		for _, h := range m.handled {
			o := owner{h.Consumer, h.Epoch}
			if _, ok := byOwner[o]; !ok {
				owners = append(owners, o)
			}
			byOwner[o] = append(byOwner[o], h)
		}
	}
	for _, o := range owners {
		hs := byOwner[o]
		slices.SortStableFunc(hs, byTime)
		for k := 1; k < len(hs); k++ {
			a, b := hs[k-1], hs[k]
			if b.s+c.slack < a.e {
				c.addIn(HandlerOrder, pt, []string{b.ID, a.ID}, fmt.Sprintf("a %s of %s started while a %s of %s of the same owner had not returned",
					c.op(b), b.ID, c.op(a), a.ID))
				break
			}
			if a.sid != b.sid && a.Outcome != AckOK {
				c.addIn(HandlerOrder, pt, []string{a.ID, b.ID}, fmt.Sprintf("%s was handled in a %s after a %s of %s had failed, with no successful call on %s in between",
					b.ID, c.op(b), c.op(a), a.ID, a.ID))
				break
			}
		}
	}
}

// checkStale: no Read under an older epoch of the partition returns (ends)
// after a Read under a newer epoch returned messages of it: a consumer that
// lost the lease (paused, or too slow) hands nothing to its application
// once the next owner has delivered. The end of a Read is taken as the
// instant its messages reached the application: it must be recorded right
// after the call returns.
func (c *checker) checkStale(pt *part) {
	type epoch struct {
		epoch          int64
		minEnd, maxEnd *rec
	}
	byEpoch := make(map[int64]*epoch)
	var epochs []*epoch
	for _, m := range pt.order {
		for _, d := range m.dels {
			ep := byEpoch[d.Epoch]
			if ep == nil {
				ep = &epoch{epoch: d.Epoch, minEnd: d, maxEnd: d}
				byEpoch[d.Epoch] = ep
				epochs = append(epochs, ep)
			}
			if d.e < ep.minEnd.e {
				ep.minEnd = d
			}
			if d.e > ep.maxEnd.e {
				ep.maxEnd = d
			}
		}
	}
	slices.SortFunc(epochs, func(a, b *epoch) int { return cmp.Compare(a.epoch, b.epoch) })
	var found []*Violation
	var newer *rec // the delivery ending first among the newer epochs
	for i := len(epochs) - 1; i >= 0; i-- {
		ep := epochs[i]
		if newer != nil && ep.maxEnd.e > newer.e+c.slack {
			x := ep.maxEnd
			found = append(found, &Violation{Invariant: StaleDelivery, Partition: pt.p, IDs: []string{x.ID, newer.ID},
				Detail: fmt.Sprintf("a %s of %s returned %v after a %s of %s under newer epoch %d had returned",
					c.op(x), x.ID, time.Duration(x.e-newer.e).Round(time.Microsecond), c.op(newer), newer.ID, newer.Epoch)})
		}
		if newer == nil || ep.minEnd.e < newer.e {
			newer = ep.minEnd
		}
	}
	slices.Reverse(found)
	c.viol = append(c.viol, found...)
}

// checkDuplicates: every delivery of a message after its first is justified
// with respect to its previous delivery (the logged one of the delivery
// count just below; when that one is missing from the log, nothing can be
// said): it is under a newer epoch (the partition changed hands), or at
// least MaxProcessingTime after it (less the Redis clock margin and the
// slack: the message came due), or after a nack, a read error or an ack of
// unknown outcome of the partition by the consumer (the consumer claimed
// its pending list again). Without MaxProcessingTime it checks nothing.
func (c *checker) checkDuplicates(pt *part) {
	if c.opts.MaxProcessingTime <= 0 {
		return
	}
	gap := int64(c.opts.MaxProcessingTime-redisClockMargin) - c.slack
	for _, m := range pt.order {
		if len(m.dels) < 2 {
			continue
		}
		for _, d := range m.dels {
			if d.DeliveryCount < 2 {
				continue
			}
			var prev []*rec
			for _, p := range m.dels {
				if p != d && p.DeliveryCount == d.DeliveryCount-1 && p.s < d.e+c.slack {
					prev = append(prev, p)
				}
			}
			if len(prev) == 0 {
				continue
			}
			if slices.ContainsFunc(prev, func(p *rec) bool { return c.justified(pt, p, d, gap) }) {
				continue
			}
			p := prev[len(prev)-1]
			c.add(Duplicate, pt.p, []string{m.id}, fmt.Sprintf("%s was delivered again in a %s, %v after its previous delivery in a %s: "+
				"not under a newer epoch, sooner than the max processing time %v, and with no nack, read error or ack of unknown outcome of partition %d by %q in between",
				m.id, c.op(d), time.Duration(d.s-p.e).Round(time.Microsecond), c.op(p), c.opts.MaxProcessingTime, pt.p, d.Consumer))
			break
		}
	}
}

// justified reports whether delivery d of a message may be justified with
// respect to p, its previous delivery.
func (c *checker) justified(pt *part, p, d *rec, gap int64) bool {
	if d.Epoch > p.Epoch || d.e-p.s >= gap {
		return true
	}
	between := func(f *rec) bool { return f.Consumer == d.Consumer && f.e+c.slack >= p.s && f.s <= d.e+c.slack }
	return slices.ContainsFunc(pt.faults, between) || slices.ContainsFunc(c.global, between)
}

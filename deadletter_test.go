package segmenter_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"maps"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
	"github.com/segmenter/segmenter/internal/keyspace"
	"github.com/segmenter/segmenter/internal/redistest"
	"github.com/segmenter/segmenter/rebalance"
)

// deadLetterHook records the dead-letter events of a consumer.
type deadLetterHook struct {
	mu     sync.Mutex
	events []segmenter.DeadLetterEvent
}

func (h *deadLetterHook) OnDeadLetter(e segmenter.DeadLetterEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, e)
}

func (h *deadLetterHook) all() []segmenter.DeadLetterEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.events)
}

// pendingIDs returns the IDs pending in group on a partition stream.
func pendingIDs(t *testing.T, rdb redis.Cmdable, key, group string) []string {
	t.Helper()
	p, err := rdb.XPendingExt(context.Background(), &redis.XPendingExtArgs{Stream: key, Group: group, Start: "-", End: "+", Count: 1000}).Result()
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(p))
	for i, e := range p {
		ids[i] = e.ID
	}
	return ids
}

// sendTo sends msgs once and records them in every recorder.
func sendTo(t *testing.T, st *segmenter.Stream, msgs []*contracts.PMessage, recs ...*invariant.Recorder) {
	t.Helper()
	ids := send(t, st, nil, msgs...)
	for _, rec := range recs {
		for i, m := range msgs {
			rec.Sent(ids[i], st.PartitionOf(m.PartitionKey), m.PartitionKey)
		}
	}
}

// allowLoss exempts msgs (dead-lettered) from the Loss invariant.
func allowLoss(msgs ...*contracts.CMessage) func(string) bool {
	ids := make(map[string]bool)
	for _, m := range msgs {
		ids[m.Id] = true
	}
	return func(id string) bool { return ids[id] }
}

// waitServerClock waits until the Redis server clock is past its current
// millisecond, so that the next dead letter gets a later time.
func waitServerClock(t *testing.T, rdb redis.Cmdable) {
	t.Helper()
	now, err := rdb.Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 5*time.Second, func() bool {
		t2, err := rdb.Time(context.Background()).Result()
		return err == nil && t2.UnixMilli() > now.UnixMilli()
	}, "the server clock does not move")
}

func TestDeadLetterMovesAndAcks(t *testing.T) { onBackends(t, testDeadLetterMovesAndAcks) }

func testDeadLetterMovesAndAcks(t *testing.T, bk backend) {
	ctx := context.Background()
	rdb := bk.client(t)
	ns := redistest.Namespace(t)
	keys := keyspace.New(ns)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	hook := &deadLetterHook{}
	c, err := seg.RegisterConsumer(ctx, "s", "billing", 10, time.Minute, segmenter.WithHooks(hook))
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	k0, k1 := keyFor(t, st, 0, 0), keyFor(t, st, 1, 0)
	bad0 := &contracts.PMessage{PartitionKey: k0, Data: []byte("bad 0"), Metadata: map[string]string{"trace": "t-1"}}
	send(t, st, rec, bad0, msg(k0, "good 0"), msg(k1, "bad 1"), msg(k1, "good 1"))
	got := drainNoAck(t, c, rec, 4)

	var bad, good []*contracts.CMessage
	for _, m := range got {
		if string(m.Data[:3]) == "bad" {
			bad = append(bad, m)
		} else {
			good = append(good, m)
		}
	}
	if err := c.DeadLetter(ctx, "cannot parse", bad...); err != nil {
		t.Fatal(err)
	}
	if err := ack(t, c, rec, good...); err != nil {
		t.Fatal(err)
	}
	for p := range 2 {
		if ids := pendingIDs(t, rdb, keys.Partition("s", p), "billing"); len(ids) != 0 {
			t.Fatalf("partition %d: %v still pending", p, ids)
		}
	}
	if s := c.Stats(); s.DeadLettered != 2 || s.Acked != 2 {
		t.Fatalf("stats %+v, want 2 dead-lettered and 2 acked", s)
	}

	// In Redis: the original fields verbatim, then dlq.*.
	raw, err := rdb.XRange(ctx, keys.DeadLetters("s", 0, "billing"), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var bad0ID string
	for _, m := range bad {
		if m.Partition == 0 {
			bad0ID = m.Id
		}
	}
	if len(raw) != 1 {
		t.Fatalf("dead letters of partition 0: %v", raw)
	}
	want := map[string]any{"v": "1", "k": k0, "d": "bad 0", "m.trace": "t-1",
		"dlq.id": bad0ID, "dlq.reason": "cannot parse", "dlq.deliveries": "1", "dlq.group": "billing"}
	for f, v := range want {
		if raw[0].Values[f] != v {
			t.Errorf("dead letter field %s = %v, want %v", f, raw[0].Values[f], v)
		}
	}
	if _, ok := raw[0].Values["dlq.at"]; !ok || len(raw[0].Values) != len(want)+1 {
		t.Fatalf("dead letter fields %v, want %v and dlq.at", raw[0].Values, slices.Sorted(maps.Keys(want)))
	}

	// The hooks saw both moves with their dead-letter IDs.
	events := hook.all()
	if len(events) != 2 {
		t.Fatalf("hook events %+v, want 2", events)
	}
	for i, e := range events {
		if e.Err != nil || e.DeadLetterID == "" || e.Reason != "cannot parse" || e.Message != bad[i] || e.Group != "billing" || e.Consumer != c.ID() {
			t.Fatalf("hook event %d: %+v", i, e)
		}
	}

	// Listed with their messages decoded.
	letters, err := seg.DeadLetters(ctx, "s", "billing", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != 2 {
		t.Fatalf("listed %+v, want 2 dead letters", letters)
	}
	for _, l := range letters {
		var orig *contracts.CMessage
		for _, m := range bad {
			if int(m.Partition) == l.Partition {
				orig = m
			}
		}
		lm := l.Message
		if l.OriginalID != orig.Id || l.Reason != "cannot parse" || l.Deliveries != 1 || l.Stream != "s" || l.Group != "billing" ||
			l.At.IsZero() || lm.Id != orig.Id || lm.PartitionKey != orig.PartitionKey || string(lm.Data) != string(orig.Data) ||
			!maps.Equal(lm.Metadata, orig.Metadata) || lm.PoisonReason != "" || lm.Partition != orig.Partition {
			t.Fatalf("dead letter %+v (message %v), want the move of %v", l, lm, orig)
		}
	}

	// Dead-lettering again is harmless: nothing is pending any more.
	if err := c.DeadLetter(ctx, "again", bad...); err != nil {
		t.Fatal(err)
	}
	if letters, _ := seg.DeadLetters(ctx, "s", "billing", 10); len(letters) != 2 || c.Stats().DeadLettered != 2 || len(hook.all()) != 2 {
		t.Fatalf("a second move changed something: %d letters, stats %+v", len(letters), c.Stats())
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: time.Minute, RequireAllAcked: true, AllowLoss: allowLoss(bad...)})
}

func TestDeadLetterIsFenced(t *testing.T) { onBackends(t, testDeadLetterIsFenced) }

func testDeadLetterIsFenced(t *testing.T, bk backend) {
	ctx := context.Background()
	rdb := bk.client(t)
	ns := redistest.Namespace(t)
	keys := keyspace.New(ns)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	hook := &deadLetterHook{}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute, segmenter.WithHooks(hook))
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	send(t, st, rec, msg("k", "x"))
	got := drainNoAck(t, c, rec, 1)

	// Another consumer got the lease meanwhile (under a new epoch).
	if err := rdb.HSet(ctx, keys.Lease("s", 0, "g"), "o", "intruder", "e", fmt.Sprint(got[0].Epoch+1)).Err(); err != nil {
		t.Fatal(err)
	}
	err = c.DeadLetter(ctx, "x", got...)
	var pe *segmenter.PartitionError
	if !errors.Is(err, segmenter.ErrFenced) || !errors.As(err, &pe) || pe.Partition != 0 {
		t.Fatalf("dead letter after losing the lease: %v, want ErrFenced for partition 0", err)
	}
	if ids := pendingIDs(t, rdb, keys.Partition("s", 0), "g"); !slices.Equal(ids, []string{got[0].Id}) {
		t.Fatalf("pending %v, want %s left for the new owner", ids, got[0].Id)
	}
	if n, _ := rdb.XLen(ctx, keys.DeadLetters("s", 0, "g")).Result(); n != 0 || c.Stats().DeadLettered != 0 {
		t.Fatalf("%d dead letters, stats %+v: want none", n, c.Stats())
	}
	for _, o := range c.Assignment() {
		if o.Epoch == got[0].Epoch {
			t.Fatalf("the consumer still holds partition 0 under epoch %d", o.Epoch)
		}
	}
	if ev := hook.all(); len(ev) != 1 || !errors.Is(ev[0].Err, segmenter.ErrFenced) || ev[0].DeadLetterID != "" {
		t.Fatalf("hook events %+v, want one with ErrFenced", ev)
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: time.Minute})
}

func TestDeadLetterOfTrimmedMessageOnlyAcks(t *testing.T) {
	onBackends(t, testDeadLetterOfTrimmedMessageOnlyAcks)
}

func testDeadLetterOfTrimmedMessageOnlyAcks(t *testing.T, bk backend) {
	ctx := context.Background()
	rdb := bk.client(t)
	ns := redistest.Namespace(t)
	keys := keyspace.New(ns)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "x"))
	got := drainNoAck(t, c, nil, 1)
	// Retention trims it before it is dead-lettered.
	if err := rdb.XDel(ctx, keys.Partition("s", 0), got[0].Id).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.DeadLetter(ctx, "x", got...); err != nil {
		t.Fatal(err)
	}
	if ids := pendingIDs(t, rdb, keys.Partition("s", 0), "g"); len(ids) != 0 {
		t.Fatalf("pending %v, want none", ids)
	}
	if letters, err := seg.DeadLetters(ctx, "s", "g", 10); err != nil || len(letters) != 0 {
		t.Fatalf("dead letters %v %v, want none", letters, err)
	}
	if s := c.Stats(); s.Trimmed != 1 || s.DeadLettered != 0 {
		t.Fatalf("stats %+v, want 1 trimmed and none dead-lettered", s)
	}
}

func TestDeadLettersListsOldestFirstAcrossPartitions(t *testing.T) {
	onBackends(t, testDeadLettersListsOldestFirstAcrossPartitions)
}

func testDeadLettersListsOldestFirstAcrossPartitions(t *testing.T, bk backend) {
	ctx := context.Background()
	rdb := bk.client(t)
	ns := redistest.Namespace(t)
	keys := keyspace.New(ns)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	rec := invariant.NewRecorder()
	send(t, st, rec, msg(keyFor(t, st, 0, 0), "p0"), msg(keyFor(t, st, 1, 0), "p1"), msg(keyFor(t, st, 2, 0), "p2"))
	// An entry another tool wrote: poison.
	poisonID, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Partition("s", 1), Values: []any{"foo", "bar"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	got := drainNoAck(t, c, rec, 4)
	byData := map[string]*contracts.CMessage{}
	for _, m := range got {
		if m.PoisonReason != "" {
			byData["poison"] = m
		} else {
			byData[string(m.Data)] = m
		}
	}
	// Dead-lettered in this order, each at a later millisecond.
	order := []string{"p2", "poison", "p0", "p1"}
	var dead []*contracts.CMessage
	for _, d := range order {
		waitServerClock(t, rdb)
		if err := c.DeadLetter(ctx, "reason "+d, byData[d]); err != nil {
			t.Fatal(err)
		}
		dead = append(dead, byData[d])
	}

	letters, err := seg.DeadLetters(ctx, "s", "g", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != len(order) {
		t.Fatalf("listed %d dead letters, want %d", len(letters), len(order))
	}
	for i, l := range letters {
		m := dead[i]
		if l.OriginalID != m.Id || l.Partition != int(m.Partition) || l.Reason != "reason "+order[i] {
			t.Fatalf("dead letter %d: %+v, want the one of %s (%s on partition %d)", i, l, order[i], m.Id, m.Partition)
		}
		if i > 0 && !l.At.After(letters[i-1].At) {
			t.Fatalf("dead letter %d at %v, not after %v", i, l.At, letters[i-1].At)
		}
	}
	pl := letters[1]
	if pl.OriginalID != poisonID || pl.Message.PoisonReason == "" || !maps.Equal(pl.Message.Metadata, map[string]string{"foo": "bar"}) {
		t.Fatalf("poison dead letter %+v (message %v), want its raw fields and a poison reason", pl, pl.Message)
	}
	if !errors.Is(segmenter.Poison(pl.Message), segmenter.ErrPoison) {
		t.Fatalf("Poison(%v) = nil", pl.Message)
	}

	// A limit keeps the oldest.
	two, err := seg.DeadLetters(ctx, "s", "g", 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(two) != 2 || two[0].ID != letters[0].ID || two[1].ID != letters[1].ID {
		t.Fatalf("limit 2: %+v, want the first two of %+v", two, letters)
	}
	checkLog(t, rec, invariant.Options{MaxProcessingTime: time.Minute, AllowLoss: allowLoss(dead...)})
}

func TestDeadLettersPagesThroughEveryPartitionOldestFirst(t *testing.T) {
	onBackends(t, testDeadLettersPagesThroughEveryPartitionOldestFirst)
}

func testDeadLettersPagesThroughEveryPartitionOldestFirst(t *testing.T, bk backend) {
	ctx := context.Background()
	rdb := bk.client(t)
	ns := redistest.Namespace(t)
	keys := keyspace.New(ns)
	seg := newSegmenter(t, ns, rdb)
	const partitions = 3
	if _, err := seg.RegisterStream(ctx, "s", partitions, 0); err != nil {
		t.Fatal(err)
	}
	// Dead letters as the move writes them, with IDs chosen so that
	// partitions share milliseconds and some hold several letters in one.
	type pos struct {
		p  int
		id string
	}
	var want []pos // in the order of DeadLetters
	pipe := rdb.Pipeline()
	for ms := 1000; ms < 1020; ms++ {
		for p := range partitions {
			for seq := range (ms*7 + p) % 4 {
				id := fmt.Sprintf("%d-%d", ms, seq)
				want = append(want, pos{p, id})
				pipe.XAdd(ctx, &redis.XAddArgs{Stream: keys.DeadLetters("s", p, "g"), ID: id, Values: []any{
					"v", "1", "k", "key", "d", fmt.Sprintf("%d/%s", p, id),
					"dlq.id", "1-0", "dlq.reason", "r", "dlq.deliveries", "1", "dlq.group", "g", "dlq.at", fmt.Sprint(ms)}})
			}
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	const limit = 7
	if len(want) <= 3*limit {
		t.Fatalf("only %d letters: want several pages", len(want))
	}

	var got []pos
	var last segmenter.DeadLetter
	for pages := 0; ; pages++ {
		if pages > len(want) {
			t.Fatalf("no end after %d pages: %v", pages, got)
		}
		page, err := seg.DeadLetters(ctx, "s", "g", limit, segmenter.DeadLettersAfter(last))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range page {
			if data := fmt.Sprintf("%d/%s", l.Partition, l.ID); string(l.Message.Data) != data {
				t.Fatalf("letter %d/%s holds %q, want %q", l.Partition, l.ID, l.Message.Data, data)
			}
			got = append(got, pos{l.Partition, l.ID})
		}
		if len(page) < limit {
			break
		}
		last = page[len(page)-1]
		if pages == 1 {
			// The position holds even when the letter it names is gone.
			if n, err := seg.DeleteDeadLetters(ctx, "s", "g", last); err != nil || n != 1 {
				t.Fatalf("delete of %s: %d %v", last.ID, n, err)
			}
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paged through\n%v\nwant\n%v", got, want)
	}
}

func TestRedriveDeadLettersGoBackToTheirGroupOnly(t *testing.T) {
	onBackends(t, testRedriveDeadLettersGoBackToTheirGroupOnly)
}

func testRedriveDeadLettersGoBackToTheirGroupOnly(t *testing.T, bk backend) {
	ctx := context.Background()
	rdb := bk.client(t)
	ns := redistest.Namespace(t)
	keys := keyspace.New(ns)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	billing, err := seg.RegisterConsumer(ctx, "s", "billing", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	audit, err := seg.RegisterConsumer(ctx, "s", "audit", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	recB, recA := invariant.NewRecorder(), invariant.NewRecorder()
	k0, k1 := keyFor(t, st, 0, 0), keyFor(t, st, 1, 0)
	first := []*contracts.PMessage{msg(k0, "a0"), msg(k0, "b0"), msg(k1, "a1"), msg(k1, "b1")}
	sendTo(t, st, first, recB, recA)

	// audit processes everything; billing gives up on the "a" messages.
	drain(t, audit, recA, 4, 10*time.Second)
	got := drainNoAck(t, billing, recB, 4)
	var dead, done []*contracts.CMessage
	for _, m := range got {
		if m.Data[0] == 'a' {
			dead = append(dead, m)
		} else {
			done = append(done, m)
		}
	}
	if err := billing.DeadLetter(ctx, "downstream refused", dead...); err != nil {
		t.Fatal(err)
	}
	if err := ack(t, billing, recB, done...); err != nil {
		t.Fatal(err)
	}

	// Re-drive them all, then send one more message per partition.
	n, err := seg.RedriveAllDeadLetters(ctx, "s", "billing")
	if err != nil || n != 2 {
		t.Fatalf("redrive: %d, %v; want 2", n, err)
	}
	if letters, err := seg.DeadLetters(ctx, "s", "billing", 10); err != nil || len(letters) != 0 {
		t.Fatalf("dead letters after the redrive: %v %v", letters, err)
	}
	after := []*contracts.PMessage{msg(k0, "c0"), msg(k1, "c1")}
	sendTo(t, st, after, recB, recA)

	// billing gets the re-driven messages again (new IDs, first delivery),
	// before what was sent after the redrive.
	again := drain(t, billing, recB, 4, 10*time.Second)
	seen := map[uint32][]string{}
	for _, m := range again {
		seen[m.Partition] = append(seen[m.Partition], string(m.Data))
		if m.Data[0] == 'a' && m.DeliveryCount != 1 {
			t.Fatalf("re-driven %s has delivery count %d, want 1", m.Data, m.DeliveryCount)
		}
	}
	if !slices.Equal(seen[0], []string{"a0", "c0"}) || !slices.Equal(seen[1], []string{"a1", "c1"}) {
		t.Fatalf("billing read %v after the redrive, want a0 c0 and a1 c1", seen)
	}
	for _, m := range again {
		for _, d := range dead {
			if m.Partition == d.Partition && m.Id == d.Id {
				t.Fatalf("re-driven message kept its ID %s", m.Id)
			}
		}
	}

	// audit never sees them: only the new messages, and nothing pending.
	gotA := drain(t, audit, recA, 2, 10*time.Second)
	var dataA []string
	for _, m := range gotA {
		dataA = append(dataA, string(m.Data))
	}
	slices.Sort(dataA)
	if !slices.Equal(dataA, []string{"c0", "c1"}) {
		t.Fatalf("audit read %v after the redrive, want only c0 c1", dataA)
	}
	if more, err := audit.Read(ctx, 0); err != nil || len(more) != 0 {
		t.Fatalf("audit read more: %v %v", more, err)
	}
	for p := range 2 {
		if ids := pendingIDs(t, rdb, keys.Partition("s", p), "audit"); len(ids) != 0 {
			t.Fatalf("audit has %v pending on partition %d", ids, p)
		}
	}
	checkLog(t, recB, invariant.Options{MaxProcessingTime: time.Minute, RequireAllAcked: true, AllowLoss: allowLoss(dead...)})
	checkLog(t, recA, invariant.Options{MaxProcessingTime: time.Minute, RequireAllAcked: true})
}

func TestRedrivenPoisonGoesToItsGroupOnly(t *testing.T) {
	onBackends(t, testRedrivenPoisonGoesToItsGroupOnly)
}

func testRedrivenPoisonGoesToItsGroupOnly(t *testing.T, bk backend) {
	ctx := context.Background()
	rdb := bk.client(t)
	ns := redistest.Namespace(t)
	keys := keyspace.New(ns)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	billing, err := seg.RegisterConsumer(ctx, "s", "billing", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	audit, err := seg.RegisterConsumer(ctx, "s", "audit", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// An entry another tool wrote (poison, with a field "to" of its own),
	// then a message with metadata.
	raw := map[string]string{"foo": "bar", "to": "someone"}
	poisonID, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Partition("s", 0), Values: []any{"foo", "bar", "to", "someone"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	sent := &contracts.PMessage{PartitionKey: "k", Data: []byte("data"), Metadata: map[string]string{"a": "1", "to": "x"}}
	send(t, st, nil, sent)

	// audit processes both; billing gives up on both.
	drain(t, audit, nil, 2, 10*time.Second)
	dead := drainNoAck(t, billing, nil, 2)
	if err := billing.DeadLetter(ctx, "later", dead...); err != nil {
		t.Fatal(err)
	}
	letters, err := seg.DeadLetters(ctx, "s", "billing", 10)
	if err != nil || len(letters) != 2 {
		t.Fatalf("dead letters %v %v, want 2", letters, err)
	}
	if n, err := seg.RedriveDeadLetters(ctx, "s", "billing", letters...); err != nil || n != 2 {
		t.Fatalf("redrive: %d %v, want 2", n, err)
	}
	send(t, st, nil, msg("k", "after"))

	// billing gets the poison entry as poison with its own raw fields, and
	// the message exactly as sent, then what came after.
	got := drainNoAck(t, billing, nil, 3)
	var poison, plain *contracts.CMessage
	for _, m := range got[:2] {
		if m.PoisonReason != "" {
			poison = m
		} else {
			plain = m
		}
	}
	if poison == nil || plain == nil || string(got[2].Data) != "after" {
		t.Fatalf("billing read %v, want the re-driven poison entry and message, then after", got)
	}
	if poison.Id == poisonID || poison.DeliveryCount != 1 || !maps.Equal(poison.Metadata, raw) || !errors.Is(segmenter.Poison(poison), segmenter.ErrPoison) {
		t.Fatalf("re-driven poison entry %v, want a new ID, delivery 1, poison with raw fields %v", poison, raw)
	}
	if plain.PartitionKey != sent.PartitionKey || string(plain.Data) != string(sent.Data) || !maps.Equal(plain.Metadata, sent.Metadata) || plain.DeliveryCount != 1 {
		t.Fatalf("re-driven message %v, want %v", plain, sent)
	}

	// audit never sees them: only what came after, and nothing pending.
	if again := drain(t, audit, nil, 1, 10*time.Second); string(again[0].Data) != "after" {
		t.Fatalf("audit read %v, want only after", again)
	}
	if more, err := audit.Read(ctx, 0); err != nil || len(more) != 0 {
		t.Fatalf("audit read more: %v %v", more, err)
	}
	if ids := pendingIDs(t, rdb, keys.Partition("s", 0), "audit"); len(ids) != 0 {
		t.Fatalf("audit has %v pending", ids)
	}

	// Dead-lettered again, the poison entry is listed with its raw fields
	// only (no marker of the re-drive).
	if err := billing.DeadLetter(ctx, "again", poison); err != nil {
		t.Fatal(err)
	}
	letters, err = seg.DeadLetters(ctx, "s", "billing", 10)
	if err != nil || len(letters) != 1 || letters[0].OriginalID != poison.Id || !maps.Equal(letters[0].Message.Metadata, raw) {
		t.Fatalf("dead letters %+v %v, want the poison entry with raw fields %v", letters, err, raw)
	}
	if err := billing.Ack(ctx, plain, got[2]); err != nil {
		t.Fatal(err)
	}
}

func TestRedriveAndDeleteChosenDeadLetters(t *testing.T) {
	onBackends(t, testRedriveAndDeleteChosenDeadLetters)
}

func testRedriveAndDeleteChosenDeadLetters(t *testing.T, bk backend) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), bk.client(t))
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "0"), msg("k", "1"), msg("k", "2"))
	if err := c.DeadLetter(ctx, "x", drainNoAck(t, c, nil, 3)...); err != nil {
		t.Fatal(err)
	}
	letters, err := seg.DeadLetters(ctx, "s", "g", 10)
	if err != nil || len(letters) != 3 {
		t.Fatalf("dead letters %v %v, want 3", letters, err)
	}
	list := func() []string {
		t.Helper()
		ls, err := seg.DeadLetters(ctx, "s", "g", 10)
		if err != nil {
			t.Fatal(err)
		}
		var data []string
		for _, l := range ls {
			data = append(data, string(l.Message.Data))
		}
		return data
	}

	if n, err := seg.RedriveDeadLetters(ctx, "s", "g", letters[1]); err != nil || n != 1 {
		t.Fatalf("redrive of one letter: %d %v", n, err)
	}
	if got := list(); !slices.Equal(got, []string{"0", "2"}) {
		t.Fatalf("dead letters left %v, want 0 2", got)
	}
	if n, err := seg.RedriveDeadLetters(ctx, "s", "g", letters[1]); err != nil || n != 0 {
		t.Fatalf("second redrive of the same letter: %d %v, want 0", n, err)
	}
	if got := drain(t, c, nil, 1, 10*time.Second); string(got[0].Data) != "1" {
		t.Fatalf("read %s after the redrive, want 1", got[0].Data)
	}

	if n, err := seg.DeleteDeadLetters(ctx, "s", "g", letters[0], letters[0]); err != nil || n != 1 {
		t.Fatalf("delete: %d %v, want 1", n, err)
	}
	if n, err := seg.DeleteDeadLetters(ctx, "s", "g", letters[0]); err != nil || n != 0 {
		t.Fatalf("second delete: %d %v, want 0", n, err)
	}
	if n, err := seg.DeleteDeadLetters(ctx, "s", "g"); err != nil || n != 0 {
		t.Fatalf("delete of no letters: %d %v, want 0", n, err)
	}
	if got := list(); !slices.Equal(got, []string{"2"}) {
		t.Fatalf("dead letters left %v, want 2", got)
	}
	if msgs, err := c.Read(ctx, 0); err != nil || len(msgs) != 0 {
		t.Fatalf("a deleted dead letter came back: %v %v", msgs, err)
	}
}

func TestRedriveOfNoLettersRedrivesNothing(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Client(t)
	ns := redistest.Namespace(t)
	keys := keyspace.New(ns)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "0"), msg("k", "1"))
	if err := c.DeadLetter(ctx, "x", drainNoAck(t, c, nil, 2)...); err != nil {
		t.Fatal(err)
	}
	letters, err := seg.DeadLetters(ctx, "s", "g", 10)
	if err != nil || len(letters) != 2 {
		t.Fatalf("dead letters %v %v, want 2", letters, err)
	}

	// A filter that matched nothing re-drives nothing.
	var matched []segmenter.DeadLetter
	for _, l := range letters {
		if l.Reason == "no such reason" {
			matched = append(matched, l)
		}
	}
	for name, call := range map[string]func() (int, error){
		"no letters":       func() (int, error) { return seg.RedriveDeadLetters(ctx, "s", "g") },
		"an empty slice":   func() (int, error) { return seg.RedriveDeadLetters(ctx, "s", "g", []segmenter.DeadLetter{}...) },
		"a filter's empty": func() (int, error) { return seg.RedriveDeadLetters(ctx, "s", "g", matched...) },
	} {
		if n, err := call(); n != 0 || !errors.Is(err, segmenter.ErrInvalidArgument) {
			t.Fatalf("RedriveDeadLetters of %s: %d %v, want 0 and ErrInvalidArgument", name, n, err)
		}
	}
	if n, err := rdb.XLen(ctx, keys.Partition("s", 0)).Result(); err != nil || n != 2 {
		t.Fatalf("partition holds %d entries (%v), want the 2 sent", n, err)
	}
	if left, err := seg.DeadLetters(ctx, "s", "g", 10); err != nil || len(left) != 2 {
		t.Fatalf("dead letters %v %v, want both kept", left, err)
	}

	// Re-driving them all is its own call.
	if n, err := seg.RedriveAllDeadLetters(ctx, "s", "g"); err != nil || n != 2 {
		t.Fatalf("RedriveAllDeadLetters: %d %v, want 2", n, err)
	}
	got := drain(t, c, nil, 2, 10*time.Second)
	if string(got[0].Data) != "0" || string(got[1].Data) != "1" {
		t.Fatalf("read %v after re-driving all, want 0 then 1", got)
	}
	if n, err := seg.RedriveAllDeadLetters(ctx, "s", "g"); err != nil || n != 0 {
		t.Fatalf("RedriveAllDeadLetters of none left: %d %v, want 0", n, err)
	}
}

func TestRedriveAllPagesThroughManyDeadLetters(t *testing.T) {
	onBackends(t, testRedriveAllPagesThroughManyDeadLetters)
}

func testRedriveAllPagesThroughManyDeadLetters(t *testing.T, bk backend) {
	ctx := context.Background()
	rdb := bk.client(t)
	ns := redistest.Namespace(t)
	keys := keyspace.New(ns)
	seg := newSegmenter(t, ns, rdb)
	if _, err := seg.RegisterStream(ctx, "s", 2, 0); err != nil {
		t.Fatal(err)
	}
	// Dead letters as the move writes them: more than one page on partition 1.
	counts := []int{3, 2500}
	pipe := rdb.Pipeline()
	for p, n := range counts {
		pipe.XGroupCreateMkStream(ctx, keys.Partition("s", p), "g", "0")
		for i := range n {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: keys.DeadLetters("s", p, "g"), Values: []any{
				"v", "1", "k", "key", "d", fmt.Sprint(i),
				"dlq.id", fmt.Sprintf("1-%d", i), "dlq.reason", "r", "dlq.deliveries", "3", "dlq.group", "g", "dlq.at", "1"}})
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := seg.RedriveAllDeadLetters(ctx, "s", "g")
	if err != nil || n != counts[0]+counts[1] {
		t.Fatalf("redrive: %d %v, want %d", n, err, counts[0]+counts[1])
	}
	for p, want := range counts {
		entries, err := rdb.XRange(ctx, keys.Partition("s", p), "-", "+").Result()
		if err != nil || len(entries) != want {
			t.Fatalf("partition %d holds %d entries (%v), want %d", p, len(entries), err, want)
		}
		for i, e := range entries { // in the order they were dead-lettered
			if e.Values["d"] != fmt.Sprint(i) || e.Values[rebalance.FieldRedriveTo] != "g" || len(e.Values) != 4 {
				t.Fatalf("partition %d entry %d: %v", p, i, e.Values)
			}
		}
		if n, _ := rdb.XLen(ctx, keys.DeadLetters("s", p, "g")).Result(); n != 0 {
			t.Fatalf("partition %d: %d dead letters left", p, n)
		}
	}
}

func TestRedriveWithoutTheGroupIsErrGroupNotFound(t *testing.T) {
	onBackends(t, testRedriveWithoutTheGroupIsErrGroupNotFound)
}

func testRedriveWithoutTheGroupIsErrGroupNotFound(t *testing.T, bk backend) {
	ctx := context.Background()
	rdb := bk.client(t)
	ns := redistest.Namespace(t)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "x"))
	if err := c.DeadLetter(ctx, "x", drainNoAck(t, c, nil, 1)...); err != nil {
		t.Fatal(err)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := rdb.XGroupDestroy(ctx, keyspace.New(ns).Partition("s", 0), "g").Err(); err != nil {
		t.Fatal(err)
	}
	n, err := seg.RedriveAllDeadLetters(ctx, "s", "g")
	var pe *segmenter.PartitionError
	if n != 0 || !errors.Is(err, segmenter.ErrGroupNotFound) || !errors.As(err, &pe) || pe.Partition != 0 {
		t.Fatalf("redrive without the group: %d %v, want ErrGroupNotFound for partition 0", n, err)
	}
	if letters, err := seg.DeadLetters(ctx, "s", "g", 10); err != nil || len(letters) != 1 {
		t.Fatalf("dead letters %v %v, want the one kept", letters, err)
	}
}

func TestDeadLetterBadInput(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Client(t)
	ns := redistest.Namespace(t)
	keys := keyspace.New(ns)
	seg := newSegmenter(t, ns, rdb)
	st, err := seg.RegisterStream(ctx, "s", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "s", "g", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, nil, msg("k", "x"))
	got := drainNoAck(t, c, nil, 1)
	other := &contracts.CMessage{Id: got[0].Id, Partition: got[0].Partition, Stream: "s", Group: "other"}
	for name, err := range map[string]error{
		"empty reason":        c.DeadLetter(ctx, "", got...),
		"nil message":         c.DeadLetter(ctx, "x", got[0], nil),
		"another group's":     c.DeadLetter(ctx, "x", other),
		"no ID":               c.DeadLetter(ctx, "x", &contracts.CMessage{Stream: "s", Group: "g"}),
		"partition too large": c.DeadLetter(ctx, "x", &contracts.CMessage{Id: "1-0", Partition: 2, Stream: "s", Group: "g"}),
	} {
		if !errors.Is(err, segmenter.ErrInvalidArgument) {
			t.Errorf("DeadLetter with %s: %v, want ErrInvalidArgument", name, err)
		}
	}
	if err := c.DeadLetter(ctx, "x"); err != nil {
		t.Errorf("DeadLetter of nothing: %v", err)
	}

	letter := segmenter.DeadLetter{ID: "1-0", Partition: 0}
	check := func(name string, err error, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	_, err = seg.DeadLetters(ctx, "bad name", "g", 1)
	check("DeadLetters of a bad stream name", err, segmenter.ErrInvalidArgument)
	_, err = seg.DeadLetters(ctx, "s", "", 1)
	check("DeadLetters of an empty group", err, segmenter.ErrInvalidArgument)
	_, err = seg.DeadLetters(ctx, "s", "g", 0)
	check("DeadLetters with limit 0", err, segmenter.ErrInvalidArgument)
	_, err = seg.DeadLetters(ctx, "nope", "g", 1)
	check("DeadLetters of an unknown stream", err, segmenter.ErrStreamNotFound)
	for name, after := range map[string]segmenter.DeadLetter{
		"a partition out of range": {ID: "1-0", Partition: 2},
		"a negative partition":     {ID: "1-0", Partition: -1},
		"no ID":                    {Partition: 1},
		"a bad ID":                 {ID: "x"},
		"another group's letter":   {ID: "1-0", Stream: "s", Group: "other"},
		"another stream's letter":  {ID: "1-0", Stream: "t", Group: "g"},
	} {
		_, err = seg.DeadLetters(ctx, "s", "g", 1, segmenter.DeadLettersAfter(after))
		check("DeadLetters after "+name, err, segmenter.ErrInvalidArgument)
	}
	for _, op := range []struct {
		name string
		f    func(ctx context.Context, stream, group string, letters ...segmenter.DeadLetter) (int, error)
	}{{"RedriveDeadLetters", seg.RedriveDeadLetters}, {"DeleteDeadLetters", seg.DeleteDeadLetters}} {
		for name, c := range map[string]struct {
			stream, group string
			letter        segmenter.DeadLetter
			want          error
		}{
			"a bad stream name":         {"s:x", "g", letter, segmenter.ErrInvalidArgument},
			"a bad group name":          {"s", "{g}", letter, segmenter.ErrInvalidArgument},
			"an unknown stream":         {"nope", "g", letter, segmenter.ErrStreamNotFound},
			"a partition out of range":  {"s", "g", segmenter.DeadLetter{ID: "1-0", Partition: 2}, segmenter.ErrInvalidArgument},
			"a negative partition":      {"s", "g", segmenter.DeadLetter{ID: "1-0", Partition: -1}, segmenter.ErrInvalidArgument},
			"a bad ID":                  {"s", "g", segmenter.DeadLetter{ID: "x", Partition: 0}, segmenter.ErrInvalidArgument},
			"another group's letter":    {"s", "g", segmenter.DeadLetter{ID: "1-0", Stream: "s", Group: "other"}, segmenter.ErrInvalidArgument},
			"another stream's letter":   {"s", "g", segmenter.DeadLetter{ID: "1-0", Stream: "t", Group: "g"}, segmenter.ErrInvalidArgument},
			"a letter of the right one": {"s", "g", segmenter.DeadLetter{ID: "1-0", Stream: "s", Group: "g"}, nil},
		} {
			n, err := op.f(ctx, c.stream, c.group, c.letter)
			if n != 0 || !errors.Is(err, c.want) || (c.want == nil && err != nil) {
				t.Errorf("%s with %s: %d, %v; want 0, %v", op.name, name, n, err, c.want)
			}
		}
	}

	for name, c := range map[string]struct {
		stream, group string
		want          error
	}{
		"a bad stream name": {"s:x", "g", segmenter.ErrInvalidArgument},
		"a bad group name":  {"s", "{g}", segmenter.ErrInvalidArgument},
		"an unknown stream": {"nope", "g", segmenter.ErrStreamNotFound},
	} {
		if n, err := seg.RedriveAllDeadLetters(ctx, c.stream, c.group); n != 0 || !errors.Is(err, c.want) {
			t.Errorf("RedriveAllDeadLetters with %s: %d, %v; want 0, %v", name, n, err, c.want)
		}
	}

	// Nothing changed.
	if ids := pendingIDs(t, rdb, keys.Partition("s", int(got[0].Partition)), "g"); !slices.Equal(ids, []string{got[0].Id}) {
		t.Fatalf("pending %v, want %s", ids, got[0].Id)
	}
	if letters, err := seg.DeadLetters(ctx, "s", "g", 10); err != nil || len(letters) != 0 {
		t.Fatalf("dead letters %v %v, want none", letters, err)
	}
	if err := c.Nack(got...); err != nil { // hand it back: Shutdown need not wait for it
		t.Fatal(err)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.DeadLetter(ctx, "x", got...); !errors.Is(err, segmenter.ErrClosed) {
		t.Fatalf("DeadLetter after Shutdown: %v, want ErrClosed", err)
	}
}

// Dead letters: inspect the messages a group gave up on, then send them
// back to it once the cause is fixed.
func ExampleSegmenter_DeadLetters() {
	ctx := context.Background()
	seg, err := segmenter.NewSegmenter(&segmenter.Config{RedisURL: os.Getenv("REDIS_URL"), Namespace: exampleNamespace()})
	if err != nil {
		log.Fatal(err)
	}
	defer seg.Close(ctx)
	st, err := seg.RegisterStream(ctx, "orders", 4, 0)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := st.Send(ctx, &contracts.PMessage{PartitionKey: "order-7", Data: []byte("not json")}); err != nil {
		log.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "orders", "shipping", 10, 30*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Shutdown(ctx)
	readOne := func() *contracts.CMessage {
		for {
			msgs, err := c.Read(ctx, time.Second)
			if errors.Is(err, segmenter.ErrFenced) {
				continue
			}
			if err != nil {
				log.Fatal(err)
			}
			if len(msgs) > 0 {
				return msgs[0]
			}
		}
	}

	// The handler cannot process the message: give up on it.
	m := readOne()
	if err := c.DeadLetter(ctx, "cannot parse order", m); err != nil {
		log.Fatal(err)
	}

	letters, err := seg.DeadLetters(ctx, "orders", "shipping", 100)
	if err != nil {
		log.Fatal(err)
	}
	for _, l := range letters {
		fmt.Printf("%s %q: %s (delivered %d times)\n", l.Message.PartitionKey, l.Message.Data, l.Reason, l.Deliveries)
	}

	// Fixed: send them back to the group (and to no other group).
	n, err := seg.RedriveDeadLetters(ctx, "orders", "shipping", letters...)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(n, "re-driven")
	m = readOne()
	fmt.Printf("%s %q (delivery %d)\n", m.PartitionKey, m.Data, m.DeliveryCount)
	if err := c.Ack(ctx, m); err != nil {
		log.Fatal(err)
	}
	// Output:
	// order-7 "not json": cannot parse order (delivered 1 times)
	// 1 re-driven
	// order-7 "not json" (delivery 1)
}

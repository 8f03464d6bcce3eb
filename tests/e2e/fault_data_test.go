//go:build unix

package e2e

// The fault matrix, the data in Redis: entries and groups deleted or
// flushed under the consumers, Redis restarted without persistence,
// malformed entries. Where Redis itself lost data, the promise is that the
// SDK says so (an error, a count, a log line), never acks it silently,
// never recreates a group at the end of a stream, and does not busy-spin.

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
	"github.com/segmenter/segmenter/internal/redistest"
)

// eventsBy returns the events of stream and group sent by producers or
// recorded by the consumers named.
func (e *env) eventsBy(stream, group string, names []string, producers ...*producer) []invariant.Event {
	e.t.Helper()
	var out []invariant.Event
	for _, ev := range e.events(stream, group, producers...) {
		if ev.Kind == invariant.KindSent || slices.Contains(names, ev.Consumer) {
			out = append(out, ev)
		}
	}
	return out
}

// checkLog proves the invariants over evs (every sent message acked) and
// fails the test with the violations.
func (e *env) checkLog(what string, evs []invariant.Event, opts invariant.Options) {
	e.t.Helper()
	e.t.Logf("invariant log of %s:\n%v", what, invariant.Summarize(evs))
	opts.Slack = clockSlack
	if err := invariant.Check(evs, opts); err != nil {
		e.keepLog(strings.ReplaceAll(what, " ", "_"), defaultGroup, evs)
		e.t.Fatalf("%s: invariants violated:\n%v", what, err)
	}
}

var partitionOf = regexp.MustCompile(`partition (\d+)`)

// reported returns the partitions named by the workers' error lines (Read,
// Ack and OnError) that contain what.
func reported(what string, ws ...*worker) map[int]bool {
	out := map[int]bool{}
	for _, w := range ws {
		for _, l := range append(w.ErrorLines(), w.BackgroundErrors()...) {
			if !strings.Contains(l, what) {
				continue
			}
			for _, m := range partitionOf.FindAllStringSubmatch(l, -1) {
				p, _ := strconv.Atoi(m[1])
				out[p] = true
			}
		}
	}
	return out
}

// commandRate returns the commands per second Redis processed over window
// (the two INFO calls included).
func commandRate(t *testing.T, rdb redis.UniversalClient, window time.Duration) float64 {
	t.Helper()
	count := func() int64 {
		info, err := rdb.Info(context.Background(), "stats").Result()
		if err != nil {
			t.Fatal(err)
		}
		_, v, _ := strings.Cut(info, "total_commands_processed:")
		v, _, _ = strings.Cut(v, "\r\n")
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("total_commands_processed in INFO stats: %v", err)
		}
		return n
	}
	start, n0 := time.Now(), count()
	time.Sleep(window) // the measurement window
	n1 := count()
	return float64(n1-n0) / time.Since(start).Seconds()
}

// checkNoBusySpin fails the test when Redis serves the consumers, idle,
// more than factor times the commands per second it served them idle
// before the fault (plus 50/s for the heartbeats of a group rebalancing).
func checkNoBusySpin(t *testing.T, rdb redis.UniversalClient, idleBefore, factor float64, what string) {
	t.Helper()
	after := commandRate(t, rdb, time.Second)
	t.Logf("Redis served %.0f commands/s to the idle consumers before %s, %.0f/s after", idleBefore, what, after)
	if after > factor*idleBefore+50 {
		t.Errorf("after %s Redis serves %.0f commands/s, %.0f/s before: the consumers spin", what, after, idleBefore)
	}
}

// noGroupFor watches, for window, that group exists on no partition of
// stream: the SDK never recreates a group by itself.
func (e *env) noGroupFor(stream, group string, partitions int, window time.Duration) {
	e.t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(window)
	for time.Now().Before(deadline) {
		for p := range partitions {
			gs, _ := e.rdb.XInfoGroups(ctx, e.keys.Partition(stream, p)).Result()
			for _, g := range gs {
				if g.Name == group {
					e.t.Fatalf("partition %d: group %s exists again (last delivered %s) though no consumer registered: it was recreated silently",
						p, group, g.LastDeliveredID)
				}
			}
		}
		time.Sleep(100 * time.Millisecond) // the observation's pace
	}
}

// A group's data vanishes under its consumers, idle in their blocking
// wait: the partitions' stream keys are deleted, or the server is flushed
// (FLUSHALL), or restarted without persistence. Every partition's loss is
// surfaced (ErrGroupNotFound, NOGROUP), the consumers do not spin, and no
// group is created again by itself, let alone at the end of a stream,
// while a producer goes on sending. Once the consumers are started again
// (a new registration, after the stream's, where it was flushed too) the
// group is created again from each partition's first entry: every message
// sent after the loss is delivered and acked, in order.
func TestFaultGroupDataVanishes(t *testing.T) {
	for _, how := range []string{"stream keys deleted", "FLUSHALL", "restart without persistence"} {
		t.Run(how, func(t *testing.T) {
			inst := redistest.Standalone(t)
			e := newEnvOn(t, &inst.Info)
			ctx := context.Background()
			const P = 4
			st := e.stream(defaultStream, P)
			o := func(name string) workerOpts { return workerOpts{name: name, work: time.Millisecond} }
			ws := []*worker{e.startWorker(o("w1")), e.startWorker(o("w2")), e.startWorker(o("w3"))}
			e.waitBalanced(st.Name(), P, ws...)
			before := e.startProducer(st, 40, 1000, 20, 5*time.Millisecond)
			before.finish(t)
			e.waitAllAcked(st, defaultGroup)
			idle := commandRate(t, e.rdb, time.Second)

			switch how {
			case "stream keys deleted":
				for p := range P {
					if err := e.rdb.Del(ctx, e.keys.Partition(st.Name(), p)).Err(); err != nil {
						t.Fatal(err)
					}
				}
			case "FLUSHALL":
				if err := e.rdb.FlushAll(ctx).Err(); err != nil {
					t.Fatal(err)
				}
			default:
				inst.Restart()
			}
			after := e.startProducer(st, 40, 400, 10, 10*time.Millisecond)
			after.finish(t)
			poll(t, hang, 50*time.Millisecond, func() bool { return len(reported("consumer group missing", ws...)) == P },
				"not every partition's missing group was reported; reported: %v", lazy(func() string { return fmt.Sprint(reported("consumer group missing", ws...)) }))
			checkNoBusySpin(t, e.rdb, idle, 1.5, how) // the partitions are dropped for good
			e.noGroupFor(st.Name(), defaultGroup, P, 20*testHeartbeat)

			stopAll(t, ws...)
			if how != "stream keys deleted" {
				e.stream(defaultStream, P) // the stream's metadata went too
			}
			vs := []*worker{e.startWorker(o("v1")), e.startWorker(o("v2")), e.startWorker(o("v3"))}
			e.waitBalanced(st.Name(), P, vs...)
			e.waitAllAcked(st, defaultGroup)
			stopAll(t, vs...)
			opts := invariant.Options{MaxProcessingTime: 10 * time.Second, RequireAllAcked: true}
			e.checkLog("before the loss", e.eventsBy(st.Name(), defaultGroup, []string{"w1", "w2", "w3"}, before), opts)
			evs := e.eventsBy(st.Name(), defaultGroup, []string{"v1", "v2", "v3"}, after)
			e.checkLog("after the loss", evs, opts)
			if s := invariant.Summarize(evs); s.Messages != 400 {
				t.Fatalf("%d of the 400 messages sent after the loss delivered", s.Messages)
			}
			e.logFigures(evs, opts, vs, nil, nil)
		})
	}
}

// The group is destroyed (XGROUP DESTROY) on every partition while its
// consumers hold pending messages: its progress is gone in Redis. The
// consumers surface it (ErrGroupNotFound), do not spin and do not
// recreate it; their acks of what they held do no harm. Started again,
// the consumers recreate it from each partition's first entry and report
// that to OnError: every message, the ones acked before included, is
// delivered again and acked, in order.
func TestFaultGroupDestroyedWithPendingEntries(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const P = 4
	st := e.stream(defaultStream, P)
	o := func(name string) workerOpts { return workerOpts{name: name, work: 5 * time.Millisecond} }
	ws := []*worker{e.startWorker(o("w1")), e.startWorker(o("w2"))}
	e.waitBalanced(st.Name(), P, ws...)
	idle := commandRate(t, e.rdb, time.Second)
	prod := e.startProducer(st, 40, 1000, 20, 5*time.Millisecond)
	prod.finish(t)
	pending := 0
	poll(t, hang, 5*time.Millisecond, func() bool {
		pending = 0
		for p := range P {
			n, err := e.rdb.XPending(ctx, e.keys.Partition(st.Name(), p), defaultGroup).Result()
			if err == nil {
				pending += int(n.Count)
			}
		}
		return pending > 0
	}, "the consumers never held pending messages")
	for p := range P {
		if err := e.rdb.XGroupDestroy(ctx, e.keys.Partition(st.Name(), p), defaultGroup).Err(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("group destroyed with %d messages pending", pending)
	poll(t, hang, 50*time.Millisecond, func() bool { return len(reported("consumer group missing", ws...)) == P },
		"not every partition's missing group was reported: %v", lazy(func() string { return fmt.Sprint(reported("consumer group missing", ws...)) }))
	e.noGroupFor(st.Name(), defaultGroup, P, 20*testHeartbeat)
	checkNoBusySpin(t, e.rdb, idle, 1.5, "XGROUP DESTROY")
	stopAll(t, ws...)

	vs := []*worker{e.startWorker(o("v1")), e.startWorker(o("v2"))}
	e.waitBalanced(st.Name(), P, vs...)
	recreated := false
	for _, w := range vs {
		for _, l := range w.BackgroundErrors() {
			recreated = recreated || strings.Contains(l, "created again from their first entry") && strings.Contains(l, "consumer group missing")
		}
	}
	if !recreated {
		t.Error("the group recreated on registration was not reported to OnError with ErrGroupNotFound")
	}
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, vs...)
	// Before: what was delivered kept its order and owner; the rest was
	// left to the recreated group.
	opts := invariant.Options{MaxProcessingTime: 10 * time.Second, AllowLoss: func(string) bool { return true }}
	e.checkLog("before the destroy", e.eventsBy(st.Name(), defaultGroup, []string{"w1", "w2"}, prod), opts)
	opts = invariant.Options{MaxProcessingTime: 10 * time.Second, RequireAllAcked: true}
	evs := e.eventsBy(st.Name(), defaultGroup, []string{"v1", "v2"}, prod)
	e.checkLog("after the destroy", evs, opts)
	if s := invariant.Summarize(evs); s.Messages != 1000 {
		t.Fatalf("%d of the 1000 messages delivered by the recreated group", s.Messages)
	}
	e.logFigures(evs, opts, vs, nil, nil)
}

// The Redis consumer entry of a live consumer is deleted (XGROUP
// DELCONSUMER) while it holds pending messages: Redis drops them from the
// pending list. The consumer goes on: it acks what it holds (an ack of a
// message no longer pending does no harm), Redis recreates its entry at
// its next read, and nothing is lost or reordered.
func TestFaultConsumerEntryDeletedWithPendingEntries(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const P = 4
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 40, 0, 10, 10*time.Millisecond)
	w1 := e.startWorker(workerOpts{name: "w1", work: time.Millisecond})
	w2 := e.startWorker(workerOpts{name: "w2", work: 10 * time.Millisecond})
	e.waitBalanced(st.Name(), P, w1, w2)
	prod.waitSent(t, 500)
	deleted := int64(0)
	poll(t, hang, 5*time.Millisecond, func() bool {
		for p := range P {
			n, err := e.rdb.XGroupDelConsumer(ctx, e.keys.Partition(st.Name(), p), defaultGroup, "w2").Result()
			if err == nil {
				deleted += n
			}
		}
		return deleted > 0
	}, "w2 never held pending messages")
	t.Logf("XGROUP DELCONSUMER dropped %d pending messages of w2", deleted)
	prod.waitSent(t, int(prod.sent.Load())+500)
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, w1, w2)
	opts := invariant.Options{MaxProcessingTime: 10 * time.Second}
	evs := e.checkWith(st.Name(), defaultGroup, opts, prod)
	e.logFigures(evs, opts, []*worker{w1, w2}, nil, nil)
}

// A consumer dies holding pending messages; then some of them are deleted
// from the stream (XDEL) and the oldest entries of another partition
// trimmed away (XTRIM), pending ones among them. The next owner claims
// the pending list: Redis tells it which entries are gone, and it reports
// each of them (Stats().Trimmed, an error log line with the count),
// never delivering or acking them; everything else is delivered and
// acked.
func TestFaultPendingEntriesTrimmedOrDeleted(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const P = 2
	st := e.stream(defaultStream, P)
	// The victim never acks (every batch is left unacked) and has a long
	// maxProcessingTime: all it reads stays pending.
	victim := e.startWorker(workerOpts{name: "w1", noAck: 1, maxProc: time.Minute})
	e.waitBalanced(st.Name(), P, victim)
	prod := e.startProducer(st, 20, 400, 20, 5*time.Millisecond)
	prod.finish(t)
	poll(t, hang, 20*time.Millisecond, func() bool {
		n := 0
		for _, ids := range e.pendingOf(st.Name(), defaultGroup, "w1", P) {
			n += len(ids)
		}
		return n == 400
	}, "the victim never held all 400 messages")
	victim.kill()
	pending := e.pendingOf(st.Name(), defaultGroup, "w1", P)
	gone := map[string]bool{}
	k0 := e.keys.Partition(st.Name(), 0)
	for _, id := range pending[0][10:20] { // 10 of partition 0
		if err := e.rdb.XDel(ctx, k0, id).Err(); err != nil {
			t.Fatal(err)
		}
		gone["0/"+id] = true
	}
	k1 := e.keys.Partition(st.Name(), 1)
	n1, _ := e.rdb.XLen(ctx, k1).Result()
	if err := e.rdb.XTrimMaxLen(ctx, k1, n1-25).Err(); err != nil { // the 25 oldest of partition 1
		t.Fatal(err)
	}
	for _, id := range pending[1][:25] {
		gone["1/"+id] = true
	}
	w2 := e.startWorker(workerOpts{name: "w2"})
	e.waitBalanced(st.Name(), P, w2)
	poll(t, hang, 20*time.Millisecond, func() bool { return w2.Stats(st.Name())["trimmed"] >= 35 },
		"the new owner did not report the 35 pending messages gone (stats: %v)", lazy(func() string { return fmt.Sprint(w2.Stats(st.Name())) }))
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, w2)
	if n := w2.Stats(st.Name())["trimmed"]; n != 35 {
		t.Errorf("Stats().Trimmed = %d, want the 35 pending messages deleted or trimmed", n)
	}
	logged := 0
	for _, m := range regexp.MustCompile(`"msg":"pending messages were trimmed by retention before they were acked: lost"[^\n]*"count":(\d+)`).FindAllStringSubmatch(w2.sdkLog(), -1) {
		n, _ := strconv.Atoi(m[1])
		logged += n
	}
	if logged != 35 {
		t.Errorf("the SDK logged %d lost pending messages, want 35", logged)
	}
	evs := e.events(st.Name(), defaultGroup, prod)
	for _, ev := range evs {
		if ev.Kind != invariant.KindSent && ev.Consumer == "w2" && gone[strconv.Itoa(ev.Partition)+"/"+ev.ID] {
			t.Errorf("the new owner's %s of %s, an entry gone from the stream", ev.Kind, ev.ID)
		}
	}
	opts := invariant.Options{MaxProcessingTime: time.Minute, RequireAllAcked: true,
		AllowLoss: func(id string) bool { return gone["0/"+id] || gone["1/"+id] }}
	e.checkLog("the log", evs, opts)
	e.logFigures(evs, opts, []*worker{victim, w2}, nil, nil)
}

// sendRaw appends entries to partition p with XADD (another tool's,
// malformed) and records them as sent, with no key (the SDK delivers
// poison entries without one).
func (e *env) sendRaw(st *segmenter.Stream, p int, rec *invariant.Recorder, fields ...[]any) []string {
	e.t.Helper()
	var ids []string
	for _, f := range fields {
		id, err := e.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: e.keys.Partition(st.Name(), p), Values: f}).Result()
		if err != nil {
			e.t.Fatal(err)
		}
		rec.Sent(id, p, "")
		ids = append(ids, id)
	}
	return ids
}

// Malformed entries reach the partitions: entries another tool wrote
// (no format version, an unknown one, no key, no data), a 100 MB message,
// and a key of the wrong type at a partition's name. Poison entries are
// delivered in order, counted and reported, never stall their partition
// and never crash a consumer; the 100 MB message is delivered and acked
// like any other; a partition whose key is not a stream gives clear
// errors (to the producer, to the consumer's reads, to a registration),
// and the other partitions go on.
func TestFaultMalformedEntries(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const P = 4
	st := e.stream(defaultStream, P)
	ws := []*worker{e.startWorker(workerOpts{name: "w1"}), e.startWorker(workerOpts{name: "w2", mode: "run"})}
	e.waitBalanced(st.Name(), P, ws...)

	// Poison among good messages, in every partition.
	prod := e.startProducer(st, 40, 400, 20, 5*time.Millisecond)
	raw := invariant.NewRecorder()
	poison := 0
	for p := range P {
		poison += len(e.sendRaw(st, p, raw,
			[]any{"foo", "bar"},
			[]any{"v", "9", "k", "key", "d", "data"},
			[]any{"v", "1", "d", "no key"},
			[]any{"v", "1", "k", "no data"}))
	}
	prod.finish(t)
	e.waitAllAcked(st, defaultGroup)
	poll(t, hang, 20*time.Millisecond, func() bool {
		n := uint64(0)
		for _, w := range ws {
			n += w.Stats(st.Name())["poison"]
		}
		return n == uint64(poison)
	}, "the consumers did not count the %d poison entries", poison)

	// A 100 MB message.
	big := make([]byte, 100<<20)
	for i := range big {
		big[i] = byte('a' + i%26)
	}
	bigRec := invariant.NewRecorder()
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	id, err := st.Send(sctx, &contracts.PMessage{PartitionKey: "big", Data: big})
	cancel()
	if err != nil {
		t.Fatalf("sending 100 MB: %v", err)
	}
	bigRec.Sent(id, st.PartitionOf("big"), "big")
	after := e.startProducer(st, 40, 200, 20, 5*time.Millisecond)
	after.finish(t)
	e.waitAllAcked(st, defaultGroup)

	// A string where partition 3's stream was.
	const bad = 3
	idle := commandRate(t, e.rdb, time.Second)
	key := e.keys.Partition(st.Name(), bad)
	if err := e.rdb.Del(ctx, key).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.Set(ctx, key, "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Send(ctx, &contracts.PMessage{PartitionKey: keyOf(t, st, bad), Data: []byte("x")}); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Errorf("a send to a partition that is not a stream: %v, want WRONGTYPE", err)
	}
	if _, err := e.seg.RegisterConsumer(ctx, st.Name(), "other", 10, time.Minute); err == nil ||
		!strings.Contains(err.Error(), "WRONGTYPE") || !strings.Contains(err.Error(), "partition 3") {
		t.Errorf("registering a group on a stream with a partition that is not a stream: %v, want WRONGTYPE naming partition 3", err)
	}
	var keys []string
	for i := 0; len(keys) < 30; i++ {
		if k := "g" + strconv.Itoa(i); st.PartitionOf(k) != bad {
			keys = append(keys, k)
		}
	}
	good := invariant.NewRecorder()
	for i := range 300 {
		k := keys[i%len(keys)]
		id, err := st.Send(ctx, &contracts.PMessage{PartitionKey: k, Data: []byte(strconv.Itoa(i))})
		if err != nil {
			t.Fatal(err)
		}
		good.Sent(id, st.PartitionOf(k), k)
	}
	goodProd := &producer{st: st, rec: good}
	poll(t, hang, 50*time.Millisecond, func() bool { return reported("WRONGTYPE", ws...)[bad] },
		"no consumer reported partition %d's key of the wrong type", bad)
	// The partition's fetch fails at every round (and the watcher's wait):
	// more commands, a bounded number.
	checkNoBusySpin(t, e.rdb, idle, 3, "a key of the wrong type at a partition's name")
	// The other partitions went on.
	if err := e.rdb.Del(ctx, key).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.XGroupCreateMkStream(ctx, key, defaultGroup, "0").Err(); err != nil {
		t.Fatal(err)
	}
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, ws...)

	evs := append(e.events(st.Name(), defaultGroup, prod, after, goodProd), append(raw.Events(), bigRec.Events()...)...)
	opts := invariant.Options{MaxProcessingTime: 10 * time.Second, RequireAllAcked: true}
	e.checkLog("the log", evs, opts)
	s := invariant.Summarize(evs)
	if want := 400 + poison + 1 + 200 + 300; s.Messages != want {
		t.Fatalf("%d messages delivered, want %d", s.Messages, want)
	}
	e.logFigures(evs, opts, ws, nil, nil)
}

// keyOf returns a partition key that st maps to partition p.
func keyOf(t *testing.T, st *segmenter.Stream, p int) string {
	t.Helper()
	for i := range 100000 {
		if k := "p" + strconv.Itoa(i); st.PartitionOf(k) == p {
			return k
		}
	}
	t.Fatalf("no key for partition %d", p)
	return ""
}

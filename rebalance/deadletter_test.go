package rebalance_test

import (
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/rebalance"
)

// dlq is the fixture's dead-letter stream: same hash slot as its partition.
func (f fixture) dlq() string { return f.stream + ":dlq" }

func (f fixture) deadLetter(owner string, epoch int64, id, reason string, deliveries int64) rebalance.DeadLetterResult {
	return rebalance.DeadLetter(f.ctx, f.rdb, owner, f.group, []rebalance.DeadLetterRequest{{
		LeaseKey: f.lease, StreamKey: f.stream, DLQKey: f.dlq(), Epoch: epoch,
		ID: id, Reason: reason, Deliveries: deliveries,
	}})[0]
}

func (f fixture) pending(t *testing.T) []string {
	t.Helper()
	p, err := f.rdb.XPendingExt(f.ctx, &redis.XPendingExtArgs{Stream: f.stream, Group: f.group, Start: "-", End: "+", Count: 1000}).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(p))
	for i, e := range p {
		out[i] = e.ID
	}
	return out
}

func (f fixture) deadLetters(t *testing.T) []redis.XMessage {
	t.Helper()
	msgs, err := f.rdb.XRange(f.ctx, f.dlq(), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

func TestDeadLetterMovesAndAcks(t *testing.T) {
	f := newFixture(t)
	sent := f.add(t, 3)
	a := f.acquire(t, "A", time.Minute)
	f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour)

	before, err := f.rdb.Time(f.ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	r := f.deadLetter("A", a.Epoch, sent[1], "handler failed", 4)
	if r.Err != nil || r.Fenced || r.Missing || r.NotPending || r.DeadLetterID == "" {
		t.Fatalf("dead letter: %+v", r)
	}
	if got := f.pending(t); !slices.Equal(got, []string{sent[0], sent[2]}) {
		t.Fatalf("pending after the move: %v, want %v", got, []string{sent[0], sent[2]})
	}
	dl := f.deadLetters(t)
	if len(dl) != 1 || dl[0].ID != r.DeadLetterID {
		t.Fatalf("dead letters %v, want one with ID %s", dl, r.DeadLetterID)
	}
	want := map[string]any{
		"n":              "1", // the original field, verbatim
		"dlq.id":         sent[1],
		"dlq.reason":     "handler failed",
		"dlq.deliveries": "4",
		"dlq.group":      f.group,
	}
	for k, v := range want {
		if dl[0].Values[k] != v {
			t.Errorf("dead letter field %s = %v, want %v", k, dl[0].Values[k], v)
		}
	}
	at, err := strconv.ParseInt(dl[0].Values["dlq.at"].(string), 10, 64)
	if err != nil || at < before.UnixMilli() || at > before.UnixMilli()+60_000 {
		t.Fatalf("dlq.at = %v, want the server time (about %d)", dl[0].Values["dlq.at"], before.UnixMilli())
	}

	// A retry (the reply was lost) finds it no longer pending: no second copy.
	if r := f.deadLetter("A", a.Epoch, sent[1], "handler failed", 4); !r.NotPending || r.DeadLetterID != "" {
		t.Fatalf("second move: %+v, want NotPending", r)
	}
	// Deliveries 0 takes the group's delivery count.
	if r := f.deadLetter("A", a.Epoch, sent[2], "poison", 0); r.DeadLetterID == "" {
		t.Fatalf("move of %s: %+v", sent[2], r)
	}
	if dl := f.deadLetters(t); len(dl) != 2 || dl[1].Values["dlq.deliveries"] != "1" {
		t.Fatalf("dead letters %v, want a second one with 1 delivery", dl)
	}
}

func TestDeadLetterIsFenced(t *testing.T) {
	f := newFixture(t)
	sent := f.add(t, 2)
	a := f.acquire(t, "A", time.Minute)
	f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour)
	for _, c := range []struct {
		owner string
		epoch int64
	}{{"A", a.Epoch - 1}, {"A", a.Epoch + 1}, {"B", a.Epoch}} {
		if r := f.deadLetter(c.owner, c.epoch, sent[0], "x", 1); !r.Fenced || r.Err != nil || r.DeadLetterID != "" {
			t.Fatalf("dead letter by %s under epoch %d (lease: A, %d): %+v", c.owner, c.epoch, a.Epoch, r)
		}
	}
	if got := f.pending(t); !slices.Equal(got, sent) {
		t.Fatalf("a fenced move changed the pending list: %v", got)
	}
	if dl := f.deadLetters(t); len(dl) != 0 {
		t.Fatalf("a fenced move wrote dead letters: %v", dl)
	}
}

func TestDeadLetterOfTrimmedEntryOnlyAcks(t *testing.T) {
	f := newFixture(t)
	sent := f.add(t, 2)
	a := f.acquire(t, "A", time.Minute)
	f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour)
	// Retention trims the pending entry before it is dead-lettered.
	if err := f.rdb.XDel(f.ctx, f.stream, sent[0]).Err(); err != nil {
		t.Fatal(err)
	}
	r := f.deadLetter("A", a.Epoch, sent[0], "x", 1)
	if !r.Missing || r.Err != nil || r.Fenced || r.DeadLetterID != "" {
		t.Fatalf("dead letter of a trimmed entry: %+v, want Missing", r)
	}
	if got := f.pending(t); !slices.Equal(got, sent[1:]) {
		t.Fatalf("pending %v, want %v", got, sent[1:])
	}
	if dl := f.deadLetters(t); len(dl) != 0 {
		t.Fatalf("dead letters %v, want none", dl)
	}
}

func TestDeadLetterOnMissingGroupIsNOGROUP(t *testing.T) {
	f := newFixture(t)
	sent := f.add(t, 1)
	a := f.acquire(t, "A", time.Minute)
	if err := f.rdb.XGroupDestroy(f.ctx, f.stream, f.group).Err(); err != nil {
		t.Fatal(err)
	}
	r := f.deadLetter("A", a.Epoch, sent[0], "x", 1)
	if r.Err == nil || !redis.HasErrorPrefix(r.Err, "NOGROUP") {
		t.Fatalf("dead letter without the group: %+v, want a NOGROUP error", r)
	}
	if dl := f.deadLetters(t); len(dl) != 0 {
		t.Fatalf("dead letters %v, want none", dl)
	}
}

func TestRedriveTargetsTheGroup(t *testing.T) { bothPaths(t, testRedriveTargetsTheGroup) }

func testRedriveTargetsTheGroup(t *testing.T) {
	f := newFixture(t)
	sent := f.add(t, 3)
	a := f.acquire(t, "A", time.Minute)
	f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour)
	var dead []string
	for _, id := range sent[:2] {
		r := f.deadLetter("A", a.Epoch, id, "x", 1)
		if r.DeadLetterID == "" {
			t.Fatalf("move of %s: %+v", id, r)
		}
		dead = append(dead, r.DeadLetterID)
	}
	res := rebalance.Redrive(f.ctx, f.rdb, f.group, []rebalance.RedriveRequest{{
		StreamKey: f.stream, DLQKey: f.dlq(), IDs: []string{dead[1], "1-1", dead[0]},
	}})[0]
	if res.Err != nil || len(res.NewIDs) != 3 || res.NewIDs[0] == "" || res.NewIDs[1] != "" || res.NewIDs[2] == "" {
		t.Fatalf("redrive: %+v, want new IDs for the two dead letters and \"\" for the unknown one", res)
	}
	if dl := f.deadLetters(t); len(dl) != 0 {
		t.Fatalf("dead letters left after the redrive: %v", dl)
	}
	all, err := f.rdb.XRange(f.ctx, f.stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	// At the end of the partition, in the order asked: the marker first,
	// then the original fields.
	if len(all) != 5 || all[3].ID != res.NewIDs[0] || all[4].ID != res.NewIDs[2] {
		t.Fatalf("partition %v, want the re-driven entries %s and %s at its end", all, res.NewIDs[0], res.NewIDs[2])
	}
	for i, id := range []string{res.NewIDs[0], res.NewIDs[2]} {
		want := []string{rebalance.FieldRedriveTo, f.group, "n", strconv.Itoa(1 - i)}
		if got := f.fields(t, f.stream, id); !slices.Equal(got, want) {
			t.Fatalf("re-driven entry %s has fields %q, want %q", id, got, want)
		}
	}

	// The group reads them without the marker.
	got := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour)
	if !slices.Equal(ids(got), []string{res.NewIDs[0], res.NewIDs[2]}) {
		t.Fatalf("the group read %v, want the re-driven %v", ids(got), []string{res.NewIDs[0], res.NewIDs[2]})
	}
	for i, e := range got.Entries {
		if want := []string{"n", strconv.Itoa(1 - i)}; !slices.Equal(e.Fields, want) {
			t.Fatalf("the group read %s with fields %q, want %q", e.ID, e.Fields, want)
		}
	}

	// Dead-lettered and re-driven again: still one marker, first.
	r := f.deadLetter("A", a.Epoch, res.NewIDs[0], "again", 1)
	res2 := rebalance.Redrive(f.ctx, f.rdb, f.group, []rebalance.RedriveRequest{{StreamKey: f.stream, DLQKey: f.dlq(), IDs: []string{r.DeadLetterID}}})[0]
	if res2.Err != nil || res2.NewIDs[0] == "" {
		t.Fatalf("second redrive: %+v", res2)
	}
	want := []string{rebalance.FieldRedriveTo, f.group, "n", "1"}
	if got := f.fields(t, f.stream, res2.NewIDs[0]); !slices.Equal(got, want) {
		t.Fatalf("twice re-driven entry has fields %q, want %q", got, want)
	}
}

// fields returns the fields of entry id of stream key as name, value pairs,
// in their order.
func (f fixture) fields(t *testing.T, key, id string) []string {
	t.Helper()
	msgs, err := f.rdb.Do(f.ctx, "XRANGE", key, id, id).Slice()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("XRANGE %s %s: %v %v", key, id, msgs, err)
	}
	pair, _ := msgs[0].([]any)
	if len(pair) != 2 {
		t.Fatalf("XRANGE %s %s: entry %v", key, id, msgs[0])
	}
	raw, _ := pair[1].([]any)
	out := make([]string, len(raw))
	for i, v := range raw {
		out[i] = fmt.Sprint(v)
	}
	return out
}

// withGroup returns a fixture for another group (and lease) of the same
// partition, created at the start of the partition.
func (f fixture) withGroup(t *testing.T, group string) fixture {
	t.Helper()
	o := f
	o.group, o.lease = group, f.lease+":"+group
	if err := f.rdb.XGroupCreate(f.ctx, f.stream, group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	return o
}

// redriveOne dead-letters entry id (delivered to the fixture's group under
// epoch) and re-drives it, and returns its new ID.
func (f fixture) redriveOne(t *testing.T, owner string, epoch int64, id string) string {
	t.Helper()
	r := f.deadLetter(owner, epoch, id, "x", 1)
	if r.DeadLetterID == "" {
		t.Fatalf("move of %s: %+v", id, r)
	}
	res := rebalance.Redrive(f.ctx, f.rdb, f.group, []rebalance.RedriveRequest{{StreamKey: f.stream, DLQKey: f.dlq(), IDs: []string{r.DeadLetterID}}})[0]
	if res.Err != nil || res.NewIDs[0] == "" {
		t.Fatalf("redrive of %s: %+v", id, res)
	}
	return res.NewIDs[0]
}

func TestRedrivenPoisonEntryGoesToItsGroupOnly(t *testing.T) {
	bothPaths(t, testRedrivenPoisonEntryGoesToItsGroupOnly)
}

func testRedrivenPoisonEntryGoesToItsGroupOnly(t *testing.T) {
	f := newFixture(t)
	other := f.withGroup(t, "other")
	// An entry another tool wrote (no format version), with fields of its
	// own named like segmenter's: to, and dlq.* not at the end.
	orig := []string{"to", "someone", "dlq.note", "mine", "a", "1"}
	vals := make([]any, len(orig))
	for i, v := range orig {
		vals[i] = v
	}
	id, err := f.rdb.XAdd(f.ctx, &redis.XAddArgs{Stream: f.stream, Values: vals}).Result()
	if err != nil {
		t.Fatal(err)
	}
	a := f.acquire(t, "A", time.Minute)
	if got := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour); !slices.Equal(ids(got), []string{id}) {
		t.Fatalf("fetch returned %v, want the foreign entry %s", ids(got), id)
	}
	b := other.acquire(t, "B", time.Minute)
	if got := other.fetch(t, "B", b.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour); !slices.Equal(ids(got), []string{id}) {
		t.Fatalf("the other group's fetch returned %v, want the foreign entry %s", ids(got), id)
	}
	if n, err := f.rdb.XAck(f.ctx, f.stream, other.group, id).Result(); err != nil || n != 1 {
		t.Fatalf("ack by the other group: %d %v", n, err)
	}

	// Re-driven for the fixture's group: the marker, then its fields verbatim.
	redriven := f.redriveOne(t, "A", a.Epoch, id)
	if got, want := f.fields(t, f.stream, redriven), append([]string{rebalance.FieldRedriveTo, f.group}, orig...); !slices.Equal(got, want) {
		t.Fatalf("re-driven poison entry has fields %q, want %q", got, want)
	}

	// The other group skips it (acknowledged, never delivered) and reads on.
	after := f.add(t, 1)[0]
	if got := other.fetch(t, "B", b.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour); !slices.Equal(ids(got), []string{after}) {
		t.Fatalf("the other group's fetch returned %v, want only %s (not the re-driven %s)", ids(got), after, redriven)
	}
	if got := other.pending(t); !slices.Equal(got, []string{after}) {
		t.Fatalf("the other group has %v pending, want only %s", got, after)
	}

	// The group gets it with its original fields, when read and when claimed.
	for _, req := range []rebalance.FetchRequest{{Count: 10}, {Count: 10, Cursor: "0-0"}} {
		got := f.fetch(t, "A", a.Epoch, req, time.Hour)
		if !slices.Equal(ids(got), []string{redriven, after}) {
			t.Fatalf("fetch %+v returned %v, want %s then %s", req, ids(got), redriven, after)
		}
		if !slices.Equal(got.Entries[0].Fields, orig) {
			t.Fatalf("fetch %+v returned the re-driven entry with fields %q, want %q", req, got.Entries[0].Fields, orig)
		}
	}
}

func TestFetchRecognisesTheMarkerFirstOnly(t *testing.T) {
	bothPaths(t, testFetchRecognisesTheMarkerFirstOnly)
}

func testFetchRecognisesTheMarkerFirstOnly(t *testing.T) {
	f := newFixture(t)
	add := func(fields ...any) string {
		t.Helper()
		id, err := f.rdb.XAdd(f.ctx, &redis.XAddArgs{Stream: f.stream, Values: fields}).Result()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	m := rebalance.FieldRedriveTo
	skipped := []string{
		add(m, "other", "foo", "bar"),                // poison, for another group
		add(m, "other", "v", "1", "k", "x", "d", ""), // segmenter's, for another group
		add(m, "other"),                              // nothing but the marker
	}
	mine := add(m, f.group, "foo", "bar")
	notMarked := add("foo", "bar", m, "other") // the name elsewhere: not a marker
	a := f.acquire(t, "A", time.Minute)
	got := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour)
	if !slices.Equal(ids(got), []string{mine, notMarked}) {
		t.Fatalf("fetch returned %v, want %s and %s (skipped: %v)", ids(got), mine, notMarked, skipped)
	}
	if want := []string{"foo", "bar"}; !slices.Equal(got.Entries[0].Fields, want) {
		t.Fatalf("entry re-driven for the group has fields %q, want %q", got.Entries[0].Fields, want)
	}
	if want := []string{"foo", "bar", m, "other"}; !slices.Equal(got.Entries[1].Fields, want) {
		t.Fatalf("unmarked entry has fields %q, want %q", got.Entries[1].Fields, want)
	}
	if p := f.pending(t); !slices.Equal(p, []string{mine, notMarked}) {
		t.Fatalf("pending %v, want %s and %s (the skipped ones acked)", p, mine, notMarked)
	}
}

func TestRedriveDropsAnEarlierVersionsMarker(t *testing.T) {
	f := newFixture(t)
	// A letter of an entry re-driven by an earlier version (to = group
	// last), dead-lettered again.
	if err := f.rdb.XAdd(f.ctx, &redis.XAddArgs{Stream: f.dlq(), Values: []any{
		"v", "1", "k", "key", "d", "data", rebalance.FieldTo, f.group,
		"dlq.id", "1-0", "dlq.reason", "r", "dlq.deliveries", "1", "dlq.group", f.group, "dlq.at", "1"}}).Err(); err != nil {
		t.Fatal(err)
	}
	dl := f.deadLetters(t)
	res := rebalance.Redrive(f.ctx, f.rdb, f.group, []rebalance.RedriveRequest{{StreamKey: f.stream, DLQKey: f.dlq(), IDs: []string{dl[0].ID}}})[0]
	if res.Err != nil || res.NewIDs[0] == "" {
		t.Fatalf("redrive: %+v", res)
	}
	want := []string{rebalance.FieldRedriveTo, f.group, "v", "1", "k", "key", "d", "data"}
	if got := f.fields(t, f.stream, res.NewIDs[0]); !slices.Equal(got, want) {
		t.Fatalf("re-driven entry has fields %q, want %q", got, want)
	}
}

func TestRedriveOnMissingGroupMovesNothing(t *testing.T) {
	f := newFixture(t)
	if err := f.rdb.XAdd(f.ctx, &redis.XAddArgs{Stream: f.dlq(), Values: []any{"n", "0", "dlq.id", "1-0"}}).Err(); err != nil {
		t.Fatal(err)
	}
	dl := f.deadLetters(t)
	if err := f.rdb.XGroupDestroy(f.ctx, f.stream, f.group).Err(); err != nil {
		t.Fatal(err)
	}
	res := rebalance.Redrive(f.ctx, f.rdb, f.group, []rebalance.RedriveRequest{{StreamKey: f.stream, DLQKey: f.dlq(), IDs: []string{dl[0].ID}}})[0]
	if res.Err == nil || !redis.HasErrorPrefix(res.Err, "NOGROUP") || res.NewIDs[0] != "" {
		t.Fatalf("redrive without the group: %+v, want NOGROUP", res)
	}
	if n, _ := f.rdb.XLen(f.ctx, f.dlq()).Result(); n != 1 {
		t.Fatalf("%d dead letters left, want 1", n)
	}
	if n, _ := f.rdb.XLen(f.ctx, f.stream).Result(); n != 0 {
		t.Fatalf("%d entries in the partition, want 0", n)
	}
}

// addTo appends an entry, shaped as segmenter writes them (format version
// first), meant for group to only ("" for every group).
func (f fixture) addTo(t *testing.T, to string, n int) string {
	t.Helper()
	v := []any{"v", "1", "n", n}
	if to != "" {
		v = append(v, rebalance.FieldTo, to)
	}
	id, err := f.rdb.XAdd(f.ctx, &redis.XAddArgs{Stream: f.stream, Values: v}).Result()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestFetchSkipsEntriesMeantForAnotherGroup(t *testing.T) {
	bothPaths(t, testFetchSkipsEntriesMeantForAnotherGroup)
}

func testFetchSkipsEntriesMeantForAnotherGroup(t *testing.T) {
	f := newFixture(t)
	var mine []string
	for i := range 3 {
		f.addTo(t, "other", 10+i) // a run of entries for another group first
	}
	mine = append(mine, f.addTo(t, f.group, 0))
	f.addTo(t, "other", 13)
	mine = append(mine, f.addTo(t, "", 1))
	a := f.acquire(t, "A", time.Minute)

	// One entry per fetch: the skipped ones leave room, the fetch reads on
	// (the scripts), or says that more may follow at once (native).
	for _, want := range mine {
		r := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 1}, time.Hour)
		for len(r.Entries) == 0 && r.More {
			r = f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 1}, time.Hour)
		}
		if !slices.Equal(ids(r), []string{want}) {
			t.Fatalf("fetch returned %v, want [%s]", ids(r), want)
		}
	}
	if got := f.pending(t); !slices.Equal(got, mine) {
		t.Fatalf("pending %v, want only the group's entries %v (the others acked)", got, mine)
	}
	// Only entries for another group after the last one read: nothing
	// returned, and the wait starts at the last entry skipped.
	last := f.addTo(t, "other", 14)
	r := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 5}, time.Hour)
	if len(r.Entries) != 0 || r.TopID != last {
		t.Fatalf("fetch: %v top %q, want nothing and top %s", ids(r), r.TopID, last)
	}
}

func TestClaimSkipsEntriesMeantForAnotherGroup(t *testing.T) {
	bothPaths(t, testClaimSkipsEntriesMeantForAnotherGroup)
}

func testClaimSkipsEntriesMeantForAnotherGroup(t *testing.T) {
	f := newFixture(t)
	other := f.addTo(t, "other", 0)
	mine := f.addTo(t, "", 1)
	// Read outside the fetch script (as a client before this rule would):
	// the entry for another group is pending in this one.
	if err := f.rdb.XReadGroup(f.ctx, &redis.XReadGroupArgs{Group: f.group, Consumer: "old", Streams: []string{f.stream, ">"}, Count: 10}).Err(); err != nil {
		t.Fatal(err)
	}
	a := f.acquire(t, "A", time.Minute)
	r := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10, Cursor: "0-0"}, time.Hour)
	if !slices.Equal(ids(r), []string{mine}) {
		t.Fatalf("claim returned %v, want [%s] (not %s)", ids(r), mine, other)
	}
	if got := f.pending(t); !slices.Equal(got, []string{mine}) {
		t.Fatalf("pending %v, want [%s]", got, mine)
	}
}

func TestForeignEntryWithToFieldIsNotSkipped(t *testing.T) {
	bothPaths(t, testForeignEntryWithToFieldIsNotSkipped)
}

func testForeignEntryWithToFieldIsNotSkipped(t *testing.T) {
	f := newFixture(t)
	// Another tool's entry that happens to have a "to" field: delivered (as
	// poison, by the SDK), never acked behind the group's back.
	id, err := f.rdb.XAdd(f.ctx, &redis.XAddArgs{Stream: f.stream, Values: []any{rebalance.FieldTo, "someone"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	a := f.acquire(t, "A", time.Minute)
	r := f.fetch(t, "A", a.Epoch, rebalance.FetchRequest{Count: 10}, time.Hour)
	if !slices.Equal(ids(r), []string{id}) {
		t.Fatalf("fetch returned %v, want the foreign entry %s", ids(r), id)
	}
}

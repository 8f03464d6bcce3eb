package segmenter_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/keyspace"
	"github.com/segmenter/segmenter/internal/redistest"
)

// twoGroups sets up the operators' scenario: a 4-partition stream with 40
// messages, group "billing" whose consumer read and acked everything, and
// group "audit" whose consumer read one batch of 6 and acked 2 of them (a
// lagging consumer). It returns the consumers, the IDs sent by partition
// and audit's unacked messages.
func twoGroups(t *testing.T, seg *segmenter.Segmenter) (billing, audit *segmenter.Consumer, sent map[int][]string, unacked []*contracts.CMessage) {
	t.Helper()
	ctx := context.Background()
	st, err := seg.RegisterStream(ctx, "orders", 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	msgs := make([]*contracts.PMessage, 40)
	for i := range msgs {
		msgs[i] = msg(fmt.Sprintf("user-%d", i%10), fmt.Sprint(i))
	}
	ids := send(t, st, nil, msgs...)
	sent = make(map[int][]string)
	for i, m := range msgs {
		p := st.PartitionOf(m.PartitionKey)
		sent[p] = append(sent[p], ids[i])
	}
	billing, err = seg.RegisterConsumer(ctx, "orders", "billing", 100, time.Minute, segmenter.WithConsumerName("billing-1"))
	if err != nil {
		t.Fatal(err)
	}
	drain(t, billing, nil, 40, 10*time.Second)
	audit, err = seg.RegisterConsumer(ctx, "orders", "audit", 6, time.Minute, segmenter.WithConsumerName("audit-1"))
	if err != nil {
		t.Fatal(err)
	}
	var got []*contracts.CMessage
	redistest.Eventually(t, 10*time.Second, func() bool {
		m, err := audit.Read(ctx, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m...)
		return len(got) >= 6
	}, "audit never read its batch")
	if len(got) != 6 {
		t.Fatalf("audit read %d messages, want one batch of 6", len(got))
	}
	if err := audit.Ack(ctx, got[:2]...); err != nil {
		t.Fatal(err)
	}
	return billing, audit, sent, got[2:]
}

// groupState is what Redis says of a group on a partition: describing must
// not change it.
func groupState(t *testing.T, rdb *redis.Client, key string) string {
	t.Helper()
	ctx := context.Background()
	gs, err := rdb.XInfoGroups(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := fmt.Sprint(gs)
	for _, g := range gs {
		cs, err := rdb.XInfoConsumers(ctx, key, g.Name).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			out += fmt.Sprintf(" %s:%d", c.Name, c.Pending) // idle times move on their own
		}
		pe, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: key, Group: g.Name, Start: "-", End: "+", Count: 100}).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range pe {
			out += fmt.Sprintf(" %s/%s/%d", e.ID, e.Consumer, e.RetryCount)
		}
	}
	return out
}

func TestDescribeGroupTwoGroupsOneLagging(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := redistest.Client(t)
	seg := newSegmenter(t, ns, rdb)
	billing, audit, sent, unacked := twoGroups(t, seg)
	keys := keyspace.New(ns)
	before := make([]string, 4)
	for p := range before {
		before[p] = groupState(t, rdb, keys.Partition("orders", p))
	}

	dBilling, err := seg.DescribeGroup(ctx, "orders", "billing")
	if err != nil {
		t.Fatal(err)
	}
	d, err := seg.DescribeGroup(ctx, "orders", "audit")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seg.Lag(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	for p := range before {
		if after := groupState(t, rdb, keys.Partition("orders", p)); after != before[p] {
			t.Errorf("partition %d: describing changed the groups:\nbefore %s\nafter  %s", p, before[p], after)
		}
	}

	if dBilling.Lag != 0 || dBilling.Pending != 0 || dBilling.LagUnknown != 0 {
		t.Errorf("billing: lag %d (%d unknown), pending %d; want 0, 0", dBilling.Lag, dBilling.LagUnknown, dBilling.Pending)
	}
	// audit: 6 of 40 delivered, 4 of them pending.
	if d.Stream != "orders" || d.Group != "audit" || d.Generation < 1 {
		t.Errorf("description %s %s generation %d", d.Stream, d.Group, d.Generation)
	}
	if d.Lag != 34 || d.Pending != 4 || d.LagUnknown != 0 || d.DeadLetters != 0 {
		t.Errorf("audit: lag %d (%d unknown), pending %d, dead letters %d; want 34, 4, 0", d.Lag, d.LagUnknown, d.Pending, d.DeadLetters)
	}
	pendingBy := make(map[int][]*contracts.CMessage)
	for _, m := range unacked {
		pendingBy[int(m.Partition)] = append(pendingBy[int(m.Partition)], m)
	}
	epochs := make(map[int]int64)
	for _, o := range audit.Assignment() {
		epochs[o.Partition] = o.Epoch
	}
	if len(d.Partitions) != 4 {
		t.Fatalf("%d partitions described, want 4", len(d.Partitions))
	}
	for _, pd := range d.Partitions {
		p := pd.Partition
		ids := sent[p]
		if pd.Length != int64(len(ids)) || pd.LogEnd != ids[len(ids)-1] {
			t.Errorf("partition %d: length %d, log end %s; want %d, %s", p, pd.Length, pd.LogEnd, len(ids), ids[len(ids)-1])
		}
		delivered := slices.Index(ids, pd.LastDelivered) + 1 // 0 when none
		if pd.LastDelivered != "0-0" && delivered == 0 {
			t.Errorf("partition %d: last delivered %s is not one of its entries", p, pd.LastDelivered)
		}
		if pd.Lag != int64(len(ids)-delivered) {
			t.Errorf("partition %d: lag %d, want %d (delivered up to %s of %d)", p, pd.Lag, len(ids)-delivered, pd.LastDelivered, len(ids))
		}
		if want := pendingBy[p]; pd.Pending != int64(len(want)) {
			t.Errorf("partition %d: pending %d, want %d", p, pd.Pending, len(want))
		} else if len(want) > 0 {
			if pd.OldestPendingID != want[0].Id || pd.OldestPendingDeliveries != 1 {
				t.Errorf("partition %d: oldest pending %s delivered %d times, want %s once", p, pd.OldestPendingID, pd.OldestPendingDeliveries, want[0].Id)
			}
			sentAt := time.UnixMilli(mustMillis(t, want[0].Id))
			if age := d.ServerTime.Sub(sentAt); pd.OldestPendingAge < age-time.Millisecond || pd.OldestPendingAge > age+time.Millisecond {
				t.Errorf("partition %d: oldest pending age %v, want %v (server time less the ID's)", p, pd.OldestPendingAge, age)
			}
		}
		if pd.Owner != "audit-1" || pd.Epoch != epochs[p] || !pd.Held() || pd.LeaseExpiresIn > testSession || pd.AssignedTo != "audit-1" {
			t.Errorf("partition %d: owner %q epoch %d (want audit-1, %d), lease expires in %v, assigned to %q",
				p, pd.Owner, pd.Epoch, epochs[p], pd.LeaseExpiresIn, pd.AssignedTo)
		}
		if pd.GroupMissing {
			t.Errorf("partition %d: group reported missing", p)
		}
	}
	if len(d.Members) != 1 {
		t.Fatalf("members %+v, want audit-1 alone", d.Members)
	}
	m := d.Members[0]
	if m.ID != "audit-1" || !m.Live || m.HeartbeatAge < 0 || m.HeartbeatAge > testSession ||
		m.SessionExpiresIn <= 0 || m.SessionExpiresIn > testSession ||
		!slices.Equal(m.Assigned, []int{0, 1, 2, 3}) || !slices.Equal(m.Leases, []int{0, 1, 2, 3}) {
		t.Errorf("member %+v", m)
	}

	// A dead letter is counted, on its partition.
	if err := audit.DeadLetter(ctx, "test", unacked[0]); err != nil {
		t.Fatal(err)
	}
	d, err = seg.DescribeGroup(ctx, "orders", "audit")
	if err != nil {
		t.Fatal(err)
	}
	if d.DeadLetters != 1 || d.Partitions[unacked[0].Partition].DeadLetters != 1 || d.Pending != 3 {
		t.Errorf("after a dead letter: %d dead letters (partition %d: %d), pending %d; want 1, 1, 3",
			d.DeadLetters, unacked[0].Partition, d.Partitions[unacked[0].Partition].DeadLetters, d.Pending)
	}

	// After Shutdown: no live member, the leases free.
	if err := audit.Ack(ctx, unacked[1:]...); err != nil {
		t.Fatal(err)
	}
	if err := audit.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	d, err = seg.DescribeGroup(ctx, "orders", "audit")
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Members) != 0 {
		t.Errorf("members after Shutdown: %+v", d.Members)
	}
	for _, pd := range d.Partitions {
		if pd.Held() || pd.Owner != "" || pd.Epoch != epochs[pd.Partition] {
			t.Errorf("partition %d after Shutdown: owner %q epoch %d held %v", pd.Partition, pd.Owner, pd.Epoch, pd.Held())
		}
	}
	_ = billing
}

func mustMillis(t *testing.T, id string) int64 {
	t.Helper()
	var ms, seq int64
	if _, err := fmt.Sscanf(id, "%d-%d", &ms, &seq); err != nil {
		t.Fatalf("entry ID %q: %v", id, err)
	}
	return ms
}

func TestDescribeGroupErrors(t *testing.T) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), nil)
	if _, err := seg.RegisterStream(ctx, "s", 2, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := seg.DescribeGroup(ctx, "nope", "g"); !errors.Is(err, segmenter.ErrStreamNotFound) {
		t.Errorf("unknown stream: %v, want ErrStreamNotFound", err)
	}
	if _, err := seg.DescribeGroup(ctx, "s", "g"); !errors.Is(err, segmenter.ErrGroupNotFound) {
		t.Errorf("unknown group: %v, want ErrGroupNotFound", err)
	}
	if _, err := seg.DescribeGroup(ctx, "s", "a:b"); !errors.Is(err, segmenter.ErrInvalidArgument) {
		t.Errorf("bad group name: %v, want ErrInvalidArgument", err)
	}
}

func TestLagPerGroupAndConsumer(t *testing.T) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), nil)
	_, audit, _, unacked := twoGroups(t, seg)
	lags, err := seg.Lag(ctx, "orders")
	if err != nil {
		t.Fatal(err)
	}
	if len(lags) != 2 || lags[0].Group != "audit" || lags[1].Group != "billing" {
		t.Fatalf("lags %+v, want audit then billing", lags)
	}
	a, b := lags[0], lags[1]
	if a.Lag != 34 || a.Pending != 4 || a.LagUnknown != 0 || len(a.Partitions) != 4 {
		t.Errorf("audit: %+v; want lag 34, pending 4", a)
	}
	if b.Lag != 0 || b.Pending != 0 || len(b.Partitions) != 4 {
		t.Errorf("billing: %+v; want lag 0, pending 0", b)
	}
	// The worst partition has the most lag.
	worst := a.Partitions[0]
	for _, p := range a.Partitions {
		if p.Lag > worst.Lag || p.Lag == worst.Lag && p.Pending > worst.Pending {
			worst = p
		}
	}
	if a.Worst != worst.Partition {
		t.Errorf("worst partition %d, want %d (%+v)", a.Worst, worst.Partition, a.Partitions)
	}

	st, err := seg.GetStream(ctx, "orders")
	if err != nil {
		t.Fatal(err)
	}
	viaStream, err := st.Lag(ctx)
	if err != nil || !reflect.DeepEqual(viaStream, lags) {
		t.Errorf("Stream.Lag %+v, %v; want %+v", viaStream, err, lags)
	}

	// The consumer sees the same figures for the partitions it holds.
	mine, err := audit.Lag(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(mine, a.Partitions) {
		t.Errorf("Consumer.Lag %+v, want %+v", mine, a.Partitions)
	}
	if err := audit.Ack(ctx, unacked...); err != nil {
		t.Fatal(err)
	}
	if err := audit.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.Lag(ctx); !errors.Is(err, segmenter.ErrClosed) {
		t.Errorf("Lag after Shutdown: %v, want ErrClosed", err)
	}
}

func TestStreamsLists(t *testing.T) {
	ctx := context.Background()
	seg := newSegmenter(t, redistest.Namespace(t), nil)
	if got, err := seg.Streams(ctx); err != nil || len(got) != 0 {
		t.Fatalf("empty namespace: %+v, %v", got, err)
	}
	_, audit, _, unacked := twoGroups(t, seg)
	if err := audit.Nack(unacked...); err != nil { // else closing waits for them
		t.Fatal(err)
	}
	if _, err := seg.RegisterStream(ctx, "audit-log", 2, 500, segmenter.WithRetention(segmenter.RetentionAcked)); err != nil {
		t.Fatal(err)
	}
	got, err := seg.Streams(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []segmenter.StreamInfo{
		{Name: "audit-log", Partitions: 2, MaxLenPerPartition: 500, Retention: segmenter.RetentionAcked, Partitioner: "murmur2", Groups: []string{}, Length: 0},
		{Name: "orders", Partitions: 4, Retention: segmenter.RetentionMaxLen, Partitioner: "murmur2", Groups: []string{"audit", "billing"}, Length: 40},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Streams:\n got %+v\nwant %+v", got, want)
	}
}

func TestResetGroup(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	rdb := redistest.Client(t)
	seg := newSegmenter(t, ns, rdb)
	_, audit, sent, unacked := twoGroups(t, seg)

	// Refused while the group has a live member, with what makes it live.
	if _, err := seg.ResetGroup(ctx, "orders", "audit", segmenter.ResetEarliest); !errors.Is(err, segmenter.ErrGroupActive) {
		t.Fatalf("reset with a live member: %v, want ErrGroupActive", err)
	}
	// A dry run changes nothing, and says what would move.
	before, _ := seg.DescribeGroup(ctx, "orders", "audit")
	plan, err := seg.ResetGroup(ctx, "orders", "audit", segmenter.ResetLatest, segmenter.ResetDryRun())
	if err != nil {
		t.Fatal(err)
	}
	after, _ := seg.DescribeGroup(ctx, "orders", "audit")
	for p, r := range plan {
		if r.From != before.Partitions[p].LastDelivered || r.To != sent[p][len(sent[p])-1] || r.Cleared != before.Partitions[p].Pending {
			t.Errorf("dry run, partition %d: %+v; described %+v", p, r, before.Partitions[p])
		}
		if after.Partitions[p].LastDelivered != before.Partitions[p].LastDelivered || after.Partitions[p].Pending != before.Partitions[p].Pending {
			t.Errorf("dry run changed partition %d: %+v -> %+v", p, before.Partitions[p], after.Partitions[p])
		}
	}

	if err := audit.Ack(ctx, unacked[:1]...); err != nil {
		t.Fatal(err)
	}
	if err := audit.Nack(unacked[1:]...); err != nil { // they stay pending in Redis
		t.Fatal(err)
	}
	if err := audit.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		to      string
		lag     func(p int) int64
		nextIDs func(p int) []string // what the group reads next
	}{
		{to: segmenter.ResetEarliest, lag: func(p int) int64 { return int64(len(sent[p])) }, nextIDs: func(p int) []string { return sent[p] }},
		{to: segmenter.ResetLatest, lag: func(int) int64 { return 0 }, nextIDs: func(int) []string { return nil }},
	} {
		res, err := seg.ResetGroup(ctx, "orders", "audit", tc.to)
		if err != nil {
			t.Fatalf("reset to %s: %v", tc.to, err)
		}
		d, err := seg.DescribeGroup(ctx, "orders", "audit")
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != 4 {
			t.Fatalf("reset to %s: %+v", tc.to, res)
		}
		for _, pd := range d.Partitions {
			if pd.Lag != tc.lag(pd.Partition) || pd.Pending != 0 || pd.LastDelivered != res[pd.Partition].To {
				t.Errorf("after reset to %s, partition %d: lag %d (want %d), pending %d, last delivered %s (reset says %s)",
					tc.to, pd.Partition, pd.Lag, tc.lag(pd.Partition), pd.Pending, pd.LastDelivered, res[pd.Partition].To)
			}
		}
	}
	// To an ID: the next message of each partition is the first after it.
	mid := sent[0][len(sent[0])/2]
	if _, err := seg.ResetGroup(ctx, "orders", "audit", mid); err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "orders", "audit", 100, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got := drain(t, c, nil, 0, time.Second)
	redistest.Eventually(t, 10*time.Second, func() bool {
		more, err := c.Read(ctx, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Ack(ctx, more...); err != nil {
			t.Fatal(err)
		}
		got = append(got, more...)
		d, err := seg.DescribeGroup(ctx, "orders", "audit")
		return err == nil && d.Lag == 0 && d.Pending == 0
	}, "the group never caught up after the reset")
	var want, gotIDs []string
	for p := range 4 {
		for _, id := range sent[p] {
			if compareIDs(id, mid) > 0 {
				want = append(want, fmt.Sprint(p, "/", id))
			}
		}
	}
	for _, m := range got {
		gotIDs = append(gotIDs, fmt.Sprint(m.Partition, "/", m.Id))
	}
	slices.Sort(want)
	slices.Sort(gotIDs)
	if !slices.Equal(gotIDs, want) {
		t.Errorf("after reset to %s the group read %v, want %v", mid, gotIDs, want)
	}
	// Forced while c runs.
	if _, err := seg.ResetGroup(ctx, "orders", "audit", segmenter.ResetEarliest); !errors.Is(err, segmenter.ErrGroupActive) {
		t.Fatalf("reset with a live member: %v, want ErrGroupActive", err)
	}
	if _, err := seg.ResetGroup(ctx, "orders", "audit", segmenter.ResetEarliest, segmenter.ResetForce()); err != nil {
		t.Fatalf("forced reset: %v", err)
	}
	drain(t, c, nil, 40, 10*time.Second)

	for _, bad := range []string{"", "yesterday", "12"} {
		if _, err := seg.ResetGroup(ctx, "orders", "audit", bad); !errors.Is(err, segmenter.ErrInvalidArgument) {
			t.Errorf("reset to %q: %v, want ErrInvalidArgument", bad, err)
		}
	}
	future := fmt.Sprintf("%d-0", time.Now().Add(time.Hour).UnixMilli())
	if _, err := seg.ResetGroup(ctx, "orders", "audit", future, segmenter.ResetForce()); !errors.Is(err, segmenter.ErrInvalidArgument) {
		t.Errorf("reset to the future: %v, want ErrInvalidArgument", err)
	}
	if _, err := seg.ResetGroup(ctx, "orders", "nope", segmenter.ResetEarliest); !errors.Is(err, segmenter.ErrGroupNotFound) {
		t.Errorf("reset of an unknown group: %v, want ErrGroupNotFound", err)
	}
}

func compareIDs(a, b string) int {
	var ams, aseq, bms, bseq int64
	fmt.Sscanf(a, "%d-%d", &ams, &aseq)
	fmt.Sscanf(b, "%d-%d", &bms, &bseq)
	switch {
	case ams != bms:
		return int(ams - bms)
	default:
		return int(aseq - bseq)
	}
}

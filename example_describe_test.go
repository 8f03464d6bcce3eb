package segmenter_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
)

// exampleLaggingGroup registers a 2-partition stream with 10 messages and a
// consumer of group "audit" that read 4 of them and acked 1.
func exampleLaggingGroup(ctx context.Context) (*segmenter.Segmenter, *segmenter.Consumer) {
	seg, err := segmenter.NewSegmenter(&segmenter.Config{RedisURL: os.Getenv("REDIS_URL"), Namespace: exampleNamespace()})
	if err != nil {
		log.Fatal(err)
	}
	st, err := seg.RegisterStream(ctx, "orders", 2, 0)
	if err != nil {
		log.Fatal(err)
	}
	for i := range 10 {
		if _, err := st.Send(ctx, &contracts.PMessage{PartitionKey: fmt.Sprint("user-", i), Data: []byte("x")}); err != nil {
			log.Fatal(err)
		}
	}
	c, err := seg.RegisterConsumer(ctx, "orders", "audit", 4, time.Minute, segmenter.WithConsumerName("audit-1"))
	if err != nil {
		log.Fatal(err)
	}
	msgs, err := c.Read(ctx, time.Second)
	if err != nil || len(msgs) != 4 {
		log.Fatal(len(msgs), err)
	}
	if err := c.Ack(ctx, msgs[0]); err != nil {
		log.Fatal(err)
	}
	if err := c.Nack(msgs[1:]...); err != nil { // pending in Redis, handed back
		log.Fatal(err)
	}
	return seg, c
}

// The state of one group: its members and, per partition, how far it got,
// what is pending and who holds the lease.
func ExampleSegmenter_DescribeGroup() {
	ctx := context.Background()
	seg, _ := exampleLaggingGroup(ctx)
	defer seg.Close(ctx)

	d, err := seg.DescribeGroup(ctx, "orders", "audit")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("group %s: generation %d, lag %d, pending %d\n", d.Group, d.Generation, d.Lag, d.Pending)
	for _, m := range d.Members {
		fmt.Printf("member %s: live %v, partitions %v, leases %v, heartbeat within the session: %v\n",
			m.ID, m.Live, m.Assigned, m.Leases, m.HeartbeatAge < 10*time.Second)
	}
	for _, p := range d.Partitions {
		fmt.Printf("partition %d: held by %s: %v\n", p.Partition, p.Owner, p.Held())
	}
	// Output:
	// group audit: generation 1, lag 6, pending 3
	// member audit-1: live true, partitions [0 1], leases [0 1], heartbeat within the session: true
	// partition 0: held by audit-1: true
	// partition 1: held by audit-1: true
}

// One line per group: the total lag and the worst partition.
func ExampleSegmenter_Lag() {
	ctx := context.Background()
	seg, _ := exampleLaggingGroup(ctx)
	defer seg.Close(ctx)

	lags, err := seg.Lag(ctx, "orders")
	if err != nil {
		log.Fatal(err)
	}
	for _, g := range lags {
		fmt.Printf("%s: lag %d, pending %d\n", g.Group, g.Lag, g.Pending)
	}
	// Output:
	// audit: lag 6, pending 3
}

// Skip everything a group has not processed yet, once its consumers are
// stopped.
func ExampleSegmenter_ResetGroup() {
	ctx := context.Background()
	seg, c := exampleLaggingGroup(ctx)
	defer seg.Close(ctx)

	_, err := seg.ResetGroup(ctx, "orders", "audit", segmenter.ResetLatest)
	fmt.Println("while a consumer runs:", err != nil)
	if err := c.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	if _, err := seg.ResetGroup(ctx, "orders", "audit", segmenter.ResetLatest); err != nil {
		log.Fatal(err)
	}
	lags, err := seg.Lag(ctx, "orders")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("after the reset: lag %d, pending %d\n", lags[0].Lag, lags[0].Pending)
	// Output:
	// while a consumer runs: true
	// after the reset: lag 0, pending 0
}

// The streams of a namespace.
func ExampleSegmenter_Streams() {
	ctx := context.Background()
	seg, _ := exampleLaggingGroup(ctx)
	defer seg.Close(ctx)

	streams, err := seg.Streams(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range streams {
		fmt.Printf("%s: %d partitions, %d entries, groups %v\n", s.Name, s.Partitions, s.Length, s.Groups)
	}
	// Output:
	// orders: 2 partitions, 10 entries, groups [audit]
}

// A consumer's own partitions: what the metrics adapters export per
// partition.
func ExampleConsumer_Lag() {
	ctx := context.Background()
	seg, c := exampleLaggingGroup(ctx)
	defer seg.Close(ctx)

	lags, err := c.Lag(ctx)
	if err != nil {
		log.Fatal(err)
	}
	var lag, pending int64
	for _, p := range lags {
		lag, pending = lag+p.Lag, pending+p.Pending
	}
	fmt.Printf("%d partitions held: lag %d, pending %d\n", len(lags), lag, pending)
	// Output:
	// 2 partitions held: lag 6, pending 3
}

// Decode an entry read without a consumer group, as a tool that looks at a
// partition does.
func ExampleDecodeEntry() {
	msg, redrivenFor := segmenter.DecodeEntry("orders", 3, "1700000000000-0",
		[]string{"v", "1", "k", "user-42", "d", `{"amount":1200}`, "m.type", "payment"})
	fmt.Println(msg.PartitionKey, string(msg.Data), msg.Metadata["type"], segmenter.Poison(msg) == nil, redrivenFor == "")

	other, _ := segmenter.DecodeEntry("orders", 3, "1700000000001-0", []string{"event", "clicked"})
	fmt.Println(segmenter.Poison(other))
	// Output:
	// user-42 {"amount":1200} payment true true
	// segmenter: poison message: stream "orders" partition 3 entry 1700000000001-0: entry has no format version field: not written by segmenter
}

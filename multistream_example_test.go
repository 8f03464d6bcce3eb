package segmenter_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
)

// From Redis Pub/Sub's PSUBSCRIBE "tasks.*" to a pattern consumer: every
// stream whose name matches, those registered later included, with nothing
// lost while no consumer runs (the messages below are sent before it
// starts) and each key's messages in order.
func ExampleSegmenter_RegisterPatternConsumer() {
	ctx := context.Background()
	seg, err := segmenter.NewSegmenter(&segmenter.Config{RedisURL: os.Getenv("REDIS_URL"), Namespace: exampleNamespace()})
	if err != nil {
		log.Fatal(err)
	}
	defer seg.Close(ctx)

	// Instead of PUBLISH tasks.event.created ...: one stream per event type.
	for _, name := range []string{"tasks.event.created", "tasks.event.updated", "billing.event.created"} {
		st, err := seg.RegisterStream(ctx, name, 4, 100_000)
		if err != nil {
			log.Fatal(err)
		}
		if _, err := st.Send(ctx, &contracts.PMessage{PartitionKey: "task-7", Data: []byte(name)}); err != nil {
			log.Fatal(err)
		}
	}

	// Instead of PSUBSCRIBE tasks.*: a consumer of group "indexer" on every
	// matching stream.
	c, err := seg.RegisterPatternConsumer(ctx, "tasks.*", "indexer", 100, 30*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Shutdown(ctx)

	// A stream registered later is consumed within a heartbeat interval.
	deleted, err := seg.RegisterStream(ctx, "tasks.event.deleted", 4, 100_000)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := deleted.Send(ctx, &contracts.PMessage{PartitionKey: "task-7", Data: []byte("tasks.event.deleted")}); err != nil {
		log.Fatal(err)
	}

	runCtx, stop := context.WithCancel(ctx)
	var mu sync.Mutex
	var got []string
	err = c.Run(runCtx, func(ctx context.Context, m *contracts.CMessage) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, m.Stream+": "+string(m.Data))
		if len(got) == 3 {
			stop()
		}
		return nil
	})
	slices.Sort(got) // the streams are handled concurrently
	for _, g := range got {
		fmt.Println(g)
	}
	fmt.Println("Run returned", err)
	// Output:
	// tasks.event.created: tasks.event.created
	// tasks.event.deleted: tasks.event.deleted
	// tasks.event.updated: tasks.event.updated
	// Run returned <nil>
}

// One consumer over a list of streams, with Read and Ack: a batch holds the
// messages of one stream, and successive Reads take the streams in turn.
func ExampleSegmenter_RegisterMultiConsumer() {
	ctx := context.Background()
	seg, err := segmenter.NewSegmenter(&segmenter.Config{RedisURL: os.Getenv("REDIS_URL"), Namespace: exampleNamespace()})
	if err != nil {
		log.Fatal(err)
	}
	defer seg.Close(ctx)
	for _, name := range []string{"orders", "refunds"} {
		st, err := seg.RegisterStream(ctx, name, 8, 0)
		if err != nil {
			log.Fatal(err)
		}
		for i := 1; i <= 2; i++ {
			if _, err := st.Send(ctx, &contracts.PMessage{PartitionKey: "user-42", Data: fmt.Appendf(nil, "%s %d", name, i)}); err != nil {
				log.Fatal(err)
			}
		}
	}
	c, err := seg.RegisterMultiConsumer(ctx, []string{"orders", "refunds"}, "ledger", 100, 30*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Shutdown(ctx)
	var got []string
	for len(got) < 4 {
		msgs, err := c.Read(ctx, time.Second)
		if err != nil {
			log.Fatal(err)
		}
		for _, m := range msgs {
			got = append(got, string(m.Data))
		}
		if err := c.Ack(ctx, msgs...); err != nil {
			log.Fatal(err)
		}
	}
	slices.Sort(got)
	fmt.Println(got)
	// Output: [orders 1 orders 2 refunds 1 refunds 2]
}

package segmenter_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/google/uuid"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
)

// exampleNamespace keeps each run of the examples apart on a shared server.
func exampleNamespace() string { return "example-" + uuid.NewString()[:8] }

// A producer and a consumer of one group: the handler gets the messages of
// one key in the order they were sent; a nil return acknowledges each.
func Example() {
	ctx := context.Background()
	seg, err := segmenter.NewSegmenter(&segmenter.Config{
		RedisURL:  os.Getenv("REDIS_URL"),
		Namespace: exampleNamespace(),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer seg.Close(ctx)

	st, err := seg.RegisterStream(ctx, "payments", 16, 100_000)
	if err != nil {
		log.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		_, err := st.Send(ctx, &contracts.PMessage{
			PartitionKey: "user-42",
			Data:         fmt.Appendf(nil, "payment %d", i),
		})
		if err != nil {
			log.Fatal(err)
		}
	}

	c, err := seg.RegisterConsumer(ctx, "payments", "billing", 100, 30*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Shutdown(ctx)

	runCtx, stop := context.WithCancel(ctx)
	handled := 0
	err = c.Run(runCtx, func(ctx context.Context, m *contracts.CMessage) error {
		fmt.Printf("%s: %s (delivery %d)\n", m.PartitionKey, m.Data, m.DeliveryCount)
		if handled++; handled == 3 {
			stop() // Run returns once this handler is done
		}
		return nil
	})
	fmt.Println("Run returned", err)
	// Output:
	// user-42: payment 1 (delivery 1)
	// user-42: payment 2 (delivery 1)
	// user-42: payment 3 (delivery 1)
	// Run returned <nil>
}

// Read and Ack give full control over batches; the guarantees are those of
// Run.
func ExampleConsumer_Read() {
	ctx := context.Background()
	seg, err := segmenter.NewSegmenter(&segmenter.Config{
		RedisURL:  os.Getenv("REDIS_URL"),
		Namespace: exampleNamespace(),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer seg.Close(ctx)

	st, err := seg.RegisterStream(ctx, "payments", 16, 100_000)
	if err != nil {
		log.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		_, err := st.Send(ctx, &contracts.PMessage{
			PartitionKey: "user-42",
			Data:         fmt.Appendf(nil, "payment %d", i),
		})
		if err != nil {
			log.Fatal(err)
		}
	}

	c, err := seg.RegisterConsumer(ctx, "payments", "billing", 100, 30*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Shutdown(ctx)
	for received := 0; received < 3; {
		msgs, err := c.Read(ctx, time.Second)
		if errors.Is(err, segmenter.ErrFenced) {
			continue // the partition moved to another consumer; its messages go there
		}
		if err != nil {
			log.Fatal(err)
		}
		for _, m := range msgs {
			fmt.Printf("%s: %s (delivery %d)\n", m.PartitionKey, m.Data, m.DeliveryCount)
		}
		if err := c.Ack(ctx, msgs...); err != nil {
			log.Fatal(err)
		}
		received += len(msgs)
	}
	// Output:
	// user-42: payment 1 (delivery 1)
	// user-42: payment 2 (delivery 1)
	// user-42: payment 3 (delivery 1)
}

// SendBatch sends many messages in one round trip.
func ExampleStream_SendBatch() {
	ctx := context.Background()
	seg, err := segmenter.NewSegmenter(&segmenter.Config{RedisURL: os.Getenv("REDIS_URL"), Namespace: exampleNamespace()})
	if err != nil {
		log.Fatal(err)
	}
	defer seg.Close(ctx)
	st, err := seg.RegisterStream(ctx, "events", 8, 0)
	if err != nil {
		log.Fatal(err)
	}
	ids, err := st.SendBatch(ctx, []*contracts.PMessage{
		{PartitionKey: "device-1", Data: []byte("on")},
		{PartitionKey: "device-2", Data: []byte("on")},
		{PartitionKey: "device-1", Data: []byte("off")},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(ids), "sent; device-1 is on partition", st.PartitionOf("device-1"))
	// Output: 3 sent; device-1 is on partition 2
}

// RegisterStream refuses to change an existing stream.
func ExampleSegmenter_RegisterStream_conflict() {
	ctx := context.Background()
	seg, err := segmenter.NewSegmenter(&segmenter.Config{RedisURL: os.Getenv("REDIS_URL"), Namespace: exampleNamespace()})
	if err != nil {
		log.Fatal(err)
	}
	defer seg.Close(ctx)
	if _, err := seg.RegisterStream(ctx, "orders", 16, 0); err != nil {
		log.Fatal(err)
	}
	_, err = seg.RegisterStream(ctx, "orders", 32, 0)
	fmt.Println(errors.Is(err, segmenter.ErrStreamConflict))
	// Output: true
}

// Poison reports stream entries that segmenter did not write.
func ExamplePoison() {
	m := &contracts.CMessage{Id: "1-0", Stream: "orders", PoisonReason: "entry has no format version field: not written by segmenter"}
	err := segmenter.Poison(m)
	fmt.Println(errors.Is(err, segmenter.ErrPoison))
	// Output: true
}

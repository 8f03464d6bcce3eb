package segmenterpubsub_test

import (
	"context"
	"fmt"
	"log"
	"slices"

	"github.com/google/uuid"
	"gocloud.dev/pubsub"

	_ "github.com/segmenter/segmenter/extra/segmenterpubsub"
)

// exampleNamespace keeps each run of the examples apart on a shared server.
func exampleNamespace() string { return "example-" + uuid.NewString()[:8] }

// Open a topic and a subscription by URL, as with any gocloud.dev/pubsub
// driver: Redis comes from the REDIS_URL environment variable, the
// partition key from the "partition_key" metadata. Moving from a
// redispubsub driver is a change of URL ("redis://orders" and
// "redis://billing?topic=orders" become the URLs below) and of the blank
// import; the messages of one key now arrive in order, to one consumer of
// the group at a time.
func Example_openFromURL() {
	ctx := context.Background()
	ns := exampleNamespace()
	// partitions=16 registers the stream when it does not exist yet.
	topic, err := pubsub.OpenTopic(ctx, "segmenter://"+ns+"/orders?partitions=16")
	if err != nil {
		log.Fatal(err)
	}
	defer topic.Shutdown(ctx)
	sub, err := pubsub.OpenSubscription(ctx, "segmenter://"+ns+"/orders?group=billing")
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Shutdown(ctx)

	for i := 1; i <= 3; i++ {
		err := topic.Send(ctx, &pubsub.Message{
			Body:     fmt.Appendf(nil, "order %d", i),
			Metadata: map[string]string{"partition_key": "user-42"},
		})
		if err != nil {
			log.Fatal(err)
		}
	}
	for range 3 {
		m, err := sub.Receive(ctx)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s (key %s)\n", m.Body, m.Metadata["partition_key"])
		m.Ack()
	}
	// Output:
	// order 1 (key user-42)
	// order 2 (key user-42)
	// order 3 (key user-42)
}

// A subscription over every stream matching a pattern, instead of Redis
// Pub/Sub's PSUBSCRIBE "tasks.*": messages sent while no subscriber runs
// are not lost, and streams registered later are consumed too.
func Example_patternSubscription() {
	ctx := context.Background()
	ns := exampleNamespace()
	sub, err := pubsub.OpenSubscription(ctx, "segmenter://"+ns+"/tasks.*?group=indexer")
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Shutdown(ctx)
	for _, stream := range []string{"tasks.event.created", "tasks.event.updated"} {
		topic, err := pubsub.OpenTopic(ctx, "segmenter://"+ns+"/"+stream+"?partitions=4")
		if err != nil {
			log.Fatal(err)
		}
		if err := topic.Send(ctx, &pubsub.Message{Body: []byte(stream + " of task-7"), Metadata: map[string]string{"partition_key": "task-7"}}); err != nil {
			log.Fatal(err)
		}
		if err := topic.Shutdown(ctx); err != nil {
			log.Fatal(err)
		}
	}
	var got []string
	for range 2 {
		m, err := sub.Receive(ctx)
		if err != nil {
			log.Fatal(err)
		}
		got = append(got, string(m.Body))
		m.Ack()
	}
	slices.Sort(got) // the two streams are read in turn
	fmt.Println(got)
	// Output: [tasks.event.created of task-7 tasks.event.updated of task-7]
}

// The application takes its URLs from its configuration: moving from
// segmenter to Kafka (gocloud.dev/pubsub/kafkapubsub, brokers in
// KAFKA_BROKERS) is a change of the two URLs and of the blank import:
//
//	topic:        segmenter://shop/orders            ->  kafka://orders?key_name=partition_key
//	subscription: segmenter://shop/orders?group=billing  ->  kafka://billing?topic=orders&key_name=partition_key
//
// segmenter's partitioner is Kafka's (murmur2), so a key lands on the same
// partition number in a Kafka topic of as many partitions. kafkapubsub
// cannot nack: keep to Ack when the code must run on both.
func Example_switchToKafka() {
	ctx := context.Background()
	ns := exampleNamespace()
	topicURL := "segmenter://" + ns + "/orders?partitions=16"        // kafka://orders?key_name=partition_key
	subscriptionURL := "segmenter://" + ns + "/orders?group=billing" // kafka://billing?topic=orders&key_name=partition_key
	if err := process(ctx, topicURL, subscriptionURL); err != nil {
		log.Fatal(err)
	}
	// Output: handled order 1 of user-42
}

// process is application code that knows only the portable API.
func process(ctx context.Context, topicURL, subscriptionURL string) error {
	topic, err := pubsub.OpenTopic(ctx, topicURL)
	if err != nil {
		return err
	}
	defer topic.Shutdown(ctx)
	sub, err := pubsub.OpenSubscription(ctx, subscriptionURL)
	if err != nil {
		return err
	}
	defer sub.Shutdown(ctx)
	err = topic.Send(ctx, &pubsub.Message{Body: []byte("order 1"), Metadata: map[string]string{"partition_key": "user-42"}})
	if err != nil {
		return err
	}
	m, err := sub.Receive(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("handled %s of %s\n", m.Body, m.Metadata["partition_key"])
	m.Ack()
	return nil
}

// Package segmenterpubsub is a gocloud.dev/pubsub driver for segmenter: code
// written against the portable pubsub API sends to and receives from
// segmenter streams, with their guarantees (every message of one partition
// key processed in order, by one consumer of a group at a time, at least
// once), and moves to another broker (Kafka, NATS, a cloud service) by
// changing the URL only.
//
// # URLs
//
// The package registers the scheme "segmenter" on pubsub.DefaultURLMux:
//
//	segmenter://NAMESPACE/STREAM                    a topic: sends to STREAM
//	segmenter://NAMESPACE/STREAM?group=GROUP        a subscription: a consumer of GROUP on STREAM
//	segmenter://NAMESPACE/PATTERN?group=GROUP       a subscription over every stream matching PATTERN
//
// PATTERN is a glob as in Redis' PSUBSCRIBE ("tasks.*"; write ? as %3F in a
// URL): the subscription consumes every matching stream, including streams
// registered later (segmenter.MultiConsumer). Redis is the server of the
// redis_url query parameter, else of the REDIS_URL environment variable
// (URLOpener can set a Segmenter or a Config instead). Query parameters, all
// optional but group:
//
//	both:          redis_url=redis://host:6379/0
//	topics:        key_name=NAME (the metadata key holding the partition key; default "partition_key")
//	               partitions=N, max_len=M (register the stream with N partitions, M entries kept
//	               per partition, when it does not exist; without partitions it must exist)
//	subscriptions: group=GROUP (required), consumer=NAME, batch_size=N (default 100),
//	               max_processing_time=DURATION (default 30s), start=earliest|latest,
//	               max_deliveries=N, poison=dead_letter|deliver (default dead_letter)
//
// An unknown parameter, a bad value or a subscription without group is an
// error naming it.
//
// # Partition keys
//
// A message's partition key is its metadata value under the topic's key
// name ("partition_key" unless key_name or TopicOptions.KeyName says
// otherwise), like kafkapubsub's key_name; the metadata is sent whole, key
// included, and received as sent. A message without the key gets a random
// one: it lands on any partition and has no order relative to other
// messages, like a Kafka message without a key. Messages of one key are
// delivered in the order they were sent (for first deliveries: a message
// nacked or redelivered after maxProcessingTime can come after later ones of
// its key) as long as the application handles a subscription's messages one
// after the other, in the order Receive returns them: the subscription
// fetches with one ReceiveBatch at a time to keep that order.
//
// # Acks and nacks
//
// Message.Ack acknowledges through Consumer.Ack (fenced in Redis: an ack
// from a consumer that lost the partition is dropped, and the message goes
// to the partition's new owner); Message.Nack hands the message back
// (Consumer.Nack), to be received again first. A message neither acked nor
// nacked is received again after max_processing_time. Shutdown hands
// messages received but not acked back, then the partitions over, so the
// group's other consumers take them at once. Call Shutdown while Receive is
// still being called (or with no Receive in flight): a batch that pubsub
// fetched ahead and that comes back when nobody calls Receive any more
// blocks one of pubsub's own goroutines for good (its messages are handed
// back at Shutdown all the same).
//
// # Errors
//
// gcerrors.Code of an error: NotFound for a stream that is not registered
// (segmenter.ErrStreamNotFound) or whose partitions vanished in Redis
// (segmenter.ErrGroupNotFound), InvalidArgument for bad input,
// FailedPrecondition for segmenter.ErrStreamConflict, ErrFenced and
// ErrClosed, PermissionDenied for a Redis ACL refusal, ResourceExhausted for
// a Redis out of memory, Canceled and DeadlineExceeded for a context, Unknown
// for the rest (connection failures, retried by pubsub).
//
// # As
//
//   - Topic: **segmenter.Stream (nil until the first send found the stream),
//     **segmenter.Segmenter.
//   - Subscription: **segmenter.Consumer (one stream; nil until the stream
//     exists), **segmenter.MultiConsumer (a pattern), **segmenter.Segmenter.
//   - Message: **contracts.CMessage (partition, epoch, delivery count, stream).
//   - BeforeSend and AfterSend: **contracts.PMessage (BeforeSend may set its
//     PartitionKey); AfterSend also *string, the entry ID Redis assigned.
//   - ErrorAs: whatever errors.As finds, e.g. **segmenter.PartitionError.
package segmenterpubsub

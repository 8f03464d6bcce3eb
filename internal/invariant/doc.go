// Package invariant records what a test run of segmenter did (every send,
// delivery and ack) and proves the system's invariants over that log.
//
// A Recorder is shared by the producers and consumers of a test. Each Read is
// recorded with Delivered and each Ack with Acked, both with the time just
// before the call (Start) and just after it returned (End): the operation ran
// in Redis at some unknown instant inside [Start, End]. Check reports only
// the violations that are certain whatever those instants were: it never
// reports one that could not have happened. Nacked and ReadError record the
// calls after which a consumer delivers its pending messages again at once;
// Handled records each call of a Run handler (the fetches of Run are
// recorded with Delivered, from a DeliverHook).
//
// The invariants, per partition, for the one consumer group of the log:
//
//   - Order: a Read returns each partition's messages in increasing ID
//     order, and a message is first delivered no earlier than the first
//     delivery of every older message of its partition.
//   - Due: while an older message is due for redelivery (delivered at least
//     MaxProcessingTime ago and not acked), no newer message of its partition
//     is delivered, neither for the first time nor again.
//   - Loss: every sent message is delivered (and, with RequireAllAcked,
//     acked), with the partition key it was sent with.
//   - SingleOwner: operations under an older lease epoch never run after
//     operations under a newer one, and one epoch belongs to one consumer.
//   - StaleDelivery: no Read under an older epoch returns (ends) after a
//     Read under a newer epoch of the partition returned: a consumer that
//     was paused past its lease hands nothing out once the next owner has
//     delivered.
//   - Duplicate: duplicates only of messages that were unacked when
//     ownership moved, or that came due, or that the consumer handed back:
//     each delivery after the first is under a newer epoch than the
//     previous delivery of the message, or at least MaxProcessingTime after
//     it, or follows a Nack, a read error or an ack of unknown outcome of
//     the partition by the consumer.
//   - HandlerOrder: the handler calls of one owner (consumer and epoch) of
//     a partition run one at a time and move on from a message only once a
//     call on it succeeded; the first call of each message follows stream
//     order.
//   - AckedRedelivered: a message acked successfully is never delivered
//     again.
//   - DeliveryCount: delivery counts are at least 1 and go up with every
//     delivery (Redis counts them).
//
// With Options.Order set to OrderByKey, Order, Due and HandlerOrder hold per
// partition key instead of per partition: for consumers that process the
// keys of a partition concurrently (Run with WithKeyConcurrency).
//
// Assumptions the checker relies on:
//
//   - Every Read that returned messages is recorded, each Read as its own
//     Delivered call, including Reads of a test that is about to stop. A
//     delivery that never reached the log (a failed Read, a worker killed
//     between Read and the log write) is noticed only through gaps in
//     DeliveryCount, which the Due and Duplicate checks take into account.
//     End is read right after the call returns: StaleDelivery takes it as
//     the instant the messages reached the application.
//   - Every Nack and every failed Read (except ErrClosed) is recorded; a
//     failed Read whose partition is not known is recorded for every
//     partition (-1).
//   - Nobody extends the processing time of a delivered message (Run's
//     in-flight touches do): Due holds when handlers finish within
//     MaxProcessingTime.
//   - Every Ack call is recorded with its outcome for the messages passed:
//     AckOK when it succeeded, AckFenced when it returned ErrFenced for
//     them, AckError whenever the outcome is unknown (any other error, or
//     one Ack of several partitions whose error cannot be attributed).
//     Worker processes that may be killed should use SetOutput and
//     BeginAck, so that an ack in flight when the process died is known to
//     the checker as one that may have executed.
//   - Times of one process come from time.Now (monotonic clock). Logs of
//     several processes merged with ReadJSON compare wall clocks; set
//     Options.Slack to the tolerated clock error between them.
package invariant

// Package segmenter gives Redis Streams what Kafka partitions give Kafka:
// every message with the same partition key is processed in order, by
// exactly one consumer of a group at a time, at least once.
//
// A Segmenter works in one namespace of one Redis. RegisterStream creates a
// stream of P partitions (each a Redis stream); Stream.Send hashes a
// message's partition key to a partition (Kafka's murmur2 by default, so a
// key lands on the partition number Kafka would pick). RegisterConsumer
// joins a consumer group: the group's partitions are spread over its live
// consumers (balanced and sticky; moved cooperatively when consumers join,
// leave or die). Consumer.Run hands every message to a handler, partitions
// in parallel and each partition in order; Consumer.Read and Consumer.Ack are
// the lower-level loop. Consumer.Shutdown hands the partitions over.
// RegisterMultiConsumer and RegisterPatternConsumer join a group on several
// streams, or on every stream whose name matches a glob (as PSUBSCRIBE does),
// as one consumer with one Run (see MultiConsumer).
//
// # Guarantees
//
//   - Per-key order: for one group, the first delivery of the messages of a
//     partition happens in stream order, and a message due for redelivery is
//     delivered again before anything newer of its partition.
//   - Single owner: a consumer reads, claims and acks a partition only while
//     it holds the partition's lease. The check runs in Redis, atomically
//     with the read, claim or ack, against the lease holder and its epoch (a
//     fencing token, in every delivered message): in one Lua script, or, for
//     the plain reads and acks of a single node, in a WATCH/MULTI/EXEC
//     transaction that a change of the lease aborts. A consumer that lost a
//     lease gets ErrFenced and drops the partition; one that cannot renew
//     its leases stops delivering on its own before they can expire.
//   - Balance: with M live consumers and P partitions each holds ⌊P/M⌋ or
//     ⌈P/M⌉; a membership change moves the fewest partitions, and only those
//     pause. A consumer that stops heartbeating loses its partitions after
//     Config.SessionTimeout.
//   - At least once: a message not acked within maxProcessingTime is
//     delivered again with its delivery count; the pending messages of a
//     consumer that crashed go, oldest first, to the partition's next owner.
//
// # Limits
//
//   - Nothing is lost only as far as Redis keeps the writes it acknowledged:
//     use AOF with appendfsync always, or replicas with WAIT. A restart without
//     persistence or an asynchronous failover can undo sends and acks
//     (messages reappear or vanish); lease epochs stay increasing across such
//     a rollback because every grant takes an epoch no lower than the server's
//     clock in microseconds.
//   - Out of memory with maxmemory-policy noeviction, Redis refuses new
//     messages (Send fails with its OOM error) and consumers go on; an
//     allkeys-* policy, which may evict messages and leases, is reported
//     (ErrEvictionPolicy).
//   - Retention (the stream's maximum length per partition) is the only way a
//     message disappears unprocessed; the consumer counts such messages in
//     Stats().Trimmed and Stats().TrimmedUnread and logs them.
//     RetentionAcked never trims a message some group has not acked.
//   - Dead letters (WithMaxDeliveries, PoisonDeadLetter, Consumer.DeadLetter)
//     leave the stream and its order; RedriveDeadLetters appends them again.
//   - Poison entries (written to a partition by another tool) are delivered
//     in order; Poison reports them. Under Run, one whose handler fails is
//     dead-lettered at once.
//   - Consumers wait for new messages in Redis, not by polling: on a single
//     node one XREAD BLOCK per Segmenter, on a connection of its own, with
//     the waiting consumers' fenced reads right behind it; on a Redis
//     Cluster, where one XREAD cannot span slots, one per empty partition,
//     on the primary serving it.
//   - On Redis Cluster every script touches one hash slot (a partition's
//     stream, its leases and its dead letters share one; a group's
//     membership and assignment another), so every fenced operation stays
//     atomic; a failover is followed (the cluster client reloads its view
//     when a node stops answering), and asynchronous replication can lose
//     the last sends and acks a failed primary acknowledged.
//   - Requires Redis 7.0 or later.
package segmenter

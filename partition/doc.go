// Package partition maps a message's partition key to a partition number.
//
// A namespace's stream is split into a fixed number of partitions, and every
// message carrying the same key must land on the same partition so that its
// ordering is preserved. The function doing that mapping is a [Partitioner].
// Its name is stored with the stream's metadata, so every process of a
// namespace agrees on it; [ByName] turns that stored name back into the
// function.
//
// # Choice of the default
//
// [Default] is [Murmur2], a bit-for-bit reimplementation of the partitioner
// Apache Kafka's Java producer uses for keyed records (DefaultPartitioner and
// BuiltInPartitioner): the 32-bit MurmurHash2 of the key bytes as computed by
// org.apache.kafka.common.utils.Utils.murmur2, with the sign bit cleared,
// modulo the number of partitions. A key therefore lands on the same
// partition number here as it would in a Kafka topic with the same partition
// count, so users can move a workload to Kafka (or mirror it there) without
// reshuffling their keys and without losing per-key ordering.
//
// [FNV1a] (32-bit FNV-1a, as hash/fnv's New32a) is provided as a simple
// alternative.
//
// # Stability
//
// Partitioners must be deterministic forever: changing how a key maps to a
// partition would move every user's keys to other partitions and break
// per-key ordering across the change. The tests of this package pin golden
// values that must never be altered.
package partition

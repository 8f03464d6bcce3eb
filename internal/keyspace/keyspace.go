// Package keyspace is the one place that names every Redis key segmenter
// writes. Nothing else in the module builds a key by hand.
//
// Layout, for namespace N, stream S, partition i and group G (names are
// restricted to [A-Za-z0-9_.-], so ':' and the hash-tag braces can never
// appear inside a name and every key below is unambiguous):
//
//	seg:{N}:streams                 hash   S -> stream metadata ("v1|partitions|maxlen|partitioner", then "|acked" for RetentionAcked)
//	seg:{N}:groups:S                set    the groups registered on S
//	seg:{N:S:i}:p                   stream the entries of partition i
//	seg:{N:S:i}:lease:G             hash   lease of partition i for group G: o owner, e epoch, x expiry (ms, server time), r last fetch id, ro and re the owner and epoch of the last release, u unread messages lost to trimming already reported
//	seg:{N:S:i}:dlq:G               stream group G's dead letters from partition i: the original entry's fields plus dlq.id, dlq.reason, dlq.deliveries, dlq.group, dlq.at
//	seg:{N:S:G}:members             zset   members of group G, scored by session expiry (ms, server time)
//	seg:{N:S:G}:assign              hash   the group's assignment: gen, and member -> partitions (m:<member>), member -> last heartbeat (hb:<member>, ms, server time)
//	seg:{N:S:G}:coord               string the group's coordinator lock (owner token, with a TTL)
//	seg:{N:S:G}:notify              Pub/Sub channel: "a new assignment, or a released lease" (a nudge only)
//
// The braces are Redis Cluster hash tags: a partition's stream, the leases of
// every group on it and those groups' dead letters from it share one slot,
// so each fenced script (read, claim, ack, renew, dead-letter, re-drive)
// touches a single slot; a group's membership, assignment and coordinator
// lock share another. Different partitions spread over the cluster.
package keyspace

import "strconv"

// Space builds the keys of one namespace.
type Space struct{ ns string }

// New returns the key space of namespace ns. ns must already be validated.
func New(ns string) Space { return Space{ns: ns} }

// Namespace returns the namespace the keys belong to.
func (s Space) Namespace() string { return s.ns }

// Streams is the hash of stream metadata of the namespace.
func (s Space) Streams() string { return "seg:{" + s.ns + "}:streams" }

// Groups is the set of groups registered on stream.
func (s Space) Groups(stream string) string { return "seg:{" + s.ns + "}:groups:" + stream }

func (s Space) partTag(stream string, partition int) string {
	return "seg:{" + s.ns + ":" + stream + ":" + strconv.Itoa(partition) + "}"
}

// Partition is the Redis stream holding partition p of stream.
func (s Space) Partition(stream string, p int) string { return s.partTag(stream, p) + ":p" }

// Lease is the lease hash of partition p of stream for group.
func (s Space) Lease(stream string, p int, group string) string {
	return s.partTag(stream, p) + ":lease:" + group
}

func (s Space) groupTag(stream, group string) string {
	return "seg:{" + s.ns + ":" + stream + ":" + group + "}"
}

// Members is the membership sorted set of group on stream.
func (s Space) Members(stream, group string) string { return s.groupTag(stream, group) + ":members" }

// Assignment is the assignment hash of group on stream.
func (s Space) Assignment(stream, group string) string { return s.groupTag(stream, group) + ":assign" }

// Coordinator is the coordinator lock of group on stream.
func (s Space) Coordinator(stream, group string) string { return s.groupTag(stream, group) + ":coord" }

// Notify is the Pub/Sub channel that nudges the members of group on stream
// to look at the assignment and the leases now, rather than at their next
// heartbeat.
func (s Space) Notify(stream, group string) string { return s.groupTag(stream, group) + ":notify" }

// DeadLetters is the stream of group's dead letters from partition p of
// stream. It shares the partition's slot, so moving a message there is one
// fenced script.
func (s Space) DeadLetters(stream string, p int, group string) string {
	return s.partTag(stream, p) + ":dlq:" + group
}

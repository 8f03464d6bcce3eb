// Package contracts holds the protobuf messages exchanged between the
// segmenter SDK and its users, together with their generated Go code.
//
// [PMessage] is what a producer sends: a partition key, an opaque payload and
// optional metadata. All messages with the same partition key go to the same
// partition and are processed in order. [CMessage] is what a consumer
// receives: the producer's fields plus the delivery context (stream entry ID,
// stream, consumer group, partition, delivery count, lease epoch usable as a
// fencing token, and a poison reason for entries that could not be decoded).
//
// The messages are defined in messages.proto; messages.pb.go is generated
// from it and must not be edited by hand. Run `make proto` (which runs
// contracts/gen.sh) after changing the .proto file; a test fails when the
// committed messages.pb.go is stale.
//
// These types describe message contents only. How they are laid out in Redis
// stream entries is described in the documentation of the packages that
// read and write the streams, not here.
package contracts

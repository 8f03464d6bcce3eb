package partition

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Partitioner maps a partition key to a partition number.
//
// Implementations must be deterministic forever: the same key and partition
// count must always give the same partition, in every process, version and
// platform. Partition must return a value in [0, partitions) and is only
// called with partitions >= 1. It must be safe for concurrent use.
type Partitioner interface {
	// Name identifies the function, for example "murmur2" or "fnv1a". It is
	// stored with the stream's metadata so that every process of a namespace
	// uses the same function, so it must never change.
	Name() string
	// Partition returns the partition of key, in [0, partitions).
	Partition(key []byte, partitions int) int
}

// Names of the built-in partitioners, as returned by their Name methods and
// accepted by ByName.
const (
	murmur2Name = "murmur2"
	fnv1aName   = "fnv1a"
)

// ErrUnknownPartitioner is wrapped by the error ByName returns for a name
// that is not a built-in partitioner.
var ErrUnknownPartitioner = errors.New("partition: unknown partitioner")

// Murmur2Partitioner is the Kafka-compatible partitioner: the partition of a
// key is toPositive(Murmur2Hash(key)) % partitions, where toPositive clears the
// sign bit. This is what Kafka's Java producer does for keyed records, so a key
// lands on the same partition number as in a Kafka topic with the same number
// of partitions. Its name is "murmur2". The zero value is ready to use.
type Murmur2Partitioner struct{}

// Murmur2 is the Kafka-compatible murmur2 partitioner.
var Murmur2 Murmur2Partitioner

// Default is the partitioner used when none is configured: Murmur2.
var Default = Murmur2

// Name returns "murmur2".
func (Murmur2Partitioner) Name() string { return murmur2Name }

// Partition returns toPositive(Murmur2Hash(key)) % partitions. It panics if
// partitions < 1.
func (Murmur2Partitioner) Partition(key []byte, partitions int) int {
	if partitions < 1 {
		panic("partition: partitions must be >= 1")
	}
	return int(uint32(Murmur2Hash(key))&0x7fffffff) % partitions
}

// Murmur2Hash returns the 32-bit MurmurHash2 of data exactly as Kafka's
// org.apache.kafka.common.utils.Utils.murmur2 computes it (seed 0x9747b28c),
// as the same signed 32-bit value Java returns.
func Murmur2Hash(data []byte) int32 {
	const (
		seed = 0x9747b28c
		m    = 0x5bd1e995
		r    = 24
	)
	// Java's int arithmetic wraps like uint32 arithmetic, and its >>> is a
	// logical shift, which is what >> does on a uint32.
	h := uint32(seed) ^ uint32(len(data))

	rest := data
	for len(rest) >= 4 {
		k := binary.LittleEndian.Uint32(rest)
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
		rest = rest[4:]
	}

	// Fold in the 1 to 3 trailing bytes, highest first.
	switch len(rest) {
	case 3:
		h ^= uint32(rest[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(rest[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(rest[0])
		h *= m
	}

	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return int32(h)
}

// FNV1aPartitioner partitions by the 32-bit FNV-1a hash of the key (the hash
// of hash/fnv's New32a): the partition is hash % partitions, computed on
// unsigned values. Its name is "fnv1a". The zero value is ready to use.
type FNV1aPartitioner struct{}

// FNV1a is the 32-bit FNV-1a partitioner.
var FNV1a FNV1aPartitioner

// Name returns "fnv1a".
func (FNV1aPartitioner) Name() string { return fnv1aName }

// Partition returns fnv1a32(key) % partitions. It panics if partitions < 1.
func (FNV1aPartitioner) Partition(key []byte, partitions int) int {
	if partitions < 1 {
		panic("partition: partitions must be >= 1")
	}
	// Widening to uint64 keeps the result exact for any int partition count
	// and equals the uint32 modulo whenever partitions fits in a uint32.
	return int(uint64(fnv1a32(key)) % uint64(partitions))
}

// fnv1a32 returns the 32-bit FNV-1a hash of data, as hash/fnv's New32a.
func fnv1a32(data []byte) uint32 {
	const (
		offset32 = 2166136261
		prime32  = 16777619
	)
	h := uint32(offset32)
	for _, b := range data {
		h ^= uint32(b)
		h *= prime32
	}
	return h
}

// ByName returns the built-in partitioner whose Name is name: "murmur2" or
// "fnv1a". For any other name it returns an error wrapping
// ErrUnknownPartitioner.
func ByName(name string) (Partitioner, error) {
	switch name {
	case murmur2Name:
		return Murmur2, nil
	case fnv1aName:
		return FNV1a, nil
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnknownPartitioner, name)
	}
}

// Compile-time checks that the built-ins implement Partitioner.
var (
	_ Partitioner = Murmur2Partitioner{}
	_ Partitioner = FNV1aPartitioner{}
)

package segmenter

import (
	"errors"
	"fmt"
	"strconv"
)

// Sentinel errors, matched with errors.Is. The SDK wraps them with context
// (the stream, group and partition concerned), never replaces them.
var (
	// ErrInvalidArgument is returned for bad input: empty or oversized names,
	// characters outside [A-Za-z0-9_.-], a partition count or batch size
	// below 1, a nil message or an empty partition key. Nothing is written to
	// Redis when it is returned.
	ErrInvalidArgument = errors.New("segmenter: invalid argument")
	// ErrStreamNotFound is returned when a stream was never registered in the
	// namespace.
	ErrStreamNotFound = errors.New("segmenter: stream not found")
	// ErrStreamConflict is returned by RegisterStream when the stream exists
	// with other parameters (partition count, retention or partitioner).
	ErrStreamConflict = errors.New("segmenter: stream exists with other parameters")
	// ErrFenced is returned when the consumer no longer holds the lease of a
	// partition under the epoch it read with: another consumer of the group
	// owns the partition now. The partition is dropped locally; its unacked
	// messages will be delivered to the new owner.
	ErrFenced = errors.New("segmenter: partition lease lost (fenced)")
	// ErrClosed is returned by calls on a Segmenter that was closed or a
	// Consumer that was shut down.
	ErrClosed = errors.New("segmenter: closed")
	// ErrGroupNotFound is returned when the consumer group vanished from a
	// partition in Redis (the stream key was deleted or the server flushed).
	// The SDK never recreates it silently, since that would skip or replay
	// messages.
	ErrGroupNotFound = errors.New("segmenter: consumer group missing in Redis")
	// ErrGroupActive is returned by ResetGroup when the group has live
	// members or held leases and the reset was not forced: moving the
	// position under running consumers would race with their reads.
	ErrGroupActive = errors.New("segmenter: consumer group has live members")
	// ErrPoison marks a stream entry that this SDK did not write or cannot
	// decode. See Poison.
	ErrPoison = errors.New("segmenter: poison message")
	// ErrEvictionPolicy is reported to Config.OnError (once per Segmenter,
	// at its first registration) when Redis' maxmemory-policy lets it evict
	// any key (allkeys-lru, allkeys-lfu, allkeys-random): messages and
	// leases could vanish. Use noeviction: out of memory, Redis then
	// refuses new messages (Send fails) while consumers go on.
	ErrEvictionPolicy = errors.New("segmenter: Redis may evict the SDK's keys")
)

// PartitionError is an error about one partition of a stream for a group.
type PartitionError struct {
	Stream    string
	Group     string
	Partition int
	Err       error
}

func (e *PartitionError) Error() string {
	return "stream " + strconv.Quote(e.Stream) + " group " + strconv.Quote(e.Group) +
		" partition " + strconv.Itoa(e.Partition) + ": " + e.Err.Error()
}

// Unwrap returns the underlying error.
func (e *PartitionError) Unwrap() error { return e.Err }

// PoisonError describes a stream entry that the SDK could not decode.
type PoisonError struct {
	Stream    string
	Partition int
	ID        string // the stream entry ID
	Reason    string
}

func (e *PoisonError) Error() string {
	return fmt.Sprintf("%v: stream %q partition %d entry %s: %s", ErrPoison, e.Stream, e.Partition, e.ID, e.Reason)
}

// Unwrap returns ErrPoison.
func (e *PoisonError) Unwrap() error { return ErrPoison }

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidArgument, fmt.Sprintf(format, args...))
}

package segmenter

import (
	"time"

	"github.com/segmenter/segmenter/contracts"
)

// A Hook observes a consumer: metrics, tracing and audit logs are built on
// hooks. A hook is any value that implements one or more of DeliverHook,
// RedeliverHook, AckHook, NackHook, HandlerHook, DeadLetterHook,
// PartitionHook and RebalanceHook; the consumer calls the methods it
// implements. The same events come whether the application
// uses Run or Read and Ack. Hooks are called synchronously from the
// consumer's goroutines, must return quickly and must not call the
// consumer's methods. Unused hooks cost nothing.
type Hook any

// DeliverHook observes every batch a consumer delivers (Read, or the
// fetches of Run). Redeliveries are the messages with DeliveryCount > 1.
type DeliverHook interface {
	OnDeliver(DeliverEvent)
}

// RedeliverHook observes every message delivered again (DeliveryCount > 1):
// its maxProcessingTime passed without an ack, it was nacked, or it was
// pending with a consumer that lost its partition. It is called after
// OnDeliver of the batch, once per such message.
type RedeliverHook interface {
	OnRedeliver(RedeliverEvent)
}

// RedeliverEvent is a message delivered again.
type RedeliverEvent struct {
	Stream, Group, Consumer string
	Message                 *contracts.CMessage
}

// AckHook observes every acknowledgement, partition by partition, with its
// outcome and the start and end of the Redis call.
type AckHook interface {
	OnAck(AckEvent)
}

// NackHook observes the messages handed back to be delivered again at
// once: by Consumer.Nack, or by Run (the messages it fetched and did not
// start, when it stops or a partition's lease is no longer confirmed).
// Messages of a partition no longer held are not handed back (their next
// owner delivers them) and not reported.
type NackHook interface {
	OnNack(NackEvent)
}

// NackEvent is messages handed back, at At.
type NackEvent struct {
	Stream, Group, Consumer string
	Messages                []*contracts.CMessage
	At                      time.Time
}

// HandlerHook observes every call of a Run handler.
type HandlerHook interface {
	OnHandlerStart(HandlerEvent)
	OnHandlerEnd(HandlerEvent)
}

// DeadLetterHook observes every message moved to the dead letters.
type DeadLetterHook interface {
	OnDeadLetter(DeadLetterEvent)
}

// PartitionHook observes the partitions a consumer gains and loses (the
// same events as WithPartitionListener).
type PartitionHook interface {
	OnPartition(PartitionEvent)
}

// RebalanceHook observes every new assignment of the consumer's group that
// the consumer learns: a rebalance, committed by whichever member ran it,
// after a member joined, left or expired. Every member of the group sees
// each generation once (unless a later one overtook it before its next
// heartbeat).
type RebalanceHook interface {
	OnRebalance(RebalanceEvent)
}

// RebalanceEvent is a new assignment of the group, as one consumer learned
// it. The partitions listed are the consumer's share in it; it acquires
// those it lacks (PartitionHook's PartitionAssigned) and hands over those
// it no longer has (PartitionRevoked) after this event.
type RebalanceEvent struct {
	Stream, Group, Consumer string
	Generation              int64
	Partitions              []int
}

// DeliverEvent is a batch delivered to the application.
type DeliverEvent struct {
	Stream, Group, Consumer string
	Messages                []*contracts.CMessage
	// Start is when the fetch from Redis was sent; End the moment of
	// delivery, when the consumer last checked that it still held the
	// partitions' leases.
	Start, End time.Time
}

// AckOutcome is the outcome of an acknowledgement.
type AckOutcome int

const (
	// Acked: the messages are acknowledged.
	Acked AckOutcome = iota + 1
	// AckFenced: the consumer lost the partition's lease; nothing was
	// acknowledged and the messages go to the new owner.
	AckFenced
	// AckFailed: the call failed and its outcome is unknown; the messages
	// are acknowledged again later or delivered again.
	AckFailed
)

func (o AckOutcome) String() string {
	switch o {
	case Acked:
		return "acked"
	case AckFenced:
		return "fenced"
	case AckFailed:
		return "failed"
	}
	return "unknown"
}

// AckEvent is the acknowledgement of messages of one partition.
type AckEvent struct {
	Stream, Group, Consumer string
	Partition               int
	Epoch                   int64
	IDs                     []string
	Outcome                 AckOutcome
	Err                     error
	Start, End              time.Time // the Redis call
}

// HandlerEvent is one call of a Run handler. Attempt counts the calls for
// this delivery of the message, from 1. End and Err are set in
// OnHandlerEnd.
type HandlerEvent struct {
	Stream, Group, Consumer string
	Message                 *contracts.CMessage
	Attempt                 int
	Start, End              time.Time
	Err                     error
}

// DeadLetterEvent is a message moved to the group's dead letters.
type DeadLetterEvent struct {
	Stream, Group, Consumer string
	Message                 *contracts.CMessage
	Reason                  string
	DeadLetterID            string // its entry ID among the dead letters
	Err                     error  // the move failed: the message stays pending
}

// hooks holds the hooks of a consumer by kind, resolved once.
type hooks struct {
	deliver    []DeliverHook
	redeliver  []RedeliverHook
	ack        []AckHook
	nack       []NackHook
	handler    []HandlerHook
	deadLetter []DeadLetterHook
	partition  []PartitionHook
	rebalance  []RebalanceHook
}

func newHooks(hs []Hook) hooks {
	var h hooks
	for _, x := range hs {
		if v, ok := x.(DeliverHook); ok {
			h.deliver = append(h.deliver, v)
		}
		if v, ok := x.(RedeliverHook); ok {
			h.redeliver = append(h.redeliver, v)
		}
		if v, ok := x.(AckHook); ok {
			h.ack = append(h.ack, v)
		}
		if v, ok := x.(NackHook); ok {
			h.nack = append(h.nack, v)
		}
		if v, ok := x.(HandlerHook); ok {
			h.handler = append(h.handler, v)
		}
		if v, ok := x.(DeadLetterHook); ok {
			h.deadLetter = append(h.deadLetter, v)
		}
		if v, ok := x.(PartitionHook); ok {
			h.partition = append(h.partition, v)
		}
		if v, ok := x.(RebalanceHook); ok {
			h.rebalance = append(h.rebalance, v)
		}
	}
	return h
}

// WithHooks adds hooks to the consumer, after those of Config.Hooks.
func WithHooks(hs ...Hook) ConsumerOption {
	return consumerOptionFunc(func(o *consumerOptions) { o.hooks = append(o.hooks, hs...) })
}

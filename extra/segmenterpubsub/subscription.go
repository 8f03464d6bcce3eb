package segmenterpubsub

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"gocloud.dev/gcerrors"
	"gocloud.dev/pubsub"
	"gocloud.dev/pubsub/batcher"
	"gocloud.dev/pubsub/driver"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
)

// SubscriptionOptions configures OpenSubscription and
// OpenPatternSubscription.
type SubscriptionOptions struct {
	// BatchSize bounds the messages of one ReceiveBatch (one Read). Default
	// 100.
	BatchSize int
	// MaxProcessingTime is how long a received message may go unacked
	// before it is delivered again. Default 30s.
	MaxProcessingTime time.Duration
	// ConsumerOptions are passed to RegisterConsumer (or
	// RegisterPatternConsumer), after segmenter.WithPoisonPolicy(
	// segmenter.PoisonDeadLetter): the portable API cannot tell a poison
	// entry (one segmenter did not write) from a message, so they go to the
	// group's dead letters unless an option here says PoisonDeliver.
	ConsumerOptions []segmenter.ConsumerOption
	// ReceiveWait is how long ReceiveBatch waits for messages when there are
	// none (pubsub then calls it again). Default 1s.
	ReceiveWait time.Duration
	// ShutdownTimeout bounds the hand-over of the partitions at Shutdown.
	// Default 10s.
	ShutdownTimeout time.Duration
	// OnError receives the errors about one stream of a pattern
	// subscription that do not end the subscription: a stream deleted in
	// Redis while consumed (segmenter.ErrGroupNotFound) or removed from the
	// registry (segmenter.ErrStreamNotFound). Default: none (the Segmenter
	// logs them). On a subscription of one stream they end it instead
	// (gcerrors.NotFound from Receive).
	OnError func(error)
	// ReceiveBatcherOptions and AckBatcherOptions are pubsub's batching
	// of ReceiveBatch calls and of acks. Default: one ReceiveBatch of up to
	// BatchSize messages at a time (more at once would break the order of
	// the messages Receive returns); acks in batches of up to 1000, 2 at a
	// time.
	ReceiveBatcherOptions batcher.Options
	AckBatcherOptions     batcher.Options
}

const (
	defaultBatchSize       = 100
	defaultMaxProcessing   = 30 * time.Second
	defaultReceiveWait     = time.Second
	defaultShutdownTimeout = 10 * time.Second
	closeTimeout           = 10 * time.Second
)

var defaultAckBatcher = batcher.Options{MaxBatchSize: 1000, MaxHandlers: 2}

func (o *SubscriptionOptions) withDefaults() (SubscriptionOptions, error) {
	var x SubscriptionOptions
	if o != nil {
		x = *o
	}
	var errs []error
	if x.BatchSize < 0 || x.MaxProcessingTime < 0 || x.ReceiveWait < 0 || x.ShutdownTimeout < 0 {
		errs = append(errs, fmt.Errorf("%w: negative BatchSize, MaxProcessingTime, ReceiveWait or ShutdownTimeout", segmenter.ErrInvalidArgument))
	}
	if x.BatchSize == 0 {
		x.BatchSize = defaultBatchSize
	}
	if x.MaxProcessingTime == 0 {
		x.MaxProcessingTime = defaultMaxProcessing
	}
	if x.ReceiveWait == 0 {
		x.ReceiveWait = defaultReceiveWait
	}
	if x.ShutdownTimeout == 0 {
		x.ShutdownTimeout = defaultShutdownTimeout
	}
	if x.ReceiveBatcherOptions == (batcher.Options{}) {
		x.ReceiveBatcherOptions = batcher.Options{MaxBatchSize: x.BatchSize, MaxHandlers: 1}
	}
	if x.AckBatcherOptions == (batcher.Options{}) {
		x.AckBatcherOptions = defaultAckBatcher
	}
	return x, errors.Join(errs...)
}

// reader is what a subscription needs of a Consumer or a MultiConsumer.
type reader interface {
	Read(ctx context.Context, maxWait time.Duration, opts ...segmenter.ReadOption) ([]*contracts.CMessage, error)
	Ack(ctx context.Context, msgs ...*contracts.CMessage) error
	Nack(msgs ...*contracts.CMessage) error
	Shutdown(ctx context.Context) error
}

// OpenSubscription returns a subscription of group on stream of seg: a
// consumer of the group, which shares the stream's partitions with the
// group's other consumers (anywhere). seg stays the caller's. When the
// stream is not registered yet the subscription opens all the same and
// joins the group once it is; until then Receive fails with
// gcerrors.NotFound.
func OpenSubscription(ctx context.Context, seg *segmenter.Segmenter, stream, group string, opts *SubscriptionOptions) (*pubsub.Subscription, error) {
	ds, err := openSubscription(ctx, seg, false, stream, "", group, opts)
	if err != nil {
		return nil, err
	}
	return pubsub.NewSubscription(ds, &ds.o.ReceiveBatcherOptions, &ds.o.AckBatcherOptions), nil
}

// OpenPatternSubscription returns a subscription of group on every stream
// of seg whose name matches pattern (a glob, as in Redis' PSUBSCRIBE; see
// Segmenter.RegisterPatternConsumer), streams registered later included. A
// pattern that matches nothing yet is no error: Receive waits. seg stays the
// caller's.
func OpenPatternSubscription(ctx context.Context, seg *segmenter.Segmenter, pattern, group string, opts *SubscriptionOptions) (*pubsub.Subscription, error) {
	ds, err := openSubscription(ctx, seg, false, "", pattern, group, opts)
	if err != nil {
		return nil, err
	}
	return pubsub.NewSubscription(ds, &ds.o.ReceiveBatcherOptions, &ds.o.AckBatcherOptions), nil
}

func openSubscription(ctx context.Context, seg *segmenter.Segmenter, own bool, stream, pattern, group string, opts *SubscriptionOptions) (*subscription, error) {
	if seg == nil {
		return nil, fmt.Errorf("segmenterpubsub: open subscription: %w: nil Segmenter", segmenter.ErrInvalidArgument)
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("segmenterpubsub: open subscription: %w", err)
	}
	s := &subscription{seg: seg, own: own, stream: stream, pattern: pattern, group: group, o: o,
		out: make(map[*contracts.CMessage]struct{})}
	s.copts = append([]segmenter.ConsumerOption{segmenter.WithPoisonPolicy(segmenter.PoisonDeadLetter)}, o.ConsumerOptions...)
	if pattern != "" {
		m, err := seg.RegisterPatternConsumer(ctx, pattern, group, o.BatchSize, o.MaxProcessingTime, s.copts...)
		if err != nil {
			return nil, fmt.Errorf("segmenterpubsub: open subscription: %w", err)
		}
		s.multi, s.r = m, m
		return s, nil
	}
	if _, err := s.reader(ctx); err != nil && !errors.Is(err, segmenter.ErrStreamNotFound) {
		return nil, fmt.Errorf("segmenterpubsub: open subscription: %w", err)
	}
	return s, nil
}

// subscription is the driver.Subscription of a consumer (of one stream, or
// of a pattern).
type subscription struct {
	seg     *segmenter.Segmenter
	own     bool // close seg with the subscription
	stream  string
	pattern string
	group   string
	o       SubscriptionOptions
	copts   []segmenter.ConsumerOption

	regMu sync.Mutex // one registration at a time; Close waits for it
	mu    sync.Mutex
	r     reader              // nil until the stream's consumer is registered
	c     *segmenter.Consumer // the one stream's consumer
	multi *segmenter.MultiConsumer
	// out holds the messages received and neither acked nor nacked:
	// Close hands them back, since no ack can come after it.
	out    map[*contracts.CMessage]struct{}
	closed bool
}

// reader returns the subscription's consumer, registering it when its
// stream exists.
func (s *subscription) reader(ctx context.Context) (reader, error) {
	s.mu.Lock()
	r, closed := s.r, s.closed
	s.mu.Unlock()
	if closed {
		return nil, segmenter.ErrClosed
	}
	if r != nil {
		return r, nil
	}
	s.regMu.Lock()
	defer s.regMu.Unlock()
	s.mu.Lock()
	r, closed = s.r, s.closed
	s.mu.Unlock()
	if closed {
		return nil, segmenter.ErrClosed
	}
	if r != nil {
		return r, nil
	}
	c, err := s.seg.RegisterConsumer(ctx, s.stream, s.group, s.o.BatchSize, s.o.MaxProcessingTime, s.copts...)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.c, s.r = c, c
	s.mu.Unlock()
	return c, nil
}

// ReceiveBatch reads up to maxMessages, waiting up to ReceiveWait for them.
func (s *subscription) ReceiveBatch(ctx context.Context, maxMessages int) ([]*driver.Message, error) {
	r, err := s.reader(ctx)
	if err != nil {
		return nil, err
	}
	msgs, err := r.Read(ctx, s.o.ReceiveWait, segmenter.WithMaxMessages(max(maxMessages, 1)))
	switch {
	case err == nil:
	case errors.Is(err, segmenter.ErrFenced):
		return nil, nil // the partition moved: its messages go to its new owner
	case s.multi != nil && (errors.Is(err, segmenter.ErrGroupNotFound) || errors.Is(err, segmenter.ErrStreamNotFound)):
		// One stream of the pattern is gone; the others go on.
		if s.o.OnError != nil {
			s.o.OnError(err)
		}
		return nil, nil
	default:
		return nil, err
	}
	if err := ctx.Err(); err != nil && len(msgs) > 0 {
		// pubsub gave up on this batch (Shutdown): hand it back now.
		_ = r.Nack(msgs...)
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = r.Nack(msgs...)
		return nil, segmenter.ErrClosed
	}
	for _, m := range msgs {
		s.out[m] = struct{}{}
	}
	s.mu.Unlock()
	dms := make([]*driver.Message, len(msgs))
	for i, m := range msgs {
		dms[i] = &driver.Message{
			LoggableID: m.Stream + "/" + strconv.FormatUint(uint64(m.Partition), 10) + "/" + m.Id,
			Body:       m.Data,
			Metadata:   m.Metadata,
			AckID:      m,
			AsFunc: func(x any) bool {
				p, ok := x.(**contracts.CMessage)
				if ok {
					*p = m
				}
				return ok
			},
		}
	}
	return dms, nil
}

// messages returns the messages of ackIDs, and forgets them as received.
func (s *subscription) messages(ackIDs []driver.AckID) ([]*contracts.CMessage, error) {
	msgs := make([]*contracts.CMessage, len(ackIDs))
	for i, id := range ackIDs {
		m, ok := id.(*contracts.CMessage)
		if !ok || m == nil {
			return nil, fmt.Errorf("%w: ack ID %d is a %T, not one of this subscription", segmenter.ErrInvalidArgument, i, id)
		}
		msgs[i] = m
	}
	s.mu.Lock()
	for _, m := range msgs {
		delete(s.out, m)
	}
	s.mu.Unlock()
	return msgs, nil
}

// SendAcks acknowledges (Consumer.Ack). A message whose partition moved to
// another consumer is not acked (fenced in Redis) and goes to the new
// owner: that is no error for pubsub; an outcome unknown (a connection
// failure) is, and pubsub retries it (an ack is idempotent).
func (s *subscription) SendAcks(ctx context.Context, ackIDs []driver.AckID) error {
	msgs, err := s.messages(ackIDs)
	if err != nil {
		return err
	}
	r, err := s.reader(ctx)
	if err != nil {
		return err
	}
	return withoutHandedOver(r.Ack(ctx, msgs...))
}

func (s *subscription) CanNack() bool { return true }

// SendNacks hands the messages back (Consumer.Nack): they are received
// again first.
func (s *subscription) SendNacks(ctx context.Context, ackIDs []driver.AckID) error {
	msgs, err := s.messages(ackIDs)
	if err != nil {
		return err
	}
	r, err := s.reader(ctx)
	if err != nil {
		return err
	}
	return r.Nack(msgs...)
}

func (s *subscription) IsRetryable(err error) bool { return isRetryable(err) }

// As reaches **segmenter.Consumer (a subscription of one stream, once
// registered), **segmenter.MultiConsumer (a pattern) and
// **segmenter.Segmenter.
func (s *subscription) As(i any) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch p := i.(type) {
	case **segmenter.Consumer:
		if s.c == nil {
			return false
		}
		*p = s.c
		return true
	case **segmenter.MultiConsumer:
		if s.multi == nil {
			return false
		}
		*p = s.multi
		return true
	case **segmenter.Segmenter:
		*p = s.seg
		return true
	}
	return false
}

func (s *subscription) ErrorAs(err error, i any) bool { return errors.As(err, i) }

func (s *subscription) ErrorCode(err error) gcerrors.ErrorCode { return errorCode(err) }

// Close hands back the messages received and not acked (no ack can come
// after pubsub's Shutdown), then shuts the consumer down, handing its
// partitions over to the group's other consumers, and closes the Segmenter
// when the subscription made it (a URL).
func (s *subscription) Close() error {
	s.regMu.Lock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.regMu.Unlock()
		return nil
	}
	s.closed = true
	r := s.r
	out := make([]*contracts.CMessage, 0, len(s.out))
	for m := range s.out {
		out = append(out, m)
	}
	clear(s.out)
	s.mu.Unlock()
	s.regMu.Unlock()
	var errs []error
	if r != nil {
		errs = append(errs, r.Nack(out...))
		ctx, cancel := context.WithTimeout(context.Background(), s.o.ShutdownTimeout)
		errs = append(errs, r.Shutdown(ctx))
		cancel()
	}
	if s.own {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		errs = append(errs, s.seg.Close(ctx))
		cancel()
	}
	return errors.Join(errs...)
}

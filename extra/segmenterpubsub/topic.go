package segmenterpubsub

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/google/uuid"
	"gocloud.dev/gcerrors"
	"gocloud.dev/pubsub"
	"gocloud.dev/pubsub/batcher"
	"gocloud.dev/pubsub/driver"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
)

// DefaultKeyName is the metadata key whose value is a message's partition
// key, unless TopicOptions.KeyName (or the key_name URL parameter) names
// another.
const DefaultKeyName = "partition_key"

// TopicOptions configures OpenTopic.
type TopicOptions struct {
	// KeyName is the metadata key whose value is a message's partition key.
	// A message without it gets a random key (no order with other
	// messages). Default DefaultKeyName.
	KeyName string

	// Partitions, when above 0, registers the stream with this many
	// partitions and MaxLenPerPartition entries kept per partition (0:
	// unbounded) when it does not exist (Segmenter.RegisterStream; a stream
	// that exists with other parameters is segmenter.ErrStreamConflict). 0,
	// the default, requires the stream to be registered: a send to a stream
	// that is not fails with gcerrors.NotFound.
	Partitions         int
	MaxLenPerPartition int64

	// BatcherOptions bounds the batches of SendBatch (each one pipelined
	// round trip) and how many run at once. Default: batches of up to 1000
	// messages, 2 at a time.
	BatcherOptions batcher.Options
}

// defaultSendBatcher is the default of TopicOptions.BatcherOptions.
var defaultSendBatcher = batcher.Options{MaxBatchSize: 1000, MaxHandlers: 2}

// OpenTopic returns a topic that sends to stream of seg. seg stays the
// caller's: Topic.Shutdown does not close it. With opts.Partitions above
// 0 the stream is registered here when missing; otherwise it is looked up
// at the first send, so that a topic of a stream registered later works.
func OpenTopic(ctx context.Context, seg *segmenter.Segmenter, stream string, opts *TopicOptions) (*pubsub.Topic, error) {
	dt, err := openTopic(ctx, seg, false, stream, opts)
	if err != nil {
		return nil, err
	}
	return pubsub.NewTopic(dt, &dt.batcher), nil
}

func openTopic(ctx context.Context, seg *segmenter.Segmenter, own bool, stream string, opts *TopicOptions) (*topic, error) {
	if seg == nil {
		return nil, fmt.Errorf("segmenterpubsub: open topic: %w: nil Segmenter", segmenter.ErrInvalidArgument)
	}
	var o TopicOptions
	if opts != nil {
		o = *opts
	}
	if o.KeyName == "" {
		o.KeyName = DefaultKeyName
	}
	if o.BatcherOptions == (batcher.Options{}) {
		o.BatcherOptions = defaultSendBatcher
	}
	var errs []error
	if o.Partitions < 0 {
		errs = append(errs, fmt.Errorf("%w: Partitions %d is negative", segmenter.ErrInvalidArgument, o.Partitions))
	}
	if o.Partitions == 0 && o.MaxLenPerPartition != 0 {
		errs = append(errs, fmt.Errorf("%w: MaxLenPerPartition without Partitions: the stream is registered only with a partition count", segmenter.ErrInvalidArgument))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("segmenterpubsub: open topic %q: %w", stream, err)
	}
	t := &topic{seg: seg, own: own, name: stream, keyName: o.KeyName, batcher: o.BatcherOptions}
	if o.Partitions > 0 {
		st, err := seg.RegisterStream(ctx, stream, o.Partitions, o.MaxLenPerPartition)
		if err != nil {
			return nil, fmt.Errorf("segmenterpubsub: open topic: %w", err)
		}
		t.st = st
	}
	return t, nil
}

// topic is the driver.Topic of a stream.
type topic struct {
	seg     *segmenter.Segmenter
	own     bool // close seg with the topic
	name    string
	keyName string
	batcher batcher.Options

	mu sync.Mutex
	st *segmenter.Stream // nil until found
}

// stream returns the topic's stream, looking it up the first time.
func (t *topic) stream(ctx context.Context) (*segmenter.Stream, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.st != nil {
		return t.st, nil
	}
	st, err := t.seg.GetStream(ctx, t.name)
	if err != nil {
		return nil, err
	}
	t.st = st
	return st, nil
}

// SendBatch sends ms in one pipelined round trip (Stream.SendBatch).
func (t *topic) SendBatch(ctx context.Context, ms []*driver.Message) error {
	st, err := t.stream(ctx)
	if err != nil {
		return err
	}
	msgs := make([]*contracts.PMessage, len(ms))
	for i, dm := range ms {
		key := dm.Metadata[t.keyName]
		if key == "" {
			key = uuid.NewString()
		}
		pm := &contracts.PMessage{PartitionKey: key, Data: dm.Body, Metadata: dm.Metadata}
		if dm.BeforeSend != nil {
			if err := dm.BeforeSend(pmessageAs(pm)); err != nil {
				return err
			}
		}
		msgs[i] = pm
	}
	ids, err := st.SendBatch(ctx, msgs)
	if err != nil {
		return err
	}
	for i, dm := range ms {
		if dm.AfterSend != nil {
			pm, id := msgs[i], ids[i]
			as := func(x any) bool {
				if p, ok := x.(*string); ok {
					*p = id
					return true
				}
				return pmessageAs(pm)(x)
			}
			if err := dm.AfterSend(as); err != nil {
				return err
			}
		}
	}
	return nil
}

// pmessageAs is the As function of a message being sent.
func pmessageAs(pm *contracts.PMessage) func(any) bool {
	return func(x any) bool {
		p, ok := x.(**contracts.PMessage)
		if !ok {
			return false
		}
		*p = pm
		return true
	}
}

func (t *topic) IsRetryable(err error) bool { return isRetryable(err) }

// As reaches **segmenter.Stream (once the stream was found) and
// **segmenter.Segmenter.
func (t *topic) As(i any) bool {
	switch p := i.(type) {
	case **segmenter.Stream:
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.st == nil {
			return false
		}
		*p = t.st
		return true
	case **segmenter.Segmenter:
		*p = t.seg
		return true
	}
	return false
}

func (t *topic) ErrorAs(err error, i any) bool { return errors.As(err, i) }

func (t *topic) ErrorCode(err error) gcerrors.ErrorCode { return errorCode(err) }

// Close closes the Segmenter when the topic made it (a URL).
func (t *topic) Close() error {
	if t.own {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		return t.seg.Close(ctx)
	}
	return nil
}

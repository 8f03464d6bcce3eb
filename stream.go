package segmenter

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/partition"
)

// Stream is a registered partitioned stream: it sends messages. It is safe
// for concurrent use.
type Stream struct {
	seg         *Segmenter
	name        string
	meta        streamMeta
	partitioner partition.Partitioner
	keys        []string // partition stream keys
}

func newStream(s *Segmenter, name string, m streamMeta, p partition.Partitioner) *Stream {
	keys := make([]string, m.partitions)
	for i := range keys {
		keys[i] = s.keys.Partition(name, i)
	}
	return &Stream{seg: s, name: name, meta: m, partitioner: p, keys: keys}
}

// Name returns the stream's name.
func (st *Stream) Name() string { return st.name }

// Partitions returns the stream's partition count.
func (st *Stream) Partitions() int { return st.meta.partitions }

// MaxLenPerPartition returns the approximate retention per partition (0:
// unbounded).
func (st *Stream) MaxLenPerPartition() int64 { return st.meta.maxLen }

// PartitionOf returns the partition a key maps to. On a Stream a consumer
// got (Consumer.Stream) of a stream with a custom partitioner, it panics:
// get the Stream with GetStream and WithPartitioner instead.
func (st *Stream) PartitionOf(key string) int {
	return st.partitioner.Partition([]byte(key), st.meta.partitions)
}

// Partitioner returns the name of the stream's partitioner.
func (st *Stream) Partitioner() string { return st.meta.partitioner }

func (st *Stream) validate(m *contracts.PMessage) error {
	if m == nil {
		return invalid("nil message")
	}
	if m.PartitionKey == "" {
		return invalid("message has an empty partition key")
	}
	return nil
}

func (st *Stream) xadd(ctx context.Context, c redis.Cmdable, m *contracts.PMessage) *redis.StringCmd {
	return c.XAdd(ctx, &redis.XAddArgs{
		Stream: st.keys[st.PartitionOf(m.PartitionKey)],
		MaxLen: st.meta.maxLen,
		Approx: st.meta.maxLen > 0,
		Values: entryValues(m),
	})
}

// Send appends m to the partition its key hashes to and returns the stream
// entry ID Redis assigned. Retention trims the partition approximately to
// the stream's maximum length.
func (st *Stream) Send(ctx context.Context, m *contracts.PMessage) (string, error) {
	if err := st.validate(m); err != nil {
		return "", err
	}
	if err := st.seg.checkOpen(); err != nil {
		return "", err
	}
	id, err := st.xadd(ctx, st.seg.rdb, m).Result()
	if err != nil {
		return "", fmt.Errorf("segmenter: send to stream %q: %w", st.name, err)
	}
	return id, nil
}

// SendBatch appends every message in one pipelined round trip and returns
// their IDs in the order of msgs. Messages of one key keep their order. It
// validates every message first and sends nothing when one is invalid. When
// the round trip fails, some messages may have been appended: ids holds ""
// for the ones that were not.
func (st *Stream) SendBatch(ctx context.Context, msgs []*contracts.PMessage) (ids []string, err error) {
	for i, m := range msgs {
		if err := st.validate(m); err != nil {
			return nil, fmt.Errorf("message %d: %w", i, err)
		}
	}
	if err := st.seg.checkOpen(); err != nil {
		return nil, err
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	pipe := st.seg.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(msgs))
	for i, m := range msgs {
		cmds[i] = st.xadd(ctx, pipe, m)
	}
	_, err = pipe.Exec(ctx)
	ids = make([]string, len(msgs))
	for i, c := range cmds {
		ids[i] = c.Val()
	}
	if err != nil {
		return ids, fmt.Errorf("segmenter: send batch to stream %q: %w", st.name, err)
	}
	return ids, nil
}

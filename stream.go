package segmenter

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/partition"
	"github.com/segmenter/segmenter/rebalance"
)

// Stream is a registered partitioned stream: it sends messages. It is safe
// for concurrent use.
type Stream struct {
	seg         *Segmenter
	name        string
	meta        streamMeta
	partitioner partition.Partitioner
	keys        []string // partition stream keys

	// With RetentionAcked: sends counts this Stream's sends per partition,
	// and a partition is trimmed each time its count crosses a multiple of
	// trimEvery.
	sends     []atomic.Int64
	trimEvery int64
}

func newStream(s *Segmenter, name string, m streamMeta, p partition.Partitioner) *Stream {
	keys := make([]string, m.partitions)
	for i := range keys {
		keys[i] = s.keys.Partition(name, i)
	}
	st := &Stream{seg: s, name: name, meta: m, partitioner: p, keys: keys}
	if m.retention == RetentionAcked && m.maxLen > 0 {
		st.trimEvery = trimInterval(m.maxLen)
		st.sends = make([]atomic.Int64, m.partitions)
		for i := range st.sends {
			// A random start: a producer that sends fewer than trimEvery
			// messages (a short-lived process) still trims its share of
			// the time, so many of them keep the partitions bounded too.
			st.sends[i].Store(rand.Int64N(st.trimEvery))
		}
	}
	return st
}

// trimInterval is how many sends to a partition a producer lets pass between
// two trims of it under RetentionAcked. A trim costs the same whatever the
// interval (O(groups) plus the nodes it frees), so the interval only bounds
// how far the partition grows past maxLen between trims: by an eighth. The
// floor of 64 keeps small partitions from running a script every few sends.
func trimInterval(maxLen int64) int64 { return max(maxLen/8, 64) }

// trimDue counts n sends to partition p and reports whether the count
// crossed a multiple of the trim interval.
func (st *Stream) trimDue(p int, n int64) bool {
	if st.sends == nil || n <= 0 {
		return false
	}
	after := st.sends[p].Add(n)
	return (after-n)/st.trimEvery != after/st.trimEvery
}

// partitionOfKey returns the partition whose Redis key is key, or -1.
func (st *Stream) partitionOfKey(key string) int {
	i := strings.LastIndexByte(key, '}')
	j := strings.LastIndexByte(key[:max(i, 0)], ':')
	if i < 0 || j < 0 {
		return -1
	}
	p, err := strconv.Atoi(key[j+1 : i])
	if err != nil || p < 0 || p >= len(st.keys) || st.keys[p] != key {
		return -1
	}
	return p
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

// Retention returns how the stream's partitions are trimmed.
func (st *Stream) Retention() Retention { return st.meta.retention }

func (st *Stream) validate(m *contracts.PMessage) error {
	if u, ok := st.partitioner.(unknownPartitioner); ok {
		return invalid("stream %q uses partitioner %q, which this Stream lacks: send through GetStream with WithPartitioner", st.name, u.name)
	}
	if m == nil {
		return invalid("nil message")
	}
	if m.PartitionKey == "" {
		return invalid("message has an empty partition key")
	}
	return nil
}

// xadd appends m to partition p; under RetentionMaxLen it trims p with
// MAXLEN ~ too.
func (st *Stream) xadd(ctx context.Context, c redis.Cmdable, p int, m *contracts.PMessage) *redis.StringCmd {
	a := &redis.XAddArgs{Stream: st.keys[p], Values: entryValues(m)}
	if st.meta.retention == RetentionMaxLen && st.meta.maxLen > 0 {
		a.MaxLen, a.Approx = st.meta.maxLen, true
	}
	return c.XAdd(ctx, a)
}

// Send appends m to the partition its key hashes to and returns the stream
// entry ID Redis assigned. Retention trims the partition approximately to
// the stream's maximum length (see Retention); under RetentionAcked, the
// sends that run a trim carry it in the same round trip, and a failed trim
// does not fail the send: it goes to Config.OnError and the log.
func (st *Stream) Send(ctx context.Context, m *contracts.PMessage) (string, error) {
	if err := st.validate(m); err != nil {
		return "", err
	}
	if err := st.seg.checkOpen(); err != nil {
		return "", err
	}
	p := st.PartitionOf(m.PartitionKey)
	if !st.trimDue(p, 1) {
		id, err := st.xadd(ctx, st.seg.rdb, p, m).Result()
		if err != nil {
			rebalance.FollowTopology(st.seg.rdb, err)
			return "", fmt.Errorf("segmenter: send to stream %q: %w", st.name, err)
		}
		return id, nil
	}
	pipe := st.seg.rdb.Pipeline()
	cmd := st.xadd(ctx, pipe, p, m)
	trim := rebalance.QueueTrimAcked(ctx, pipe, st.keys[p], st.meta.maxLen)
	_, _ = pipe.Exec(ctx)
	id, err := cmd.Result()
	st.finishTrims(ctx, []int{p}, []*rebalance.QueuedTrim{trim}, err)
	if err != nil {
		rebalance.FollowTopology(st.seg.rdb, err)
		return "", fmt.Errorf("segmenter: send to stream %q: %w", st.name, err)
	}
	return id, nil
}

// finishTrims collects the outcome of trims queued with sends that ended
// with sendErr, reporting failures as background errors. After a failed
// send it does nothing: the trim most likely failed the same way, and a
// later send trims again.
func (st *Stream) finishTrims(ctx context.Context, parts []int, trims []*rebalance.QueuedTrim, sendErr error) {
	if sendErr != nil {
		return
	}
	for i, t := range trims {
		if _, err := t.Result(ctx, st.seg.rdb); err != nil && ctx.Err() == nil {
			st.seg.reportError(fmt.Errorf("segmenter: retention trim of stream %q partition %d: %w", st.name, parts[i], err))
		}
	}
}

// Trim runs the stream's retention on every partition now, in one round
// trip, and returns the number of entries removed. Under RetentionMaxLen it
// trims each partition to about maxLen entries (XTRIM MAXLEN ~), whatever
// the groups have read; under RetentionAcked, only below what every group
// has acknowledged (see RetentionAcked). A stream with maxLen 0 is never
// trimmed. Producers trim as they send, so Trim is for operators and tests
// (e.g. after a lagging group caught up and no producer is sending).
func (st *Stream) Trim(ctx context.Context) (int64, error) {
	if err := st.seg.checkOpen(); err != nil {
		return 0, err
	}
	if st.meta.maxLen <= 0 {
		return 0, nil
	}
	var total int64
	if st.meta.retention == RetentionAcked {
		n, err := rebalance.TrimAcked(ctx, st.seg.rdb, st.keys, st.meta.maxLen)
		for _, v := range n {
			total += v
		}
		if err != nil {
			return total, fmt.Errorf("segmenter: trim stream %q: %w", st.name, err)
		}
		return total, nil
	}
	pipe := st.seg.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(st.keys))
	for i, k := range st.keys {
		cmds[i] = pipe.XTrimMaxLenApprox(ctx, k, st.meta.maxLen, 0)
	}
	_, _ = pipe.Exec(ctx)
	var errs []error
	for i, c := range cmds {
		n, err := c.Result()
		if err != nil {
			errs = append(errs, fmt.Errorf("partition %d: %w", i, err))
		}
		total += n
	}
	if err := errors.Join(errs...); err != nil {
		return total, fmt.Errorf("segmenter: trim stream %q: %w", st.name, err)
	}
	return total, nil
}

// SendBatch appends every message in one pipelined round trip, grouped by
// partition, and returns their IDs in the order of msgs. Messages of one key
// keep their order. It validates every message first and sends nothing when
// one is invalid. When the round trip fails, some messages may have been
// appended: ids holds "" for the ones that were not. Under RetentionAcked,
// the trims due carry in the same round trip, as in Send.
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
	var perPartition map[int]int64
	if st.sends != nil {
		perPartition = make(map[int]int64)
	}
	// Grouped by partition (a stable sort keeps the order of each
	// partition's, so each key's, messages).
	parts := make([]int, len(msgs))
	order := make([]int, len(msgs))
	for i, m := range msgs {
		parts[i], order[i] = st.PartitionOf(m.PartitionKey), i
	}
	slices.SortStableFunc(order, func(a, b int) int { return parts[a] - parts[b] })
	for _, i := range order {
		p := parts[i]
		cmds[i] = st.xadd(ctx, pipe, p, msgs[i])
		if perPartition != nil {
			perPartition[p]++
		}
	}
	var trimParts []int
	var trims []*rebalance.QueuedTrim
	for p, n := range perPartition {
		if st.trimDue(p, n) {
			trimParts = append(trimParts, p)
			trims = append(trims, rebalance.QueueTrimAcked(ctx, pipe, st.keys[p], st.meta.maxLen))
		}
	}
	_, _ = pipe.Exec(ctx)
	ids = make([]string, len(msgs))
	for i, c := range cmds {
		ids[i] = c.Val()
		if err == nil {
			err = c.Err() // the sends' first error, not a trim's
		}
	}
	st.finishTrims(ctx, trimParts, trims, err)
	if err != nil {
		rebalance.FollowTopology(st.seg.rdb, err)
		return ids, fmt.Errorf("segmenter: send batch to stream %q: %w", st.name, err)
	}
	return ids, nil
}

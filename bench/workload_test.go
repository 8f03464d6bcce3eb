package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
)

// Each workload exists twice: through the SDK, and as the raw go-redis
// calls that do the same Redis work (same entries, keys, MAXLEN ~, batch).
// Both take the number of messages n and run it on g goroutines.

// split runs f(share, offset) on g goroutines that share n between them.
func split(n, g int, f func(w, share, offset int) error) error {
	var wg sync.WaitGroup
	errs := make([]error, g)
	for w := range g {
		share := n / g
		if w < n%g {
			share++
		}
		offset := w * (n/g + 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = f(w, share, offset)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// sdkSendBatch sends n messages with Stream.SendBatch, batches of batchSize,
// from g goroutines.
func (f *fixture) sdkSendBatch(ctx context.Context, batches [][]*contracts.PMessage, n, g int) error {
	return split(n, g, func(w, share, _ int) error {
		for i, sent := w, 0; sent < share; i++ {
			b := batches[i%len(batches)]
			if k := share - sent; k < len(b) {
				b = b[:k]
			}
			if _, err := f.st.SendBatch(ctx, b); err != nil {
				return err
			}
			sent += len(b)
		}
		return nil
	})
}

// rawXAddArgs is the XADD of key i to the raw stream, as the SDK writes it.
func (f *fixture) rawXAddArgs(i int) *redis.XAddArgs {
	k := i % numKeys
	a := &redis.XAddArgs{Stream: f.rawKeys[f.part[k]], Values: rawValues(keyNames[k], payload)}
	if f.maxLen > 0 {
		a.MaxLen, a.Approx = f.maxLen, true
	}
	return a
}

// rawSendBatch sends n messages as pipelines of batchSize XADD from g
// goroutines.
func (f *fixture) rawSendBatch(ctx context.Context, n, g int) error {
	return split(n, g, func(w, share, _ int) error {
		for i, sent := w*batchSize, 0; sent < share; {
			k := min(batchSize, share-sent)
			pipe := f.rdb.Pipeline()
			for j := range k {
				pipe.XAdd(ctx, f.rawXAddArgs(i+j))
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return err
			}
			i += k
			sent += k
		}
		return nil
	})
}

// sdkSend sends n messages one Stream.Send at a time from g goroutines.
func (f *fixture) sdkSend(ctx context.Context, msgs []*contracts.PMessage, n, g int) error {
	return split(n, g, func(w, share, offset int) error {
		for i := range share {
			if _, err := f.st.Send(ctx, msgs[(offset+i)%len(msgs)]); err != nil {
				return err
			}
		}
		return nil
	})
}

// rawSend sends n messages one XADD at a time from g goroutines.
func (f *fixture) rawSend(ctx context.Context, n, g int) error {
	return split(n, g, func(w, share, offset int) error {
		for i := range share {
			if err := f.rdb.XAdd(ctx, f.rawXAddArgs(offset+i)).Err(); err != nil {
				return err
			}
		}
		return nil
	})
}

// fillBacklog appends n SDK entries to the SDK stream (which the raw drain
// reads too, through its own group), 1000 per pipeline, with raw XADD: the
// backlog is set-up, not measured.
func (f *fixture) fillBacklog(ctx context.Context, n int) error {
	for sent := 0; sent < n; {
		k := min(1000, n-sent)
		pipe := f.rdb.Pipeline()
		for j := range k {
			key := (sent + j) % numKeys
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: f.sdkKeys[f.part[key]], Values: rawValues(keyNames[key], payload)})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		sent += k
	}
	return nil
}

// consumer registers a consumer of the SDK stream in group and waits until
// it holds every partition.
func (f *fixture) consumer(ctx context.Context, group string, batch int, opts ...segmenter.ConsumerOption) (*segmenter.Consumer, error) {
	c, err := f.seg.RegisterConsumer(ctx, sdkStream, group, batch, 30*time.Second, opts...)
	if err != nil {
		return nil, err
	}
	if _, err := waitFor(30*time.Second, time.Millisecond, func() bool { return len(c.Assignment()) == f.st.Partitions() }); err != nil {
		_ = c.Shutdown(ctx)
		return nil, fmt.Errorf("consumer never held every partition: %w", err)
	}
	return c, nil
}

func shutdown(c *segmenter.Consumer) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = c.Shutdown(ctx)
}

// sdkDrainReadAck reads and acks n messages with Read and Ack.
func sdkDrainReadAck(ctx context.Context, c *segmenter.Consumer, n int) error {
	for got := 0; got < n; {
		msgs, err := c.Read(ctx, time.Second)
		if err != nil {
			return err
		}
		if len(msgs) == 0 {
			return fmt.Errorf("backlog exhausted after %d of %d messages", got, n)
		}
		if err := c.Ack(ctx, msgs...); err != nil {
			return err
		}
		got += len(msgs)
	}
	return nil
}

// rawGroup creates group at the start of every partition of the SDK stream.
func (f *fixture) rawGroup(ctx context.Context, group string) error {
	pipe := f.rdb.Pipeline()
	for _, k := range f.sdkKeys {
		pipe.XGroupCreateMkStream(ctx, k, group, "0")
	}
	_, err := pipe.Exec(ctx)
	return err
}

// rawDrain reads n messages of the SDK stream's partitions with XREADGROUP
// over every partition, count per partition, and acks each batch with one
// pipeline of one XACK per partition.
func (f *fixture) rawDrain(ctx context.Context, group string, n int, count int64) error {
	streams := make([]string, 0, 2*len(f.sdkKeys))
	streams = append(streams, f.sdkKeys...)
	for range f.sdkKeys {
		streams = append(streams, ">")
	}
	args := &redis.XReadGroupArgs{Group: group, Consumer: "raw", Streams: streams, Count: count, Block: -1}
	for got := 0; got < n; {
		res, err := f.rdb.XReadGroup(ctx, args).Result()
		if errors.Is(err, redis.Nil) || (err == nil && len(res) == 0) {
			return fmt.Errorf("backlog exhausted after %d of %d messages", got, n)
		}
		if err != nil {
			return err
		}
		pipe := f.rdb.Pipeline()
		for _, s := range res {
			if len(s.Messages) == 0 {
				continue
			}
			ids := make([]string, len(s.Messages))
			for i, m := range s.Messages {
				ids[i] = m.ID
			}
			pipe.XAck(ctx, s.Stream, group, ids...)
			got += len(ids)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
	}
	return nil
}

// ackCounter is a hook that closes done once target messages were acked.
type ackCounter struct {
	n      atomic.Int64
	target int64
	once   sync.Once
	done   chan struct{}
}

func newAckCounter(target int) *ackCounter {
	return &ackCounter{target: int64(target), done: make(chan struct{})}
}

func (a *ackCounter) OnAck(e segmenter.AckEvent) {
	if e.Outcome == segmenter.Acked && a.n.Add(int64(len(e.IDs))) >= a.target {
		a.once.Do(func() { close(a.done) })
	}
}

// sdkRunDrain runs c (which must have acks among its hooks) with a no-op
// handler until acks reports its target acked, then stops Run. It returns
// the time from Run's call to the last ack, without Run's own stop.
func sdkRunDrain(ctx context.Context, c *segmenter.Consumer, acks *ackCounter, timeout time.Duration, opts ...segmenter.RunOption) (time.Duration, error) {
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	ran := make(chan error, 1)
	start := time.Now()
	go func() {
		ran <- c.Run(rctx, func(context.Context, *contracts.CMessage) error { return nil }, opts...)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	var err error
	select {
	case <-acks.done:
	case err = <-ran:
		return 0, fmt.Errorf("Run returned before the drain ended (%d of %d acked): %v", acks.n.Load(), acks.target, err)
	case <-t.C:
		err = fmt.Errorf("drained %d of %d messages in %v", acks.n.Load(), acks.target, timeout)
	}
	d := time.Since(start)
	stop()
	return d, errors.Join(err, <-ran)
}

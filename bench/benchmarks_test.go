package bench

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
)

// The Go benchmarks of the throughput figures: one op is one message, so
// ns/op, B/op and allocs/op are per message and MB/s counts payload bytes.
// Each pairs the SDK (segmenter) with raw go-redis doing the same Redis
// work (raw). Unlike the table they do not pre-fill the send streams to
// their MAXLEN.
//
//	go test -bench . -benchmem -run '^$' ./bench/

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func start(b *testing.B) {
	b.SetBytes(payloadSize)
	b.ReportAllocs()
	b.ResetTimer()
}

func benchSendBatch(b *testing.B, g int) {
	ctx := context.Background()
	b.Run("segmenter", func(b *testing.B) {
		f := newFixture(b, nil, partitions, sendMaxLen, nil)
		batches := sdkBatches()
		start(b)
		if err := f.sdkSendBatch(ctx, batches, b.N, g); err != nil {
			b.Fatal(err)
		}
		reportRate(b)
	})
	b.Run("raw", func(b *testing.B) {
		f := newFixture(b, nil, partitions, sendMaxLen, nil)
		start(b)
		if err := f.rawSendBatch(ctx, b.N, g); err != nil {
			b.Fatal(err)
		}
		reportRate(b)
	})
}

// BenchmarkSendBatch: figure 1, SendBatch of 100 from 1 goroutine.
func BenchmarkSendBatch(b *testing.B) { benchSendBatch(b, 1) }

// BenchmarkSendBatch4: figure 3, SendBatch of 100 from 4 goroutines.
func BenchmarkSendBatch4(b *testing.B) { benchSendBatch(b, 4) }

func benchSend(b *testing.B, g int) {
	ctx := context.Background()
	b.Run("segmenter", func(b *testing.B) {
		f := newFixture(b, nil, partitions, sendMaxLen, nil)
		msgs := sdkMessages(0, numKeys)
		start(b)
		if err := f.sdkSend(ctx, msgs, b.N, g); err != nil {
			b.Fatal(err)
		}
		reportRate(b)
	})
	b.Run("raw", func(b *testing.B) {
		f := newFixture(b, nil, partitions, sendMaxLen, nil)
		start(b)
		if err := f.rawSend(ctx, b.N, g); err != nil {
			b.Fatal(err)
		}
		reportRate(b)
	})
}

// BenchmarkSend: figure 2, Send from 1 goroutine.
func BenchmarkSend(b *testing.B) { benchSend(b, 1) }

// BenchmarkSend4: figure 2, Send from 4 goroutines.
func BenchmarkSend4(b *testing.B) { benchSend(b, 4) }

// drainFixture returns a fixture whose SDK stream holds a backlog of n.
func drainFixture(b *testing.B, n int) *fixture {
	f := newFixture(b, nil, partitions, 0, nil)
	if err := f.fillBacklog(context.Background(), n); err != nil {
		b.Fatal(err)
	}
	return f
}

// BenchmarkReadAck: figure 4, one consumer drains a backlog of the 8
// partitions with Read (batch 100) and Ack; raw: XREADGROUP COUNT 13 over
// the 8 streams and one pipelined XACK per stream. trips/100msgs and
// redis-µs/msg show what the fence adds to raw's round trips and Redis
// time.
func BenchmarkReadAck(b *testing.B) {
	ctx := context.Background()
	b.Run("segmenter", func(b *testing.B) {
		f := drainFixture(b, b.N)
		c, err := f.consumer(ctx, "g", batchSize)
		if err != nil {
			b.Fatal(err)
		}
		defer shutdown(c)
		t0, r0 := costAt(b, f)
		start(b)
		if err := sdkDrainReadAck(ctx, c, b.N); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		reportRate(b)
		reportCosts(b, f, t0, r0)
	})
	b.Run("raw", func(b *testing.B) {
		f := drainFixture(b, b.N)
		if err := f.rawGroup(ctx, "g"); err != nil {
			b.Fatal(err)
		}
		t0, r0 := costAt(b, f)
		start(b)
		if err := f.rawDrain(ctx, "g", b.N, (batchSize+partitions-1)/partitions); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		reportRate(b)
		reportCosts(b, f, t0, r0)
	})
}

// BenchmarkRunNoop: figure 5, Run with a no-op handler drains a backlog,
// one partition's messages at a time (sequential) or per key
// (WithKeyConcurrency(64)). Its raw baseline is BenchmarkReadAck/raw. Run
// acknowledges in its next fetch's transaction: about one round trip per
// batch (trips/100msgs) where Read and Ack take two. keys64 less
// sequential is the cost of the per-key scheduler.
func BenchmarkRunNoop(b *testing.B) {
	for _, tc := range []struct {
		name string
		opts []segmenter.RunOption
	}{
		{"sequential", nil},
		{"keys64", []segmenter.RunOption{segmenter.WithKeyConcurrency(64)}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := context.Background()
			f := drainFixture(b, b.N)
			acks := newAckCounter(b.N)
			c, err := f.consumer(ctx, "g", batchSize, segmenter.WithHooks(acks))
			if err != nil {
				b.Fatal(err)
			}
			defer shutdown(c)
			t0, r0 := costAt(b, f)
			start(b)
			d, err := sdkRunDrain(ctx, c, acks, 5*time.Minute, tc.opts...)
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			// Run's own stop after the last ack is not the drain's.
			b.ReportMetric(float64(b.N)/d.Seconds(), "msgs/s")
			reportCosts(b, f, t0, r0)
		})
	}
}

// reportCosts reports, per message, the round trips of f's client and the
// CPU time of Redis since t0, r0 (see costAt).
func reportCosts(b *testing.B, f *fixture, t0 int64, r0 time.Duration) {
	b.ReportMetric(100*float64(f.trips.trips.Load()-t0)/float64(b.N), "trips/100msgs")
	if r1, err := redisCPU(context.Background(), f.stats); err == nil {
		b.ReportMetric(float64(r1-r0)/1e3/float64(b.N), "redis-µs/msg")
	}
}

// costAt returns what reportCosts counts from.
func costAt(b *testing.B, f *fixture) (int64, time.Duration) {
	r0, err := redisCPU(context.Background(), f.stats)
	if err != nil {
		b.Fatal(err)
	}
	return f.trips.trips.Load(), r0
}

// BenchmarkReadAckInFlight: figure 4's drain while the consumer holds
// inFlight delivered messages of each partition unacked (not due: their
// maxProcessingTime is 30s). A fetch that looked for due messages in Redis
// (XPENDING IDLE) walked every one of them for each partition it read; the
// consumer's own clock now tells it none can be due. raw: the same drain
// with the same pending list (raw go-redis has no redelivery check).
func BenchmarkReadAckInFlight(b *testing.B) {
	const inFlight = 1000
	ctx := context.Background()
	b.Run("segmenter", func(b *testing.B) {
		f := drainFixture(b, b.N+inFlight*partitions+batchSize) // the holding reads overshoot by a batch at most
		c, err := f.consumer(ctx, "g", batchSize)
		if err != nil {
			b.Fatal(err)
		}
		defer shutdown(c)
		for held := 0; held < inFlight*partitions; {
			msgs, err := c.Read(ctx, time.Second)
			if err != nil || len(msgs) == 0 {
				b.Fatalf("holding messages: %d, %v", len(msgs), err)
			}
			held += len(msgs)
		}
		t0, r0 := costAt(b, f)
		start(b)
		if err := sdkDrainReadAck(ctx, c, b.N); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		reportRate(b)
		reportCosts(b, f, t0, r0)
	})
	b.Run("raw", func(b *testing.B) {
		f := drainFixture(b, b.N+inFlight*partitions)
		if err := f.rawGroup(ctx, "g"); err != nil {
			b.Fatal(err)
		}
		streams := append(append([]string(nil), f.sdkKeys...), ">", ">", ">", ">", ">", ">", ">", ">")
		for range inFlight / 100 {
			if err := f.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "raw", Streams: streams, Count: 100, Block: -1}).Err(); err != nil {
				b.Fatal(err)
			}
		}
		t0, r0 := costAt(b, f)
		start(b)
		if err := f.rawDrain(ctx, "g", b.N, (batchSize+partitions-1)/partitions); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		reportRate(b)
		reportCosts(b, f, t0, r0)
	})
}

// BenchmarkWake: the latency of a message sent to a consumer that waits
// for it, one message at a time, 500µs apart (the gap is not timed): ns/op
// is the mean Send → handler latency, p50 and p99 are reported. The
// Segmenter's entry watcher sends the consumer's fenced read right behind
// its XREAD BLOCK, so the entry that wakes it is read in the same round
// trip. raw: XADD to a consumer blocked in XREADGROUP BLOCK.
func BenchmarkWake(b *testing.B) {
	ctx := context.Background()
	measure := func(b *testing.B, send func() error, handled <-chan time.Time) {
		ds := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for range b.N {
			b.StopTimer()
			time.Sleep(500 * time.Microsecond) // the consumer waits again
			b.StartTimer()
			sent := time.Now()
			if err := send(); err != nil {
				b.Fatal(err)
			}
			ds = append(ds, (<-handled).Sub(sent))
		}
		b.StopTimer()
		slices.Sort(ds)
		b.ReportMetric(float64(percentile(ds, 0.5).Microseconds()), "p50-µs")
		b.ReportMetric(float64(percentile(ds, 0.99).Microseconds()), "p99-µs")
		b.ReportMetric(float64(ds[len(ds)-1].Microseconds()), "max-µs")
	}
	b.Run("segmenter", func(b *testing.B) {
		f := newFixture(b, nil, partitions, sendMaxLen, nil)
		c, err := f.consumer(ctx, "g", batchSize, segmenter.WithStartPosition(segmenter.StartLatest))
		if err != nil {
			b.Fatal(err)
		}
		defer shutdown(c)
		handled := make(chan time.Time, 1)
		rctx, stop := context.WithCancel(ctx)
		ran := make(chan error, 1)
		go func() {
			ran <- c.Run(rctx, func(context.Context, *contracts.CMessage) error { handled <- time.Now(); return nil })
		}()
		msgs := sdkMessages(0, numKeys)
		i := 0
		measure(b, func() error { i++; _, err := f.st.Send(ctx, msgs[i%len(msgs)]); return err }, handled)
		stop()
		if err := <-ran; err != nil {
			b.Fatal(err)
		}
	})
	b.Run("raw", func(b *testing.B) {
		f := newFixture(b, nil, partitions, sendMaxLen, nil)
		pipe := f.rdb.Pipeline()
		for _, k := range f.rawKeys {
			pipe.XGroupCreateMkStream(ctx, k, "g", "$")
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
		streams := append(slices.Clone(f.rawKeys), ">", ">", ">", ">", ">", ">", ">", ">")
		handled := make(chan time.Time, 1)
		rctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for rctx.Err() == nil {
				res, err := f.rdb.XReadGroup(rctx, &redis.XReadGroupArgs{Group: "g", Consumer: "raw", Streams: streams, Count: batchSize, Block: 100 * time.Millisecond}).Result()
				if err != nil {
					continue
				}
				for _, s := range res {
					for _, m := range s.Messages {
						handled <- time.Now()
						f.rdb.XAck(ctx, s.Stream, "g", m.ID)
					}
				}
			}
		}()
		i := 0
		measure(b, func() error { i++; return f.rdb.XAdd(ctx, f.rawXAddArgs(i)).Err() }, handled)
		stop()
		<-done
	})
}

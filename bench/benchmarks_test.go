package bench

import (
	"context"
	"testing"
	"time"

	"github.com/segmenter/segmenter"
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
// the 8 streams and one pipelined XACK per stream.
func BenchmarkReadAck(b *testing.B) {
	ctx := context.Background()
	b.Run("segmenter", func(b *testing.B) {
		f := drainFixture(b, b.N)
		c, err := f.consumer(ctx, "g", batchSize)
		if err != nil {
			b.Fatal(err)
		}
		defer shutdown(c)
		start(b)
		if err := sdkDrainReadAck(ctx, c, b.N); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		reportRate(b)
	})
	b.Run("raw", func(b *testing.B) {
		f := drainFixture(b, b.N)
		if err := f.rawGroup(ctx, "g"); err != nil {
			b.Fatal(err)
		}
		start(b)
		if err := f.rawDrain(ctx, "g", b.N, (batchSize+partitions-1)/partitions); err != nil {
			b.Fatal(err)
		}
		reportRate(b)
	})
}

// BenchmarkRunNoop: figure 5, Run with a no-op handler drains a backlog,
// one partition's messages at a time (sequential) or per key
// (WithKeyConcurrency(64)). Its raw baseline is BenchmarkReadAck/raw.
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
			start(b)
			d, err := sdkRunDrain(ctx, c, acks, 5*time.Minute, tc.opts...)
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			// Run's own stop after the last ack is not the drain's.
			b.ReportMetric(float64(b.N)/d.Seconds(), "msgs/s")
		})
	}
}

package segmenterotel_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/google/uuid"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/extra/segmenterotel"
)

// Wire the metrics in: create them on a meter provider, pass them as a
// hook, observe each consumer. A real program gives the provider an
// exporter's reader (OTLP, Prometheus) instead of a ManualReader.
func Example() {
	ctx := context.Background()
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(ctx)

	seg, err := segmenter.NewSegmenter(&segmenter.Config{RedisURL: os.Getenv("REDIS_URL"), Namespace: "example-" + uuid.NewString()[:8]})
	if err != nil {
		log.Fatal(err)
	}
	defer seg.Close(ctx)
	if _, err := seg.RegisterStream(ctx, "payments", 4, 0); err != nil {
		log.Fatal(err)
	}
	m, err := segmenterotel.New(segmenterotel.WithMeterProvider(provider))
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	c, err := seg.RegisterConsumer(ctx, "payments", "billing", 100, 30*time.Second,
		segmenter.WithHooks(m), segmenter.WithConsumerName("worker-1"))
	if err != nil {
		log.Fatal(err)
	}
	m.Observe(c)

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, x := range sm.Metrics {
			if g, ok := x.Data.(metricdata.Gauge[int64]); ok && x.Name == "segmenter.partitions.held" {
				fmt.Println(x.Name, g.DataPoints[0].Value)
			}
		}
	}
	// Output: segmenter.partitions.held 4
}

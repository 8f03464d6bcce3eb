package segmenterprom_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/extra/segmenterprom"
)

// Wire the metrics in: register them, pass them as a hook, observe each
// consumer. Serve reg with promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).
func Example() {
	ctx := context.Background()
	seg, err := segmenter.NewSegmenter(&segmenter.Config{RedisURL: os.Getenv("REDIS_URL"), Namespace: "example-" + uuid.NewString()[:8]})
	if err != nil {
		log.Fatal(err)
	}
	defer seg.Close(ctx)
	if _, err := seg.RegisterStream(ctx, "payments", 4, 0); err != nil {
		log.Fatal(err)
	}

	m := segmenterprom.New()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	c, err := seg.RegisterConsumer(ctx, "payments", "billing", 100, 30*time.Second,
		segmenter.WithHooks(m), segmenter.WithConsumerName("worker-1"))
	if err != nil {
		log.Fatal(err)
	}
	m.Observe(c)

	mfs, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "segmenter_partitions_held" {
			fmt.Println(mf.GetName(), mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
	// Output: segmenter_partitions_held 4
}

package segmenterpubsub

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"gocloud.dev/pubsub"
	"gocloud.dev/pubsub/driver"
	"gocloud.dev/pubsub/drivertest"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.WrapWithURL(m)) }

// Short timings: a consumer that leaves hands over at once anyway.
const (
	testSession = time.Second
	testBlock   = 50 * time.Millisecond
	hang        = 60 * time.Second
)

// testSegmenter returns a Segmenter on the test server in a namespace of
// its own, closed when the test ends.
func testSegmenter(t *testing.T, ns string, hooks ...segmenter.Hook) *segmenter.Segmenter {
	t.Helper()
	seg, err := segmenter.NewSegmenter(&segmenter.Config{Namespace: ns, Client: redistest.Client(t),
		SessionTimeout: testSession, BlockInterval: testBlock, Hooks: hooks})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = seg.Close(ctx)
	})
	return seg
}

// harness runs gocloud's conformance suite on a namespace of its own: each
// topic is a stream of 4 partitions, each subscription a group of its own.
type harness struct {
	seg *segmenter.Segmenter
	n   atomic.Int64
}

func newHarness(ctx context.Context, t *testing.T) (drivertest.Harness, error) {
	return &harness{seg: testSegmenter(t, redistest.Namespace(t))}, nil
}

func (h *harness) CreateTopic(ctx context.Context, testName string) (driver.Topic, func(), error) {
	name := fmt.Sprintf("topic-%d", h.n.Add(1))
	dt, err := openTopic(ctx, h.seg, false, name, &TopicOptions{Partitions: 4})
	return dt, func() {}, err
}

func (h *harness) MakeNonexistentTopic(ctx context.Context) (driver.Topic, error) {
	return openTopic(ctx, h.seg, false, "nonexistent-topic", nil)
}

func (h *harness) CreateSubscription(ctx context.Context, dt driver.Topic, testName string) (driver.Subscription, func(), error) {
	group := fmt.Sprintf("group-%d", h.n.Add(1))
	ds, err := openSubscription(ctx, h.seg, false, dt.(*topic).name, "", group, &SubscriptionOptions{ShutdownTimeout: 5 * time.Second})
	if err != nil {
		return nil, nil, err
	}
	// A test that uses the driver alone closes it here (Close is
	// idempotent: pubsub's Shutdown closes it too).
	return ds, func() { _ = ds.Close() }, nil
}

func (h *harness) MakeNonexistentSubscription(ctx context.Context) (driver.Subscription, func(), error) {
	ds, err := openSubscription(ctx, h.seg, false, "nonexistent-topic", "", "g", nil)
	return ds, func() {}, err
}

func (h *harness) Close() {}

func (h *harness) MaxBatchSizes() (int, int) { return 0, 0 }

func (h *harness) SupportsMultipleSubscriptions() bool { return true }

func TestConformance(t *testing.T) {
	drivertest.RunConformanceTests(t, newHarness, []drivertest.AsTest{asTest{}})
}

// asTest checks the driver's As functions: the SDK's types behind the
// portable ones.
type asTest struct{}

const asTestKey = "as-test-key"

func (asTest) Name() string { return "segmenter types" }

func (asTest) TopicCheck(top *pubsub.Topic) error {
	var st *segmenter.Stream
	var seg *segmenter.Segmenter
	if !top.As(&st) || st == nil || !top.As(&seg) || seg == nil {
		return errors.New("Topic.As did not reach *segmenter.Stream and *segmenter.Segmenter")
	}
	var c *segmenter.Consumer
	if top.As(&c) {
		return errors.New("Topic.As reached a *segmenter.Consumer")
	}
	return nil
}

func (asTest) SubscriptionCheck(sub *pubsub.Subscription) error {
	var c *segmenter.Consumer
	if !sub.As(&c) || c == nil || c.Group() == "" {
		return errors.New("Subscription.As did not reach *segmenter.Consumer")
	}
	var m *segmenter.MultiConsumer
	if sub.As(&m) {
		return errors.New("Subscription.As reached a *segmenter.MultiConsumer for one stream")
	}
	return nil
}

func (asTest) TopicErrorCheck(top *pubsub.Topic, err error) error {
	if !errors.Is(err, segmenter.ErrStreamNotFound) {
		return fmt.Errorf("send to a missing stream: %v, want segmenter.ErrStreamNotFound", err)
	}
	var pe *segmenter.PartitionError
	if top.ErrorAs(err, &pe) {
		return errors.New("Topic.ErrorAs found a *segmenter.PartitionError in a stream-not-found error")
	}
	return nil
}

func (asTest) SubscriptionErrorCheck(sub *pubsub.Subscription, err error) error {
	if !errors.Is(err, segmenter.ErrStreamNotFound) {
		return fmt.Errorf("receive from a missing stream: %v, want segmenter.ErrStreamNotFound", err)
	}
	var pe *segmenter.PartitionError
	if sub.ErrorAs(err, &pe) {
		return errors.New("Subscription.ErrorAs found a *segmenter.PartitionError in a stream-not-found error")
	}
	return nil
}

func (asTest) MessageCheck(m *pubsub.Message) error {
	var cm *contracts.CMessage
	if !m.As(&cm) || cm == nil {
		return errors.New("Message.As did not reach *contracts.CMessage")
	}
	if cm.PartitionKey != asTestKey || cm.Stream == "" || cm.DeliveryCount != 1 || cm.Epoch == 0 {
		return fmt.Errorf("message key %q stream %q delivery %d epoch %d; want the key BeforeSend set, a stream, a first delivery, an epoch",
			cm.PartitionKey, cm.Stream, cm.DeliveryCount, cm.Epoch)
	}
	return nil
}

func (asTest) BeforeSend(as func(any) bool) error {
	var pm *contracts.PMessage
	if !as(&pm) || pm == nil {
		return errors.New("BeforeSend's As did not reach *contracts.PMessage")
	}
	pm.PartitionKey = asTestKey
	return nil
}

func (asTest) AfterSend(as func(any) bool) error {
	var id string
	var pm *contracts.PMessage
	if !as(&id) || id == "" || !as(&pm) || pm.PartitionKey != asTestKey {
		return fmt.Errorf("AfterSend's As gave ID %q and message %v", id, pm)
	}
	return nil
}

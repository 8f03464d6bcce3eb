package segmenterpubsub

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"gocloud.dev/gcerrors"
	"gocloud.dev/pubsub"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
	"github.com/segmenter/segmenter/internal/keyspace"
	"github.com/segmenter/segmenter/internal/redistest"
)

// recordingHook logs, through a consumer's hooks, every delivery and ack
// into an invariant recorder.
type recordingHook struct{ rec *invariant.Recorder }

func (h recordingHook) OnDeliver(e segmenter.DeliverEvent) {
	h.rec.Delivered(e.Consumer, e.Messages, e.Start, e.End)
}

func (h recordingHook) OnAck(e segmenter.AckEvent) {
	msgs := make([]*contracts.CMessage, len(e.IDs))
	for i, id := range e.IDs {
		msgs[i] = &contracts.CMessage{Id: id, Partition: uint32(e.Partition), Epoch: e.Epoch, Stream: e.Stream, Group: e.Group}
	}
	outcome := invariant.AckOK
	switch e.Outcome {
	case segmenter.AckFenced:
		outcome = invariant.AckFenced
	case segmenter.AckFailed:
		outcome = invariant.AckError
	}
	h.rec.Acked(e.Consumer, msgs, outcome, e.Start, e.End)
}

// receiver receives from sub one message at a time, as an application
// that keeps each key's order does, and acks each. Once stopping, it hands
// back (Nack) what it receives until the subscription is shut down.
type receiver struct {
	sub      *pubsub.Subscription
	stopping atomic.Bool
	done     chan error
}

// handled is the log of the messages the application handled, in the
// order it handled them (across both subscriptions).
type handled struct {
	mu   sync.Mutex
	keys map[string][]int // key -> the numbers handled
	n    int
}

func startReceiver(t *testing.T, sub *pubsub.Subscription, rec *invariant.Recorder, log *handled) *receiver {
	r := &receiver{sub: sub, done: make(chan error, 1)}
	go func() {
		for {
			m, err := sub.Receive(context.Background())
			if err != nil {
				if r.stopping.Load() {
					err = nil // shut down (FailedPrecondition, or the Canceled of a batch it cut short)
				}
				r.done <- err
				return
			}
			if r.stopping.Load() {
				m.Nack()
				continue
			}
			var cm *contracts.CMessage
			if !m.As(&cm) {
				r.done <- errors.New("Message.As did not give the CMessage")
				return
			}
			start := time.Now()
			n, _ := strconv.Atoi(string(m.Body))
			log.mu.Lock()
			key := m.Metadata[DefaultKeyName]
			log.keys[key] = append(log.keys[key], n)
			log.n++
			log.mu.Unlock()
			rec.Handled(consumerOf(sub), cm, 1, nil, start, time.Now())
			m.Ack()
		}
	}()
	return r
}

// consumerOf names the subscription's consumer.
func consumerOf(sub *pubsub.Subscription) string {
	var c *segmenter.Consumer
	if sub.As(&c) {
		return c.ID()
	}
	return "?"
}

// stop shuts the subscription down while its receiver still calls
// Receive, as pubsub wants (a batch that comes back when nobody calls
// Receive any more blocks one of pubsub's goroutines for ever): the
// receiver handles nothing from now on and hands back what it gets, and
// Shutdown hands the partitions over.
func (r *receiver) stop(t *testing.T) {
	t.Helper()
	r.stopping.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	defer cancel()
	if err := r.sub.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
	case <-time.After(hang):
		t.Fatal("the receiver did not stop")
	}
}

// Through the portable API, two subscriptions of one group share a stream's
// partitions: the first one alone, then both (the partitions are
// rebalanced), then the second alone once the first shut down (handing its
// partitions and its unhandled messages over). Every key's messages are
// handled in the order they were sent, each exactly once, and the checker
// proves the invariants over what the SDK delivered and acked.
func TestPerKeyOrderWithTwoSubscriptionsOfOneGroup(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	const P, keys, perKey = 8, 24, 60
	rec := invariant.NewRecorder()
	prodSeg := testSegmenter(t, ns)
	st, err := prodSeg.RegisterStream(ctx, "orders", P, 0)
	if err != nil {
		t.Fatal(err)
	}
	top, err := OpenTopic(ctx, prodSeg, "orders", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer top.Shutdown(ctx)
	open := func(name string) *pubsub.Subscription {
		// A Segmenter each, as two processes.
		seg := testSegmenter(t, ns, recordingHook{rec})
		sub, err := OpenSubscription(ctx, seg, "orders", "billing", &SubscriptionOptions{
			BatchSize: 20, MaxProcessingTime: 30 * time.Second,
			ConsumerOptions: []segmenter.ConsumerOption{segmenter.WithConsumerName(name)}})
		if err != nil {
			t.Fatal(err)
		}
		return sub
	}
	log := &handled{keys: map[string][]int{}}
	subA := open("a")
	a := startReceiver(t, subA, rec, log)

	// Each key's messages sent one after the other, the keys concurrently
	// (so pubsub batches them), in three phases.
	var sendErr error
	var errMu sync.Mutex
	sendPhase := func(from, to int) {
		var wg sync.WaitGroup
		for k := range keys {
			key := "key-" + strconv.Itoa(k)
			wg.Go(func() {
				for i := from; i < to; i++ {
					m := &pubsub.Message{Body: []byte(strconv.Itoa(i)), Metadata: map[string]string{DefaultKeyName: key},
						AfterSend: func(as func(any) bool) error {
							var id string
							if !as(&id) {
								return errors.New("no ID")
							}
							rec.Sent(id, st.PartitionOf(key), key)
							return nil
						}}
					if err := top.Send(ctx, m); err != nil {
						errMu.Lock()
						sendErr = errors.Join(sendErr, err)
						errMu.Unlock()
						return
					}
				}
			})
		}
		wg.Wait()
		if sendErr != nil {
			t.Fatal(sendErr)
		}
	}
	handledAtLeast := func(n int) {
		redistest.Eventually(t, hang, func() bool { log.mu.Lock(); defer log.mu.Unlock(); return log.n >= n },
			"fewer than %d messages handled", n)
	}
	sendPhase(0, perKey/3)
	handledAtLeast(keys * perKey / 6)

	subB := open("b")
	b := startReceiver(t, subB, rec, log)
	var cb *segmenter.Consumer
	if !subB.As(&cb) {
		t.Fatal("no Consumer behind subscription b")
	}
	redistest.Eventually(t, hang, func() bool { return len(cb.Assignment()) == P/2 }, "b never held half the partitions")
	sendPhase(perKey/3, 2*perKey/3)
	handledAtLeast(keys * perKey / 2)

	a.stop(t)
	redistest.Eventually(t, hang, func() bool { return len(cb.Assignment()) == P }, "b did not take a's partitions")
	sendPhase(2*perKey/3, perKey)
	handledAtLeast(keys * perKey)
	b.stop(t)

	log.mu.Lock()
	defer log.mu.Unlock()
	for k := range keys {
		key := "key-" + strconv.Itoa(k)
		got := log.keys[key]
		for i, n := range got {
			if n != i {
				t.Fatalf("key %s handled %v: want 0 to %d, each once, in order", key, got, perKey-1)
			}
		}
		if len(got) != perKey {
			t.Fatalf("key %s: %d messages handled, want %d", key, len(got), perKey)
		}
	}
	evs := rec.Events()
	if err := invariant.Check(evs, invariant.Options{MaxProcessingTime: 30 * time.Second, RequireAllAcked: true}); err != nil {
		t.Fatalf("invariants violated:\n%v", err)
	}
	t.Logf("invariant log:\n%v", invariant.Summarize(evs))
}

// The URL opener: topics and subscriptions by URL, with Redis from
// redis_url or REDIS_URL; bad URLs are clear errors naming the problem.
func TestURLOpener(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Server(t)
	ns := redistest.Namespace(t)
	q := "redis_url=" + url.QueryEscape(srv.URL)
	top, err := pubsub.OpenTopic(ctx, "segmenter://"+ns+"/events?partitions=4&max_len=1000&key_name=user&"+q)
	if err != nil {
		t.Fatal(err)
	}
	defer top.Shutdown(ctx)
	t.Setenv("REDIS_URL", srv.URL) // the subscription's Redis comes from the environment
	sub, err := pubsub.OpenSubscription(ctx, "segmenter://"+ns+"/events?group=g&consumer=c1&batch_size=10&max_processing_time=5s&start=earliest&max_deliveries=3&poison=deliver")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Shutdown(ctx)
	for i := range 3 {
		if err := top.Send(ctx, &pubsub.Message{Body: []byte(strconv.Itoa(i)), Metadata: map[string]string{"user": "u1"}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		rctx, cancel := context.WithTimeout(ctx, hang)
		m, err := sub.Receive(rctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		var cm *contracts.CMessage
		if !m.As(&cm) || cm.PartitionKey != "u1" || string(m.Body) != strconv.Itoa(i) || m.Metadata["user"] != "u1" {
			t.Fatalf("message %d: %q %v (key %q)", i, m.Body, m.Metadata, cm.GetPartitionKey())
		}
		m.Ack()
	}
	var c *segmenter.Consumer
	if !sub.As(&c) || c.ID() != "c1" || c.Group() != "g" {
		t.Fatalf("subscription's consumer: %v", c)
	}
	var st *segmenter.Stream
	if !top.As(&st) || st.Partitions() != 4 || st.MaxLenPerPartition() != 1000 {
		t.Fatalf("topic's stream: %v", st)
	}

	for _, tc := range []struct{ url, says string }{
		{"segmenter://" + ns + "/events", "no group"},
		{"segmenter://" + ns + "/events?group=g&colour=red", `unknown query parameter "colour"`},
		{"segmenter://" + ns + "/events?group=g&batch_size=0", "batch_size"},
		{"segmenter://" + ns + "/events?group=g&start=middle", "start"},
		{"segmenter://" + ns + "/events?group=g&max_processing_time=soon", "max_processing_time"},
		{"segmenter://" + ns + "/events?group=bad:name", "group name"},
		{"segmenter://" + ns + "/tasks.%5B?group=g", "syntax error"},
		{"segmenter:///events?group=g", "no namespace"},
		{"segmenter://" + ns + "?group=g", "no stream"},
	} {
		_, err := pubsub.OpenSubscription(ctx, tc.url)
		if err == nil || !strings.Contains(err.Error(), tc.says) || gcerrors.Code(err) != gcerrors.InvalidArgument && !errors.Is(err, segmenter.ErrInvalidArgument) {
			t.Errorf("OpenSubscription(%s): %v; want an invalid-argument error saying %q", tc.url, err, tc.says)
		}
	}
	for _, tc := range []struct{ url, says string }{
		{"segmenter://" + ns + "/events?group=g", `unknown query parameter "group"`},
		{"segmenter://" + ns + "/events?partitions=zero", "partitions"},
		{"segmenter://" + ns + "/events?partitions=8", "stream exists with other parameters"},
	} {
		_, err := pubsub.OpenTopic(ctx, tc.url)
		if err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("OpenTopic(%s): %v; want an error saying %q", tc.url, err, tc.says)
		}
	}
	// A topic of a stream that does not exist opens, and its sends fail
	// with NotFound.
	missing, err := pubsub.OpenTopic(ctx, "segmenter://"+ns+"/missing")
	if err != nil {
		t.Fatal(err)
	}
	defer missing.Shutdown(ctx)
	if err := missing.Send(ctx, &pubsub.Message{Body: []byte("x")}); gcerrors.Code(err) != gcerrors.NotFound {
		t.Fatalf("send to a missing stream: %v (code %v), want NotFound", err, gcerrors.Code(err))
	}
}

// A pattern subscription by URL consumes every matching stream, streams
// registered after it opened included.
func TestPatternSubscriptionURL(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Server(t)
	ns := redistest.Namespace(t)
	t.Setenv("REDIS_URL", srv.URL)
	sub, err := pubsub.OpenSubscription(ctx, "segmenter://"+ns+"/tasks.*?group=workers")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Shutdown(ctx)
	var m *segmenter.MultiConsumer
	if !sub.As(&m) || m.Pattern() != "tasks.*" {
		t.Fatal("no MultiConsumer behind the pattern subscription")
	}
	want := map[string]bool{}
	for _, stream := range []string{"tasks.created", "tasks.updated"} {
		top, err := pubsub.OpenTopic(ctx, "segmenter://"+ns+"/"+stream+"?partitions=2")
		if err != nil {
			t.Fatal(err)
		}
		if err := top.Send(ctx, &pubsub.Message{Body: []byte(stream)}); err != nil {
			t.Fatal(err)
		}
		if err := top.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		want[stream] = true
	}
	got := map[string]bool{}
	for len(got) < len(want) {
		rctx, cancel := context.WithTimeout(ctx, hang)
		msg, err := sub.Receive(rctx)
		cancel()
		if err != nil {
			t.Fatalf("received %v: %v", got, err)
		}
		var cm *contracts.CMessage
		msg.As(&cm)
		if cm.Stream != string(msg.Body) {
			t.Fatalf("message %q came from stream %q", msg.Body, cm.Stream)
		}
		got[cm.Stream] = true
		msg.Ack()
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("received from %v, want %v", got, want)
	}
}

// A stream deleted in Redis while consumed: a subscription of that stream
// ends with gcerrors.NotFound (segmenter.ErrGroupNotFound); a pattern
// subscription reports it to OnError and goes on with its other streams.
func TestDeletedStream(t *testing.T) {
	ctx := context.Background()
	ns := redistest.Namespace(t)
	seg := testSegmenter(t, ns)
	rdb := redistest.Client(t)
	keys := keyspace.New(ns)
	var mu sync.Mutex
	var reported []error
	single, err := OpenSubscription(ctx, seg, "jobs.a", "g", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer single.Shutdown(ctx)
	pattern, err := OpenPatternSubscription(ctx, seg, "jobs.*", "p", &SubscriptionOptions{
		OnError: func(err error) { mu.Lock(); reported = append(reported, err); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	defer pattern.Shutdown(ctx)
	topA, err := OpenTopic(ctx, seg, "jobs.a", &TopicOptions{Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer topA.Shutdown(ctx)
	topB, err := OpenTopic(ctx, seg, "jobs.b", &TopicOptions{Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer topB.Shutdown(ctx)
	receive := func(sub *pubsub.Subscription) (*pubsub.Message, error) {
		rctx, cancel := context.WithTimeout(ctx, hang)
		defer cancel()
		return sub.Receive(rctx)
	}
	if err := topA.Send(ctx, &pubsub.Message{Body: []byte("a1")}); err != nil {
		t.Fatal(err)
	}
	m, err := receive(single)
	if err != nil {
		t.Fatal(err)
	}
	m.Ack()
	var mc *segmenter.MultiConsumer
	if !pattern.As(&mc) {
		t.Fatal("no MultiConsumer")
	}
	redistest.Eventually(t, hang, func() bool { return len(mc.Streams()) == 2 }, "the pattern subscription does not consume both streams")

	for p := range 2 {
		if err := rdb.Del(ctx, keys.Partition("jobs.a", p)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// Entries in the deleted partitions (not through segmenter: the
	// stream no longer has its groups) make the consumers fetch them.
	for p := range 2 {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Partition("jobs.a", p), Values: []string{"v", "1", "k", "k", "d", "x"}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	_, err = receive(single)
	if gcerrors.Code(err) != gcerrors.NotFound || !errors.Is(err, segmenter.ErrGroupNotFound) {
		t.Fatalf("Receive from a deleted stream: %v (code %v), want NotFound wrapping ErrGroupNotFound", err, gcerrors.Code(err))
	}
	// The pattern subscription goes on with jobs.b, and tells OnError (when
	// a Read, driven by Receive, comes upon the deleted partitions).
	if err := topB.Send(ctx, &pubsub.Message{Body: []byte("b1")}); err != nil {
		t.Fatal(err)
	}
	told := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, err := range reported {
			if errors.Is(err, segmenter.ErrGroupNotFound) && strings.Contains(err.Error(), `"jobs.a"`) {
				return true
			}
		}
		return false
	}
	gotB := false
	deadline := time.Now().Add(hang)
	for !gotB || !told() {
		if time.Now().After(deadline) {
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("b1 received: %v; OnError not told of the deleted stream (reported %v)", gotB, reported)
		}
		rctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		m, err := pattern.Receive(rctx)
		cancel()
		switch {
		case err == nil:
			m.Ack()
			gotB = gotB || string(m.Body) == "b1"
		case rctx.Err() == nil:
			t.Fatalf("the pattern subscription ended: %v", err)
		}
	}
}

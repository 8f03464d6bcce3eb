//go:build unix

package e2e

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/invariant"
)

// A consumer's Read is under way when a rebalance revokes one of its
// partitions. The read ran in Redis, its reply is on its way (held back by a
// slow connection), so the consumer's in-flight list is still empty when its
// background loop finds the revoked partition drained and sends the release
// (held back by another slow connection). The reply then arrives and Read
// hands the messages of the revoked partition to the application. DESIGN:
// a member that lost a partition "waits for its delivered messages of that
// partition to be acked or to pass maxProcessingTime, then releases the
// lease" — so the new owner must not get them while the application still
// processes them, and the application's ack must not be fenced.
func TestRevokedPartitionIsNotReleasedWhileItsMessagesAreInFlight(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const P = 2
	st := e.stream("revoke", P)
	// A's next read: its reply takes 200ms; A's first release takes 400ms
	// to leave (less than a lease's validity: A's other lease stays renewed).
	net := newSlowNet()
	net.readDelay, net.releaseDelay = 200*time.Millisecond, 400*time.Millisecond
	rdbA := e.info.Client(t)
	rdbA.AddHook(net)
	segA, err := segmenter.NewSegmenter(&segmenter.Config{
		Namespace: e.ns, Client: rdbA, SessionTimeout: testSession, HeartbeatInterval: testHeartbeat, BlockInterval: testBlock,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = segA.Close(ctx)
	})
	a, err := segA.RegisterConsumer(ctx, "revoke", "g", 10, 30*time.Second, segmenter.WithConsumerName("A"))
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Assignment()) != P {
		t.Fatalf("A holds %v, want every partition", a.Assignment())
	}
	rec, sendRec := invariant.NewRecorder(), invariant.NewRecorder()
	var batch []*contracts.PMessage
	for p := range P {
		for i := range 3 {
			batch = append(batch, &contracts.PMessage{PartitionKey: keyFor(t, st, p, 0), Data: []byte(fmt.Sprint(i))})
		}
	}
	ids, err := st.SendBatch(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range batch {
		sendRec.Sent(ids[i], st.PartitionOf(m.PartitionKey), m.PartitionKey)
	}

	net.delayReads.Store(1)
	net.delayReleases.Store(1)
	type result struct {
		msgs       []*contracts.CMessage
		err        error
		start, end time.Time
	}
	readA := make(chan result, 1)
	go func() {
		start := time.Now()
		msgs, err := a.Read(ctx, 2*time.Second)
		readA <- result{msgs, err, start, time.Now()}
	}()
	select {
	case <-net.readRan: // A's read ran in Redis; its reply is on the way
	case <-time.After(hang):
		t.Fatal("A's read never ran")
	}
	b, err := e.seg.RegisterConsumer(ctx, "revoke", "g", 10, 30*time.Second, segmenter.WithConsumerName("B"))
	if err != nil {
		t.Fatal(err)
	}
	r := <-readA
	rec.Delivered("A", r.msgs, r.start, r.end)
	// A may deliver the revoked partition's messages or leave them to B;
	// what it delivers is its application's to process.
	if r.err != nil || len(r.msgs) == 0 {
		t.Fatalf("A's read returned %d messages, %v", len(r.msgs), r.err)
	}
	held := map[string]bool{}
	for _, m := range r.msgs {
		held[fmt.Sprint(m.Partition, "/", m.Id)] = true
	}

	// A's application processes what it got (for 2s, far below its
	// maxProcessingTime of 30s). Meanwhile B must get none of it.
	var stolen []string
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		msgs, err := recordedRead(ctx, rec, b, 100*time.Millisecond)
		if err != nil && !errors.Is(err, segmenter.ErrFenced) {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if held[fmt.Sprint(m.Partition, "/", m.Id)] {
				stolen = append(stolen, fmt.Sprintf("%s of partition %d (delivery count %d)", m.Id, m.Partition, m.DeliveryCount))
			}
		}
		if len(msgs) > 0 {
			_ = recordedAck(ctx, rec, b, msgs) // a failed ack is redelivered
		}
	}
	ackErr := recordedAck(ctx, rec, a, r.msgs)
	t.Logf("the slow network held back %d read of A and the first of its %d release batches; A acked with %v, holds %v; B holds %v", net.reads.Load(), net.releases.Load(), ackErr, a.Assignment(), b.Assignment())
	if net.reads.Load() != 1 {
		t.Fatalf("the slow network held back %d reads of A, want 1: it no longer recognizes the SDK's read script", net.reads.Load())
	}
	if len(stolen) > 0 {
		t.Errorf("while A's application still processed them, unacked, B was given %v: A released the revoked partition with messages in flight", stolen)
	}
	if ackErr != nil {
		t.Errorf("A's ack of the messages it was processing: %v", ackErr)
	}
	// B reads on until every message is acked: what A did not deliver of
	// the revoked partition, if anything, is B's once A released it.
	readB := startReader(t, rec, b)
	e.waitAllAcked(st, "g")
	if err := readB.halt(); err != nil {
		t.Fatal(err)
	}
	evs := append(sendRec.Events(), rec.Events()...)
	t.Logf("invariant log:\n%v", invariant.Summarize(evs))
	if err := invariant.Check(evs, invariant.Options{MaxProcessingTime: 30 * time.Second, RequireAllAcked: true}); err != nil {
		t.Errorf("invariants violated:\n%v", err)
	}
}

func outcome(err error) invariant.AckOutcome {
	switch {
	case err == nil:
		return invariant.AckOK
	case errors.Is(err, segmenter.ErrFenced):
		return invariant.AckFenced
	default:
		return invariant.AckError
	}
}

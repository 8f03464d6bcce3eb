//go:build unix

package e2e

// The fault matrix, the network between consumers and Redis: each worker
// talks to Redis through its own faultProxy.

import (
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/segmenter/segmenter/internal/invariant"
)

// proxied starts n workers, each behind a proxy of its own, named w1..wn.
func (e *env) proxied(n int, o workerOpts) ([]*worker, []*faultProxy) {
	e.t.Helper()
	ws := make([]*worker, n)
	ps := make([]*faultProxy, n)
	for i := range ws {
		ps[i] = newProxy(e.t, e.info.Addr)
		wo := o
		wo.name, wo.redisURL = "w"+strconv.Itoa(i+1), ps[i].URL()
		ws[i] = e.startWorker(wo)
	}
	return ws, ps
}

// One consumer's network drops every packet (a blackhole) for two session
// timeouts, just as it acks a batch: the others take its partitions once
// its session expires; when the network comes back, what it sent meanwhile
// reaches Redis late, and its ack and reads are refused (fenced): it drops
// the partitions it had and rejoins. Nothing is lost or reordered, and no
// partition had two owners at once.
func TestFaultNetworkBlackhole(t *testing.T) {
	e := newEnv(t)
	const P = 8
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 100, 0, 10, 10*time.Millisecond)
	ws, ps := e.proxied(3, workerOpts{work: time.Millisecond})
	w1, w2, w3 := ws[0], ws[1], ws[2]
	e.waitBalanced(st.Name(), P, ws...)
	prod.waitSent(t, 1000)

	// Cut off with a batch in its hands: its ack goes into the blackhole.
	freezeBeforeAck(e, w2, P)
	held := heldBy(e.leases(st.Name(), defaultGroup, P), "w2")
	cut := time.Now()
	ps[1].set(netBlackhole)
	w2.signal(syscall.SIGCONT)
	poll(t, hang, 20*time.Millisecond, func() bool {
		for p, o := range e.owners(st.Name(), defaultGroup, P) {
			if _, ok := held[p]; ok && (o == "w2" || o == "") {
				return false
			}
		}
		return true
	}, "the others never took the partitions of the consumer cut off")
	// Two sessions, short of go-redis' read timeout (3s): the ack in the
	// blackhole gets its reply when the network comes back.
	for time.Since(cut) < 2*testSession {
		prod.waitSent(t, int(prod.sent.Load())+50)
	}
	ps[1].heal()
	poll(t, hang, 20*time.Millisecond, func() bool {
		lost := 0
		for _, ev := range w2.PartitionEvents() {
			if ev.kind == "lost" {
				lost++
			}
		}
		return lost >= len(held) && w2.FencedOps(st.Name())["ack"]
	}, "the consumer cut off never had its ack refused and all its partitions reported lost: %v", lazy(func() string { return w2.tail(20) }))
	e.waitBalanced(st.Name(), P, ws...) // it rejoined
	prod.waitSent(t, int(prod.sent.Load())+1000)
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, ws...)
	opts := invariant.Options{MaxProcessingTime: 10 * time.Second}
	evs := e.checkWith(st.Name(), defaultGroup, opts, prod)
	took := takeovers(st.Name(), held, cut, w1, w3)
	if len(took) == 0 {
		t.Error("no partition of the consumer cut off was delivered by another")
	}
	t.Logf("the consumer cut off was fenced %d times: %v; its partitions delivered by the others %s after the cut",
		len(w2.Fenced()), w2.Fenced(), percentiles(took))
	e.logFigures(evs, opts, ws, nil, nil)
}

// Every connection of every consumer is reset (RST) five times, 300ms
// apart, while a producer sends: commands in flight lose their replies
// (reads whose outcome is unknown, acks that may have run); the consumers
// reconnect and claim what may have been read unseen. Nothing is lost or
// reordered.
func TestFaultNetworkResets(t *testing.T) {
	e := newEnv(t)
	const P = 8
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 100, 0, 10, 10*time.Millisecond)
	ws, ps := e.proxied(3, workerOpts{work: time.Millisecond})
	e.waitBalanced(st.Name(), P, ws...)
	prod.waitSent(t, 1000)
	for range 5 {
		for _, p := range ps {
			p.set(netReset)
		}
		for _, p := range ps {
			p.heal()
		}
		prod.waitSent(t, int(prod.sent.Load())+300) // 300ms at 1000 messages/s
	}
	resets := int64(0)
	for _, p := range ps {
		resets += p.resets.Load()
	}
	if resets < 15 {
		t.Fatalf("%d connections reset, want at least one per consumer and round", resets)
	}
	e.waitBalanced(st.Name(), P, ws...)
	prod.waitSent(t, int(prod.sent.Load())+500)
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, ws...)
	opts := invariant.Options{MaxProcessingTime: 10 * time.Second}
	evs := e.checkWith(st.Name(), defaultGroup, opts, prod)
	s := invariant.Summarize(evs)
	t.Logf("%d connections reset; the consumers saw %d read errors and %d acks of unknown outcome", resets, s.ReadErrors, s.AckUnknown)
	e.logFigures(evs, opts, ws, nil, nil)
}

// Every byte between the consumers and Redis is held back 150ms each way
// for three seconds, a round trip of 300ms, three heartbeat intervals: the
// consumers are slow but keep their partitions, and nothing is lost or
// reordered.
func TestFaultNetworkLatency(t *testing.T) {
	e := newEnv(t)
	const P = 8
	const latency = 150 * time.Millisecond
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 100, 0, 10, 10*time.Millisecond)
	ws, ps := e.proxied(3, workerOpts{work: time.Millisecond})
	e.waitBalanced(st.Name(), P, ws...)
	prod.waitSent(t, 1000)
	from := time.Now()
	for _, p := range ps {
		p.setLatency(latency)
	}
	for time.Since(from) < 3*time.Second {
		prod.waitSent(t, int(prod.sent.Load())+50) // the slow network lasts three seconds
	}
	for _, p := range ps {
		p.heal()
	}
	until := time.Now()
	e.waitBalanced(st.Name(), P, ws...)
	prod.waitSent(t, int(prod.sent.Load())+500)
	prod.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, ws...)
	opts := invariant.Options{MaxProcessingTime: 10 * time.Second}
	evs := e.checkWith(st.Name(), defaultGroup, opts, prod)
	slow := 0
	for _, ev := range evs {
		if ev.Kind == invariant.KindDelivered && ev.Start.After(from) && ev.End.Before(until) && ev.End.Sub(ev.Start) >= 2*latency {
			slow++
		}
	}
	if slow == 0 {
		t.Fatal("no delivery during the slow network took a round trip of the added latency: the proxy added none")
	}
	e.logFigures(evs, opts, ws, nil, nil)
}

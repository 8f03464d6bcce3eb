//go:build unix

package e2e

import (
	"testing"
	"time"

	"github.com/segmenter/segmenter/internal/invariant"
	"github.com/segmenter/segmenter/internal/redistest"
)

// Redis (append-only file, fsync always) is killed mid-stream and started
// again after more than a session timeout: the workers reconnect, the
// sessions and leases that expired meanwhile move, and nothing sent before
// or after the crash is lost or reordered.
func TestRedisCrashWithAOF(t *testing.T) {
	inst := redistest.Standalone(t, redistest.WithAOF())
	e := newEnvOn(t, &inst.Info)
	const P = 8
	st := e.stream(defaultStream, P)
	// Slow workers: the crash finds them with a backlog and batches in flight.
	ws := []*worker{
		e.startWorker(workerOpts{name: "w1", work: 2 * time.Millisecond}),
		e.startWorker(workerOpts{name: "w2", work: 3 * time.Millisecond}),
		e.startWorker(workerOpts{name: "w3", work: 4 * time.Millisecond}),
	}
	e.waitBalanced(st.Name(), P, ws...)
	before := e.startProducer(st, 100, 0, 20, 10*time.Millisecond)
	before.waitSent(t, 1000)
	before.stop(t) // every send acknowledged by Redis is on disk

	pending := 0
	for _, w := range ws {
		for _, ids := range e.pendingOf(st.Name(), defaultGroup, w.name, P) {
			pending += len(ids)
		}
	}
	inst.Kill()
	t.Logf("Redis killed with %d messages in flight", pending)
	time.Sleep(2 * testSession) // the outage under test: past every session and lease
	inst.Start()
	e.waitBalanced(st.Name(), P, ws...)

	after := e.startProducer(st, 100, 0, 10, 10*time.Millisecond)
	after.waitSent(t, 1000)
	after.stop(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, ws...)
	evs := e.check(st.Name(), defaultGroup, 10*time.Second, before, after)
	e.logFigures(evs, invariant.Options{MaxProcessingTime: 10 * time.Second}, ws, nil, nil)
}

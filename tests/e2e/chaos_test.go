//go:build unix

package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Workers are killed, frozen past and short of their session timeout,
// stopped, restarted (some under their old name) and added at random while
// a producer sends, and some fail to process a batch now and then (they
// leave it unacked, so it is redelivered after maxProcessingTime): the
// merged log keeps every invariant. E2E_CHAOS_SEED replays a run.
func TestChaos(t *testing.T) {
	e := newEnv(t)
	const P = 16
	const maxProc = 400 * time.Millisecond
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("E2E_CHAOS_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("E2E_CHAOS_SEED: %v", err)
		}
	}
	chaosNoAck := os.Getenv("E2E_CHAOS_NOACK") != ""
	t.Logf("chaos seed %d (replay with E2E_CHAOS_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 300, 0, 10, 10*time.Millisecond)

	n := 0
	start := func(name string) *worker {
		o := workerOpts{
			name:    name,
			batch:   1 + rng.IntN(30),
			work:    time.Duration(rng.IntN(3)) * time.Millisecond,
			maxProc: maxProc,
		}
		if chaosNoAck && rng.IntN(3) == 0 {
			o.noAck = 3 + rng.IntN(10)
		}
		return e.startWorker(o)
	}
	fresh := func() *worker {
		n++
		return start("c" + strconv.Itoa(n))
	}
	live := []*worker{fresh(), fresh(), fresh(), fresh()}
	e.waitBalanced(st.Name(), P, live...)

	var actions []string
	begin := time.Now()
	for time.Since(begin) < 20*time.Second {
		// The pace of the chaos is the behaviour under test.
		time.Sleep(time.Duration(200+rng.IntN(600)) * time.Millisecond)
		i := rng.IntN(len(live))
		w := live[i]
		switch a := rng.IntN(6); {
		case a == 0: // crash, and a new process under a new name
			w.kill()
			live[i] = fresh()
			actions = append(actions, "kill "+w.name+", start "+live[i].name)
		case a == 1: // crash, and a restart under the same name
			w.kill()
			live[i] = start(w.name)
			actions = append(actions, "kill "+w.name+", restart it")
		case a == 2: // graceful restart
			w.stop()
			live[i] = fresh()
			actions = append(actions, "stop "+w.name+", start "+live[i].name)
		case a == 3: // freeze, past the session timeout or not
			d := time.Duration(100+rng.IntN(2000)) * time.Millisecond
			w.signal(syscall.SIGSTOP)
			time.Sleep(d)
			w.signal(syscall.SIGCONT)
			actions = append(actions, fmt.Sprintf("freeze %s %v", w.name, d))
		case a == 4 && len(live) < 6:
			live = append(live, fresh())
			actions = append(actions, "start "+live[len(live)-1].name)
		case len(live) > 2:
			w.stop()
			live = slices.Delete(live, i, i+1)
			actions = append(actions, "stop "+w.name)
		}
	}
	t.Logf("chaos: %d actions: %v", len(actions), actions)
	prod.stop(t)
	e.waitBalanced(st.Name(), P, live...)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, live...)
	e.check(st.Name(), defaultGroup, maxProc, prod)
}

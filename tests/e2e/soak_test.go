//go:build unix

package e2e

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmenter/segmenter/internal/invariant"
	"github.com/segmenter/segmenter/internal/redistest"
)

// The soak: make chaos runs TestSoak with these flags (go test ... -args
// -soak.runs=K -soak.seed=N). Without -soak.runs it is skipped: the fault
// suite (TestFault*) covers each fault once in make test.
var (
	soakRuns     = flag.Int("soak.runs", 0, "soak runs (0: TestSoak is skipped)")
	soakSeed     = flag.Uint64("soak.seed", 0, "seed of the soak's schedules (0: from the clock); run i's seed is derived from it")
	soakOnly     = flag.Int("soak.only", -1, "replay only run number N (from 0) of the seed")
	soakDuration = flag.Duration("soak.duration", 15*time.Second, "how long each run plays faults")
	soakReport   = flag.String("soak.report", "", "write the soak's figures to this file (Markdown)")
)

// soakFault is a kind of fault the soak plays.
type soakFault string

// The faults of the soak, those of the fault suite whose promise is the
// full one (nothing lost, order, one owner): the faults where Redis itself
// loses data (deletions, flushes, restarts without persistence) are in the
// suite only.
const (
	fKill        soakFault = "SIGKILL of a consumer"
	fKillRestart soakFault = "SIGKILL, restart under the same name"
	fTerm        soakFault = "SIGTERM of a consumer"
	fPauseShort  soakFault = "SIGSTOP shorter than the session"
	fPauseLong   soakFault = "SIGSTOP past the session (zombie)"
	fJoin        soakFault = "a consumer joins"
	fLeave       soakFault = "a consumer leaves (SIGTERM)"
	fFlap        soakFault = "flapping join (leaves after 100ms)"
	fBlackhole   soakFault = "network blackhole of a consumer"
	fReset       soakFault = "TCP reset of every connection"
	fLatency     soakFault = "added latency (150ms each way)"
	fClientPause soakFault = "CLIENT PAUSE ALL"
	fRedisStop   soakFault = "SIGSTOP of redis-server"
	fRedisCrash  soakFault = "redis-server SIGKILL and restart (AOF always)"
	fScriptFlush soakFault = "SCRIPT FLUSH"
)

// soakFaults and their weights in the schedules.
var soakFaults = []struct {
	f      soakFault
	weight int
}{
	{fKill, 3}, {fKillRestart, 2}, {fTerm, 3}, {fPauseShort, 2}, {fPauseLong, 2}, {fJoin, 2}, {fLeave, 2}, {fFlap, 1},
	{fBlackhole, 2}, {fReset, 2}, {fLatency, 1}, {fClientPause, 1}, {fRedisStop, 1}, {fRedisCrash, 1}, {fScriptFlush, 1},
}

// soakStep is one fault of a schedule: at offset At of the run, on the
// consumer in slot Slot (modulo the live ones), lasting D where it lasts.
type soakStep struct {
	At   time.Duration
	F    soakFault
	Slot int
	D    time.Duration
}

func (s soakStep) String() string {
	out := fmt.Sprintf("+%v %s", s.At.Round(time.Millisecond), s.F)
	if s.D > 0 {
		out += " for " + s.D.Round(time.Millisecond).String()
	}
	return out + " (slot " + strconv.Itoa(s.Slot) + ")"
}

// soakPlan is one run: its consumers and its schedule, drawn from its seed.
type soakPlan struct {
	Seed      uint64
	Mode      string // read, run or run-key
	Consumers int
	Batch     int
	NoAck     int    // read mode: every NoAck-th batch left unacked (0: none)
	FailHow   string // run modes: the handlers fail ("error") or panic on some messages ("": none)
	Steps     []soakStep
}

func (p soakPlan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d: %d consumers, mode %s, batch %d", p.Seed, p.Consumers, p.Mode, p.Batch)
	if p.NoAck > 0 {
		fmt.Fprintf(&b, ", every %dth batch unacked", p.NoAck)
	}
	if p.FailHow != "" {
		fmt.Fprintf(&b, ", handlers %s on some messages", map[string]string{"error": "fail", "panic": "panic"}[p.FailHow])
	}
	b.WriteString("; schedule:")
	for _, s := range p.Steps {
		b.WriteString("\n  " + s.String())
	}
	return b.String()
}

// soakMaxProc is the consumers' maxProcessingTime in the soak.
const soakMaxProc = time.Second

// newSoakPlan draws run i's plan from the soak's seed.
func newSoakPlan(seed uint64, i int, duration time.Duration) soakPlan {
	runSeed := seed ^ (uint64(i+1) * 0x9e3779b97f4a7c15)
	rng := rand.New(rand.NewPCG(runSeed, runSeed^0x5eed))
	p := soakPlan{Seed: runSeed, Consumers: 3 + rng.IntN(2), Batch: 1 + rng.IntN(40)}
	p.Mode = []string{"read", "run", "run-key"}[rng.IntN(3)]
	switch {
	case p.Mode == "read" && rng.IntN(2) == 0:
		p.NoAck = 5 + rng.IntN(10)
	case p.Mode != "read" && rng.IntN(2) == 0:
		// (Handlers that sleep past maxProcessingTime are the suite's:
		// Run keeps their messages, and the ones queued behind them, from
		// coming due, which the checker's Due invariant cannot see.)
		p.FailHow = []string{"error", "panic"}[rng.IntN(2)]
	}
	total := 0
	for _, f := range soakFaults {
		total += f.weight
	}
	at := 500 * time.Millisecond
	for at < duration {
		n := rng.IntN(total)
		var f soakFault
		for _, x := range soakFaults {
			if n < x.weight {
				f = x.f
				break
			}
			n -= x.weight
		}
		s := soakStep{At: at, F: f, Slot: rng.IntN(8)}
		switch f {
		case fPauseShort:
			s.D = time.Duration(100+rng.IntN(200)) * time.Millisecond
		case fPauseLong:
			s.D = testSession + time.Duration(rng.IntN(2000))*time.Millisecond
		case fBlackhole:
			s.D = time.Duration(300+rng.IntN(2700)) * time.Millisecond
		case fLatency:
			s.D = time.Duration(1000+rng.IntN(1000)) * time.Millisecond
		case fClientPause, fRedisStop:
			s.D = time.Duration(300+rng.IntN(2200)) * time.Millisecond // short of go-redis' 3s read timeout
		}
		p.Steps = append(p.Steps, s)
		at += s.D + time.Duration(300+rng.IntN(1200))*time.Millisecond
	}
	return p
}

// TestSoak plays randomized schedules of faults (seeded, printed,
// replayable) while a producer sends, run after run, each run checked by
// the invariant checker over the merged log of every process; it fails on
// any violation and prints the figures of every run and of all of them.
func TestSoak(t *testing.T) {
	if *soakRuns <= 0 {
		t.Skip("the soak runs with make chaos (-soak.runs=K)")
	}
	seed := *soakSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	say := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
	say("soak: %d runs of %v, seed %d (replay one run: make chaos SEED=%d ONLY=N)", *soakRuns, *soakDuration, seed, seed)
	logs := os.Getenv("E2E_LOG_DIR")
	if logs == "" {
		logs = filepath.Join(os.TempDir(), fmt.Sprintf("segmenter-soak-%d", seed))
		if err := os.MkdirAll(logs, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Setenv("E2E_LOG_DIR", logs)
	}
	say("soak: the logs of a failed run go to %s", logs)
	inst := redistest.Standalone(t, redistest.WithAOF())
	var total figures
	byFault := map[soakFault]*faultFigures{}
	failed := 0
	for i := range *soakRuns {
		if *soakOnly >= 0 && i != *soakOnly {
			continue
		}
		plan := newSoakPlan(seed, i, *soakDuration)
		say("soak run %d, %v", i, plan)
		var f figures
		var vs []*invariant.Violation
		var played []soakFault
		ok := t.Run(fmt.Sprintf("run%d", i), func(t *testing.T) {
			f, vs, played = soakRun(t, inst, plan)
		})
		status := "ok"
		if !ok || len(vs) > 0 {
			failed++
			status = "FAILED"
			for j, v := range vs {
				if j == 20 {
					say("  ... %d more violations", len(vs)-20)
					break
				}
				say("  violation: %v", v)
			}
		}
		say("soak run %d %s: %v", i, status, f)
		total.add(f)
		seen := map[soakFault]bool{}
		for _, x := range played {
			ff := byFault[x]
			if ff == nil {
				ff = &faultFigures{}
				byFault[x] = ff
			}
			ff.injected++
			if !seen[x] {
				seen[x] = true
				ff.add(f)
			}
		}
	}
	version := "unknown"
	if info, err := inst.Client(t).Info(context.Background(), "server").Result(); err == nil {
		if _, v, ok := strings.Cut(info, "redis_version:"); ok {
			version, _, _ = strings.Cut(v, "\r\n")
		}
	}
	report := soakTable(seed, version, total, byFault)
	say("%s", report)
	if *soakReport != "" {
		if err := os.WriteFile(*soakReport, []byte(report), 0o644); err != nil {
			t.Error(err)
		}
	}
	if failed > 0 {
		t.Errorf("%d soak runs failed (seed %d)", failed, seed)
	}
}

// faultFigures are the figures of the runs that played a fault, and how
// many times it was played.
type faultFigures struct {
	figures
	injected int
}

// soakRun plays plan against inst and returns its figures, the violations
// found, and the faults played (a join past 5 consumers, or a leave below
// 2, is skipped).
func soakRun(t *testing.T, inst *redistest.Instance, plan soakPlan) (_ figures, _ []*invariant.Violation, played []soakFault) {
	e := newEnvOn(t, &inst.Info)
	ctx := context.Background()
	const P = 8
	st := e.stream(defaultStream, P)
	prod := e.startProducerWith(st, producerOpts{keys: 200, batch: 10, interval: 10 * time.Millisecond, tolerate: true})

	type member struct {
		w     *worker
		proxy *faultProxy
	}
	var live []member
	var all, leaving []*worker
	n := 0
	start := func(name string) member {
		px := newProxy(t, inst.Addr)
		o := workerOpts{name: name, mode: plan.Mode, batch: plan.Batch, maxProc: soakMaxProc, work: time.Millisecond,
			noAck: plan.NoAck, redisURL: px.URL(), backoff: 10 * time.Millisecond}
		if plan.FailHow != "" {
			o.failKey, o.failEvery, o.failTimes, o.failHow = "k7", 3, 2, plan.FailHow
		}
		w := e.startWorker(o)
		all = append(all, w)
		return member{w, px}
	}
	fresh := func() member {
		n++
		return start("c" + strconv.Itoa(n))
	}
	for range plan.Consumers {
		live = append(live, fresh())
	}
	workersOf := func(ms []member) []*worker {
		out := make([]*worker, len(ms))
		for i, m := range ms {
			out[i] = m.w
		}
		return out
	}
	e.waitBalanced(st.Name(), P, workersOf(live)...)

	var kill, term []time.Duration
	type signalled struct {
		at   time.Time
		held map[int]int64
		who  *worker
		term bool
	}
	var victims []signalled
	remember := func(w *worker, term bool) {
		victims = append(victims, signalled{at: time.Now(), held: heldBy(e.leases(st.Name(), defaultGroup, P), w.name), who: w, term: term})
	}
	begin := time.Now()
	for _, s := range plan.Steps {
		if d := time.Until(begin.Add(s.At)); d > 0 {
			time.Sleep(d) // the schedule's pace is the behaviour under test
		}
		i := s.Slot % len(live)
		m := live[i]
		switch s.F {
		case fKill, fKillRestart:
			if s.F == fKill {
				// (A process restarted under the same name takes its old
				// leases at once: no takeover to measure.)
				remember(m.w, false)
			}
			m.w.kill()
			if s.F == fKill {
				live[i] = fresh()
			} else {
				live[i] = start(m.w.name)
			}
		case fTerm:
			remember(m.w, true)
			m.w.stop()
			live[i] = fresh()
		case fJoin:
			if len(live) >= 5 {
				continue // at most 5 consumers
			}
			live = append(live, fresh())
		case fLeave:
			if len(live) <= 2 {
				continue // at least 2 consumers
			}
			remember(m.w, true)
			m.w.stop()
			live = slices.Delete(live, i, i+1)
		case fFlap:
			f := fresh()
			time.Sleep(100 * time.Millisecond) // the flap
			f.w.signal(syscall.SIGTERM)
			leaving = append(leaving, f.w)
		case fPauseShort, fPauseLong:
			m.w.signal(syscall.SIGSTOP)
			time.Sleep(s.D) // the pause under test
			m.w.signal(syscall.SIGCONT)
		case fBlackhole:
			m.proxy.set(netBlackhole)
			time.Sleep(s.D) // the outage under test
			m.proxy.heal()
		case fReset:
			for _, x := range live {
				x.proxy.set(netReset)
				x.proxy.heal()
			}
		case fLatency:
			for _, x := range live {
				x.proxy.setLatency(150 * time.Millisecond)
			}
			time.Sleep(s.D) // the slow network under test
			for _, x := range live {
				x.proxy.heal()
			}
		case fClientPause:
			if err := e.rdb.Do(ctx, "CLIENT", "PAUSE", s.D.Milliseconds(), "ALL").Err(); err != nil {
				t.Fatal(err)
			}
		case fRedisStop:
			inst.Freeze()
			time.Sleep(s.D) // the outage under test
			inst.Thaw()
		case fRedisCrash:
			inst.Kill()
			inst.Start()
		case fScriptFlush:
			if err := e.rdb.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		played = append(played, s.F)
	}
	for _, w := range leaving {
		_ = w.waitExit(30 * time.Second)
		w.checkStderr()
	}
	// The schedule is over: one SIGKILL and one SIGTERM with nothing else
	// going on, the producer still sending, for takeover times free of the
	// other faults.
	e.waitBalanced(st.Name(), P, workersOf(live)...)
	clean := len(victims)
	for _, term := range []bool{false, true} {
		prod.waitSent(t, int(prod.sent.Load())+200)
		m := live[0]
		remember(m.w, term)
		if term {
			m.w.stop()
		} else {
			m.w.kill()
		}
		// The others take its partitions; its replacement starts after.
		e.waitBalanced(st.Name(), P, workersOf(live[1:])...)
		prod.waitSent(t, int(prod.sent.Load())+200)
		live[0] = fresh()
		e.waitBalanced(st.Name(), P, workersOf(live)...)
	}
	prod.waitSent(t, int(prod.sent.Load())+200)
	prod.stop(t)
	e.waitBalanced(st.Name(), P, workersOf(live)...)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, workersOf(live)...)

	var cleanKill, cleanTerm []time.Duration
	for i, v := range victims {
		var others []*worker
		for _, w := range all {
			if w != v.who {
				others = append(others, w)
			}
		}
		d := takeovers(st.Name(), v.held, v.at, others...)
		switch {
		case i >= clean && v.term:
			cleanTerm = append(cleanTerm, d...)
		case i >= clean:
			cleanKill = append(cleanKill, d...)
		case v.term:
			term = append(term, d...)
		default:
			kill = append(kill, d...)
		}
	}
	evs := e.events(st.Name(), defaultGroup, prod)
	opts := invariant.Options{MaxProcessingTime: soakMaxProc, RequireAllAcked: true, Slack: clockSlack}
	if plan.Mode == "run-key" {
		opts.Order = invariant.OrderByKey
	}
	f, vs := measure(evs, opts, all...)
	f.KillTakeover, f.TermTakeover = kill, term
	f.CleanKillTakeover, f.CleanTermTakeover = cleanKill, cleanTerm
	if len(vs) > 0 {
		e.keepLog(st.Name(), defaultGroup, evs)
		t.Errorf("%d invariant violations", len(vs))
	}
	t.Logf("%d sends failed while Redis was away (not recorded)", prod.failed.Load())
	return f, vs, played
}

// soakTable formats the soak's figures as Markdown.
func soakTable(seed uint64, version string, total figures, byFault map[soakFault]*faultFigures) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Soak: %d runs, seed %d, Redis %s (AOF, appendfsync always), session %v, heartbeat %v, maxProcessingTime %v.\n\n",
		total.Runs, seed, version, testSession, testHeartbeat, soakMaxProc)
	fmt.Fprintf(&b, "| fault | injected | runs | messages | lost | order violations | overlapping owners | acked then redelivered | duplicated (max deliveries) | fenced rejections (partitions fenced) |\n")
	fmt.Fprintf(&b, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	var names []string
	for f := range byFault {
		names = append(names, string(f))
	}
	sort.Strings(names)
	row := func(name string, injected string, f figures) {
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %d | %d | %d | %d | %d (%d) | %d (%d) |\n", name, injected, f.Runs, f.Messages, f.Lost, f.OrderViolations,
			f.OverlappingOwners, f.AckedRedelivered, f.Duplicated, f.MaxDeliveries, f.FencedRejections, f.PartitionsFenced)
	}
	for _, name := range names {
		ff := byFault[soakFault(name)]
		row(name, strconv.Itoa(ff.injected), ff.figures)
	}
	row("**all runs**", "", total)
	fmt.Fprintf(&b, "\nOther violations (delivery count, unjustified duplicate, malformed log): %d.\n", total.OtherViolations)
	fmt.Fprintf(&b, "\nTakeover, from the signal to the first delivery of each of the victim's partitions by another consumer (session timeout %v):\n\n", testSession)
	fmt.Fprintf(&b, "| signal | alone (at the end of each run) | amid the schedule's faults |\n| --- | --- | --- |\n")
	fmt.Fprintf(&b, "| SIGKILL | %s | %s |\n", percentiles(total.CleanKillTakeover), percentiles(total.KillTakeover))
	fmt.Fprintf(&b, "| SIGTERM | %s | %s |\n", percentiles(total.CleanTermTakeover), percentiles(total.TermTakeover))
	return b.String()
}

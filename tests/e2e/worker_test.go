//go:build unix

package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/segmenter/segmenter/internal/invariant"
)

// workerOpts configures a worker process; zero fields take the defaults of
// startWorker.
type workerOpts struct {
	name      string
	group     string
	streams   []string
	batch     int
	maxProc   time.Duration
	work      time.Duration
	session   time.Duration // -1: the SDK default
	heartbeat time.Duration // -1: the SDK default
	block     time.Duration
	noAck     int // leave every noAck-th batch unacked (0: none)
	nack      int // hand every nack-th batch back with Nack (0: none)

	// mode is "read" (the default), "run" or "run-key" (see ./worker).
	mode           string
	keyConcurrency int           // run-key: WithKeyConcurrency's bound (0: the worker's default)
	backoff        time.Duration // Run's initial retry backoff (0: the worker's default)
	// failKey makes the Run handler fail the messages of this key whose
	// number is a multiple of failEvery, failTimes times each.
	failKey              string
	failEvery, failTimes int
	// failHow is how such a call fails: "error" (the default), "panic" or
	// "sleep" (failSleep, then it succeeds; read mode: the batch is acked
	// that much later).
	failHow   string
	failSleep time.Duration

	// redisURL is the Redis the worker connects to ("": the env's server),
	// e.g. a faultProxy's URL.
	redisURL string
}

// partEvent is an "assigned", "revoked" or "lost" line of a worker.
type partEvent struct {
	kind      string
	stream    string
	partition int
	epoch     int64
	at        time.Time // when the test read the line
}

// gotLine is a "got" line: the first delivery of a partition under an epoch.
type gotLine struct {
	stream    string
	partition int
	epoch     int64
	at        time.Time
}

// worker is a running worker process and what it printed.
type worker struct {
	t       *testing.T
	name    string
	group   string
	streams []string
	logPath string // with {stream}
	errPath string
	sdkPath string // the SDK's own log
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error // set before exited is closed

	mu           sync.Mutex
	lines        []string
	owned        map[string][]int // by stream; nil before the first "owned"
	ready        map[string]bool
	got          []gotLine
	fenced       []string
	partEvents   []partEvent
	shutdownDone bool
	stats        map[string]map[string]uint64 // by stream: the last "stats" line
	bgErrors     []string
	errLines     []string // "error" lines
}

// startWorker starts a worker process of e's namespace. It is killed (if
// still running) when the test ends.
func (e *env) startWorker(o workerOpts) *worker {
	t := e.t
	t.Helper()
	if o.group == "" {
		o.group = defaultGroup
	}
	if len(o.streams) == 0 {
		o.streams = []string{defaultStream}
	}
	if o.batch == 0 {
		o.batch = 20
	}
	if o.maxProc == 0 {
		o.maxProc = 10 * time.Second
	}
	if o.session == 0 {
		o.session = testSession
	}
	if o.heartbeat == 0 {
		o.heartbeat = testHeartbeat
	}
	if o.block == 0 {
		o.block = testBlock
	}
	if o.session < 0 {
		o.session = 0
	}
	if o.heartbeat < 0 {
		o.heartbeat = 0
	}
	if o.block < 0 {
		o.block = 0
	}
	if o.mode == "" {
		o.mode = "read"
	}
	w := &worker{
		t:       t,
		name:    o.name,
		group:   o.group,
		streams: o.streams,
		logPath: filepath.Join(e.dir, o.group+"."+o.name+".{stream}.jsonl"),
		errPath: filepath.Join(e.dir, o.group+"."+o.name+".stderr"),
		sdkPath: filepath.Join(e.dir, o.group+"."+o.name+".sdk.jsonl"),
		exited:  make(chan struct{}),
		stats:   make(map[string]map[string]uint64),
		owned:   make(map[string][]int),
		ready:   make(map[string]bool),
	}
	stderr, err := os.Create(w.errPath)
	if err != nil {
		t.Fatal(err)
	}
	url := e.url
	if o.redisURL != "" {
		url = o.redisURL
	}
	w.cmd = exec.Command(workerBinary(t),
		"-redis", url,
		"-sdk-log", w.sdkPath,
		"-namespace", e.ns,
		"-stream", strings.Join(o.streams, ","),
		"-group", o.group,
		"-name", o.name,
		"-log", w.logPath,
		"-batch", strconv.Itoa(o.batch),
		"-maxproc", o.maxProc.String(),
		"-work", o.work.String(),
		"-session", o.session.String(),
		"-heartbeat", o.heartbeat.String(),
		"-block", o.block.String(),
		"-noack-every", strconv.Itoa(o.noAck),
		"-nack-every", strconv.Itoa(o.nack),
		"-mode", o.mode,
	)
	if o.keyConcurrency > 0 {
		w.cmd.Args = append(w.cmd.Args, "-key-concurrency", strconv.Itoa(o.keyConcurrency))
	}
	if o.backoff > 0 {
		w.cmd.Args = append(w.cmd.Args, "-backoff", o.backoff.String())
	}
	if o.failKey != "" {
		w.cmd.Args = append(w.cmd.Args, "-fail-key", o.failKey, "-fail-every", strconv.Itoa(o.failEvery), "-fail-times", strconv.Itoa(o.failTimes))
		if o.failHow != "" {
			w.cmd.Args = append(w.cmd.Args, "-fail-how", o.failHow)
		}
		if o.failSleep > 0 {
			w.cmd.Args = append(w.cmd.Args, "-fail-sleep", o.failSleep.String())
		}
	}
	w.cmd.Stderr = stderr
	// A race-enabled binary sleeps 1s at exit by default: it would show in
	// every measurement of a stop.
	w.cmd.Env = append(os.Environ(), "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	w.cmd.SysProcAttr = workerSysProcAttr()
	stdout, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatalf("start worker %s: %v", o.name, err)
	}
	stderr.Close() // the child has its own descriptor
	e.addWorker(w)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			w.parse(sc.Text())
		}
		w.waitErr = w.cmd.Wait()
		close(w.exited)
	}()
	t.Cleanup(func() {
		if !w.hasExited() {
			_ = w.cmd.Process.Kill()
			select {
			case <-w.exited:
			case <-time.After(10 * time.Second):
				t.Errorf("worker %s (pid %d) did not die after SIGKILL", w.name, w.cmd.Process.Pid)
			}
		}
		if t.Failed() {
			if d := os.Getenv("E2E_LOG_DIR"); d != "" {
				base := filepath.Join(d, strings.NewReplacer("/", "_").Replace(t.Name())+"."+w.name)
				_ = os.WriteFile(base+".stdout", []byte(w.tail(1<<30)+"\n"), 0o644)
				if b, err := os.ReadFile(w.sdkPath); err == nil {
					_ = os.WriteFile(base+".sdk.jsonl", b, 0o644)
				}
				if b, err := os.ReadFile(w.errPath); err == nil {
					_ = os.WriteFile(base+".stderr", b, 0o644)
				}
			}
			t.Logf("worker %s stdout (last 40 lines):\n%s", w.name, w.tail(40))
			t.Logf("worker %s stderr (last 4000 bytes):\n%s", w.name, w.stderrTail(4000))
			t.Logf("worker %s SDK log (last 4000 bytes):\n%s", w.name, tailFile(w.sdkPath, 4000))
		}
	})
	return w
}

func (w *worker) parse(line string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lines = append(w.lines, line)
	f := strings.Fields(line)
	if len(f) == 0 {
		return
	}
	switch f[0] {
	case "owned":
		if len(f) == 3 {
			w.owned[f[1]] = parseParts(f[2])
		}
	case "ready":
		if len(f) == 2 {
			w.ready[f[1]] = true
		}
	case "got":
		if len(f) == 5 {
			p, _ := strconv.Atoi(f[2])
			epoch, _ := strconv.ParseInt(f[3], 10, 64)
			ns, _ := strconv.ParseInt(f[4], 10, 64)
			w.got = append(w.got, gotLine{stream: f[1], partition: p, epoch: epoch, at: time.Unix(0, ns)})
		}
	case "fenced":
		w.fenced = append(w.fenced, line)
	case "error":
		w.errLines = append(w.errLines, line)
	case "bgerror":
		w.bgErrors = append(w.bgErrors, strings.TrimPrefix(line, "bgerror "))
	case "stats":
		if len(f) >= 2 {
			st := make(map[string]uint64)
			for _, kv := range f[2:] {
				k, v, ok := strings.Cut(kv, "=")
				if n, err := strconv.ParseUint(v, 10, 64); ok && err == nil {
					st[k] = n
				}
			}
			w.stats[f[1]] = st
		}
	case "assigned", "revoked", "lost":
		if len(f) >= 4 {
			p, err1 := strconv.Atoi(f[2])
			epoch, err2 := strconv.ParseInt(f[3], 10, 64)
			if err1 == nil && err2 == nil {
				w.partEvents = append(w.partEvents, partEvent{kind: f[0], stream: f[1], partition: p, epoch: epoch, at: time.Now()})
			}
		}
	case "shutdown":
		if line == "shutdown done" {
			w.shutdownDone = true
		}
	}
}

func parseParts(s string) []int {
	out := []int{}
	if s == "-" {
		return out
	}
	for _, x := range strings.Split(s, ",") {
		p, err := strconv.Atoi(x)
		if err == nil {
			out = append(out, p)
		}
	}
	return out
}

// Owned returns the partitions of stream the worker last said it holds.
func (w *worker) Owned(stream string) []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.owned[stream])
}

// Got returns the "got" lines so far.
func (w *worker) Got() []gotLine {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.got)
}

// Fenced returns the "fenced" lines so far.
func (w *worker) Fenced() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.fenced)
}

// FencedOps returns the operations ("read", "ack") of stream that returned
// ErrFenced so far.
func (w *worker) FencedOps(stream string) map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	ops := make(map[string]bool)
	for _, l := range w.fenced {
		if f := strings.Fields(l); len(f) >= 3 && f[1] == stream {
			ops[f[2]] = true
		}
	}
	return ops
}

// partitionsFenced counts the partitions the worker reported lost with
// ErrFenced (a read, ack, renewal or release found the lease another's).
func (w *worker) partitionsFenced() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, l := range w.lines {
		if strings.HasPrefix(l, "lost ") && strings.Contains(l, "(fenced)") {
			n++
		}
	}
	return n
}

// PartitionEvents returns the partition events printed so far.
func (w *worker) PartitionEvents() []partEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.partEvents)
}

// events returns w's event log of stream so far.
func (w *worker) events(stream string) []invariant.Event {
	w.t.Helper()
	f, err := os.Open(strings.ReplaceAll(w.logPath, "{stream}", stream))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		w.t.Fatal(err)
	}
	defer f.Close()
	evs, err := invariant.ReadJSON(f)
	if err != nil {
		w.t.Fatalf("log of worker %s: %v", w.name, err)
	}
	return evs
}

// ackInFlight reports whether w's log of stream shows an Ack call that
// started and has not returned.
func (w *worker) ackInFlight(stream string) bool {
	type call struct {
		batch int64
		index int
	}
	open := make(map[call]bool)
	for _, ev := range w.events(stream) {
		switch ev.Kind {
		case invariant.KindAckStarted:
			open[call{ev.Batch, ev.Index}] = true
		case invariant.KindAcked:
			delete(open, call{ev.Batch, ev.Index})
		}
	}
	return len(open) > 0
}

// holdsUnacked reports whether the worker's log of stream shows messages
// delivered to it since its last ack or nack began: a batch in its hands,
// past its Read (for a worker that acks or nacks each batch it reads).
func (w *worker) holdsUnacked(stream string) bool {
	held := false
	for _, ev := range w.events(stream) {
		switch ev.Kind {
		case invariant.KindDelivered:
			held = true
		case invariant.KindAckStarted, invariant.KindNacked:
			held = false
		}
	}
	return held
}

func (w *worker) tail(n int) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.lines[max(0, len(w.lines)-n):], "\n")
}

func (w *worker) stderrTail(n int) string { return tailFile(w.errPath, n) }

// tailFile returns the last n bytes of the file at path.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return string(b[max(0, len(b)-n):])
}

// Stats returns the worker's last "stats" line of stream (counter name ->
// value; nil before the first).
func (w *worker) Stats(stream string) map[string]uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stats[stream]
}

// BackgroundErrors returns the errors the worker's OnError got so far.
func (w *worker) BackgroundErrors() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.bgErrors)
}

// ErrorLines returns the worker's "error" lines so far (Read or Ack
// errors other than ErrFenced).
func (w *worker) ErrorLines() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.errLines)
}

// sdkLog returns the SDK's log of the worker so far.
func (w *worker) sdkLog() string {
	b, _ := os.ReadFile(w.sdkPath)
	return string(b)
}

func (w *worker) hasExited() bool {
	select {
	case <-w.exited:
		return true
	default:
		return false
	}
}

func (w *worker) signal(sig syscall.Signal) {
	w.t.Helper()
	if err := w.cmd.Process.Signal(sig); err != nil {
		w.t.Fatalf("signal %v to worker %s: %v", sig, w.name, err)
	}
}

// waitExit waits until the process exited and returns its exit error.
func (w *worker) waitExit(timeout time.Duration) error {
	w.t.Helper()
	select {
	case <-w.exited:
		return w.waitErr
	case <-time.After(timeout):
		w.t.Fatalf("worker %s did not exit within %v; last lines:\n%s", w.name, timeout, w.tail(20))
		return nil
	}
}

// stop sends SIGTERM and waits for a clean exit: status 0 after "shutdown
// done", no data race reported.
func (w *worker) stop() {
	w.t.Helper()
	if w.hasExited() {
		w.t.Fatalf("worker %s exited early: %v", w.name, w.waitErr)
	}
	w.signal(syscall.SIGTERM)
	w.checkStopped(w.waitExit(30 * time.Second))
}

func (w *worker) checkStopped(err error) {
	w.t.Helper()
	if err != nil {
		w.t.Fatalf("worker %s exited with %v; stderr:\n%s", w.name, err, w.stderrTail(4000))
	}
	w.mu.Lock()
	done := w.shutdownDone
	w.mu.Unlock()
	if !done {
		w.t.Fatalf("worker %s exited without \"shutdown done\"; last lines:\n%s", w.name, w.tail(20))
	}
	w.checkStderr()
}

// checkStderr fails the test on a data race or a panic in the worker.
func (w *worker) checkStderr() {
	w.t.Helper()
	b, _ := os.ReadFile(w.errPath)
	for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
		if strings.Contains(string(b), bad) {
			w.t.Fatalf("worker %s reported %q:\n%s", w.name, bad, b)
		}
	}
}

// kill sends SIGKILL and waits until the process is gone.
func (w *worker) kill() {
	w.t.Helper()
	w.signal(syscall.SIGKILL)
	err := w.waitExit(10 * time.Second)
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		w.t.Fatalf("worker %s after SIGKILL: %v", w.name, err)
	}
	w.checkStderr()
}

// stopAll stops the workers at once (SIGTERM to all, then waits), as a
// deployment that scales to zero does.
func stopAll(t *testing.T, ws ...*worker) {
	t.Helper()
	for _, w := range ws {
		if w.hasExited() {
			t.Fatalf("worker %s exited early: %v\n%s", w.name, w.waitErr, w.stderrTail(4000))
		}
		w.signal(syscall.SIGTERM)
	}
	for _, w := range ws {
		w.checkStopped(w.waitExit(30 * time.Second))
	}
}

func (w *worker) String() string { return fmt.Sprintf("%s(pid %d)", w.name, w.cmd.Process.Pid) }

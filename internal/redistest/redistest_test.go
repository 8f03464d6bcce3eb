package redistest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { Main(m) }

// wantBackend is the backend the environment asks for, or "" for any.
func wantBackend() string {
	if os.Getenv(EnvURL) != "" {
		return BackendEnv
	}
	switch b := os.Getenv(EnvBackend); b {
	case BackendDocker, BackendProcess:
		return b
	}
	return ""
}

func TestSharedServer(t *testing.T) {
	info := Server(t)
	if want := wantBackend(); want != "" && info.Backend != want {
		t.Fatalf("backend = %q, want %q", info.Backend, want)
	}
	if info.URL == "" || info.Addr == "" {
		t.Fatalf("incomplete info: %+v", info)
	}
	if again := Server(t); again != info {
		t.Fatalf("Server returned a different server the second time: %+v vs %+v", again, info)
	}

	ctx := context.Background()
	c := Client(t)
	if got, err := c.Ping(ctx).Result(); err != nil || got != "PONG" {
		t.Fatalf("PING = %q, %v", got, err)
	}

	ns := Namespace(t)
	stream, group := ns+":stream", ns+":group"
	id, err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: map[string]any{"k": "v"}}).Result()
	if err != nil {
		t.Fatalf("XADD: %v", err)
	}
	if err := c.XGroupCreate(ctx, stream, group, "0").Err(); err != nil {
		t.Fatalf("XGROUP CREATE: %v", err)
	}
	res, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: group, Consumer: "c1", Streams: []string{stream, ">"}, Count: 10, Block: -1,
	}).Result()
	if err != nil {
		t.Fatalf("XREADGROUP: %v", err)
	}
	if len(res) != 1 || len(res[0].Messages) != 1 || res[0].Messages[0].ID != id ||
		res[0].Messages[0].Values["k"] != "v" {
		t.Fatalf("XREADGROUP = %+v, want the one entry %s", res, id)
	}
	if n, err := c.XAck(ctx, stream, group, id).Result(); err != nil || n != 1 {
		t.Fatalf("XACK = %d, %v", n, err)
	}

	// EVAL using TIME: the server clock as seen from a script.
	v, err := c.Eval(ctx, `local t = redis.call('TIME'); redis.call('SET', KEYS[1], t[1]); return t`,
		[]string{ns + ":time"}).Result()
	if err != nil {
		t.Fatalf("EVAL: %v", err)
	}
	tm, ok := v.([]any)
	if !ok || len(tm) != 2 {
		t.Fatalf("EVAL TIME = %#v, want [seconds micros]", v)
	}
	secs, err := c.Get(ctx, ns+":time").Int64()
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	if d := time.Since(time.Unix(secs, 0)); d < -time.Minute || d > time.Minute {
		t.Fatalf("server time %d is %v away from ours", secs, d)
	}
	c.Del(ctx, stream, ns+":time")
}

func TestNamespace(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		ns := Namespace(t)
		if seen[ns] {
			t.Fatalf("Namespace repeated %q", ns)
		}
		seen[ns] = true
		if len(ns) > 40 || !valid.MatchString(ns) {
			t.Fatalf("bad namespace %q", ns)
		}
		if !strings.HasPrefix(ns, "testnamespace-") {
			t.Fatalf("namespace %q does not start with the test name", ns)
		}
	}
	for _, name := range []string{
		"Weird/Name with SPACES & ünïcödé:{hash}*?",
		strings.Repeat("VeryLongName", 20),
		"___",
		"-",
	} {
		t.Run(name, func(t *testing.T) {
			ns := Namespace(t)
			if len(ns) > 40 || !valid.MatchString(ns) {
				t.Fatalf("Namespace(%q) = %q", t.Name(), ns)
			}
			t.Logf("%s -> %s", t.Name(), ns)
		})
	}
}

// fakeTB records Fatalf instead of failing the real test. Like the real
// Fatalf it ends the calling goroutine.
type fakeTB struct {
	testing.TB
	mu     sync.Mutex
	failed string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.failed = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

// runFake runs fn with a fakeTB on its own goroutine (fn may Goexit) and
// returns the recorded failure, "" if none.
func runFake(t *testing.T, fn func(tb testing.TB)) string {
	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed
}

func TestEventually(t *testing.T) {
	t.Run("success", func(t *testing.T) {
		calls := 0
		start := time.Now()
		Eventually(t, 5*time.Second, func() bool { calls++; return calls >= 3 }, "three calls")
		if calls != 3 {
			t.Fatalf("cond called %d times, want 3", calls)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("took %v", d)
		}
	})
	t.Run("immediate", func(t *testing.T) {
		if msg := runFake(t, func(tb testing.TB) { Eventually(tb, 0, func() bool { return true }) }); msg != "" {
			t.Fatalf("failed: %s", msg)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		const timeout = 100 * time.Millisecond
		start := time.Now()
		calls := 0
		msg := runFake(t, func(tb testing.TB) {
			Eventually(tb, timeout, func() bool { calls++; return false }, "key %s to appear", "k1")
		})
		elapsed := time.Since(start)
		if msg == "" {
			t.Fatal("Eventually did not fail")
		}
		if !strings.Contains(msg, "key k1 to appear") || !strings.Contains(msg, timeout.String()) {
			t.Fatalf("message %q lacks the description or the timeout", msg)
		}
		if elapsed < timeout || elapsed > timeout+2*time.Second {
			t.Fatalf("failed after %v, want about %v", elapsed, timeout)
		}
		if calls < 5 {
			t.Fatalf("cond polled only %d times", calls)
		}
	})
	t.Run("timeout without message", func(t *testing.T) {
		msg := runFake(t, func(tb testing.TB) { Eventually(tb, 10*time.Millisecond, func() bool { return false }) })
		if !strings.Contains(msg, "condition not met") {
			t.Fatalf("message %q", msg)
		}
	})
}

// exerciseStandalone checks that an AOF server keeps acknowledged writes
// across a graceful restart, a SIGKILL and a stop/start, on the same address.
func exerciseStandalone(t *testing.T, inst *Instance) {
	ctx := context.Background()
	addr := inst.Addr
	c := inst.Client(t)
	ns := Namespace(t)

	if err := c.Set(ctx, ns+":a", "1", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if err := c.XAdd(ctx, &redis.XAddArgs{Stream: ns + ":s", Values: []any{"f", "v"}}).Err(); err != nil {
		t.Fatalf("XADD: %v", err)
	}
	inst.Restart()
	if inst.Addr != addr {
		t.Fatalf("address changed from %s to %s", addr, inst.Addr)
	}
	if got, err := c.Get(ctx, ns+":a").Result(); err != nil || got != "1" {
		t.Fatalf("after Restart: GET = %q, %v; want 1", got, err)
	}
	if n, err := c.XLen(ctx, ns+":s").Result(); err != nil || n != 1 {
		t.Fatalf("after Restart: XLEN = %d, %v; want 1", n, err)
	}

	if err := c.Set(ctx, ns+":b", "2", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	inst.Kill()
	if rawPing(addr) == nil {
		t.Fatal("PING succeeded after Kill")
	}
	inst.Restart()
	if got, err := c.Get(ctx, ns+":b").Result(); err != nil || got != "2" {
		t.Fatalf("after Kill+Restart: GET = %q, %v; want 2", got, err)
	}

	inst.Stop()
	inst.Stop() // no-op
	if rawPing(addr) == nil {
		t.Fatal("PING succeeded after Stop")
	}
	inst.Start()
	if got, err := c.MGet(ctx, ns+":a", ns+":b").Result(); err != nil || fmt.Sprint(got) != "[1 2]" {
		t.Fatalf("after Stop+Start: MGET = %v, %v", got, err)
	}

	// A frozen server keeps its connections and answers nothing until
	// thawed; then the command waiting on it gets its answer.
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	inst.Freeze()
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	r := bufio.NewReader(conn)
	if line, err := r.ReadString('\n'); err == nil {
		t.Fatalf("a frozen server answered %q", line)
	}
	inst.Thaw()
	inst.Thaw() // no-op
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := r.ReadString('\n'); err != nil || line != "+PONG\r\n" {
		t.Fatalf("after Thaw, the PING sent while frozen got %q, %v", line, err)
	}
}

// rawPing pings addr over a fresh connection (a go-redis client would retry
// and log while the server is down).
func rawPing(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

func TestStandaloneAOFSurvivesRestart(t *testing.T) {
	inst := Standalone(t, WithAOF())
	if want := wantBackend(); want != "" && want != BackendEnv && inst.Backend != want {
		t.Fatalf("backend = %q, want %q", inst.Backend, want)
	}
	if shared := os.Getenv(EnvURL); shared != "" && inst.URL == shared {
		t.Fatal("Standalone returned the shared REDIS_URL server")
	}
	exerciseStandalone(t, inst)
}

func TestStandaloneWithoutAOFLosesData(t *testing.T) {
	inst := Standalone(t, WithArgs("--maxmemory", "64mb"))
	ctx := context.Background()
	c := inst.Client(t)
	if v, err := c.ConfigGet(ctx, "maxmemory").Result(); err != nil || v["maxmemory"] != "67108864" {
		t.Fatalf("WithArgs not applied: %v, %v", v, err)
	}
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	inst.Restart()
	if err := c.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("without persistence the key survived a restart (err %v)", err)
	}
}

// TestBackends exercises the docker and the process backends directly,
// whatever the environment selects for the shared server. A backend that is
// unavailable on this machine is skipped, unless the environment forces it.
func TestBackends(t *testing.T) {
	t.Run("process", func(t *testing.T) {
		if _, err := exec.LookPath("redis-server"); err != nil {
			if os.Getenv(EnvBackend) == BackendProcess {
				t.Fatalf("%s=process but: %v", EnvBackend, err)
			}
			t.Skip("redis-server not on PATH")
		}
		inst := standalone(t, serverConfig{aof: true, fixedPort: true}, startProcess)
		if inst.Backend != BackendProcess {
			t.Fatalf("backend %q", inst.Backend)
		}
		exerciseStandalone(t, inst)
	})
	t.Run("docker", func(t *testing.T) {
		if _, err := dockerPool(); err != nil {
			if os.Getenv(EnvBackend) == BackendDocker {
				t.Fatalf("%s=docker but: %v", EnvBackend, err)
			}
			t.Skipf("no Docker engine: %v", err)
		}
		inst := standalone(t, serverConfig{aof: true, fixedPort: true}, startDocker)
		if inst.Backend != BackendDocker {
			t.Fatalf("backend %q", inst.Backend)
		}
		exerciseStandalone(t, inst)
	})
	t.Run("docker shared-style", func(t *testing.T) {
		// Engine-assigned port, as used by the shared server.
		if _, err := dockerPool(); err != nil {
			t.Skipf("no Docker engine: %v", err)
		}
		inst := standalone(t, serverConfig{}, startDocker)
		if err := inst.Client(t).Ping(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestForcedBackendValidation(t *testing.T) {
	t.Setenv(EnvBackend, "bogus")
	_, err := startBackend(context.Background(), serverConfig{})
	if err == nil || !strings.Contains(err.Error(), "want docker, process or auto") {
		t.Fatalf("err = %v", err)
	}
}

func TestSharedLibs(t *testing.T) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not on PATH")
	}
	libs, err := sharedLibs(bin)
	if err != nil {
		t.Fatal(err)
	}
	interp, err := elfInterp(bin)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range libs {
		if !strings.HasPrefix(l, "/") {
			t.Errorf("relative library path %q", l)
		}
		if _, err := os.Stat(l); err != nil {
			t.Errorf("library %s: %v", l, err)
		}
		found = found || l == interp
	}
	if interp != "" && !found {
		t.Errorf("loader %s missing from %v", interp, libs)
	}
	t.Logf("interpreter %s, libraries %v", interp, libs)
}

// TestNoLeakedGoroutines runs last: with the shared server up, and after the
// clients of a finished test are closed, nothing of this package may still
// run in the background.
func TestNoLeakedGoroutines(t *testing.T) {
	t.Run("use", func(t *testing.T) {
		if err := Client(t).Ping(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
	})
	goleak.VerifyNone(t)
}

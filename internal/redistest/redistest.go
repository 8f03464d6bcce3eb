// Package redistest provides real Redis servers to the tests of this
// repository. It never mocks Redis: every server it hands out is an actual
// redis-server, obtained from the first backend that works:
//
//  1. "env": the REDIS_URL environment variable is set. That server is used
//     as is (it is pinged first).
//  2. "docker": a Docker engine answers. A container is started from the
//     image named by SEGMENTER_REDIS_IMAGE if that image exists locally or
//     can be pulled; otherwise from the official redis:7 if it exists
//     locally or can be pulled; otherwise from a local image built FROM
//     scratch out of the host's own redis-server binary and the shared
//     libraries ldd reports for it (tag segmenter-redis-scratch:<hash>,
//     built once and then reused). No image registry is needed for the last
//     option. The pull of redis:7 is given up when the registry has not
//     answered within 5s, and a failed one is remembered for 10 minutes
//     (a file in os.TempDir) by the test binaries of the host, so that a
//     machine without a registry pays for it once per `go test ./...` run,
//     not once per package.
//  3. "process": redis-server is on PATH. It is started as a child process
//     on a free loopback port with a private temporary directory.
//
// If none of them is available the test fails with a message explaining the
// options (set REDIS_URL, run Docker, or apt-get install -y redis-server).
//
// Setting SEGMENTER_REDIS_BACKEND=docker or SEGMENTER_REDIS_BACKEND=process
// forces that backend (no fallback) when REDIS_URL is empty; "auto" or empty
// means the order above. It exists mainly to exercise each backend on
// purpose, e.g.
//
//	SEGMENTER_REDIS_BACKEND=process go test ./...
//
// Every test package that uses this package must hand its TestMain to
// [Main] (or [Wrap]), which tears down whatever this test binary started:
//
//	func TestMain(m *testing.M) { redistest.Main(m) }
//
// or, combined with goleak:
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.Wrap(m)) }
//
// The shared server is started lazily by the first call to [Server] or
// [Client], so a binary whose tests are all skipped starts nothing. Tests
// share it safely by prefixing their keys with [Namespace]. Tests that need
// to stop, kill or restart Redis get a dedicated server from [Standalone].
//
// Containers are labelled; containers left behind by a test binary that died
// without running its TestMain teardown (a -timeout panic, a signal) are
// removed by the next test binary that uses the docker backend on the same
// host. Child redis-server processes are killed by the kernel when the test
// binary dies (Linux parent-death signal).
package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// Backend names reported in Info.Backend.
const (
	BackendEnv     = "env"
	BackendDocker  = "docker"
	BackendProcess = "process"
)

// Environment variables read by this package.
const (
	// EnvURL names an existing Redis server to use for the shared server.
	EnvURL = "REDIS_URL"
	// EnvBackend forces a backend ("docker" or "process") when REDIS_URL is
	// empty. Empty or "auto" selects automatically.
	EnvBackend = "SEGMENTER_REDIS_BACKEND"
	// EnvImage names the container image the docker backend tries first.
	EnvImage = "SEGMENTER_REDIS_IMAGE"
)

const (
	readyTimeout   = 30 * time.Second // a started server must answer PING within this
	stopTimeout    = 10 * time.Second // graceful stop before SIGKILL
	envPingTimeout = 10 * time.Second
)

// Info describes a running Redis server.
type Info struct {
	// URL is a redis:// URL for the server, suitable for redis.ParseURL.
	URL string
	// Addr is the host:port of the server.
	Addr string
	// Backend is how the server is provided: "env", "docker" or "process".
	Backend string
	// Detail says where the server comes from (image, pid, URL). For logs.
	Detail string
}

// Client returns a new go-redis client connected to the server described by
// i. The client is closed when t's test finishes.
func (i *Info) Client(t testing.TB) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(i.URL)
	if err != nil {
		t.Fatalf("redistest: bad server URL %q: %v", i.URL, err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (i *Info) logLine() string {
	return fmt.Sprintf("redistest: using %s backend (%s) at %s", i.Backend, i.Detail, i.Addr)
}

// server is a Redis server this package started and must tear down.
type server interface {
	// start starts a stopped (or never started) server and waits until it
	// answers. The address stays the same across restarts.
	start(ctx context.Context) error
	// stop stops the server gracefully (SIGTERM) or, with kill, with
	// SIGKILL, and waits until it is down. It is a no-op if it is down.
	stop(ctx context.Context, kill bool) error
	// destroy stops the server and releases everything it owns.
	destroy(ctx context.Context) error
	// freeze stops the running server's process (SIGSTOP) or, with thaw,
	// lets it go on (SIGCONT).
	freeze(ctx context.Context, thaw bool) error
	info() Info
}

// serverConfig is what a backend needs to start a server.
type serverConfig struct {
	aof       bool
	extraArgs []string
	// fixedPort makes the docker backend publish a host port chosen up
	// front, so that the address survives container restarts.
	fixedPort bool
	// cluster makes the server a Redis Cluster node (see cluster.go) whose
	// bus listens on busPort (chosen by the backend) and which declares a
	// node failed after nodeTimeout.
	cluster     bool
	busPort     int
	nodeTimeout time.Duration
}

// redisArgs returns the redis-server arguments for a server listening on
// port/bind with data directory dir.
func (c serverConfig) redisArgs(port int, bind, dir string) []string {
	args := []string{
		"--port", fmt.Sprint(port),
		"--bind", bind,
		"--protected-mode", "no",
		"--save", "",
		"--dir", dir,
	}
	if c.cluster {
		args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-port", fmt.Sprint(c.busPort),
			"--cluster-node-timeout", fmt.Sprint(c.nodeTimeout.Milliseconds()),
			// A replica of a primary that failed takes over however long
			// its link was down, and stays with its primary.
			"--cluster-replica-validity-factor", "0",
			"--cluster-allow-replica-migration", "no",
			// Replicas sync at once, not after the default 5s wait.
			"--repl-diskless-sync-delay", "0")
	}
	if c.aof {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	return append(args, c.extraArgs...)
}

var (
	mainActive atomic.Bool

	sharedOnce sync.Once
	sharedInfo *Info
	sharedSrv  server // nil for the env backend
	sharedErr  error

	liveMu sync.Mutex
	live   = map[server]struct{}{} // every server not yet destroyed
)

func track(s server) {
	liveMu.Lock()
	live[s] = struct{}{}
	liveMu.Unlock()
}

func untrack(s server) {
	liveMu.Lock()
	delete(live, s)
	liveMu.Unlock()
}

// Runner wraps a *testing.M so that Run also tears down the servers started
// by this package. It satisfies goleak.TestingM.
type Runner struct {
	m         *testing.M
	exportURL bool // see WrapWithURL
}

// Wrap returns a Runner for m, for use with wrappers such as
// goleak.VerifyTestMain(redistest.Wrap(m)).
func Wrap(m *testing.M) Runner { return Runner{m: m} }

// WrapWithURL is Wrap for packages with runnable examples, as MainWithURL is
// Main's: Run starts the shared server first and exports its URL as
// REDIS_URL (unless REDIS_URL is already set). For use with wrappers such as
// goleak.VerifyTestMain(redistest.WrapWithURL(m)).
func WrapWithURL(m *testing.M) Runner { return Runner{m: m, exportURL: true} }

// Run runs the tests, then stops and removes every server this package
// started in this binary. It returns the exit code for os.Exit; a failed
// teardown turns a success into a failure.
func (r Runner) Run() int {
	mainActive.Store(true)
	if r.exportURL && os.Getenv(EnvURL) == "" {
		info, err := shared()
		if err != nil {
			fmt.Fprintf(os.Stderr, "redistest: no Redis server: %v\n", err)
			return 1
		}
		os.Setenv(EnvURL, info.URL)
	}
	code := r.m.Run()
	if err := teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "redistest: teardown: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Main is meant to be called from TestMain: it runs the tests, tears down
// the servers started by this package (container removal, process kill and
// wait) and exits with the tests' exit code.
func Main(m *testing.M) {
	os.Exit(Wrap(m).Run())
}

func teardown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	liveMu.Lock()
	servers := make([]server, 0, len(live))
	for s := range live {
		servers = append(servers, s)
	}
	liveMu.Unlock()
	var errs []error
	for _, s := range servers {
		if err := s.destroy(ctx); err != nil {
			errs = append(errs, err)
		}
		untrack(s)
	}
	closeDocker()
	return errors.Join(errs...)
}

func requireMain(t testing.TB) {
	t.Helper()
	if !mainActive.Load() {
		t.Fatalf("redistest: this package's TestMain must call redistest.Main(m) " +
			"(or goleak.VerifyTestMain(redistest.Wrap(m))) so that the Redis servers " +
			"it starts are torn down")
	}
}

// MainWithURL is Main for packages with runnable examples, which cannot get
// a server from a testing.TB: it starts the shared server first and exports
// its URL as REDIS_URL (unless REDIS_URL is already set), so examples written
// as users would write them (RedisURL from the environment) run against it.
func MainWithURL(m *testing.M) {
	os.Exit(WrapWithURL(m).Run())
}

func shared() (*Info, error) {
	sharedOnce.Do(func() {
		sharedInfo, sharedSrv, sharedErr = startShared()
		if sharedErr == nil {
			fmt.Fprintln(os.Stderr, sharedInfo.logLine())
		}
	})
	return sharedInfo, sharedErr
}

// Server returns the Redis server shared by all tests of this test binary,
// starting it on first use. The first call logs which backend serves it, both
// through t.Logf and on stderr. The returned Info must not be modified.
func Server(t testing.TB) *Info {
	t.Helper()
	requireMain(t)
	started := false
	sharedOnce.Do(func() {
		started = true
		sharedInfo, sharedSrv, sharedErr = startShared()
		if sharedErr == nil {
			fmt.Fprintln(os.Stderr, sharedInfo.logLine())
		}
	})
	if sharedErr != nil {
		t.Fatalf("redistest: no Redis server: %v", sharedErr)
	}
	if started {
		t.Log(sharedInfo.logLine())
	}
	return sharedInfo
}

// Client returns a new go-redis client connected to the shared server (see
// Server). It is closed when t's test finishes.
func Client(t testing.TB) *redis.Client {
	t.Helper()
	return Server(t).Client(t)
}

func startShared() (*Info, server, error) {
	if u := os.Getenv(EnvURL); u != "" {
		info, err := envServer(u)
		return info, nil, err
	}
	s, err := startBackend(context.Background(), serverConfig{})
	if err != nil {
		return nil, nil, err
	}
	info := s.info()
	return &info, s, nil
}

func envServer(u string) (*Info, error) {
	opts, err := redis.ParseURL(u)
	if err != nil {
		return nil, fmt.Errorf("%s=%q is not a valid Redis URL: %w", EnvURL, u, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), envPingTimeout)
	defer cancel()
	if err := waitReady(ctx, opts, nil, nil); err != nil {
		return nil, fmt.Errorf("%s=%q does not answer: %w", EnvURL, u, err)
	}
	return &Info{URL: u, Addr: opts.Addr, Backend: BackendEnv, Detail: EnvURL}, nil
}

// startBackend starts a dedicated server on the docker or process backend,
// following EnvBackend, and registers it for teardown.
func startBackend(ctx context.Context, cfg serverConfig) (server, error) {
	forced := strings.ToLower(strings.TrimSpace(os.Getenv(EnvBackend)))
	var s server
	var err error
	switch forced {
	case BackendDocker:
		s, err = startDocker(ctx, cfg)
	case BackendProcess:
		s, err = startProcess(ctx, cfg)
	case "", "auto":
		s, err = startAuto(ctx, cfg)
	default:
		return nil, fmt.Errorf("%s=%q: want docker, process or auto", EnvBackend, forced)
	}
	if err != nil {
		if forced != "" && forced != "auto" {
			err = fmt.Errorf("forced by %s=%s: %w", EnvBackend, forced, err)
		}
		return nil, err
	}
	track(s)
	return s, nil
}

func startAuto(ctx context.Context, cfg serverConfig) (server, error) {
	var dockerErr error
	if _, err := dockerPool(); err == nil {
		s, err := startDocker(ctx, cfg)
		if err == nil {
			return s, nil
		}
		dockerErr = err
		fmt.Fprintf(os.Stderr, "redistest: docker backend failed, trying process backend: %v\n", err)
	} else {
		dockerErr = err
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, fmt.Errorf("no Redis backend available.\n"+
			"  docker: %v\n"+
			"  process: %v\n"+
			"Fix one of:\n"+
			"  - set %s to a running server, e.g. %s=redis://127.0.0.1:6379/0\n"+
			"  - run a Docker engine this user can reach (DOCKER_HOST or /var/run/docker.sock)\n"+
			"  - install redis-server, e.g. apt-get install -y redis-server",
			dockerErr, err, EnvURL, EnvURL)
	}
	return startProcess(ctx, cfg)
}

// Namespace returns a fresh namespace for t's keys: a sanitized prefix of
// t.Name() plus a random suffix, at most 40 characters of [a-z0-9-]. Tests
// that prefix all their keys (and stream/group names) with their own
// namespace can share one server, in parallel, without seeing each other.
func Namespace(t testing.TB) string {
	t.Helper()
	const maxLen, suffixLen = 40, 12
	var b strings.Builder
	dash := true // suppress leading and repeated dashes
	for _, r := range strings.ToLower(t.Name()) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			dash = false
		} else if !dash {
			b.WriteByte('-')
			dash = true
		}
	}
	prefix := b.String()
	if len(prefix) > maxLen-suffixLen-1 {
		prefix = prefix[:maxLen-suffixLen-1]
	}
	prefix = strings.TrimRight(prefix, "-")
	if prefix == "" {
		prefix = "t"
	}
	id := uuid.New()
	suffix := strings.ReplaceAll(id.String(), "-", "")[:suffixLen]
	return prefix + "-" + suffix
}

// Eventually calls cond every few milliseconds until it returns true, and
// fails the test with t.Fatalf if that does not happen within timeout.
// msgAndArgs optionally describes the condition: a format string and its
// arguments, or values printed with fmt.Sprint. Like t.Fatalf it must be
// called from the test's goroutine.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msgAndArgs ...any) {
	t.Helper()
	if Within(timeout, cond) {
		return
	}
	msg := "condition"
	if m := formatMsg(msgAndArgs); m != "" {
		msg = m
	}
	t.Fatalf("redistest.Eventually: %s not met within %v", msg, timeout)
}

// Within calls cond every few milliseconds until it returns true, and
// reports whether that happened within timeout (for a test that explains
// a failure itself).
func Within(timeout time.Duration, cond func() bool) bool {
	if cond() {
		return true
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if cond() {
				return true
			}
		case <-deadline.C:
			return cond()
		}
	}
}

func formatMsg(msgAndArgs []any) string {
	if len(msgAndArgs) == 0 {
		return ""
	}
	if format, ok := msgAndArgs[0].(string); ok && len(msgAndArgs) > 1 {
		return fmt.Sprintf(format, msgAndArgs[1:]...)
	}
	return fmt.Sprint(msgAndArgs...)
}

// waitReady polls the server until it answers PING and has finished loading
// its data, or ctx ends. alive, if not nil, is called before every attempt;
// an error from it (e.g. "the process exited") ends the wait at once. verify,
// if not nil, is called once the server answers; an error from it (e.g. "this
// is not the server we started") also ends the wait.
func waitReady(ctx context.Context, opts *redis.Options, alive func() error, verify func(ctx context.Context, c *redis.Client) error) error {
	o := *opts
	o.DialTimeout = time.Second
	o.ReadTimeout = 2 * time.Second
	o.WriteTimeout = 2 * time.Second
	o.MaxRetries = -1
	o.PoolSize = 1
	o.MinIdleConns = 0
	c := redis.NewClient(&o)
	defer c.Close()

	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if alive != nil {
			if err := alive(); err != nil {
				return err
			}
		}
		err := probe(ctx, c)
		if err == nil {
			if verify != nil {
				return verify(ctx, c)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no answer within the deadline: %w", err)
		case <-tick.C:
		}
	}
}

// probe reports whether c's server answers and has loaded its data set.
func probe(ctx context.Context, c *redis.Client) error {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		return err
	}
	persistence, err := c.Info(pctx, "persistence").Result()
	if err != nil {
		return err
	}
	if !strings.Contains(persistence, "loading:0") {
		return errors.New("server is still loading its data set")
	}
	return nil
}

// freePort returns a TCP port on host that was free a moment ago.
func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

package redistest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
)

// Option configures a Standalone server.
type Option func(*serverConfig)

// WithAOF turns on the append-only file with fsync on every write
// (--appendonly yes --appendfsync always), in the server's own directory, so
// that every acknowledged write survives Stop, Kill and Restart.
func WithAOF() Option {
	return func(c *serverConfig) { c.aof = true }
}

// WithArgs appends raw redis-server arguments, e.g.
// WithArgs("--maxmemory", "10mb"). They come after (and so override) the
// package's own arguments; changing --port, --bind or --dir breaks things.
func WithArgs(args ...string) Option {
	return func(c *serverConfig) { c.extraArgs = append(c.extraArgs, args...) }
}

// Instance is a dedicated Redis server for one test, from Standalone. Its
// Info (address, URL) stays valid across Stop, Kill and Restart.
//
// The methods fail the test on error (with t.Fatalf), so like t.Fatalf they
// must be called from the test's goroutine.
type Instance struct {
	Info

	t   testing.TB
	srv server

	mu     sync.Mutex
	closed bool
}

// Standalone starts a Redis server dedicated to t, for tests that stop, kill
// or restart Redis. It uses the docker or process backend like Server does
// (REDIS_URL names a shared server and cannot be dedicated, so it is ignored
// here). The server is removed when t finishes.
func Standalone(t testing.TB, opts ...Option) *Instance {
	t.Helper()
	requireMain(t)
	cfg := serverConfig{fixedPort: true}
	for _, o := range opts {
		o(&cfg)
	}
	return standalone(t, cfg, startBackend)
}

func standalone(t testing.TB, cfg serverConfig, start func(context.Context, serverConfig) (server, error)) *Instance {
	t.Helper()
	srv, err := start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("redistest: starting a standalone Redis server: %v", err)
	}
	track(srv)
	inst := &Instance{Info: srv.info(), t: t, srv: srv}
	t.Cleanup(inst.close)
	msg := fmt.Sprintf("redistest: standalone server for %s: %s backend (%s) at %s",
		t.Name(), inst.Backend, inst.Detail, inst.Addr)
	t.Log(msg)
	fmt.Fprintln(os.Stderr, msg)
	return inst
}

func (i *Instance) close() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.closed {
		return
	}
	i.closed = true
	if err := i.srv.destroy(context.Background()); err != nil {
		i.t.Errorf("redistest: removing standalone server %s: %v", i.Addr, err)
	}
	untrack(i.srv)
}

func (i *Instance) do(what string, f func(ctx context.Context) error) {
	i.t.Helper()
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.closed {
		i.t.Fatalf("redistest: %s on a standalone server that was already removed", what)
	}
	if err := f(context.Background()); err != nil {
		i.t.Fatalf("redistest: %s standalone server at %s: %v", what, i.Addr, err)
	}
}

// Stop shuts the server down gracefully (SIGTERM; with WithAOF the data is
// on disk) and waits until it is down. Stopping a stopped server does
// nothing.
func (i *Instance) Stop() {
	i.t.Helper()
	i.do("stopping", func(ctx context.Context) error { return i.srv.stop(ctx, false) })
}

// Kill kills the server with SIGKILL, as in a crash, and waits until it is
// gone. Killing a stopped server does nothing.
func (i *Instance) Kill() {
	i.t.Helper()
	i.do("killing", func(ctx context.Context) error { return i.srv.stop(ctx, true) })
}

// Restart stops the server gracefully if it is running, starts it again on
// the same address (same port, same data directory), and waits until it
// answers and has loaded its data.
func (i *Instance) Restart() {
	i.t.Helper()
	i.do("restarting", func(ctx context.Context) error {
		if err := i.srv.stop(ctx, false); err != nil {
			return err
		}
		return i.srv.start(ctx)
	})
}

// Start starts a server that was stopped or killed, and waits until it
// answers. Starting a running server does nothing.
func (i *Instance) Start() {
	i.t.Helper()
	i.do("starting", func(ctx context.Context) error { return i.srv.start(ctx) })
}

// Freeze stops the server's process with SIGSTOP, as a stalled host or a
// long pause of the process would: its connections stay open and the
// clients' commands wait, unanswered, until Thaw. It returns at once.
func (i *Instance) Freeze() {
	i.t.Helper()
	i.do("freezing", func(ctx context.Context) error { return i.srv.freeze(ctx, false) })
}

// Thaw lets a frozen server go on (SIGCONT). Thawing a server that is not
// frozen does nothing.
func (i *Instance) Thaw() {
	i.t.Helper()
	i.do("thawing", func(ctx context.Context) error { return i.srv.freeze(ctx, true) })
}

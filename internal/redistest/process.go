package redistest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// procServer is a redis-server child process listening on 127.0.0.1.
type procServer struct {
	bin  string
	port int
	dir  string
	cfg  serverConfig

	mu  sync.Mutex
	cmd *exec.Cmd // nil while stopped
}

const procHost = "127.0.0.1"

// startProcess starts redis-server from PATH on a free loopback port with a
// new temporary directory, retrying with another port if the chosen one was
// taken in the meantime.
func startProcess(ctx context.Context, cfg serverConfig) (server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found on PATH: %w", err)
	}
	reapDirsOnce.Do(reapStaleDirs)
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d.%s-", dirPrefix, os.Getpid(), hostTag()))
	if err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort(procHost)
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
		c := cfg
		if c.cluster {
			// A cluster node: its bus needs a port of its own too.
			if c.busPort, err = freePort(procHost); err != nil {
				_ = os.RemoveAll(dir)
				return nil, err
			}
		}
		p := &procServer{bin: bin, port: port, dir: dir, cfg: c}
		lastErr = p.start(ctx)
		if lastErr == nil {
			return p, nil
		}
		if !errors.Is(lastErr, errPortTaken) {
			break
		}
	}
	_ = os.RemoveAll(dir)
	return nil, lastErr
}

const dirPrefix = "redistest-"

var reapDirsOnce sync.Once

// reapStaleDirs removes the data directories that test binaries on this
// host left behind when they died before their teardown ran (their
// redis-server died with them). Directories are named
// redistest-<pid>.<host tag>-<random>.
func reapStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*.*-*"))
	for _, d := range dirs {
		owner, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(d), dirPrefix), "-")
		pidStr, host, _ := strings.Cut(owner, ".")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || host != hostTag() || pid == os.Getpid() || pidAlive(pid) {
			continue
		}
		_ = os.RemoveAll(d)
	}
}

// hostTag is a short digest of the host name, so that hosts (containers)
// sharing a temporary directory leave each other's directories alone.
func hostTag() string {
	h, _ := os.Hostname()
	sum := sha256.Sum256([]byte(h))
	return hex.EncodeToString(sum[:4])
}

var errPortTaken = errors.New("port already in use")

func (p *procServer) addr() string { return fmt.Sprintf("%s:%d", procHost, p.port) }

func (p *procServer) info() Info {
	p.mu.Lock()
	defer p.mu.Unlock()
	detail := p.bin
	if p.cmd != nil {
		detail = fmt.Sprintf("%s, pid %d", p.bin, p.cmd.Process.Pid)
	}
	return Info{
		URL:     "redis://" + p.addr() + "/0",
		Addr:    p.addr(),
		Backend: BackendProcess,
		Detail:  detail,
	}
}

func (p *procServer) logPath() string { return filepath.Join(p.dir, "redis.log") }

func (p *procServer) start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(p.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	logStart, _ := logf.Seek(0, 2)
	cmd := exec.Command(p.bin, p.cfg.redisArgs(p.port, procHost, p.dir)...)
	cmd.Dir = p.dir
	// An *os.File (not a pipe) so that os/exec starts no copying goroutines.
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = childSysProcAttr()
	err = cmd.Start()
	_ = logf.Close() // the child has its own descriptor
	if err != nil {
		return fmt.Errorf("starting %s: %w", p.bin, err)
	}
	p.cmd = cmd

	rctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	pid := cmd.Process.Pid
	err = waitReady(rctx, &redis.Options{Addr: p.addr()},
		func() error {
			if processExited(cmd.Process) {
				return errors.New("redis-server exited")
			}
			return nil
		},
		func(ctx context.Context, c *redis.Client) error {
			// Make sure the server on the port is ours and not one some
			// other process started on a port we believed to be free.
			s, err := c.Info(ctx, "server").Result()
			if err != nil {
				return err
			}
			if !strings.Contains(s, "process_id:"+strconv.Itoa(pid)+"\r\n") {
				return fmt.Errorf("%w: another server answers on %s", errPortTaken, p.addr())
			}
			return nil
		})
	if err == nil {
		return nil
	}
	_ = p.haltLocked(true)
	log := p.logTail(logStart)
	if strings.Contains(log, "Address already in use") {
		err = fmt.Errorf("%w: %v", errPortTaken, err)
	}
	return fmt.Errorf("redis-server %s on %s: %w\nredis-server log:\n%s", p.bin, p.addr(), err, log)
}

// logTail returns the end of the log written since offset from.
func (p *procServer) logTail(from int64) string {
	b, err := os.ReadFile(p.logPath())
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if from > 0 && from <= int64(len(b)) {
		b = b[from:]
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func (p *procServer) stop(ctx context.Context, kill bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.haltLocked(kill)
}

// haltLocked signals the process, waits for it (escalating to SIGKILL after
// stopTimeout) and reaps it.
func (p *procServer) haltLocked(kill bool) error {
	cmd := p.cmd
	if cmd == nil {
		return nil
	}
	p.cmd = nil
	sig := os.Signal(os.Kill)
	if !kill {
		sig = terminateSignal
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		_ = cmd.Process.Kill()
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // exit status is irrelevant: we asked it to stop
		close(done)
	}()
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		_ = cmd.Process.Kill()
		<-done
	}
	return nil
}

func (p *procServer) freeze(_ context.Context, thaw bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return errors.New("the server is not running")
	}
	sig := stopSignal
	if thaw {
		sig = continueSignal
	}
	return p.cmd.Process.Signal(sig)
}

func (p *procServer) destroy(ctx context.Context) error {
	_ = p.freeze(ctx, true) // a frozen process would not stop
	err := p.stop(ctx, false)
	if rmErr := os.RemoveAll(p.dir); rmErr != nil && err == nil {
		err = rmErr
	}
	return err
}

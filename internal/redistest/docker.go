package redistest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/ory/dockertest/v3"
	dc "github.com/ory/dockertest/v3/docker"
	"github.com/redis/go-redis/v9"
)

const (
	// DefaultImage is the official image the docker backend uses when
	// SEGMENTER_REDIS_IMAGE is not set or not usable: taken from the local
	// engine, else pulled; where no registry answers, the backend falls back
	// to the image built FROM scratch (ScratchRepository).
	DefaultImage = "redis:7"
	// ScratchRepository is the repository of the image built from the host's
	// redis-server when no other image is usable.
	ScratchRepository = "segmenter-redis-scratch"

	labelKey  = "org.segmenter.redistest"
	labelPID  = labelKey + ".pid"
	labelHost = labelKey + ".host"

	containerPort = dc.Port("6379/tcp")
	dataDir       = "/data"
	redisPath     = "/usr/bin/redis-server"
	pullTimeout   = 2 * time.Minute
	buildTimeout  = 5 * time.Minute

	// defaultPullAnswer bounds the wait for a registry to answer a pull of
	// DefaultImage: the engine reports no progress before the registry
	// served the image's manifest, so a pull with no progress after this
	// long is given up, and one that has started may run to pullTimeout.
	// Where no registry is reachable the engine usually fails at once (a
	// DNS error: 6ms through the API on our machines); this bounds the case
	// of a firewall that drops packets.
	defaultPullAnswer = 5 * time.Second
	// pullFailureTTL is how long a failed pull of DefaultImage is
	// remembered (in a file in os.TempDir) by the test binaries of this
	// host: the binaries of one `go test ./...` run try once, not once each.
	pullFailureTTL = 10 * time.Minute
)

var (
	dockerOnce sync.Once
	dockerP    *dockertest.Pool
	dockerErr  error

	imageOnce   sync.Once
	imageRef    string
	imageDetail string
	imageErr    error
)

// dockerPool returns a pool for a Docker engine that answered a ping, or an
// error. The first successful call also removes containers left behind by
// dead test binaries.
func dockerPool() (*dockertest.Pool, error) {
	dockerOnce.Do(func() {
		pool, err := dockertest.NewPool("")
		if err != nil {
			dockerErr = fmt.Errorf("docker client: %w", err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := pool.Client.PingWithContext(ctx); err != nil {
			dockerErr = fmt.Errorf("docker engine at %s does not answer: %w", pool.Client.Endpoint(), err)
			return
		}
		dockerP = pool
		reapStale(pool)
		idle(pool)
	})
	return dockerP, dockerErr
}

// idle drops idle connections to the engine so that no transport goroutines
// outlive an operation.
func idle(pool *dockertest.Pool) {
	if pool != nil && pool.Client.HTTPClient != nil {
		pool.Client.HTTPClient.CloseIdleConnections()
	}
}

func closeDocker() { idle(dockerP) }

// reapStale removes containers started on this host by test binaries that
// are gone (they died before their teardown ran).
func reapStale(pool *dockertest.Pool) {
	host, _ := os.Hostname()
	cs, err := pool.Client.ListContainers(dc.ListContainersOptions{
		All:     true,
		Filters: map[string][]string{"label": {labelKey + "=1"}},
	})
	if err != nil {
		return
	}
	for _, c := range cs {
		if c.Labels[labelHost] != host {
			continue
		}
		pid, err := strconv.Atoi(c.Labels[labelPID])
		if err != nil || pid == os.Getpid() || pidAlive(pid) {
			continue
		}
		err = pool.Client.RemoveContainer(dc.RemoveContainerOptions{ID: c.ID, Force: true, RemoveVolumes: true})
		if err == nil {
			fmt.Fprintf(os.Stderr, "redistest: removed container %s left behind by dead test process %d\n", shortID(c.ID), pid)
		}
	}
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// dockerAddr returns the host at which published ports are reachable and the
// host IP to publish them on.
func dockerAddr(pool *dockertest.Pool) (host, bindIP string) {
	u, err := url.Parse(pool.Client.Endpoint())
	if err == nil && (u.Scheme == "tcp" || u.Scheme == "http" || u.Scheme == "https") {
		h := u.Hostname()
		if ip := net.ParseIP(h); h != "" && h != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return h, "" // a remote engine: publish on all its interfaces
		}
	}
	return "127.0.0.1", "127.0.0.1"
}

// dockerImage picks the image for the docker backend (once per binary).
func dockerImage(pool *dockertest.Pool) (ref, detail string, err error) {
	imageOnce.Do(func() {
		imageRef, imageDetail, imageErr = pickImage(pool)
	})
	return imageRef, imageDetail, imageErr
}

func pickImage(pool *dockertest.Pool) (string, string, error) {
	p := imagePicker{
		pool:     pool,
		envImage: os.Getenv(EnvImage),
		official: DefaultImage,
		answer:   defaultPullAnswer,
		failures: pullFailureFile(pool, DefaultImage),
		ttl:      pullFailureTTL,
		scratch:  func() (string, string, error) { return scratchImage(pool) },
		log:      os.Stderr,
	}
	return p.pick()
}

// imagePicker chooses the docker backend's image; its fields are what the
// choice depends on, so that tests can run it against a fake engine.
type imagePicker struct {
	pool     *dockertest.Pool
	envImage string        // SEGMENTER_REDIS_IMAGE, tried first ("" for none)
	official string        // the official image, tried next
	answer   time.Duration // how long a pull of official may go without an answer
	// failures is the file whose recent modification time says that a pull
	// of official failed lately ("" to try every time); ttl is how recent.
	failures string
	ttl      time.Duration
	scratch  func() (ref, detail string, err error) // the last resort
	log      io.Writer                              // where the pulls are reported
}

// pick returns the first usable image of: envImage (local, else pulled),
// official (local, else pulled unless a pull failed lately), the scratch
// image.
func (p imagePicker) pick() (string, string, error) {
	if ref := p.envImage; ref != "" {
		if haveImage(p.pool, ref) {
			return ref, "image " + ref + " from " + EnvImage, nil
		}
		err := pullImage(p.pool, ref, pullTimeout, pullTimeout)
		if err == nil {
			return ref, "image " + ref + " from " + EnvImage + ", pulled", nil
		}
		fmt.Fprintf(p.log, "redistest: cannot use %s=%s (%v); falling back\n", EnvImage, ref, err)
	}
	if haveImage(p.pool, p.official) {
		return p.official, "image " + p.official, nil
	}
	why, err := p.pullOfficial()
	if err == nil {
		return p.official, "image " + p.official + ", pulled", nil
	}
	ref, detail, err := p.scratch()
	if err != nil {
		return "", "", fmt.Errorf("%s is not present locally and %s; %w", p.official, why, err)
	}
	return ref, detail + " (" + p.official + ": " + why + ")", nil
}

// pullOfficial pulls the official image, unless a pull failed less than ttl
// ago, and says why it did not get it. Test binaries starting at once take
// turns, so that the later ones find the first one's failure remembered.
func (p imagePicker) pullOfficial() (why string, err error) {
	if p.failures != "" {
		if unlock, err := lockFile(p.failures + ".lock"); err == nil {
			defer unlock()
		}
		if haveImage(p.pool, p.official) {
			return "", nil // pulled by the binary that held the lock
		}
		if at, ok := p.failedLately(); ok {
			return "its pull failed at " + at.Format(time.TimeOnly) + ", not retried before " + at.Add(p.ttl).Format(time.TimeOnly), errPullSkipped
		}
	}
	begin := time.Now()
	err = pullImage(p.pool, p.official, p.answer, pullTimeout)
	took := time.Since(begin).Round(time.Millisecond)
	if err == nil {
		if p.failures != "" {
			_ = os.Remove(p.failures)
		}
		fmt.Fprintf(p.log, "redistest: pulled %s in %v\n", p.official, took)
		return "", nil
	}
	why = fmt.Sprintf("cannot be pulled (%v, after %v)", err, took)
	remembered := ""
	if p.failures != "" {
		if werr := os.WriteFile(p.failures, []byte(why+"\n"), 0o644); werr == nil {
			remembered = fmt.Sprintf(" (not retried for %v: %s)", p.ttl, p.failures)
		}
	}
	fmt.Fprintf(p.log, "redistest: %s %s; using the image built FROM scratch%s\n", p.official, why, remembered)
	return why, err
}

var errPullSkipped = errors.New("pull skipped: it failed lately")

// failedLately reports whether the failures file was written less than ttl
// ago (a time in the future does not count: the clock was set back).
func (p imagePicker) failedLately() (time.Time, bool) {
	fi, err := os.Stat(p.failures)
	if err != nil {
		return time.Time{}, false
	}
	age := time.Since(fi.ModTime())
	return fi.ModTime(), age >= 0 && age < p.ttl
}

// pullFailureFile is the file remembering a failed pull of ref from the
// engine of pool, per user: os.TempDir may be shared.
func pullFailureFile(pool *dockertest.Pool, ref string) string {
	sum := sha256.Sum256([]byte(pool.Client.Endpoint() + "\x00" + ref))
	return filepath.Join(os.TempDir(), fmt.Sprintf("segmenter-redistest-pull-%d-%s.failed", os.Getuid(), hex.EncodeToString(sum[:6])))
}

func haveImage(pool *dockertest.Pool, ref string) bool {
	_, err := pool.Client.InspectImage(ref)
	return err == nil
}

// pullImage pulls ref. It gives up when the engine reports no progress
// within answer (the registry did not answer), when the pull stalls for
// pullStall, or when it takes longer than total in all.
func pullImage(pool *dockertest.Pool, ref string, answer, total time.Duration) error {
	repo, tag := ref, "latest"
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		repo, tag = ref[:i], ref[i+1:]
	}
	ctx, cancel := context.WithTimeout(context.Background(), total)
	defer cancel()
	defer idle(pool)
	progress := &firstWrite{}
	var unanswered atomic.Bool
	watch := time.AfterFunc(answer, func() {
		if !progress.written() {
			unanswered.Store(true)
			cancel()
		}
	})
	defer watch.Stop()
	err := pool.Client.PullImage(dc.PullImageOptions{
		Repository:        repo,
		Tag:               tag,
		Context:           ctx,
		OutputStream:      progress,
		InactivityTimeout: pullStall,
	}, dc.AuthConfiguration{})
	if err != nil && unanswered.Load() {
		return fmt.Errorf("no answer from the registry within %v: %w", answer, err)
	}
	return err
}

// pullStall bounds a pause in the progress stream of a pull.
const pullStall = 30 * time.Second

// firstWrite is a writer that discards what it is given and remembers that
// something came.
type firstWrite struct{ n atomic.Bool }

func (w *firstWrite) Write(b []byte) (int, error) {
	if len(b) > 0 {
		w.n.Store(true)
	}
	return len(b), nil
}

func (w *firstWrite) written() bool { return w.n.Load() }

// scratchImage returns the image built FROM scratch out of the host's
// redis-server and its shared libraries, building it unless an image with
// the same content hash exists already.
func scratchImage(pool *dockertest.Pool) (string, string, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", "", fmt.Errorf("no usable image: %s is not set or not usable, and no redis-server "+
			"on PATH to build %s from: %w", EnvImage, ScratchRepository, err)
	}
	real, err := filepath.EvalSymlinks(bin)
	if err != nil {
		return "", "", err
	}
	libs, err := sharedLibs(real)
	if err != nil {
		return "", "", fmt.Errorf("listing the shared libraries of %s: %w", real, err)
	}

	// files maps absolute paths inside the image to host files.
	files := map[string]string{redisPath: real}
	var libDirs []string
	seenDir := map[string]bool{}
	for _, l := range libs {
		files[l] = l
		if d := filepath.Dir(l); !seenDir[d] {
			seenDir[d] = true
			libDirs = append(libDirs, d)
		}
	}
	sort.Strings(libDirs)
	dockerfile := scratchDockerfile(libDirs)

	sum, err := hashFiles(files, dockerfile)
	if err != nil {
		return "", "", err
	}
	ref := ScratchRepository + ":" + sum[:12]
	if haveImage(pool, ref) {
		return ref, "image " + ref, nil
	}
	// Test binaries of several packages run at once: let one build while
	// the others wait, then reuse its image.
	unlock, err := lockFile(filepath.Join(os.TempDir(), ScratchRepository+".lock"))
	if err != nil {
		return "", "", fmt.Errorf("locking the image build: %w", err)
	}
	defer unlock()
	if haveImage(pool, ref) {
		return ref, "image " + ref, nil
	}

	begin := time.Now()
	if err := buildImage(pool, ref, files, dockerfile); err != nil {
		return "", "", fmt.Errorf("building %s from %s: %w", ref, real, err)
	}
	img, err := pool.Client.InspectImage(ref)
	if err != nil {
		return "", "", fmt.Errorf("image %s missing after build: %w", ref, err)
	}
	took := time.Since(begin).Round(time.Millisecond)
	fmt.Fprintf(os.Stderr, "redistest: built image %s (%.1f MB, FROM scratch, %s + %d libraries) in %v\n",
		ref, float64(img.Size)/1e6, bin, len(libs), took)
	return ref, fmt.Sprintf("image %s, built in %v", ref, took), nil
}

func scratchDockerfile(libDirs []string) string {
	cmd := serverConfig{}.redisArgs(6379, "0.0.0.0", dataDir)
	quoted := make([]string, len(cmd))
	for i, a := range cmd {
		quoted[i] = strconv.Quote(a)
	}
	return "# Built by github.com/segmenter/segmenter/internal/redistest from the host's redis-server.\n" +
		"FROM scratch\n" +
		"COPY rootfs/ /\n" +
		"ENV LD_LIBRARY_PATH=" + strings.Join(libDirs, ":") + "\n" +
		"WORKDIR " + dataDir + "\n" +
		"EXPOSE 6379/tcp\n" +
		"ENTRYPOINT [" + strconv.Quote(redisPath) + "]\n" +
		"CMD [" + strings.Join(quoted, ", ") + "]\n"
}

// sharedLibs returns the absolute paths of the shared libraries bin needs,
// as listed by ldd, plus its ELF interpreter (the dynamic loader). It returns
// nothing for a static binary.
func sharedLibs(bin string) ([]string, error) {
	interp, err := elfInterp(bin)
	if err != nil {
		return nil, err
	}
	if interp == "" {
		return nil, nil // static
	}
	ldd, err := exec.LookPath("ldd")
	if err != nil {
		return nil, err
	}
	out, err := exec.Command(ldd, bin).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w: %s", bin, err, out)
	}
	seen := map[string]bool{}
	var libs []string
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			libs = append(libs, p)
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)",
		// "/lib64/ld-linux-x86-64.so.2 (0x...)", "linux-vdso.so.1 (0x...)".
		if name, target, ok := strings.Cut(line, "=>"); ok {
			target = strings.TrimSpace(target)
			if strings.HasPrefix(target, "not found") {
				return nil, fmt.Errorf("ldd %s: %s not found", bin, strings.TrimSpace(name))
			}
			if f := strings.Fields(target); len(f) > 0 && filepath.IsAbs(f[0]) {
				add(f[0])
			}
			continue
		}
		if f := strings.Fields(line); len(f) > 0 && filepath.IsAbs(f[0]) {
			add(f[0])
		}
	}
	add(interp)
	return libs, sc.Err()
}

func elfInterp(bin string) (string, error) {
	f, err := elf.Open(bin)
	if err != nil {
		return "", err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				return "", err
			}
			return string(bytes.TrimRight(b, "\x00")), nil
		}
	}
	return "", nil
}

// hashFiles hashes the image's content: destination paths, file contents
// and the Dockerfile.
func hashFiles(files map[string]string, dockerfile string) (string, error) {
	dests := make([]string, 0, len(files))
	for d := range files {
		dests = append(dests, d)
	}
	sort.Strings(dests)
	h := sha256.New()
	for _, d := range dests {
		f, err := os.Open(files[d])
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00", d)
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	io.WriteString(h, dockerfile)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// buildImage builds ref from files and dockerfile in a temporary build
// context, through the engine API, falling back to the docker CLI.
func buildImage(pool *dockertest.Pool, ref string, files map[string]string, dockerfile string) error {
	dir, err := os.MkdirTemp("", "redistest-build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for dest, src := range files {
		if err := copyFile(filepath.Join(dir, "rootfs", dest), src); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	defer idle(pool)
	var out bytes.Buffer
	apiErr := pool.Client.BuildImage(dc.BuildImageOptions{
		Name:                ref,
		Dockerfile:          "Dockerfile",
		ContextDir:          dir,
		OutputStream:        &out,
		RmTmpContainer:      true,
		ForceRmTmpContainer: true,
		Labels:              map[string]string{labelKey + ".image": "1"},
		Context:             ctx,
	})
	if apiErr == nil && haveImage(pool, ref) {
		return nil
	}
	if apiErr == nil {
		apiErr = fmt.Errorf("build reported success but no image: %s", lastLines(out.String(), 20))
	} else {
		apiErr = fmt.Errorf("%w: %s", apiErr, lastLines(out.String(), 20))
	}
	docker, err := exec.LookPath("docker")
	if err != nil {
		return apiErr
	}
	cliOut, err := exec.CommandContext(ctx, docker, "build", "-t", ref, dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("engine API: %v; docker build: %w: %s", apiErr, err, lastLines(string(cliOut), 20))
	}
	return nil
}

func copyFile(dst, src string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src) // follows symlinks: the image gets regular files
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// dockerServer is a Redis container.
type dockerServer struct {
	pool   *dockertest.Pool
	image  string
	detail string
	host   string
	id     string
	name   string

	mu      sync.Mutex
	port    string // published host port, once known
	running bool
}

// startDocker creates and starts a Redis container. With cfg.fixedPort the
// host port is chosen up front, so it stays the same across restarts.
func startDocker(ctx context.Context, cfg serverConfig) (server, error) {
	pool, err := dockerPool()
	if err != nil {
		return nil, err
	}
	defer idle(pool)
	ref, detail, err := dockerImage(pool)
	if err != nil {
		return nil, err
	}
	host, bindIP := dockerAddr(pool)
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		hostPort := ""
		if cfg.fixedPort {
			probeIP := bindIP
			if probeIP == "" {
				probeIP = "0.0.0.0"
			}
			p, err := freePort(probeIP)
			if err != nil {
				return nil, err
			}
			hostPort = strconv.Itoa(p)
		}
		d, err := createContainer(ctx, pool, ref, detail, host, bindIP, hostPort, cfg)
		if err != nil {
			return nil, err
		}
		lastErr = d.start(ctx)
		if lastErr == nil {
			return d, nil
		}
		_ = d.destroy(ctx)
		if !cfg.fixedPort || !isPortConflict(lastErr) {
			break
		}
	}
	return nil, lastErr
}

func isPortConflict(err error) bool {
	s := strings.ToLower(err.Error())
	return strings.Contains(s, "port is already allocated") || strings.Contains(s, "address already in use")
}

func createContainer(ctx context.Context, pool *dockertest.Pool, ref, detail, host, bindIP, hostPort string, cfg serverConfig) (*dockerServer, error) {
	hostname, _ := os.Hostname()
	name := "segmenter-redistest-" + strings.ReplaceAll(uuid.NewString(), "-", "")[:12]
	c, err := pool.Client.CreateContainer(dc.CreateContainerOptions{
		Name: name,
		Config: &dc.Config{
			Image:        ref,
			Cmd:          cfg.redisArgs(6379, "0.0.0.0", dataDir),
			ExposedPorts: map[dc.Port]struct{}{containerPort: {}},
			Labels: map[string]string{
				labelKey:  "1",
				labelPID:  strconv.Itoa(os.Getpid()),
				labelHost: hostname,
			},
			StopSignal: "SIGTERM",
		},
		HostConfig: &dc.HostConfig{
			PortBindings: map[dc.Port][]dc.PortBinding{
				containerPort: {{HostIP: bindIP, HostPort: hostPort}},
			},
		},
		Context: ctx,
	})
	if err != nil {
		return nil, fmt.Errorf("creating container from %s: %w", ref, err)
	}
	return &dockerServer{
		pool:   pool,
		image:  ref,
		detail: detail,
		host:   host,
		id:     c.ID,
		name:   name,
		port:   hostPort,
	}, nil
}

func (d *dockerServer) info() Info {
	d.mu.Lock()
	defer d.mu.Unlock()
	addr := net.JoinHostPort(d.host, d.port)
	return Info{
		URL:     "redis://" + addr + "/0",
		Addr:    addr,
		Backend: BackendDocker,
		Detail:  d.detail + ", container " + d.name,
	}
}

func (d *dockerServer) start(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.running {
		return nil
	}
	defer idle(d.pool)
	err := d.pool.Client.StartContainerWithContext(d.id, nil, ctx)
	var already *dc.ContainerAlreadyRunning
	if err != nil && !errors.As(err, &already) {
		return fmt.Errorf("starting container %s: %w", d.name, err)
	}
	d.running = true

	rctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	err = d.findPort(rctx)
	if err == nil {
		err = waitReady(rctx, &redis.Options{Addr: net.JoinHostPort(d.host, d.port)}, d.alive, nil)
	}
	if err != nil {
		return fmt.Errorf("container %s (%s): %w\ncontainer log:\n%s", d.name, d.image, err, d.logs())
	}
	return nil
}

// findPort learns the published host port (needed when the engine picks it).
func (d *dockerServer) findPort(ctx context.Context) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := d.pool.Client.InspectContainerWithContext(d.id, ctx)
		if err != nil {
			return err
		}
		if c.NetworkSettings != nil {
			if b := c.NetworkSettings.Ports[containerPort]; len(b) > 0 && b[0].HostPort != "" {
				if d.port != "" && d.port != b[0].HostPort {
					return fmt.Errorf("published port changed from %s to %s", d.port, b[0].HostPort)
				}
				d.port = b[0].HostPort
				return nil
			}
		}
		if !c.State.Running {
			return fmt.Errorf("container exited (code %d) before publishing its port", c.State.ExitCode)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no published port for %s: %w", containerPort, ctx.Err())
		case <-tick.C:
		}
	}
}

func (d *dockerServer) alive() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.pool.Client.InspectContainerWithContext(d.id, ctx)
	if err != nil {
		return err
	}
	if !c.State.Running {
		return fmt.Errorf("container exited with code %d", c.State.ExitCode)
	}
	return nil
}

func (d *dockerServer) logs() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var buf bytes.Buffer
	err := d.pool.Client.Logs(dc.LogsOptions{
		Context:      ctx,
		Container:    d.id,
		OutputStream: &buf,
		ErrorStream:  &buf,
		Stdout:       true,
		Stderr:       true,
		Tail:         "50",
	})
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return buf.String()
}

func (d *dockerServer) stop(ctx context.Context, kill bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.running {
		return nil
	}
	defer idle(d.pool)
	var notRunning *dc.ContainerNotRunning
	if kill {
		err := d.pool.Client.KillContainer(dc.KillContainerOptions{ID: d.id, Signal: dc.SIGKILL, Context: ctx})
		if err != nil && !errors.As(err, &notRunning) {
			return fmt.Errorf("killing container %s: %w", d.name, err)
		}
		if _, err := d.pool.Client.WaitContainerWithContext(d.id, ctx); err != nil {
			return fmt.Errorf("waiting for container %s: %w", d.name, err)
		}
	} else {
		err := d.pool.Client.StopContainerWithContext(d.id, uint(stopTimeout/time.Second), ctx)
		if err != nil && !errors.As(err, &notRunning) {
			return fmt.Errorf("stopping container %s: %w", d.name, err)
		}
	}
	d.running = false
	return nil
}

func (d *dockerServer) freeze(ctx context.Context, thaw bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.running {
		return errors.New("the container is not running")
	}
	defer idle(d.pool)
	sig := dc.SIGSTOP
	if thaw {
		sig = dc.SIGCONT
	}
	// The signal goes to the container's process 1, redis-server; from
	// outside its PID namespace SIGSTOP cannot be ignored.
	if err := d.pool.Client.KillContainer(dc.KillContainerOptions{ID: d.id, Signal: sig, Context: ctx}); err != nil {
		return fmt.Errorf("signalling container %s: %w", d.name, err)
	}
	return nil
}

func (d *dockerServer) destroy(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	defer idle(d.pool)
	d.running = false
	err := d.pool.Client.RemoveContainer(dc.RemoveContainerOptions{ID: d.id, Force: true, RemoveVolumes: true, Context: ctx})
	var gone *dc.NoSuchContainer
	if err != nil && !errors.As(err, &gone) {
		return fmt.Errorf("removing container %s: %w", d.name, err)
	}
	return nil
}

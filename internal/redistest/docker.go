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
	"time"

	"github.com/google/uuid"
	"github.com/ory/dockertest/v3"
	dc "github.com/ory/dockertest/v3/docker"
	"github.com/redis/go-redis/v9"
)

const (
	// DefaultImage is used by the docker backend when it already exists
	// locally (it is never pulled).
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
	if ref := os.Getenv(EnvImage); ref != "" {
		if haveImage(pool, ref) {
			return ref, "image " + ref + " from " + EnvImage, nil
		}
		err := pullImage(pool, ref)
		if err == nil {
			return ref, "image " + ref + " from " + EnvImage + ", pulled", nil
		}
		fmt.Fprintf(os.Stderr, "redistest: cannot use %s=%s (%v); falling back\n", EnvImage, ref, err)
	}
	if haveImage(pool, DefaultImage) {
		return DefaultImage, "image " + DefaultImage, nil
	}
	return scratchImage(pool)
}

func haveImage(pool *dockertest.Pool, ref string) bool {
	_, err := pool.Client.InspectImage(ref)
	return err == nil
}

func pullImage(pool *dockertest.Pool, ref string) error {
	repo, tag := ref, "latest"
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		repo, tag = ref[:i], ref[i+1:]
	}
	ctx, cancel := context.WithTimeout(context.Background(), pullTimeout)
	defer cancel()
	defer idle(pool)
	return pool.Client.PullImage(dc.PullImageOptions{
		Repository:   repo,
		Tag:          tag,
		Context:      ctx,
		OutputStream: io.Discard,
	}, dc.AuthConfiguration{})
}

// scratchImage returns the image built FROM scratch out of the host's
// redis-server and its shared libraries, building it unless an image with
// the same content hash exists already.
func scratchImage(pool *dockertest.Pool) (string, string, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", "", fmt.Errorf("no usable image: %s is not set or not usable, %s is not present "+
			"locally, and no redis-server on PATH to build %s from: %w", EnvImage, DefaultImage, ScratchRepository, err)
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

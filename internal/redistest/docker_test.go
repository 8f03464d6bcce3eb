package redistest

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ory/dockertest/v3"
	dc "github.com/ory/dockertest/v3/docker"
)

// pullMode is how the fake engine answers a pull.
type pullMode int

const (
	pullRefused pullMode = iota // at once, with an error (a registry that cannot be resolved)
	pullSilent                  // never: it waits until the client gives up (a firewall that drops packets)
	pullSlow                    // progress at once, the image after slowPull
)

// fakeEngine is the part of the Docker engine API that picking an image
// uses: inspect an image, pull one.
type fakeEngine struct {
	mode     pullMode
	slowPull time.Duration

	mu     sync.Mutex
	images map[string]bool // present locally
	pulls  []string        // every pull asked for, as repo:tag
}

var apiVersion = regexp.MustCompile(`^/v[0-9.]+/`)

func (e *fakeEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := apiVersion.ReplaceAllString(r.URL.Path, "/")
	switch {
	case r.Method == http.MethodGet && strings.HasPrefix(path, "/images/") && strings.HasSuffix(path, "/json"):
		ref := strings.TrimSuffix(strings.TrimPrefix(path, "/images/"), "/json")
		e.mu.Lock()
		ok := e.images[ref]
		e.mu.Unlock()
		if !ok {
			http.Error(w, `{"message":"No such image: `+ref+`"}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"Id":"sha256:0123"}`))
	case r.Method == http.MethodPost && path == "/images/create":
		ref := r.URL.Query().Get("fromImage") + ":" + r.URL.Query().Get("tag")
		e.mu.Lock()
		e.pulls = append(e.pulls, ref)
		e.mu.Unlock()
		switch e.mode {
		case pullRefused:
			http.Error(w, `{"message":"Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io: no such host"}`, http.StatusInternalServerError)
		case pullSilent:
			<-r.Context().Done()
		case pullSlow:
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"status":"Pulling from library/redis","id":"7"}` + "\n"))
			w.(http.Flusher).Flush()
			t := time.NewTimer(e.slowPull) // the download
			defer t.Stop()
			select {
			case <-r.Context().Done():
				return
			case <-t.C:
			}
			e.mu.Lock()
			e.images[ref] = true
			e.mu.Unlock()
			_, _ = w.Write([]byte(`{"status":"Status: Downloaded newer image for ` + ref + `"}` + "\n"))
		}
	default:
		http.Error(w, `{"message":"not in the fake engine"}`, http.StatusNotImplemented)
	}
}

func (e *fakeEngine) pulled() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.pulls...)
}

// newFakeEngine starts e and returns a pool that talks to it.
func newFakeEngine(t *testing.T, e *fakeEngine, images ...string) *dockertest.Pool {
	t.Helper()
	e.images = map[string]bool{}
	for _, ref := range images {
		e.images[ref] = true
	}
	srv := httptest.NewServer(e)
	client, err := dc.NewClient(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	pool := &dockertest.Pool{Client: client}
	t.Cleanup(func() {
		idle(pool)
		srv.Close()
	})
	return pool
}

// testPicker is a picker for the fake engine, with the scratch image stubbed
// out and its failures file in a directory of the test.
func testPicker(t *testing.T, pool *dockertest.Pool, answer time.Duration) imagePicker {
	return imagePicker{
		pool:     pool,
		official: "redis:7",
		answer:   answer,
		failures: filepath.Join(t.TempDir(), "pull.failed"),
		ttl:      time.Minute,
		scratch:  func() (string, string, error) { return "scratch:1", "image scratch:1", nil },
		log:      testLog{t},
	}
}

// testLog writes to the test's log.
type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

func TestPickImageFallsBackToScratchWhenThePullFailsAndRemembersIt(t *testing.T) {
	e := &fakeEngine{mode: pullRefused}
	p := testPicker(t, newFakeEngine(t, e), 5*time.Second)
	ref, detail, err := p.pick()
	if err != nil || ref != "scratch:1" || !strings.Contains(detail, "redis:7") {
		t.Fatalf("pick = %q %q %v, want scratch:1 with why redis:7 was not used", ref, detail, err)
	}
	if got := e.pulled(); len(got) != 1 || got[0] != "redis:7" {
		t.Fatalf("pulls %v, want one of redis:7", got)
	}

	// Another test binary of the same run: the failure is remembered.
	if ref, _, err := p.pick(); err != nil || ref != "scratch:1" {
		t.Fatalf("second pick = %q %v, want scratch:1", ref, err)
	}
	if got := e.pulled(); len(got) != 1 {
		t.Fatalf("pulls %v: the remembered failure was retried", got)
	}

	// Once the failure is older than the TTL (or in the future: the clock
	// was set back), the pull is tried again.
	for _, at := range []time.Time{time.Now().Add(-p.ttl - time.Second), time.Now().Add(time.Hour)} {
		if err := os.Chtimes(p.failures, at, at); err != nil {
			t.Fatal(err)
		}
		before := len(e.pulled())
		if ref, _, err := p.pick(); err != nil || ref != "scratch:1" {
			t.Fatalf("pick after the TTL = %q %v, want scratch:1", ref, err)
		}
		if got := e.pulled(); len(got) != before+1 {
			t.Fatalf("pulls %v: a failure of %v was not retried", got, at)
		}
	}
}

func TestPullWithoutAnAnswerIsGivenUpAfterTheAnswerTimeout(t *testing.T) {
	e := &fakeEngine{mode: pullSilent}
	const answer = 300 * time.Millisecond
	p := testPicker(t, newFakeEngine(t, e), answer)
	begin := time.Now()
	ref, detail, err := p.pick()
	took := time.Since(begin)
	if err != nil || ref != "scratch:1" || !strings.Contains(detail, "no answer") {
		t.Fatalf("pick = %q %q %v, want scratch:1 after no answer", ref, detail, err)
	}
	if took < answer || took > answer+3*time.Second {
		t.Fatalf("the pick took %v, want about the answer timeout %v", took, answer)
	}
	if _, ok := p.failedLately(); !ok {
		t.Fatalf("the failure was not remembered in %s", p.failures)
	}
}

func TestPullThatAnswersIsNotCutShort(t *testing.T) {
	const answer = 200 * time.Millisecond
	e := &fakeEngine{mode: pullSlow, slowPull: 4 * answer}
	p := testPicker(t, newFakeEngine(t, e), answer)
	// A failure remembered from long ago does not prevent the pull, and a
	// success forgets it.
	if err := os.WriteFile(p.failures, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(p.failures, old, old); err != nil {
		t.Fatal(err)
	}
	ref, detail, err := p.pick()
	if err != nil || ref != "redis:7" || !strings.Contains(detail, "pulled") {
		t.Fatalf("pick = %q %q %v, want redis:7 pulled", ref, detail, err)
	}
	if _, err := os.Stat(p.failures); !os.IsNotExist(err) {
		t.Fatalf("the old failure is still remembered (%v)", err)
	}
	// Now present locally: no second pull.
	if ref, _, err := p.pick(); err != nil || ref != "redis:7" || len(e.pulled()) != 1 {
		t.Fatalf("second pick = %q %v after pulls %v, want the local redis:7", ref, err, e.pulled())
	}
}

func TestPickImageTriesTheEnvImageFirst(t *testing.T) {
	e := &fakeEngine{mode: pullRefused}
	pool := newFakeEngine(t, e, "mine:1", "redis:7")
	p := testPicker(t, pool, time.Second)

	p.envImage = "mine:1" // present
	if ref, _, err := p.pick(); err != nil || ref != "mine:1" || len(e.pulled()) != 0 {
		t.Fatalf("pick = %q %v after pulls %v, want the local mine:1", ref, err, e.pulled())
	}
	p.envImage = "mine:2" // absent, and the pull fails: the official image
	if ref, _, err := p.pick(); err != nil || ref != "redis:7" {
		t.Fatalf("pick = %q %v, want redis:7", ref, err)
	}
	if got := e.pulled(); len(got) != 1 || got[0] != "mine:2" {
		t.Fatalf("pulls %v, want one of mine:2", got)
	}
}

// TestPullFailureOfTheRealEngineIsBounded measures what a failed pull costs
// on this machine's engine: an image that does not exist fails, at once
// where no registry is reachable and after the manifest lookup where one is.
func TestPullFailureOfTheRealEngineIsBounded(t *testing.T) {
	pool, err := dockerPool()
	if err != nil {
		if os.Getenv(EnvBackend) == BackendDocker {
			t.Fatalf("%s=docker but: %v", EnvBackend, err)
		}
		t.Skipf("no Docker engine: %v", err)
	}
	begin := time.Now()
	err = pullImage(pool, "redis:segmenter-redistest-no-such-tag", defaultPullAnswer, pullTimeout)
	took := time.Since(begin)
	if err == nil {
		t.Fatal("pull of a tag that does not exist succeeded")
	}
	if took > defaultPullAnswer+5*time.Second {
		t.Fatalf("the failed pull took %v, want at most about %v", took, defaultPullAnswer)
	}
	t.Logf("a failed pull takes %v here: %v", took.Round(time.Millisecond), err)
}

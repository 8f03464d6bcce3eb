package main

import (
	"context"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/segmenter/segmenter/internal/redistest"
)

// TestLiveDemoShowsRebalances drives demo -live through a pipe, as a person
// at the keyboard would: stop consumer 1, start it again, add a third, quit.
// The view shows each hand-over as partition moves.
func TestLiveDemoShowsRebalances(t *testing.T) {
	t.Parallel()
	srv := redistest.Server(t)
	keys, typed := io.Pipe()
	var out syncBuffer
	cfg := liveConfig{Consumers: 2, Partitions: 4, Rate: 200, SlowRate: 10, Refresh: 50 * time.Millisecond,
		Namespace: redistest.Namespace(t), RedisURL: srv.URL}
	type result struct {
		res liveResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := liveDemo(context.Background(), cfg, keys, &out)
		done <- result{res, err}
	}()
	t.Cleanup(func() { typed.Close() })
	waitFor := func(what string, re *regexp.Regexp) {
		t.Helper()
		redistest.Eventually(t, 20*time.Second, func() bool { return re.MatchString(out.String()) }, "%s: %s in the output", what, re)
	}
	press := func(k string) {
		t.Helper()
		if _, err := io.WriteString(typed, k+"\n"); err != nil {
			t.Fatal(err)
		}
	}

	waitFor("both consumers hold partitions", regexp.MustCompile(`(?m)^c1\s+running\s+\d[0-9,-]*\s+\d+\s+\d+\n(?:.*\n)?c2\s+running\s+\d`))
	waitFor("messages flow", regexp.MustCompile(`(?m)^group live: processed [1-9]\d*`))
	press("1")
	waitFor("c1 stops", regexp.MustCompile(`c1 stopped: it handed its partitions over`))
	waitFor("its partitions move to c2", regexp.MustCompile(`partition \d+: c1 -> c2`))
	waitFor("c2 holds all 4", regexp.MustCompile(`(?m)^c2\s+running\s+0-3\s`))
	press("1")
	waitFor("c1 starts again", regexp.MustCompile(`(?m)c1 started\n(?s:.*)partition \d+: c2 -> c1`))
	press("+")
	waitFor("a third consumer takes partitions", regexp.MustCompile(`partition \d+: c[12] -> c3`))
	waitFor("the slow group lags", regexp.MustCompile(`(?m)^group audit \(one consumer handling 10 msg/s\): processed \d+, lag [1-9]\d*`))
	press("x")
	waitFor("an unknown key is explained", regexp.MustCompile(`unknown key "x": 1-3 stop or start a consumer`))
	press("q")
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second): // catches a hang only
		t.Fatal("demo -live did not end after q")
	}
	if r.err != nil {
		t.Fatalf("demo -live: %v\n%s", r.err, out.String())
	}
	if len(r.res.Violations) != 0 || r.res.Moves < 4 || r.res.Processed == 0 || r.res.Sent == 0 {
		t.Errorf("result %+v: want no violations, 4 moves or more, messages sent and processed", r.res)
	}
	if !strings.Contains(out.String(), "per-key order: OK") {
		t.Errorf("no summary:\n%s", out.String())
	}
}

func TestLiveDemoCommand(t *testing.T) {
	t.Parallel()
	// Embedded Redis, stdin at its end at once: it runs for its duration.
	code, stdout, stderr := runCmd(t, noEnv, "demo", "-live", "-duration", "1s", "-consumers", "2", "-partitions", "4", "-refresh", "200ms")
	if code != exitOK {
		t.Fatalf("demo -live: exit %d\n%s\n%s", code, stdout, stderr)
	}
	for _, want := range []string{"embedded in-process server", "segmenter demo -live: namespace demo-", "c1 started", "c2 started", "per-key order: OK"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "\x1b[") {
		t.Errorf("ANSI escapes in output that is not a terminal:\n%q", stdout)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"demo", "-consumers", "3"}, "-consumers applies to demo -live only"},
		{[]string{"demo", "-live", "-messages", "3"}, "-messages applies to demo without -live only"},
		{[]string{"demo", "-live", "-consumers", "0", "-rate", "0"}, "-consumers is 0, must be 1 to 9 (a digit key each); -rate is 0"},
	} {
		code, _, stderr := runCmd(t, noEnv, tc.args...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want usage, %q", tc.args, code, stderr, tc.want)
		}
	}
}

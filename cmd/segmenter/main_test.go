package main

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/redistest"
)

func TestMain(m *testing.M) {
	redis.SetLogger(quietLogger{}) // as main does: failed dials are reported by the commands
	goleak.VerifyTestMain(redistest.Wrap(m))
}

// noEnv is an empty environment: REDIS_URL unset whatever the test process
// has.
func noEnv(string) string { return "" }

func envWith(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func runCmd(t *testing.T, env func(string) string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCmdIn(t, env, "", args...)
}

// runCmdIn runs the command line args with stdin as its standard input.
func runCmdIn(t *testing.T, env func(string) string, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), args, env, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

// checkSummary checks the demo's summary reports every message received, in
// per-key order.
func checkSummary(t *testing.T, out string, messages int) {
	t.Helper()
	for _, want := range []string{
		fmt.Sprintf("messages sent: %d\n", messages),
		fmt.Sprintf("messages received: %d (redeliveries: 0)\n", messages),
		"partitions: 8\n",
		"keys: 50\n",
		"per-key order: OK\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if !regexp.MustCompile(`(?m)^throughput: \d+ msg/s$`).MatchString(out) {
		t.Errorf("summary lacks the throughput:\n%s", out)
	}
}

func TestDemoEmbeddedRedis(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	cfg := demoConfig{Messages: 500, Partitions: 8, Timeout: time.Minute, RedisURL: ""} // "": embedded
	res, err := demo(context.Background(), cfg, &out)
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	if res.Sent != 500 || res.Received != res.Sent || len(res.Violations) != 0 {
		t.Errorf("sent %d, received %d, violations %q; want 500, 500, none", res.Sent, res.Received, res.Violations)
	}
	if res.Stats.Acked != 500 || res.Stats.Trimmed != 0 || res.Stats.Poison != 0 || res.Stats.Fenced != 0 {
		t.Errorf("consumer stats %+v: want 500 acked, nothing trimmed, poison or fenced", res.Stats)
	}
	if !strings.Contains(out.String(), "embedded in-process server (miniredis)") {
		t.Errorf("output does not say Redis is embedded:\n%s", out.String())
	}
	checkSummary(t, out.String(), 500)
}

// TestDemoCommand runs the demo through the command line, as `segmenter demo`
// does with REDIS_URL unset.
func TestDemoCommand(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := runCmd(t, noEnv, "demo", "-messages", "300", "-namespace", "cmd-demo", "-timeout", "1m")
	if code != exitOK {
		t.Fatalf("exit code %d, want 0\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	checkSummary(t, stdout, 300)
	if !strings.Contains(stdout, "namespace cmd-demo,") {
		t.Errorf("output does not name the namespace:\n%s", stdout)
	}
}

func TestDemoRealRedis(t *testing.T) {
	t.Parallel()
	srv := redistest.Server(t)
	ns := redistest.Namespace(t)
	env := envWith(map[string]string{envRedisURL: srv.URL})

	code, stdout, stderr := runCmd(t, env, "demo", "-messages", "500", "-namespace", ns)
	if code != exitOK {
		t.Fatalf("exit code %d, want 0\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	checkSummary(t, stdout, 500)
	if strings.Contains(stdout, "embedded") {
		t.Errorf("demo used the embedded server although REDIS_URL is set:\n%s", stdout)
	}

	// A second run in the same namespace counts only its own messages.
	code, stdout, stderr = runCmd(t, env, "demo", "-messages", "500", "-namespace", ns)
	if code != exitOK {
		t.Fatalf("second run: exit code %d, want 0\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	checkSummary(t, stdout, 500)

	// The stream stays for inspect.
	code, stdout, stderr = runCmd(t, env, "inspect", "-namespace", ns, "-stream", demoStream)
	if code != exitOK {
		t.Fatalf("inspect: exit code %d, want 0\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if !regexp.MustCompile(`(?m)^total\s+1000$`).MatchString(stdout) {
		t.Errorf("inspect does not report 1000 entries in total:\n%s", stdout)
	}
}

func TestInspect(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := redistest.Server(t)
	ns := redistest.Namespace(t)

	seg, err := segmenter.NewSegmenter(&segmenter.Config{RedisURL: srv.URL, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = seg.Close(context.Background()) })
	st, err := seg.RegisterStream(ctx, "orders", 4, 1000)
	if err != nil {
		t.Fatal(err)
	}
	msgs := make([]*contracts.PMessage, 40)
	for i := range msgs {
		msgs[i] = &contracts.PMessage{PartitionKey: fmt.Sprintf("k%d", i), Data: []byte("x")}
	}
	if _, err := st.SendBatch(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	c, err := seg.RegisterConsumer(ctx, "orders", "billing", 10, time.Minute, segmenter.WithConsumerName("worker-1"))
	if err != nil {
		t.Fatal(err)
	}
	read, err := c.Read(ctx, time.Second) // left unacked: pending
	if err != nil || len(read) == 0 {
		t.Fatalf("Read: %d messages, err %v", len(read), err)
	}

	var out bytes.Buffer
	// Without -namespace, inspect finds the namespaces that have the stream.
	if err := inspect(ctx, inspectConfig{Stream: "orders", RedisURL: srv.URL}, &out); err != nil {
		t.Fatalf("inspect: %v\n%s", err, out.String())
	}
	got := out.String()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`namespace ` + regexp.QuoteMeta(ns) + `, stream orders: 4 partitions, retention ~1000 entries per partition, partitioner murmur2`),
		regexp.MustCompile(`(?m)^total\s+40$`),
		regexp.MustCompile(`(?m)^group billing$`),
		regexp.MustCompile(fmt.Sprintf(`(?m)^total\s+%d$`, len(read))),
	} {
		if !want.MatchString(got) {
			t.Errorf("inspect output does not match %s:\n%s", want, got)
		}
	}
	for _, o := range c.Assignment() {
		line := regexp.MustCompile(fmt.Sprintf(`(?m)^%d\s+worker-1\s+%d\s+expires in [0-9.]+m?s\s+\d+\s+\d+$`, o.Partition, o.Epoch))
		if !line.MatchString(got) {
			t.Errorf("inspect does not show partition %d held by worker-1 under epoch %d:\n%s", o.Partition, o.Epoch, got)
		}
	}

	if err := c.Ack(ctx, read...); err != nil { // else Shutdown waits for them
		t.Fatal(err)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := inspect(ctx, inspectConfig{Stream: "orders", Namespace: ns, RedisURL: srv.URL}, &out); err != nil {
		t.Fatalf("inspect after shutdown: %v", err)
	}
	if !regexp.MustCompile(`(?m)^0\s+-\s+\d+\s+free\s`).MatchString(out.String()) {
		t.Errorf("after Shutdown partition 0 is not shown free:\n%s", out.String())
	}

	out.Reset()
	err = inspect(ctx, inspectConfig{Stream: "nope", Namespace: ns, RedisURL: srv.URL}, &out)
	if err == nil || !strings.Contains(err.Error(), `stream "nope" not found`) {
		t.Errorf("inspect of a missing stream: err %v, want stream not found", err)
	}
}

func TestCommandLine(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		args   []string
		env    map[string]string
		code   int
		stdout string // substring wanted on stdout
		stderr string // substring wanted on stderr
		quiet  bool   // nothing on stdout
	}{
		{name: "no command", args: nil, code: exitUsage, stderr: "Usage:", quiet: true},
		{name: "help", args: []string{"help"}, code: exitOK, stdout: "Commands:"},
		{name: "-h", args: []string{"-h"}, code: exitOK, stdout: "Commands:"},
		{name: "--help", args: []string{"--help"}, code: exitOK, stdout: "REDIS_URL"},
		{name: "help demo", args: []string{"help", "demo"}, code: exitOK, stdout: "-messages"},
		{name: "help inspect", args: []string{"help", "inspect"}, code: exitOK, stdout: "-stream"},
		{name: "help unknown", args: []string{"help", "frobnicate"}, code: exitUsage, stderr: `unknown command "frobnicate"`, quiet: true},
		{name: "unknown command", args: []string{"frobnicate"}, code: exitUsage, stderr: `unknown command "frobnicate"`, quiet: true},
		{name: "demo -h", args: []string{"demo", "-h"}, code: exitOK, stdout: "-partitions"},
		{name: "demo bad flag", args: []string{"demo", "-nope"}, code: exitUsage, stderr: "flag provided but not defined: -nope", quiet: true},
		{name: "demo extra argument", args: []string{"demo", "now"}, code: exitUsage, stderr: `unexpected argument "now"`, quiet: true},
		{name: "demo zero messages", args: []string{"demo", "-messages", "0"}, code: exitUsage, stderr: "-messages is 0", quiet: true},
		{name: "demo every problem at once", args: []string{"demo", "-partitions", "0", "-timeout", "0s"}, code: exitUsage, stderr: "-partitions is 0, must be at least 1; -timeout is 0s", quiet: true},
		{name: "demo bad namespace", args: []string{"demo", "-namespace", "a:b", "-messages", "1"}, code: exitUsage, stderr: "namespace"},
		{name: "inspect without REDIS_URL", args: []string{"inspect", "-stream", "s"}, code: exitUsage, stderr: "REDIS_URL is not set", quiet: true},
		{name: "inspect without -stream", args: []string{"inspect"}, env: map[string]string{envRedisURL: "redis://127.0.0.1:1"}, code: exitUsage, stderr: "-stream is required", quiet: true},
		{name: "inspect bad stream name", args: []string{"inspect", "-stream", "a b"}, env: map[string]string{envRedisURL: "redis://127.0.0.1:1"}, code: exitUsage, stderr: "not a valid stream name", quiet: true},
		{name: "inspect bad REDIS_URL", args: []string{"inspect", "-stream", "s"}, env: map[string]string{envRedisURL: "http://x"}, code: exitUsage, stderr: "REDIS_URL", quiet: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runCmd(t, envWith(tt.env), tt.args...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout, stderr)
			}
			if !strings.Contains(stdout, tt.stdout) {
				t.Errorf("stdout lacks %q:\n%s", tt.stdout, stdout)
			}
			if !strings.Contains(stderr, tt.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tt.stderr, stderr)
			}
			if tt.quiet && stdout != "" {
				t.Errorf("stdout not empty:\n%s", stdout)
			}
		})
	}
}

// TestDemoInterrupted checks that a cancelled context (SIGINT) ends the demo
// with an error and shuts everything down (goleak checks the goroutines).
func TestDemoInterrupted(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out bytes.Buffer
	_, err := demo(ctx, demoConfig{Messages: 100, Partitions: 2, Timeout: time.Minute}, &out)
	if err == nil {
		t.Fatalf("demo with a cancelled context succeeded:\n%s", out.String())
	}
}

// Command segmenter runs a demo of the segmenter SDK and lets operators see
// and steer the state it keeps in Redis, as kafka-consumer-groups does for
// Kafka.
//
// Usage:
//
//	segmenter demo [-messages N] [-partitions P] [-namespace NS] [-timeout D]
//	segmenter demo -live [-consumers N] [-rate R] [-duration D]
//	segmenter describe -stream S [-group G]
//	segmenter lag [-stream S] [-group G]
//	segmenter streams
//	segmenter tail -stream S [-partition N] [-n N] [-follow]
//	segmenter send -stream S -key K [-data D | stdin] [-lines] [-meta NAME=VALUE]
//	segmenter dlq list|redrive|delete -stream S -group G [...]
//	segmenter reset-group -stream S -group G -to earliest|latest|ID [-force] [-dry-run]
//	segmenter inspect -stream S
//	segmenter help [COMMAND]
//
// Every command but demo takes the server from -redis or REDIS_URL, the
// namespace from -namespace (when omitted: the only namespace on the server
// that has the stream, or the only one at all), and prints tables for
// people or, with -json, one JSON document for scripts (tail -follow: one
// JSON object per line). The JSON field names are stable; durations are in
// milliseconds (fields ending in _ms), times in RFC 3339. Commands that look
// (describe, lag, streams, tail, dlq list, inspect) never change a group:
// tail reads with XRANGE and XREAD, without a group.
//
// Exit codes: 0 ok, 1 the command failed (Redis unreachable, stream not
// found, a reset refused), 2 bad usage (unknown flag, missing argument,
// invalid name).
//
// demo sends keyed messages through a partitioned stream, consumes them and
// checks that every key's messages arrived in order. It uses the Redis
// server named by REDIS_URL, or an embedded in-process server when
// REDIS_URL is unset. demo -live runs several consumers in one process and
// shows, refreshing in place, which partitions each holds, the throughput
// and the lag, and the partitions that move when a consumer is stopped or
// started from the keyboard.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed
	exitUsage   = 2 // bad command line or environment
)

// envRedisURL names the Redis server to use.
const envRedisURL = "REDIS_URL"

func main() {
	redis.SetLogger(quietLogger{})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, openStdin(), os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// command is a subcommand of the tool.
type command struct {
	name    string
	summary string
	// flags returns the command's flag set, writing the parsed values into a
	// fresh configuration, and a function that runs the command with it.
	flags func() (*flag.FlagSet, runFunc)
	// actions, when set, are the words one of which must come first
	// (dlq list), passed in invocation.action.
	actions []string
}

// runFunc runs a command whose flags were parsed and returns the exit code.
type runFunc func(ctx context.Context, inv invocation) int

// invocation is what a command runs with besides its flags.
type invocation struct {
	env            func(string) string // looks up environment variables
	stdin          io.Reader
	stdout, stderr io.Writer
	action         string // the command's action (dlq list), if it has actions
}

func commands() []command {
	return []command{
		{name: "demo", summary: "send and consume keyed messages, check per-key order (-live: watch a group rebalance)", flags: demoCommand},
		{name: "describe", summary: "show a stream's groups: per partition position, lag, pending, lease; members", flags: describeCommand},
		{name: "lag", summary: "show one line per group: total lag and the worst partition", flags: lagCommand},
		{name: "streams", summary: "list the streams of a namespace (of every namespace without -namespace)", flags: streamsCommand},
		{name: "tail", summary: "print a stream's last messages, -follow for new ones (no group is touched)", flags: tailCommand},
		{name: "send", summary: "send a message (or one per line of stdin) to a stream", flags: sendCommand},
		{name: "dlq", summary: "list, re-drive or delete a group's dead letters: dlq list|redrive|delete", flags: dlqCommand, actions: dlqActions},
		{name: "reset-group", summary: "move a group to the earliest, the latest or an entry ID (stopped groups only)", flags: resetCommand},
		{name: "inspect", summary: "print a stream's partitions, leases and pending messages of every namespace", flags: inspectCommand},
	}
}

func findCommand(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func usage(w io.Writer) {
	fmt.Fprint(w, `segmenter: partitioned, ordered message processing on Redis Streams.

Usage:
  segmenter COMMAND [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `  help         print this help, or a command's flags: segmenter help COMMAND

Environment:
  REDIS_URL  the Redis server, e.g. redis://localhost:6379/0 (-redis overrides
             it). demo starts an embedded in-process server when it is unset.

Exit codes: 0 ok, 1 the command failed, 2 bad usage.
`)
}

// commandUsage prints the usage line and the flags of one command.
func commandUsage(w io.Writer, c command, fs *flag.FlagSet) {
	name := c.name
	if len(c.actions) > 0 {
		name += " " + strings.Join(c.actions, "|")
	}
	fmt.Fprintf(w, "Usage: segmenter %s [flags]\n\n%s.\n\nFlags:\n", name, capitalize(c.summary))
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// run runs the command line args (without the program name) and returns the
// exit code. env looks up environment variables.
func run(ctx context.Context, args []string, env func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		if len(args) == 1 || args[0] != "help" {
			usage(stdout)
			return exitOK
		}
		c, ok := findCommand(args[1])
		if !ok {
			fmt.Fprintf(stderr, "segmenter help: unknown command %q\n\n", args[1])
			usage(stderr)
			return exitUsage
		}
		fs, _ := c.flags()
		commandUsage(stdout, c, fs)
		return exitOK
	}
	c, ok := findCommand(args[0])
	if !ok {
		fmt.Fprintf(stderr, "segmenter: unknown command %q\n\n", args[0])
		usage(stderr)
		return exitUsage
	}
	fs, runCmd := c.flags()
	fs.SetOutput(io.Discard) // errors and help are printed below
	rest, action := args[1:], ""
	if len(c.actions) > 0 { // COMMAND ACTION [flags]
		if len(rest) > 0 && (rest[0] == "-h" || rest[0] == "-help" || rest[0] == "--help") {
			commandUsage(stdout, c, fs)
			return exitOK
		}
		if len(rest) == 0 || !slices.Contains(c.actions, rest[0]) {
			what := "an action is required"
			if len(rest) > 0 {
				what = fmt.Sprintf("unknown action %q", rest[0])
			}
			fmt.Fprintf(stderr, "segmenter %s: %s: one of %s\n\n", c.name, what, strings.Join(c.actions, ", "))
			commandUsage(stderr, c, fs)
			return exitUsage
		}
		action = rest[0]
		rest = rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			commandUsage(stdout, c, fs)
			return exitOK
		}
		fmt.Fprintf(stderr, "segmenter %s: %v\n\n", c.name, err)
		commandUsage(stderr, c, fs)
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "segmenter %s: unexpected argument %q\n\n", c.name, fs.Arg(0))
		commandUsage(stderr, c, fs)
		return exitUsage
	}
	return runCmd(ctx, invocation{env: env, stdin: stdin, stdout: stdout, stderr: stderr, action: action})
}

// usageError is a problem with the command line or the environment: it
// exits with exitUsage.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// exitCode reports err on stderr, prefixed with the command name, and returns
// the exit code it calls for.
func exitCode(stderr io.Writer, name string, err error) int {
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "segmenter %s: %v\n", name, err)
	var ue *usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitFailure
}

// Command segmenter demonstrates the segmenter SDK and inspects the state it
// keeps in Redis.
//
// Usage:
//
//	segmenter demo [-messages N] [-partitions P] [-namespace NS] [-timeout D]
//	segmenter inspect -stream NAME [-namespace NS]
//	segmenter help [COMMAND]
//
// demo sends keyed messages through a partitioned stream, consumes them and
// checks that every key's messages arrived in order. It uses the Redis server
// named by REDIS_URL, or an embedded in-process server when REDIS_URL is
// unset.
//
// inspect prints a stream's partitions and, for each consumer group, the
// lease and pending messages of every partition. It needs REDIS_URL.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// command is a subcommand of the tool.
type command struct {
	name    string
	summary string
	// flags returns the command's flag set, writing the parsed values into a
	// fresh configuration, and a function that runs the command with it.
	flags func() (*flag.FlagSet, func(ctx context.Context, env func(string) string, stdout, stderr io.Writer) int)
}

func commands() []command {
	return []command{
		{name: "demo", summary: "send and consume keyed messages, check per-key order", flags: demoCommand},
		{name: "inspect", summary: "print a stream's partitions, leases and pending messages (needs REDIS_URL)", flags: inspectCommand},
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
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `  help      print this help, or a command's flags: segmenter help COMMAND

Environment:
  REDIS_URL  the Redis server, e.g. redis://localhost:6379/0. demo starts an
             embedded in-process server when it is unset.
`)
}

// commandUsage prints the usage line and the flags of one command.
func commandUsage(w io.Writer, c command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: segmenter %s [flags]\n\n%s.\n\nFlags:\n", c.name, capitalize(c.summary))
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
func run(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
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
	if err := fs.Parse(args[1:]); err != nil {
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
	return runCmd(ctx, env, stdout, stderr)
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

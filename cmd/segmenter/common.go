package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/internal/keyspace"
)

// connFlags are the flags every operator command has: the server, the
// namespace and the output format.
type connFlags struct {
	redisURL  string
	namespace string
	json      bool
}

func (c *connFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.redisURL, "redis", "", "the Redis server's URL (default $REDIS_URL)")
	fs.StringVar(&c.namespace, "namespace", "", "the namespace (default: the only one on the server that has the stream)")
	fs.BoolVar(&c.json, "json", false, "print JSON (stable field names) instead of a table")
}

// session is an operator command's connection: a client it owns and a
// Segmenter of the namespace on it.
type session struct {
	rdb redis.UniversalClient
	seg *segmenter.Segmenter
	ns  string
}

func (s *session) close() {
	if s.seg != nil {
		_ = s.seg.Close(context.Background()) // leaves rdb open: it was passed in
	}
	_ = s.rdb.Close()
}

// client returns a client of the server named by -redis or REDIS_URL: a
// single node, a Redis Cluster (cluster=true) or Sentinel (master_name),
// as segmenter.NewRedisClient reads the URL.
func (c *connFlags) client(env func(string) string) (redis.UniversalClient, error) {
	url := c.redisURL
	if url == "" {
		url = env(envRedisURL)
	}
	if url == "" {
		return nil, usagef("no Redis server: pass -redis URL or set %s", envRedisURL)
	}
	rdb, err := segmenter.NewRedisClient(url)
	if err != nil {
		return nil, usagef("Redis URL %q: %v", url, err)
	}
	return rdb, nil
}

// addrOf names the server of rdb in messages.
func addrOf(rdb redis.UniversalClient) string {
	switch c := rdb.(type) {
	case *redis.Client:
		return c.Options().Addr
	case *redis.ClusterClient:
		return "the cluster of " + strings.Join(c.Options().Addrs, ", ")
	}
	return "the server"
}

// forEachPrimary calls f with every primary of rdb: the one node, or each
// primary of a cluster (one at a time).
func forEachPrimary(ctx context.Context, rdb redis.UniversalClient, f func(ctx context.Context, node redis.Cmdable) error) error {
	cl, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return f(ctx, rdb)
	}
	var mu sync.Mutex
	return cl.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		mu.Lock()
		defer mu.Unlock()
		return f(ctx, node)
	})
}

// open connects and picks the namespace: -namespace, else the only
// namespace on the server that has stream (any stream when stream is "").
func (c *connFlags) open(ctx context.Context, env func(string) string, stream string) (*session, error) {
	if c.namespace != "" && !validName(c.namespace) {
		return nil, usagef("-namespace %q is not a valid namespace (1 to %d characters from A-Z a-z 0-9 _ . -)", c.namespace, segmenter.MaxNameLength)
	}
	rdb, err := c.client(env)
	if err != nil {
		return nil, err
	}
	s := &session{rdb: rdb, ns: c.namespace}
	if s.ns == "" {
		if s.ns, err = onlyNamespace(ctx, rdb, stream); err != nil {
			rdb.Close()
			return nil, err
		}
	}
	s.seg, err = segmenter.NewSegmenter(&segmenter.Config{Client: rdb, Namespace: s.ns})
	if err != nil {
		rdb.Close()
		return nil, asUsage(err)
	}
	return s, nil
}

// onlyNamespace returns the one namespace on the server that has stream
// (any stream when stream is ""), or an error saying there is none or
// which ones there are.
func onlyNamespace(ctx context.Context, rdb redis.UniversalClient, stream string) (string, error) {
	found, err := namespacesWith(ctx, rdb, stream)
	if err != nil {
		return "", err
	}
	what := "streams"
	if stream != "" {
		what = fmt.Sprintf("a stream %q", stream)
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("no namespace on %s has %s", addrOf(rdb), what)
	case 1:
		return found[0], nil
	}
	return "", usagef("several namespaces have %s (%s): pass -namespace", what, strings.Join(found, ", "))
}

// requireName checks a required name flag.
func requireName(flagName, kind, v string) error {
	switch {
	case v == "":
		return usagef("-%s is required", flagName)
	case !validName(v):
		return usagef("-%s %q is not a valid %s name (1 to %d characters from A-Z a-z 0-9 _ . -)", flagName, v, kind, segmenter.MaxNameLength)
	}
	return nil
}

// sdkError classifies an error of the SDK for the exit code: bad input is
// a usage error, anything else a failure.
func sdkError(err error) error {
	if err == nil {
		return nil
	}
	return asUsage(err)
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// ms is a duration in milliseconds for JSON.
func ms(d time.Duration) int64 { return d.Milliseconds() }

// human formats a duration for a table: to the microsecond below a
// millisecond, to the millisecond below a second, to a tenth of a second
// below a minute, to the second above.
func human(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + human(-d)
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	default:
		return d.Round(time.Second).String()
	}
}

// partitionList formats partitions compactly, runs as ranges: 0-3,8,10-11.
func partitionList(ps []int) string {
	if len(ps) == 0 {
		return "-"
	}
	ps = slices.Sorted(slices.Values(ps))
	var b strings.Builder
	for i := 0; i < len(ps); {
		j := i
		for j+1 < len(ps) && ps[j+1] == ps[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(ps[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(ps[j]))
		}
		i = j + 1
	}
	return b.String()
}

// orDash returns s, or "-" when it is empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// openStdin returns the process's standard input for commands that read it
// while they do other things (demo -live): a pollable file of its own when
// the system gives one, so that closing it ends a read in progress (the
// demo stops its key reader that way), without switching the terminal's
// shared file description to non-blocking mode.
func openStdin() io.Reader {
	if f, err := os.Open("/dev/stdin"); err == nil {
		return f
	}
	return os.Stdin
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// keys returns the key space of the session's namespace.
func (s *session) keys() keyspace.Space { return keyspace.New(s.ns) }

// quietLogger drops go-redis' own log lines (a dial that failed, say): the
// command reports the error itself.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/internal/keyspace"
)

// inspectConfig configures inspect.
type inspectConfig struct {
	Stream    string
	Namespace string // "" inspects every namespace that has Stream
	RedisURL  string
}

func inspectCommand() (*flag.FlagSet, runFunc) {
	cfg := inspectConfig{}
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.StringVar(&cfg.Stream, "stream", "", "name of the stream (required)")
	fs.StringVar(&cfg.Namespace, "namespace", "", "namespace of the stream (default: every namespace that has the stream)")
	fs.StringVar(&cfg.RedisURL, "redis", "", "the Redis server's URL (default $REDIS_URL)")
	return fs, func(ctx context.Context, inv invocation) int {
		if cfg.RedisURL == "" {
			cfg.RedisURL = inv.env(envRedisURL)
		}
		return exitCode(inv.stderr, "inspect", inspect(ctx, cfg, inv.stdout))
	}
}

// validName reports whether s is a valid segmenter name (namespace, stream,
// group): 1 to segmenter.MaxNameLength characters from [A-Za-z0-9_.-].
func validName(s string) bool {
	if s == "" || len(s) > segmenter.MaxNameLength {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// inspect prints the partitions of cfg.Stream and, for each of its groups,
// the lease and pending messages of every partition.
func inspect(ctx context.Context, cfg inspectConfig, out io.Writer) error {
	switch {
	case cfg.RedisURL == "":
		return usagef("%s is not set: inspect needs the Redis server to look at", envRedisURL)
	case cfg.Stream == "":
		return usagef("-stream is required")
	case !validName(cfg.Stream):
		return usagef("-stream %q is not a valid stream name (1 to %d characters from A-Z a-z 0-9 _ . -)", cfg.Stream, segmenter.MaxNameLength)
	case cfg.Namespace != "" && !validName(cfg.Namespace):
		return usagef("-namespace %q is not a valid namespace (1 to %d characters from A-Z a-z 0-9 _ . -)", cfg.Namespace, segmenter.MaxNameLength)
	}
	rdb, err := segmenter.NewRedisClient(cfg.RedisURL)
	if err != nil {
		return usagef("%s: %v", envRedisURL, err)
	}
	defer rdb.Close()

	namespaces := []string{cfg.Namespace}
	if cfg.Namespace == "" {
		namespaces, err = namespacesWith(ctx, rdb, cfg.Stream)
		if err != nil {
			return err
		}
		if len(namespaces) == 0 {
			return fmt.Errorf("no namespace on %s has a stream %q", addrOf(rdb), cfg.Stream)
		}
	}
	for i, ns := range namespaces {
		if i > 0 {
			fmt.Fprintln(out)
		}
		if err := inspectStream(ctx, rdb, keyspace.New(ns), cfg.Stream, out); err != nil {
			return err
		}
	}
	return nil
}

// namespacesWith returns, sorted, the namespaces whose stream metadata hash
// has stream (every namespace with a stream when stream is "").
func namespacesWith(ctx context.Context, rdb redis.UniversalClient, stream string) ([]string, error) {
	// Every namespace N has the hash keyspace.New(N).Streams(); split that
	// name around N to match and parse it.
	const mark = "\x00"
	prefix, suffix, _ := strings.Cut(keyspace.New(mark).Streams(), mark)
	var found []string
	err := forEachPrimary(ctx, rdb, func(ctx context.Context, node redis.Cmdable) error {
		iter := node.ScanType(ctx, 0, prefix+"*"+suffix, 1000, "hash").Iterator()
		for iter.Next(ctx) {
			key := iter.Val()
			ns := strings.TrimSuffix(strings.TrimPrefix(key, prefix), suffix)
			if !validName(ns) || keyspace.New(ns).Streams() != key {
				continue // not ours
			}
			if stream == "" {
				found = append(found, ns)
				continue
			}
			ok, err := node.HExists(ctx, key, stream).Result()
			if err != nil {
				return fmt.Errorf("read %s: %w", key, err)
			}
			if ok {
				found = append(found, ns)
			}
		}
		if err := iter.Err(); err != nil {
			return fmt.Errorf("scan for namespaces: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(found)
	return found, nil
}

// streamMeta is a stream's metadata as stored in the namespace's streams
// hash: "v1|partitions|maxlen|partitioner" (see internal/keyspace).
type streamMeta struct {
	partitions  int
	maxLen      int64
	partitioner string
}

func parseStreamMeta(raw string) (streamMeta, error) {
	f := strings.Split(raw, "|")
	if len(f) != 4 || f[0] != "v1" {
		return streamMeta{}, fmt.Errorf("unknown stream metadata format %q", raw)
	}
	p, err1 := strconv.Atoi(f[1])
	n, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil || p < 1 || n < 0 {
		return streamMeta{}, fmt.Errorf("unreadable stream metadata %q", raw)
	}
	return streamMeta{partitions: p, maxLen: n, partitioner: f[3]}, nil
}

// leaseState is a lease hash: o owner ("" when released), e epoch, x expiry
// in ms of server time.
type leaseState struct {
	exists bool
	owner  string
	epoch  string
	expiry int64
}

func inspectStream(ctx context.Context, rdb redis.UniversalClient, ks keyspace.Space, stream string, out io.Writer) error {
	raw, err := rdb.HGet(ctx, ks.Streams(), stream).Result()
	if errors.Is(err, redis.Nil) {
		return fmt.Errorf("stream %q not found in namespace %q", stream, ks.Namespace())
	}
	if err != nil {
		return fmt.Errorf("read stream %q: %w", stream, err)
	}
	meta, err := parseStreamMeta(raw)
	if err != nil {
		return fmt.Errorf("stream %q in namespace %q: %w", stream, ks.Namespace(), err)
	}
	now, err := rdb.Time(ctx).Result()
	if err != nil {
		return fmt.Errorf("read server time: %w", err)
	}
	registered, err := rdb.SMembers(ctx, ks.Groups(stream)).Result()
	if err != nil {
		return fmt.Errorf("read groups of stream %q: %w", stream, err)
	}

	// One round trip for the partitions: length and groups of each.
	pipe := rdb.Pipeline()
	lens := make([]*redis.IntCmd, meta.partitions)
	infos := make([]*redis.XInfoGroupsCmd, meta.partitions)
	for p := range meta.partitions {
		key := ks.Partition(stream, p)
		lens[p] = pipe.XLen(ctx, key)
		infos[p] = pipe.XInfoGroups(ctx, key)
	}
	_, _ = pipe.Exec(ctx) // errors checked one by one
	groupInfo := make([]map[string]redis.XInfoGroup, meta.partitions)
	groupSet := make(map[string]bool)
	for _, g := range registered {
		groupSet[g] = true
	}
	for p := range meta.partitions {
		if err := lens[p].Err(); err != nil {
			return fmt.Errorf("partition %d: XLEN: %w", p, err)
		}
		groupInfo[p] = make(map[string]redis.XInfoGroup)
		gs, err := infos[p].Result()
		if err != nil {
			if lens[p].Val() == 0 && redis.HasErrorPrefix(err, "no such key") { // HasErrorPrefix drops "ERR "
				continue // the partition's stream key does not exist yet
			}
			return fmt.Errorf("partition %d: XINFO GROUPS: %w", p, err)
		}
		for _, g := range gs {
			groupInfo[p][g.Name] = g
			groupSet[g.Name] = true
		}
	}
	groups := make([]string, 0, len(groupSet))
	for g := range groupSet {
		groups = append(groups, g)
	}
	slices.Sort(groups)

	// One round trip for the leases of every group on every partition.
	pipe = rdb.Pipeline()
	leaseCmds := make([][]*redis.SliceCmd, len(groups))
	for i, g := range groups {
		leaseCmds[i] = make([]*redis.SliceCmd, meta.partitions)
		for p := range meta.partitions {
			leaseCmds[i][p] = pipe.HMGet(ctx, ks.Lease(stream, p, g), "o", "e", "x")
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("read leases: %w", err)
	}

	retention := "unbounded"
	if meta.maxLen > 0 {
		retention = fmt.Sprintf("~%d entries per partition", meta.maxLen)
	}
	fmt.Fprintf(out, "namespace %s, stream %s: %d partitions, retention %s, partitioner %s\n",
		ks.Namespace(), stream, meta.partitions, retention, meta.partitioner)
	fmt.Fprintf(out, "server time %s\n\n", now.UTC().Format(time.RFC3339Nano))

	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PARTITION\tLENGTH\tKEY")
	var total int64
	for p := range meta.partitions {
		total += lens[p].Val()
		fmt.Fprintf(tw, "%d\t%d\t%s\n", p, lens[p].Val(), ks.Partition(stream, p))
	}
	fmt.Fprintf(tw, "total\t%d\n", total)
	if err := tw.Flush(); err != nil {
		return err
	}

	if len(groups) == 0 {
		fmt.Fprintln(out, "\nno consumer groups")
		return nil
	}
	nowMs := now.UnixMilli()
	for i, g := range groups {
		fmt.Fprintf(out, "\ngroup %s\n", g)
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PARTITION\tHOLDER\tEPOCH\tLEASE\tPENDING\tLAG")
		var pending int64
		for p := range meta.partitions {
			l := parseLease(leaseCmds[i][p].Val())
			holder, epoch, state := "-", "-", "never granted"
			if l.exists {
				epoch = l.epoch
				switch {
				case l.owner == "":
					state = "free"
				case l.expiry > nowMs:
					holder, state = l.owner, "expires in "+msDuration(l.expiry-nowMs)
				default:
					holder, state = l.owner, "expired "+msDuration(nowMs-l.expiry)+" ago"
				}
			}
			pend, lag := "no group", "-"
			if gi, ok := groupInfo[p][g]; ok {
				pending += gi.Pending
				pend = strconv.FormatInt(gi.Pending, 10)
				lag = "?"
				if gi.Lag >= 0 {
					lag = strconv.FormatInt(gi.Lag, 10)
				}
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", p, holder, epoch, state, pend, lag)
		}
		fmt.Fprintf(tw, "total\t\t\t\t%d\n", pending)
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// parseLease reads the reply of HMGET lease o e x.
func parseLease(vals []any) leaseState {
	var l leaseState
	str := func(i int) (string, bool) {
		if i >= len(vals) || vals[i] == nil {
			return "", false
		}
		s, ok := vals[i].(string)
		return s, ok
	}
	var ok bool
	l.owner, ok = str(0)
	l.exists = ok
	if e, ok := str(1); ok {
		l.epoch, l.exists = e, true
	}
	if x, ok := str(2); ok {
		l.expiry, _ = strconv.ParseInt(x, 10, 64)
	}
	return l
}

// msDuration formats a number of milliseconds to a tenth of a second.
func msDuration(ms int64) string {
	return (time.Duration(ms) * time.Millisecond).Round(100 * time.Millisecond).String()
}

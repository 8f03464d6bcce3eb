package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/internal/keyspace"
)

// tailBlock bounds one blocking XREAD of tail -follow: a cancelled command
// (Ctrl-C) is noticed within it.
const tailBlock = 500 * time.Millisecond

// tailClusterPoll is how often tail -follow looks for new entries on a
// Redis Cluster (see readEach).
const tailClusterPoll = 100 * time.Millisecond

// entryJSON is one line of tail -json: an entry of a partition.
type entryJSON struct {
	Partition  int               `json:"partition"`
	ID         string            `json:"id"`
	Key        string            `json:"key"`
	Data       *string           `json:"data"`                  // null when not valid UTF-8: see data_base64
	DataBase64 []byte            `json:"data_base64,omitempty"` // the data when it is not valid UTF-8
	Metadata   map[string]string `json:"metadata"`
	// RedrivenFor names the group a re-driven dead letter is meant for.
	RedrivenFor string `json:"redriven_for,omitempty"`
	// Poison is why the entry is not one segmenter wrote; its raw fields
	// are then in metadata.
	Poison string `json:"poison,omitempty"`
}

// tailEntry is an entry read by tail: its fields in stream order.
type tailEntry struct {
	partition int
	id        string
	fields    []string
}

func tailCommand() (*flag.FlagSet, runFunc) {
	var conn connFlags
	var stream string
	partition, n := -1, 10
	var follow bool
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	conn.register(fs)
	fs.StringVar(&stream, "stream", "", "the stream (required)")
	fs.IntVar(&partition, "partition", -1, "only this partition (default: every partition)")
	fs.IntVar(&n, "n", 10, "print the last N entries of each partition (0: none, with -follow only new ones)")
	fs.BoolVar(&follow, "follow", false, "then wait for new entries and print them as they come, until interrupted")
	return fs, func(ctx context.Context, inv invocation) int {
		return exitCode(inv.stderr, "tail", tail(ctx, inv, conn, stream, partition, n, follow))
	}
}

func tail(ctx context.Context, inv invocation, conn connFlags, stream string, partition, n int, follow bool) error {
	if err := requireName("stream", "stream", stream); err != nil {
		return err
	}
	if n < 0 {
		return usagef("-n is %d, must be 0 or more", n)
	}
	s, err := conn.open(ctx, inv.env, stream)
	if err != nil {
		return err
	}
	defer s.close()
	infos, err := s.seg.Streams(ctx)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(infos, func(st segmenter.StreamInfo) bool { return st.Name == stream })
	if i < 0 {
		return fmt.Errorf("%w: %q in namespace %q", segmenter.ErrStreamNotFound, stream, s.ns)
	}
	parts := make([]int, infos[i].Partitions)
	for p := range parts {
		parts[p] = p
	}
	if partition >= 0 {
		if partition >= len(parts) {
			return usagef("-partition %d: stream %q has partitions 0 to %d", partition, stream, len(parts)-1)
		}
		parts = []int{partition}
	}
	keys := s.keys()
	// The last n entries of each partition, and where each one ends.
	after := make(map[int]string, len(parts))
	pipe := s.rdb.Pipeline()
	lasts := make([]*redis.Cmd, len(parts))
	for i, p := range parts {
		lasts[i] = pipe.Do(ctx, "XREVRANGE", keys.Partition(stream, p), "+", "-", "COUNT", max(n, 1))
	}
	_, _ = pipe.Exec(ctx)
	var entries []tailEntry
	for i, p := range parts {
		got, err := parseEntries(lasts[i].Val(), lasts[i].Err())
		if err != nil {
			return fmt.Errorf("partition %d: XREVRANGE: %w", p, err)
		}
		after[p] = "0-0"
		if len(got) > 0 {
			after[p] = got[0].id
		}
		if n == 0 {
			continue
		}
		for _, e := range got {
			e.partition = p
			entries = append(entries, e)
		}
	}
	// Oldest first across partitions: by the time in the ID, then partition.
	slices.SortFunc(entries, func(a, b tailEntry) int {
		return cmp.Or(cmp.Compare(idMillis(a.id), idMillis(b.id)), cmp.Compare(a.partition, b.partition), cmp.Compare(idSeq(a.id), idSeq(b.id)))
	})
	w := newEntryWriter(inv.stdout, conn.json, stream)
	for _, e := range entries {
		if err := w.write(e); err != nil {
			return err
		}
	}
	if !follow {
		return nil
	}
	partOf := make(map[string]int, len(parts))
	for _, p := range parts {
		partOf[keys.Partition(stream, p)] = p
	}
	_, cluster := s.rdb.(*redis.ClusterClient)
	for ctx.Err() == nil {
		var res []redis.XStream
		var err error
		if cluster {
			res, err = readEach(ctx, s.rdb, keys, stream, after)
		} else {
			args := &redis.XReadArgs{Block: tailBlock, Count: 100}
			for _, p := range slices.Sorted(maps.Keys(after)) {
				args.Streams = append(args.Streams, keys.Partition(stream, p))
			}
			for _, p := range slices.Sorted(maps.Keys(after)) {
				args.Streams = append(args.Streams, after[p])
			}
			res, err = s.rdb.XRead(ctx, args).Result()
		}
		switch {
		case errors.Is(err, redis.Nil):
			continue
		case err != nil && ctx.Err() != nil:
			return nil // interrupted: the normal end of -follow
		case err != nil:
			return fmt.Errorf("XREAD: %w", err)
		}
		for _, xs := range res {
			p, ok := partOf[xs.Stream]
			if !ok {
				continue
			}
			for _, x := range xs.Messages {
				e := tailEntry{partition: p, id: x.ID, fields: orderedFields(x)}
				if err := w.write(e); err != nil {
					return err
				}
				after[p] = x.ID
			}
		}
	}
	return nil
}

// orderedFields returns the fields of an XREAD entry. go-redis gives them
// as a map: the order is lost, except that the re-drive marker, which is
// always first, is put first again.
func orderedFields(x redis.XMessage) []string {
	names := slices.Sorted(maps.Keys(x.Values))
	out := make([]string, 0, 2*len(names))
	if v, ok := x.Values["seg.to"]; ok {
		out = append(out, "seg.to", fmt.Sprint(v))
	}
	for _, name := range names {
		if name != "seg.to" {
			out = append(out, name, fmt.Sprint(x.Values[name]))
		}
	}
	return out
}

// parseEntries reads an XRANGE/XREVRANGE reply with the fields in order,
// newest first as XREVRANGE gives them.
func parseEntries(v any, err error) ([]tailEntry, error) {
	if err != nil {
		if errors.Is(err, redis.Nil) {
			return nil, nil
		}
		return nil, err
	}
	raw, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("unexpected reply %T", v)
	}
	out := make([]tailEntry, 0, len(raw))
	for _, r := range raw {
		pair, ok := r.([]any)
		if !ok || len(pair) != 2 {
			return nil, fmt.Errorf("unexpected entry %v", r)
		}
		id, _ := pair[0].(string)
		fv, _ := pair[1].([]any)
		fields := make([]string, len(fv))
		for i, f := range fv {
			fields[i] = fmt.Sprint(f)
		}
		out = append(out, tailEntry{id: id, fields: fields})
	}
	return out, nil
}

func idMillis(id string) uint64 {
	a, _, _ := strings.Cut(id, "-")
	n, _ := strconv.ParseUint(a, 10, 64)
	return n
}

func idSeq(id string) uint64 {
	_, b, _ := strings.Cut(id, "-")
	n, _ := strconv.ParseUint(b, 10, 64)
	return n
}

// entryWriter prints entries as lines for people or JSON objects, one per
// line.
type entryWriter struct {
	out    io.Writer
	json   bool
	stream string
	enc    *json.Encoder
}

func newEntryWriter(out io.Writer, asJSON bool, stream string) *entryWriter {
	return &entryWriter{out: out, json: asJSON, stream: stream, enc: json.NewEncoder(out)}
}

func (w *entryWriter) write(e tailEntry) error {
	m, redriven := segmenter.DecodeEntry(w.stream, e.partition, e.id, e.fields)
	poison := ""
	if perr := segmenter.Poison(m); perr != nil {
		poison = m.PoisonReason
	}
	if w.json {
		j := entryJSON{Partition: e.partition, ID: e.id, Key: m.PartitionKey, Metadata: m.Metadata,
			RedrivenFor: redriven, Poison: poison}
		if j.Metadata == nil {
			j.Metadata = map[string]string{}
		}
		if utf8.Valid(m.Data) {
			d := string(m.Data)
			j.Data = &d
		} else {
			j.DataBase64 = m.Data
		}
		return w.enc.Encode(j)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s", e.partition, e.id)
	if poison != "" {
		fmt.Fprintf(&b, " POISON (%s):", poison)
		for _, name := range slices.Sorted(maps.Keys(m.Metadata)) {
			fmt.Fprintf(&b, " %s=%s", name, printable(m.Metadata[name]))
		}
	} else {
		fmt.Fprintf(&b, " %s: %s", printable(m.PartitionKey), printable(string(m.Data)))
		if len(m.Metadata) > 0 {
			b.WriteString(" {")
			for i, name := range slices.Sorted(maps.Keys(m.Metadata)) {
				if i > 0 {
					b.WriteString(", ")
				}
				fmt.Fprintf(&b, "%s=%s", name, printable(m.Metadata[name]))
			}
			b.WriteString("}")
		}
	}
	if redriven != "" {
		fmt.Fprintf(&b, " (re-driven for group %s)", redriven)
	}
	b.WriteByte('\n')
	_, err := io.WriteString(w.out, b.String())
	return err
}

// printable returns s as is when it is printable UTF-8 on one line, else
// quoted with Go escapes.
func printable(s string) string {
	if !utf8.ValidString(s) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// readEach reads what follows after[p] in each partition p, on a Redis
// Cluster, where one XREAD cannot span the partitions' slots: one XREAD per
// partition, all in one pipeline; when none has news, it waits
// tailClusterPoll and returns redis.Nil.
func readEach(ctx context.Context, rdb redis.UniversalClient, keys keyspace.Space, stream string, after map[int]string) ([]redis.XStream, error) {
	pipe := rdb.Pipeline()
	cmds := make([]*redis.XStreamSliceCmd, 0, len(after))
	for _, p := range slices.Sorted(maps.Keys(after)) {
		cmds = append(cmds, pipe.XRead(ctx, &redis.XReadArgs{Streams: []string{keys.Partition(stream, p), after[p]}, Count: 100, Block: -1}))
	}
	_, _ = pipe.Exec(ctx)
	var out []redis.XStream
	for _, c := range cmds {
		res, err := c.Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, res...)
	}
	if len(out) > 0 {
		return out, nil
	}
	t := time.NewTimer(tailClusterPoll)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
	}
	return nil, redis.Nil
}

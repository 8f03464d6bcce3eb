package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/segmenter/segmenter/contracts"
)

// sendChunk bounds the messages of one SendBatch of send -lines.
const sendChunk = 500

// sendJSON is the output of send -json.
type sendJSON struct {
	Namespace string     `json:"namespace"`
	Stream    string     `json:"stream"`
	Sent      []sentJSON `json:"sent"`
}

type sentJSON struct {
	Key       string `json:"key"`
	Partition int    `json:"partition"`
	ID        string `json:"id"`
}

// optionalString is a string flag that knows whether it was given.
type optionalString struct {
	value string
	set   bool
}

func (o *optionalString) String() string { return o.value }

func (o *optionalString) Set(v string) error { o.value, o.set = v, true; return nil }

// metaFlags collects -meta NAME=VALUE flags.
type metaFlags map[string]string

func (m metaFlags) String() string { return "" }

func (m metaFlags) Set(v string) error {
	name, val, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return fmt.Errorf("want NAME=VALUE, got %q", v)
	}
	m[name] = val
	return nil
}

func sendCommand() (*flag.FlagSet, runFunc) {
	var conn connFlags
	var stream, key string
	var data optionalString
	var lines bool
	meta := metaFlags{}
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	conn.register(fs)
	fs.StringVar(&stream, "stream", "", "the stream (required)")
	fs.StringVar(&key, "key", "", "the partition key (required)")
	fs.Var(&data, "data", "the message's data (default: read from stdin)")
	fs.BoolVar(&lines, "lines", false, "send each line of stdin as one message (in order, all with -key)")
	fs.Var(meta, "meta", "a metadata entry NAME=VALUE (repeatable)")
	return fs, func(ctx context.Context, inv invocation) int {
		return exitCode(inv.stderr, "send", send(ctx, inv, conn, stream, key, data, lines, meta))
	}
}

func send(ctx context.Context, inv invocation, conn connFlags, stream, key string, data optionalString, lines bool, meta metaFlags) error {
	if err := requireName("stream", "stream", stream); err != nil {
		return err
	}
	switch {
	case key == "":
		return usagef("-key is required")
	case data.set && lines:
		return usagef("-data and -lines exclude each other: -lines reads stdin")
	}
	s, err := conn.open(ctx, inv.env, stream)
	if err != nil {
		return err
	}
	defer s.close()
	st, err := s.seg.GetStream(ctx, stream)
	if err != nil {
		return sdkError(err)
	}
	msg := func(d []byte) *contracts.PMessage {
		m := &contracts.PMessage{PartitionKey: key, Data: d}
		if len(meta) > 0 {
			m.Metadata = meta
		}
		return m
	}
	var msgs []*contracts.PMessage
	out := sendJSON{Namespace: s.ns, Stream: stream, Sent: []sentJSON{}}
	flush := func() error {
		ids, err := st.SendBatch(ctx, msgs)
		for _, id := range ids {
			if id != "" {
				out.Sent = append(out.Sent, sentJSON{Key: key, Partition: st.PartitionOf(key), ID: id})
			}
		}
		msgs = msgs[:0]
		return sdkError(err)
	}
	switch {
	case data.set:
		msgs = append(msgs, msg([]byte(data.value)))
	case lines:
		sc := bufio.NewScanner(inv.stdin)
		sc.Buffer(make([]byte, 64*1024), 64<<20)
		for sc.Scan() {
			msgs = append(msgs, msg([]byte(sc.Text())))
			if len(msgs) == sendChunk {
				if err := flush(); err != nil {
					return errors.Join(err, report(inv.stdout, conn.json, out))
				}
			}
		}
		if err := sc.Err(); err != nil {
			return errors.Join(fmt.Errorf("read stdin: %w", err), flush(), report(inv.stdout, conn.json, out))
		}
	default:
		d, err := io.ReadAll(inv.stdin)
		if err != nil {
			return fmt.Errorf("read stdin: %w", err)
		}
		msgs = append(msgs, msg(d))
	}
	if len(msgs) > 0 {
		if err := flush(); err != nil {
			return errors.Join(err, report(inv.stdout, conn.json, out))
		}
	}
	return report(inv.stdout, conn.json, out)
}

// report prints what send sent.
func report(w io.Writer, asJSON bool, out sendJSON) error {
	if asJSON {
		return writeJSON(w, out)
	}
	if len(out.Sent) == 0 {
		_, err := fmt.Fprintln(w, "nothing sent")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM\tKEY\tPARTITION\tID")
	for _, m := range out.Sent {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", out.Stream, m.Key, m.Partition, m.ID)
	}
	return tw.Flush()
}

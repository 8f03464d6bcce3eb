package main

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/segmenter/segmenter"
)

// streamsJSON is the output of streams -json.
type streamsJSON struct {
	Streams []streamJSON `json:"streams"`
}

type streamJSON struct {
	Namespace          string   `json:"namespace"`
	Name               string   `json:"name"`
	Partitions         int      `json:"partitions"`
	MaxLenPerPartition int64    `json:"max_len_per_partition"` // 0: unbounded
	Retention          string   `json:"retention"`
	Partitioner        string   `json:"partitioner"`
	Length             int64    `json:"length"`
	Groups             []string `json:"groups"`
}

func streamsCommand() (*flag.FlagSet, runFunc) {
	var conn connFlags
	fs := flag.NewFlagSet("streams", flag.ContinueOnError)
	conn.register(fs)
	return fs, func(ctx context.Context, inv invocation) int {
		return exitCode(inv.stderr, "streams", listStreams(ctx, inv, conn))
	}
}

func listStreams(ctx context.Context, inv invocation, conn connFlags) error {
	if conn.namespace != "" && !validName(conn.namespace) {
		return usagef("-namespace %q is not a valid namespace (1 to %d characters from A-Z a-z 0-9 _ . -)", conn.namespace, segmenter.MaxNameLength)
	}
	rdb, err := conn.client(inv.env)
	if err != nil {
		return err
	}
	defer rdb.Close()
	namespaces := []string{conn.namespace}
	if conn.namespace == "" {
		if namespaces, err = namespacesWith(ctx, rdb, ""); err != nil {
			return err
		}
	}
	out := streamsJSON{Streams: []streamJSON{}}
	for _, ns := range namespaces {
		seg, err := segmenter.NewSegmenter(&segmenter.Config{Client: rdb, Namespace: ns})
		if err != nil {
			return asUsage(err)
		}
		list, err := seg.Streams(ctx)
		_ = seg.Close(ctx)
		if err != nil {
			return err
		}
		for _, st := range list {
			out.Streams = append(out.Streams, streamJSON{Namespace: ns, Name: st.Name, Partitions: st.Partitions,
				MaxLenPerPartition: st.MaxLenPerPartition, Retention: st.Retention.String(), Partitioner: st.Partitioner,
				Length: st.Length, Groups: st.Groups})
		}
	}
	if conn.json {
		return writeJSON(inv.stdout, out)
	}
	if len(out.Streams) == 0 {
		where := "the server"
		if conn.namespace != "" {
			where = "namespace " + conn.namespace
		}
		_, err := fmt.Fprintf(inv.stdout, "no streams in %s\n", where)
		return err
	}
	tw := tabwriter.NewWriter(inv.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tSTREAM\tPARTITIONS\tRETENTION\tPARTITIONER\tLENGTH\tGROUPS")
	for _, st := range out.Streams {
		retention := "unbounded"
		if st.MaxLenPerPartition > 0 {
			retention = fmt.Sprintf("~%d/partition (%s)", st.MaxLenPerPartition, st.Retention)
		}
		groups := "-"
		if len(st.Groups) > 0 {
			groups = fmt.Sprint(st.Groups)
			groups = groups[1 : len(groups)-1]
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%s\n", st.Namespace, st.Name, st.Partitions, retention, st.Partitioner, st.Length, groups)
	}
	return tw.Flush()
}

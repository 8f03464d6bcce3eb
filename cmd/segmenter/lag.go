package main

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/segmenter/segmenter"
)

// lagJSON is the output of lag -json.
type lagJSON struct {
	Namespace string         `json:"namespace"`
	Groups    []groupLagJSON `json:"groups"`
}

type groupLagJSON struct {
	Stream               string             `json:"stream"`
	Group                string             `json:"group"`
	Lag                  int64              `json:"lag"`
	LagUnknownPartitions int                `json:"lag_unknown_partitions"`
	Pending              int64              `json:"pending"`
	WorstPartition       int                `json:"worst_partition"` // -1 when none
	WorstLag             *int64             `json:"worst_partition_lag"`
	WorstPending         int64              `json:"worst_partition_pending"`
	Partitions           []partitionLagJSON `json:"partitions"`
}

type partitionLagJSON struct {
	Partition int    `json:"partition"`
	Lag       *int64 `json:"lag"` // null when Redis cannot tell
	Pending   int64  `json:"pending"`
}

func lagPtr(n int64) *int64 {
	if n == segmenter.LagUnknown {
		return nil
	}
	return &n
}

func lagCommand() (*flag.FlagSet, runFunc) {
	var conn connFlags
	var stream, group string
	fs := flag.NewFlagSet("lag", flag.ContinueOnError)
	conn.register(fs)
	fs.StringVar(&stream, "stream", "", "only this stream (default: every stream of the namespace)")
	fs.StringVar(&group, "group", "", "only this group")
	return fs, func(ctx context.Context, inv invocation) int {
		return exitCode(inv.stderr, "lag", lag(ctx, inv, conn, stream, group))
	}
}

func lag(ctx context.Context, inv invocation, conn connFlags, stream, group string) error {
	for _, f := range [][3]string{{"stream", "stream", stream}, {"group", "group", group}} {
		if f[2] != "" {
			if err := requireName(f[0], f[1], f[2]); err != nil {
				return err
			}
		}
	}
	s, err := conn.open(ctx, inv.env, stream)
	if err != nil {
		return err
	}
	defer s.close()
	streams := []string{stream}
	if stream == "" {
		all, err := s.seg.Streams(ctx)
		if err != nil {
			return sdkError(err)
		}
		streams = streams[:0]
		for _, st := range all {
			streams = append(streams, st.Name)
		}
	}
	var rows []segmenter.GroupLag
	for _, st := range streams {
		lags, err := s.seg.Lag(ctx, st)
		if err != nil {
			return sdkError(err)
		}
		for _, g := range lags {
			if group == "" || g.Group == group {
				rows = append(rows, g)
			}
		}
	}
	if group != "" && len(rows) == 0 {
		return fmt.Errorf("no group %q in namespace %q: %w", group, s.ns, segmenter.ErrGroupNotFound)
	}
	if conn.json {
		out := lagJSON{Namespace: s.ns, Groups: []groupLagJSON{}}
		for _, g := range rows {
			gj := groupLagJSON{Stream: g.Stream, Group: g.Group, Lag: g.Lag, LagUnknownPartitions: g.LagUnknown,
				Pending: g.Pending, WorstPartition: g.Worst, Partitions: []partitionLagJSON{}}
			for _, p := range g.Partitions {
				gj.Partitions = append(gj.Partitions, partitionLagJSON{Partition: p.Partition, Lag: lagPtr(p.Lag), Pending: p.Pending})
				if p.Partition == g.Worst {
					gj.WorstLag, gj.WorstPending = lagPtr(p.Lag), p.Pending
				}
			}
			out.Groups = append(out.Groups, gj)
		}
		return writeJSON(inv.stdout, out)
	}
	if len(rows) == 0 {
		_, err := fmt.Fprintf(inv.stdout, "namespace %s: no consumer groups\n", s.ns)
		return err
	}
	tw := tabwriter.NewWriter(inv.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM\tGROUP\tLAG\tPENDING\tWORST-PARTITION\tWORST-LAG\tWORST-PENDING")
	for _, g := range rows {
		lag := fmt.Sprint(g.Lag)
		if g.LagUnknown > 0 {
			lag += "+?"
		}
		worst, wlag, wpend := "-", "-", "-"
		for _, p := range g.Partitions {
			if p.Partition == g.Worst {
				worst, wlag, wpend = fmt.Sprint(p.Partition), "?", fmt.Sprint(p.Pending)
				if p.Lag != segmenter.LagUnknown {
					wlag = fmt.Sprint(p.Lag)
				}
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", g.Stream, g.Group, lag, g.Pending, worst, wlag, wpend)
	}
	return tw.Flush()
}

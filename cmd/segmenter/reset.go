package main

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/segmenter/segmenter"
)

// resetJSON is the output of reset-group -json.
type resetJSON struct {
	Namespace  string               `json:"namespace"`
	Stream     string               `json:"stream"`
	Group      string               `json:"group"`
	To         string               `json:"to"`
	DryRun     bool                 `json:"dry_run"`
	Partitions []partitionResetJSON `json:"partitions"`
}

type partitionResetJSON struct {
	Partition int    `json:"partition"`
	From      string `json:"from"` // the last-delivered ID before
	To        string `json:"to"`   // and after: the group reads on after it
	Cleared   int64  `json:"cleared_pending"`
}

func resetCommand() (*flag.FlagSet, runFunc) {
	var conn connFlags
	var stream, group, to string
	var force, dryRun bool
	fs := flag.NewFlagSet("reset-group", flag.ContinueOnError)
	conn.register(fs)
	fs.StringVar(&stream, "stream", "", "the stream (required)")
	fs.StringVar(&group, "group", "", "the group to move (required)")
	fs.StringVar(&to, "to", "", `where to: "earliest" (read everything again), "latest" (skip everything sent so far) or an entry ID (read what came after it) (required)`)
	fs.BoolVar(&force, "force", false, "reset even while the group has live members")
	fs.BoolVar(&dryRun, "dry-run", false, "print what would move, change nothing")
	return fs, func(ctx context.Context, inv invocation) int {
		return exitCode(inv.stderr, "reset-group", resetGroup(ctx, inv, conn, stream, group, to, force, dryRun))
	}
}

func resetGroup(ctx context.Context, inv invocation, conn connFlags, stream, group, to string, force, dryRun bool) error {
	if err := requireName("stream", "stream", stream); err != nil {
		return err
	}
	if err := requireName("group", "group", group); err != nil {
		return err
	}
	if to == "" {
		return usagef("-to is required: earliest, latest or an entry ID")
	}
	if to != segmenter.ResetEarliest && to != segmenter.ResetLatest && !validID(to) {
		return usagef("-to %q: want earliest, latest or an entry ID (ms-seq)", to)
	}
	s, err := conn.open(ctx, inv.env, stream)
	if err != nil {
		return err
	}
	defer s.close()
	var opts []segmenter.ResetOption
	if force {
		opts = append(opts, segmenter.ResetForce())
	}
	if dryRun {
		opts = append(opts, segmenter.ResetDryRun())
	}
	res, err := s.seg.ResetGroup(ctx, stream, group, to, opts...)
	if err != nil && len(res) == 0 {
		return sdkError(err)
	}
	out := resetJSON{Namespace: s.ns, Stream: stream, Group: group, To: to, DryRun: dryRun, Partitions: []partitionResetJSON{}}
	for _, r := range res {
		out.Partitions = append(out.Partitions, partitionResetJSON{Partition: r.Partition, From: r.From, To: r.To, Cleared: r.Cleared})
	}
	if conn.json {
		if werr := writeJSON(inv.stdout, out); werr != nil {
			return werr
		}
		return sdkError(err)
	}
	verb := "reset"
	if dryRun {
		verb = "would reset (dry run)"
	}
	fmt.Fprintf(inv.stdout, "group %s of stream %s %s to %s:\n\n", group, stream, verb, to)
	tw := tabwriter.NewWriter(inv.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PARTITION\tFROM\tTO\tCLEARED-PENDING")
	for _, r := range out.Partitions {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\n", r.Partition, r.From, r.To, r.Cleared)
	}
	if werr := tw.Flush(); werr != nil {
		return werr
	}
	return sdkError(err)
}

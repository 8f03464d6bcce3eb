package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/segmenter/segmenter"
)

// describeJSON is the output of describe -json.
type describeJSON struct {
	Namespace  string      `json:"namespace"`
	Stream     string      `json:"stream"`
	ServerTime time.Time   `json:"server_time"`
	Groups     []groupJSON `json:"groups"`
}

type groupJSON struct {
	Group                string          `json:"group"`
	Generation           int64           `json:"generation"`
	Lag                  int64           `json:"lag"`
	LagUnknownPartitions int             `json:"lag_unknown_partitions"`
	Pending              int64           `json:"pending"`
	DeadLetters          int64           `json:"dead_letters"`
	Members              []memberJSON    `json:"members"`
	Partitions           []partitionJSON `json:"partitions"`
}

type memberJSON struct {
	ID               string `json:"id"`
	Live             bool   `json:"live"`
	HeartbeatAgeMs   *int64 `json:"heartbeat_age_ms"` // null when unknown
	SessionExpiresMs int64  `json:"session_expires_in_ms"`
	Assigned         []int  `json:"assigned"`
	Leases           []int  `json:"leases"`
}

type partitionJSON struct {
	Partition               int    `json:"partition"`
	Length                  int64  `json:"length"`
	LogEnd                  string `json:"log_end"`
	LastDelivered           string `json:"last_delivered"`
	Lag                     *int64 `json:"lag"` // null when Redis cannot tell
	Pending                 int64  `json:"pending"`
	OldestPendingID         string `json:"oldest_pending_id,omitempty"`
	OldestPendingAgeMs      int64  `json:"oldest_pending_age_ms"`
	OldestPendingIdleMs     int64  `json:"oldest_pending_idle_ms"`
	OldestPendingDeliveries int64  `json:"oldest_pending_deliveries"`
	Owner                   string `json:"owner"`
	Epoch                   int64  `json:"epoch"`
	LeaseHeld               bool   `json:"lease_held"`
	LeaseExpiresInMs        int64  `json:"lease_expires_in_ms"`
	AssignedTo              string `json:"assigned_to"`
	DeadLetters             int64  `json:"dead_letters"`
	GroupMissing            bool   `json:"group_missing"`
}

func describeCommand() (*flag.FlagSet, runFunc) {
	var conn connFlags
	var stream, group string
	fs := flag.NewFlagSet("describe", flag.ContinueOnError)
	conn.register(fs)
	fs.StringVar(&stream, "stream", "", "the stream (required)")
	fs.StringVar(&group, "group", "", "only this group (default: every group of the stream)")
	return fs, func(ctx context.Context, inv invocation) int {
		return exitCode(inv.stderr, "describe", describe(ctx, inv, conn, stream, group))
	}
}

func describe(ctx context.Context, inv invocation, conn connFlags, stream, group string) error {
	if err := requireName("stream", "stream", stream); err != nil {
		return err
	}
	if group != "" {
		if err := requireName("group", "group", group); err != nil {
			return err
		}
	}
	s, err := conn.open(ctx, inv.env, stream)
	if err != nil {
		return err
	}
	defer s.close()
	groups := []string{group}
	if group == "" {
		lags, err := s.seg.Lag(ctx, stream)
		if err != nil {
			return sdkError(err)
		}
		groups = groups[:0]
		for _, g := range lags {
			groups = append(groups, g.Group)
		}
	}
	var ds []*segmenter.GroupDescription
	for _, g := range groups {
		d, err := s.seg.DescribeGroup(ctx, stream, g)
		if err != nil {
			return sdkError(err)
		}
		ds = append(ds, d)
	}
	if conn.json {
		out := describeJSON{Namespace: s.ns, Stream: stream, Groups: []groupJSON{}}
		for _, d := range ds {
			out.ServerTime = d.ServerTime.UTC()
			out.Groups = append(out.Groups, groupToJSON(d))
		}
		if len(ds) == 0 {
			now, err := s.rdb.Time(ctx).Result()
			if err != nil {
				return fmt.Errorf("read server time: %w", err)
			}
			out.ServerTime = now.UTC()
		}
		return writeJSON(inv.stdout, out)
	}
	return printDescribe(inv.stdout, s.ns, stream, ds)
}

func groupToJSON(d *segmenter.GroupDescription) groupJSON {
	g := groupJSON{
		Group: d.Group, Generation: d.Generation, Lag: d.Lag, LagUnknownPartitions: d.LagUnknown,
		Pending: d.Pending, DeadLetters: d.DeadLetters,
		Members: []memberJSON{}, Partitions: []partitionJSON{},
	}
	for _, m := range d.Members {
		mj := memberJSON{ID: m.ID, Live: m.Live, SessionExpiresMs: ms(m.SessionExpiresIn), Assigned: m.Assigned, Leases: m.Leases}
		if m.HeartbeatAge >= 0 {
			age := ms(m.HeartbeatAge)
			mj.HeartbeatAgeMs = &age
		}
		g.Members = append(g.Members, mj)
	}
	for _, p := range d.Partitions {
		pj := partitionJSON{
			Partition: p.Partition, Length: p.Length, LogEnd: p.LogEnd, LastDelivered: p.LastDelivered,
			Pending: p.Pending, OldestPendingID: p.OldestPendingID, OldestPendingAgeMs: ms(p.OldestPendingAge),
			OldestPendingIdleMs: ms(p.OldestPendingIdle), OldestPendingDeliveries: p.OldestPendingDeliveries,
			Owner: p.Owner, Epoch: p.Epoch, LeaseHeld: p.Held(), LeaseExpiresInMs: ms(p.LeaseExpiresIn),
			AssignedTo: p.AssignedTo, DeadLetters: p.DeadLetters, GroupMissing: p.GroupMissing,
		}
		if p.Lag != segmenter.LagUnknown {
			lag := p.Lag
			pj.Lag = &lag
		}
		g.Partitions = append(g.Partitions, pj)
	}
	return g
}

func printDescribe(out io.Writer, ns, stream string, ds []*segmenter.GroupDescription) error {
	if len(ds) == 0 {
		_, err := fmt.Fprintf(out, "namespace %s, stream %s: no consumer groups\n", ns, stream)
		return err
	}
	fmt.Fprintf(out, "namespace %s, stream %s: %d partitions, server time %s\n",
		ns, stream, len(ds[0].Partitions), ds[0].ServerTime.UTC().Format(time.RFC3339Nano))
	for _, d := range ds {
		lag := fmt.Sprint(d.Lag)
		if d.LagUnknown > 0 {
			lag += fmt.Sprintf(" (+ %d partitions unknown)", d.LagUnknown)
		}
		fmt.Fprintf(out, "\nGROUP %s: generation %d, %d members, lag %s, pending %d, dead letters %d\n",
			d.Group, d.Generation, len(d.Members), lag, d.Pending, d.DeadLetters)
		if len(d.Members) > 0 {
			fmt.Fprintln(out)
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "MEMBER\tSTATE\tPARTITIONS\tLEASES\tHEARTBEAT-AGE\tSESSION-EXPIRES-IN")
			for _, m := range d.Members {
				state, age, expires := "live", "-", human(m.SessionExpiresIn)
				if !m.Live {
					state, expires = "expired", "expired "+human(-m.SessionExpiresIn)+" ago"
				}
				if m.HeartbeatAge >= 0 {
					age = human(m.HeartbeatAge)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, state, partitionList(m.Assigned), partitionList(m.Leases), age, expires)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
		fmt.Fprintln(out)
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PARTITION\tLAST-DELIVERED\tLOG-END\tLAG\tPENDING\tOLDEST-PENDING-AGE\tOWNER\tEPOCH\tLEASE-EXPIRES-IN\tDLQ")
		for _, p := range d.Partitions {
			lag, oldest := "?", "-"
			if p.Lag != segmenter.LagUnknown {
				lag = fmt.Sprint(p.Lag)
			}
			if p.GroupMissing {
				lag = "no group"
			}
			if p.OldestPendingID != "" {
				oldest = human(p.OldestPendingAge)
			}
			owner, epoch, lease := "-", "-", "-"
			switch {
			case p.Owner != "" && p.Held():
				owner, epoch, lease = p.Owner, fmt.Sprint(p.Epoch), human(p.LeaseExpiresIn)
			case p.Owner != "":
				owner, epoch, lease = p.Owner, fmt.Sprint(p.Epoch), "expired "+human(-p.LeaseExpiresIn)+" ago"
			case p.Epoch > 0:
				epoch, lease = fmt.Sprint(p.Epoch), "free"
			}
			if p.AssignedTo != "" && p.AssignedTo != p.Owner {
				owner += " -> " + p.AssignedTo // moving
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\n",
				p.Partition, p.LastDelivered, p.LogEnd, lag, p.Pending, oldest, owner, epoch, lease, p.DeadLetters)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

package segmenter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/rebalance"
)

// The positions ResetGroup moves a group to, besides an entry ID.
const (
	// ResetEarliest: before the first entry still in each partition, so
	// the group reads everything again.
	ResetEarliest = "earliest"
	// ResetLatest: after the last entry of each partition, so the group
	// skips everything sent so far.
	ResetLatest = "latest"
)

// ResetOption configures ResetGroup.
type ResetOption interface{ applyReset(*resetOptions) }

type resetOptions struct {
	force, dryRun bool
}

type resetOptionFunc func(*resetOptions)

func (f resetOptionFunc) applyReset(o *resetOptions) { f(o) }

// ResetForce makes ResetGroup move the group even while it has live
// members. Their messages in flight are then acknowledged under them (their
// acks count nothing) and they read on from the new position: at once on a
// partition that gets a new message, else within about 5 seconds (a
// consumer does not fetch a partition it found empty again before that,
// unless the partition gets news).
func ResetForce() ResetOption {
	return resetOptionFunc(func(o *resetOptions) { o.force = true })
}

// ResetDryRun makes ResetGroup report what it would do and change nothing.
func ResetDryRun() ResetOption {
	return resetOptionFunc(func(o *resetOptions) { o.dryRun = true })
}

// PartitionReset is what ResetGroup did to one partition.
type PartitionReset struct {
	Partition int
	// From and To are the group's last-delivered ID before and after: the
	// group's next message is the first entry after To.
	From, To string
	// Cleared is the number of pending messages acknowledged (on a dry
	// run: those that would be).
	Cleared int64
}

// ResetGroup moves group's position on every partition of stream to, like
// kafka-consumer-groups --reset-offsets: ResetEarliest, ResetLatest, or a
// stream entry ID ("1700000000000-0": the group's next message on each
// partition is the first entry after it; entry IDs hold the time in ms when
// the entry was added, so an ID names a moment across partitions). The
// group's pending messages are acknowledged: the ones after the new
// position are delivered again as new messages, the ones up to it are
// taken as processed. Each partition is reset atomically; the partitions
// one after the other in one round trip. The group's members and
// assignment are left as they are.
//
// It refuses, with ErrGroupActive, while the group has a member whose
// session has not expired or a partition lease still held, unless
// ResetForce is given; a partition whose lease a consumer took after that
// check is left as it was (the check and the reset of a partition are one
// script), and reported in a *PartitionError wrapping ErrGroupActive. ResetDryRun reports the moves without making them.
// It returns ErrStreamNotFound for a stream never registered, and
// ErrGroupNotFound for a group that does not exist on the stream.
func (s *Segmenter) ResetGroup(ctx context.Context, stream, group, to string, opts ...ResetOption) ([]PartitionReset, error) {
	var o resetOptions
	for _, opt := range opts {
		if opt != nil {
			opt.applyReset(&o)
		}
	}
	var bad error
	if to != ResetEarliest && to != ResetLatest && !validEntryID(to) {
		bad = invalid("reset position %q: want %q, %q or a stream entry ID (ms-seq)", to, ResetEarliest, ResetLatest)
	}
	meta, err := s.checkDeadLetterArgs(ctx, stream, group, bad)
	if err != nil {
		return nil, err
	}
	d, err := s.DescribeGroup(ctx, stream, group)
	if err != nil {
		return nil, err
	}
	if validEntryID(to) && time.UnixMilli(entryIDMillis(to)).After(d.ServerTime) {
		return nil, invalid("reset position %s is in the future (server time %s): entries sent until then would be skipped",
			to, d.ServerTime.UTC().Format(time.RFC3339Nano))
	}
	if !o.force && !o.dryRun {
		if active := activeMembers(d); len(active) > 0 {
			return nil, fmt.Errorf("%w: stream %q group %q: %s; stop them first or force the reset",
				ErrGroupActive, stream, group, strings.Join(active, ", "))
		}
	}
	keys := make([]string, meta.partitions)
	leases := make([]string, meta.partitions)
	for p := range keys {
		keys[p], leases[p] = s.keys.Partition(stream, p), s.keys.Lease(stream, p, group)
	}
	out := make([]PartitionReset, 0, len(keys))
	var errs []error
	for p, r := range rebalance.ResetGroup(ctx, s.rdb, group, keys, leases, to, o.dryRun, o.force || o.dryRun) {
		if r.Holder != "" {
			// Taken since the check above: that partition is left as it is.
			errs = append(errs, &PartitionError{Stream: stream, Group: group, Partition: p,
				Err: fmt.Errorf("reset: %w: %s holds the partition's lease", ErrGroupActive, r.Holder)})
			continue
		}
		if r.Err != nil {
			err := r.Err
			if redis.HasErrorPrefix(err, "NOGROUP") {
				err = fmt.Errorf("%w: %v", ErrGroupNotFound, err)
			}
			errs = append(errs, &PartitionError{Stream: stream, Group: group, Partition: p, Err: fmt.Errorf("reset: %w", err)})
			continue
		}
		out = append(out, PartitionReset{Partition: p, From: r.From, To: r.To, Cleared: r.Cleared})
	}
	if !o.dryRun && len(out) > 0 {
		s.log.Warn("consumer group reset", "stream", stream, "group", group, "to", to, "partitions", len(out), "forced", o.force)
	}
	return out, errors.Join(errs...)
}

// activeMembers describes what makes the group active: its live members
// and the holders of leases still held.
func activeMembers(d *GroupDescription) []string {
	var out []string
	seen := make(map[string]bool)
	for _, m := range d.Members {
		if m.Live {
			out = append(out, fmt.Sprintf("member %s is live (heartbeat %v ago)", m.ID, m.HeartbeatAge.Round(time.Millisecond)))
			seen[m.ID] = true
		}
	}
	for _, p := range d.Partitions {
		if p.Held() && !seen[p.Owner] {
			out = append(out, fmt.Sprintf("%s holds the lease of partition %d for %v more", p.Owner, p.Partition, p.LeaseExpiresIn.Round(time.Millisecond)))
			seen[p.Owner] = true
		}
	}
	return out
}

package segmenter

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/rebalance"
)

// Retention says how a stream keeps each partition near its maximum length
// (RegisterStream's maxLenPerPartition; a stream with maxLen 0 keeps
// everything whatever its Retention).
type Retention int

const (
	// RetentionMaxLen trims a partition to about maxLen entries on every
	// send (XADD MAXLEN ~ maxLen), whether or not the groups of the stream
	// read them: a group that falls more than maxLen messages behind loses
	// the oldest ones it has not read, and a message delivered but not yet
	// acked can be trimmed too. Consumers detect and report both (see
	// Stats.Trimmed, Stats.TrimmedUnread and Consumer.CheckRetention), but
	// cannot bring the messages back. It costs nothing beyond the XADD. The
	// default.
	RetentionMaxLen Retention = iota

	// RetentionAcked never drops a message that some consumer group of the
	// stream has not acknowledged: sends append without MAXLEN, and a
	// partition longer than maxLen is trimmed (XTRIM MINID ~) only below the
	// oldest entry that some group still needs (its oldest pending entry,
	// else the entry after its last-delivered-id), keeping at least about
	// maxLen entries. A stream with no group at all is trimmed to about
	// maxLen, like RetentionMaxLen: nobody needs its messages yet; a group
	// created later with StartEarliest finds the last maxLen or so.
	//
	// Cost: a producer runs a trim script on a partition once every
	// max(maxLen/8, 64) of its sends to that partition, in the same round
	// trip as the send: it does XLEN, XINFO GROUPS and one XPENDING per
	// group with pending messages (O(groups)), then the trim (O(radix-tree
	// nodes freed)). Measured on Redis 7.0 with three groups: about 20µs of
	// Redis time per call (an XADD takes about 1µs), so at most a third of
	// an XADD per send at the 64-send floor, and nothing measurable for a
	// large maxLen. Between two trims a partition grows by that interval,
	// so it holds up to about maxLen + max(maxLen/8, 64) + 100 (Redis'
	// stream-node-max-entries) entries while every group keeps up.
	//
	// (Redis 8.2 can do this natively, XTRIM ... ACKED; this mode works on
	// Redis 7.0 and later.)
	//
	// The price of never dropping: a group that stops consuming (a
	// forgotten group, a crashed deployment) makes every partition of the
	// stream grow without bound until it catches up or is deleted (XGROUP
	// DESTROY on each partition). Watch the partitions' length.
	RetentionAcked
)

// String returns "maxlen" or "acked", the names stored in the stream's
// metadata.
func (r Retention) String() string {
	switch r {
	case RetentionMaxLen:
		return "maxlen"
	case RetentionAcked:
		return "acked"
	}
	return fmt.Sprintf("Retention(%d)", int(r))
}

func (r Retention) valid() bool { return r == RetentionMaxLen || r == RetentionAcked }

// parseRetention reads a name written by String.
func parseRetention(s string) (Retention, bool) {
	for _, r := range []Retention{RetentionMaxLen, RetentionAcked} {
		if s == r.String() {
			return r, true
		}
	}
	return 0, false
}

// WithRetention sets how the stream's partitions are trimmed to their
// maximum length. It is part of the stream's metadata: registering the
// stream again with another Retention gives ErrStreamConflict. Default
// RetentionMaxLen.
func WithRetention(r Retention) StreamOption {
	return streamOptionFunc(func(o *streamOptions) { o.retention = r })
}

// retentionState is the consumer's state for detecting messages trimmed by
// retention before the group read them. What was reported already is
// recorded in Redis, in each partition's lease hash (field "u"), so that a
// loss is reported once per group, not once per consumer or per restart.
type retentionState struct {
	mu   sync.Mutex
	last time.Time // when the last background check started
}

// checkRetention runs CheckRetention when the last background run is at
// least the check interval ago and the consumer owns partitions. Errors go
// to the background error reporting. The consumer's background loop calls
// it on every tick, without holding c.mu.
func (c *Consumer) checkRetention(ctx context.Context) {
	if len(c.Assignment()) == 0 {
		return // checked once the consumer owns partitions
	}
	r := &c.retention
	r.mu.Lock()
	now := time.Now()
	due := r.last.IsZero() || now.Sub(r.last) >= c.seg.cfg.RetentionCheckInterval
	if due {
		r.last = now
	}
	r.mu.Unlock()
	if !due {
		return
	}
	if err := c.CheckRetention(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, ErrClosed) {
		c.seg.reportError(fmt.Errorf("segmenter: stream %q group %q consumer %q: %w", c.stream.name, c.group, c.id, err))
	}
}

// CheckRetention checks now, on every partition the consumer owns, whether
// retention removed messages before the consumer's group read them (a group
// that fell more than the stream's maxLen behind under RetentionMaxLen, or
// someone trimming the partition by hand). A loss not reported before by any
// consumer of the group is added to Stats().TrimmedUnread and logged at
// error level (attributes stream, group, partition, lost, lost_total,
// first_id, last_delivered_id, max_deleted_id). The consumer also runs this
// check in the background, every 10 seconds, so calling it is only needed to
// learn of a loss at once.
//
// The count comes from Redis' stream counters (Redis 7.0+: entries-added,
// and the group's entries-read) and is exact unless entries of the
// partition are deleted with XDEL. A loss stays in those counters as the
// group reads on, so it is found whenever the check runs, with two gaps:
// messages trimmed before the group's first read from a partition go
// unnoticed (Redis starts a group's read counter at its first read), and a
// group more than 100 messages away from both ends of a partition whose
// retention has not overtaken it is not checked until it gets closer to an
// end (counting its unread messages would cost too much). Messages trimmed
// while pending (read, not acked) are counted apart, in Stats().Trimmed, as
// the consumer meets them.
//
// It returns a *PartitionError for each partition whose check failed (one
// wrapping ErrGroupNotFound when the group or the partition vanished), and
// ErrClosed after Shutdown.
func (c *Consumer) CheckRetention(ctx context.Context) error {
	select {
	case <-c.done:
		return ErrClosed
	default:
	}
	owned := c.Assignment()
	if len(owned) == 0 {
		return nil
	}
	parts := make([]int, len(owned))
	reqs := make([]rebalance.UnreadRequest, len(owned))
	for i, o := range owned {
		parts[i] = o.Partition
		reqs[i] = rebalance.UnreadRequest{StreamKey: c.stream.keys[o.Partition], ReportKey: c.leaseKeys[o.Partition]}
	}
	res := rebalance.CheckUnreadAll(ctx, c.seg.rdb, c.group, reqs)
	var errs []error
	for i, r := range res {
		p := parts[i]
		if r.Err != nil {
			err := fmt.Errorf("check retention: %w", r.Err)
			if redis.HasErrorPrefix(r.Err, "NOGROUP") || redis.HasErrorPrefix(r.Err, "no such key") {
				err = fmt.Errorf("check retention: %w: %v", ErrGroupNotFound, r.Err)
			}
			errs = append(errs, &PartitionError{Stream: c.stream.name, Group: c.group, Partition: p, Err: err})
			continue
		}
		if r.New <= 0 {
			continue
		}
		c.stats.trimmedUnread.Add(uint64(r.New))
		c.log.Error("messages were trimmed by retention before the group read them: lost",
			"partition", p, "lost", r.New, "lost_total", r.Lost, "first_id", r.FirstID,
			"last_delivered_id", r.LastDeliveredID, "max_deleted_id", r.MaxDeletedID)
	}
	return errors.Join(errs...)
}

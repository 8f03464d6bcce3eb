package rebalance

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Retention: the trim that never drops what a consumer group still needs
// (trim.lua), and the detection of entries trimmed before a group read them
// (retention.lua).

// TrimAcked trims each partition stream of keys that holds more than maxLen
// entries, in one round trip, removing only entries that every consumer
// group of the stream has acknowledged (neither pending nor unread in any
// group), and never more than would leave maxLen. A stream without groups is
// trimmed to about maxLen, as XADD MAXLEN ~ does. The trim is approximate:
// Redis removes whole radix-tree nodes (stream-node-max-entries, default
// 100), so a partition keeps up to that many entries more.
//
// It returns the entries removed from each stream, and the errors of the
// streams that failed, joined. A maxLen below 1 trims nothing.
//
// Cost per stream: XLEN, XINFO GROUPS and one XPENDING per group with pending
// entries, O(groups), plus the trim itself, O(nodes freed).
func TrimAcked(ctx context.Context, rdb redis.Cmdable, keys []string, maxLen int64) ([]int64, error) {
	out := make([]int64, len(keys))
	if maxLen < 1 || len(keys) == 0 {
		return out, nil
	}
	var b batch
	calls := make([]*call, len(keys))
	for i, k := range keys {
		calls[i] = b.add(trimScript, []string{k}, maxLen)
	}
	b.exec(ctx, rdb)
	var errs []error
	for i, c := range calls {
		n, err := c.cmd.Int64()
		if err != nil {
			errs = append(errs, fmt.Errorf("trim %s: %w", keys[i], err))
			continue
		}
		out[i] = n
	}
	return out, errors.Join(errs...)
}

// QueuedTrim is a TrimAcked of one stream queued in a caller's pipeline, so
// that it rides in the same round trip as the caller's own commands.
type QueuedTrim struct {
	key    string
	maxLen int64
	cmd    *redis.Cmd
}

// QueueTrimAcked queues the trim of TrimAcked for stream key in pipe. Call
// Result after the pipeline ran. A maxLen below 1 queues nothing and Result
// returns 0.
func QueueTrimAcked(ctx context.Context, pipe redis.Pipeliner, key string, maxLen int64) *QueuedTrim {
	q := &QueuedTrim{key: key, maxLen: maxLen}
	if maxLen >= 1 {
		q.cmd = pipe.EvalSha(ctx, trimScript.sha, []string{key}, maxLen)
	}
	return q
}

// Result returns the entries the queued trim removed. When the server did
// not know the script (NOSCRIPT), the trim did not run: Result runs it again
// with EVAL on rdb, in one more round trip.
func (q *QueuedTrim) Result(ctx context.Context, rdb redis.Cmdable) (int64, error) {
	if q.cmd == nil {
		return 0, nil
	}
	n, err := q.cmd.Int64()
	if isNoScript(err) {
		n, err = rdb.Eval(ctx, trimScript.src, []string{q.key}, q.maxLen).Int64()
	}
	if err != nil {
		return 0, fmt.Errorf("trim %s: %w", q.key, err)
	}
	return n, nil
}

// UnreadCheck is what CheckUnread found on one partition stream for one
// group: how many entries were removed (trimmed by retention, or deleted)
// before the group read them.
type UnreadCheck struct {
	// Known is false when Redis' counters cannot tell this time: the
	// group's entries-read counter is unknown (before the group's first
	// read, or after XDEL or XGROUP SETID in front of it), or the group is
	// more than the scan cap away from both ends of the stream. Lost and
	// New are 0 then.
	Known bool
	// Lost is the number of entries removed before the group read them,
	// over the group's whole life: entries-added - entries-read - the
	// entries still after the group's last-delivered-id. It is exact as
	// long as nobody deleted entries with XDEL; it does not shrink when the
	// group reads on.
	Lost int64
	// New is the part of Lost that was not recorded as reported before
	// (CheckUnreadAll with a report key; CheckUnread leaves it 0).
	New int64
	// LastDeliveredID is the group's last-delivered-id.
	LastDeliveredID string
	// FirstID is the stream's first entry ID ("" when the stream is empty).
	// When it is above LastDeliveredID, retention has overtaken the group.
	FirstID string
	// MaxDeletedID is the stream's max-deleted-entry-id. Redis moves it on
	// XDEL only, not on trimming.
	MaxDeletedID string
}

// UnreadRequest names the partition stream to check and, optionally, a hash
// (in the same hash slot) where the loss reported so far is recorded.
type UnreadRequest struct {
	StreamKey string
	// ReportKey, when not "", is a hash (the group's lease of the
	// partition) whose field "u" records the loss reported so far: the
	// check records the new total and returns the difference as New, so
	// every loss is reported once, by whichever consumer sees it first.
	ReportKey string
}

// UnreadResult is the outcome of one check of CheckUnreadAll.
type UnreadResult struct {
	UnreadCheck
	Err error // the check failed (no such stream or group: NOGROUP)
}

// unreadScanCap bounds the entries one check reads to count the entries
// after the group's position (from either end of the stream).
const unreadScanCap = 100

// CheckUnread reports how many entries of streamKey were removed before
// group read them. It changes nothing. It needs Redis 7.0 (XINFO's
// entries-added and entries-read). It returns an error wrapping the Redis
// error when the stream or the group does not exist (the latter with prefix
// NOGROUP).
//
// Cost: XINFO GROUPS and XINFO STREAM, plus, when the group is neither at
// the end of the stream nor overtaken by retention, an XRANGE of up to 100
// entries from each end to count its unread entries.
func CheckUnread(ctx context.Context, rdb redis.Cmdable, streamKey, group string) (UnreadCheck, error) {
	r := CheckUnreadAll(ctx, rdb, group, []UnreadRequest{{StreamKey: streamKey}})[0]
	return r.UnreadCheck, r.Err
}

// CheckUnreadAll runs the check of CheckUnread for group on every request
// in one round trip. With a ReportKey, a request also records the loss in it
// and returns the part not reported before as New.
func CheckUnreadAll(ctx context.Context, rdb redis.Cmdable, group string, reqs []UnreadRequest) []UnreadResult {
	if _, single := rdb.(*redis.Client); single && len(reqs) > 1 && allReported(reqs) {
		return checkUnreadMany(ctx, rdb, group, reqs)
	}
	var b batch
	calls := make([]*call, len(reqs))
	for i, r := range reqs {
		keys := []string{r.StreamKey}
		if r.ReportKey != "" {
			keys = append(keys, r.ReportKey)
		}
		calls[i] = b.add(retentionScript, keys, group, unreadScanCap)
	}
	b.exec(ctx, rdb)
	out := make([]UnreadResult, len(reqs))
	for i, c := range calls {
		v, err := c.cmd.Slice()
		out[i] = parseUnread(v, err)
	}
	return out
}

func allReported(reqs []UnreadRequest) bool {
	for _, r := range reqs {
		if r.ReportKey == "" {
			return false
		}
	}
	return true
}

// checkUnreadMany runs every request in one script call: a single Redis
// node only (the keys live in different cluster slots).
func checkUnreadMany(ctx context.Context, rdb redis.Cmdable, group string, reqs []UnreadRequest) []UnreadResult {
	keys := make([]string, 0, 2*len(reqs))
	for _, r := range reqs {
		keys = append(keys, r.StreamKey, r.ReportKey)
	}
	var b batch
	c := b.add(retentionScript, keys, group, unreadScanCap, "many")
	b.exec(ctx, rdb)
	v, err := c.cmd.Slice()
	if err == nil && len(v) != len(reqs) {
		err = fmt.Errorf("check unread: unexpected reply of %d elements for %d partitions", len(v), len(reqs))
	}
	out := make([]UnreadResult, len(reqs))
	for i := range out {
		if err != nil {
			out[i].Err = err
			continue
		}
		if e, ok := v[i].(error); ok {
			out[i].Err = e
			continue
		}
		out[i] = parseUnread(asSlice(v[i]), nil)
	}
	return out
}

// parseUnread parses the reply of one partition's check.
func parseUnread(v []any, err error) (out UnreadResult) {
	switch {
	case err != nil:
		out.Err = err
	case len(v) != 6:
		out.Err = fmt.Errorf("check unread: unexpected reply of %d elements", len(v))
	default:
		out.UnreadCheck = UnreadCheck{
			Known:           num(v[0]) == 1,
			Lost:            num(v[1]),
			New:             num(v[2]),
			LastDeliveredID: str(v[3]),
			FirstID:         str(v[4]),
			MaxDeletedID:    str(v[5]),
		}
	}
	return out
}

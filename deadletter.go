package segmenter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/rebalance"
)

// DeadLetter is a message in a group's dead letters.
//
// A group's dead letters hold the messages it gave up on: moved there by
// Consumer.DeadLetter, by WithMaxDeliveries (a message delivered too many
// times) or by PoisonDeadLetter (an entry the SDK cannot decode). They are
// kept per partition, in a Redis stream in the partition's hash slot
// (seg:{N:S:i}:dlq:G), so that a move is one fenced script: the message is
// copied there, with its original fields verbatim, its original stream ID,
// the reason, its delivery count, the group and the time (fields dlq.id,
// dlq.reason, dlq.deliveries, dlq.group, dlq.at, readable with redis-cli
// XRANGE), and acknowledged, atomically and only while the consumer holds
// the partition's lease.
//
// Dead letters are never trimmed: they stay until they are re-driven
// (RedriveDeadLetters, RedriveAllDeadLetters) or deleted
// (DeleteDeadLetters). Watch them with Stats().DeadLettered, a
// DeadLetterHook or DeadLetters.
type DeadLetter struct {
	// ID is the dead letter's entry ID among the dead letters of its
	// partition: with Partition, what RedriveDeadLetters and
	// DeleteDeadLetters need.
	ID string
	// Stream and Group say whose dead letter it is. RedriveDeadLetters and
	// DeleteDeadLetters refuse a letter of another stream or group; left
	// empty, they are not checked.
	Stream, Group string
	// Partition is the partition the message was read from.
	Partition int
	// OriginalID is the message's stream entry ID in its partition.
	OriginalID string
	// Reason says why it was dead-lettered.
	Reason string
	// Deliveries is how many times it had been delivered.
	Deliveries int
	// At is when it was dead-lettered (Redis server time).
	At time.Time
	// Message is the message, decoded as Read would deliver it, with
	// OriginalID as its Id and Deliveries as its DeliveryCount; PoisonReason
	// is set for an entry the SDK cannot decode. It is for inspection: it
	// was not delivered under a lease and cannot be acked.
	Message *contracts.CMessage
}

// DeadLetter moves messages returned by Read to the group's dead letters,
// with reason (required), and acknowledges them, so they are not delivered
// again: use it for messages that cannot be processed. Each move runs in
// Redis after the same check as Ack: messages of a partition lost meanwhile
// are not moved and DeadLetter returns a *PartitionError wrapping ErrFenced
// (they will be delivered to the new owner). A message no longer pending
// (already acked or dead-lettered) is left alone, as Ack does; one trimmed
// by retention before it could be moved is acknowledged and counted in
// Stats().Trimmed. DeadLetterHooks are told of every message moved and of
// every move that failed.
func (c *Consumer) DeadLetter(ctx context.Context, reason string, msgs ...*contracts.CMessage) error {
	if reason == "" {
		return invalid("empty dead-letter reason")
	}
	for i, m := range msgs {
		if err := c.checkMessage(i, m); err != nil {
			return err
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	select {
	case <-c.done:
		return ErrClosed
	default:
	}
	reasons := make([]string, len(msgs))
	for i := range reasons {
		reasons[i] = reason
	}
	var errs []error
	seen := make(map[int]bool)
	for i, err := range c.deadLetter(ctx, msgs, reasons) {
		if p := int(msgs[i].Partition); err != nil && !seen[p] {
			seen[p] = true // one error per partition
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// deadLetter moves msgs (validated, delivered by this consumer) to the dead
// letters with their reasons, in one round trip, and updates the in-flight
// bookkeeping, the counters, the logs and the hooks. It returns each
// message's error: nil when it was moved or there was nothing left to move
// (not pending, or trimmed); a *PartitionError wrapping ErrFenced when the
// lease was lost (the partition is dropped, the error not queued for Read);
// else a *PartitionError whose outcome is unknown (the message may still be
// pending).
func (c *Consumer) deadLetter(ctx context.Context, msgs []*contracts.CMessage, reasons []string) []error {
	reqs := make([]rebalance.DeadLetterRequest, len(msgs))
	for i, m := range msgs {
		p := int(m.Partition)
		reqs[i] = rebalance.DeadLetterRequest{
			LeaseKey:   c.leaseKeys[p],
			StreamKey:  c.stream.keys[p],
			DLQKey:     c.seg.keys.DeadLetters(c.stream.name, p, c.group),
			Epoch:      m.Epoch,
			ID:         m.Id,
			Reason:     reasons[i],
			Deliveries: int64(m.DeliveryCount),
		}
	}
	res := rebalance.DeadLetter(ctx, c.seg.rdb, c.id, c.group, reqs)

	errs := make([]error, len(msgs))
	c.mu.Lock()
	for i, r := range res {
		m, p := msgs[i], int(msgs[i].Partition)
		switch {
		case r.Err != nil:
			err := r.Err
			if redis.HasErrorPrefix(err, "NOGROUP") {
				err = fmt.Errorf("%w: %v", ErrGroupNotFound, err)
			}
			errs[i] = &PartitionError{Stream: c.stream.name, Group: c.group, Partition: p, Err: fmt.Errorf("dead letter: %w", err)}
		case r.Fenced:
			if op, ok := c.parts[p]; ok && op.epoch == m.Epoch {
				c.dropLocked(p, ErrFenced, false) // reported by the caller
			}
			errs[i] = &PartitionError{Stream: c.stream.name, Group: c.group, Partition: p, Err: ErrFenced}
		default:
			if op, ok := c.parts[p]; ok {
				delete(op.inflight, m.Id)
				if op.revoking {
					c.wakeLoop() // it may be drained: hand it over now
				}
			}
			switch {
			case r.Missing:
				c.stats.trimmed.Add(1)
				c.log.Error("pending message trimmed by retention before it was dead-lettered: lost",
					"partition", p, "id", m.Id)
			case r.DeadLetterID != "":
				c.stats.deadLettered.Add(1)
				c.log.Warn("message dead-lettered", "partition", p, "epoch", m.Epoch, "id", m.Id,
					"dead_letter_id", r.DeadLetterID, "reason", reasons[i])
			}
		}
	}
	c.mu.Unlock()
	c.flushEvents()

	if len(c.hooks.deadLetter) > 0 {
		for i, r := range res {
			if errs[i] == nil && r.DeadLetterID == "" {
				continue // nothing was moved, and nothing stays pending
			}
			ev := DeadLetterEvent{Stream: c.stream.name, Group: c.group, Consumer: c.id,
				Message: msgs[i], Reason: reasons[i], DeadLetterID: r.DeadLetterID, Err: errs[i]}
			for _, h := range c.hooks.deadLetter {
				h.OnDeadLetter(ev)
			}
		}
	}
	return errs
}

// deadLetterReason says why the fetch path moves m to the dead letters
// instead of delivering it, or "" to deliver it: a poison entry under
// PoisonDeadLetter, or a message delivered more than WithMaxDeliveries times.
func (c *Consumer) deadLetterReason(m *contracts.CMessage) string {
	if c.opts.poison == PoisonDeadLetter && m.PoisonReason != "" {
		return "poison: " + m.PoisonReason
	}
	if n := c.opts.maxDeliveries; n > 0 && int64(m.DeliveryCount) > int64(n) {
		return fmt.Sprintf("delivered %d times, more than MaxDeliveries %d", m.DeliveryCount, n)
	}
	return ""
}

// deadLetterDelivered takes the messages a fetch just returned (in the
// consumer's in-flight bookkeeping, each partition's in stream order), moves
// to the dead letters those for which reason returns a non-empty reason, and
// returns the others, to deliver. It does not change msgs.
//
// When a move fails, the message is not delivered and neither is anything
// after it of its partition in msgs: they are forgotten locally and the
// partition's pending list is claimed again on the next fetch, so order
// holds and the move is retried. A partition found lost is dropped with all
// its messages. Those errors (*PartitionError) are queued for the next Read.
func (c *Consumer) deadLetterDelivered(ctx context.Context, msgs []*contracts.CMessage, reason func(*contracts.CMessage) string) []*contracts.CMessage {
	var dead []*contracts.CMessage
	var reasons []string
	var at []int // index in msgs of each dead one
	for i, m := range msgs {
		if r := reason(m); r != "" {
			dead, reasons, at = append(dead, m), append(reasons, r), append(at, i)
		}
	}
	if len(dead) == 0 {
		return msgs
	}
	errs := c.deadLetter(ctx, dead, reasons)

	moved := make(map[int]bool)
	type failure struct {
		from  int // messages of the partition from this index on are abandoned
		epoch int64
		err   error
	}
	failed := make(map[uint32]*failure)
	for j, err := range errs {
		i, m := at[j], msgs[at[j]]
		switch f := failed[m.Partition]; {
		case err == nil:
			moved[i] = true
		case errors.Is(err, ErrFenced):
			failed[m.Partition] = &failure{from: 0, epoch: m.Epoch, err: err}
		case f == nil:
			failed[m.Partition] = &failure{from: i, epoch: m.Epoch, err: err}
		}
	}
	kept := make([]*contracts.CMessage, 0, len(msgs)-len(moved))
	var abandoned []*contracts.CMessage
	for i, m := range msgs {
		switch f := failed[m.Partition]; {
		case moved[i]:
		case f != nil && i >= f.from:
			abandoned = append(abandoned, m)
		default:
			kept = append(kept, m)
		}
	}
	if len(failed) == 0 {
		return kept
	}
	c.mu.Lock()
	for _, m := range abandoned {
		if op, ok := c.parts[int(m.Partition)]; ok && op.epoch == m.Epoch {
			delete(op.inflight, m.Id)
		}
	}
	for p, f := range failed {
		if op, ok := c.parts[int(p)]; ok && op.epoch == f.epoch {
			op.cursor, op.cursorIdle = "0-0", 0 // deliver what was abandoned first
			if op.revoking {
				c.wakeLoop()
			}
		}
		c.errs = append(c.errs, f.err)
	}
	c.mu.Unlock()
	return kept
}

// deadLetterPage bounds the dead letters of one partition read or re-driven
// in one call.
const deadLetterPage = 1000

// checkDeadLetterArgs validates the arguments of the dead-letter calls of
// Segmenter, reporting every problem at once, and returns the stream.
func (s *Segmenter) checkDeadLetterArgs(ctx context.Context, stream, group string, extra ...error) (streamMeta, error) {
	errs := []error{validateName("stream", stream), validateName("group", group)}
	if err := errors.Join(append(errs, extra...)...); err != nil {
		return streamMeta{}, err
	}
	return s.lookupStream(ctx, stream)
}

// DeadLettersOption configures DeadLetters.
type DeadLettersOption interface{ applyDeadLetters(*deadLettersOptions) }

type deadLettersOptions struct {
	after DeadLetter // the zero DeadLetter: from the start
}

type deadLettersOptionFunc func(*deadLettersOptions)

func (f deadLettersOptionFunc) applyDeadLetters(o *deadLettersOptions) { f(o) }

// DeadLettersAfter makes DeadLetters list the letters that come after last
// in its order: pass the last letter of a page to get the next page. Only
// last's Partition and ID count (and its Stream and Group, when set, must
// be the ones listed); last need not exist any more, so a page may be
// re-driven or deleted before the next one is listed. The zero DeadLetter
// lists from the start, as no option does.
func DeadLettersAfter(last DeadLetter) DeadLettersOption {
	return deadLettersOptionFunc(func(o *deadLettersOptions) { o.after = last })
}

// DeadLetters returns up to limit dead letters of group on stream, from
// every partition, oldest first, each with its message decoded. Oldest
// first means by the time they were dead-lettered as their dead-letter ID
// records it (the millisecond of the ID, Redis server time), then by
// partition, then by ID. It changes nothing: re-drive or delete the letters
// to take them out.
//
// A page shorter than limit is the last one. To list past the first page,
// pass DeadLettersAfter with the last letter of the page before:
//
//	var last segmenter.DeadLetter
//	for {
//		page, err := seg.DeadLetters(ctx, stream, group, 100, segmenter.DeadLettersAfter(last))
//		if err != nil {
//			return err
//		}
//		// ... use page ...
//		if len(page) < 100 {
//			break
//		}
//		last = page[len(page)-1]
//	}
//
// Paged this way, every letter present when the listing starts and still
// there when its page is read is listed exactly once. A letter dead-lettered
// meanwhile is listed if it comes after the position: it does, unless it
// was dead-lettered, on a partition before last's, in the same millisecond
// as last. Each page costs one round trip, reading up to limit letters of
// every partition.
func (s *Segmenter) DeadLetters(ctx context.Context, stream, group string, limit int, opts ...DeadLettersOption) ([]DeadLetter, error) {
	var o deadLettersOptions
	for _, opt := range opts {
		if opt != nil {
			opt.applyDeadLetters(&o)
		}
	}
	after, paging := o.after, o.after != (DeadLetter{})
	var errs []error
	if limit < 1 {
		errs = append(errs, invalid("limit is %d, must be at least 1", limit))
	}
	if paging {
		switch {
		case !validEntryID(after.ID):
			errs = append(errs, invalid("DeadLettersAfter: ID %q is not a stream entry ID", after.ID))
		case (after.Stream != "" && after.Stream != stream) || (after.Group != "" && after.Group != group):
			errs = append(errs, invalid("DeadLettersAfter: letter %s is of stream %q group %q, not %q %q", after.ID, after.Stream, after.Group, stream, group))
		}
	}
	meta, err := s.checkDeadLetterArgs(ctx, stream, group, errs...)
	if err != nil {
		return nil, err
	}
	if paging && (after.Partition < 0 || after.Partition >= meta.partitions) {
		return nil, invalid("DeadLettersAfter: letter %s has partition %d, stream %q has %d", after.ID, after.Partition, stream, meta.partitions)
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.XMessageSliceCmd, meta.partitions)
	for p := range cmds {
		start := "-"
		if paging {
			start = deadLettersStart(after, p)
		}
		cmds[p] = pipe.XRangeN(ctx, s.keys.DeadLetters(stream, p, group), start, "+", int64(limit))
	}
	_, _ = pipe.Exec(ctx)
	var out []DeadLetter
	for p, cmd := range cmds {
		msgs, err := cmd.Result()
		if err != nil {
			return nil, fmt.Errorf("segmenter: dead letters of stream %q group %q partition %d: %w", stream, group, p, err)
		}
		for _, x := range msgs {
			out = append(out, parseDeadLetter(stream, group, p, x))
		}
	}
	slices.SortFunc(out, compareDeadLetters)
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// compareDeadLetters is the order of DeadLetters: by the millisecond of the
// dead-letter ID, then partition, then ID.
func compareDeadLetters(a, b DeadLetter) int {
	return cmp.Or(cmp.Compare(entryIDMillis(a.ID), entryIDMillis(b.ID)),
		cmp.Compare(a.Partition, b.Partition), compareEntryIDs(a.ID, b.ID))
}

// deadLettersStart is the XRANGE start, among the dead letters of partition
// p, of the letters after last in the order of compareDeadLetters.
func deadLettersStart(last DeadLetter, p int) string {
	ms, _, _ := splitEntryID(last.ID)
	switch {
	case p < last.Partition: // a later millisecond
		return "(" + strconv.FormatUint(ms, 10) + "-" + strconv.FormatUint(math.MaxUint64, 10)
	case p == last.Partition: // a later ID
		return "(" + last.ID
	default: // the same millisecond or later
		return strconv.FormatUint(ms, 10) + "-0"
	}
}

// parseDeadLetter decodes a dead-letter entry of partition p.
func parseDeadLetter(stream, group string, p int, x redis.XMessage) DeadLetter {
	d := DeadLetter{ID: x.ID, Stream: stream, Group: group, Partition: p}
	fields := make([]string, 0, 2*len(x.Values))
	for name, v := range x.Values {
		val := fmt.Sprint(v)
		switch name {
		case rebalance.DeadLetterFieldID:
			d.OriginalID = val
		case rebalance.DeadLetterFieldReason:
			d.Reason = val
		case rebalance.DeadLetterFieldDeliveries:
			d.Deliveries, _ = strconv.Atoi(val)
		case rebalance.DeadLetterFieldAt:
			if ms, err := strconv.ParseInt(val, 10, 64); err == nil {
				d.At = time.UnixMilli(ms)
			}
		case rebalance.FieldRedriveTo:
			// the marker of a letter re-driven before: not the message's
		default:
			if !strings.HasPrefix(name, rebalance.DeadLetterFieldPrefix) {
				fields = append(fields, name, val)
			}
		}
	}
	if d.At.IsZero() {
		d.At = time.UnixMilli(entryIDMillis(x.ID))
	}
	d.Message = &contracts.CMessage{
		Id:            d.OriginalID,
		Partition:     uint32(p),
		DeliveryCount: uint32(max(d.Deliveries, 0)),
		Stream:        stream,
		Group:         group,
	}
	decodeEntry(fields, d.Message)
	return d
}

// checkLetters validates dead letters given to RedriveDeadLetters or
// DeleteDeadLetters and groups their IDs by partition, each partition's in
// ID order (the order they were dead-lettered), without duplicates.
func checkLetters(stream, group string, partitions int, letters []DeadLetter) (map[int][]string, error) {
	var errs []error
	byPart := make(map[int][]string)
	for i, l := range letters {
		switch {
		case l.Partition < 0 || l.Partition >= partitions:
			errs = append(errs, invalid("dead letter %d has partition %d, stream %q has %d", i, l.Partition, stream, partitions))
		case !validEntryID(l.ID):
			errs = append(errs, invalid("dead letter %d has ID %q, not a stream entry ID", i, l.ID))
		case (l.Stream != "" && l.Stream != stream) || (l.Group != "" && l.Group != group):
			errs = append(errs, invalid("dead letter %d (%s) is of stream %q group %q, not %q %q", i, l.ID, l.Stream, l.Group, stream, group))
		default:
			byPart[l.Partition] = append(byPart[l.Partition], l.ID)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for p, ids := range byPart {
		slices.SortFunc(ids, compareEntryIDs)
		byPart[p] = slices.Compact(ids)
	}
	return byPart, nil
}

// RedriveDeadLetters sends the given dead letters of group on stream back
// to their partitions for that group only, and returns how many it
// re-drove (a letter already re-driven or deleted is skipped). It needs at
// least one letter: with none (say, a filter that matched nothing) it
// returns ErrInvalidArgument and re-drives nothing. RedriveAllDeadLetters
// re-drives every dead letter of a group.
//
// Each letter is appended to the end of its partition with its original
// fields and removed from the dead letters, atomically per partition (one
// script call per partition, all in one round trip). It gets a new stream
// ID and is delivered to the group again with a delivery count of 1,
// decoded as before: a poison entry (one another tool wrote) is delivered
// as poison with its own fields. The other groups of the stream skip it:
// they acknowledge it without delivering it. The entry names its group in
// a first field seg.to, which the group's consumers drop before decoding
// it (the name seg.to is reserved: an entry of another tool that starts
// with it is taken for a re-driven one).
//
// Ordering caveat: a re-driven message comes after every message sent to
// its partition meanwhile, so per-key order does not hold between it and
// those. Letters of one partition are re-driven in the order they were
// dead-lettered. Re-driven messages are not trimmed when they are appended;
// the stream's retention applies at the next send.
//
// It returns ErrGroupNotFound (in a *PartitionError) for a partition where
// the group is missing in Redis; nothing of that partition is re-driven.
func (s *Segmenter) RedriveDeadLetters(ctx context.Context, stream, group string, letters ...DeadLetter) (int, error) {
	var none error
	if len(letters) == 0 {
		none = invalid("no dead letters to re-drive (RedriveAllDeadLetters re-drives them all)")
	}
	meta, err := s.checkDeadLetterArgs(ctx, stream, group, none)
	if err != nil {
		return 0, err
	}
	byPart, err := checkLetters(stream, group, meta.partitions, letters)
	if err != nil {
		return 0, err
	}
	n, errs := s.redrive(ctx, stream, group, slices.Sorted(maps.Keys(byPart)), byPart)
	return n, joinByPartition(errs)
}

// RedriveAllDeadLetters sends every dead letter of group on stream present
// when it starts back to its partition for that group only, as
// RedriveDeadLetters does, and returns how many it re-drove. It reads and
// re-drives a page of up to 1000 letters per partition per round trip. A
// partition that fails is left alone after its first error (a
// *PartitionError, ErrGroupNotFound when the group is missing in Redis);
// the others are re-driven to the end. When ctx ends it stops after the
// round trip in flight.
func (s *Segmenter) RedriveAllDeadLetters(ctx context.Context, stream, group string) (int, error) {
	meta, err := s.checkDeadLetterArgs(ctx, stream, group)
	if err != nil {
		return 0, err
	}
	return s.redriveAll(ctx, stream, group, meta.partitions)
}

// redrive re-drives the dead letters ids[p] of each partition of parts in
// one round trip. It returns how many it re-drove and the error of each
// partition that failed.
func (s *Segmenter) redrive(ctx context.Context, stream, group string, parts []int, ids map[int][]string) (int, map[int]error) {
	reqs := make([]rebalance.RedriveRequest, len(parts))
	for i, p := range parts {
		reqs[i] = rebalance.RedriveRequest{
			StreamKey: s.keys.Partition(stream, p),
			DLQKey:    s.keys.DeadLetters(stream, p, group),
			IDs:       ids[p],
		}
	}
	n := 0
	var errs map[int]error
	for i, r := range rebalance.Redrive(ctx, s.rdb, group, reqs) {
		for _, id := range r.NewIDs {
			if id != "" {
				n++
			}
		}
		if r.Err != nil {
			err := r.Err
			if redis.HasErrorPrefix(err, "NOGROUP") {
				err = fmt.Errorf("%w: %v", ErrGroupNotFound, err)
			}
			if errs == nil {
				errs = make(map[int]error)
			}
			errs[parts[i]] = &PartitionError{Stream: stream, Group: group, Partition: parts[i], Err: fmt.Errorf("redrive: %w", err)}
		}
	}
	return n, errs
}

// joinByPartition joins the errors of errs in partition order.
func joinByPartition(errs map[int]error) error {
	var out []error
	for _, p := range slices.Sorted(maps.Keys(errs)) {
		out = append(out, errs[p])
	}
	return errors.Join(out...)
}

// redriveAll re-drives every dead letter of the group up to the last one of
// each partition when it starts, a page per partition per round trip.
func (s *Segmenter) redriveAll(ctx context.Context, stream, group string, partitions int) (int, error) {
	pipe := s.rdb.Pipeline()
	tops := make([]*redis.XMessageSliceCmd, partitions)
	for p := range tops {
		tops[p] = pipe.XRevRangeN(ctx, s.keys.DeadLetters(stream, p, group), "+", "-", 1)
	}
	_, _ = pipe.Exec(ctx)
	last := make(map[int]string) // partition -> last dead letter to re-drive
	for p, cmd := range tops {
		msgs, err := cmd.Result()
		if err != nil {
			return 0, fmt.Errorf("segmenter: dead letters of stream %q group %q partition %d: %w", stream, group, p, err)
		}
		if len(msgs) > 0 {
			last[p] = msgs[0].ID
		}
	}
	after := make(map[int]string) // partition -> last dead letter seen
	total := 0
	var errs []error
	for len(last) > 0 {
		parts := slices.Sorted(maps.Keys(last))
		pipe := s.rdb.Pipeline()
		pages := make([]*redis.XMessageSliceCmd, len(parts))
		for i, p := range parts {
			start := "-"
			if a, ok := after[p]; ok {
				start = "(" + a
			}
			pages[i] = pipe.XRangeN(ctx, s.keys.DeadLetters(stream, p, group), start, last[p], deadLetterPage)
		}
		_, _ = pipe.Exec(ctx)
		ids := make(map[int][]string)
		var active []int
		for i, p := range parts {
			msgs, err := pages[i].Result()
			if err != nil {
				errs = append(errs, &PartitionError{Stream: stream, Group: group, Partition: p, Err: fmt.Errorf("read dead letters: %w", err)})
				delete(last, p)
				continue
			}
			if len(msgs) < deadLetterPage || msgs[len(msgs)-1].ID == last[p] {
				delete(last, p) // the last page
			}
			if len(msgs) == 0 {
				continue
			}
			for _, x := range msgs {
				ids[p] = append(ids[p], x.ID)
			}
			after[p] = msgs[len(msgs)-1].ID
			active = append(active, p)
		}
		n, failed := s.redrive(ctx, stream, group, active, ids)
		total += n
		for _, p := range slices.Sorted(maps.Keys(failed)) {
			errs = append(errs, failed[p])
			delete(last, p) // do not insist on a failing partition
		}
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
	}
	return total, errors.Join(errs...)
}

// DeleteDeadLetters discards dead letters of group on stream (once
// inspected, or dealt with otherwise) and returns how many it deleted (a
// letter already re-driven or deleted is skipped). With no letters it
// deletes nothing.
func (s *Segmenter) DeleteDeadLetters(ctx context.Context, stream, group string, letters ...DeadLetter) (int, error) {
	meta, err := s.checkDeadLetterArgs(ctx, stream, group)
	if err != nil {
		return 0, err
	}
	byPart, err := checkLetters(stream, group, meta.partitions, letters)
	if err != nil || len(byPart) == 0 {
		return 0, err
	}
	parts := slices.Sorted(maps.Keys(byPart))
	pipe := s.rdb.Pipeline()
	type del struct {
		p   int
		cmd *redis.IntCmd
	}
	var dels []del
	for _, p := range parts {
		ids := byPart[p]
		for start := 0; start < len(ids); start += deadLetterPage {
			end := min(start+deadLetterPage, len(ids))
			dels = append(dels, del{p, pipe.XDel(ctx, s.keys.DeadLetters(stream, p, group), ids[start:end]...)})
		}
	}
	_, _ = pipe.Exec(ctx)
	n := 0
	var errs []error
	for _, d := range dels {
		k, err := d.cmd.Result()
		if err != nil {
			errs = append(errs, &PartitionError{Stream: stream, Group: group, Partition: d.p, Err: fmt.Errorf("delete dead letters: %w", err)})
			continue
		}
		n += int(k)
	}
	return n, errors.Join(errs...)
}

// splitEntryID splits a stream entry ID "ms-seq".
func splitEntryID(id string) (ms, seq uint64, ok bool) {
	a, b, found := strings.Cut(id, "-")
	if !found {
		return 0, 0, false
	}
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	return ms, seq, err1 == nil && err2 == nil
}

func validEntryID(id string) bool {
	_, _, ok := splitEntryID(id)
	return ok
}

// compareEntryIDs orders stream entry IDs.
func compareEntryIDs(a, b string) int {
	ams, aseq, aok := splitEntryID(a)
	bms, bseq, bok := splitEntryID(b)
	if !aok || !bok {
		return strings.Compare(a, b)
	}
	return cmp.Or(cmp.Compare(ams, bms), cmp.Compare(aseq, bseq))
}

func entryIDMillis(id string) int64 {
	ms, _, _ := splitEntryID(id)
	return int64(ms)
}

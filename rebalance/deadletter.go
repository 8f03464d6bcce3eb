package rebalance

import (
	"context"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// Dead letters are kept per partition and group, in a stream that shares
// the partition's hash slot, so that moving a message there (read it, copy
// it, acknowledge it) is one fenced script. A dead letter holds the original
// entry's fields verbatim followed by these fields.
const (
	DeadLetterFieldID         = "dlq.id"         // the entry's ID in its partition
	DeadLetterFieldReason     = "dlq.reason"     // why it was dead-lettered
	DeadLetterFieldDeliveries = "dlq.deliveries" // how many times it had been delivered
	DeadLetterFieldGroup      = "dlq.group"      // the group that dead-lettered it
	DeadLetterFieldAt         = "dlq.at"         // when, in ms of server time
	// DeadLetterFieldPrefix starts every field above; Redrive drops them
	// from the end of the letter, where the move appended them.
	DeadLetterFieldPrefix = "dlq."
)

// Re-driven entries carry the group they are meant for. The fetch of every
// other group acknowledges such an entry and leaves it out; the fetch of
// that group delivers it with its original fields only.
const (
	// FieldRedriveTo is the marker of a re-driven entry: Redrive writes the
	// pair FieldRedriveTo = group as the entry's first field, for every
	// letter (one segmenter wrote or a poison entry), and the fetch looks
	// only there, so recognising it costs one comparison per entry. The
	// name is reserved: an entry another tool writes with this first field
	// is taken for a re-driven one.
	FieldRedriveTo = "seg.to"
	// FieldTo is the marker earlier versions appended last to a re-driven
	// entry that segmenter wrote (format version first). The fetch still
	// honours it there, and only there: an entry of another tool that
	// merely has a field "to" is delivered as usual.
	FieldTo = "to"
)

// DeadLetterRequest moves one message of a partition, delivered under Epoch,
// to the group's dead letters from that partition.
type DeadLetterRequest struct {
	LeaseKey   string
	StreamKey  string
	DLQKey     string // the group's dead letters from this partition (same slot)
	Epoch      int64
	ID         string // the entry's ID in the partition
	Reason     string
	Deliveries int64 // how many times it was delivered; 0: the group's count in Redis
}

// DeadLetterResult is the outcome of one fenced move.
type DeadLetterResult struct {
	Outcome
	// DeadLetterID is the dead letter's entry ID, when the message was moved.
	DeadLetterID string
	// Missing: the entry was pending but no longer in the partition
	// (trimmed by retention before it was acknowledged): it was only
	// acknowledged. The message is lost.
	Missing bool
	// NotPending: the entry was not pending in the group (acknowledged
	// already, or moved by an earlier call whose reply was lost): nothing
	// was done.
	NotPending bool
}

// DeadLetter runs the fenced move of every request in one round trip: if
// the caller still holds the lease under the request's epoch and the entry
// is pending in the group, the entry is copied to the dead letters (with its
// original ID, the reason, the delivery count, the group and the server
// time) and acknowledged, atomically. Dead letters are not capped: they stay
// until re-driven or deleted. A call whose reply was lost may be sent again:
// the retry finds the entry no longer pending and does nothing.
func DeadLetter(ctx context.Context, rdb redis.Cmdable, owner, group string, reqs []DeadLetterRequest) []DeadLetterResult {
	var b batch
	calls := make([]*call, len(reqs))
	for i, r := range reqs {
		calls[i] = b.add(deadLetterScript, []string{r.LeaseKey, r.StreamKey, r.DLQKey},
			owner, strconv.FormatInt(r.Epoch, 10), group, r.ID, r.Reason, strconv.FormatInt(r.Deliveries, 10))
	}
	b.exec(ctx, rdb)
	out := make([]DeadLetterResult, len(reqs))
	for i, c := range calls {
		v, err := c.cmd.Slice()
		switch {
		case err != nil:
			out[i].Err = err
		case len(v) == 0:
			out[i].Err = fmt.Errorf("dead letter: empty reply")
		default:
			switch num(v[0]) {
			case 0:
				out[i].Fenced = true
			case 1:
				if len(v) != 2 {
					out[i].Err = fmt.Errorf("dead letter: unexpected reply %v", v)
				} else {
					out[i].DeadLetterID = str(v[1])
				}
			case 2:
				out[i].NotPending = true
			case 3:
				out[i].Missing = true
			default:
				out[i].Err = fmt.Errorf("dead letter: unexpected reply %v", v)
			}
		}
	}
	return out
}

// RedriveRequest moves dead letters of one partition back to it.
type RedriveRequest struct {
	StreamKey string   // the partition stream
	DLQKey    string   // the group's dead letters from that partition
	IDs       []string // dead-letter entry IDs
}

// RedriveResult is the outcome of one re-drive.
type RedriveResult struct {
	// NewIDs holds, for each of the request's IDs, the entry ID it got in
	// the partition, or "" when it was not re-driven (no such dead letter,
	// or Err).
	NewIDs []string
	// Err: some or all of the call failed. An error with the NOGROUP prefix
	// means the group (or the partition stream) is missing: nothing of that
	// partition was moved.
	Err error
}

// Redrive moves dead letters back to the end of their partition, for the
// group only, in one round trip: each is appended with FieldRedriveTo set to
// the group first, so the other groups of the stream acknowledge and skip
// it, then its original fields (without the dlq.* fields the move appended,
// an earlier FieldRedriveTo, or, in an entry segmenter wrote, an earlier
// version's FieldTo), and is deleted from the dead letters in the same
// script. Each call is atomic for up to 1000 IDs. A
// re-driven message comes after every message sent meanwhile: per-key order
// does not hold for it. Nothing is trimmed: the stream's retention applies
// at the next send.
func Redrive(ctx context.Context, rdb redis.Cmdable, group string, reqs []RedriveRequest) []RedriveResult {
	type chunk struct {
		req, start int
		c          *call
	}
	var b batch
	var chunks []chunk
	out := make([]RedriveResult, len(reqs))
	for i, r := range reqs {
		out[i].NewIDs = make([]string, len(r.IDs))
		for start := 0; start < len(r.IDs); start += maxAckIDs {
			end := min(start+maxAckIDs, len(r.IDs))
			args := make([]any, 0, 1+end-start)
			args = append(args, group)
			for _, id := range r.IDs[start:end] {
				args = append(args, id)
			}
			chunks = append(chunks, chunk{req: i, start: start, c: b.add(redriveScript, []string{r.StreamKey, r.DLQKey}, args...)})
		}
	}
	b.exec(ctx, rdb)
	for _, ch := range chunks {
		res := &out[ch.req]
		v, err := ch.c.cmd.Slice()
		if err == nil && len(v) != len(ch.c.args)-1 {
			err = fmt.Errorf("redrive: %d IDs in the reply, want %d", len(v), len(ch.c.args)-1)
		}
		if err != nil {
			if res.Err == nil {
				res.Err = err
			}
			continue
		}
		for j, id := range v {
			res.NewIDs[ch.start+j] = str(id)
		}
	}
	return out
}

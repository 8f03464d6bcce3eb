package rebalance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// A lease is a consumer's exclusive, expiring right to read, claim and ack
// one partition for one group. Every grant carries a new epoch (the fencing
// token), and every read, claim, ack, renewal and release runs in a Lua script
// that first checks the holder and the epoch, so the check and the action are
// atomic in Redis: no client clock decides who may act.

// Grant is the outcome of an acquisition.
type Grant struct {
	Granted bool          // true when the lease is now held by the caller
	Holder  string        // the holder after the call
	Epoch   int64         // the holder's epoch
	TTL     time.Duration // lease time left (for a grant: the full TTL)
	Err     error         // the call failed; its outcome is unknown
}

// Held names a lease the caller believes it holds.
type Held struct {
	Key   string // the lease key
	Epoch int64  // the epoch it was granted under
	// Token identifies one release (Release only): every attempt of it
	// passes the same token, so that an attempt made after one that ran
	// (its reply lost) is known for what it is. Empty: a new one.
	Token string
}

// Acquire asks for each lease key in one round trip, for ttl. A lease is
// granted when it is free, expired or already the owner's; every grant bumps
// the epoch.
func Acquire(ctx context.Context, rdb redis.Cmdable, owner string, ttl time.Duration, keys []string) []Grant {
	var b batch
	calls := make([]*call, len(keys))
	for i, k := range keys {
		calls[i] = b.add(acquireScript, []string{k}, owner, ttl.Milliseconds())
	}
	b.exec(ctx, rdb)
	out := make([]Grant, len(keys))
	for i, c := range calls {
		out[i] = parseGrant(c.cmd)
	}
	return out
}

func parseGrant(cmd *redis.Cmd) Grant {
	v, err := cmd.Slice()
	if err != nil {
		return Grant{Err: err}
	}
	if len(v) != 4 {
		return Grant{Err: fmt.Errorf("acquire: unexpected reply %v", v)}
	}
	epoch, err := strconv.ParseInt(str(v[2]), 10, 64)
	if err != nil {
		return Grant{Err: fmt.Errorf("acquire: bad epoch %q", v[2])}
	}
	return Grant{
		Granted: num(v[0]) == 1,
		Holder:  str(v[1]),
		Epoch:   epoch,
		TTL:     time.Duration(num(v[3])) * time.Millisecond,
	}
}

// Outcome is the result of a fenced call on one lease.
type Outcome struct {
	Fenced bool  // the caller no longer holds the lease under that epoch
	Err    error // the call failed; its outcome is unknown
}

// Renew extends each held lease by ttl in one round trip. A lease granted to
// someone else since comes back Fenced.
func Renew(ctx context.Context, rdb redis.Cmdable, owner string, ttl time.Duration, held []Held) []Outcome {
	var b batch
	calls := make([]*call, len(held))
	for i, h := range held {
		calls[i] = b.add(renewScript, []string{h.Key}, owner, strconv.FormatInt(h.Epoch, 10), ttl.Milliseconds())
	}
	b.exec(ctx, rdb)
	out := make([]Outcome, len(held))
	for i, c := range calls {
		v, err := c.cmd.Slice()
		switch {
		case err != nil:
			out[i].Err = err
		case len(v) == 0:
			out[i].Err = fmt.Errorf("renew: empty reply")
		default:
			out[i].Fenced = num(v[0]) != 1
		}
	}
	return out
}

// Release frees each held lease in one round trip, keeping its epoch so the
// next grant is greater.
//
// A release is idempotent: sent again with the same Held.Token (go-redis
// sends it again by itself when a reply is lost), it succeeds again, also
// after the next owner took the lease. A lease taken by another before the
// release ran is Fenced: it was lost, not handed over.
func Release(ctx context.Context, rdb redis.Cmdable, owner string, held []Held) []Outcome {
	var b batch
	calls := make([]*call, len(held))
	for i, h := range held {
		token := h.Token
		if token == "" {
			token = newToken()
		}
		calls[i] = b.add(releaseScript, []string{h.Key}, owner, strconv.FormatInt(h.Epoch, 10), token)
	}
	b.exec(ctx, rdb)
	out := make([]Outcome, len(held))
	for i, c := range calls {
		n, err := c.cmd.Int64()
		out[i] = Outcome{Fenced: err == nil && n != 1, Err: err}
	}
	return out
}

// FetchRequest is the fenced read of one partition for one group.
type FetchRequest struct {
	LeaseKey  string
	StreamKey string
	Epoch     int64
	Count     int
	// Cursor continues a claim in progress ("" when none): "0-0" starts one.
	Cursor string
	// CursorIdle is the claim's minimum idle time: 0 to claim the whole
	// pending list (after a takeover or a lost reply), the redelivery time to
	// claim only the messages due for redelivery.
	CursorIdle time.Duration
	// FetchID is unique per fetch of this holder; a call that arrives with
	// the same id as the previous one is a retry whose first reply was lost.
	FetchID string
	// NeedTop asks for the partition's last entry ID when nothing is read
	// (FetchResult.TopID): the caller knows no position to wait from.
	NeedTop bool
	// SkipDue: the caller knows, by its own clock, that no pending message
	// of the partition can be due for redelivery before the reply comes
	// back, and checks that it did come back in time. A native read then
	// does not look for due messages in Redis (an XPENDING IDLE, which
	// walks the whole pending list when none is due); the scripts always
	// look.
	SkipDue bool
}

// Entry is a stream entry: its ID and its fields as name, value pairs.
type Entry struct {
	ID     string
	Fields []string
}

// FetchResult is what one fenced read returned.
type FetchResult struct {
	Outcome
	Entries []Entry
	// Deliveries holds the delivery count of the claimed (redelivered)
	// entries; entries read for the first time are not in it.
	Deliveries map[string]int64
	// NextCursor is the claim cursor to continue from, "" when the claim
	// scanned the whole pending list; NextCursorIdle is that claim's minimum
	// idle time, to pass back as CursorIdle.
	NextCursor     string
	NextCursorIdle time.Duration
	// Trimmed lists pending entries that no longer exist in the stream
	// (trimmed by retention before they were acked): lost messages.
	Trimmed []string
	// TopID is the partition's last entry ID when no new entry was read and
	// the partition is drained for now: the position to wait from for new
	// entries.
	TopID string
	// More: the read stopped short (entries meant for other groups took
	// its room); entries may follow at once.
	More bool
	// TopUnknown: nothing was read and TopID was not looked up (a native
	// read): the caller's position to wait from may be behind the
	// partition's last entry.
	TopUnknown bool
	// DueSkipped: the read did not look for messages due for redelivery
	// (the request's SkipDue).
	DueSkipped bool
	// Reclaimed: the entries came from a claim of the whole pending list
	// (after a takeover, a Nack, or a read whose reply was lost, which the
	// fetch detects by its FetchID): they include messages the caller
	// delivered before and may still be processing.
	Reclaimed bool
}

// NeverDue as Fetch's redeliverAfter starts no claim of messages due for
// redelivery (a claim already in progress goes on).
const NeverDue = time.Duration(1<<63 - 1)

// Fetch runs the fenced read of every request in one round trip. Pending
// messages idle for at least redeliverAfter are claimed and delivered, oldest
// first, before any new message of their partition. On a single Redis node,
// reads with no claim to do run natively (see native.go).
func Fetch(ctx context.Context, rdb redis.Cmdable, owner, group string, redeliverAfter time.Duration, reqs []FetchRequest) []FetchResult {
	if len(reqs) > 0 && nativeFetchable(reqs) && native(ctx, rdb) {
		res, err := fetchNative(ctx, rdb, owner, group, redeliverAfter, reqs)
		switch {
		case err == nil:
			return res
		case !errors.Is(err, errAborted):
			return fetchAfterUnknown(ctx, rdb, owner, group, redeliverAfter, reqs)
		}
		// Otherwise it did not run (a lease moved, a redelivery is due):
		// the scripts handle every case.
	}
	return fetchScripts(ctx, rdb, owner, group, redeliverAfter, reqs)
}

// fetchAfterUnknown runs reqs through the scripts after a native read
// that may have run, its entries pending unseen: it claims every
// partition's pending list before reading anything new.
func fetchAfterUnknown(ctx context.Context, rdb redis.Cmdable, owner, group string, redeliverAfter time.Duration, reqs []FetchRequest) []FetchResult {
	again := make([]FetchRequest, len(reqs))
	for i, r := range reqs {
		r.Cursor, r.CursorIdle = "0-0", 0
		again[i] = r
	}
	return fetchScripts(ctx, rdb, owner, group, redeliverAfter, again)
}

// nativeFetchable reports whether every request is a plain read: no claim
// in progress and a known position to wait from.
func nativeFetchable(reqs []FetchRequest) bool {
	for _, r := range reqs {
		if r.Cursor != "" || r.NeedTop {
			return false
		}
	}
	return true
}

// fetchScripts is Fetch with one fetch.lua per request.
func fetchScripts(ctx context.Context, rdb redis.Cmdable, owner, group string, redeliverAfter time.Duration, reqs []FetchRequest) []FetchResult {
	var b batch
	calls := make([]*call, len(reqs))
	for i, r := range reqs {
		calls[i] = b.add(fetchScript, []string{r.LeaseKey, r.StreamKey},
			owner, strconv.FormatInt(r.Epoch, 10), group, r.Count,
			redeliverAfter.Milliseconds(), r.Cursor, r.CursorIdle.Milliseconds(), r.FetchID)
	}
	b.exec(ctx, rdb)
	out := make([]FetchResult, len(reqs))
	for i, c := range calls {
		out[i] = parseFetch(c.cmd)
	}
	return out
}

func parseFetch(cmd *redis.Cmd) (res FetchResult) {
	v, err := cmd.Slice()
	if err != nil {
		res.Err = err
		return res
	}
	if len(v) == 1 && num(v[0]) == 0 {
		res.Fenced = true
		return res
	}
	if len(v) != 8 {
		res.Err = fmt.Errorf("fetch: unexpected reply of %d elements", len(v))
		return res
	}
	raw, _ := v[1].([]any)
	res.Entries = make([]Entry, 0, len(raw))
	for _, e := range raw {
		pair, ok := e.([]any)
		if !ok || len(pair) != 2 {
			continue
		}
		fv, _ := pair[1].([]any)
		fields := make([]string, len(fv))
		for j, f := range fv {
			fields[j] = str(f)
		}
		res.Entries = append(res.Entries, Entry{ID: str(pair[0]), Fields: fields})
	}
	res.NextCursor = str(v[2])
	for _, id := range asSlice(v[3]) {
		res.Trimmed = append(res.Trimmed, str(id))
	}
	if counts := asSlice(v[4]); len(counts) > 0 {
		res.Deliveries = make(map[string]int64, len(counts)/2)
		for j := 0; j+1 < len(counts); j += 2 {
			res.Deliveries[str(counts[j])] = num(counts[j+1])
		}
	}
	res.TopID = str(v[5])
	res.NextCursorIdle = time.Duration(num(v[6])) * time.Millisecond
	res.Reclaimed = num(v[7]) == 1
	return res
}

// AckRequest acknowledges messages of one partition delivered under Epoch.
type AckRequest struct {
	LeaseKey  string
	StreamKey string
	Epoch     int64
	IDs       []string
}

// AckResult is the outcome of one fenced ack.
type AckResult struct {
	Outcome
	Acked int64 // how many of the IDs were pending and are now acknowledged
}

// maxAckIDs bounds the IDs of one script call (Lua's unpack limit).
const maxAckIDs = 1000

// Ack runs the fenced acknowledgement of every request in one round trip
// (natively on a single Redis node, see native.go; two when a lease was
// lost). XACK is idempotent, so an ack whose reply was lost may be sent
// again: every ack has an id of its own, recorded in the lease with the
// acknowledgement, so that a run sent again after the lease moved on (a
// go-redis retry, or the scripts after a failed native ack) knows when an
// earlier run did the work, and is not reported fenced.
func Ack(ctx context.Context, rdb redis.Cmdable, owner, group string, reqs []AckRequest) []AckResult {
	return ackWithID(ctx, rdb, owner, group, newAckID(owner), reqs)
}

// ackWithID is Ack with the ack's id.
func ackWithID(ctx context.Context, rdb redis.Cmdable, owner, group, id string, reqs []AckRequest) []AckResult {
	if len(reqs) > 0 && native(ctx, rdb) {
		if res, err := ackNative(ctx, rdb, owner, group, id, reqs); err == nil {
			return res
		}
		// A lease is not ours (the scripts say which), or the call failed
		// (sent again: XACK is idempotent, and the ack's id tells whether
		// the first run did the work).
	}
	return ackScripts(ctx, rdb, owner, group, id, reqs)
}

// newAckID returns an id for one Ack of owner.
func newAckID(owner string) string { return owner + ":" + newToken() }

// newToken returns a random token identifying one call across its attempts.
func newToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// ackScripts is Ack through the scripts, with the ack's id.
func ackScripts(ctx context.Context, rdb redis.Cmdable, owner, group, ackID string, reqs []AckRequest) []AckResult {
	if _, single := rdb.(*redis.Client); single && len(reqs) > 1 {
		return ackMany(ctx, rdb, owner, group, ackID, reqs)
	}
	var b batch
	calls := make([][]*call, len(reqs))
	for i, r := range reqs {
		for start := 0; start < len(r.IDs); start += maxAckIDs {
			end := min(start+maxAckIDs, len(r.IDs))
			args := make([]any, 0, 4+end-start)
			args = append(args, owner, strconv.FormatInt(r.Epoch, 10), group, ackID)
			for _, id := range r.IDs[start:end] {
				args = append(args, id)
			}
			calls[i] = append(calls[i], b.add(ackScript, []string{r.LeaseKey, r.StreamKey}, args...))
		}
	}
	b.exec(ctx, rdb)
	out := make([]AckResult, len(reqs))
	for i, cs := range calls {
		for _, c := range cs {
			v, err := c.cmd.Slice()
			switch {
			case err != nil:
				out[i].Err = err
			case len(v) == 0 || num(v[0]) != 1:
				out[i].Fenced = true
			case len(v) == 2:
				out[i].Acked += num(v[1])
			}
		}
	}
	return out
}

var ackManyScript = load("ack_many")

// ackMany acks every request in one script: for a single Redis node only.
func ackMany(ctx context.Context, rdb redis.Cmdable, owner, group, ackID string, reqs []AckRequest) []AckResult {
	keys := make([]string, 0, 2*len(reqs))
	args := []any{owner, group, ackID}
	for _, r := range reqs {
		keys = append(keys, r.LeaseKey, r.StreamKey)
		args = append(args, strconv.FormatInt(r.Epoch, 10), len(r.IDs))
		for _, id := range r.IDs {
			args = append(args, id)
		}
	}
	var b batch
	c := b.add(ackManyScript, keys, args...)
	b.exec(ctx, rdb)
	out := make([]AckResult, len(reqs))
	v, err := c.cmd.Slice()
	if err == nil && len(v) != len(reqs) {
		err = fmt.Errorf("ack: unexpected reply %v", v)
	}
	for i := range out {
		if err != nil {
			out[i].Err = err
			continue
		}
		r := asSlice(v[i])
		switch {
		case len(r) == 0 || num(r[0]) != 1:
			out[i].Fenced = true
		case len(r) == 2:
			out[i].Acked = num(r[1])
		}
	}
	return out
}

func str(v any) string {
	switch s := v.(type) {
	case string:
		return s
	case []byte:
		return string(s)
	case int64:
		return strconv.FormatInt(s, 10)
	case nil:
		return ""
	default:
		return fmt.Sprint(s)
	}
}

func num(v any) int64 {
	switch n := v.(type) {
	case int64:
		return n
	case string:
		i, _ := strconv.ParseInt(n, 10, 64)
		return i
	default:
		return 0
	}
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

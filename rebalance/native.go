package rebalance

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// The native path. A fenced read or ack through a Lua script passes every
// entry (or ID) through Lua, which costs Redis 2 to 4 times the command
// itself. On a single Redis node the common case runs natively instead, in
// one round trip on one connection:
//
//	WATCH lease...                 the leases of the partitions
//	EVAL guard lease... stream...  checks holder and epoch (and, for a read,
//	                               that nothing is due for redelivery and that
//	                               this is no retry of a read whose reply was
//	                               lost); when a check fails it writes to a
//	                               lease, which aborts the EXEC
//	MULTI
//	HSET lease r <fetch id>        (reads) the retry marker, as fetch.lua,
//	                               on the first lease
//	XREADGROUP ... | XACK ...      the work itself
//	EXEC                           runs only if no lease was written since
//	                               WATCH: the check and the work are atomic
//
// A lease changes hands only by a write to its key (acquire.lua), and WATCH
// aborts the EXEC on any write, so a consumer that lost a lease never reads
// or acks under it, exactly as with the scripts. The guard is sent with
// EVAL, not EVALSHA: a guard that did not run (NOSCRIPT after SCRIPT FLUSH)
// would let the EXEC through unchecked. Every other reason a guard cannot
// run also rejects the transaction: out of memory, Redis refuses every
// command queued in a MULTI, and the EXEC runs nothing (EXECABORT); BUSY,
// LOADING and READONLY refuse MULTI or the queued commands too. Out of
// memory the guard's own write is not refused (it first makes one that
// uses no memory, see keep_going in prelude.lua), so a guard that fails a
// check still aborts an EXEC that memory freed meanwhile would let run.
// When the EXEC is aborted or anything is unusual
// (a claim in progress, a redelivery due, a lost reply), the caller runs the
// scripts, which handle every case.
var (
	guardFetch = mustRead("guard_fetch")
	guardAck   = mustRead("guard_ack")
)

// mustRead returns the script without its comment lines and indentation:
// EVAL sends the source every time, and Redis hashes it every time.
func mustRead(name string) string {
	b, err := luaFiles.ReadFile("lua/" + name + ".lua")
	if err != nil {
		panic(err) // embedded at build time: cannot happen
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "--") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// native reports whether rdb runs the native path: a client of one Redis
// node whose EVAL works. EVAL is probed once per client (an ACL may allow
// EVALSHA but not EVAL: the guard would then never run); a client whose
// guard ever failed to run yet saw its EXEC run keeps to the scripts.
func native(ctx context.Context, rdb redis.Cmdable) bool {
	c, ok := rdb.(*redis.Client)
	if !ok || scriptsOnly.Load() {
		return false
	}
	if v, ok := nativeClients.Load(c); ok {
		return v.(bool)
	}
	// Probed lazily, on the caller's goroutine: a plain EVAL that writes
	// nothing. A failure that says nothing of EVAL (a network error) is
	// not remembered.
	err := c.Eval(ctx, "return 1", nil).Err()
	switch {
	case err == nil:
		nativeClients.Store(c, true)
		return true
	case redis.HasErrorPrefix(err, "NOPERM") || redis.HasErrorPrefix(err, "ERR unknown command"):
		nativeClients.Store(c, false)
	}
	return false
}

// Native reports whether rdb runs the native path (asking Redis the first
// time, as Fetch and Ack do).
func Native(ctx context.Context, rdb redis.Cmdable) bool { return native(ctx, rdb) }

// nativeClients remembers, per *redis.Client, whether it runs the native
// path.
var nativeClients sync.Map

// disableNative keeps rdb to the scripts from now on (the caller's error
// says why).
func disableNative(rdb redis.Cmdable) {
	if c, ok := rdb.(*redis.Client); ok {
		nativeClients.Store(c, false)
	}
}

// scriptsOnly turns the native path off (tests of the scripts' own paths).
var scriptsOnly atomic.Bool

// errAborted: the EXEC did not run (a lease was written since WATCH, or the
// guard failed a check). The caller falls back to the scripts.
var errAborted = errors.New("native: aborted")

// errUnknown: the read may have run (its reply was lost, or it is a retry of
// one whose reply was lost): the caller claims the pending lists again.
var errUnknown = errors.New("native: outcome unknown")

// fetchNative runs reqs (none with a claim in progress) as one native read.
// It returns errAborted when the read did not run, and errUnknown (or
// another error) when it may have: the caller then uses the scripts, and
// after errUnknown or another error claims the pending lists first.
//
// The first lease gets the retry marker (the fetch id of the first
// request): a retried call that finds it knows its first run read every
// partition. A retry that finds the first lease gone cannot tell, and
// reports errUnknown: the caller then claims every partition's pending
// list, so a batch read by a run whose reply was lost is delivered first
// on every partition still held.
func fetchNative(ctx context.Context, rdb redis.Cmdable, owner, group string, redeliverAfter time.Duration, reqs []FetchRequest) ([]FetchResult, error) {
	res, _, err := fetchAckNative(ctx, rdb, owner, group, redeliverAfter, reqs, nil, "")
	return res, err
}

// fetchAckNative is fetchNative with acks: the XACKs of acks run in the
// read's transaction, before the read, behind the same guard (which checks
// their leases too). It returns errAborted when neither ran, and
// errUnknown (or another error) when both may have.
func fetchAckNative(ctx context.Context, rdb redis.Cmdable, owner, group string, redeliverAfter time.Duration, reqs []FetchRequest, acks []AckRequest, ackID string) ([]FetchResult, []AckResult, error) {
	pipe := rdb.Pipeline()
	t := queueNative(ctx, pipe, owner, group, redeliverAfter, reqs, acks, ackID)
	_, _ = pipe.Exec(ctx)
	return t.parse(ctx, rdb)
}

// nativeTx is a native read (and acks) queued into a pipeline.
type nativeTx struct {
	owner, group   string
	redeliverAfter time.Duration
	idle           string // redelivery idle ms, "" for none
	reqs           []FetchRequest
	acks           []AckRequest
	ackID          string // the id of the acks (see Ack)
	reads          int
	guard, exec    *redis.Cmd
}

// queueNative queues the native read of reqs, with the acks of acks before
// it, into pipe: WATCH, the guard, MULTI ... EXEC.
func queueNative(ctx context.Context, pipe redis.Pipeliner, owner, group string, redeliverAfter time.Duration, reqs []FetchRequest, acks []AckRequest, ackID string) *nativeTx {
	n := len(reqs)
	t := &nativeTx{owner: owner, group: group, redeliverAfter: redeliverAfter, reqs: reqs, acks: acks, ackID: ackID}
	if redeliverAfter != NeverDue {
		t.idle = strconv.FormatInt(redeliverAfter.Milliseconds(), 10)
	}
	id := reqs[0].FetchID
	// One XREADGROUP per distinct count (a batch is shared out evenly, so
	// one or two), over every stream of that count.
	c1, c2 := reqs[0].Count, -1
	for _, r := range reqs {
		if r.Count != c1 {
			c2 = r.Count
			break
		}
	}
	// The leases of the acks that the read's leases do not cover (under
	// the same epoch) are checked too.
	var ackOnly []int
	for j, a := range acks {
		if !slices.ContainsFunc(reqs, func(r FetchRequest) bool { return r.LeaseKey == a.LeaseKey && r.Epoch == a.Epoch }) {
			ackOnly = append(ackOnly, j)
		}
	}
	watch := make([]any, 0, 1+n+len(ackOnly))
	gkeys := make([]string, 0, 2*n+len(ackOnly))
	gargs := make([]any, 0, 5+n+len(ackOnly))
	watch = append(watch, "WATCH")
	for _, r := range reqs {
		watch = append(watch, r.LeaseKey)
		gkeys = append(gkeys, r.LeaseKey)
	}
	for _, r := range reqs {
		gkeys = append(gkeys, r.StreamKey)
	}
	for _, j := range ackOnly {
		watch = append(watch, acks[j].LeaseKey)
		gkeys = append(gkeys, acks[j].LeaseKey)
	}
	// Which partitions the guard looks for due messages in.
	due := make([]byte, n)
	for i, r := range reqs {
		due[i] = '1'
		if r.SkipDue {
			due[i] = '0'
		}
	}
	gargs = append(gargs, owner, group, t.idle, id, due)
	for _, r := range reqs {
		gargs = append(gargs, strconv.FormatInt(r.Epoch, 10))
	}
	for _, j := range ackOnly {
		gargs = append(gargs, strconv.FormatInt(acks[j].Epoch, 10))
	}
	readArgs := func(count int) []any {
		a := make([]any, 0, 7+2*n)
		a = append(a, "XREADGROUP", "GROUP", group, owner, "COUNT", count, "STREAMS")
		k := 0
		for _, r := range reqs {
			if r.Count == count {
				a = append(a, r.StreamKey)
				k++
			}
		}
		for range k {
			a = append(a, ">")
		}
		return a
	}

	pipe.Do(ctx, watch...)
	t.guard = pipe.Eval(ctx, guardFetch, gkeys, gargs...)
	pipe.Do(ctx, "MULTI")
	for _, a := range acks {
		pipe.Do(ctx, ackMarkArgs(a, ackID)...)
		pipe.Do(ctx, xackArgs(group, a)...)
	}
	pipe.Do(ctx, "HSET", reqs[0].LeaseKey, "r", id)
	pipe.Do(ctx, readArgs(c1)...)
	t.reads = 1
	if c2 >= 0 {
		pipe.Do(ctx, readArgs(c2)...)
		t.reads++
	}
	t.exec = pipe.Do(ctx, "EXEC")
	return t
}

// parse reads the replies of t, once its pipeline ran. rdb is the client
// of the pipeline (for what the read leaves to do: acks of entries meant
// for another group, and turning the native path off).
func (t *nativeTx) parse(ctx context.Context, rdb redis.Cmdable) ([]FetchResult, []AckResult, error) {
	reqs, acks, group := t.reqs, t.acks, t.group
	n := len(reqs)
	v, err := t.exec.Slice()
	g, gerr := t.guard.Slice()
	if err != nil {
		if redis.HasErrorPrefix(err, "EXECABORT") {
			// A queued command was refused (out of memory, Redis refuses
			// every command queued in a MULTI): the EXEC ran nothing.
			return nil, nil, errAborted
		}
		if !errors.Is(err, redis.Nil) {
			return nil, nil, fmt.Errorf("%w: %v", errUnknown, err)
		}
		if gerr == nil && len(g) == 3 && (str(g[2]) == "retry" || str(g[2]) == "unknown") {
			return nil, nil, errUnknown
		}
		return nil, nil, errAborted
	}
	if gerr != nil || len(g) == 0 || num(g[0]) != 1 {
		// The guard did not run (refused), yet the EXEC ran unchecked (a
		// refusal by the guard writes a lease, which aborts it). Never
		// again on this client; the read's outcome is unknown.
		disableNative(rdb)
		return nil, nil, fmt.Errorf("%w: guard %v %v, and the read ran", errUnknown, g, gerr)
	}
	m := len(acks)
	if len(v) != 2*m+1+t.reads {
		return nil, nil, fmt.Errorf("%w: EXEC returned %d replies for %d commands", errUnknown, len(v), 2*m+1+t.reads)
	}
	acked := make([]AckResult, m)
	for j := range acks {
		x := v[2*j+1] // after the ack's HSET of its id
		if e, ok := x.(redis.Error); ok {
			return nil, nil, fmt.Errorf("%w: XACK: %v", errUnknown, e)
		}
		acked[j].Acked = num(x)
	}
	out := make([]FetchResult, n)
	var slab fieldSlab
	for _, x := range v[2*m+1:] {
		if err := parseReadGroup(x, reqs, out, &slab); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", errUnknown, err)
		}
	}
	var skipped []AckRequest
	for i, r := range reqs {
		entries := out[i].Entries
		var other []string // entries re-driven for another group
		kept := entries[:0]
		for _, e := range entries {
			fields, skip := forOther(e.Fields, group)
			if skip {
				other = append(other, e.ID)
				continue
			}
			e.Fields = fields
			kept = append(kept, e)
		}
		out[i].Entries = kept
		out[i].DueSkipped = r.SkipDue && t.idle != ""
		// A read finds the partition's last entry only when it reads one.
		out[i].TopUnknown = len(entries) == 0
		if len(other) > 0 {
			skipped = append(skipped, AckRequest{LeaseKey: r.LeaseKey, StreamKey: r.StreamKey, Epoch: r.Epoch, IDs: other})
			if len(kept) == 0 {
				out[i].TopID = other[len(other)-1] // wait from there
			}
			// The skipped entries took room: more may follow at once
			// (fetch.lua reads on instead).
			out[i].More = len(entries) == r.Count
		}
	}
	if len(skipped) > 0 {
		// Acknowledged for this group, never delivered to it (fenced: a
		// lease lost meanwhile leaves them to the next owner, who skips
		// them too).
		_ = ackScripts(ctx, rdb, t.owner, group, newAckID(t.owner), skipped)
	}
	return out, acked, nil
}

// ackMarkArgs records the id of the ack of one request in its lease, as
// ack.lua does (see Ack).
func ackMarkArgs(r AckRequest, ackID string) []any {
	return []any{"HSET", r.LeaseKey, "k" + strconv.FormatInt(r.Epoch, 10), ackID}
}

// xackArgs is the XACK of one request.
func xackArgs(group string, r AckRequest) []any {
	a := make([]any, 0, 3+len(r.IDs))
	a = append(a, "XACK", r.StreamKey, group)
	for _, id := range r.IDs {
		a = append(a, id)
	}
	return a
}

// CanFetchAck reports whether FetchAck runs reqs and acks in one
// transaction: a single Redis node, and reads with no claim to do.
func CanFetchAck(ctx context.Context, rdb redis.Cmdable, reqs []FetchRequest) bool {
	return len(reqs) > 0 && nativeFetchable(reqs) && native(ctx, rdb)
}

// FetchAck acknowledges acks, then runs the fenced read of reqs, as Ack and
// Fetch do; when CanFetchAck, in one round trip and one transaction, the
// acks before the read, behind one guard. A lease not the caller's (or a
// message due for redelivery) sends both through Ack and Fetch.
func FetchAck(ctx context.Context, rdb redis.Cmdable, owner, group string, redeliverAfter time.Duration, reqs []FetchRequest, acks []AckRequest) ([]FetchResult, []AckResult) {
	if len(acks) == 0 || !CanFetchAck(ctx, rdb, reqs) {
		var acked []AckResult
		if len(acks) > 0 {
			acked = Ack(ctx, rdb, owner, group, acks)
		}
		return Fetch(ctx, rdb, owner, group, redeliverAfter, reqs), acked
	}
	ackID := newAckID(owner)
	res, acked, err := fetchAckNative(ctx, rdb, owner, group, redeliverAfter, reqs, acks, ackID)
	if err == nil {
		return res, acked
	}
	// Neither ran (errAborted), or both may have: XACK is idempotent (the
	// same ack id tells a run after one that did the work), and Fetch
	// claims the pending lists first after a read that may have run.
	acked = ackWithID(ctx, rdb, owner, group, ackID, acks)
	if errors.Is(err, errAborted) {
		return fetchScripts(ctx, rdb, owner, group, redeliverAfter, reqs), acked
	}
	return fetchAfterUnknown(ctx, rdb, owner, group, redeliverAfter, reqs), acked
}

// QueuedFetch is a native fenced read queued into a pipeline that the
// caller runs. Queued behind a blocking command (the entry watcher's XREAD
// BLOCK), it runs in Redis as soon as that command returns, in the same
// round trip: a consumer woken by new entries has them read already.
type QueuedFetch struct{ t *nativeTx }

// QueueFetch queues the native read of reqs into pipe, a pipeline of a
// connection of a client for which CanFetchAck(ctx, client, reqs) holds.
func QueueFetch(ctx context.Context, pipe redis.Pipeliner, owner, group string, redeliverAfter time.Duration, reqs []FetchRequest) *QueuedFetch {
	return &QueuedFetch{t: queueNative(ctx, pipe, owner, group, redeliverAfter, reqs, nil, "")}
}

// Result returns, once the pipeline ran, the outcome of the read as Fetch
// returns it: when the native read did not run (a lease moved, a message
// came due) or may have run (its reply was lost), it runs the read through
// the scripts on rdb, the client of the pipeline's connection.
func (q *QueuedFetch) Result(ctx context.Context, rdb redis.Cmdable) []FetchResult {
	t := q.t
	res, _, err := t.parse(ctx, rdb)
	switch {
	case err == nil:
		return res
	case errors.Is(err, errAborted):
		return fetchScripts(ctx, rdb, t.owner, t.group, t.redeliverAfter, t.reqs)
	}
	return fetchAfterUnknown(ctx, rdb, t.owner, t.group, t.redeliverAfter, t.reqs)
}

// forOther reports whether an entry is meant for another group only (a dead
// letter re-driven for it), as fetch.lua's for_other; for this group's own
// re-driven entries it returns the fields without the marker.
func forOther(f []string, group string) ([]string, bool) {
	if len(f) >= 2 && f[0] == FieldRedriveTo {
		if f[1] == group {
			return f[2:], false
		}
		return nil, true
	}
	n := len(f)
	if n >= 4 && f[0] == "v" && f[n-2] == FieldTo && f[n-1] != group {
		return nil, true
	}
	return f, false
}

// fieldSlab hands out the field lists of one read's entries from a few
// allocations instead of one per entry.
type fieldSlab []string

func (s *fieldSlab) take(n int, hint int) []string {
	if len(*s) < n {
		*s = make([]string, max(n, hint))
	}
	f := (*s)[:n:n]
	*s = (*s)[n:]
	return f
}

// sdkFields is the number of fields of an entry the SDK wrote without
// metadata (v, k, d): the slab's size per entry.
const sdkFields = 6

// parseReadGroup sets, in out, the entries of an XREADGROUP reply (RESP2
// or RESP3, nil when nothing was read) for the requests of reqs whose
// streams it holds.
func parseReadGroup(v any, reqs []FetchRequest, out []FetchResult, slab *fieldSlab) error {
	next := 0 // RESP2 lists the streams in the order they were asked for
	var index map[string]int
	add := func(stream, entries any) error {
		key := str(stream)
		for next < len(reqs) && reqs[next].StreamKey != key {
			next++
		}
		if next == len(reqs) {
			if index == nil {
				index = make(map[string]int, len(reqs))
				for i, q := range reqs {
					index[q.StreamKey] = i
				}
			}
			i, ok := index[key]
			if !ok {
				return fmt.Errorf("XREADGROUP returned stream %q, not asked for", key)
			}
			next = i
		}
		raw, _ := entries.([]any)
		es := make([]Entry, 0, len(raw))
		for _, e := range raw {
			pair, ok := e.([]any)
			if !ok || len(pair) != 2 {
				return fmt.Errorf("unexpected XREADGROUP entry %v", e)
			}
			fv, _ := pair[1].([]any)
			fields := slab.take(len(fv), sdkFields*(len(raw)-len(es)))
			for j, f := range fv {
				fields[j] = str(f)
			}
			es = append(es, Entry{ID: str(pair[0]), Fields: fields})
		}
		out[next].Entries = es
		next++
		return nil
	}
	switch x := v.(type) {
	case nil:
		return nil
	case redis.Error:
		return x
	case map[any]any: // RESP3: stream -> entries (in no order)
		for k, e := range x {
			if err := add(k, e); err != nil {
				return err
			}
		}
	case []any: // RESP2: [[stream, entries], ...]
		for _, s := range x {
			pair, ok := s.([]any)
			if !ok || len(pair) != 2 {
				return fmt.Errorf("unexpected XREADGROUP reply %v", v)
			}
			if err := add(pair[0], pair[1]); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unexpected XREADGROUP reply %T", v)
	}
	return nil
}

// ackNative runs reqs as one native acknowledgement. It returns errAborted,
// or another error, when the caller must use the scripts (XACK is
// idempotent: running it again is harmless).
func ackNative(ctx context.Context, rdb redis.Cmdable, owner, group, ackID string, reqs []AckRequest) ([]AckResult, error) {
	n := len(reqs)
	watch := make([]any, 0, 1+n)
	watch = append(watch, "WATCH")
	keys := make([]string, 0, n)
	args := make([]any, 0, 1+n)
	args = append(args, owner)
	for _, r := range reqs {
		watch = append(watch, r.LeaseKey)
		keys = append(keys, r.LeaseKey)
		args = append(args, strconv.FormatInt(r.Epoch, 10))
	}
	pipe := rdb.Pipeline()
	pipe.Do(ctx, watch...)
	guard := pipe.Eval(ctx, guardAck, keys, args...)
	pipe.Do(ctx, "MULTI")
	for _, r := range reqs {
		// The ack's id, as ack.lua records it.
		pipe.Do(ctx, ackMarkArgs(r, ackID)...)
	}
	for _, r := range reqs {
		pipe.Do(ctx, xackArgs(group, r)...)
	}
	// An EXEC sent again by go-redis after its reply was lost finds the
	// lease moved on, or the ack done: the scripts then tell which, by the
	// ack's id.
	exec := pipe.Do(ctx, "EXEC")
	_, _ = pipe.Exec(ctx)
	v, err := exec.Slice()
	if err != nil {
		if errors.Is(err, redis.Nil) || redis.HasErrorPrefix(err, "EXECABORT") {
			return nil, errAborted // the EXEC ran nothing
		}
		return nil, err
	}
	if g, gerr := guard.Slice(); gerr != nil || len(g) == 0 || num(g[0]) != 1 {
		disableNative(rdb)
		return nil, fmt.Errorf("native ack: guard %v %v, and the ack ran", g, gerr)
	}
	if len(v) != 2*n {
		return nil, fmt.Errorf("native ack: EXEC returned %d replies for %d commands", len(v), 2*n)
	}
	out := make([]AckResult, n)
	for i, x := range v[n:] {
		if e, ok := x.(redis.Error); ok {
			return nil, e
		}
		out[i].Acked = num(x)
	}
	return out, nil
}

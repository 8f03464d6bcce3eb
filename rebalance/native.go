package rebalance

import (
	"context"
	"errors"
	"fmt"
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
// Every lease gets the retry marker (the fetch id), as with fetch.lua: a
// retried call that finds it knows its first run read every partition, and
// one whose fallback runs the scripts (a lease moved meanwhile) has each
// partition's marker checked by fetch.lua.
func fetchNative(ctx context.Context, rdb redis.Cmdable, owner, group string, redeliverAfter time.Duration, reqs []FetchRequest) ([]FetchResult, error) {
	n := len(reqs)
	keys := make([]any, 0, 1+n)
	keys = append(keys, "WATCH")
	gkeys := make([]string, 0, 2*n)
	for _, r := range reqs {
		keys = append(keys, r.LeaseKey)
		gkeys = append(gkeys, r.LeaseKey)
	}
	for _, r := range reqs {
		gkeys = append(gkeys, r.StreamKey)
	}
	idle := ""
	if redeliverAfter != NeverDue {
		idle = strconv.FormatInt(redeliverAfter.Milliseconds(), 10)
	}
	id := reqs[0].FetchID
	gargs := make([]any, 0, 4+n)
	gargs = append(gargs, owner, group, idle, id)
	for _, r := range reqs {
		gargs = append(gargs, strconv.FormatInt(r.Epoch, 10))
	}
	// One XREADGROUP per distinct count (a batch is shared out evenly, so
	// one or two), over every stream of that count.
	var counts []int
	byCount := make(map[int][]int)
	for i, r := range reqs {
		if _, ok := byCount[r.Count]; !ok {
			counts = append(counts, r.Count)
		}
		byCount[r.Count] = append(byCount[r.Count], i)
	}

	pipe := rdb.Pipeline()
	pipe.Do(ctx, keys...)
	guard := pipe.Eval(ctx, guardFetch, gkeys, gargs...)
	pipe.Do(ctx, "MULTI")
	for _, r := range reqs {
		pipe.Do(ctx, "HSET", r.LeaseKey, "r", id)
	}
	for _, c := range counts {
		idx := byCount[c]
		a := make([]any, 0, 7+2*len(idx))
		a = append(a, "XREADGROUP", "GROUP", group, owner, "COUNT", c, "STREAMS")
		for _, i := range idx {
			a = append(a, reqs[i].StreamKey)
		}
		for range idx {
			a = append(a, ">")
		}
		pipe.Do(ctx, a...)
	}
	exec := pipe.Do(ctx, "EXEC")
	_, _ = pipe.Exec(ctx)

	v, err := exec.Slice()
	if err != nil {
		if redis.HasErrorPrefix(err, "EXECABORT") {
			// A queued command was refused (out of memory, Redis refuses
			// every command queued in a MULTI): the EXEC ran nothing.
			return nil, errAborted
		}
		if !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("%w: %v", errUnknown, err)
		}
		if g, gerr := guard.Slice(); gerr == nil && len(g) == 3 && str(g[2]) == "retry" {
			return nil, errUnknown
		}
		return nil, errAborted
	}
	if g, gerr := guard.Slice(); gerr != nil || len(g) == 0 || num(g[0]) != 1 {
		// The guard did not run (refused), yet the EXEC ran unchecked (a
		// refusal by the guard writes a lease, which aborts it). Never
		// again on this client; the read's outcome is unknown.
		disableNative(rdb)
		return nil, fmt.Errorf("%w: guard %v %v, and the read ran", errUnknown, g, gerr)
	}
	if len(v) != n+len(counts) {
		return nil, fmt.Errorf("%w: EXEC returned %d replies for %d commands", errUnknown, len(v), n+len(counts))
	}
	got := make(map[string][]Entry, n)
	for _, x := range v[n:] {
		if err := parseReadGroup(x, got); err != nil {
			return nil, fmt.Errorf("%w: %v", errUnknown, err)
		}
	}
	out := make([]FetchResult, n)
	var skipped []AckRequest
	for i, r := range reqs {
		entries := got[r.StreamKey]
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
		_ = ackScripts(ctx, rdb, owner, group, skipped)
	}
	return out, nil
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

// parseReadGroup adds the entries of an XREADGROUP reply (RESP2 or RESP3,
// nil when nothing was read) to got, by stream key.
func parseReadGroup(v any, got map[string][]Entry) error {
	add := func(stream, entries any) error {
		raw, _ := entries.([]any)
		out := make([]Entry, 0, len(raw))
		for _, e := range raw {
			pair, ok := e.([]any)
			if !ok || len(pair) != 2 {
				return fmt.Errorf("unexpected XREADGROUP entry %v", e)
			}
			fv, _ := pair[1].([]any)
			fields := make([]string, len(fv))
			for j, f := range fv {
				fields[j] = str(f)
			}
			out = append(out, Entry{ID: str(pair[0]), Fields: fields})
		}
		got[str(stream)] = out
		return nil
	}
	switch x := v.(type) {
	case nil:
		return nil
	case redis.Error:
		return x
	case map[any]any: // RESP3: stream -> entries
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
func ackNative(ctx context.Context, rdb redis.Cmdable, owner, group string, reqs []AckRequest) ([]AckResult, error) {
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
		a := make([]any, 0, 3+len(r.IDs))
		a = append(a, "XACK", r.StreamKey, group)
		for _, id := range r.IDs {
			a = append(a, id)
		}
		pipe.Do(ctx, a...)
	}
	// Sent once (see noRetry): an EXEC that ran, sent again by go-redis
	// after its reply was lost, would find the lease moved and hide that.
	exec := redis.NewCmd(ctx, "EXEC")
	_ = pipe.Process(ctx, noRetry{exec})
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
	if len(v) != n {
		return nil, fmt.Errorf("native ack: EXEC returned %d replies for %d commands", len(v), n)
	}
	out := make([]AckResult, n)
	for i, x := range v {
		if e, ok := x.(redis.Error); ok {
			return nil, e
		}
		out[i].Acked = num(x)
	}
	return out, nil
}

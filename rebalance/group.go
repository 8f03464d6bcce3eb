package rebalance

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Membership: members heartbeat into a sorted set scored by their session
// expiry, taken from the Redis server's clock. The group's assignment is a
// hash holding its generation and each member's partitions. A member learns
// of a new generation, and of its partitions in it, from its heartbeat reply.
// Whoever sees that a rebalance is needed takes the group's coordinator lock,
// computes Assign from the previous assignment and the live members, and
// commits it with a compare-and-set on the generation.

// Group names the Redis keys of one consumer group's coordination.
type Group struct {
	Members     string // zset member -> session expiry (ms, server time)
	Assignment  string // hash gen, dirty, inc, m:<member> -> "p,p,...", hb:<member> -> last heartbeat (ms, server time)
	Coordinator string // the coordinator lock
}

// Errors of Rebalance.

var (
	// ErrCoordinatorBusy means the caller does not hold the coordinator
	// lock: another member holds it (it is rebalancing the group now), or
	// the caller's lock expired before its commit. Nothing was written.
	ErrCoordinatorBusy = errors.New("rebalance: coordinator lock not held by the caller")
	// ErrGenerationChanged means the assignment changed between the snapshot
	// and the commit; nothing was written.
	ErrGenerationChanged = errors.New("rebalance: generation changed during rebalance")
)

// Beat is what a heartbeat learned.
type Beat struct {
	Gen           int64 // the group's current generation
	NeedRebalance bool  // the assignment does not match the live members
	// InAssignment reports whether the member is in the current assignment;
	// Partitions is its share, set only when Gen or Incarnation differs
	// from what the member sent.
	InAssignment bool
	Partitions   []int
	// Incarnation identifies the assignment's history: it changes when the
	// assignment was lost and created anew, and generations restart.
	Incarnation string
	Err         error
}

// Tick is one round trip of a member's background loop: its heartbeat, the
// renewal of the leases it holds and the acquisition of the ones it lacks.
type Tick struct {
	Group     Group
	Member    string
	Session   time.Duration // session timeout, also the lease TTL
	KnownGen  int64
	KnownInc  string // the incarnation KnownGen belongs to
	Heartbeat bool   // false while leaving: renew only
	Renew     []Held
	Acquire   []string // lease keys
}

// TickResult holds the outcome of each part of a Tick.
type TickResult struct {
	Beat    Beat
	Renewed []Outcome
	Grants  []Grant
}

// RunTick runs t in one pipelined round trip. On a single Redis node the
// heartbeat and the renewal of every lease are one script call.
func RunTick(ctx context.Context, rdb redis.Cmdable, t Tick) TickResult {
	var b batch
	_, single := rdb.(*redis.Client)
	beatKeys := []string{t.Group.Members, t.Group.Assignment}
	beatArgs := []any{t.Member, t.Session.Milliseconds(), strconv.FormatInt(t.KnownGen, 10), t.KnownInc, "0"}
	if t.Heartbeat {
		beatArgs[4] = "1"
	}
	var renew []*call
	if single {
		for _, h := range t.Renew {
			beatKeys = append(beatKeys, h.Key)
			beatArgs = append(beatArgs, strconv.FormatInt(h.Epoch, 10))
		}
	} else {
		// A cluster spreads the leases over slots: one script each.
		renew = make([]*call, len(t.Renew))
		for i, h := range t.Renew {
			renew[i] = b.add(renewScript, []string{h.Key}, t.Member, strconv.FormatInt(h.Epoch, 10), t.Session.Milliseconds())
		}
	}
	var hb *call
	if t.Heartbeat || single && len(t.Renew) > 0 {
		hb = b.add(heartbeatScript, beatKeys, beatArgs...)
	}
	acq := make([]*call, len(t.Acquire))
	for i, k := range t.Acquire {
		acq[i] = b.add(acquireScript, []string{k}, t.Member, t.Session.Milliseconds())
	}
	b.exec(ctx, rdb)

	var res TickResult
	var renewed []any
	if hb != nil {
		res.Beat, renewed = parseBeat(hb.cmd)
	}
	res.Renewed = make([]Outcome, len(t.Renew))
	for i := range res.Renewed {
		switch {
		case !single:
			res.Renewed[i] = parseRenew(renew[i].cmd)
		case res.Beat.Err != nil:
			res.Renewed[i].Err = res.Beat.Err
		case len(renewed) != len(t.Renew):
			res.Renewed[i].Err = fmt.Errorf("renew: unexpected reply %v", renewed)
		default:
			res.Renewed[i].Fenced = num(renewed[i]) != 1
		}
	}
	res.Grants = make([]Grant, len(acq))
	for i, c := range acq {
		res.Grants[i] = parseGrant(c.cmd)
	}
	if !t.Heartbeat {
		res.Beat = Beat{}
	}
	return res
}

func parseRenew(cmd *redis.Cmd) Outcome {
	v, err := cmd.Slice()
	switch {
	case err != nil:
		return Outcome{Err: err}
	case len(v) == 0:
		return Outcome{Err: fmt.Errorf("renew: empty reply")}
	default:
		return Outcome{Fenced: num(v[0]) != 1}
	}
}

// parseBeat returns the heartbeat's outcome and the renewal outcomes it
// carries.
func parseBeat(cmd *redis.Cmd) (Beat, []any) {
	v, err := cmd.Slice()
	if err != nil {
		return Beat{Err: err}, nil
	}
	if len(v) != 6 {
		return Beat{Err: fmt.Errorf("heartbeat: unexpected reply %v", v)}, nil
	}
	parts, err := parsePartitions(str(v[2]))
	if err != nil {
		return Beat{Err: err}, nil
	}
	return Beat{Gen: num(v[0]), NeedRebalance: num(v[1]) == 1, Partitions: parts, InAssignment: num(v[3]) == 1, Incarnation: str(v[4])}, asSlice(v[5])
}

func parsePartitions(s string) ([]int, error) {
	if s == "" {
		return []int{}, nil
	}
	f := strings.Split(s, ",")
	out := make([]int, len(f))
	for i, x := range f {
		n, err := strconv.Atoi(x)
		if err != nil {
			return nil, fmt.Errorf("rebalance: bad partition list %q", s)
		}
		out[i] = n
	}
	return out, nil
}

func formatPartitions(ps []int) string {
	var sb strings.Builder
	for i, p := range ps {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.Itoa(p))
	}
	return sb.String()
}

// Snapshot is the group's state as one script saw it.
type Snapshot struct {
	Gen        int64
	Live       []string // members whose session has not expired, sorted
	Assignment Assignment
}

// ReadSnapshot reads the group's generation, live members and assignment
// atomically.
func ReadSnapshot(ctx context.Context, rdb redis.Cmdable, g Group) (Snapshot, error) {
	var b batch
	c := b.add(snapshotScript, []string{g.Members, g.Assignment})
	b.exec(ctx, rdb)
	v, err := c.cmd.Slice()
	if err != nil {
		return Snapshot{}, err
	}
	if len(v) != 3 {
		return Snapshot{}, fmt.Errorf("snapshot: unexpected reply %v", v)
	}
	s := Snapshot{Gen: num(v[0]), Assignment: Assignment{}}
	for _, m := range asSlice(v[1]) {
		s.Live = append(s.Live, str(m))
	}
	slices.Sort(s.Live)
	kv := asSlice(v[2])
	for i := 0; i+1 < len(kv); i += 2 {
		f := str(kv[i])
		if member, ok := strings.CutPrefix(f, "m:"); ok {
			ps, err := parsePartitions(str(kv[i+1]))
			if err != nil {
				return Snapshot{}, err
			}
			s.Assignment[member] = ps
		}
	}
	return s, nil
}

// Rebalance computes the group's next assignment of partitions over its live
// members and commits it, as the holder of the coordinator lock (token
// identifies the caller; the lock expires after lockTTL should the caller
// die). It returns the committed generation and the number of partitions
// that changed owner. ErrCoordinatorBusy and ErrGenerationChanged mean
// another member got there first, or the caller's lock expired before its
// commit: nothing was written.
func Rebalance(ctx context.Context, rdb redis.Cmdable, g Group, token string, partitions int, lockTTL time.Duration) (gen int64, moved int, err error) {
	var lb batch
	lock := lb.add(lockScript, []string{g.Coordinator}, token, max(lockTTL.Milliseconds(), 1))
	lb.exec(ctx, rdb)
	taken, err := lock.cmd.Int64()
	if err != nil {
		return 0, 0, fmt.Errorf("rebalance: lock: %w", err)
	}
	if taken != 1 {
		return 0, 0, ErrCoordinatorBusy
	}
	defer func() {
		var b batch
		b.add(unlockScript, []string{g.Coordinator}, token)
		b.exec(context.WithoutCancel(ctx), rdb)
	}()
	snap, err := ReadSnapshot(ctx, rdb, g)
	if err != nil {
		return 0, 0, err
	}
	next := Assign(snap.Assignment, snap.Live, partitions)
	gen, err = Commit(ctx, rdb, g, token, snap.Gen, next)
	if err != nil {
		return gen, 0, err
	}
	return gen, Moves(snap.Assignment, next), nil
}

// Commit writes next as the group's assignment if the caller still holds
// the coordinator lock under token and the group is still at generation
// expected, evicting the expired members that next leaves out, and returns
// the new generation. Otherwise it writes nothing and returns the current
// generation with ErrCoordinatorBusy (the lock is not the caller's: it
// expired, say, while the caller was paused) or ErrGenerationChanged.
func Commit(ctx context.Context, rdb redis.Cmdable, g Group, token string, expected int64, next Assignment) (int64, error) {
	members := make([]string, 0, len(next))
	for m := range next {
		members = append(members, m)
	}
	slices.Sort(members)
	args := make([]any, 0, 2+2*len(members))
	args = append(args, token, strconv.FormatInt(expected, 10))
	for _, m := range members {
		args = append(args, m, formatPartitions(next[m]))
	}
	var b batch
	c := b.add(commitScript, []string{g.Members, g.Assignment, g.Coordinator}, args...)
	b.exec(ctx, rdb)
	v, err := c.cmd.Slice()
	if err != nil {
		return 0, fmt.Errorf("rebalance: commit: %w", err)
	}
	if len(v) < 2 {
		return 0, fmt.Errorf("rebalance: commit: unexpected reply %v", v)
	}
	switch {
	case num(v[0]) == 1:
	case len(v) == 3 && str(v[2]) == "lock":
		return num(v[1]), ErrCoordinatorBusy
	default:
		return num(v[1]), ErrGenerationChanged
	}
	return num(v[1]), nil
}

// Leave removes member from the group and marks the assignment for a
// rebalance, which the next heartbeat of any member (or the caller's own
// Rebalance) performs.
func Leave(ctx context.Context, rdb redis.Cmdable, g Group, member string) error {
	var b batch
	c := b.add(leaveScript, []string{g.Members, g.Assignment}, member)
	b.exec(ctx, rdb)
	return c.cmd.Err()
}

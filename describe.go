package segmenter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/rebalance"
)

// Operators' views of a namespace: what kafka-consumer-groups --describe
// shows for Kafka. They only read (XINFO, XPENDING, XLEN, HMGET and a
// read-only script): looking never changes a group. Ages and expiries are
// taken from the Redis server's clock (TIME), never from the caller's.

// LagUnknown is the Lag of a partition whose lag Redis cannot tell (for
// instance after XDEL of entries the group had not read, or before the
// group's first read after XGROUP SETID): Redis 7's XINFO GROUPS reports no
// lag then.
const LagUnknown = -1

// GroupDescription is a consumer group of a stream as Redis holds it, read
// by DescribeGroup.
type GroupDescription struct {
	Stream, Group string
	// ServerTime is the Redis server's clock when the partitions were read;
	// every age and expiry below is relative to it.
	ServerTime time.Time
	// Generation is the group's assignment generation (0 before the
	// first).
	Generation int64
	// Members are the group's members, by ID, including those whose
	// session expired and that no rebalance evicted yet.
	Members []MemberDescription
	// Partitions has one entry per partition, in order.
	Partitions []PartitionDescription
	// Lag sums the lag of the partitions whose lag is known; LagUnknown
	// counts the others.
	Lag        int64
	LagUnknown int
	// Pending sums the partitions' pending messages (delivered, not acked).
	Pending int64
	// DeadLetters sums the partitions' dead letters for the group.
	DeadLetters int64
}

// MemberDescription is one member of a group.
type MemberDescription struct {
	ID string
	// Live reports whether its session has not expired.
	Live bool
	// HeartbeatAge is the time since its last heartbeat, or -1 when Redis
	// holds none (a member of a release that did not record it).
	HeartbeatAge time.Duration
	// SessionExpiresIn is the time left of its session; negative when it
	// expired that long ago.
	SessionExpiresIn time.Duration
	// Assigned is its share of the partitions in the current generation.
	Assigned []int
	// Leases are the partitions whose lease it holds now (unexpired): during
	// a rebalance they differ from Assigned until the hand-over is done.
	Leases []int
}

// PartitionDescription is one partition of a stream for one group.
type PartitionDescription struct {
	Partition int
	// Length is the number of entries in the partition.
	Length int64
	// LogEnd is the ID of the last entry ever added to the partition
	// ("0-0" before the first).
	LogEnd string
	// LastDelivered is the ID of the last entry delivered to the group
	// ("0-0" before the first).
	LastDelivered string
	// Lag is the number of entries after LastDelivered, not yet delivered
	// to the group; LagUnknown when Redis cannot tell. Kafka's LAG counts
	// the delivered but unacked messages too: that is Lag + Pending.
	Lag int64
	// Pending is the number of messages delivered to the group and not yet
	// acknowledged.
	Pending int64
	// OldestPendingID is the ID of the oldest pending message ("" when none
	// is pending); OldestPendingAge the time since it was sent (the time in
	// its ID), OldestPendingIdle the time since it was last delivered, and
	// OldestPendingDeliveries how many times it was delivered.
	OldestPendingID         string
	OldestPendingAge        time.Duration
	OldestPendingIdle       time.Duration
	OldestPendingDeliveries int64
	// Owner is the consumer the partition's lease names ("" when the lease
	// is free or was never granted), Epoch its epoch, and LeaseExpiresIn
	// the time left of it: negative when it expired that long ago (the
	// owner is gone, or a new owner has not taken it yet).
	Owner          string
	Epoch          int64
	LeaseExpiresIn time.Duration
	// AssignedTo is the member the current generation gives the partition
	// ("" when none: no member yet).
	AssignedTo string
	// DeadLetters is the number of the group's dead letters from the
	// partition.
	DeadLetters int64
	// GroupMissing reports that the consumer group does not exist on the
	// partition in Redis (the key was deleted or the server flushed): the
	// figures above are then those of the partition alone.
	GroupMissing bool
}

// Held reports whether the partition's lease is held now.
func (p PartitionDescription) Held() bool { return p.Owner != "" && p.LeaseExpiresIn > 0 }

// DescribeGroup reads the state of group on stream: every partition's
// position, lag, pending messages, lease and dead letters, and the group's
// members with their heartbeat age, as of the server's clock. It changes
// nothing. It returns ErrStreamNotFound for a stream never registered, and
// ErrGroupNotFound for a group that never consumed the stream.
//
// It costs two round trips: a read-only script for the members, and one
// pipeline of XINFO STREAM, XINFO GROUPS, XPENDING, XLEN and HMGET per
// partition.
func (s *Segmenter) DescribeGroup(ctx context.Context, stream, group string) (*GroupDescription, error) {
	meta, err := s.checkDeadLetterArgs(ctx, stream, group)
	if err != nil {
		return nil, err
	}
	g := rebalance.Group{Members: s.keys.Members(stream, group), Assignment: s.keys.Assignment(stream, group)}
	members, err := rebalance.ReadMembers(ctx, s.rdb, g)
	if err != nil {
		return nil, fmt.Errorf("segmenter: describe stream %q group %q: members: %w", stream, group, err)
	}

	n := meta.partitions
	pipe := s.rdb.Pipeline()
	timeCmd := pipe.Time(ctx)
	known := pipe.SIsMember(ctx, s.keys.Groups(stream), group)
	infos := make([]*redis.XInfoStreamCmd, n)
	groups := make([]*redis.XInfoGroupsCmd, n)
	oldest := make([]*redis.XPendingExtCmd, n)
	dlqs := make([]*redis.IntCmd, n)
	leases := make([]*redis.SliceCmd, n)
	for p := range n {
		key := s.keys.Partition(stream, p)
		infos[p] = pipe.XInfoStream(ctx, key)
		groups[p] = pipe.XInfoGroups(ctx, key)
		oldest[p] = pipe.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: key, Group: group, Start: "-", End: "+", Count: 1})
		dlqs[p] = pipe.XLen(ctx, s.keys.DeadLetters(stream, p, group))
		leases[p] = pipe.HMGet(ctx, s.keys.Lease(stream, p, group), "o", "e", "x")
	}
	_, _ = pipe.Exec(ctx) // errors checked one by one
	fail := func(p int, what string, err error) error {
		return &PartitionError{Stream: stream, Group: group, Partition: p, Err: fmt.Errorf("describe: %s: %w", what, err)}
	}
	now, err := timeCmd.Result()
	if err != nil {
		return nil, fmt.Errorf("segmenter: describe stream %q group %q: server time: %w", stream, group, err)
	}
	d := &GroupDescription{Stream: stream, Group: group, ServerTime: now, Generation: members.Gen}
	owners := make(map[int]string)
	for _, m := range members.Members {
		for _, p := range m.Partitions {
			owners[p] = m.ID
		}
	}
	found := known.Val()
	for p := range n {
		pd := PartitionDescription{Partition: p, LogEnd: "0-0", LastDelivered: "0-0", Lag: LagUnknown, AssignedTo: owners[p]}
		switch info, err := infos[p].Result(); {
		case err == nil:
			pd.Length, pd.LogEnd = info.Length, info.LastGeneratedID
		case !isNoSuchKey(err):
			return nil, fail(p, "XINFO STREAM", err)
		}
		gs, err := groups[p].Result()
		if err != nil && !isNoSuchKey(err) {
			return nil, fail(p, "XINFO GROUPS", err)
		}
		pd.GroupMissing = true
		for _, gi := range gs {
			if gi.Name == group {
				pd.GroupMissing = false
				pd.LastDelivered, pd.Lag, pd.Pending = gi.LastDeliveredID, gi.Lag, gi.Pending
				found = true
			}
		}
		if pd.Lag < 0 {
			pd.Lag = LagUnknown
		}
		if !pd.GroupMissing && pd.Pending > 0 {
			pe, err := oldest[p].Result()
			if err != nil {
				return nil, fail(p, "XPENDING", err)
			}
			if len(pe) > 0 {
				pd.OldestPendingID = pe[0].ID
				pd.OldestPendingAge = max(now.Sub(time.UnixMilli(entryIDMillis(pe[0].ID))), 0)
				pd.OldestPendingIdle = pe[0].Idle
				pd.OldestPendingDeliveries = pe[0].RetryCount
			}
		}
		if pd.DeadLetters, err = dlqs[p].Result(); err != nil {
			return nil, fail(p, "XLEN of the dead letters", err)
		}
		l, err := leases[p].Result()
		if err != nil {
			return nil, fail(p, "HMGET of the lease", err)
		}
		pd.Owner, pd.Epoch, pd.LeaseExpiresIn = parseLeaseFields(l, now)
		d.Partitions = append(d.Partitions, pd)
		d.Pending += pd.Pending
		d.DeadLetters += pd.DeadLetters
		if pd.Lag == LagUnknown {
			d.LagUnknown++
		} else {
			d.Lag += pd.Lag
		}
	}
	if !found && len(members.Members) == 0 {
		return nil, fmt.Errorf("%w: stream %q has no group %q in namespace %q", ErrGroupNotFound, stream, group, s.cfg.Namespace)
	}
	for _, m := range members.Members {
		md := MemberDescription{
			ID:               m.ID,
			Live:             m.Expiry.After(members.Now),
			HeartbeatAge:     -1,
			SessionExpiresIn: m.Expiry.Sub(members.Now),
			Assigned:         slices.Clone(m.Partitions),
		}
		if !m.LastBeat.IsZero() {
			md.HeartbeatAge = max(members.Now.Sub(m.LastBeat), 0)
		}
		if md.Assigned == nil {
			md.Assigned = []int{}
		}
		md.Leases = []int{}
		for _, pd := range d.Partitions {
			if pd.Owner == m.ID && pd.Held() {
				md.Leases = append(md.Leases, pd.Partition)
			}
		}
		d.Members = append(d.Members, md)
	}
	return d, nil
}

// parseLeaseFields reads the reply of HMGET lease o e x: the owner ("" when
// free or never granted), the epoch, and the time left at now.
func parseLeaseFields(vals []any, now time.Time) (owner string, epoch int64, left time.Duration) {
	field := func(i int) string {
		if i < len(vals) {
			if s, ok := vals[i].(string); ok {
				return s
			}
		}
		return ""
	}
	owner = field(0)
	epoch, _ = strconv.ParseInt(field(1), 10, 64)
	if owner != "" {
		if x, err := strconv.ParseInt(field(2), 10, 64); err == nil {
			left = time.UnixMilli(x).Sub(now)
		}
	}
	return owner, epoch, left
}

func isNoSuchKey(err error) bool { return err != nil && redis.HasErrorPrefix(err, "no such key") } // HasErrorPrefix drops "ERR "

// GroupLag is the lag of one consumer group of a stream, as Lag reads it.
type GroupLag struct {
	Stream, Group string
	// Lag sums the lag of the partitions whose lag is known (entries not
	// yet delivered to the group); LagUnknown counts the others.
	Lag        int64
	LagUnknown int
	// Pending sums the messages delivered to the group and not acked.
	Pending int64
	// Worst is the partition with the most lag (then the most pending
	// messages), -1 when the stream has no partition where the group
	// exists.
	Worst int
	// Partitions has the lag of each partition where the group exists, in
	// order.
	Partitions []PartitionLag
}

// PartitionLag is the lag and pending messages of one partition for one
// group.
type PartitionLag struct {
	Partition int
	Lag       int64 // LagUnknown when Redis cannot tell
	Pending   int64
}

// worse orders partitions by lag (unknown last), then by pending messages.
func worse(a, b PartitionLag) bool {
	return cmp.Or(cmp.Compare(a.Lag, b.Lag), cmp.Compare(a.Pending, b.Pending)) > 0
}

// Lag returns the lag of every consumer group of stream, by group name: the
// entries not yet delivered and the messages pending, per partition and in
// total, with the worst partition. It changes nothing and costs one round
// trip (XINFO GROUPS of every partition). Stream.Lag does the same for a
// Stream in hand.
func (s *Segmenter) Lag(ctx context.Context, stream string) ([]GroupLag, error) {
	meta, err := s.lookupStream(ctx, stream)
	if err != nil {
		return nil, err
	}
	return s.lag(ctx, stream, meta.partitions, "")
}

// Lag returns the lag of every consumer group of the stream, as
// Segmenter.Lag does.
func (st *Stream) Lag(ctx context.Context) ([]GroupLag, error) {
	if err := st.seg.checkOpen(); err != nil {
		return nil, err
	}
	return st.seg.lag(ctx, st.name, st.meta.partitions, "")
}

// lag reads the lag of the groups of stream (only group, when not "").
func (s *Segmenter) lag(ctx context.Context, stream string, partitions int, group string) ([]GroupLag, error) {
	pipe := s.rdb.Pipeline()
	registered := pipe.SMembers(ctx, s.keys.Groups(stream))
	infos := make([]*redis.XInfoGroupsCmd, partitions)
	for p := range partitions {
		infos[p] = pipe.XInfoGroups(ctx, s.keys.Partition(stream, p))
	}
	_, _ = pipe.Exec(ctx)
	names, err := registered.Result()
	if err != nil {
		return nil, fmt.Errorf("segmenter: lag of stream %q: groups: %w", stream, err)
	}
	byGroup := make(map[string]*GroupLag)
	get := func(g string) *GroupLag {
		gl, ok := byGroup[g]
		if !ok {
			gl = &GroupLag{Stream: stream, Group: g, Worst: -1, Partitions: []PartitionLag{}}
			byGroup[g] = gl
		}
		return gl
	}
	for _, g := range names {
		if group == "" || g == group {
			get(g)
		}
	}
	for p, cmd := range infos {
		gs, err := cmd.Result()
		if err != nil && !isNoSuchKey(err) {
			return nil, &PartitionError{Stream: stream, Partition: p, Err: fmt.Errorf("lag: XINFO GROUPS: %w", err)}
		}
		for _, gi := range gs {
			if group != "" && gi.Name != group {
				continue
			}
			gl := get(gi.Name)
			pl := PartitionLag{Partition: p, Lag: gi.Lag, Pending: gi.Pending}
			if pl.Lag < 0 {
				pl.Lag = LagUnknown
				gl.LagUnknown++
			} else {
				gl.Lag += pl.Lag
			}
			gl.Pending += pl.Pending
			if gl.Worst < 0 || worse(pl, gl.Partitions[gl.worstIndex()]) {
				gl.Worst = p
			}
			gl.Partitions = append(gl.Partitions, pl)
		}
	}
	out := make([]GroupLag, 0, len(byGroup))
	for _, gl := range byGroup {
		out = append(out, *gl)
	}
	slices.SortFunc(out, func(a, b GroupLag) int { return cmp.Compare(a.Group, b.Group) })
	return out, nil
}

// worstIndex returns the index in g.Partitions of g.Worst.
func (g *GroupLag) worstIndex() int {
	return slices.IndexFunc(g.Partitions, func(p PartitionLag) bool { return p.Partition == g.Worst })
}

// Lag returns the lag and pending messages of the partitions the consumer
// holds now, in partition order, in one round trip: what a metrics adapter
// exports per partition (each consumer of a group the partitions it holds,
// so that the sum over the group's consumers is the group's). It changes
// nothing.
func (c *Consumer) Lag(ctx context.Context) ([]PartitionLag, error) {
	select {
	case <-c.done:
		return nil, ErrClosed
	default:
	}
	held := c.Assignment()
	out := make([]PartitionLag, 0, len(held))
	if len(held) == 0 {
		return out, nil
	}
	pipe := c.seg.rdb.Pipeline()
	cmds := make([]*redis.XInfoGroupsCmd, len(held))
	for i, o := range held {
		cmds[i] = pipe.XInfoGroups(ctx, c.stream.keys[o.Partition])
	}
	_, _ = pipe.Exec(ctx)
	var errs []error
	for i, cmd := range cmds {
		p := held[i].Partition
		gs, err := cmd.Result()
		if err != nil {
			errs = append(errs, &PartitionError{Stream: c.stream.name, Group: c.group, Partition: p, Err: fmt.Errorf("lag: %w", err)})
			continue
		}
		for _, gi := range gs {
			if gi.Name == c.group {
				lag := gi.Lag
				if lag < 0 {
					lag = LagUnknown
				}
				out = append(out, PartitionLag{Partition: p, Lag: lag, Pending: gi.Pending})
			}
		}
	}
	return out, errors.Join(errs...)
}

// StreamInfo is a registered stream, as Streams lists it.
type StreamInfo struct {
	Name               string
	Partitions         int
	MaxLenPerPartition int64 // 0: unbounded
	Retention          Retention
	Partitioner        string
	// Groups are the consumer groups registered on the stream, sorted.
	Groups []string
	// Length is the number of entries in all its partitions.
	Length int64
}

// Streams lists the streams registered in the namespace, by name, with
// their groups and length. It changes nothing and costs two round trips.
func (s *Segmenter) Streams(ctx context.Context) ([]StreamInfo, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	all, err := s.rdb.HGetAll(ctx, s.keys.Streams()).Result()
	if err != nil {
		return nil, fmt.Errorf("segmenter: list streams: %w", err)
	}
	names := slices.Sorted(maps.Keys(all))
	out := make([]StreamInfo, 0, len(names))
	var errs []error
	for _, name := range names {
		m, err := decodeMeta(all[name])
		if err != nil {
			errs = append(errs, fmt.Errorf("stream %q: %w", name, err))
			continue
		}
		out = append(out, StreamInfo{Name: name, Partitions: m.partitions, MaxLenPerPartition: m.maxLen, Retention: m.retention, Partitioner: m.partitioner})
	}
	pipe := s.rdb.Pipeline()
	groups := make([]*redis.StringSliceCmd, len(out))
	lens := make([][]*redis.IntCmd, len(out))
	for i, st := range out {
		groups[i] = pipe.SMembers(ctx, s.keys.Groups(st.Name))
		lens[i] = make([]*redis.IntCmd, st.Partitions)
		for p := range st.Partitions {
			lens[i][p] = pipe.XLen(ctx, s.keys.Partition(st.Name, p))
		}
	}
	if len(out) > 0 {
		_, _ = pipe.Exec(ctx)
	}
	for i := range out {
		g, err := groups[i].Result()
		if err != nil {
			return nil, fmt.Errorf("segmenter: groups of stream %q: %w", out[i].Name, err)
		}
		slices.Sort(g)
		out[i].Groups = g
		for p, cmd := range lens[i] {
			n, err := cmd.Result()
			if err != nil {
				return nil, fmt.Errorf("segmenter: stream %q partition %d: XLEN: %w", out[i].Name, p, err)
			}
			out[i].Length += n
		}
	}
	return out, errors.Join(errs...)
}

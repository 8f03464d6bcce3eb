package rebalance

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

var membersScript = load("members")

// Member is one member of a group as Redis holds it.
type Member struct {
	ID string
	// Expiry is when its session expires (server time); a member whose
	// session expired stays listed until a rebalance evicts it.
	Expiry time.Time
	// LastBeat is its last heartbeat (server time); zero when unknown (a
	// member of a release that did not record it).
	LastBeat time.Time
	// Assigned reports whether the group's assignment names the member;
	// Partitions is its share there.
	Assigned   bool
	Partitions []int
}

// Members is a group's membership and assignment, read in one script.
type Members struct {
	Now     time.Time // the server's clock when it was read
	Gen     int64     // the assignment's generation, 0 before the first
	Members []Member  // by ID
}

// ReadMembers reads the group's members (expired or not, with their session
// expiry and last heartbeat) and its assignment atomically, with the
// server's time. It writes nothing.
func ReadMembers(ctx context.Context, rdb redis.Cmdable, g Group) (Members, error) {
	var b batch
	c := b.add(membersScript, []string{g.Members, g.Assignment})
	b.exec(ctx, rdb)
	v, err := c.cmd.Slice()
	if err != nil {
		return Members{}, err
	}
	if len(v) != 3 {
		return Members{}, fmt.Errorf("members: unexpected reply %v", v)
	}
	out := Members{Now: time.UnixMilli(num(v[0]))}
	byID := make(map[string]*Member)
	get := func(id string) *Member {
		m, ok := byID[id]
		if !ok {
			m = &Member{ID: id}
			byID[id] = m
		}
		return m
	}
	zs := asSlice(v[1])
	for i := 0; i+1 < len(zs); i += 2 {
		score, err := strconv.ParseFloat(str(zs[i+1]), 64)
		if err != nil {
			return Members{}, fmt.Errorf("members: bad session expiry %q", str(zs[i+1]))
		}
		get(str(zs[i])).Expiry = time.UnixMilli(int64(score))
	}
	kv := asSlice(v[2])
	beats := make(map[string]time.Time)
	for i := 0; i+1 < len(kv); i += 2 {
		f, val := str(kv[i]), str(kv[i+1])
		switch {
		case f == "gen":
			out.Gen, _ = strconv.ParseInt(val, 10, 64)
		case strings.HasPrefix(f, "m:"):
			ps, err := parsePartitions(val)
			if err != nil {
				return Members{}, err
			}
			m := get(f[2:])
			m.Assigned, m.Partitions = true, ps
		case strings.HasPrefix(f, "hb:"):
			if ms, err := strconv.ParseInt(val, 10, 64); err == nil {
				beats[f[3:]] = time.UnixMilli(ms)
			}
		}
	}
	// Only for members listed: a field left behind by a member evicted
	// meanwhile says nothing of the group.
	for id, at := range beats {
		if m, ok := byID[id]; ok {
			m.LastBeat = at
		}
	}
	for _, m := range byID {
		out.Members = append(out.Members, *m)
	}
	slices.SortFunc(out.Members, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

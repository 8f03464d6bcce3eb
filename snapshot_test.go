package segmenter_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/internal/redistest"
)

// snapshot returns every key of namespace ns with its type and content as
// text, so that any write into the namespace (a new key, a change to an
// existing one, a key removed) changes it. Streams include their consumer
// groups' state, not only their entries. Idle times and TTL values, which
// change by themselves, are left out (only whether a key has a TTL is kept).
func snapshot(t *testing.T, rdb redis.UniversalClient, ns string) map[string]string {
	t.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	var keys []string
	scan := func(ctx context.Context, node redis.Cmdable) error {
		// seg:{ns}... and seg:{ns:...}..., not the keys of namespaces that
		// merely start with ns.
		iter := node.Scan(ctx, 0, "seg:{"+ns+"[}:]*", 1000).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			keys = append(keys, iter.Val())
			mu.Unlock()
		}
		return iter.Err()
	}
	var err error
	if cl, ok := rdb.(*redis.ClusterClient); ok {
		// Every primary holds a share of the keys.
		err = cl.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return scan(ctx, node) })
	} else {
		err = scan(ctx, rdb)
	}
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		out[k] = dumpKey(t, rdb, k)
	}
	return out
}

func dumpKey(t *testing.T, rdb redis.UniversalClient, key string) string {
	t.Helper()
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("snapshot of %s: %v", key, err)
		}
	}
	typ, err := rdb.Type(ctx, key).Result()
	must(err)
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", typ)
	ttl, err := rdb.PTTL(ctx, key).Result()
	must(err)
	fmt.Fprintf(&b, "ttl %v\n", ttl > 0)
	lines := func(l []string) {
		sort.Strings(l)
		for _, s := range l {
			fmt.Fprintf(&b, "%s\n", s)
		}
	}
	switch typ {
	case "string":
		v, err := rdb.Get(ctx, key).Result()
		must(err)
		fmt.Fprintf(&b, "%q\n", v)
	case "hash":
		m, err := rdb.HGetAll(ctx, key).Result()
		must(err)
		var l []string
		for f, v := range m {
			l = append(l, fmt.Sprintf("%q=%q", f, v))
		}
		lines(l)
	case "set":
		m, err := rdb.SMembers(ctx, key).Result()
		must(err)
		lines(m)
	case "zset":
		z, err := rdb.ZRangeWithScores(ctx, key, 0, -1).Result()
		must(err)
		for _, e := range z {
			fmt.Fprintf(&b, "%v %v\n", e.Member, e.Score)
		}
	case "list":
		l, err := rdb.LRange(ctx, key, 0, -1).Result()
		must(err)
		for _, e := range l {
			fmt.Fprintf(&b, "%q\n", e)
		}
	case "stream":
		entries, err := rdb.XRange(ctx, key, "-", "+").Result()
		must(err)
		for _, e := range entries {
			var l []string
			for f, v := range e.Values {
				l = append(l, fmt.Sprintf("%q=%q", f, v))
			}
			sort.Strings(l)
			fmt.Fprintf(&b, "entry %s %v\n", e.ID, l)
		}
		info, err := rdb.XInfoStream(ctx, key).Result()
		must(err)
		fmt.Fprintf(&b, "length %d last %s added %d max-deleted %s\n", info.Length, info.LastGeneratedID, info.EntriesAdded, info.MaxDeletedEntryID)
		groups, err := rdb.XInfoGroups(ctx, key).Result()
		must(err)
		for _, g := range groups {
			fmt.Fprintf(&b, "group %s consumers %d pending %d last-delivered %s read %d\n", g.Name, g.Consumers, g.Pending, g.LastDeliveredID, g.EntriesRead)
			cs, err := rdb.XInfoConsumers(ctx, key, g.Name).Result()
			must(err)
			for _, c := range cs {
				fmt.Fprintf(&b, "  consumer %s pending %d\n", c.Name, c.Pending)
			}
			if g.Pending > 0 {
				p, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: key, Group: g.Name, Start: "-", End: "+", Count: 1000}).Result()
				must(err)
				for _, e := range p {
					fmt.Fprintf(&b, "  pending %s %s count %d\n", e.ID, e.Consumer, e.RetryCount)
				}
			}
		}
	default:
		t.Fatalf("snapshot of %s: unexpected type %q", key, typ)
	}
	return b.String()
}

// compareSnapshots fails the test with every difference between two
// snapshots.
func compareSnapshots(t *testing.T, before, after map[string]string) {
	t.Helper()
	var keys []string
	for k := range before {
		keys = append(keys, k)
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		b, inBefore := before[k]
		a, inAfter := after[k]
		switch {
		case !inBefore:
			t.Errorf("key %s was created:\n%s", k, a)
		case !inAfter:
			t.Errorf("key %s was removed; it held:\n%s", k, b)
		case a != b:
			t.Errorf("key %s was changed:\nbefore:\n%safter:\n%s", k, b, a)
		}
	}
}

// freezer is a go-redis hook that stops a client for good: after Freeze
// returns, no command of the client is in flight and none is sent. (No
// lock is held across a call: go-redis runs hooks again inside a call, to
// set up a new connection.)
type freezer struct {
	frozen   atomic.Bool
	inFlight atomic.Int64
}

var errFrozen = errors.New("test: client frozen")

func (f *freezer) DialHook(next redis.DialHook) redis.DialHook { return next }

// enter counts a call in flight, or refuses it once frozen.
func (f *freezer) enter() bool {
	f.inFlight.Add(1)
	if f.frozen.Load() {
		f.inFlight.Add(-1)
		return false
	}
	return true
}

func (f *freezer) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !f.enter() {
			cmd.SetErr(errFrozen)
			return errFrozen
		}
		defer f.inFlight.Add(-1)
		return next(ctx, cmd)
	}
}

func (f *freezer) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !f.enter() {
			for _, c := range cmds {
				c.SetErr(errFrozen)
			}
			return errFrozen
		}
		defer f.inFlight.Add(-1)
		return next(ctx, cmds)
	}
}

// Freeze stops every later command and waits for those in flight.
func (f *freezer) Freeze(t *testing.T) {
	t.Helper()
	f.frozen.Store(true)
	redistest.Eventually(t, 10*time.Second, func() bool { return f.inFlight.Load() == 0 }, "commands still in flight after the freeze")
}

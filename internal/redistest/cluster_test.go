package redistest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestSharedCluster(t *testing.T) {
	info := Cluster(t)
	if again := Cluster(t); again != info {
		t.Fatal("Cluster returned another cluster the second time")
	}
	ctx := context.Background()
	rdb := info.Client(t)
	var n atomic.Int32 // ForEachMaster runs the primaries concurrently
	if err := rdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		n.Add(1)
		return c.Ping(ctx).Err()
	}); err != nil {
		t.Fatal(err)
	}
	primaries := int(n.Load())
	if info.Backend == BackendProcess && primaries != clusterPrimaries {
		t.Fatalf("%d primaries, want %d", primaries, clusterPrimaries)
	}
	// Keys of many slots land on every primary.
	ns := Namespace(t)
	nodes := map[string]bool{}
	for i := range 32 {
		key := fmt.Sprintf("seg:{%s:%d}:k", ns, i)
		if err := rdb.Set(ctx, key, i, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		c, err := rdb.MasterForKey(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		nodes[c.Options().Addr] = true
	}
	if len(nodes) != primaries {
		t.Fatalf("32 keys on %d primaries, want all %d", len(nodes), primaries)
	}
}

func TestDedicatedClusterFailoverAndMigration(t *testing.T) {
	cl := NewCluster(t)
	ctx := context.Background()
	rdb := cl.Client(t)
	key := "seg:{" + Namespace(t) + "}:k"
	slot := int(rdb.ClusterKeySlot(ctx, key).Val())
	if err := rdb.Set(ctx, key, "v", 0).Err(); err != nil {
		t.Fatal(err)
	}

	// Move the key's slot to another primary.
	from := cl.PrimaryOf(slot)
	var to string
	for _, r := range cl.Topology() {
		if r.Primary && r.Addr != from {
			to = r.Addr
			break
		}
	}
	cl.MigrateSlot(slot, to)
	if got := cl.PrimaryOf(slot); got != to {
		t.Fatalf("slot %d served by %s after the migration, want %s", slot, got, to)
	}
	cl.WaitHealthy(30 * time.Second)
	if v, err := rdb.Get(ctx, key).Result(); err != nil || v != "v" {
		t.Fatalf("GET after the migration = %q, %v", v, err)
	}
	if n := cl.NodeClient(to).Exists(ctx, key).Val(); n != 1 {
		t.Fatalf("the key is not on the new primary")
	}

	// Kill that primary: its replica takes over, with the key.
	replica := cl.ReplicaOf(to)
	if err := cl.NodeClient(to).Do(ctx, "WAIT", 1, 5000).Err(); err != nil {
		t.Fatal(err)
	}
	cl.Kill(to)
	Eventually(t, 30*time.Second, func() bool {
		for _, r := range cl.Topology() {
			if r.Addr == replica && r.Primary {
				return true
			}
		}
		return false
	}, "replica %s promoted", replica)
	cl.WaitHealthy(30 * time.Second)
	Eventually(t, 30*time.Second, func() bool {
		// go-redis learns of a failover from a MOVED reply or its periodic
		// reload (every minute by default); a dead node answers nothing.
		rdb.ReloadState(ctx)
		v, err := rdb.Get(ctx, key).Result()
		return err == nil && v == "v"
	}, "GET through the promoted replica")

	// The old primary comes back as a replica.
	cl.Start(to)
	Eventually(t, 30*time.Second, func() bool {
		for _, r := range cl.Topology() {
			if r.Addr == to && !r.Primary && r.Of == replica && !r.Failed {
				return true
			}
		}
		return false
	}, "%s back as a replica of %s", to, replica)
}

package rebalance

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/internal/redistest"
)

// The native read's guard, finding a lease that is not the caller's, writes
// to it so that the EXEC after it aborts. Out of memory that write must not
// be refused: memory freed between the guard and the MULTI would otherwise
// let the read run unfenced.
func TestGuardWriteIsNotRefusedOutOfMemory(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Standalone(t).Client(t)
	const lease, stream = "test:{p}:lease", "test:{p}:p"
	if err := rdb.HSet(ctx, lease, "o", "B", "e", "7").Err(); err != nil {
		t.Fatal(err)
	}
	pipe := rdb.Pipeline()
	for i := range 256 {
		pipe.Set(ctx, "filler:"+strconv.Itoa(i), strings.Repeat("x", 4096), 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	_, v, _ := strings.Cut(rdb.Info(ctx, "memory").Val(), "used_memory:")
	v, _, _ = strings.Cut(v, "\r\n")
	used, _ := strconv.ParseInt(v, 10, 64)
	if err := rdb.ConfigSet(ctx, "maxmemory", strconv.FormatInt(used-512<<10, 10)).Err(); err != nil {
		t.Fatal(err)
	}
	err := rdb.Watch(ctx, func(tx *redis.Tx) error {
		g, err := tx.Eval(ctx, guardFetch, []string{lease, stream}, "A", "g", "", "A:1", "7").Slice()
		if err != nil || len(g) != 3 || g[2] != "fenced" {
			t.Fatalf("guard: %v %v, want fenced", g, err)
		}
		// Memory is freed before the transaction.
		if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
			t.Fatal(err)
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.XLen(ctx, stream)
			return nil
		})
		return err
	}, lease)
	if !errors.Is(err, redis.TxFailedErr) {
		t.Fatalf("the transaction after a guard that found the lease another's: %v, want it aborted", err)
	}
}

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
	// The lease not the caller's is the read's, or one of the acks the
	// transaction carries (the read's own lease being the caller's).
	for _, tc := range []struct {
		name    string
		keys    []string
		args    []any
		watched string
	}{
		{"read lease", []string{"test:{p}:lease", "test:{p}:p"}, []any{"A", "g", "", "A:1", "0", "7"}, "test:{p}:lease"},
		{"ack lease", []string{"test:{p}:mine", "test:{p}:p", "test:{p}:lease"}, []any{"A", "g", "", "A:1", "0", "3", "7"}, "test:{p}:lease"},
	} {
		t.Run(tc.name, func(t *testing.T) { testGuardWriteOutOfMemory(t, tc.keys, tc.args, tc.watched) })
	}
}

func testGuardWriteOutOfMemory(t *testing.T, keys []string, args []any, watched string) {
	ctx := context.Background()
	rdb := redistest.Standalone(t).Client(t)
	const stream = "test:{p}:p"
	if err := rdb.HSet(ctx, "test:{p}:lease", "o", "B", "e", "7").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HSet(ctx, "test:{p}:mine", "o", "A", "e", "3").Err(); err != nil {
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
		// ARGV (see guard_fetch.lua): owner, group, no redelivery check,
		// the fetch id, no due check on the one partition, the epochs.
		g, err := tx.Eval(ctx, guardFetch, keys, args...).Slice()
		if err != nil || len(g) != 3 || g[0] != int64(0) {
			t.Fatalf("guard: %v %v, want it to refuse the lease another's", g, err)
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
	}, watched)
	if !errors.Is(err, redis.TxFailedErr) {
		t.Fatalf("the transaction after a guard that found the lease another's: %v, want it aborted", err)
	}
}

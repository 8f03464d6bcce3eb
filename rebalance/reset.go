package rebalance

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

var resetScript = load("reset")

// ResetResult is the outcome of the reset of one partition.
type ResetResult struct {
	From, To string // the group's last-delivered ID before and after
	Cleared  int64  // pending messages acknowledged (on a dry run: pending now)
	// Holder is set, and nothing was done, when the reset was not forced
	// and the group's lease of the partition is held (by Holder).
	Holder string
	Err    error
}

// ResetGroup moves group's position in each partition stream of keys to
// to ("earliest", "latest" or an entry ID) and clears its pending list
// there, each partition atomically (one script call each, all in one round
// trip). Unless force, a partition whose lease for group (leases[i]) is
// held is left alone (ResetResult.Holder): the check and the reset are
// atomic. With dryRun it only reports what it would do.
func ResetGroup(ctx context.Context, rdb redis.Cmdable, group string, keys, leases []string, to string, dryRun, force bool) []ResetResult {
	dry, forced := "0", "0"
	if dryRun {
		dry = "1"
	}
	if force {
		forced = "1"
	}
	var b batch
	calls := make([]*call, len(keys))
	for i, k := range keys {
		calls[i] = b.add(resetScript, []string{k, leases[i]}, group, to, dry, forced)
	}
	b.exec(ctx, rdb)
	out := make([]ResetResult, len(keys))
	for i, c := range calls {
		v, err := c.cmd.Slice()
		switch {
		case err != nil:
			out[i].Err = err
		case len(v) == 2 && str(v[0]) == "held":
			out[i].Holder = str(v[1])
		case len(v) != 3:
			out[i].Err = fmt.Errorf("reset: unexpected reply %v", v)
		default:
			out[i] = ResetResult{From: str(v[0]), To: str(v[1]), Cleared: num(v[2])}
		}
	}
	return out
}

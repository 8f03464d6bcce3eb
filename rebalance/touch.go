package rebalance

import (
	"context"
	"strconv"

	"github.com/redis/go-redis/v9"
)

var touchScript = load("touch")

// Touch resets the idle time of messages still being processed, so that
// they do not come due for redelivery, in one round trip; fenced like Ack.
// Their delivery count is unchanged.
func Touch(ctx context.Context, rdb redis.Cmdable, owner, group string, reqs []AckRequest) []AckResult {
	var b batch
	calls := make([][]*call, len(reqs))
	for i, r := range reqs {
		for start := 0; start < len(r.IDs); start += maxAckIDs {
			end := min(start+maxAckIDs, len(r.IDs))
			args := make([]any, 0, 3+end-start)
			args = append(args, owner, strconv.FormatInt(r.Epoch, 10), group)
			for _, id := range r.IDs[start:end] {
				args = append(args, id)
			}
			calls[i] = append(calls[i], b.add(touchScript, []string{r.LeaseKey, r.StreamKey}, args...))
		}
	}
	b.exec(ctx, rdb)
	out := make([]AckResult, len(reqs))
	for i, cs := range calls {
		for _, c := range cs {
			v, err := c.cmd.Slice()
			switch {
			case err != nil:
				out[i].Err = err
			case len(v) == 0 || num(v[0]) != 1:
				out[i].Fenced = true
			case len(v) == 2:
				out[i].Acked += num(v[1])
			}
		}
	}
	return out
}

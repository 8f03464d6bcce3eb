//go:build unix

package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// slowNet is a go-redis hook on one consumer's client that plays a slow
// network, deterministically:
//
//   - the replies of its next delayReads fenced reads are held back by
//     readDelay after the read ran in Redis;
//   - its next delayReleases lease releases are held back by releaseDelay
//     before they leave.
//
// It recognizes the SDK's calls by their shape: a read is a pipeline with an
// XREADGROUP (the native read of a single node) or a script with 2 keys and
// 8 arguments (owner, epoch, group, count, ...); a release batch is a pipeline
// of scripts with 1 key and 2 arguments each (owner, epoch) and nothing
// else. A call refused with NOSCRIPT did not run, and does not count.
type slowNet struct {
	readDelay     time.Duration
	delayReads    atomic.Int32
	releaseDelay  time.Duration
	delayReleases atomic.Int32

	reads    atomic.Int32 // reads held back
	releases atomic.Int32 // release batches seen
	readRan  chan struct{}
	once     sync.Once
}

func newSlowNet() *slowNet { return &slowNet{readRan: make(chan struct{})} }

func (h *slowNet) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *slowNet) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h *slowNet) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		read, release := false, len(cmds) > 0
		for _, c := range cmds {
			if a := c.Args(); len(a) > 0 && strings.EqualFold(fmt.Sprint(a[0]), "xreadgroup") {
				read = true
			}
			keys, args, ok := scriptShape(c)
			if ok && keys == 2 && len(args) == 8 && !strings.Contains(args[3], "-") {
				read = true
			}
			if !ok || keys != 1 || len(args) != 2 {
				release = false
			}
		}
		if release {
			h.releases.Add(1)
			if h.delayReleases.Add(-1) >= 0 {
				time.Sleep(h.releaseDelay)
			}
		}
		err := next(ctx, cmds)
		if read && !noScript(cmds) && h.delayReads.Add(-1) >= 0 {
			h.reads.Add(1)
			h.once.Do(func() { close(h.readRan) })
			time.Sleep(h.readDelay)
		}
		return err
	}
}

func noScript(cmds []redis.Cmder) bool {
	for _, c := range cmds {
		if err := c.Err(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			return true
		}
	}
	return false
}

// scriptShape returns the key count and the arguments of an EVAL/EVALSHA.
func scriptShape(c redis.Cmder) (keys int, args []string, ok bool) {
	a := c.Args()
	if len(a) < 3 {
		return 0, nil, false
	}
	name := strings.ToLower(fmt.Sprint(a[0]))
	if name != "evalsha" && name != "eval" {
		return 0, nil, false
	}
	var n int
	if _, err := fmt.Sscan(fmt.Sprint(a[2]), &n); err != nil || 3+n > len(a) {
		return 0, nil, false
	}
	for _, x := range a[3+n:] {
		args = append(args, fmt.Sprint(x))
	}
	return n, args, true
}

package rebalance

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// FollowTopology has a cluster client reload its view of the cluster after
// err, when err may mean that the cluster changed: a node that does not
// answer (it died, and a replica takes over), a slot that moved or is
// moving (MOVED, ASK, TRYAGAIN), a cluster that is failing over
// (CLUSTERDOWN, READONLY, MASTERDOWN). go-redis reloads by itself on a
// MOVED reply, but a primary that does not answer at all leaves it sending
// that primary's slots to it until its periodic reload (a minute by
// default). Reloads of one client are at most every followEvery; the reload
// itself runs in the background (go-redis' lazy reload). Nothing happens for
// other clients or errors.
func FollowTopology(rdb redis.Cmdable, err error) {
	c, ok := rdb.(*redis.ClusterClient)
	if !ok || err == nil || !topologyError(err) {
		return
	}
	now := time.Now()
	followMu.Lock()
	last, seen := followed[c]
	if seen && now.Sub(last) < followEvery {
		followMu.Unlock()
		return
	}
	followed[c] = now
	followMu.Unlock()
	c.ReloadState(context.Background())
}

// followEvery bounds how often FollowTopology reloads one client's view.
const followEvery = 50 * time.Millisecond

var (
	followMu sync.Mutex
	followed = map[*redis.ClusterClient]time.Time{}
)

// topologyError reports whether err may come from a change of the cluster.
func topologyError(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, redis.ErrClosed) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	for _, p := range []string{"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "MASTERDOWN", "LOADING"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

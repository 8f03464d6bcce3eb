package segmenter

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/rebalance"
)

// watchers hands the quiet partitions of a Segmenter's consumers to entry
// watchers (see entryWatcher), so that a consumer with nothing to read waits
// in Redis instead of polling:
//
//   - On a single node (a *redis.Client, Sentinel included) one watcher
//     blocks in one XREAD over every quiet partition of every consumer.
//   - On a Redis Cluster one XREAD cannot span slots (CROSSSLOT), and every
//     partition has a slot of its own (its hash tag), so there is one
//     watcher per quiet partition, blocking on a connection of its own to
//     the primary serving that partition's slot. The connections come from
//     clients of the watchers' own (one per node, built with the options of
//     the cluster client's node clients), so that blocked reads never take
//     the connections of the caller's pools. A watcher whose XREAD fails
//     (the node died, the slot moved: MOVED, ASK) has the cluster client
//     reload its view of the cluster, wakes its consumers (whose fetches
//     follow the redirect) and connects again to whichever primary serves
//     the slot then.
//
// With any other client, consumers poll (Config.PollInterval).
type watchers struct {
	seg *Segmenter

	mu     sync.Mutex
	closed bool
	single *entryWatcher
	// On a cluster: the watcher of each partition key watched so far, the
	// keys each consumer watches now, and the watchers' node clients by
	// address.
	byKey map[string]*entryWatcher
	mine  map[*Consumer]map[string]bool
	nodes map[string]*redis.Client
}

// maxWatchConns bounds the connections of one node client of the cluster
// watchers: one per quiet partition served by the node.
const maxWatchConns = 1 << 14

func (ws *watchers) init(s *Segmenter) {
	ws.seg = s
	ws.byKey = make(map[string]*entryWatcher)
	ws.mine = make(map[*Consumer]map[string]bool)
	ws.nodes = make(map[string]*redis.Client)
}

// usable reports whether the Segmenter's client can wait for entries in
// Redis; its consumers poll otherwise.
func (ws *watchers) usable() bool {
	switch ws.seg.rdb.(type) {
	case *redis.Client, *redis.ClusterClient:
		return true
	}
	return false
}

// pipelines reports whether the watcher may send a waiting consumer's
// fenced read behind its XREAD (see Consumer.wait): on a single node, where
// CLIENT UNBLOCK works.
func (ws *watchers) pipelines() bool {
	if _, ok := ws.seg.rdb.(*redis.Client); !ok {
		return false
	}
	return ws.singleWatcher().pipelines()
}

// block is the longest the XREAD that carries a read blocks.
func (ws *watchers) block() time.Duration { return ws.singleWatcher().block() }

// collect takes back a read given to watch (see entryWatcher.collect).
func (ws *watchers) collect(read *watchRead) bool { return ws.singleWatcher().collect(read) }

// singleWatcher returns the watcher of a single node, made on first use.
func (ws *watchers) singleWatcher() *entryWatcher {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.single == nil {
		rdb, _ := ws.seg.rdb.(*redis.Client)
		ws.single = newEntryWatcher(ws.seg, func(context.Context) (*redis.Client, error) { return rdb, nil })
		if ws.closed {
			ws.single.closed = true
		}
	}
	return ws.single
}

// watch makes from (partition -> the newest entry ID c has seen in it) c's
// quiet set: c hears of an entry newer than from[p] in any p of it. read,
// when not nil (a single node, where pipelines), is sent right behind the
// XREAD. It returns at once.
func (ws *watchers) watch(c *Consumer, from map[int]string, read *watchRead) {
	switch rdb := ws.seg.rdb.(type) {
	case *redis.Client:
		sub := make(map[string]string, len(from))
		for p, id := range from {
			sub[c.stream.keys[p]] = id
		}
		ws.singleWatcher().watch(c, sub, read)
	case *redis.ClusterClient:
		type change struct {
			w   *entryWatcher
			sub map[string]string // nil: c no longer watches the key
		}
		ws.mu.Lock()
		if ws.closed {
			ws.mu.Unlock()
			return
		}
		old := ws.mine[c]
		now := make(map[string]bool, len(from))
		changes := make([]change, 0, len(from)+len(old))
		for p, id := range from {
			k := c.stream.keys[p]
			now[k] = true
			w := ws.byKey[k]
			if w == nil {
				w = newEntryWatcher(ws.seg, ws.nodeOf(rdb, k))
				w.failed = func(err error) { rebalance.FollowTopology(rdb, err) }
				ws.byKey[k] = w
			}
			changes = append(changes, change{w, map[string]string{k: id}})
		}
		for k := range old {
			if !now[k] {
				changes = append(changes, change{ws.byKey[k], nil})
			}
		}
		if len(now) > 0 {
			ws.mine[c] = now
		} else {
			delete(ws.mine, c)
		}
		ws.mu.Unlock()
		for _, ch := range changes {
			ch.w.watch(c, ch.sub, nil)
		}
	}
}

// nodeOf returns the node source of the watcher of key: a client of the
// primary that serves key's slot now, as rdb sees it.
func (ws *watchers) nodeOf(rdb *redis.ClusterClient, key string) func(context.Context) (*redis.Client, error) {
	return func(ctx context.Context) (*redis.Client, error) {
		n, err := rdb.MasterForKey(ctx, key)
		if err != nil {
			return nil, err
		}
		o := n.Options()
		ws.mu.Lock()
		defer ws.mu.Unlock()
		if ws.closed {
			return nil, ErrClosed
		}
		if c, ok := ws.nodes[o.Addr]; ok {
			return c, nil
		}
		opt := *o
		opt.PoolSize, opt.MaxActiveConns = maxWatchConns, 0
		opt.MinIdleConns, opt.MaxIdleConns = 0, 0
		// Named, so that CLIENT LIST tells what the blocked clients are.
		opt.ClientName = "segmenter-watch:" + ws.seg.cfg.Namespace
		c := redis.NewClient(&opt)
		ws.nodes[o.Addr] = c
		return c, nil
	}
}

// unwatch drops c's subscriptions.
func (ws *watchers) unwatch(c *Consumer) {
	ws.mu.Lock()
	var ws1 []*entryWatcher
	if ws.single != nil {
		ws1 = append(ws1, ws.single)
	}
	for k := range ws.mine[c] {
		ws1 = append(ws1, ws.byKey[k])
	}
	delete(ws.mine, c)
	ws.mu.Unlock()
	for _, w := range ws1 {
		w.unwatch(c)
	}
}

// close stops every watcher and waits for their goroutines.
func (ws *watchers) close() {
	ws.mu.Lock()
	ws.closed = true
	single := ws.single
	all := make([]*entryWatcher, 0, len(ws.byKey))
	for _, w := range ws.byKey {
		all = append(all, w)
	}
	nodes := ws.nodes
	ws.nodes = map[string]*redis.Client{}
	ws.mu.Unlock()
	if single != nil {
		single.close()
	}
	// The cluster watchers: closing their clients ends the blocked XREADs
	// at once.
	for _, w := range all {
		w.shut()
	}
	var errs []error
	for _, c := range nodes {
		errs = append(errs, c.Close())
	}
	for _, w := range all {
		w.wg.Wait()
	}
	if err := errors.Join(errs...); err != nil {
		ws.seg.log.Debug("closing the watchers' connections", "err", err)
	}
}

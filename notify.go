package segmenter

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// notifier nudges the consumers of a Segmenter through Redis Pub/Sub: a
// member that commits a new assignment or releases a lease publishes on its
// group's channel, and every consumer of that group runs its background tick
// at once instead of at its next heartbeat. It only makes hand-overs fast:
// correctness never depends on a message arriving, the heartbeat carries the
// same news.
type notifier struct {
	seg *Segmenter

	mu     sync.Mutex
	closed bool
	ps     *redis.PubSub
	subs   map[string]map[*Consumer]struct{} // channel -> consumers
	wg     sync.WaitGroup
}

func (n *notifier) channel(c *Consumer) string { return n.seg.keys.Notify(c.stream.name, c.group) }

// add subscribes c to its group's channel.
func (n *notifier) add(ctx context.Context, c *Consumer) {
	ch := n.channel(c)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	if n.subs == nil {
		n.subs = make(map[string]map[*Consumer]struct{})
	}
	if n.subs[ch] == nil {
		n.subs[ch] = make(map[*Consumer]struct{})
		if n.ps == nil {
			n.ps = n.seg.rdb.Subscribe(ctx, ch)
			msgs := n.ps.Channel()
			n.wg.Go(func() {
				for m := range msgs {
					n.wake(m.Channel)
				}
			})
		} else if err := n.ps.Subscribe(ctx, ch); err != nil {
			n.seg.log.Warn("subscribe to group notifications", "channel", ch, "err", err)
		}
	}
	n.subs[ch][c] = struct{}{}
}

// remove unsubscribes c.
func (n *notifier) remove(c *Consumer) {
	ch := n.channel(c)
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.subs[ch], c)
	if len(n.subs[ch]) == 0 && n.subs[ch] != nil {
		delete(n.subs, ch)
		if n.ps != nil {
			_ = n.ps.Unsubscribe(context.Background(), ch)
		}
	}
}

func (n *notifier) wake(ch string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for c := range n.subs[ch] {
		c.wakeLoop()
	}
}

// publish nudges the consumers of c's group, everywhere.
func (n *notifier) publish(ctx context.Context, c *Consumer) {
	if err := n.seg.rdb.Publish(ctx, n.channel(c), c.id).Err(); err != nil && ctx.Err() == nil {
		c.log.Debug("notify group", "err", err)
	}
}

// close ends the subscription and waits for its goroutine.
func (n *notifier) close() {
	n.mu.Lock()
	ps := n.ps
	n.ps, n.closed = nil, true
	n.mu.Unlock()
	if ps != nil {
		_ = ps.Close()
	}
	n.wg.Wait()
}

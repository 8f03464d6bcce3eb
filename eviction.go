package segmenter

import (
	"context"
	"fmt"
	"strings"
)

// checkEviction looks, once per Segmenter (at its first RegisterStream,
// GetStream or RegisterConsumer), at Redis' maxmemory-policy. An allkeys-*
// policy lets Redis evict any key once it reaches maxmemory: the SDK's
// partitions (messages gone unprocessed, without a trace), leases and
// assignments. It logs a warning and reports ErrEvictionPolicy to
// Config.OnError; it never fails the call. Where CONFIG GET is refused (an
// ACL, a managed Redis) nothing is known, and nothing is said but a debug
// log. (The volatile-* policies evict only keys with a TTL: of the SDK's,
// the coordinator lock, whose loss only makes a rebalance start over.)
func (s *Segmenter) checkEviction(ctx context.Context) {
	s.evictionOnce.Do(func() {
		cfg, err := s.rdb.ConfigGet(ctx, "maxmemory*").Result()
		if err != nil {
			s.log.Debug("maxmemory-policy unknown", "err", err)
			return
		}
		policy := cfg["maxmemory-policy"]
		if !strings.HasPrefix(policy, "allkeys-") {
			return
		}
		limit := cfg["maxmemory"]
		s.log.Warn("Redis may evict the SDK's keys: set maxmemory-policy to noeviction",
			"maxmemory_policy", policy, "maxmemory", limit)
		s.reportError(fmt.Errorf("%w: maxmemory-policy is %s (maxmemory %s): once Redis reaches maxmemory it evicts any key, partitions (messages lost unprocessed) and leases included; use noeviction, which makes Redis refuse new messages instead",
			ErrEvictionPolicy, policy, limit))
	})
}

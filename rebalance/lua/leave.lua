-- leave: KEYS[1] members, KEYS[2] assignment; ARGV[1] member. The member
-- leaves the group and marks the assignment for a rebalance.
keep_going(KEYS[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], 'hb:' .. ARGV[1])
redis.call('HSET', KEYS[2], 'dirty', '1')
return 1

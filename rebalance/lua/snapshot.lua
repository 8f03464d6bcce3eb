-- snapshot: KEYS[1] members, KEYS[2] assignment.
-- Reply: {gen, live members (session not expired), assignment hash as a flat
-- field/value list}.
local now = now_ms()
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
return {redis.call('HGET', KEYS[2], 'gen') or '0', live, redis.call('HGETALL', KEYS[2])}

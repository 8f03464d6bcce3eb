-- commit: replace the assignment if the caller holds the coordinator lock
-- and the generation is still ARGV[2].
-- KEYS[1] members, KEYS[2] assignment, KEYS[3] coordinator lock; ARGV[1] the
-- caller's lock token, ARGV[3..]: member, "p,p,..." pairs.
-- Expired members that get nothing are evicted in the same step (with their
-- last heartbeat, field hb:<member>); an expired member that got partitions
-- stays, so the next heartbeat asks again.
-- Reply: {1, new_gen} | {0, current_gen} | {0, current_gen, 'lock'} when
-- the lock is not (or no longer) the caller's.
keep_going(KEYS[1])
local gen = redis.call('HGET', KEYS[2], 'gen') or '0'
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return {0, gen, 'lock'} end
if gen ~= ARGV[2] then return {0, gen} end
local assigned = {}
for i = 3, #ARGV, 2 do assigned[ARGV[i]] = true end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms())) do
  if not assigned[m] then
    redis.call('ZREM', KEYS[1], m)
    redis.call('HDEL', KEYS[2], 'hb:' .. m)
  end
end
for _, f in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(f, 1, 2) == 'm:' then redis.call('HDEL', KEYS[2], f) end
end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], 'm:' .. ARGV[i], ARGV[i + 1]) end
local next = fmt(tonumber(gen) + 1)
redis.call('HSET', KEYS[2], 'gen', next, 'dirty', '0')
if redis.call('HEXISTS', KEYS[2], 'inc') == 0 then
  redis.call('HSET', KEYS[2], 'inc', fmt(now_us()))
end
return {1, next}

-- acquire: grant the lease KEYS[1] to ARGV[1] for ARGV[2] ms when it is free,
-- expired, or already held by ARGV[1]. Every grant gets a new epoch, strictly
-- greater than every earlier one and never below the server's clock in
-- microseconds, so an epoch is not reissued to another owner after a restart
-- or failover that lost the lease hash (as long as the server clock does not
-- go back).
-- Reply: {1, owner, epoch, ttl_ms} granted | {0, holder, epoch, remaining_ms} held by another.
keep_going(KEYS[1])
local now = now_ms()
local l = redis.call('HMGET', KEYS[1], 'o', 'e', 'x')
local holder, epoch, exp = l[1], tonumber(l[2]) or 0, tonumber(l[3]) or 0
if holder and holder ~= '' and holder ~= ARGV[1] and exp > now then
  return {0, holder, fmt(epoch), exp - now}
end
local e = epoch + 1
local us = now_us()
if e < us then e = us end
local ttl = tonumber(ARGV[2])
-- The ack ids of epochs before the previous one go (see ack.lua): the
-- previous holder's stays, for a retry of its last ack.
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 1) == 'k' and f ~= 'k' .. fmt(epoch) then redis.call('HDEL', KEYS[1], f) end
end
redis.call('HSET', KEYS[1], 'o', ARGV[1], 'e', fmt(e), 'x', fmt(now + ttl))
return {1, ARGV[1], fmt(e), ttl}

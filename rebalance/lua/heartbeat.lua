-- heartbeat: KEYS[1] members (zset: member -> session expiry, ms server
-- time), KEYS[2] assignment (hash: gen, dirty, m:<member> -> "p,p,...");
-- then, on a single Redis node only (they live in other cluster slots), the
-- leases the member holds, KEYS[3..], renewed in the same call as renew.lua
-- would.
-- ARGV: 1 member, 2 session timeout ms (also the lease TTL), 3 the
--       generation the member knows, 4 the incarnation it belongs to, 5 '1'
--       to heartbeat ('0': renew only, for a member that is leaving), 6..
--       the epoch of each lease.
-- Reply: {gen, need_rebalance, partitions (when gen or incarnation differs
--         from ARGV[3], ARGV[4]), in_assignment, incarnation, renewed}
--         renewed: {1 renewed | 0 fenced, ...} in the order of the leases.
-- The incarnation changes when the assignment hash is created anew (e.g. a
-- restart without persistence lost it): generations restart with it. A
-- member that knows a newer generation of the same incarnation than the
-- stored one saw writes the server lost (an asynchronous failover): the
-- generation goes on from the member's, and the group rebalances, so that
-- the next assignment is newer than any a member has acted on.
-- The heartbeat's time goes in the assignment hash, field hb:<member> (read
-- by operators' tools: the member's heartbeat age).
-- A rebalance is needed when this member is not in the assignment (it just
-- joined, or was evicted), when a member's session expired, or when a member
-- left.
keep_going(KEYS[1])
local now = now_ms()
local renewed = {}
local until_ms = fmt(now + tonumber(ARGV[2]))
for i = 3, #KEYS do
  local l = redis.call('HMGET', KEYS[i], 'o', 'e')
  if l[1] == ARGV[1] and l[2] == ARGV[i + 3] then
    redis.call('HSET', KEYS[i], 'x', until_ms)
    renewed[i - 2] = 1
  else
    renewed[i - 2] = 0
  end
end
if ARGV[5] ~= '1' then return {'0', 0, '', 0, '', renewed} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], 'hb:' .. ARGV[1], fmt(now))
local a = redis.call('HMGET', KEYS[2], 'gen', 'dirty', 'm:' .. ARGV[1], 'inc')
local gen = a[1] or '0'
local inc = a[4] or ''
local need = 0
if inc ~= '' and inc == ARGV[4] and tonumber(ARGV[3]) > tonumber(gen) then
  gen = ARGV[3]
  redis.call('HSET', KEYS[2], 'gen', gen, 'dirty', '1')
  a[2] = '1'
end
if not a[3] or a[2] == '1' or redis.call('ZCOUNT', KEYS[1], '-inf', now) > 0 then need = 1 end
local parts = ''
if (gen ~= ARGV[3] or inc ~= ARGV[4]) and a[3] then parts = a[3] end
return {gen, need, parts, a[3] and 1 or 0, a[4] or '', renewed}

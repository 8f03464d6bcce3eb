-- deadletter: move entry ARGV[4] of partition stream KEYS[2] to the dead
-- letters KEYS[3] of group ARGV[3] and acknowledge it, if ARGV[1] holds the
-- lease KEYS[1] under epoch ARGV[2].
-- ARGV: 1 owner, 2 epoch, 3 group, 4 entry id, 5 reason, 6 deliveries
--       ('0': the group's delivery count of the entry).
-- The dead letter holds the entry's fields verbatim, then dlq.id (the
-- original ID), dlq.reason, dlq.deliveries, dlq.group and dlq.at (server
-- time, ms). Dead letters are not capped: they stay until re-driven or
-- deleted.
-- An entry no longer pending in the group (acked, or already dead-lettered
-- by a call whose reply was lost) is left alone; an entry still pending but
-- gone from the stream (trimmed by retention) is only acknowledged.
-- Reply: {0} fenced | {1, dead_letter_id} moved | {2} not pending |
--        {3} trimmed: acknowledged only.
keep_going(KEYS[1])
local l = redis.call('HMGET', KEYS[1], 'o', 'e')
if l[1] ~= ARGV[1] or l[2] ~= ARGV[2] then return {0} end
local group, id = ARGV[3], ARGV[4]
local p = redis.pcall('XPENDING', KEYS[2], group, id, id, 1)
if type(p) == 'table' and p.err then return p end
if #p == 0 then return {2} end
local e = redis.call('XRANGE', KEYS[2], id, id)
if #e == 0 then
  redis.call('XACK', KEYS[2], group, id)
  return {3}
end
local deliveries = ARGV[6]
if deliveries == '0' then deliveries = fmt(p[1][4]) end
local v = e[1][2]
for _, x in ipairs({'dlq.id', id, 'dlq.reason', ARGV[5], 'dlq.deliveries', deliveries,
                    'dlq.group', group, 'dlq.at', fmt(now_ms())}) do
  table.insert(v, x)
end
local dead = redis.call('XADD', KEYS[3], '*', unpack(v))
redis.call('XACK', KEYS[2], group, id)
return {1, dead}

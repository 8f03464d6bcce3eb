-- reset: move group ARGV[1]'s position in the partition stream KEYS[1] and
-- clear its pending list, atomically. ARGV[2] 'earliest' (before the first
-- entry), 'latest' (after the last) or an entry ID; ARGV[3] '1' for a dry
-- run, which changes nothing; ARGV[4] '1' to reset even while the group's
-- lease of the partition, KEYS[2], is held (else the reply is
-- {'held', owner}: a consumer that got the lease since the caller looked).
-- The group's read counter is set to what it would be at that position, so
-- that its lag stays known: for earliest the entries gone before the first
-- one, for latest every entry ever added; for an ID Redis estimates it.
-- The pending messages are acknowledged: those after the position are
-- delivered again as new ones, those up to it are taken as processed.
-- Reply: {previous last-delivered-id, new last-delivered-id, pending cleared}
--   or an error (no such key, NOGROUP).
local group, to, dry = ARGV[1], ARGV[2], ARGV[3] == '1'
if ARGV[4] ~= '1' then
  local l = redis.call('HMGET', KEYS[2], 'o', 'x')
  if l[1] and l[1] ~= '' and (tonumber(l[2]) or 0) > now_ms() then return {'held', l[1]} end
end

local function fields(t)
  local f = {}
  for i = 1, #t, 2 do f[t[i]] = t[i + 1] end
  return f
end

local info = fields(redis.call('XINFO', 'STREAM', KEYS[1]))
local before
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local gf = fields(g)
  if gf['name'] == group then before = gf end
end
if not before then
  return redis.error_reply('NOGROUP no consumer group ' .. group .. ' on ' .. KEYS[1])
end
local id, read = to, nil
if to == 'earliest' then
  id, read = '0-0', info['entries-added'] - info['length']
elseif to == 'latest' then
  id, read = info['last-generated-id'], info['entries-added']
end
local pending = before['pending']
if dry then return {before['last-delivered-id'], id, pending} end
if read then
  redis.call('XGROUP', 'SETID', KEYS[1], group, id, 'ENTRIESREAD', fmt(read))
else
  redis.call('XGROUP', 'SETID', KEYS[1], group, id)
end
local cleared = 0
while true do
  local p = redis.call('XPENDING', KEYS[1], group, '-', '+', 1000)
  if #p == 0 then break end
  local ids = {}
  for i, e in ipairs(p) do ids[i] = e[1] end
  cleared = cleared + redis.call('XACK', KEYS[1], group, unpack(ids))
end
return {before['last-delivered-id'], id, cleared}

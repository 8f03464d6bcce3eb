-- retention: how many entries of partition stream KEYS[1] were removed
-- (trimmed by retention) before group ARGV[1] read them.
-- KEYS[1] partition stream; KEYS[2] (optional) a hash where the loss already
-- reported is recorded, in field 'u'. ARGV: 1 group, 2 scan cap, 3 'many':
-- then KEYS holds (stream, report hash) pairs of several partitions (a
-- single Redis node only), and the reply is the list of their replies.
--
-- Trimming does not move the stream's max-deleted-entry-id (only XDEL does),
-- so the loss is computed from the counters Redis 7.0+ keeps:
--   entries-added  every entry ever added to the stream
--   entries-read   the group's logical read counter: incremented by one for
--                  each entry the group reads, so an entry trimmed before
--                  the group read it is never counted
--   unread         the entries still in the stream after the group's
--                  last-delivered-id
-- and lost = entries-added - entries-read - unread: the entries after the
-- group's position that are gone (the ones trimmed while the group was
-- behind) plus those skipped by earlier reads. It is cumulative over the
-- group's life and stays put while the group reads on.
-- unread is the stream's length when the trim overtook the group (its
-- last-delivered-id is below the first entry), 0 when the group is at the
-- end, else counted with XRANGE up to ARGV[2] entries from either side; when
-- both sides are longer the loss is unknown this time (known=0).
-- entries-read is unknown (nil) before the group's first read and after
-- XDEL or XGROUP SETID in front of the group: the loss is unknown too.
--
-- With KEYS[2], the script records lost in it and returns as new the part
-- not recorded before, so each loss is reported once, by whichever consumer
-- sees it first. A smaller lost (the counters were reset) lowers the record.
--
-- Reply: {known, lost, new, last_delivered_id, first_id, max_deleted_id}
--   or an error (no such key, no such group).
local group, cap = ARGV[1], tonumber(ARGV[2])

local function fields(t)
  local f = {}
  for i = 1, #t, 2 do f[t[i]] = t[i + 1] end
  return f
end

local function id_less(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams < bms end
  return tonumber(aseq) < tonumber(bseq)
end

local function check(stream, report)
local gs = redis.pcall('XINFO', 'GROUPS', stream)
if type(gs) == 'table' and gs.err then return gs end
local g
for _, raw in ipairs(gs) do
  local f = fields(raw)
  if f['name'] == group then g = f end
end
if not g then
  return redis.error_reply('NOGROUP no group ' .. group .. ' on ' .. stream)
end
local info = redis.pcall('XINFO', 'STREAM', stream)
if type(info) == 'table' and info.err then return info end
local s = fields(info)
local pos = g['last-delivered-id']
local len = tonumber(s['length'])
local first = ''
if len > 0 and s['first-entry'] then first = s['first-entry'][1] end
local max_deleted = s['max-deleted-entry-id'] or '0-0'
local entries_read = g['entries-read']

local known, lost, new = 0, 0, 0
if entries_read then
  local unread
  if len == 0 or not id_less(pos, s['last-generated-id']) then
    unread = 0
  elseif id_less(pos, first) then
    unread = len
  else
    local after = redis.call('XRANGE', stream, '(' .. pos, '+', 'COUNT', cap)
    if #after < cap then
      unread = #after
    else
      local upto = redis.call('XRANGE', stream, '-', pos, 'COUNT', cap)
      if #upto < cap then unread = len - #upto end
    end
  end
  if unread then
    known = 1
    lost = tonumber(s['entries-added']) - tonumber(entries_read) - unread
    if lost < 0 then lost = 0 end
  end
end

if known == 1 and report then
  local done = tonumber(redis.call('HGET', report, 'u')) or 0
  if lost > done then new = lost - done end
  if lost ~= done then
    keep_going(report)
    redis.call('HSET', report, 'u', string.format('%d', lost))
  end
end
return {known, lost, new, pos, first, max_deleted}
end

if ARGV[3] == 'many' then
  local out = {}
  for i = 1, #KEYS, 2 do out[#out + 1] = check(KEYS[i], KEYS[i + 1]) end
  return out
end
return check(KEYS[1], KEYS[2])

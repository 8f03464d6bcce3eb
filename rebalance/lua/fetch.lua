-- fetch: the fenced group read of one partition.
-- KEYS[1] lease, KEYS[2] partition stream.
-- ARGV: 1 owner, 2 epoch, 3 group, 4 count, 5 redelivery idle ms,
--       6 claim cursor ('' = none), 7 claim min idle ms, 8 fetch id.
-- Order of delivery: first the claim in progress (after a takeover or a lost
-- reply: everything pending, idle 0; or the messages due for redelivery),
-- oldest first, continued from its cursor; only once that claim has scanned
-- the whole pending list are new messages read. A fetch whose id equals the
-- previous one is a retry of a call whose reply was lost: its messages went
-- to the pending list unseen, so it claims the whole pending list again.
-- Reply: {0} fenced |
--   {1, entries, next_cursor, trimmed_ids, counts, top_id, claim_idle, whole}
--   entries: {{id, {field, value, ...}}, ...}; counts: {id, deliveries, ...}
--   for claimed entries; top_id: the partition's last entry id when no new
--   entry was read and the partition is drained ('' otherwise); claim_idle: the min idle of the claim that
--   next_cursor continues; whole: 1 when this call claimed from the whole
--   pending list (idle 0), which holds messages the caller may still be
--   processing, 0 otherwise.
-- An entry meant for another group only (a dead letter re-driven for it, see
-- for_other) is acknowledged for this group and left out.
keep_going(KEYS[1])
local l = redis.call('HMGET', KEYS[1], 'o', 'e', 'r')
if l[1] ~= ARGV[1] or l[2] ~= ARGV[2] then return {0} end
local me, group, count = ARGV[1], ARGV[3], tonumber(ARGV[4])
local cursor, claim_idle = ARGV[6], ARGV[7]
if l[3] == ARGV[8] then cursor = '0-0'; claim_idle = '0' end
redis.call('HSET', KEYS[1], 'r', ARGV[8])

-- oldest_due: is a pending message of the group due for redelivery? Also
-- returns the oldest due one's ID. (The oldest pending message may have been
-- redelivered just now while a later one is due: look at the due ones.)
local function oldest_due()
  local p = redis.pcall('XPENDING', KEYS[2], group, 'IDLE', ARGV[5], '-', '+', 1)
  if type(p) == 'table' and p.err then return nil, nil, p end
  if #p == 0 then return false end
  return true, p[1][1]
end

local function id_less(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams < bms end
  return tonumber(aseq) < tonumber(bseq)
end

-- for_other: is entry e meant for another group only (a dead letter
-- re-driven for that group)? Then it is acknowledged for this one, never
-- delivered to it. One look at fixed positions, not a scan of the fields:
-- re-driven entries start with the marker pair seg.to = group (a name
-- reserved by segmenter); entries re-driven by earlier versions are ones
-- segmenter wrote (format version v first) ending with to = group. An entry
-- re-driven for this group is delivered without its marker, with its
-- original fields only.
local function for_other(e)
  local f = e[2]
  if f[1] == 'seg.to' then
    if f[2] == group then
      table.remove(f, 1); table.remove(f, 1)
      return false
    end
  else
    local n = #f
    if f[1] ~= 'v' or f[n - 1] ~= 'to' or f[n] == group then return false end
  end
  redis.call('XACK', KEYS[2], group, e[1])
  return true
end

local claimed = cursor ~= ''
if not claimed then
  local due, _, err = oldest_due()
  if err then return err end
  if due then cursor = '0-0'; claim_idle = ARGV[5]; claimed = true end
elseif cursor ~= '0-0' then
  -- A claim spanning several fetches: a message it already passed may have
  -- come due again. Redelivery goes oldest first, so start over.
  local due, id, err = oldest_due()
  if err then return err end
  if due and id_less(id, cursor) then cursor = '0-0' end
end

local entries, trimmed, counts, next_cursor = {}, {}, {}, ''
if cursor ~= '' then
  local rounds = 0
  while #entries < count and rounds < 32 do
    rounds = rounds + 1
    local r = redis.pcall('XAUTOCLAIM', KEYS[2], group, me, claim_idle, cursor, 'COUNT', count - #entries)
    if type(r) == 'table' and r.err then return r end
    cursor = r[1]
    for _, e in ipairs(r[2]) do
      if e and not for_other(e) then table.insert(entries, e) end
    end
    if r[3] then
      for _, id in ipairs(r[3]) do table.insert(trimmed, id) end
    end
    if cursor == '0-0' then break end
  end
  if cursor ~= '0-0' then next_cursor = cursor end
  if next_cursor == '' and claim_idle == '0' then
    -- The whole pending list is ours now: the entries of departed consumers
    -- hold nothing any more and can go (deleting one first would lose its
    -- pending messages).
    for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[2], group)) do
      local name, pending
      for i = 1, #info, 2 do
        if info[i] == 'name' then name = info[i + 1] elseif info[i] == 'pending' then pending = info[i + 1] end
      end
      if name ~= me and pending == 0 then redis.call('XGROUP', 'DELCONSUMER', KEYS[2], group, name) end
    end
  end
  -- Each claimed entry's own delivery count: the claimed ones can lie far
  -- apart in the pending list (those due for redelivery), with any number
  -- of the caller's other pending entries between them.
  for _, e in ipairs(entries) do
    local p = redis.call('XPENDING', KEYS[2], group, e[1], e[1], 1, me)
    if p[1] then
      table.insert(counts, p[1][1]); table.insert(counts, p[1][4])
    end
  end
end

local read_new = next_cursor == '' and #entries < count
if read_new and claimed then
  -- a claim spanning several fetches may have passed a message that came
  -- due again meanwhile: it goes first, on the next fetch.
  local due, _, err = oldest_due()
  if err then return err end
  if due then read_new = false end
end
local skipped_to -- the last entry read and skipped (meant for another group)
local new_read = 0 -- entries read for the first time
if read_new then
  -- Entries skipped leave room in the batch: read on.
  local rounds = 0
  while #entries < count and rounds < 32 do
    rounds = rounds + 1
    local r = redis.pcall('XREADGROUP', 'GROUP', group, me, 'COUNT', count - #entries, 'STREAMS', KEYS[2], '>')
    if type(r) == 'table' and r.err then return r end
    if not r then break end
    local skipped = false
    for _, e in ipairs(r[1][2]) do
      if for_other(e) then
        skipped, skipped_to = true, e[1]
      else
        table.insert(entries, e); new_read = new_read + 1
      end
    end
    if not skipped then break end
  end
end

-- The position to wait from when the partition is drained for now and no
-- new entry was read (the claimed ones can be far behind the last entry).
local top = ''
if new_read == 0 and next_cursor == '' and #entries < count then
  if skipped_to then
    top = skipped_to -- entries may follow it, unread: wait from there
  else
    local t = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
    if #t > 0 then top = t[1][1] else top = '0-0' end
  end
end
local whole = 0
if claimed and claim_idle == '0' then whole = 1 end
return {1, entries, next_cursor, trimmed, counts, top, claim_idle, whole}

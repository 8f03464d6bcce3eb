-- trim: the retention trim of a RetentionAcked partition. It never removes an
-- entry that some consumer group of the stream still needs, and it keeps at
-- least ARGV[1] entries.
-- KEYS[1] partition stream. ARGV[1] maxLen (> 0).
-- An entry is needed by a group when it is pending in the group (delivered,
-- not acked) or not yet delivered to it: the oldest needed entry of a group
-- is its oldest pending entry, or, when nothing is pending, the successor of
-- its last-delivered-id. The partition is trimmed (approximately, whole
-- radix-tree nodes, so it costs O(nodes freed)) below the oldest needed entry
-- of all groups, removing at most XLEN - maxLen entries. The LIMIT is that,
-- not Redis' default for ~ (100 nodes): a trim after a lagging group caught
-- up frees every node it can at once (about a millisecond per 10,000 nodes). Without groups it is
-- trimmed like MAXLEN ~ maxLen: nobody needs the entries (a group created
-- later with StartEarliest finds the last maxLen or so).
-- Cost: XLEN, XINFO GROUPS, one XPENDING per group with pending entries
-- (O(groups)), and the trim.
-- Reply: the number of entries removed.
local max_len = tonumber(ARGV[1])
local len = redis.call('XLEN', KEYS[1])
if len <= max_len then return 0 end

-- id_less compares two entry IDs numerically (ms, then seq).
local function id_less(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams < bms end
  return tonumber(aseq) < tonumber(bseq)
end

-- succ returns the ID just after id. The ms part stays a string (a Lua number
-- holds it exactly anyway); the seq part is small. A seq too large for a Lua
-- number keeps id itself: one entry more is kept, nothing is lost.
local function succ(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if #seq > 15 then return id end
  return ms .. '-' .. string.format('%d', tonumber(seq) + 1)
end

local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
  return redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', max_len, 'LIMIT', len - max_len)
end
local min_id
for _, g in ipairs(groups) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  local need
  if tonumber(f['pending']) > 0 then
    local p = redis.call('XPENDING', KEYS[1], f['name'], '-', '+', 1)
    if #p > 0 then need = p[1][1] end
  end
  if not need then need = succ(f['last-delivered-id']) end
  if not min_id or id_less(need, min_id) then min_id = need end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', min_id, 'LIMIT', len - max_len)

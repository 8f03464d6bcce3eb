-- redrive: move the dead letters ARGV[2..] of group ARGV[1] from KEYS[2]
-- back to the end of partition stream KEYS[1], for that group only, then
-- delete them from the dead letters. Nothing is trimmed here: the stream's
-- retention applies at the next send.
-- A re-driven entry starts with the marker pair seg.to = group, which the
-- fetch of every other group acknowledges and skips, and the fetch of the
-- group strips before delivering it; then come the original fields
-- verbatim, without:
--   - the marker of an earlier re-drive (a letter re-driven, then
--     dead-lettered again): there is one marker, first;
--   - the dlq.* fields the move appended at the end of the letter;
--   - in an entry segmenter wrote (format version v first), the field
--     to = group an earlier version appended last as its marker (segmenter
--     itself never writes a field 'to'; in an entry another tool wrote,
--     a 'to' field is the tool's own and is kept).
-- Reply: the new entry ID of each dead letter, in order ('' for one that no
-- longer exists) | an error (NOGROUP) when the group is missing on the
-- partition, and nothing moved.
local group = ARGV[1]
local g = redis.pcall('XPENDING', KEYS[1], group)
if type(g) == 'table' and g.err then return g end
local out = {}
for i = 2, #ARGV do
  local e = redis.call('XRANGE', KEYS[2], ARGV[i], ARGV[i])
  local new = ''
  if #e > 0 then
    local f = e[1][2]
    local first, last = 1, #f
    if f[1] == 'seg.to' then first = 3 end
    while last > first and string.sub(f[last - 1], 1, 4) == 'dlq.' do last = last - 2 end
    local ours = f[first] == 'v'
    local v = {'seg.to', group}
    for j = first, last - 1, 2 do
      if not (ours and f[j] == 'to') then
        table.insert(v, f[j]); table.insert(v, f[j + 1])
      end
    end
    new = redis.call('XADD', KEYS[1], '*', unpack(v))
    redis.call('XDEL', KEYS[2], ARGV[i])
  end
  table.insert(out, new)
end
return out

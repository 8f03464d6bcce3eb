-- redrive: move the dead letters ARGV[2..] of group ARGV[1] from KEYS[2]
-- back to the end of partition stream KEYS[1], for that group only: each is
-- appended with its original fields (without the dlq.* fields) and the
-- field to = group, which the fetch of every other group acknowledges and
-- skips; then it is deleted from the dead letters. Nothing is trimmed here:
-- the stream's retention applies at the next send.
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
    local f, v = e[1][2], {}
    for j = 1, #f, 2 do
      if f[j] ~= 'to' and string.sub(f[j], 1, 4) ~= 'dlq.' then
        table.insert(v, f[j]); table.insert(v, f[j + 1])
      end
    end
    table.insert(v, 'to'); table.insert(v, group) -- last: fetch.lua looks there
    new = redis.call('XADD', KEYS[1], '*', unpack(v))
    redis.call('XDEL', KEYS[2], ARGV[i])
  end
  table.insert(out, new)
end
return out

-- ack_many: the fenced ack of several partitions on a single Redis node (the
-- keys live in different cluster slots). KEYS: lease1, stream1, lease2,
-- stream2, ...; ARGV: owner, group, the ack's id, then per partition: epoch,
-- n, n IDs. The ack's id is recorded in each lease, as in ack.lua: a
-- partition whose lease moved on but holds this id was acknowledged by an
-- earlier run of this ack.
-- Reply: per partition {1, acked} | {0} fenced, in the order of KEYS.
keep_going(KEYS[1])
local owner, group, id = ARGV[1], ARGV[2], ARGV[3]
local out, a = {}, 4
for k = 1, #KEYS, 2 do
  local epoch, n = ARGV[a], tonumber(ARGV[a + 1])
  local first = a + 2
  a = first + n
  local l = redis.call('HMGET', KEYS[k], 'o', 'e')
  if l[1] ~= owner or l[2] ~= epoch then
    if redis.call('HGET', KEYS[k], 'k' .. epoch) == id then
      table.insert(out, {1, 0})
    else
      table.insert(out, {0})
    end
  else
    redis.call('HSET', KEYS[k], 'k' .. epoch, id)
    local acked = 0
    for i = first, first + n - 1, 1000 do
      acked = acked + redis.call('XACK', KEYS[k + 1], group, unpack(ARGV, i, math.min(i + 999, first + n - 1)))
    end
    table.insert(out, {1, acked})
  end
end
return out

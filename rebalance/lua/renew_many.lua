-- renew_many: renew, for ARGV[2] ms, every lease KEYS[i] that ARGV[1]
-- still holds under epoch ARGV[2 + i] (as renew.lua does for one). Only for
-- a single Redis node: the keys live in different cluster slots.
-- Reply: {1 renewed | 0 fenced, ...} in the order of KEYS.
local until_ms = fmt(now_ms() + tonumber(ARGV[2]))
local out = {}
for i, key in ipairs(KEYS) do
  local l = redis.call('HMGET', key, 'o', 'e')
  if l[1] == ARGV[1] and l[2] == ARGV[2 + i] then
    redis.call('HSET', key, 'x', until_ms)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out

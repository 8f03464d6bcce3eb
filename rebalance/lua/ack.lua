-- ack: acknowledge ARGV[4..] in group ARGV[3] of partition stream KEYS[2] if
-- ARGV[1] holds the lease KEYS[1] under epoch ARGV[2].
-- Reply: {1, acked} | {0} fenced.
local l = redis.call('HMGET', KEYS[1], 'o', 'e')
if l[1] ~= ARGV[1] or l[2] ~= ARGV[2] then return {0} end
return {1, redis.call('XACK', KEYS[2], ARGV[3], unpack(ARGV, 4))}

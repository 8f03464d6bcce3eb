-- release: free the lease KEYS[1] held by ARGV[1] under epoch ARGV[2]; the epoch
-- stays so the next grant is greater. Reply: 1 released | 0 not ours.
keep_going(KEYS[1])
local l = redis.call('HMGET', KEYS[1], 'o', 'e')
if l[1] ~= ARGV[1] or l[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'o', '', 'x', '0')
return 1

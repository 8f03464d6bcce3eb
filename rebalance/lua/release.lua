-- release: free the lease KEYS[1] held by ARGV[1] under epoch ARGV[2]; the epoch
-- stays so the next grant is greater. ARGV[3] is the release's token, the
-- same for every attempt of one release: the release records it (field rt,
-- which a grant leaves), so that an attempt sent again after the reply of
-- one that ran was lost succeeds again, also once the next owner took the
-- lease. Reply: 1 released | 0 not ours.
keep_going(KEYS[1])
local l = redis.call('HMGET', KEYS[1], 'o', 'e', 'rt')
if l[3] == ARGV[3] then return 1 end
if l[1] ~= ARGV[1] or l[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'o', '', 'x', '0', 'rt', ARGV[3])
return 1

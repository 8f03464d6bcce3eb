-- renew: extend the lease KEYS[1] by ARGV[3] ms if ARGV[1] still holds it under
-- epoch ARGV[2]. A lease that expired but was granted to nobody else is still
-- ours: nobody else could have read, claimed or acked under it.
-- Reply: {1} renewed | {0, holder, epoch} fenced.
keep_going(KEYS[1])
local l = redis.call('HMGET', KEYS[1], 'o', 'e')
if l[1] ~= ARGV[1] or l[2] ~= ARGV[2] then return {0, l[1] or '', l[2] or ''} end
redis.call('HSET', KEYS[1], 'x', fmt(now_ms() + tonumber(ARGV[3])))
return {1}

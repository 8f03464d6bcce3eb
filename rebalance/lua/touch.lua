-- touch: reset the idle time of messages ARGV[4..] of group ARGV[3] in the
-- partition stream KEYS[2], if ARGV[1] holds the lease KEYS[1] under epoch
-- ARGV[2], so they do not come due for redelivery while still being
-- processed. JUSTID leaves their delivery count unchanged.
-- Reply: {1, touched} | {0} fenced.
local l = redis.call('HMGET', KEYS[1], 'o', 'e')
if l[1] ~= ARGV[1] or l[2] ~= ARGV[2] then return {0} end
local args = {'XCLAIM', KEYS[2], ARGV[3], ARGV[1], '0'}
for i = 4, #ARGV do table.insert(args, ARGV[i]) end
table.insert(args, 'JUSTID')
return {1, #redis.call(unpack(args))}

-- ack: acknowledge ARGV[5..] in group ARGV[3] of partition stream KEYS[2] if
-- ARGV[1] holds the lease KEYS[1] under epoch ARGV[2]. ARGV[4] is the ack's
-- id, recorded in the lease (field k<epoch>): a run that finds the lease
-- moved on but its own id there is a retry of an ack whose first run
-- acknowledged the messages and whose reply was lost (go-redis retries it,
-- and so does the SDK after a failed native ack), so it is not fenced.
-- Reply: {1, acked} | {0} fenced.
keep_going(KEYS[1])
local l = redis.call('HMGET', KEYS[1], 'o', 'e')
if l[1] ~= ARGV[1] or l[2] ~= ARGV[2] then
  if redis.call('HGET', KEYS[1], 'k' .. ARGV[2]) == ARGV[4] then return {1, 0} end
  return {0}
end
redis.call('HSET', KEYS[1], 'k' .. ARGV[2], ARGV[4])
return {1, redis.call('XACK', KEYS[2], ARGV[3], unpack(ARGV, 5))}

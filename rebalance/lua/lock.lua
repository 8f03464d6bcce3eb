-- lock: take the coordinator lock KEYS[1] for token ARGV[1], for ARGV[2] ms,
-- if nobody holds it (SET NX PX, in a script so that it is not refused while
-- Redis is out of memory: see keep_going).
-- Reply: 1 taken | 0 held by another.
keep_going(KEYS[1])
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0

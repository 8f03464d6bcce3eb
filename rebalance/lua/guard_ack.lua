-- guard_ack: the fence of a native acknowledgement (see native.go), as
-- guard_fetch: it runs after WATCH of the leases and before MULTI ... XACK
-- ... EXEC, and writes to a lease that is not the caller's, which aborts
-- the EXEC. Sent with EVAL, never EVALSHA.
-- KEYS: lease 1..n. ARGV: owner, then the epoch of each lease.
-- Reply: {1} all clear | {0, i} lease i is not the caller's.
for i = 1, #KEYS do
  local l = redis.pcall('HMGET', KEYS[i], 'o', 'e')
  if type(l) ~= 'table' or l.err or l[1] ~= ARGV[1] or l[2] ~= ARGV[1 + i] then
    -- A write that uses no memory first: out of memory (maxmemory,
    -- noeviction) the HSET is then not refused (see keep_going in prelude.lua).
    redis.pcall('HDEL', KEYS[i], '-')
    redis.pcall('HSET', KEYS[i], 'w', '1')
    return {0, i}
  end
end
return {1}

-- guard_fetch: the fence of a native group read (see native.go). It runs
-- after WATCH of the leases and before MULTI ... XREADGROUP ... EXEC, on one
-- connection: when a check fails it writes to a lease, which aborts the
-- EXEC, so the read runs only if every lease was the caller's from this
-- check to the read. Sent with EVAL, never EVALSHA: a script that did not
-- run (NOSCRIPT) would let the read through unfenced.
-- KEYS: lease 1..n, then stream 1..n, then the leases of the acks the
-- transaction also runs (m of them). ARGV: owner, group, redelivery idle ms
-- ('' = none), fetch id (the retry marker the transaction leaves on the
-- first lease), the partitions to look for due messages in (a '1' or '0'
-- per partition: the caller's clock tells it which may have some), then the
-- epoch of each of the n + m leases.
-- Reply: {1} all clear | {0, i, why} aborted at partition i, why one of
-- 'fenced', 'retry' (the previous fetch was this one: its reply was lost),
-- 'unknown' (the first lease, which holds the marker, is not the caller's:
-- whether this fetch ran before cannot be told), 'due' (a pending message
-- is due for redelivery), 'error'.
local owner, group, idle = ARGV[1], ARGV[2], ARGV[3]
local n = #ARGV[5]
for i = 1, n do
  local why
  local l = redis.pcall('HMGET', KEYS[i], 'o', 'e', 'r')
  if type(l) ~= 'table' or l.err then
    why = 'error'
  elseif l[1] ~= owner or l[2] ~= ARGV[5 + i] then
    if i == 1 then why = 'unknown' else why = 'fenced' end
  elseif i == 1 and l[3] == ARGV[4] then
    why = 'retry'
  elseif idle ~= '' and string.byte(ARGV[5], i) == 49 then
    local p = redis.pcall('XPENDING', KEYS[n + i], group, 'IDLE', idle, '-', '+', 1)
    if type(p) ~= 'table' or p.err then why = 'error' elseif #p > 0 then why = 'due' end
  end
  if why then
    -- A write that uses no memory first: out of memory (maxmemory,
    -- noeviction) the HSET is then not refused (see keep_going in prelude.lua).
    redis.pcall('HDEL', KEYS[i], '-')
    redis.pcall('HSET', KEYS[i], 'w', '1')
    return {0, i, why}
  end
end
-- The acks' leases, once the first lease showed this is no retry.
for i = n + 1, #KEYS - n do
  local l = redis.pcall('HMGET', KEYS[n + i], 'o', 'e')
  if type(l) ~= 'table' or l.err or l[1] ~= owner or l[2] ~= ARGV[5 + i] then
    redis.pcall('HDEL', KEYS[n + i], '-') -- as above: not refused out of memory
    redis.pcall('HSET', KEYS[n + i], 'w', '1')
    return {0, i, 'fenced'}
  end
end
return {1}

-- prelude: shared by every script (prepended when the script is built).
-- Redis < 7 needs effects replication for TIME before writes; 7+ always does it.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function now_ms() return math.floor(now_us() / 1000) end
local function fmt(n) return string.format('%d', n) end
-- keep_going: under maxmemory with the noeviction policy Redis refuses a
-- script's first write when it may use memory (HSET, ZADD, XADD), and no
-- write after one that uses none (a script is never cut halfway). The
-- coordination of consumers (heartbeats, leases, fenced reads, rebalances)
-- must go on while Redis refuses producers: it holds little, and acks free
-- memory. A script that may write calls this first: an HDEL of a field no
-- hash of segmenter has, on one of its keys (one slot), which uses no
-- memory and changes nothing (on a key of another type it fails, and the
-- pcall ignores that; it counts as a write all the same).
local function keep_going(key) redis.pcall('HDEL', key, '-') end

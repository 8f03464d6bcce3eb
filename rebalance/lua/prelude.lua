-- prelude: shared by every script (prepended when the script is built).
-- Redis < 7 needs effects replication for TIME before writes; 7+ always does it.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function now_ms() return math.floor(now_us() / 1000) end
local function fmt(n) return string.format('%d', n) end

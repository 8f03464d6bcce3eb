-- members: KEYS[1] members, KEYS[2] assignment. Read-only: what operators'
-- tools show of a group.
-- Reply: {now_ms, members and their session expiry (ZRANGE WITHSCORES, every
-- member, expired or not), assignment hash as a flat field/value list}.
return {fmt(now_ms()), redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'), redis.call('HGETALL', KEYS[2])}

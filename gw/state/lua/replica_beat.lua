-- A replica's supervisor says it is alive, whatever its config: its record (what /fleet lists)
-- is rewritten and its beat time moved on; replicas silent for longer than the TTL leave the set.
--
-- KEYS[1]  members  sorted set: replica id -> server time (ms) of its last beat
-- KEYS[2]  record   string: this replica's record (JSON), expiring with its beats
-- ARGV[1]  id       this replica ("host:supervisor pid", gw.state.replicas)
-- ARGV[2]  record   the JSON to store
-- ARGV[3]  ttl      ms after which a silent replica no longer counts
--
-- Returns the server time (ms) of this beat.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
return now

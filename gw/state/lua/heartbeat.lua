-- A worker says it is alive and learns how many workers of the fleet are: the divisor of a
-- RateLimitPolicy's limit when it falls back to local counting (failureMode: Local).
--
-- KEYS[1]  workers  sorted set: worker id -> server time (ms) of its last heartbeat
-- ARGV[1]  id       this worker ("host:supervisor pid:pid:random", gw.state.fleet)
-- ARGV[2]  ttl      ms after which a silent worker no longer counts
--
-- Returns the number of live workers, this one included.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])

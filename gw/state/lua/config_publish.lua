-- Publish a config version: dedupe, allocate a number, compare-and-set `current`, trim history,
-- announce. One script so that concurrent publishers produce a linear history.
--
-- KEYS[1]  seq        string  last version number handed out
-- KEYS[2]  current    string  the current version number (absent: none yet)
-- KEYS[3]  versions   hash    version number -> msgpack blob
-- KEYS[4]  checksums  hash    version number -> sha256 of the version's files
-- KEYS[5]  history    list    version numbers, newest first
-- ARGV[1]  expected   the current version the caller built on ("0": none)
-- ARGV[2]  checksum   sha256 of the new version's files
-- ARGV[3]  blob       the new version, msgpack
-- ARGV[4]  keep       versions to keep in history (GW_CONFIG_HISTORY)
-- ARGV[5]  channel    pub/sub channel to announce the new current version on
--
-- Returns {status, version}:
--   {"unchanged", current}  the content equals the current version's: nothing written
--   {"conflict", current}   current is not ARGV[1]: nothing written, rebuild on `current`
--   {"created", n}          version n stored, current = n, n published on the channel

local current = tonumber(redis.call('GET', KEYS[2]) or '0')
-- Dedupe before the CAS: replicas publishing the same files converge even when they raced.
if current > 0 and redis.call('HGET', KEYS[4], current) == ARGV[2] then
    return {'unchanged', current}
end
if current ~= tonumber(ARGV[1]) then
    return {'conflict', current}
end

local n = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[3], n, ARGV[3])
redis.call('HSET', KEYS[4], n, ARGV[2])
redis.call('SET', KEYS[2], n)
redis.call('LPUSH', KEYS[5], n)

local keep = tonumber(ARGV[4])
local dropped = redis.call('LRANGE', KEYS[5], keep, -1)
for _, old in ipairs(dropped) do
    redis.call('HDEL', KEYS[3], old)
    redis.call('HDEL', KEYS[4], old)
end
redis.call('LTRIM', KEYS[5], 0, keep - 1)

redis.call('PUBLISH', ARGV[5], n)
return {'created', n}

-- Replace a kept config version's stored blob by the same content sealed again (key rotation, or
-- sealing a version stored in the clear), unless the version changed or went since it was read.
-- Content and checksum stay: a version's meaning never changes, only how its secrets are sealed.
--
-- KEYS[1]  versions   hash    version number -> msgpack blob
-- ARGV[1]  number     the version
-- ARGV[2]  read       sha1 of the blob the caller read and opened
-- ARGV[3]  blob       the same version, sealed with the caller's first key
--
-- Returns 1 when replaced, 0 when the version is gone (trimmed) or not the blob read.

local blob = redis.call('HGET', KEYS[1], ARGV[1])
if not blob or redis.sha1hex(blob) ~= ARGV[2] then
    return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1

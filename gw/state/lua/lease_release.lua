-- Give a backend's active-check lease up (compare-and-delete), so another checker takes it at its
-- next attempt rather than when the TTL runs out: a supervisor stopping, a backend's checks removed.
--
-- KEYS[1]  lease  string: the holding checker's id, with a TTL
-- ARGV[1]  id     this checker
--
-- Returns 1 when the lease was this checker's (and is free now), 0 otherwise.

if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0

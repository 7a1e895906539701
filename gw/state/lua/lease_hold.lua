-- Hold a backend's active-check lease: take it when nobody holds it, extend it when we do
-- (compare-and-pexpire). One checker in the fleet probes a backend's endpoints; a checker that dies
-- stops extending, and another takes the lease once its TTL has run out.
--
-- KEYS[1]  lease  string: the holding checker's id, with a TTL
-- ARGV[1]  id     this checker ("host:pid:random")
-- ARGV[2]  ttl    ms the lease lasts from now
--
-- Returns 1 when this checker holds the lease now, 0 when another does.

if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
end
return 0

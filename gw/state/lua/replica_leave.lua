-- A replica that stops cleanly leaves the fleet at once, not when its TTL runs out.
--
-- KEYS[1]  members  sorted set: replica id -> server time (ms) of its last beat
-- KEYS[2]  record   string: this replica's record
-- ARGV[1]  id       this replica
--
-- Returns 1 when the replica was a member, 0 otherwise.

redis.call('DEL', KEYS[2])
return redis.call('ZREM', KEYS[1], ARGV[1])

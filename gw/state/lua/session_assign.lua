-- Settle which endpoint a header-type session is pinned to, once for the whole fleet: the first
-- worker to propose one for a new session id wins (two replicas seeing a new id at once agree).
--
-- KEYS[1]  the session's key (Keys.sessions(name) .. ':' .. id)   string: "address:port"
-- ARGV[1]  the endpoint this worker proposes (its balancer's pick)
-- ARGV[2]  the session's timeout in ms (absoluteTimeout, or idleTimeout when that is set)
-- ARGV[3]  "1": the timeout is an idle one (each use extends it); "0": absolute
-- ARGV[4]  "" or an endpoint that is gone: if the session is pinned to it, re-pin to ARGV[1]
--
-- Returns {endpoint the session is pinned to, 1 if this call pinned it (to ARGV[1]) else 0}: the
-- proposer counts a session it created or re-pinned, the others (whose pick may be the same
-- endpoint by chance) count nothing.

local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[4] then
    if ARGV[3] == '1' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
    return {current, 0}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {ARGV[1], 1}

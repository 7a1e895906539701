-- An endpoint's probe health changed in the eyes of the backend's active checker: number the change,
-- store it and tell the fleet. Only the lease holder may: a checker that lost its lease (stalled
-- past the TTL) must not overwrite what its successor decides.
--
-- KEYS[1]  version    string: the backend's last event number
-- KEYS[2]  endpoints  hash: "<endpoint>|pv|pok|psince|pwhy|pby" among others (gw.state.keys)
-- KEYS[3]  lease      string: the holding checker's id
-- ARGV[1]  backend    its name, as events carry it
-- ARGV[2]  endpoint   "address:port"
-- ARGV[3]  ok         "1" healthy, "0" unhealthy
-- ARGV[4]  why        the reason, for people ("3 consecutive failures: status 500")
-- ARGV[5]  by         this checker's id (the lease's value)
-- ARGV[6]  channel    Keys.backend_events
--
-- Returns the event's number, or 0 when the caller does not hold the lease (nothing written).

if redis.call('GET', KEYS[3]) ~= ARGV[5] then
    return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('INCR', KEYS[1])
local ep = ARGV[2]
redis.call('HSET', KEYS[2], ep .. '|pv', v, ep .. '|pok', ARGV[3], ep .. '|psince', now,
    ep .. '|pwhy', ARGV[4], ep .. '|pby', ARGV[5])
local s = 'unhealthy'
if ARGV[3] == '1' then s = 'healthy' end
redis.call('PUBLISH', ARGV[6], cjson.encode({b = ARGV[1], k = 'probe', e = ep, v = v, s = s,
    now = now, since = now, why = ARGV[4], by = ARGV[5]}))
return v

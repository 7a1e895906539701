-- Renumber the stored probe health of a backend's endpoints above `floor` and tell the fleet again.
-- A replica that checked on its own while Redis was away told its workers events numbered by itself,
-- up to `floor`; workers keep the higher number of an item, so the fleet's state must now outrank
-- them. The version counter is raised to `floor` first, so every later change outranks them too.
-- States are unchanged: an endpoint with no stored probe health is healthy, as checkers start (and
-- is stored so).
--
-- KEYS[1]  version    string: the backend's last event number
-- KEYS[2]  endpoints  hash: "<endpoint>|pv|pok|psince|pwhy|pby" among others (gw.state.keys)
-- ARGV[1]  backend    its name, as events carry it
-- ARGV[2]  floor      the highest event number the caller made up itself
-- ARGV[3]  by         the caller's checker id
-- ARGV[4]  channel    Keys.backend_events
-- ARGV[5..]           the endpoints ("address:port") its config names
--
-- Returns the backend's last event number.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local floor = tonumber(ARGV[2])
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v < floor then
    redis.call('SET', KEYS[1], floor)
end
for i = 5, #ARGV do
    local ep = ARGV[i]
    local stored = redis.call('HMGET', KEYS[2], ep .. '|pok', ep .. '|psince', ep .. '|pwhy', ep .. '|pby')
    v = redis.call('INCR', KEYS[1])
    local event = {b = ARGV[1], k = 'probe', e = ep, v = v, s = 'healthy', now = now, why = 'resync', by = ARGV[3]}
    if stored[1] then
        if stored[1] ~= '1' then event.s = 'unhealthy' end
        event.since = tonumber(stored[2])
        event.why = stored[3] or ''
        event.by = stored[4] or ARGV[3]
        redis.call('HSET', KEYS[2], ep .. '|pv', v)
    else  -- stored, so that the supervisors' heal (reading these hashes) carries it too
        redis.call('HSET', KEYS[2], ep .. '|pv', v, ep .. '|pok', '1', ep .. '|psince', now,
            ep .. '|pwhy', 'resync', ep .. '|pby', ARGV[3])
        event.since = now
    end
    redis.call('PUBLISH', ARGV[4], cjson.encode(event))
end
return v

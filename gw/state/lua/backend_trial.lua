-- A worker asks for a trial call to a backend whose circuit is open: once the open duration is
-- over, the circuit goes half-open and hands out `half_open` trial calls to the whole fleet, first
-- come first served. Trials not reported within another open duration are handed out again (their
-- worker may have died).
--
-- KEYS[1]  version  string  the backend's last event number
-- KEYS[2]  circuit  hash    s v since until why by granted ok
-- ARGV[1]  channel to publish events on
-- ARGV[2]  backend name
-- ARGV[3]  who asks
-- ARGV[4]  half_open: trial calls in total
-- ARGV[5]  open_ms: the open duration
--
-- Returns a JSON object: {granted = 0|1, circuit = <the circuit as an event>}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local channel, backend, by = ARGV[1], ARGV[2], ARGV[3]
local half_open, open_ms = tonumber(ARGV[4]), tonumber(ARGV[5])

local c = redis.call('HMGET', KEYS[2], 's', 'until', 'since', 'granted')
local state, until_ms, since, granted = c[1] or 'closed', tonumber(c[2] or '0'), tonumber(c[3] or '0'), tonumber(c[4] or '0')

local function half(why)
    local v = redis.call('INCR', KEYS[1])
    redis.call('HSET', KEYS[2], 's', 'half-open', 'v', v, 'since', now, 'until', 0, 'why', why, 'by', by,
        'granted', 0, 'ok', 0)
    redis.call('PUBLISH', channel, cjson.encode({k = 'circuit', b = backend, s = 'half-open', v = v, ['until'] = 0,
        now = now, why = why, by = by}))
    granted = 0
    state = 'half-open'
end

if state == 'open' and now >= until_ms then
    half('open duration over')
elseif state == 'half-open' and granted >= half_open and now - since >= open_ms then
    half('trial calls unanswered for an open duration')
end

local ok = 0
if state == 'half-open' and granted < half_open then
    redis.call('HINCRBY', KEYS[2], 'granted', 1)
    ok = 1
end

c = redis.call('HMGET', KEYS[2], 's', 'v', 'since', 'until', 'why', 'by')
return cjson.encode({granted = ok, circuit = {k = 'circuit', b = backend, now = now, s = c[1] or 'closed',
    v = tonumber(c[2] or '0'), since = tonumber(c[3] or '0'), ['until'] = tonumber(c[4] or '0'), why = c[5] or '',
    by = c[6] or ''}})

-- One worker's outcomes of calls to one backend since its last report, applied to the fleet's
-- state on server time: the circuit's window and transitions, and each endpoint's consecutive
-- error counts and ejection. Every change takes the backend's next event number and is published.
--
-- KEYS[1]  version    string  the backend's last event number
-- KEYS[2]  circuit    hash    s v since until why by granted ok
-- KEYS[3]  window     hash    "<bucket>:c|f|s" -> calls, failures, slow calls
-- KEYS[4]  endpoints  hash    "<ep>|c5|cg|cl" consecutive counts, "<ep>|f5|fg|fl" when each last
--                             failed (ms); "<ep>|until|times|ev|since|why|by" its ejection
-- KEYS[5]  ejected    zset    endpoint -> until (ms)
-- ARGV[1]  channel to publish events on
-- ARGV[2]  backend name (events' b)
-- ARGV[3]  who reports (events' by)
-- ARGV[4]  breaker: "window_ms,buckets,minimum,failure_ratio,slow_ratio,open_ms,half_open", or "" (none)
-- ARGV[5..9]  calls, failures, slow calls (closed state), trial successes, trial failures
-- ARGV[10] passive: "c5,cg,cl,base_ms,max_percent,interval_ms,endpoints", or "" (none)
-- ARGV[11..] per endpoint, eleven values: endpoint, reset mask (1 c5, 2 cg, 4 cl: a success came,
--            counts restart), the 5xx, gateway and local-origin failures after it, then per count
--            the ms since its restart and the ms since its last failure. A restart older than a
--            failure already counted (another worker's, reported first) restarts nothing: counts
--            follow when things happened, not when they were reported.
--
-- Returns a JSON array: the circuit as an event (always), then the events this call made.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local channel, backend, by = ARGV[1], ARGV[2], ARGV[3]
local made = {}

local function publish(event)
    event.b = backend
    event.now = now
    event.by = by
    local text = cjson.encode(event)
    redis.call('PUBLISH', channel, text)
    made[#made + 1] = event
end

local function split(text)
    local out = {}
    for part in string.gmatch(text, '[^,]+') do out[#out + 1] = tonumber(part) end
    return out
end

-- The circuit ------------------------------------------------------------------------------------
local c = redis.call('HMGET', KEYS[2], 's', 'v', 'since', 'until', 'why', 'by', 'granted', 'ok')
local state = c[1] or 'closed'

local function transition(to, why, open_ms)
    local v = redis.call('INCR', KEYS[1])
    local until_ms = 0
    if to == 'open' then until_ms = now + open_ms end
    redis.call('HSET', KEYS[2], 's', to, 'v', v, 'since', now, 'until', until_ms, 'why', why, 'by', by,
        'granted', 0, 'ok', 0)
    redis.call('DEL', KEYS[3])
    state = to
    publish({k = 'circuit', s = to, v = v, ['until'] = until_ms, why = why})
end

if ARGV[4] ~= '' then
    local p = split(ARGV[4])
    local window_ms, buckets, minimum, failure_ratio, slow_ratio, open_ms, half_open =
        p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    local calls, failures, slow = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
    local trial_ok, trial_fail = tonumber(ARGV[8]), tonumber(ARGV[9])
    if state == 'closed' and calls > 0 then
        local size = math.max(1, math.floor(window_ms / buckets))
        local bucket = math.floor(now / size)
        redis.call('HINCRBY', KEYS[3], bucket .. ':c', calls)
        if failures > 0 then redis.call('HINCRBY', KEYS[3], bucket .. ':f', failures) end
        if slow > 0 then redis.call('HINCRBY', KEYS[3], bucket .. ':s', slow) end
        local fields = redis.call('HGETALL', KEYS[3])
        local sum = {c = 0, f = 0, s = 0}
        local stale = {}
        for i = 1, #fields, 2 do
            local b, what = string.match(fields[i], '^(%d+):(%a)$')
            if b and tonumber(b) > bucket - buckets then
                sum[what] = sum[what] + tonumber(fields[i + 1])
            else
                stale[#stale + 1] = fields[i]
            end
        end
        if #stale > 0 then redis.call('HDEL', KEYS[3], unpack(stale)) end
        redis.call('PEXPIRE', KEYS[3], window_ms * 2)
        if sum.c >= minimum then
            local fr, sr = sum.f / sum.c, sum.s / sum.c
            if failure_ratio > 0 and fr >= failure_ratio then
                transition('open', string.format('failure ratio %.2f over %d calls', fr, sum.c), open_ms)
            elseif slow_ratio > 0 and sr >= slow_ratio then
                transition('open', string.format('slow call ratio %.2f over %d calls', sr, sum.c), open_ms)
            end
        end
    elseif state == 'half-open' then
        if trial_fail > 0 then
            transition('open', 'a trial call failed', open_ms)
        elseif trial_ok > 0 then
            local ok = redis.call('HINCRBY', KEYS[2], 'ok', trial_ok)
            if ok >= half_open then transition('closed', ok .. ' trial calls succeeded', 0) end
        end
    end
end

-- Endpoints --------------------------------------------------------------------------------------
if ARGV[10] ~= '' and #ARGV > 10 then
    local p = split(ARGV[10])
    local limits = {p[1], p[2], p[3]}
    local base_ms, max_percent, interval_ms, total = p[4], p[5], p[6], p[7]
    local names = {'c5', 'cg', 'cl'}
    local reasons = {'consecutive 5xx responses', 'consecutive gateway errors', 'consecutive local-origin failures'}
    local allowed = math.max(1, math.floor(total * max_percent / 100))
    if max_percent <= 0 then allowed = 0 end
    local last = {'|f5', '|fg', '|fl'}
    for i = 11, #ARGV, 11 do
        local ep, mask = ARGV[i], tonumber(ARGV[i + 1])
        local h = redis.call('HMGET', KEYS[4], ep .. '|c5', ep .. '|cg', ep .. '|cl', ep .. '|until', ep .. '|times',
            ep .. '|f5', ep .. '|fg', ep .. '|fl')
        local until_ms, times = tonumber(h[4] or '0'), tonumber(h[5] or '0')
        local counts = {}
        for j = 1, 3 do
            local n = tonumber(h[j] or '0')
            local last_failure = tonumber(h[5 + j] or '0')
            local restarted_at = now - tonumber(ARGV[i + 4 + j])
            if math.floor(mask / 2 ^ (j - 1)) % 2 == 1 and restarted_at > last_failure then n = 0 end
            local added = tonumber(ARGV[i + 1 + j])
            counts[j] = n + added
            local failed_at = now - tonumber(ARGV[i + 7 + j])
            if added > 0 and failed_at > last_failure then redis.call('HSET', KEYS[4], ep .. last[j], failed_at) end
        end
        local hit = 0
        for _, j in ipairs({3, 2, 1}) do  -- the most specific reason first: local-origin, gateway, 5xx
            if hit == 0 and limits[j] > 0 and counts[j] >= limits[j] then hit = j end
        end
        if hit > 0 and until_ms <= now then
            redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
            if redis.call('ZCARD', KEYS[5]) < allowed then
                -- Envoy's multiplier: one more for this ejection, one less per healthy interval since the last.
                if until_ms > 0 then times = math.max(0, times - math.floor((now - until_ms) / interval_ms)) end
                times = times + 1
                local new_until = now + math.min(base_ms * times, math.max(base_ms, 300000))
                local v = redis.call('INCR', KEYS[1])
                local why = counts[hit] .. ' ' .. reasons[hit]
                redis.call('HSET', KEYS[4], ep .. '|until', new_until, ep .. '|times', times, ep .. '|ev', v,
                    ep .. '|since', now, ep .. '|why', why, ep .. '|by', by)
                redis.call('ZADD', KEYS[5], new_until, ep)
                counts = {0, 0, 0}
                publish({k = 'eject', e = ep, s = 'ejected', v = v, ['until'] = new_until, why = why})
            end
        end
        redis.call('HSET', KEYS[4], ep .. '|c5', counts[1], ep .. '|cg', counts[2], ep .. '|cl', counts[3])
    end
end

c = redis.call('HMGET', KEYS[2], 's', 'v', 'since', 'until', 'why', 'by')
local circuit = {k = 'circuit', b = backend, now = now, s = c[1] or 'closed', v = tonumber(c[2] or '0'),
    since = tonumber(c[3] or '0'), ['until'] = tonumber(c[4] or '0'), why = c[5] or '', by = c[6] or ''}
local reply = {circuit}
for _, event in ipairs(made) do reply[#reply + 1] = event end
return cjson.encode(reply)

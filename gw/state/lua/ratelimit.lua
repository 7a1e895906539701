-- Take tokens from every limit of one RateLimitPolicy for one request key, atomically, on server
-- time. All of a policy's limits in one call: a request over its daily limit consumes nothing from
-- its per-second limit, and the decision costs one round trip whatever the number of limits.
--
-- KEYS[i]   the counter of limit i for this request's key (one family: same hash tag)
--             GCRA:           string  theoretical arrival time (ms, server clock)
--             sliding window: hash    window number -> requests counted in it
-- ARGV[1]   wanted: tokens asked for (1 for an exact decision; a lease's batch size)
-- ARGV[2+4(i-1)..]  per limit i, four values:
--             algorithm  "g" (GCRA) or "w" (sliding window)
--             requests   quota per period
--             period     ms
--             burst      GCRA bucket depth in requests (ignored by the sliding window)
--
-- Returns {granted, retry, r1, t1, r2, t2, ...}, all integers:
--   granted  tokens taken from every limit, 0..wanted (the least any limit could give)
--   retry    granted == 0: ms until every limit could give one token again; else 0
--   r_i      limit i's remaining tokens after this call
--   t_i      ms until limit i is fully restored (GCRA) or its current window ends (sliding)

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wanted = tonumber(ARGV[1])
local n = #KEYS
local state = {}
local granted = wanted
local retry = 0

for i = 1, n do
    local base = 2 + (i - 1) * 4
    local algorithm = ARGV[base]
    local quota = tonumber(ARGV[base + 1])
    local period = tonumber(ARGV[base + 2])
    local s = {algorithm = algorithm, quota = quota, period = period}
    local avail
    if algorithm == 'g' then
        local interval = period / quota
        local depth = tonumber(ARGV[base + 3]) * interval
        local tat = tonumber(redis.call('GET', KEYS[i]) or now)
        if tat < now then tat = now end
        avail = math.floor((now + depth - tat) / interval + 1e-9)
        s.tat, s.interval, s.depth = tat, interval, depth
        if avail < 1 then
            local wait = math.ceil(tat + interval - depth - now)
            if wait > retry then retry = wait end
        end
    else
        local index = math.floor(now / period)
        local elapsed = now - index * period
        local counts = redis.call('HMGET', KEYS[i], string.format('%d', index), string.format('%d', index - 1))
        local cur = tonumber(counts[1]) or 0
        local prev = tonumber(counts[2]) or 0
        local used = prev * (period - elapsed) / period + cur
        avail = math.floor(quota - used + 1e-9)
        s.index, s.elapsed, s.used = index, elapsed, used
        if avail < 1 then
            -- The previous window's share decays linearly; when does one token fit again?
            local wait
            if cur <= quota - 1 then
                wait = (period - (quota - 1 - cur) * period / prev) - elapsed
            else
                wait = (period - elapsed) + math.max(0, period - (quota - 1) * period / cur)
            end
            wait = math.max(1, math.ceil(wait))
            if wait > retry then retry = wait end
        end
    end
    if avail < 0 then avail = 0 end
    if avail < granted then granted = avail end
    state[i] = s
end

local out = {granted, 0}
if granted < 1 then out[2] = retry end
for i = 1, n do
    local s = state[i]
    local remaining, reset
    if s.algorithm == 'g' then
        local tat = s.tat + granted * s.interval
        if granted > 0 then
            redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', math.max(1, math.ceil(tat - now)))
        end
        remaining = math.floor((now + s.depth - tat) / s.interval + 1e-9)
        reset = math.ceil(tat - now)
    else
        if granted > 0 then
            redis.call('HINCRBY', KEYS[i], string.format('%d', s.index), granted)
            redis.call('HDEL', KEYS[i], string.format('%d', s.index - 2))
            redis.call('PEXPIRE', KEYS[i], 2 * s.period)
        end
        remaining = math.floor(s.quota - s.used - granted + 1e-9)
        reset = math.ceil(s.period - s.elapsed)
    end
    if remaining < 0 then remaining = 0 end
    out[#out + 1] = remaining
    out[#out + 1] = reset
end
return out

"""The one Lua script behind every quota operation (admit, settle, renew, peek, baseline).

Each subject (the key, then the tenant) owns five Redis keys: a request bucket and a token
bucket (hashes {l = level, t = ms}), a lease sorted set (member = lease id, score = expiry
ms), and the month's token and spend counters. Buckets drain continuously at limit/60 s, so a
limit of N per minute admits a burst of N and then one more every 60/N seconds.

ARGV: mode, subject count S, then S x 5 limits (-1 = none: rpm, tpm, concurrency, monthly
tokens, monthly spend), then mode-specific values. Time comes from Redis so every gateway
process agrees. Numbers come back as integers (Lua floats would be truncated by Redis).
"""

SCRIPT = r"""
local mode = ARGV[1]
local S = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local A = 2 + S * 5  -- index of the first mode-specific argument

local function lim(i, j) return tonumber(ARGV[2 + (i - 1) * 5 + j]) end
local function key(i, j) return KEYS[(i - 1) * 5 + j] end

-- The bucket's level after draining since its last update.
local function level(k, limit)
  local v = redis.call('HMGET', k, 'l', 't')
  if not v[1] then return 0 end
  local drained = tonumber(v[1]) - (now - tonumber(v[2])) * limit / 60000
  if drained < 0 then return 0 end
  return drained
end

local function store(k, lvl)
  if lvl < 0 then lvl = 0 end
  redis.call('HSET', k, 'l', tostring(lvl), 't', now)
  redis.call('PEXPIRE', k, 61000)
end

local function num(k)
  local v = redis.call('GET', k)
  if not v then return 0 end
  return tonumber(v)
end

if mode == 'baseline' then
  -- ARGV[A+1] tokens, ARGV[A+2] spend, ARGV[A+3] ttl seconds: raise, never lower.
  for i = 1, S do
    local tok = tonumber(ARGV[A + 1])
    if num(key(i, 4)) < tok then redis.call('SET', key(i, 4), string.format('%d', tok), 'EX', ARGV[A + 3]) end
    local spend = tonumber(ARGV[A + 2])
    if num(key(i, 5)) < spend then redis.call('SET', key(i, 5), ARGV[A + 2], 'EX', ARGV[A + 3]) end
  end
  return {1}
end

if mode == 'renew' then
  -- ARGV[A+1] lease id, ARGV[A+2] lease ttl ms
  for i = 1, S do
    redis.call('ZADD', key(i, 3), 'XX', now + tonumber(ARGV[A + 2]), ARGV[A + 1])
    redis.call('PEXPIRE', key(i, 3), tonumber(ARGV[A + 2]) + 1000)
  end
  return {1}
end

if mode == 'settle' then
  -- ARGV[A+1] token delta (real - reserved), ARGV[A+2] requests to refund, ARGV[A+3] lease id
  local delta = tonumber(ARGV[A + 1])
  local refund = tonumber(ARGV[A + 2])
  for i = 1, S do
    local rpm, tpm = lim(i, 1), lim(i, 2)
    if tpm >= 0 and delta ~= 0 then store(key(i, 2), level(key(i, 2), tpm) + delta) end
    if rpm >= 0 and refund > 0 then store(key(i, 1), level(key(i, 1), rpm) - refund) end
    if ARGV[A + 3] ~= '' then redis.call('ZREM', key(i, 3), ARGV[A + 3]) end
    if delta ~= 0 and redis.call('EXISTS', key(i, 4)) == 1 then
      local v = redis.call('INCRBY', key(i, 4), delta)
      if v < 0 then redis.call('SET', key(i, 4), '0', 'KEEPTTL') end
    end
  end
  return {1}
end

-- admit / peek. ARGV[A+1] token cost, ARGV[A+2] lease id, ARGV[A+3] lease ttl ms, ARGV[A+4] month ttl s
local cost = tonumber(ARGV[A + 1])
local reqcost = 1
if mode == 'peek' then reqcost = 0; cost = 0 end
local fail_code, fail_reason, retry = '', '', 0
-- Header values: the subject with the least left, per dimension (-1: no limit anywhere).
local lr, rr, sr, lt, rt, st = -1, -1, -1, -1, -1, -1
local levels = {}
for i = 1, S do
  local rpm, tpm, conc, mtok, mspend = lim(i, 1), lim(i, 2), lim(i, 3), lim(i, 4), lim(i, 5)
  local rl, tl = 0, 0
  if mspend >= 0 and fail_code ~= 'insufficient_quota' and num(key(i, 5)) >= mspend then
    fail_code, fail_reason = 'insufficient_quota', 'monthly_spend'
  end
  if mtok >= 0 and fail_code ~= 'insufficient_quota' and num(key(i, 4)) + cost > mtok then
    fail_code, fail_reason = 'insufficient_quota', 'monthly_tokens'
  end
  if rpm >= 0 then
    rl = level(key(i, 1), rpm)
    local left = rpm - rl - reqcost
    if left < 0 then
      if fail_code == '' then fail_code, fail_reason = 'rate_limit_exceeded', 'requests' end
      if rpm > 0 then retry = math.max(retry, (-left) * 60000 / rpm) else retry = math.max(retry, 60000) end
      left = rpm - rl
    end
    if rr < 0 or left < rr then lr, rr, sr = rpm, left, (rl + reqcost) * 60000 / math.max(rpm, 1) end
  end
  if tpm >= 0 then
    tl = level(key(i, 2), tpm)
    local left = tpm - tl - cost
    if left < 0 then
      if cost > tpm then
        if fail_code == '' then fail_code, fail_reason = 'rate_limit_exceeded', 'request_too_large' end
      else
        if fail_code == '' then fail_code, fail_reason = 'rate_limit_exceeded', 'tokens' end
        retry = math.max(retry, (-left) * 60000 / math.max(tpm, 1))
      end
      left = tpm - tl
    end
    if rt < 0 or left < rt then lt, rt, st = tpm, left, (tl + cost) * 60000 / math.max(tpm, 1) end
  end
  if conc >= 0 and mode == 'admit' then
    redis.call('ZREMRANGEBYSCORE', key(i, 3), '-inf', now)
    if redis.call('ZCARD', key(i, 3)) >= conc then
      if fail_code == '' then fail_code, fail_reason = 'rate_limit_exceeded', 'concurrency' end
      retry = math.max(retry, 1000)
    end
  end
  levels[i] = {rl, tl}
end

local ok = 0
if mode == 'admit' and fail_code == '' then
  ok = 1
  for i = 1, S do
    local rpm, tpm, conc, mtok = lim(i, 1), lim(i, 2), lim(i, 3), lim(i, 4)
    if rpm >= 0 then store(key(i, 1), levels[i][1] + 1) end
    if tpm >= 0 then store(key(i, 2), levels[i][2] + cost) end
    if conc >= 0 then
      redis.call('ZADD', key(i, 3), now + tonumber(ARGV[A + 3]), ARGV[A + 2])
      redis.call('PEXPIRE', key(i, 3), tonumber(ARGV[A + 3]) + 1000)
    end
    -- The month's counter lives as long as the month; kept even without a budget so a
    -- budget set mid-month starts from what was already used.
    redis.call('INCRBY', key(i, 4), cost)
    redis.call('EXPIRE', key(i, 4), tonumber(ARGV[A + 4]))
  end
elseif mode == 'admit' then
  -- Refused: report what is left without this request.
  if rr >= 0 then rr = math.max(rr, 0) end
  if rt >= 0 then rt = math.max(rt, 0) end
end
if rr >= 0 then rr = math.floor(math.max(rr, 0)) end
if rt >= 0 then rt = math.floor(math.max(rt, 0)) end
return {ok, fail_code, fail_reason, math.ceil(retry), lr, rr, math.ceil(sr), lt, rt, math.ceil(st)}
"""

-- wrk script: each request asks as one of BENCH_IDS buyers, drawn at random, on BENCH_PATH.
-- The requests are built before the run so that wrk spends its time sending, not formatting.
local ids = tonumber(os.getenv("BENCH_IDS") or "1000000")
local path = os.getenv("BENCH_PATH") or "/sale"
local pool_size = math.min(ids, tonumber(os.getenv("BENCH_POOL") or "200000"))
local pool = {}
local next_request = 0

function init(args)
  math.randomseed(os.time())
  for i = 1, pool_size do
    pool[i] = wrk.format("GET", path .. "?user=buyer-" .. math.random(ids))
  end
end

function request()
  next_request = next_request % pool_size + 1
  return pool[next_request]
end

-- wrk script: each request asks as one of BENCH_IDS buyers, drawn at random, on BENCH_PATH.
local ids = tonumber(os.getenv("BENCH_IDS") or "1000000")
local path = os.getenv("BENCH_PATH") or "/sale"

function init(args)
  math.randomseed(os.time())
end

function request()
  return wrk.format("GET", path .. "?user=buyer-" .. math.random(ids))
end

-- wrk script: asks as buyer-1, buyer-2 ... buyer-BENCH_IDS in turn, and again, on BENCH_PATH,
-- so that a run of enough requests has asked as every one of them. BENCH_PREFIX replaces
-- "buyer-", so that runs (and hosts) can ask as buyers nobody asked as before.
local ids = tonumber(os.getenv("BENCH_IDS") or "10000")
local path = os.getenv("BENCH_PATH") or "/sale"
local prefix = os.getenv("BENCH_PREFIX") or "buyer-"
local n = 0

function request()
  n = n % ids + 1
  return wrk.format("GET", path .. "?user=" .. prefix .. n)
end

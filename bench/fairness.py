#!/usr/bin/env python3
"""The fairness features' costs: the pre-queue's draw, $flash_sale_token and flash_sale_verify.

Run through `bench/run` (or `bench/run fairness` for this part alone). Writes
bench/results/fairness.md and prints it.

- The pre-queue's draw runs once, at the start, in the first request's locked step: its time
  is how long every worker waits for the zone then. Measured for 10,000 and 100,000 registered
  buyers as the first request's time after the start minus the second's.
- The tokens: req/s of returning winners with `$flash_sale_token` passed to the backend over
  the same without, and of a checkout with `flash_sale_verify` over the same without, in
  alternating pairs over BENCH_ROUNDS rounds, nginx (one worker) on CPU 0 and wrk on CPU 1.
"""

import http.client
import json
import re
import statistics
import subprocess
import time
from datetime import datetime, timezone

from bench import (BACKEND, BACKEND_PORT, BENCH, CONNECTIONS, MODULE, PROXY, RESULTS, ROUNDS,
                   SECONDS, UNITS, WORK, Nginx, http_preamble, visit, wrk)

PORT = 18490
REGISTERED = (10_000, 100_000)
WINNERS = 10_000
SECRET = "a3f1c9e07b5d4e2a8c6f0b1d3e5a7c9f1b3d5e7a9c0e2f4a6b8d0f1e3a5c7b9d"


def config():
    drops = "".join(f"""
        location /drop{n} {{
            flash_sale zone=drop{n};
            flash_sale_start 2099-01-01T00:00:00Z;
            flash_sale_prequeue 36500d;
            flash_sale_max_permits 1000;
            {PROXY}
        }}""" for n in REGISTERED)
    zones = "".join(f"    flash_sale_zone $arg_user zone=drop{n}:32m;\n" for n in REGISTERED)
    return http_preamble([MODULE]) + f"""
http {{
    access_log off;
{BACKEND}
{zones}    flash_sale_zone $arg_user zone=winners:10m;
    flash_sale_token_secret token.key;
    server {{
        listen 127.0.0.1:{BACKEND_PORT};
        keepalive_requests 1000000;
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{PORT};
        keepalive_requests 1000000;
        location /winners {{
            flash_sale zone=winners;
            {PROXY}
        }}
        location /winners-token {{
            flash_sale zone=winners;
            proxy_set_header X-Token $flash_sale_token;
            {PROXY}
        }}
        location /checkout-plain {{
            {PROXY}
        }}
        location /checkout {{
            flash_sale_verify zone=winners;
            {PROXY}
        }}
        location /api/ {{ flash_sale_api; }}
        location /metrics {{ flash_sale_metrics; }}{drops}
    }}
}}
"""


def get(path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", PORT)
    conn.request("GET", path, headers=headers or {})
    res = conn.getresponse()
    body = res.read()
    conn.close()
    return res, body


def metric(name, zone):
    _, body = get("/metrics")
    found = re.search(rf'^{name}\{{zone="{zone}"(?:,kind="used")?\}} (\d+)$', body.decode(), re.M)
    return int(found.group(1))


def register(n):
    """Registers buyer-1 .. buyer-n for drop n with wrk, each id in turn, until all are in."""
    script = BENCH / "sequential.lua"
    while metric("flash_sale_prequeued", f"drop{n}") < n:
        subprocess.run(
            ["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(2, n // 15_000)}s",
             "-s", str(script), f"http://127.0.0.1:{PORT}"],
            env={"BENCH_IDS": str(n), "BENCH_PATH": f"/drop{n}", "PATH": "/usr/bin:/bin"},
            capture_output=True, check=True)


def timed(path):
    conn = http.client.HTTPConnection("127.0.0.1", PORT)
    conn.connect()
    started = time.perf_counter()
    conn.request("GET", path)
    res = conn.getresponse()
    res.read()
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed, res.status


def prequeue_draw(n):
    empty = metric("flash_sale_zone_bytes", f"drop{n}")
    register(n)
    used = metric("flash_sale_zone_bytes", f"drop{n}")
    start = time.time() + 1.0
    stamp = datetime.fromtimestamp(start, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    conn = http.client.HTTPConnection("127.0.0.1", PORT)
    conn.request(
        "PATCH",
        f"/api/zones/drop{n}",
        body=json.dumps({"start": stamp + "Z"}),
        headers={"Content-Type": "application/json"},
    )
    conn.getresponse().read()
    time.sleep(max(0.0, start - time.time()) + 0.05)
    first, _ = timed(f"/drop{n}?user=late-1")
    second, _ = timed(f"/drop{n}?user=late-2")
    permits = metric("flash_sale_permits", f"drop{n}")
    print(f"pre-queue of {n}: draw {1e3 * (first - second):.1f} ms, {permits} permits", flush=True)
    return {"registered": n, "first_ms": 1e3 * first, "second_ms": 1e3 * second,
            "draw_ms": 1e3 * (first - second), "permits": permits,
            "bytes_per_registration": (used - empty) / n}


def wrk_fixed(path, header, seconds=SECONDS):
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
         "-H", header, f"http://127.0.0.1:{PORT}{path}"],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: float(v) * UNITS[u]
           for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    assert non2xx is None, f"{path}: {non2xx.group(0)}"
    return {"rps": rps, "p50": lat.get("50"), "p99": lat.get("99")}


def sign(user):
    """A token as the module signs it, for buyer `user` holding permit 1 of `winners`."""
    import base64
    import hashlib
    import hmac
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    claims = b64(json.dumps({"zone": "winners", "sub": user, "seq": 1},
                            separators=(",", ":")).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{claims}".encode(), hashlib.sha256)
    return f"{header}.{claims}.{b64(signature.digest())}"


def tokens():
    visit(PORT, "/winners", range(1, WINNERS + 1))
    bearer = f"Authorization: Bearer {sign('buyer-1')}"
    res, _ = get("/checkout?user=buyer-1", {"Authorization": bearer.split(": ", 1)[1]})
    assert res.status == 200, "the benchmark's token must pass"
    pairs = {
        "$flash_sale_token, returning winners": (
            lambda: wrk(PORT, "/winners-token", WINNERS), lambda: wrk(PORT, "/winners", WINNERS)),
        "flash_sale_verify, valid token": (
            lambda: wrk_fixed("/checkout?user=buyer-1", bearer),
            lambda: wrk_fixed("/checkout-plain?user=buyer-1", bearer)),
    }
    results = {}
    for name, (variant, reference) in pairs.items():
        runs = []
        for r in range(1, ROUNDS + 1):
            first, second = (variant, reference) if r % 2 else (reference, variant)
            a, b = first(), second()
            v, ref = (a, b) if r % 2 else (b, a)
            runs.append((v, ref))
            print(f"round {r}: {name}: {v['rps']:.0f} vs {ref['rps']:.0f} req/s", flush=True)
        results[name] = runs
    return results


def report(draws, token_runs):
    lines = [
        "# The fairness features' costs",
        "",
        f"Generated by `bench/run fairness` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{ROUNDS} rounds of {SECONDS} s, one nginx worker on CPU 0, wrk on CPU 1, "
        f"{CONNECTIONS} connections.",
        "",
        "## The pre-queue's draw",
        "",
        "The first request after the start draws the pre-queue under the zone's lock; every "
        "worker waits for the zone that long, once.",
        "",
        "| registered | draw (first request minus second) | first request | zone bytes per registration | permits after |",
        "|---|---|---|---|---|",
    ]
    for d in draws:
        lines.append(f"| {d['registered']:,} | {d['draw_ms']:.1f} ms | {d['first_ms']:.1f} ms | "
                     f"{d['bytes_per_registration']:.0f} | {d['permits']:,} |")
    lines += ["", "## Tokens", "",
              "| variant / reference | req/s ratio, median [min, max] | time added per request |",
              "|---|---|---|"]
    for name, runs in token_runs.items():
        ratios = [v["rps"] / r["rps"] for v, r in runs]
        added = statistics.median(1e6 / v["rps"] - 1e6 / r["rps"] for v, r in runs)
        lines.append(f"| {name} | {statistics.median(ratios):.3f} "
                     f"[{min(ratios):.3f}, {max(ratios):.3f}] | {added:.2f} us |")
    lines.append("")
    return "\n".join(lines)


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    nginx = Nginx("fairness", config(), PORT)
    (nginx.dir / "token.key").write_text(SECRET + "\n")
    try:
        nginx.start(["taskset", "-c", "0"])
        draws = [prequeue_draw(n) for n in REGISTERED]
        token_runs = tokens()
    finally:
        nginx.stop()
    raw = {"prequeue": draws,
           "tokens": {k: [{"variant": v, "reference": r} for v, r in runs]
                      for k, runs in token_runs.items()}}
    (RESULTS / "fairness.json").write_text(json.dumps(raw, indent=1) + "\n")
    text = report(draws, token_runs)
    (RESULTS / "fairness.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Several hosts, one sale: admissions per second through Redis, and Redis round trips per
request once the sale is sold out.

Run through `bench/run redis` (or `bench/run`, which runs every benchmark). Writes
bench/results/redis.md and prints it.

- Two nginx hosts (one worker each) share a zone in one redis-server (no persistence), all on
  this machine; one wrk per host sends new buyers only (each request a new identity, ratio 0,
  no cap), so every request is one admission, one round trip. The same with the zone kept
  locally (one zone per host, so no sharing) is the reference.
- Sold out: a cap of 1,000 is sold out, then both hosts get new buyers for the run's length;
  the round trips are read from flash_sale_redis_calls_total.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from datetime import datetime, timezone

from bench import (BACKEND, BACKEND_PORT, BENCH, MODULE, PROXY, RESULTS, ROUNDS, SECONDS, WORK,
                   Nginx, http_preamble)

PORTS = (18500, 18501)
REDIS_PORT = 18502
CONNECTIONS_PER_HOST = 25
SOLD_OUT_CAP = 1000


def config(port, redis, prefix):
    zone = "flash_sale_zone $arg_user zone=sale:64m;"
    if redis:
        zone += f"\n    flash_sale_redis zone=sale server=127.0.0.1:{REDIS_PORT} prefix={prefix};"
    return http_preamble([MODULE]) + f"""
http {{
    access_log off;
{BACKEND}
    {zone}
    server {{
        listen 127.0.0.1:{BACKEND_PORT};
        keepalive_requests 1000000;
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location /sale {{
            flash_sale zone=sale;
            {PROXY}
        }}
        location /capped {{
            flash_sale zone=sale;
            flash_sale_max_permits {SOLD_OUT_CAP};
            {PROXY}
        }}
        location /metrics {{ flash_sale_metrics; }}
    }}
}}
"""


class Redis:
    def __init__(self):
        self.dir = WORK / "redis"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)], stdout=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def hosts(redis, prefix="bench:"):
    # The backend listens in the first host only; the second host's copy would clash.
    started = []
    for n, port in enumerate(PORTS):
        text = config(port, redis, prefix)
        if n == 1:
            text = text.replace(f"listen 127.0.0.1:{BACKEND_PORT};", f"listen 127.0.0.1:{port + 10};")
        started.append(Nginx(f"redis-host{n}", text, port).start())
    return started


def metric(port, name, status=None):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    conn.close()
    label = f'zone="sale",status="{status}"' if status else 'zone="sale"'
    found = re.search(rf"^{name}\{{{re.escape(label)}\}} (\d+)$", body, re.M)
    return int(found.group(1)) if found else 0


def wrk_both(path, prefix, seconds=SECONDS):
    """One wrk per host at once, each asking as new buyers only; returns total requests/s."""
    procs = []
    for n, port in enumerate(PORTS):
        env = dict(os.environ, BENCH_IDS="100000000", BENCH_PATH=path,
                   BENCH_PREFIX=f"{prefix}-h{n}-")
        procs.append(subprocess.Popen(
            ["wrk", "-t1", f"-c{CONNECTIONS_PER_HOST}", f"-d{seconds}s",
             "-s", str(BENCH / "sequential.lua"), f"http://127.0.0.1:{port}"],
            env=env, stdout=subprocess.PIPE, text=True))
    total = 0.0
    for p in procs:
        out = p.communicate()[0]
        total += float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return total


def admissions(redis, r):
    servers = hosts(redis)
    try:
        before = sum(metric(p, "flash_sale_requests_total", "ADMITTED") for p in PORTS)
        started = time.time()
        rps = wrk_both("/sale", f"{'redis' if redis else 'local'}{r}")
        elapsed = time.time() - started
        admitted = sum(metric(p, "flash_sale_requests_total", "ADMITTED") for p in PORTS) - before
        calls = sum(metric(p, "flash_sale_redis_calls_total") for p in PORTS)
        return {"rps": rps, "admitted_per_s": admitted / elapsed, "calls": calls,
                "admitted": admitted}
    finally:
        for s in servers:
            s.stop()


def sold_out():
    servers = hosts(True, prefix="bench-sold-out:")
    try:
        wrk_both("/capped", "early", seconds=2)
        assert sum(metric(p, "flash_sale_requests_total", "ADMITTED") for p in PORTS) == SOLD_OUT_CAP
        calls = sum(metric(p, "flash_sale_redis_calls_total") for p in PORTS)
        requests = sum(metric(p, "flash_sale_requests_total", "SOLD_OUT") for p in PORTS)
        rps = wrk_both("/capped", "late")
        calls = sum(metric(p, "flash_sale_redis_calls_total") for p in PORTS) - calls
        requests = sum(metric(p, "flash_sale_requests_total", "SOLD_OUT") for p in PORTS) - requests
        return {"rps": rps, "requests": requests, "calls": calls}
    finally:
        for s in servers:
            s.stop()


def main():
    RESULTS.mkdir(exist_ok=True)
    redis = Redis()
    try:
        runs = []
        for r in range(1, ROUNDS + 1):
            shared = admissions(True, r)
            local = admissions(False, r)
            print(f"round {r}: through Redis {shared['admitted_per_s']:.0f} admissions/s, "
                  f"local zones {local['admitted_per_s']:.0f}", flush=True)
            runs.append((shared, local))
        sold = sold_out()
        print(f"sold out: {sold['calls']} round trips for {sold['requests']} requests", flush=True)
    finally:
        redis.stop()
    med = lambda xs: sorted(xs)[len(xs) // 2]
    shared = med([s["admitted_per_s"] for s, _ in runs])
    local = med([l["admitted_per_s"] for _, l in runs])
    lines = [
        "# Several hosts, one sale: Redis",
        "",
        f"Generated by `bench/run redis` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{ROUNDS} rounds of {SECONDS} s; two nginx hosts of one worker each, one redis-server "
        f"(no persistence) and two wrk ({CONNECTIONS_PER_HOST} connections each), all on this "
        f"{os.cpu_count()}-core machine.",
        "",
        "## Admissions per second (every request a new buyer, ratio 0, no cap)",
        "",
        "| round | through Redis, both hosts | local zones, both hosts | round trips |",
        "|---|---|---|---|",
        *[f"| {r} | {s['admitted_per_s']:,.0f} | {l['admitted_per_s']:,.0f} | {s['calls']:,} |"
          for r, (s, l) in enumerate(runs, 1)],
        f"| median | {shared:,.0f} | {local:,.0f} | |",
        "",
        "## Sold out (cap 1,000 reached), new buyers on both hosts",
        "",
        "| requests | Redis round trips | round trips per request | req/s, both hosts |",
        "|---|---|---|---|",
        f"| {sold['requests']:,} | {sold['calls']:,} | {sold['calls'] / max(1, sold['requests']):.6f} "
        f"| {sold['rps']:,.0f} |",
        "",
        "A host that hears SOLD_OUT copies every permit from Redis and trusts SOLD_OUT for its "
        "cache time (1 s by default); when that is up, one request asks again while the others "
        "go on trusting it. A sold-out sale so costs about three round trips per host per "
        "second (one to ask, one to copy, one to read the sale's overrides), whatever the "
        "traffic.",
        "",
    ]
    text = "\n".join(lines)
    (RESULTS / "redis.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

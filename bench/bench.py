#!/usr/bin/env python3
"""The benchmark: the gate against its baselines, OpenResty's Lua and limit_req, with wrk.

Run through bench/run, which installs what is missing and builds the release module. Writes
bench/results/report.md and bench/results/chart.svg and prints the report.

Every figure is relative to a baseline measured in the same round: runs alternate A, B, A, B
over BENCH_ROUNDS rounds (default 5) of BENCH_SECONDS seconds (default 5), nginx (one worker)
pinned to CPU 0 and wrk to CPU 1; ratios are reported as median [min, max] over the rounds.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORK = ROOT / ".build" / "bench"
RESULTS = BENCH / "results"
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
MODULE = os.environ.get("MODULE", str(ROOT / ".build/modules/ngx_http_flash_sale_module.so"))
LUA_MODULES = ["/usr/lib/nginx/modules/ndk_http_module.so",
               "/usr/lib/nginx/modules/ngx_http_lua_module.so"]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "50"))
GATE_PORT, LUA_PORT, BACKEND_PORT = 18480, 18481, 18482
MESSAGE = "SOLD_OUT: what you asked for is sold out.\\n"

SOLD_OUT_CAP = 100
WINNERS = 10_000
MANY_WINNERS = 100_000
# Buyers waiting in the line for the "queued" runs.
WAITERS = 10_000
RUSH_CAP = 10_000
RUSH_RATIO = 0.99


def http_preamble(modules):
    loads = "".join(f"load_module {m};\n" for m in modules)
    return loads + f"""
worker_processes 1;
master_process on;
daemon off;
error_log logs/error.log warn;
pid logs/nginx.pid;
events {{ worker_connections 4096; }}
"""


BACKEND = f"""
    upstream backend {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 64; }}
"""

PROXY = """proxy_pass http://backend/buy;
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""


def gate_config(admitting=True):
    """The module's nginx: gated locations, their baselines and limit_req, and the backend.
    Without `admitting`, no zones for the admit-everyone runs (they are large, and callgrind
    starts nginx slowly enough already)."""
    rush_zones = "".join(
        f"    flash_sale_zone $arg_user zone=rush{r}:4m;\n" for r in range(1, ROUNDS + 2))
    rush_locations = "".join(f"""
        location /rush{r} {{
            flash_sale zone=rush{r};
            flash_sale_block_ratio {RUSH_RATIO};
            flash_sale_max_permits {RUSH_CAP};
            {PROXY}
        }}
        location /probe{r} {{
            flash_sale zone=rush{r};
            flash_sale_block_ratio 1;
            flash_sale_max_permits {RUSH_CAP};
            {PROXY}
        }}""" for r in range(1, ROUNDS + 2))
    admit_zones = "".join(
        f"    flash_sale_zone $arg_user zone=admit{r}:64m;\n"
        f"    flash_sale_zone $arg_user zone=journal{r}:64m state={WORK}/journal{r}.state;\n"
        for r in range(1, ROUNDS + 2)) if admitting else ""
    admit_locations = "".join(f"""
        location /admit{r} {{
            flash_sale zone=admit{r};
            {PROXY}
        }}
        location /journal{r} {{
            flash_sale zone=journal{r};
            {PROXY}
        }}""" for r in range(1, ROUNDS + 2)) if admitting else ""
    return http_preamble([MODULE]) + f"""
http {{
    access_log off;
    keepalive_requests 10000000;
{BACKEND}
    flash_sale_zone $arg_user zone=soldout:1m;
    flash_sale_zone $arg_user zone=winners:4m;
    flash_sale_zone $arg_user zone=many:32m;
    flash_sale_zone $arg_user zone=line:32m;
    flash_sale_zone $arg_user zone=items:4m;
    map $arg_sku $stock {{ sold {SOLD_OUT_CAP}; open 1000000; default 0; }}
{rush_zones}{admit_zones}
    limit_req_zone $arg_user zone=perbuyer:64m rate=1r/m;
    limit_req_zone $arg_user zone=perbuyer_fast:16m rate=100000r/s;

    server {{
        listen 127.0.0.1:{GATE_PORT};

        # 1. sold out
        location /soldout/fill {{
            flash_sale zone=soldout;
            {PROXY}
        }}
        location /soldout {{
            flash_sale zone=soldout;
            flash_sale_max_permits {SOLD_OUT_CAP};
            {PROXY}
        }}
        # 1b. an item sold out, beside another that sells
        location /items/fill {{
            flash_sale zone=items;
            flash_sale_item $arg_sku;
            {PROXY}
        }}
        location /items {{
            flash_sale zone=items;
            flash_sale_item $arg_sku;
            flash_sale_max_permits $stock;
            flash_sale_max_per_buyer 1;
            {PROXY}
        }}
        location /items/fixed {{
            flash_sale zone=items;
            flash_sale_item $arg_sku;
            flash_sale_max_permits {SOLD_OUT_CAP};
            {PROXY}
        }}
        location /reject {{
            add_header Cache-Control no-store always;
            return 503 "{MESSAGE}";
        }}
        location /limit_req/reject {{
            limit_req zone=perbuyer;
            limit_req_status 503;
            try_files /nonexistent =503;
        }}

        # 2. returning winners
        location /winners {{
            flash_sale zone=winners;
            {PROXY}
        }}
        location /many {{
            flash_sale zone=many;
            {PROXY}
        }}
        location /pass {{
            {PROXY}
        }}
        location /limit_req/pass {{
            limit_req zone=perbuyer_fast burst=1000 nodelay;
            {PROXY}
        }}

        # 3. opening rush, a fresh zone per round
{rush_locations}

        # 5. everyone admitted, with and without a state file (a journal write per request)
{admit_locations}

        # 6. waiting in a line (one let in a minute: nearly everyone waits; waiters keep their
        # places for the whole benchmark)
        location /queued {{
            flash_sale zone=line;
            flash_sale_queue rate=1r/m idle=1h refresh=20s;
            {PROXY}
        }}

        # 4. before the start
        location /early {{
            flash_sale zone=soldout;
            flash_sale_start 2099-01-01T00:00:00Z;
            {PROXY}
        }}
    }}

    server {{
        listen 127.0.0.1:{BACKEND_PORT};
        keepalive_requests 10000000;
        location /buy {{ return 200 "You can buy the laptop for one dollar now.\\n"; }}
    }}
}}
"""


# The same gate as an OpenResty user would write it: lua_shared_dict, one access_by_lua block.
LUA_GATE = r"""
            access_by_lua_block {
                local permits = ngx.shared[ngx.var.sale_dict]
                local function reject(status, outcome, message)
                    ngx.status = status
                    ngx.header["Cache-Control"] = "no-store"
                    ngx.header["Content-Type"] = "text/plain"
                    ngx.print(outcome, ": ", message, "\n")
                    return ngx.exit(ngx.HTTP_OK)
                end
                local key = ngx.var.arg_user
                if not key or key == "" then
                    return reject(401, "NO_KEY", "this sale needs a buyer identity.")
                end
                if ngx.now() < tonumber(ngx.var.sale_start) then
                    return reject(503, "NOT_STARTED", "the sale has not started yet.")
                end
                if permits:get(key) then
                    return
                end
                local cap = tonumber(ngx.var.sale_cap)
                if (permits:get("#count") or 0) >= cap then
                    return reject(503, "SOLD_OUT", "what you asked for is sold out.")
                end
                if math.random() < tonumber(ngx.var.sale_ratio) then
                    return reject(503, "BLOCKED", "you were not drawn this time.")
                end
                if permits:incr("#count", 1, 0) > cap then
                    permits:incr("#count", -1)
                    return reject(503, "SOLD_OUT", "what you asked for is sold out.")
                end
                local ok, err = permits:safe_add(key, true)
                if not ok then
                    permits:incr("#count", -1)
                    if err ~= "exists" then
                        return reject(503, "SOLD_OUT", "what you asked for is sold out.")
                    end
                end
            }"""


def lua_location(path, dict_name, cap=10**9, ratio=0, start=0):
    return f"""
        location {path} {{
            set $sale_dict {dict_name};
            set $sale_cap {cap};
            set $sale_ratio {ratio};
            set $sale_start {start};{LUA_GATE}
            {PROXY}
        }}"""


def lua_config():
    rush = "".join(lua_location(f"/rush{r}", f"rush{r}", RUSH_CAP, RUSH_RATIO)
                   + lua_location(f"/probe{r}", f"rush{r}", RUSH_CAP, 1)
                   for r in range(1, ROUNDS + 2))
    rush_dicts = "".join(f"    lua_shared_dict rush{r} 4m;\n" for r in range(1, ROUNDS + 2))
    return http_preamble(LUA_MODULES) + f"""
http {{
    access_log off;
    keepalive_requests 10000000;
{BACKEND}
    lua_shared_dict soldout 1m;
    lua_shared_dict winners 4m;
{rush_dicts}
    server {{
        listen 127.0.0.1:{LUA_PORT};
{lua_location("/soldout/fill", "soldout")}
{lua_location("/soldout", "soldout", SOLD_OUT_CAP)}
{lua_location("/winners", "winners")}
{rush}
    }}
}}
"""


class Nginx:
    """An nginx of our own, pinned to CPU 0, as a child process."""

    def __init__(self, name, config, port):
        self.dir = WORK / name
        self.port = port
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "logs").mkdir(parents=True)
        (self.dir / "nginx.conf").write_text(config)
        self.proc = None

    def start(self, wrapper=()):
        self.proc = subprocess.Popen(
            [*wrapper, NGINX, "-p", f"{self.dir}/", "-c", "nginx.conf"],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "logs/stderr.log", "w"))
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"nginx {self.dir} failed: " + (self.dir / "logs/stderr.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        sys.exit(f"nginx {self.dir} did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            self.proc.wait(timeout=120)


def visit(port, path, ids, prefix="buyer-"):
    """Sends one request per identity, in order, on one keepalive connection; returns statuses."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    statuses = {}
    for i in ids:
        separator = "&" if "?" in path else "?"
        conn.request("GET", f"{path}{separator}user={prefix}{i}")
        res = conn.getresponse()
        res.read()
        statuses[res.status] = statuses.get(res.status, 0) + 1
    conn.close()
    return statuses


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def wrk(port, path, ids, seconds=SECONDS):
    # Enough distinct prepared requests that none repeats within a run where it matters.
    pool = 700_000 if ids > 1_000_000 else 200_000
    env = dict(os.environ, BENCH_IDS=str(ids), BENCH_PATH=path, BENCH_POOL=str(pool))
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
         "-s", str(BENCH / "ids.lua"), f"http://127.0.0.1:{port}"],
        env=env, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: float(v) * UNITS[u]
           for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    return {"rps": rps, "p50": lat.get("50"), "p99": lat.get("99")}


def prime(gate, lua):
    """Brings the zones into their scenario's state: sold out, and 10,000 / 100,000 winners."""
    for port in (GATE_PORT, LUA_PORT):
        visit(port, "/soldout/fill", range(1, SOLD_OUT_CAP + 1), prefix="early-")
        visit(port, "/winners", range(1, WINNERS + 1))
    visit(GATE_PORT, "/many", range(1, MANY_WINNERS + 1))
    visit(GATE_PORT, "/queued", range(1, WAITERS + 1))


# (scenario, variant) -> (port, path, identities). The path may hold {r}, the round number.
RUNS = {
    ("sold out", "baseline"): (GATE_PORT, "/reject", 1_000_000),
    ("sold out", "module"): (GATE_PORT, "/soldout", 1_000_000),
    ("sold out", "openresty"): (LUA_PORT, "/soldout", 1_000_000),
    ("sold out", "limit_req"): (GATE_PORT, "/limit_req/reject", 1_000_000),
    ("returning winners", "baseline"): (GATE_PORT, "/pass", WINNERS),
    ("returning winners", "module"): (GATE_PORT, "/winners", WINNERS),
    ("returning winners", "openresty"): (LUA_PORT, "/winners", WINNERS),
    ("returning winners", "limit_req"): (GATE_PORT, "/limit_req/pass", WINNERS),
    ("returning winners", "module, 100,000 permits"): (GATE_PORT, "/many", MANY_WINNERS),
    ("opening rush", "baseline"): (GATE_PORT, "/reject", 1_000_000),
    ("opening rush", "module"): (GATE_PORT, "/rush{r}", 1_000_000),
    ("opening rush", "openresty"): (LUA_PORT, "/rush{r}", 1_000_000),
    ("before the start", "baseline"): (GATE_PORT, "/reject", 1_000_000),
    ("before the start", "module"): (GATE_PORT, "/early", 1_000_000),
    ("queued", "baseline"): (GATE_PORT, "/reject", 1_000_000),
    ("queued", "module"): (GATE_PORT, "/queued", WAITERS),
    ("admitting everyone", "module"): (GATE_PORT, "/admit{r}", 10_000_000),
    ("admitting everyone", "module, state file"): (GATE_PORT, "/journal{r}", 10_000_000),
}
SCENARIOS = ["sold out", "returning winners", "opening rush", "before the start", "queued"]
# Each variant is measured right next to its reference, in pairs, so that drift of the machine
# between runs cancels out in the ratio.
PAIRS = [(scenario, variant, "module" if variant.startswith("module,") else "baseline")
         for scenario, variant in RUNS if variant not in ("baseline", "module")
         or (variant == "module" and (scenario, "baseline") in RUNS)]


def run(key, r):
    port, path, ids = RUNS[key]
    result = wrk(port, path.format(r=r), ids)
    print(f"round {r}: {key[0]} / {key[1]}: {result['rps']:.0f} req/s", flush=True)
    return result


def measure_rounds():
    """Returns every run of each (scenario, variant), and the ratio of each pair."""
    results = {key: [] for key in RUNS}
    ratios = {pair: [] for pair in PAIRS}
    for r in range(1, ROUNDS + 1):
        for scenario, variant, reference in PAIRS:
            keys = [(scenario, reference), (scenario, variant)]
            # Alternate which of the two runs first.
            first, second = keys if r % 2 else keys[::-1]
            a = run(first, r)
            b = run(second, r)
            results[first].append(a)
            results[second].append(b)
            pair = dict(zip([first, second], [a, b]))
            ratios[(scenario, variant, reference)].append(
                (pair[(scenario, variant)], pair[(scenario, reference)]))
    return results, ratios


def sell_out(port, r):
    """Runs the rush until the cap is sold (watching a probe location); returns seconds."""
    env = dict(os.environ, BENCH_IDS="1000000", BENCH_PATH=f"/rush{r}")
    load = subprocess.Popen(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNECTIONS}", "-d120s",
         "-s", str(BENCH / "ids.lua"), f"http://127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL)
    start = time.time()
    conn = http.client.HTTPConnection("127.0.0.1", port)
    sold_out_at = None
    while time.time() - start < 115:
        conn.request("GET", f"/probe{r}?user=probe")
        res = conn.getresponse()
        body = res.read()
        if b"SOLD_OUT" in body:
            sold_out_at = time.time() - start
            break
        time.sleep(0.05)
    load.send_signal(signal.SIGINT)
    load.wait()
    return sold_out_at


def instructions():
    """CPU instructions per request with and without the gate, counted by callgrind."""
    config = gate_config(admitting=False).replace("master_process on;", "master_process off;")
    nginx = Nginx("callgrind", config, GATE_PORT)
    out = nginx.dir / "callgrind.out"
    nginx.start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"])
    prime_gate_only = [("/soldout/fill", range(1, SOLD_OUT_CAP + 1), "early-"),
                       ("/items/fill?sku=sold", range(1, SOLD_OUT_CAP + 1), "early-"),
                       ("/winners", range(1, 1001), "buyer-"),
                       ("/queued", range(1, 1001), "buyer-")]
    for path, ids, prefix in prime_gate_only:
        visit(GATE_PORT, path, ids, prefix)
    n = 2000
    counts = {}
    for name, path, ids in [("sold out, baseline", "/reject", range(10**6, 10**6 + n)),
                            ("sold out, module", "/soldout", range(10**6, 10**6 + n)),
                            # The same request line as the items' (a longer one, with one
                            # more argument to find), answered by `return`.
                            ("sold-out item, baseline", "/reject?sku=sold", range(10**6, 10**6 + n)),
                            ("sold-out item, module", "/items?sku=sold", range(10**6, 10**6 + n)),
                            ("sold-out item, fixed cap", "/items/fixed?sku=sold",
                             range(10**6, 10**6 + n)),
                            ("returning winners, baseline", "/pass", range(1, n + 1)),
                            ("returning winners, module", "/winners", [i % 1000 + 1 for i in range(n)]),
                            ("queued, baseline", "/reject", range(10**6, 10**6 + n)),
                            ("queued, module", "/queued", [i % 1000 + 1 for i in range(n)])]:
        visit(GATE_PORT, path, ids[:200])  # warm this path
        subprocess.run(["callgrind_control", "-z", str(nginx.proc.pid)], check=True,
                       capture_output=True)
        visit(GATE_PORT, path, ids)
        dump = subprocess.run(["callgrind_control", "-d", name.replace(" ", "_").replace(",", ""),
                               str(nginx.proc.pid)], check=True, capture_output=True)
        time.sleep(0.5)
        newest = max(nginx.dir.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
        total = re.search(r"^(?:summary|totals):\s+(\d+)", newest.read_text(), re.M)
        counts[name] = int(total.group(1)) / len(ids)
        del dump
    nginx.stop()
    return counts


def pair_of(ratios, scenario, variant):
    return next(runs for (s, v, _), runs in ratios.items() if (s, v) == (scenario, variant))


def ratio_stats(ratios, scenario, variant):
    """Median, min and max over the rounds of a variant's req/s over its pair's reference."""
    values = [a["rps"] / b["rps"] for a, b in pair_of(ratios, scenario, variant)]
    return statistics.median(values), min(values), max(values)


def added_us(ratios, scenario, variant):
    """Median over the pairs of 1/rps(variant) - 1/rps(reference), in microseconds."""
    return statistics.median(1e6 / a["rps"] - 1e6 / b["rps"]
                             for a, b in pair_of(ratios, scenario, variant))


def median_of(results, key, field):
    values = [x[field] for x in results[key] if x[field] is not None]
    return statistics.median(values) if values else float("nan")


def chart(results):
    """A grouped bar chart of median requests per second, as SVG."""
    variants = [("baseline", "#9e9e9e"), ("module", "#2e7d32"), ("openresty", "#1565c0"),
                ("limit_req", "#ef6c00")]
    top = max(median_of(results, k, "rps") for k in results)
    width, height, left, bottom = 760, 360, 70, 300
    group = (width - left - 20) / len(SCENARIOS)
    bar = group / (len(variants) + 1)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="18" font-size="14">Requests per second (median of '
           f'{ROUNDS} rounds), 1 nginx worker, wrk on another core</text>']
    for i in range(5):
        y = bottom - (bottom - 40) * i / 4
        svg.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.0f}" y2="{y:.0f}" '
                   'stroke="#ddd"/>')
        svg.append(f'<text x="{left - 6}" y="{y + 4:.0f}" text-anchor="end">'
                   f'{top * i / 4 / 1000:.0f}k</text>')
    for g, scenario in enumerate(SCENARIOS):
        x0 = left + g * group + bar / 2
        for v, (variant, colour) in enumerate(variants):
            if (scenario, variant) not in results:
                continue
            rps = median_of(results, (scenario, variant), "rps")
            h = (bottom - 40) * rps / top
            svg.append(f'<rect x="{x0 + v * bar:.0f}" y="{bottom - h:.0f}" width="{bar - 2:.0f}" '
                       f'height="{h:.0f}" fill="{colour}"><title>{scenario}, {variant}: '
                       f'{rps:.0f} req/s</title></rect>')
        svg.append(f'<text x="{x0 + 2 * bar:.0f}" y="{bottom + 16}" text-anchor="middle">'
                   f'{scenario}</text>')
    for v, (variant, colour) in enumerate(variants):
        svg.append(f'<rect x="{left + v * 150}" y="{bottom + 34}" width="12" height="12" '
                   f'fill="{colour}"/><text x="{left + v * 150 + 16}" y="{bottom + 44}">'
                   f'{variant}</text>')
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def report(results, ratios, sellouts, counts, capacity):
    fmt = lambda t: "{:.3f} [{:.3f}, {:.3f}]".format(*t)  # noqa: E731
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown CPU")
    lines = [
        "# Benchmark report",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores ({cpu}); "
        f"nginx {subprocess.run([NGINX, '-v'], capture_output=True, text=True).stderr.split('/')[-1].strip()}; "
        f"{ROUNDS} rounds of {SECONDS} s per run; one nginx worker on CPU 0, wrk (1 thread, "
        f"{CONNECTIONS} connections, requests prepared before the run) on CPU 1. Each variant "
        "runs right next to its reference (the baseline, or the module with 10,000 permits), "
        "in alternating order; ratios are median [min, max] over the rounds' pairs.",
        "",
        "| scenario | variant | req/s (median) | ratio to its reference | p50 | p99 |",
        "|---|---|---|---|---|---|",
    ]
    for scenario in SCENARIOS + ["admitting everyone"]:
        for key in [k for k in RUNS if k[0] == scenario]:
            reference = key[1] == "baseline" or (key[1] == "module" and key[0] == "admitting everyone")
            ratio = "1" if reference else fmt(ratio_stats(ratios, *key))
            lines.append(f"| {scenario} | {key[1]} | {median_of(results, key, 'rps'):,.0f} | "
                         f"{ratio} | {1e6 * median_of(results, key, 'p50'):.0f} us | "
                         f"{1e6 * median_of(results, key, 'p99'):.0f} us |")
    spreads = [max(x["rps"] for x in results[(sc, "baseline")]) /
               min(x["rps"] for x in results[(sc, "baseline")]) - 1 for sc in SCENARIOS]
    lines += ["", "## Reading the figures", "",
              f"The same baseline, run again and again, varied by up to {100 * max(spreads):.0f}% "
              "between runs on this machine (a shared virtual machine). Ratios from pairs of "
              "adjacent runs cancel slow drift but not that jitter, so a single ratio within "
              "about that much of its target says little; the min and max show the spread. The "
              "instruction counts at the end do not depend on the machine's load: they are the "
              "figure to compare builds by.", ""]
    lines += ["## Against the targets", ""]

    def target(ok, text):
        lines.append(f"- {'met' if ok else 'NOT MET'}: {text}")

    for scenario in ["sold out", "opening rush", "before the start", "queued"]:
        r = ratio_stats(ratios, scenario, "module")
        target(r[0] >= 0.95, f"{scenario}: module at {r[0]:.3f} of the baseline (target 0.95)")
    r = ratio_stats(ratios, "returning winners", "module")
    target(r[0] >= 0.97, f"returning winners: module at {r[0]:.3f} of the baseline (target 0.97)")
    for scenario in ["sold out", "opening rush"]:
        mod, lua = added_us(ratios, scenario, "module"), added_us(ratios, scenario, "openresty")
        target(mod <= lua / 4, f"{scenario}: the gate adds {mod:.3f} us per request, the "
               f"OpenResty script {lua:.3f} us (target: at most a quarter, {lua / 4:.3f} us)")
    journal = ratio_stats(ratios, "admitting everyone", "module, state file")
    lines.append(f"- measured: admitting every request with a state file runs at {fmt(journal)} of "
                 f"the same without one ({added_us(ratios, 'admitting everyone', 'module, state file'):.2f} "
                 "us per admission for the journal's write)")
    many = ratio_stats(ratios, "returning winners", "module, 100,000 permits")
    target(many[0] >= 0.95, f"returning winners with 100,000 permits at {fmt(many)} of 10,000 "
           "(target: within 5%)")
    for scenario in ["sold out", "returning winners"]:
        added = counts[f"{scenario}, module"] - counts[f"{scenario}, baseline"]
        target(added <= 1500, f"{scenario}: the gate adds {added:,.0f} instructions per request "
               f"({counts[f'{scenario}, baseline']:,.0f} without it, "
               f"{counts[f'{scenario}, module']:,.0f} with it; target 1,500)")
    added = counts["queued, module"] - counts["queued, baseline"]
    target(added <= 2000, f"queued: a waiter's request adds {added:,.0f} instructions "
           f"({counts['queued, baseline']:,.0f} for a plain return 503, "
           f"{counts['queued, module']:,.0f} in line; target 2,000)")
    capacity, line = capacity
    target(line["waiting"] >= 1_000_000 and line["beyond"] <= 128,
           f"a 256 MB zone holds a line of {line['waiting']:,} waiters of 40-byte keys, "
           f"{line['per_waiter']:.0f} zone bytes each, {line['beyond']:.0f} beyond the key "
           "(target 1,000,000 and 128)")
    per_permit_40 = next(b for k, b in capacity if k == 40)
    target(per_permit_40 - 40 <= 128, f"{per_permit_40:.0f} zone bytes per permit of a 40-byte "
           f"key, {per_permit_40 - 40:.0f} beyond the key (target 128)")
    target(10 * 1024 * 1024 / per_permit_40 >= 60_000, f"a 10 MB zone holds "
           f"{10 * 1024 * 1024 / per_permit_40:,.0f} permits of 40-byte keys (target 60,000)")
    lines += ["", "## Opening rush: selling out", "",
              f"Cap {RUSH_CAP:,}, block ratio {RUSH_RATIO}, 1,000,000 identities at full load "
              "until a probe sees SOLD_OUT.", "",
              "| variant | time to sell out | admissions per second |", "|---|---|---|"]
    for variant, seconds in sellouts.items():
        if seconds:
            lines.append(f"| {variant} | {seconds:.1f} s | {RUSH_CAP / seconds:,.0f} |")
        else:
            lines.append(f"| {variant} | not sold out in 115 s | |")
    lines += ["", "## Zone memory per permit (scripts/capacity, 10 MB zone)", "",
              "| key bytes | zone bytes per permit | permits in 10 MB |", "|---|---|---|"]
    for key_len, per_permit in capacity:
        lines.append(f"| {key_len} | {per_permit:.0f} | {10 * 1024 * 1024 / per_permit:,.0f} |")
    lines += ["", "## Instructions per request (callgrind, single-process nginx)", "",
              "| run | instructions per request |", "|---|---|"]
    for name, count in counts.items():
        lines.append(f"| {name} | {count:,.0f} |")
    lines += ["", "![requests per second](chart.svg)", ""]
    return "\n".join(lines)


def capacity():
    out = subprocess.run([str(ROOT / "scripts/capacity")], capture_output=True, text=True,
                         check=True, env=dict(os.environ, TEST_NGINX_BINARY=NGINX,
                                              TEST_NGINX_LOAD_MODULES=MODULE)).stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    permits = [(int(r[1]), float(r[4])) for r in rows if r[0] == "10m"]
    waiting, used = map(int, re.search(r"^line: .*?: (\d+) waiting of \d+ asked \(\d+ refused\), "
                                       r"(\d+) bytes used", out, re.M).groups())
    line = {"waiting": waiting, "per_waiter": used / waiting, "beyond": used / waiting - 40}
    return permits, line


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    # The state files' directory belongs to nginx's user, as the README asks: its workers
    # compact them while nginx runs.
    if os.geteuid() == 0:
        import pwd
        nobody = pwd.getpwnam("nobody")
        os.chown(WORK, nobody.pw_uid, nobody.pw_gid)
    RESULTS.mkdir(parents=True, exist_ok=True)
    gate = Nginx("gate", gate_config(), GATE_PORT)
    lua = Nginx("openresty", lua_config(), LUA_PORT)
    try:
        for n in (gate, lua):
            n.start(["taskset", "-c", "0"])
        prime(gate, lua)
        results, ratios = measure_rounds()
        sellouts = {"module": sell_out(GATE_PORT, ROUNDS + 1),
                    "openresty": sell_out(LUA_PORT, ROUNDS + 1)}
    finally:
        gate.stop()
        lua.stop()
    raw = {"runs": {" / ".join(k): v for k, v in results.items()}, "sell_out_seconds": sellouts}
    (RESULTS / "raw.json").write_text(json.dumps(raw, indent=1) + "\n")
    counts = instructions()
    raw["instructions_per_request"] = counts
    (RESULTS / "raw.json").write_text(json.dumps(raw, indent=1) + "\n")
    text = report(results, ratios, sellouts, counts, capacity())
    (RESULTS / "report.md").write_text(text)
    (RESULTS / "chart.svg").write_text(chart(results))
    print(text)


if __name__ == "__main__":
    main()

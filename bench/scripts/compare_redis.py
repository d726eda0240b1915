#!/usr/bin/env python3
"""flashstock against Redis + Lua, side by side, in one run, the way issue 13's table measures.

Each row runs both sides at the same depth and the same number in flight, in separate
processes on this machine, alternating flashstock and Redis for --rounds rounds:

- flashstock: a fresh release `flashstockd` (embedded defaults, its own data directory),
  driven by `flashstock-loadgen run` (frames of --batch requests, or `--mode client`: callers
  that each call `Client::reserve` once and await it).
- Redis: a private `redis-server` (AOF on, `appendfsync` everysec or always, no RDB), driven
  by `redis-benchmark` with EVALSHA of the check-and-decrement script from ../shared/FACTS.md,
  `-P` the same depth (no `-P` for the single-call rows) and `-c` the same in flight.

Prints a markdown table (medians of the rounds, every round's figure in brackets) and writes
the raw figures as JSON. Usage, from the repository root after `cargo build --release`:

    python3 bench/scripts/compare_redis.py [--rounds 2] [--rows single50,...] [--json out.json]
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

LUA = ("local s = tonumber(redis.call('GET', KEYS[1])) if s and s >= tonumber(ARGV[1]) "
       "then redis.call('DECRBY', KEYS[1], ARGV[1]) return 1 else return 0 end")
REDIS_PORT = 6391
ZIPF_ALL_SUCCEED = ["--scenario", "zipf", "--skus", "1000", "--skew", "0",
                    "--units", "1000000000", "--ttl-ms", "2000"]

# name: (what, flashstock loadgen args, redis-benchmark args, Redis key setup, fsync modes)
ROWS = {
    "flash256": ("hot-SKU flash sale, 256-deep frames / pipelines, 16 in flight",
                 ["--buyers", "2000000", "--units", "100000", "--batch", "256",
                  "--concurrency", "16", "--connections", "2"],
                 ["-c", "16", "-P", "256", "-n", "3000000"], ("hot", 100_000), ["everysec"]),
    "flash16": ("same, 16-deep, 50 in flight",
                ["--buyers", "1000000", "--units", "100000", "--batch", "16",
                 "--concurrency", "50"],
                ["-c", "50", "-P", "16", "-n", "1500000"], ("hot", 100_000), ["everysec"]),
    "single50": ("50 callers, one reserve at a time each, all succeed (zipf, 1,000 SKUs)",
                 ZIPF_ALL_SUCCEED + ["--mode", "client", "--concurrency", "50",
                                     "--duration-s", "10", "--warmup-s", "2"],
                 ["-c", "50", "-n", "800000"], ("zipf", 1_000_000_000), ["everysec", "always"]),
    "single500": ("500 callers, same",
                  ZIPF_ALL_SUCCEED + ["--mode", "client", "--concurrency", "500",
                                      "--duration-s", "10", "--warmup-s", "2"],
                  ["-c", "500", "-n", "800000"], ("zipf", 1_000_000_000), ["everysec"]),
    "single4000": ("4,000 callers, same",
                   ZIPF_ALL_SUCCEED + ["--mode", "client", "--concurrency", "4000",
                                       "--duration-s", "10", "--warmup-s", "2"],
                   ["-c", "4000", "-n", "600000"], ("zipf", 1_000_000_000), ["everysec"]),
}


def run_flashstock(args, server, loadgen, work):
    data = tempfile.mkdtemp(dir=work)
    listening = os.path.join(data, "listening")
    with open(listening, "w") as out, open(os.path.join(data, "log"), "w") as err:
        proc = subprocess.Popen([server, "--listen", "127.0.0.1:0", "--data-dir", data],
                                stdout=out, stderr=err)
    try:
        for _ in range(100):
            if os.path.getsize(listening) > 0:
                break
            time.sleep(0.1)
        addr = open(listening).read().split()[3]
        result = os.path.join(data, "result.json")
        subprocess.run([loadgen, "run", "--target", f"flashstock://{addr}",
                        "--server-data-dir", data, "--quiet", "--json", result] + args,
                       check=True, stdout=subprocess.DEVNULL)
        r = json.load(open(result))
        assert r["audit"]["passed"], f"audit failed: {r['audit']}"
        lat = r["latency_us"]
        return {"ops_per_s": r["ops_per_s"], "p50_ms": lat["p50"] / 1000,
                "p99_ms": lat["p99"] / 1000, "p999_ms": lat["p999"] / 1000}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def redis_cli(*args):
    out = subprocess.run(["redis-cli", "-p", str(REDIS_PORT)] + list(args),
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def run_redis(bench_args, keys, fsync, work):
    data = tempfile.mkdtemp(dir=work)
    proc = subprocess.Popen(["redis-server", "--port", str(REDIS_PORT), "--dir", data,
                             "--appendonly", "yes", "--appendfsync", fsync, "--save", "",
                             "--maxclients", "10000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        sha = redis_cli("script", "load", LUA)
        kind, stock = keys
        if kind == "hot":
            redis_cli("set", "stock:hot", str(stock))
            key = "stock:hot"
        else:
            # redis-benchmark -r 1000 puts a 12-digit number in 0..999 for __rand_int__.
            pairs = []
            for n in range(1000):
                pairs += [f"stock:{n:012d}", str(stock)]
            redis_cli("mset", *pairs)
            bench_args = bench_args + ["-r", "1000"]
            key = "stock:__rand_int__"
        out = subprocess.run(["redis-benchmark", "-p", str(REDIS_PORT), "--csv"] + bench_args
                             + ["evalsha", sha, "1", key, "1"],
                             check=True, capture_output=True, text=True).stdout
        # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95...","p99...","max"
        row = [line for line in out.splitlines() if line.lower().startswith('"evalsha')][-1]
        fields = [f.strip('"') for f in row.split('","')]
        return {"ops_per_s": float(fields[1]), "p50_ms": float(fields[4]),
                "p99_ms": float(fields[6]), "p999_ms": None}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def median_of(results, field):
    values = [r[field] for r in results if r[field] is not None]
    return statistics.median(values) if values else None


def rate(value):
    return f"{value / 1e6:.2f}M/s" if value >= 1e6 else f"{value / 1e3:.0f}k/s"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--server", default="target/release/flashstockd")
    parser.add_argument("--loadgen", default="target/release/flashstock-loadgen")
    parser.add_argument("--json", default=None)
    opts = parser.parse_args()
    work = tempfile.mkdtemp(prefix="flashstock-compare.")
    raw = {}
    for name in opts.rows.split(","):
        what, fs_args, bench_args, keys, modes = ROWS[name]
        entry = raw.setdefault(name, {"what": what, "flashstock": []})
        for round_ in range(opts.rounds):
            entry["flashstock"].append(run_flashstock(fs_args, opts.server, opts.loadgen, work))
            for fsync in modes:
                entry.setdefault(f"redis_{fsync}", []).append(
                    run_redis(bench_args, keys, fsync, work))
            print(f"{name} round {round_ + 1}: " + ", ".join(
                f"{side} {rate(results[-1]['ops_per_s'])}" for side, results in entry.items()
                if side != "what"), file=sys.stderr)
    print("| load | flashstock | Redis+Lua, AOF everysec | ratio | Redis+Lua, AOF always | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, entry in raw.items():
        fs = entry["flashstock"]
        fs_rps = median_of(fs, "ops_per_s")
        cells = [entry["what"],
                 f"{rate(fs_rps)} ({', '.join(rate(r['ops_per_s']) for r in fs)}), "
                 f"p50 {median_of(fs, 'p50_ms'):.2f} ms, p99 {median_of(fs, 'p99_ms'):.1f} ms, "
                 f"p99.9 {median_of(fs, 'p999_ms'):.1f} ms"]
        for fsync in ("everysec", "always"):
            results = entry.get(f"redis_{fsync}")
            if not results:
                cells += ["-", "-"]
                continue
            redis_rps = median_of(results, "ops_per_s")
            cells += [f"{rate(redis_rps)} ({', '.join(rate(r['ops_per_s']) for r in results)}), "
                      f"p50 {median_of(results, 'p50_ms'):.2f} ms, "
                      f"p99 {median_of(results, 'p99_ms'):.1f} ms",
                      f"**{fs_rps / redis_rps:.1f}x**"]
        print("| " + " | ".join(cells) + " |")
    if opts.json:
        json.dump(raw, open(opts.json, "w"), indent=1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

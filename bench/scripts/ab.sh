#!/usr/bin/env bash
# A/B of two flashstockd builds or settings, in one run, alternating: each round starts a
# fresh release server in its own process, runs the load generator's default flash sale
# against it (LOAD_ARGS), and prints requests/s and latency percentiles. Medians of ROUNDS
# (default 3) per side are what to compare; the machine is noisy.
#
#   A="/tmp/base-bin/flashstockd" B="target/release/flashstockd --metrics-listen 127.0.0.1:0" \
#     bench/scripts/ab.sh
#
# A_LOAD_ARGS and B_LOAD_ARGS, when set, are added to LOAD_ARGS for that side only: the same
# server driven two ways (QUIC client against the HTTP API, say).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${ROUNDS:-3}
loadgen=${LOADGEN:-target/release/flashstock-loadgen}
load_args=${LOAD_ARGS:---buyers 2000000 --units 100000}
work=$(mktemp -d /tmp/flashstock-ab.XXXXXX)
one() { # label, round, extra load arguments, server command line
  local label=$1; local dir="$work/$1-$2"; local extra=$3; shift 3
  # shellcheck disable=SC2086
  $@ --listen 127.0.0.1:0 --data-dir "$dir" >"$dir.listening" 2>"$dir.log" &
  local server=$!
  for _ in $(seq 1 100); do [[ -s "$dir.listening" ]] && break; sleep 0.1; done
  local addr; addr=$(awk '{print $4}' "$dir.listening")
  if [[ -z "$addr" ]]; then echo "$label: the server did not start:"; tail -3 "$dir.log"; exit 1; fi
  # shellcheck disable=SC2086
  "$loadgen" run --target "flashstock://$addr" --server-data-dir "$dir" $load_args $extra --quiet \
    --json "$dir.json" >/dev/null
  # The server's CPU time (user + system, clock ticks) for the run: steadier than throughput.
  local ticks; ticks=$(awk '{print $14 + $15}' "/proc/$server/stat")
  kill -TERM $server; wait $server || true
  # The server's data (its WAL: GBs over a few rounds) is not read again; its log and figures are.
  [[ "${KEEP_DATA:-0}" == 1 ]] || rm -rf "$dir"
  echo "$ticks" > "$dir.ticks"
  # Shard steps at or over the server's --slow-step-ms, and snapshots written, from its log.
  local slow; slow=$(grep -c "slow shard step" "$dir.log" || true)
  local snaps; snaps=$(grep -c "snapshot \(written\|encoded\)" "$dir.log" || true)
  python3 - "$label" "$dir.json" "$dir.ticks" "$(getconf CLK_TCK)" "$slow" "$snaps" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
cpu_s = int(open(sys.argv[3]).read()) / int(sys.argv[4])
lat = r["latency_us"]
# Server CPU per request over the whole run (set-up and warm-up included).
cpu_us = cpu_s * 1e6 / max(r["ops_total"], 1)
print(f"{sys.argv[1]} {r['ops_per_s']:>10.0f} req/s  p50 {lat['p50']} us  p99 {lat['p99']} us  "
      f"p999 {lat['p999']} us  max {lat['max']} us  server cpu {cpu_us:.2f} us/req  "
      f"slow steps {sys.argv[5]}  snapshots {sys.argv[6]}  audit {'PASS' if r['audit']['passed'] else 'FAIL'}")
PY
}
for round in $(seq 1 "$rounds"); do
  one A "$round" "${A_LOAD_ARGS:-}" ${A:?set A to a flashstockd command line}
  one B "$round" "${B_LOAD_ARGS:-}" ${B:?set B to a flashstockd command line}
done

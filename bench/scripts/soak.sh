#!/usr/bin/env bash
# Soak: a sold-out flash sale over one connection, at full speed, for DURATION_S seconds
# (default 600), against a release flashstockd in its own process; prints the server's RSS
# and open files every SAMPLE_S seconds (default 10), then the load generator's summary.
# Memory must be flat once warm: every request frame is answered and let go.
#
#   bench/scripts/soak.sh            # 10 minutes
#   DURATION_S=120 bench/scripts/soak.sh
#   LOAD_ARGS="--scenario cart --skus 1000 --skew 1 --units 1000000000 --ttl-ms 30000 \
#     --mode client --concurrency 50" bench/scripts/soak.sh      # carts, as in stop 20
#   SERVER_ARGS="--http-listen 127.0.0.1:7480" LOAD_ARGS="--scenario zipf --skus 1000 --skew 0 \
#     --units 1000000000 --ttl-ms 2000 --mode http --concurrency 500" bench/scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
duration_s=${DURATION_S:-600}
sample_s=${SAMPLE_S:-10}
load_args=${LOAD_ARGS:---scenario flash-sale --units 10 --connections 1 --concurrency 16 --batch 256}
server_args=${SERVER_ARGS:-}
work=$(mktemp -d /tmp/flashstock-soak.XXXXXX)
cargo build --release -q -p flashstock-server -p flashstock-loadgen
# shellcheck disable=SC2086
target/release/flashstockd --listen 127.0.0.1:0 --data-dir "$work/server" $server_args \
  >"$work/listening" 2>"$work/server.log" &
server=$!
# The server's WAL grows by GBs over a soak; kept only with KEEP_DATA=1 (logs are kept).
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true
  [[ "${KEEP_DATA:-0}" == 1 ]] || rm -rf "$work/server"' EXIT
for _ in $(seq 1 100); do [[ -s "$work/listening" ]] && break; sleep 0.1; done
addr=$(awk '{print $4}' "$work/listening")
echo "flashstockd pid $server on $addr; work dir $work"
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$server/status"; }
(
  started=$(date +%s)
  printf '%8s %8s %10s\n' elapsed_s rss_mb open_files
  while kill -0 "$server" 2>/dev/null; do
    printf '%8s %8s %10s\n' $(( $(date +%s) - started )) "$(rss_mb)" \
      "$(ls "/proc/$server/fd" | wc -l)"
    sleep "$sample_s"
  done
) &
sampler=$!
target/release/flashstock-loadgen run --target "flashstock://$addr" --server-data-dir "$work/server" \
  $load_args --duration-s "$duration_s" --quiet --json "$work/soak.json"
printf '%8s %8s %10s   (after the run)\n' end "$(rss_mb)" "$(ls "/proc/$server/fd" | wc -l)"
kill $sampler 2>/dev/null || true

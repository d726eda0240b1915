#!/usr/bin/env bash
# One measured run of a prototype on three nodes in network namespaces (net.sh), with the
# load driver on the host:
#   run.sh raft|standby|raft1 steady|kill|partition|pause|cut-peers|cut-kill
# (cut-peers: the leader loses its peers but not its clients nor etcd; cut-kill: the same,
# then the leader is SIGKILLed halfway, the cut healed and the node restarted: whatever it
# acknowledged on its own disk alone is then lost, which the audit must catch.)
# (raft1: one openraft voter alone, the same code committing on its own disk only: the
# baseline that shows what replication costs.)
# DURATION (s, default 30), AT (s into the load when the fault starts, default 10), FOR (s the
# fault lasts: the killed node restarts, the partition heals, the paused process continues;
# default 8), WORKERS (64), GROUP (checkouts a call, 16), NODE_ARGS (more node flags, e.g.
# `--election-timeout-ms 150 --heartbeat-ms 50` or `--lease-ttl-s 1`). Prints the driver's summary line and
# audit. Node logs in $OUT (default /tmp/spike); the nodes' data (0.76 GB a node for a 30 s
# run) is deleted at the end unless KEEP_DATA=1: 24 runs of matrix.sh kept would fill a disk.
set -euo pipefail
cd "$(dirname "$0")"
KIND=${1:?raft|standby|raft1} SCENARIO=${2:?steady|kill|partition|pause}
DURATION=${DURATION:-30} AT=${AT:-10} FOR=${FOR:-8} WORKERS=${WORKERS:-64} GROUP=${GROUP:-16}
OUT=${OUT:-/tmp/spike}
BIN=${BIN:-../../../target/release/flashstock-replication-spike}
PEERS=10.77.0.10:7000,10.77.0.11:7000,10.77.0.12:7000
NODES="0 1 2"
if [ "$KIND" = raft1 ]; then PEERS=10.77.0.10:7000 NODES=0; fi
./net.sh up
rm -rf "$OUT" && mkdir -p "$OUT"
pids=()
ETCD_PID=
cleanup() {
    for p in "${pids[@]}" $ETCD_PID; do kill -9 "$p" 2>/dev/null || true; done
    # The next run binds the same addresses: wait until these are gone.
    for p in "${pids[@]}" $ETCD_PID; do
        while kill -0 "$p" 2>/dev/null; do sleep 0.1; done
    done
    for i in 0 1 2; do ./net.sh heal "$i"; done
    if [ "${KEEP_DATA:-0}" != 1 ]; then rm -rf "$OUT"/n[0-9] "$OUT/etcd"; fi
}
trap cleanup EXIT

if [ "$KIND" = standby ]; then
    # etcd of its own, on the bridge, so a node cut off loses it too. Its election timeout
    # (250 ms) sets the shortest lease it grants: 1.5 x that, rounded up to 1 s.
    etcd --data-dir "$OUT/etcd" --listen-client-urls http://10.77.0.1:23790 \
        --advertise-client-urls http://10.77.0.1:23790 --listen-peer-urls http://10.77.0.1:23800 \
        --initial-advertise-peer-urls http://10.77.0.1:23800 \
        --initial-cluster default=http://10.77.0.1:23800 \
        --heartbeat-interval 50 --election-timeout 250 >"$OUT/etcd.log" 2>&1 &
    ETCD_PID=$!
    sleep 1
fi

start() {
    local i=$1
    if [ "$KIND" != standby ]; then
        ip netns exec "spk$i" "$BIN" raft-node --id "$i" --peers "$PEERS" --dir "$OUT/n$i" \
            ${NODE_ARGS:-} >>"$OUT/n$i.log" 2>&1 &
    else
        ip netns exec "spk$i" "$BIN" standby-node --id "$i" --peers "$PEERS" --dir "$OUT/n$i" \
            --etcd http://10.77.0.1:23790 ${NODE_ARGS:-} >>"$OUT/n$i.log" 2>&1 &
    fi
    pids[$i]=$!
}
for i in $NODES; do start "$i"; done
sleep 3

"$BIN" drive --nodes "$PEERS" --workers "$WORKERS" --group "$GROUP" --duration-s "$DURATION" \
    >"$OUT/drive.out" 2>"$OUT/drive.err" &
DRIVE=$!
if [ "$SCENARIO" != steady ]; then
    sleep "$AT"
    leader=-1
    for _ in $(seq 50); do
        leader=$("$BIN" leader --nodes "$PEERS")
        [ "$leader" -ge 0 ] && break
        sleep 0.1
    done
    echo "t=${AT}s ($(date +%s%3N) ms): $SCENARIO of node $leader" | tee "$OUT/fault"
    case $SCENARIO in
    kill) kill -9 "${pids[$leader]}"; sleep "$FOR"; start "$leader" ;;
    partition) ./net.sh isolate "$leader"; sleep "$FOR"; ./net.sh heal "$leader" ;;
    cut-peers) ./net.sh cut-peers "$leader"; sleep "$FOR"; ./net.sh heal "$leader" ;;
    cut-kill)
        ./net.sh cut-peers "$leader"; sleep $((FOR / 2))
        kill -9 "${pids[$leader]}"; ./net.sh heal "$leader"; sleep $((FOR / 2)); start "$leader"
        ;;
    pause) kill -STOP "${pids[$leader]}"; sleep "$FOR"; kill -CONT "${pids[$leader]}" ;;
    esac
    echo "t=$((AT + FOR))s: node $leader back; leader now $("$BIN" leader --nodes "$PEERS")" | tee -a "$OUT/fault"
fi
wait "$DRIVE"
cat "$OUT/drive.out"
for i in $NODES; do
    # CPU seconds (user + system) over the node's life, from /proc (100 ticks a second).
    cpu=$(awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/${pids[$i]}/stat" 2>/dev/null || echo gone)
    echo "n$i: rss_kb=$(ps -o rss= -p "${pids[$i]}" 2>/dev/null || echo gone) cpu_s=$cpu log_bytes=$(du -sb "$OUT/n$i" | cut -f1)"
done

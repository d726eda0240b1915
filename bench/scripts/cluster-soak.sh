#!/usr/bin/env bash
# cluster-soak.sh: a 3-server cluster under checkout load through the cluster client for DURATION s,
# the order writer following the cluster; b SIGKILLed at 45 s and restarted; RSS/fds sampled.
HERE="$(cd "$(dirname "$0")" && pwd)"
B="${BIN:-$HERE/../../target/release}"
mkdir -p "${WORK_DIR:-/tmp/cl}"
P=/flashstock/soak-$$
D=${DURATION:-150}
cd "${WORK_DIR:-/tmp/cl}"; pkill -f flashstockd; pkill -f order-writer; sleep 1; rm -rf a b c w
EXTRA="${EXTRA:-}" "$HERE"/cluster-start.sh $P > /dev/null
$B/flashstock --etcd http://127.0.0.1:2379 --cluster-prefix $P cluster init a b c > /dev/null
mkdir -p w
$B/order-writer --etcd http://127.0.0.1:2379 --cluster-prefix $P --server-data-dir a --data-dir w --metrics-listen 127.0.0.1:9480 > w.out 2> w.err &
$B/flashstock-loadgen run --target flashstock://cluster --etcd http://127.0.0.1:2379 --cluster-prefix $P --server-data-dir a \
  --scenario checkout --skus 10000 --units 1000000 --think-ms 5 --confirm-probability 0.7 --duration-s $D --warmup-s 5 \
  --batch 256 --concurrency 16 ${RATE:+--rate $RATE} --orders-db sqlite:w/orders.db > load.out 2>&1 &
L=$!
for t in $(seq 15 15 $D); do
  sleep 15
  if [ $t = 45 ]; then
    pid=$(pgrep -f "server-id b"); kill -9 $pid; echo "t=$t SIGKILL b ($pid)"
    while kill -0 $pid 2>/dev/null; do sleep 0.01; done
    S="--tls-cert a/tls/cert.pem --tls-key a/tls/key.pem --tokens-file a/tokens.toml"
    start=$(date +%s.%N)
    $B/flashstockd --listen 127.0.0.1:7402 --metrics-listen 127.0.0.1:9402 --data-dir b --etcd http://127.0.0.1:2379 --cluster-prefix $P --server-id b $S $EXTRA > b2.out 2> b2.err &
    while ! grep -q listening b2.out 2>/dev/null; do sleep 0.05; done
    echo "b listening again after $(echo "$(date +%s.%N) - $start" | bc) s"
  fi
  for s in a b c; do
    pid=$(pgrep -f "server-id $s" | head -1)
    echo -n "t=$t $s rss_mb=$(( $(awk '/VmRSS/{print $2}' /proc/$pid/status) / 1024 )) fds=$(ls /proc/$pid/fd | wc -l)  "
  done; echo
done
wait $L
"$HERE"/cluster-orders.sh load.out w/orders.db
pkill -f order-writer; pkill -f flashstockd

#!/usr/bin/env bash
# cluster-move.sh: a 3-server cluster under checkout load through the cluster client for
# DURATION s (default 60), the order writer following the cluster, while slot ranges move:
# at 15 s a's slots 0-682 go to b; at 30 s a's 683-1364 go to c, with KILL=target|source
# SIGKILLing that server after the copy (then restarted and the move resumed). MOVES=0 runs
# the same load with no move, for comparison. Ends with the load's audit and the order rows.
HERE="$(cd "$(dirname "$0")" && pwd)"
B="${BIN:-$HERE/../../target/release}"
mkdir -p "${WORK_DIR:-/tmp/cl}"
P=/flashstock/move-$$
D=${DURATION:-60}
E="--etcd http://127.0.0.1:2379 --cluster-prefix $P"
cd "${WORK_DIR:-/tmp/cl}"; pkill -f flashstockd; pkill -f order-writer; sleep 1; rm -rf a b c w
EXTRA="${EXTRA:-}" "$HERE"/cluster-start.sh $P > /dev/null
$B/flashstock $E cluster init a b c > /dev/null
mkdir -p w
$B/order-writer $E --server-data-dir a --data-dir w --metrics-listen 127.0.0.1:9480 > w.out 2> w.err &
$B/flashstock-loadgen run --target flashstock://cluster $E --server-data-dir a \
  --scenario checkout --skus 10000 --units 1000000 --think-ms 5 --confirm-probability 0.7 --duration-s $D --warmup-s 5 \
  --batch 256 --concurrency 16 ${RATE:+--rate $RATE} --orders-db sqlite:w/orders.db > load.out 2>&1 &
L=$!
restart() { # id port
  pid=$(pgrep -f "server-id $1"); kill -9 $pid; echo "SIGKILL $1 ($pid)"
  while kill -0 $pid 2>/dev/null; do sleep 0.01; done
  S=""; [ $1 != a ] && S="--tls-cert a/tls/cert.pem --tls-key a/tls/key.pem --tokens-file a/tokens.toml"
  $B/flashstockd --listen 127.0.0.1:$2 --metrics-listen 127.0.0.1:$(( $2 + 2000 )) --data-dir $1 $E --server-id $1 $S $EXTRA > $1.2.out 2> $1.2.err &
  while ! grep -q listening $1.2.out 2>/dev/null; do sleep 0.05; done
  echo "$1 listening again"
}
sleep 15
if [ "${MOVES:-1}" = 1 ]; then
  echo "t=15 move 0-682 a -> b"; $B/flashstock $E --server-data-dir a cluster move 0-682 --to b
  sleep 15
  echo "t=30 move 683-1364 a -> c${KILL:+, SIGKILL $KILL after the copy}"
  if [ -n "$KILL" ]; then
    $B/flashstock $E --server-data-dir a cluster move 683-1364 --to c --pause-after copied
    if [ "$KILL" = target ]; then restart c 7403; else restart a 7401; fi
    $B/flashstock $E --server-data-dir a cluster resume
  else
    $B/flashstock $E --server-data-dir a cluster move 683-1364 --to c
  fi
  $B/flashstock $E cluster show
fi
wait $L
"$HERE"/cluster-orders.sh load.out w/orders.db
pkill -f order-writer; pkill -f flashstockd

#!/usr/bin/env bash
# cluster-ab.sh ROUND: one round of 1 server vs 3-server cluster, fresh data each
HERE="$(cd "$(dirname "$0")" && pwd)"
B="${BIN:-$HERE/../../target/release}"
mkdir -p "${WORK_DIR:-/tmp/cl}"
L="--scenario zipf --skus 10000 --units 1000000 --duration-s 20 --warmup-s 3 --batch 256 --concurrency 16"
cd "${WORK_DIR:-/tmp/cl}"
pkill -f flashstockd; sleep 1; rm -rf a b c one
$B/flashstockd --listen 127.0.0.1:7400 --metrics-listen 127.0.0.1:9400 --data-dir one > one.out 2>one.err &
sleep 2
echo "one: $($B/flashstock-loadgen run --target flashstock://127.0.0.1:7400 --server-data-dir one $L 2>&1 | grep -E '^requests|^latency|^audit' | tr '\n' ' ')"
pkill -f flashstockd; sleep 1
"$HERE"/cluster-start.sh /flashstock/ab$1-$$ > /dev/null
$B/flashstock --etcd http://127.0.0.1:2379 --cluster-prefix /flashstock/ab$1-$$ cluster init a b c > /dev/null
echo "three: $($B/flashstock-loadgen run --target flashstock://cluster --etcd http://127.0.0.1:2379 --cluster-prefix /flashstock/ab$1-$$ --server-data-dir a $L 2>&1 | grep -E '^requests|^latency|^audit' | tr '\n' ' ')"
pkill -f flashstockd; sleep 1

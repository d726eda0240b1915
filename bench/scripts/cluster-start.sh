#!/usr/bin/env bash
# cluster-start.sh PREFIX: three release flashstockd of one cluster on 7401-7403, a's cert and tokens shared
set -e
HERE="$(cd "$(dirname "$0")" && pwd)"
B="${BIN:-$HERE/../../target/release}"
mkdir -p "${WORK_DIR:-/tmp/cl}"
P=$1
cd "${WORK_DIR:-/tmp/cl}"
$B/flashstockd --listen 127.0.0.1:7401 --metrics-listen 127.0.0.1:9401 --data-dir a --etcd http://127.0.0.1:2379 --cluster-prefix $P --server-id a $EXTRA > a.out 2> a.err &
sleep 1.5
S="--tls-cert a/tls/cert.pem --tls-key a/tls/key.pem --tokens-file a/tokens.toml"
$B/flashstockd --listen 127.0.0.1:7402 --metrics-listen 127.0.0.1:9402 --data-dir b --etcd http://127.0.0.1:2379 --cluster-prefix $P --server-id b $S $EXTRA > b.out 2> b.err &
$B/flashstockd --listen 127.0.0.1:7403 --metrics-listen 127.0.0.1:9403 --data-dir c --etcd http://127.0.0.1:2379 --cluster-prefix $P --server-id c $S $EXTRA > c.out 2> c.err &
sleep 1.5
cat a.out b.out c.out

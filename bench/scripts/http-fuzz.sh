#!/usr/bin/env bash
# A robustness run of the HTTP API with schemathesis (an OpenAPI fuzzer, from PyPI) against a
# fresh release flashstockd, driven by the document the server serves (/openapi.json):
#
#  1. refused callers (a consumer token, a wrong token): no answer is a 5xx, and nothing
#     changes: the log's record count and every stocked SKU read the same before and after;
#  2. a service and an admin token: every check schemathesis has (no 5xx, answers match the
#     document, schema-valid bodies accepted, schema-violating ones refused).
#
#   bench/scripts/http-fuzz.sh            # EXAMPLES=300 per operation by default
set -euo pipefail
cd "$(dirname "$0")/../.."
examples=${EXAMPLES:-300}
st=${SCHEMATHESIS:-/tmp/flashstock-schemathesis/bin/schemathesis}
if [[ ! -x "$st" ]]; then
  python3 -m venv /tmp/flashstock-schemathesis
  /tmp/flashstock-schemathesis/bin/pip install -q schemathesis
  st=/tmp/flashstock-schemathesis/bin/schemathesis
fi
cargo build --release -q -p flashstock-server
work=$(mktemp -d /tmp/flashstock-http-fuzz.XXXXXX)
target/release/flashstockd --data-dir "$work/data" --listen 127.0.0.1:0 \
  --metrics-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >"$work/listening" 2>"$work/server.log" &
server=$!
trap 'kill -TERM $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [[ -s "$work/listening" ]] && break; sleep 0.1; done
metrics=$(awk '{print $10}' "$work/listening")
http=http://$(awk '{print $12}' "$work/listening")
token() { grep "^$1" "$work/data/tokens.toml" | cut -d'"' -f2; }
admin=$(token admin); service=$(token service); consumer=$(token consumer)
for sku in 0 1 2; do
  curl -sf -X PUT -H "Authorization: Bearer $admin" -d '{"total":1000000}' \
    "$http/v1/skus/$sku/stock" >/dev/null
done
state() { # the log's record count and the stocked SKUs, as one line
  curl -s "http://$metrics/metrics" | awk '$1 == "flashstock_wal_records_total" {printf "%s ", $2}'
  for sku in 0 1 2; do curl -s -H "Authorization: Bearer $admin" "$http/v1/skus/$sku"; done
  echo
}
before=$(state)
echo "== refused callers: a consumer token, then a wrong one (no 5xx, no state change)"
for who in "$consumer" not-a-token; do
  "$st" run "$http/openapi.json" -H "Authorization: Bearer $who" --max-examples "$examples" \
    --checks not_a_server_error --exclude-checks positive_data_acceptance \
    | tail -n 6
done
after=$(state)
if [[ "$before" != "$after" ]]; then
  echo "FAIL: a refused request changed the state"; echo "before: $before"; echo "after:  $after"
  exit 1
fi
echo "PASS: refused requests changed nothing ($before)"
echo "== a service token, then an admin token: every check"
for who in "$service" "$admin"; do
  # The summary, and every failure in full (a curl line reproduces each).
  "$st" run "$http/openapi.json" -H "Authorization: Bearer $who" --max-examples "$examples" \
    >"$work/run.txt" || true
  sed -n '/= FAILURES =/,/= WARNINGS =\|= SUMMARY =/p' "$work/run.txt"
  tail -n 6 "$work/run.txt"
  if grep -q "unique failure" "$work/run.txt"; then echo "FAIL: see above"; exit 1; fi
done
if grep -q "panicked" "$work/server.log"; then
  echo "FAIL: the server panicked (see $work/server.log)"; exit 1
fi
echo "PASS: no 5xx, no panic; the server's log is $work/server.log"

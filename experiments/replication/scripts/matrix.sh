#!/usr/bin/env bash
# Every prototype under every scenario, REPS times (default 3), one summary line per run:
#   matrix.sh > results.txt
set -uo pipefail
cd "$(dirname "$0")"
for kind in ${KINDS:-raft standby}; do
    for scenario in ${SCENARIOS:-steady kill partition pause}; do
        for rep in $(seq "${REPS:-3}"); do
            out=/tmp/spike-m/$kind-$scenario-$rep
            mkdir -p "$out"
            OUT=$out/run DURATION=${DURATION:-30} AT=${AT:-10} FOR=${FOR:-8} ./run.sh "$kind" "$scenario" >"$out/out" 2>&1
            line=$(grep -E '^checkouts/s' "$out/out")
            audit=$(grep -E '^audit (PASS|FAIL)' "$out/out")
            digests=$(grep -oE 'digest=[0-9a-f]+' "$out/out" | sort -u | wc -l)
            echo "$kind $scenario $rep $line $audit distinct_digests=$digests"
        done
    done
done

#!/usr/bin/env bash
# CPU per thread of a running process over an interval: which thread a load saturates.
#   bench/scripts/threads.sh <pid> [seconds, default 10]
# Prints each thread's name and its share of one core (100 = one core busy all the time),
# busiest first, then the process total.
set -euo pipefail
pid=$1; secs=${2:-10}; tck=$(getconf CLK_TCK)
snap() { for t in /proc/"$pid"/task/*; do
  # comm may hold spaces; the fields after it start at the last ')'.
  name=$(cat "$t/comm" 2>/dev/null) || continue
  ticks=$(sed 's/.*) //' "$t/stat" 2>/dev/null | awk '{print $12 + $13}') || continue
  echo "${t##*/} $ticks $name"; done; }
before=$(snap); sleep "$secs"; after=$(snap)
join <(sort <<<"$before") <(sort <<<"$after") | awk -v s="$secs" -v t="$tck" '
  { busy = ($4 - $2) * 100 / (s * t); name = $3; by[name] += busy; total += busy }
  END { for (n in by) printf "%6.1f%%  %s\n", by[n], n; printf "%6.1f%%  total\n", total }' | sort -rn

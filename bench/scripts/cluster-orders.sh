#!/usr/bin/env bash
# cluster-orders.sh LOAD_OUT ORDERS_DB: after a cluster run, waits (up to 600 s) until the order
# writer has stored a row per unit the load generator's audit says was sold, then looks again
# 3 s later: each sale must be stored exactly once.
rows() {
  python3 -c "import sqlite3; print(sqlite3.connect('$2').execute(\"select count(*) from orders where status='confirmed'\").fetchone()[0])"
}
tail -14 "$1"
sold=$(grep -o 'confirmed [0-9]*, cancelled [0-9]*, unanswered' "$1" | awk '{print $2}' | tr -d ,)
for i in $(seq 1 600); do
  stored=$(rows "$1" "$2")
  [ "$stored" -ge "$sold" ] && break; sleep 1
done
echo "after the load: $stored order rows for $sold units sold, $i s later"
sleep 3
echo "3 s after that: $(rows "$1" "$2") order rows"

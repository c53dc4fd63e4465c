#!/bin/sh
# Starts a background child that would live for minutes, records "<own pid> <child pid>" in
# $OUT_DIR/<task_id>.pids (written whole, by a rename), then keeps working (touching its
# heartbeat) until the file $GATE exists; then ends its child and exits 0.
# Usage: family.sh TASK_ID [MARKER]; the marker only makes the processes findable.
set -eu
sleep 300 &
child=$!
echo "$$ $child" > "$OUT_DIR/$1.pids.tmp"
mv "$OUT_DIR/$1.pids.tmp" "$OUT_DIR/$1.pids"
while [ ! -e "$GATE" ]; do
    touch "$DISPATCHER_HEARTBEAT_FILE"
    sleep 0.05
done
kill "$child" 2>/dev/null || true

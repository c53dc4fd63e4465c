#!/bin/sh
# Records its pid in $OUT_DIR/<task_id>.pid, then keeps working (touching its heartbeat) until
# the file $OUT_DIR/gate-<task_id> exists; then appends "<task_id> <attempt>" to $LEDGER and
# exits ${EXIT:-0}. Tests open the gate when they are ready, so nothing depends on timing.
# Usage: gated.sh TASK_ID
set -eu
echo $$ > "$OUT_DIR/$1.pid"
while [ ! -e "$OUT_DIR/gate-$1" ]; do
    touch "$DISPATCHER_HEARTBEAT_FILE"
    sleep 0.05
done
echo "$1 $DISPATCHER_ATTEMPT" >> "$LEDGER"
exit "${EXIT:-0}"

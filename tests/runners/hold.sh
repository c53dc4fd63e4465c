#!/bin/sh
# Records "start TASK TAG EPOCH_NS" in $LEDGER and its pid in $OUT_DIR/pids, keeps working
# (touching its heartbeat) until the file $GATE or $OUT_DIR/gate-TASK exists, sleeps
# ${SLEEP:-0}s, then records "end TASK TAG EPOCH_NS" and exits 0. Tests open the gates when
# they are ready, so nothing depends on timing; TAG (a pool or a spec) is only recorded.
# Usage: hold.sh TASK_ID TAG [MARKER]; the marker only makes the process findable.
set -eu
echo $$ >> "$OUT_DIR/pids"
echo "start $1 $2 $(date +%s%N)" >> "$LEDGER"
while [ ! -e "${GATE:-/nonexistent}" ] && [ ! -e "$OUT_DIR/gate-$1" ]; do
    touch "$DISPATCHER_HEARTBEAT_FILE"
    sleep 0.05
done
sleep "${SLEEP:-0}"
echo "end $1 $2 $(date +%s%N)" >> "$LEDGER"

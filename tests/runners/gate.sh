#!/bin/sh
# Records "start"/"end" ledger lines like record.sh, but in between keeps working (touching
# its heartbeat) until the file $GATE exists, so a test decides when it ends.
# Usage: gate.sh TASK_ID POOL [MARKER...]
set -eu
echo $$ >> "$OUT_DIR/pids"
echo "start $1 $2 $(date +%s%N)" >> "$LEDGER"
while [ ! -e "$GATE" ]; do
    touch "$DISPATCHER_HEARTBEAT_FILE"
    sleep 0.05
done
echo "end $1 $2 $(date +%s%N)" >> "$LEDGER"

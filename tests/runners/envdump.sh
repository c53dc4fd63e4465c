#!/bin/sh
# Writes its environment to $OUT_DIR/<task_id>.env (outside the dispatcher's directories) and
# prints nothing, then waits for $OUT_DIR/gate-<task_id> like gated.sh and exits 0.
# Usage: envdump.sh TASK_ID
set -eu
env > "$OUT_DIR/$1.env"
while [ ! -e "$OUT_DIR/gate-$1" ]; do
    touch "$DISPATCHER_HEARTBEAT_FILE"
    sleep 0.05
done

#!/bin/sh
# A runner for learned footprints. Usage: learn.sh TASK_ID
# The first attempt of a task named in $FAIL_FIRST changes the file $TOUCH in its slot and
# exits 1 (its patch then names that file). Every other attempt appends "start"/"end TASK
# learn EPOCH_NS" lines to $LEDGER around waiting (touching its heartbeat) for the file
# $OUT_DIR/gate-TASK_ID, then exits 0.
set -eu
if [ "$1" = "${FAIL_FIRST:-}" ] && [ "$DISPATCHER_ATTEMPT" = 1 ]; then
    mkdir -p "$(dirname "$TOUCH")"
    echo "changed by $1" > "$TOUCH"
    exit 1
fi
echo "start $1 learn $(date +%s%N)" >> "$LEDGER"
while [ ! -e "$OUT_DIR/gate-$1" ]; do
    touch "$DISPATCHER_HEARTBEAT_FILE"
    sleep 0.05
done
echo "end $1 learn $(date +%s%N)" >> "$LEDGER"

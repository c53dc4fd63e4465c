#!/bin/sh
# Ignores SIGTERM (its children inherit that), keeps its heartbeat, never ends: only SIGKILL
# stops it. Records its pid both appended to $OUT_DIR/pids and alone in $OUT_DIR/pid.
# Arguments only mark the process for tests.
trap '' TERM
echo $$ >> "$OUT_DIR/pids"
echo $$ > "$OUT_DIR/pid"
while :; do
    touch "$DISPATCHER_HEARTBEAT_FILE"
    sleep 0.1
done

#!/bin/sh
# Ignores SIGTERM (its children inherit that), keeps its heartbeat, never ends: only SIGKILL
# stops it. Arguments only mark the process for tests.
trap '' TERM
echo $$ >> "$OUT_DIR/pids"
while :; do
    touch "$DISPATCHER_HEARTBEAT_FILE"
    sleep 0.2
done

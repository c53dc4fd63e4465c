#!/bin/sh
# Ignores SIGTERM (and so do the sleeps it starts), records its pid in $OUT_DIR/pid, and keeps
# touching its heartbeat until it is killed.
trap '' TERM
echo $$ > "$OUT_DIR/pid"
while :; do
    touch "$DISPATCHER_HEARTBEAT_FILE"
    sleep 0.1
done

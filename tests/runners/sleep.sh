#!/bin/sh
# Keeps working (touching its heartbeat) for ${SLEEP:-300} seconds; records its pid first.
echo $$ >> "$OUT_DIR/pids"
end=$(( $(date +%s) + ${SLEEP:-300} ))
while [ "$(date +%s)" -lt "$end" ]; do
    touch "$DISPATCHER_HEARTBEAT_FILE"
    sleep 0.2
done

#!/bin/sh
# Touches its heartbeat every ${PULSE}s (and at no other time) for ${SLEEP}s, then exits 0:
# a runner that keeps a steady heartbeat just inside the heartbeat timeout.
end=$(( $(date +%s) + SLEEP ))
while [ "$(date +%s)" -lt "$end" ]; do
    touch "$DISPATCHER_HEARTBEAT_FILE"
    sleep "$PULSE"
done

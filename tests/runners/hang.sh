#!/bin/sh
# Like silent.sh (no output, no heartbeat, never ends), but without exec: the shell stays,
# so its arguments (a test's unique marker) remain visible in the process table.
echo $$ >> "$OUT_DIR/pids"
while :; do sleep 1; done

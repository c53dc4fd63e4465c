#!/bin/sh
# Starts, records its pid, then stays silent (no output, no heartbeat) for a long time.
echo $$ >> "$OUT_DIR/pids"
exec sleep 300

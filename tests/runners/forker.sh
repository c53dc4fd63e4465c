#!/bin/sh
# Starts two background children that would live for minutes, records their pids in
# $OUT_DIR/children (one per line, written before this script exits), and exits 0 at once.
sleep 300 &
echo $! >> "$OUT_DIR/children"
sh -c 'sleep 300' &
echo $! >> "$OUT_DIR/children"
exit 0

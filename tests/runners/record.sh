#!/bin/sh
# Appends "start <task_id> <epoch_ns>" and "end ..." lines to $LEDGER around a sleep of
# ${SLEEP:-0.2}s, so tests can measure overlap; exits ${EXIT:-0}.
# Usage: record.sh TASK_ID POOL
set -eu
echo "start $1 $2 $(date +%s%N)" >> "$LEDGER"
sleep "${SLEEP:-0.2}"
echo "end $1 $2 $(date +%s%N)" >> "$LEDGER"
exit "${EXIT:-0}"

#!/bin/sh
# Works for a pseudo-random 0-300 ms derived from the task id, then appends one short line
# "<task_id> <attempt>" to $LEDGER (a single `>>` write, so concurrent appends never mix).
# Usage: ledger.sh TASK_ID [MARKER]; the marker only makes the process findable.
set -eu
sum=$(printf '%s' "$1" | cksum | cut -d' ' -f1)
sleep "$(printf '0.%03d' $((sum % 301)))"
echo "$1 $DISPATCHER_ATTEMPT" >> "$LEDGER"

#!/bin/sh
# Reports a growing spend as JSON lines in its heartbeat file, ten steps a second: step n
# is {"tokens": n*100, "cost_usd": n*$STEP_USD, "progress": n}. After ${STEPS:-0} steps
# (0: never) it reports the final spend in the result file and exits 0.
# Usage: spender.sh TASK_ID
set -eu
n=0
while :; do
    n=$((n + 1))
    cost=$(awk "BEGIN { printf \"%.2f\", $n * ${STEP_USD:-0.05} }")
    echo "{\"tokens\": $((n * 100)), \"cost_usd\": $cost, \"progress\": $n}" >> "$DISPATCHER_HEARTBEAT_FILE"
    if [ "${STEPS:-0}" -gt 0 ] && [ "$n" -ge "${STEPS:-0}" ]; then
        echo "{\"status\": \"succeeded\", \"spend\": {\"tokens\": $((n * 100)), \"cost_usd\": $cost}}" > "$DISPATCHER_RESULT_FILE"
        exit 0
    fi
    sleep 0.1
done

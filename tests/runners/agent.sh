#!/bin/sh
# An agent stand-in. Its first ${FAIL_TIMES:-1} attempts of a task fail the way $MODE says:
#   result: writes {"status": $FAIL_STATUS, "retry_after": $RETRY_AFTER} to the result file
#   exit75: exits 75 (EX_TEMPFAIL)
#   output: prints a provider's usage-limit message and exits 1
# Later attempts succeed, reporting an artifact and their spend in the result file, unless
# THEN_FAIL=1: then they exit 1 without a word.
# Appends "start|end <task_id> agent <epoch_ns>" lines to $LEDGER around its work.
# Usage: agent.sh TASK_ID
set -eu
task=$1
echo "start $task agent $(date +%s%N)" >> "$LEDGER"
count_file="$OUT_DIR/$task.count"
n=$(cat "$count_file" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "$count_file"
code=0
if [ "$n" -le "${FAIL_TIMES:-1}" ]; then
    case "${MODE:-result}" in
        result)
            printf '{"status": "%s", "retry_after": %s, "message": "provider said no"}\n' \
                "${FAIL_STATUS:-rate_limited}" "${RETRY_AFTER:-1}" > "$DISPATCHER_RESULT_FILE"
            code=1
            ;;
        exit75) code=75 ;;
        output)
            echo "Error 429: usage limit reached, resets at 5pm"
            code=1
            ;;
    esac
elif [ "${THEN_FAIL:-0}" = 1 ]; then
    code=1
else
    printf '{"status": "succeeded", "artifacts": ["%s/report-%s.md"], "spend": {"tokens": 100, "cost_usd": 0.25}}\n' \
        "$OUT_DIR" "$task" > "$DISPATCHER_RESULT_FILE"
fi
echo "end $task agent $(date +%s%N)" >> "$LEDGER"
exit "$code"

#!/bin/sh
# A runner for checkpoint and bootstrap tests. Usage: agent_slot.sh TASK_ID
# Records in $OUT_DIR/<task_id>.<attempt>.*: the physical working directory (.pwd), the
# context (.context), DISPATCHER_PORT_BASE (.port, "none" when unset), the slot's .env (.env)
# and the file setup.sh makes (.setup) when present. With FAIL_FIRST=1, attempt 1 leaves an
# uncommitted work.txt and fails with exit code 7; a later attempt takes
# previous_attempt.checkpoint_ref from TASK_CONTEXT and saves `git show <ref>:work.txt`
# (.shown). $OUT_DIR/<task_id>.<attempt>.done is written last.
set -eu
task=$1
out="$OUT_DIR/$task.$DISPATCHER_ATTEMPT"
pwd -P > "$out.pwd"
printf '%s\n' "$TASK_CONTEXT" > "$out.context"
printf '%s\n' "${DISPATCHER_PORT_BASE:-none}" > "$out.port"
if [ -f .env ]; then cp .env "$out.env"; fi
if [ -f setup-made.txt ]; then cp setup-made.txt "$out.setup"; fi
if [ "${FAIL_FIRST:-0}" = 1 ]; then
    if [ "$DISPATCHER_ATTEMPT" = 1 ]; then
        echo "progress of $task" > work.txt
        echo "attempt 1 of $task giving up"
        : > "$out.done"
        exit 7
    fi
    # The context is compact JSON; the checkpoint ref comes before the log tail, and the
    # error text ("exited with code 7") holds no brace.
    ref=$(printf '%s' "$TASK_CONTEXT" |
        sed -n 's/.*"previous_attempt":{[^}]*"checkpoint_ref":"\([^"]*\)".*/\1/p')
    git show "$ref:work.txt" > "$out.shown"
fi
: > "$out.done"

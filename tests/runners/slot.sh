#!/bin/sh
# A runner for workspace-slot tests. Usage: slot.sh TASK_ID
# Records what it finds in its working directory in $OUT_DIR/<task_id>.*: the physical path
# (.pwd), the checked-out branch (.branch), `git status --porcelain` (.status) and the task
# context (.context); then, as the environment asks:
#   LEDGER=path    "start|end TASK_ID slot EPOCH_NS" lines around the work, to measure overlap
#   COMMIT=1       commits a file, with an identity of its own (works on a fresh machine)
#   DIRTY=1        modifies README.md and writes an untracked file, both naming the task
#   GATE_DIR=dir   keeps working (touching its heartbeat) until dir/<task_id> or dir/all exists
# $OUT_DIR/<task_id>.started is created last of the records, so a test that sees it can
# read the others. Exits 0.
set -eu
task=$1
out="$OUT_DIR/$task"
if [ -n "${LEDGER:-}" ]; then echo "start $task slot $(date +%s%N)" >> "$LEDGER"; fi
pwd -P > "$out.pwd"
# Outside a repository (a scratch directory) these record "(no repository)".
git rev-parse --abbrev-ref HEAD > "$out.branch" 2>/dev/null || echo "(no repository)" > "$out.branch"
git status --porcelain --untracked-files=all > "$out.status" 2>/dev/null \
    || echo "(no repository)" > "$out.status"
printf '%s\n' "$TASK_CONTEXT" > "$out.context"
if [ "${COMMIT:-0}" = 1 ]; then
    echo "committed by $task" > "committed-$task.txt"
    git add "committed-$task.txt"
    git -c user.name="Slot Runner" -c user.email=runner@example.com \
        commit --quiet -m "work of task $task"
fi
if [ "${DIRTY:-0}" = 1 ]; then
    echo "modified by $task" >> README.md
    echo "untracked by $task" > "untracked-$task.txt"
fi
: > "$out.started"
if [ -n "${GATE_DIR:-}" ]; then
    while [ ! -e "$GATE_DIR/$task" ] && [ ! -e "$GATE_DIR/all" ]; do
        touch "$DISPATCHER_HEARTBEAT_FILE"
        sleep 0.05
    done
fi
if [ -n "${LEDGER:-}" ]; then echo "end $task slot $(date +%s%N)" >> "$LEDGER"; fi

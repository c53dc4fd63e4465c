#!/bin/sh
# Records what a runner is given (argv one per line, environment, physical working directory,
# the context file's content, whether the heartbeat file exists while it runs) in $OUT_DIR,
# named after the runner id, then writes one line to stdout and one to stderr so tests can find
# them in the attempt log.
set -eu
for arg in "$@"; do printf '%s\n' "$arg"; done > "$OUT_DIR/$RUNNER_ID.args"
env > "$OUT_DIR/$RUNNER_ID.env"
pwd -P > "$OUT_DIR/$RUNNER_ID.pwd"
cat "$TASK_CONTEXT_FILE" > "$OUT_DIR/$RUNNER_ID.context"
if [ -f "$DISPATCHER_HEARTBEAT_FILE" ]; then echo present; else echo missing; fi \
    > "$OUT_DIR/$RUNNER_ID.heartbeat"
echo "contract runner stdout $RUNNER_ID"
echo "contract runner stderr $RUNNER_ID" >&2

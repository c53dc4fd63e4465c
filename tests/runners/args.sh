#!/bin/sh
# Writes each argument on its own line (NUL-safe enough for tests) and the runner
# environment to files in $OUT_DIR, named after the runner id.
set -eu
for arg in "$@"; do printf '%s\n' "$arg"; done > "$OUT_DIR/$RUNNER_ID.args"
env > "$OUT_DIR/$RUNNER_ID.env"
pwd > "$OUT_DIR/$RUNNER_ID.pwd"

#!/bin/sh
# Writes what a cluster job was given into $OUT_DIR/<task_id>.env: its working directory,
# the task id from TASK_CONTEXT, RUNNER_ID and the secret the pool's env_file holds.
# Usage: slurm_env.sh TASK_ID
set -eu
{
    echo "cwd=$(pwd)"
    echo "context=$TASK_CONTEXT"
    echo "runner=$RUNNER_ID"
    echo "secret=${AGENT_SECRET:-}"
} > "$OUT_DIR/$1.env"
echo "job output of $1"

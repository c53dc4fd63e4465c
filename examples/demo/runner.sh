#!/bin/sh
# A stand-in for an AI coding agent: prints what it was given, "works" for a moment while
# touching its heartbeat file, and fails its first attempt when the task asks for it.
# Arguments come from the pool's command: {spec} {task_id} {title}.
set -eu
spec=$1 task_id=$2 title=$3
echo "runner $RUNNER_ID (pool $POOL_NAME, attempt $DISPATCHER_ATTEMPT) working on $spec/$task_id: $title"
echo "working directory: $(pwd)"
for step in 1 2 3; do
    echo "step $step/3"
    touch "$DISPATCHER_HEARTBEAT_FILE"
    sleep 0.3
done
case "$TASK_CONTEXT" in
*'"demo_fail_first_attempt":true'*)
    if [ "$DISPATCHER_ATTEMPT" = 1 ]; then
        echo "simulated failure on the first attempt" >&2
        exit 1
    fi
    ;;
esac
# Leave work behind like an agent would: a commit on the task branch.
printf '%s\n' "$title" >> "tasks-done.txt"
if git rev-parse --git-dir >/dev/null 2>&1; then
    git add tasks-done.txt
    git -c user.name=demo-agent -c user.email=agent@example.invalid commit -q -m "$spec/$task_id: $title"
    echo "committed on $(git rev-parse --abbrev-ref HEAD)"
fi
echo "done: $title"

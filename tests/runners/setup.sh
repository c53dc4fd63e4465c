#!/bin/sh
# A worktree setup step for bootstrap tests. Usage: setup.sh ok|fail|hang
# ok: writes setup-made.txt in the slot, saying whether .env was there; fail: exits 1;
# hang: writes $OUT_DIR/setup.started, then sleeps until it is stopped.
echo "setup running"
case "$1" in
fail)
    echo "setup failing on purpose" >&2
    exit 1
    ;;
hang)
    : > "$OUT_DIR/setup.started"
    sleep 60
    ;;
*)
    { echo "made by setup"; if [ -f .env ]; then echo "saw .env"; fi; } > setup-made.txt
    ;;
esac

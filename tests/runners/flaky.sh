#!/bin/sh
# Fails its first attempt (exit 5) and succeeds on every later one.
if [ "$DISPATCHER_ATTEMPT" = 1 ]; then
    echo "first attempt fails on purpose" >&2
    exit 5
fi
echo "attempt $DISPATCHER_ATTEMPT succeeds"

#!/bin/sh
# Keeps printing (so its heartbeat never goes quiet) without ever touching its working
# directory or reporting progress: a stalled agent.
while :; do
    echo "thinking..."
    sleep 0.1
done

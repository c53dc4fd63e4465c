#!/bin/sh
# Makes progress: writes step-<n>.txt in its working directory five times a second for
# ${STEPS:-10} steps, printing nothing, then exits 0.
set -eu
n=0
while [ "$n" -lt "${STEPS:-10}" ]; do
    n=$((n + 1))
    echo "$n" > "step-$n.txt"
    sleep 0.2
done

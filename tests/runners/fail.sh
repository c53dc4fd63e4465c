#!/bin/sh
# Always fails with exit code ${EXIT:-3}, after saying so.
echo "failing on purpose (attempt $DISPATCHER_ATTEMPT)" >&2
exit "${EXIT:-3}"

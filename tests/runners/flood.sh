#!/bin/sh
# Writes ${BYTES:-1000000000} bytes of "x" to stdout as fast as it can, then exits 0.
head -c "${BYTES:-1000000000}" /dev/zero | tr '\0' x

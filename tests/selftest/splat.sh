#!/bin/bash
# The harness must fail a run in which the kernel warns: this test only
# prints a WARNING-shaped line to the kernel log.
echo "WARNING: CPU: 0 PID: 1 at fleece-harness-selftest.c:1 selftest+0x0/0x0" > /dev/kmsg

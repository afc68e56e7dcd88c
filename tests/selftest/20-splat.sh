#!/bin/bash
# The harness must fail a run in which the kernel warns: this test only
# prints a WARNING-shaped line to the kernel log.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
echo "WARNING: CPU: 0 PID: 1 at fleece-harness-selftest.c:1 selftest+0x0/0x0" > /dev/kmsg

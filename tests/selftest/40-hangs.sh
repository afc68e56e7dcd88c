#!/bin/bash
# A test that never ends: the harness must kill it after TEST_TIMEOUT
# (the self-test sets a short one) and report "not ok".
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
sleep 100000

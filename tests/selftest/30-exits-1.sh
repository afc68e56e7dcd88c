#!/bin/bash
# A test that exits 1: the harness must report "not ok".
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
echo "this test fails on purpose"
exit 1

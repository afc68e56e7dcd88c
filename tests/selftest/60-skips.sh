#!/bin/bash
# A test that cannot run in this environment skips with a reason: the
# harness must report "ok N name # SKIP reason" and count it as skipped.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
skip "selftest: nothing to run here"

#!/bin/bash
# make check-crash, the last boot: after the last crash, attach, clean up
# what the crash interrupted, a backup (incremental when it can be),
# exact; then an orderly shutdown, and the run's report.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check-crash" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
. "$SRC/tests/crash/common.inc" || exit 1

activate
attach
stale_sessions
verified_backup "final"
echo "# the backups of this disk, all boots:"
cat "$IMGS/history"
shutdown_clean
say "final done"
log "done"

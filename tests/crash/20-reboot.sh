#!/bin/bash
# make check-crash, boot 2: after the orderly shutdown of boot 1, the
# tracker is re-attached as fleece-track-attach.service does it (its
# ExecStart), the store found clean; more writes, then an incremental
# backup: incremental (no fallback), exact byte for byte.  Orderly
# shutdown again; the crash boots follow.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check-crash" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
. "$SRC/tests/crash/common.inc" || exit 1

step "activate, attach (the unit's ExecStart)"
activate
attach
! grep_q "not closed cleanly" attach.out || fail "the store was closed cleanly, attach says otherwise"
assert_eq "$(status_field "$DMNAME" 12)" clean "the store as opened (status field 13)"
stale_sessions

step "more writes: random 4 KiB in 8 MiB at 16 MiB, 3 s"
fio --name=more --filename="$DATA" --offset=16M --size=8M --rw=randwrite --bs=4k --direct=1 \
	--ioengine=libaio --iodepth=16 --time_based --runtime=3 --randrepeat=0 > fio-more.log 2>&1 ||
	{ cat fio-more.log; fail "fio"; }

step "incremental after the reboot: incremental, exact"
verified_backup reboot
! grep_q -- "a full backup" backup.err || fail "the backup after a clean reboot fell back to a full one"
# It read exactly the chunks the tracker counted at its point in time
# (fleece-track logs the count at each checkpoint): those of both boots.
# A share of the device would not do: the writer during boot 1's backup
# marks more or fewer chunks with the host's speed.
read=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["read_bytes"])' "$IMGS/map.json")
changed=$(dmesg | sed -n 's/.*fleece-track: .*checkpoint: epoch [0-9]*, \([0-9]*\) chunks changed in epoch .*/\1/p' | tail -n 1)
[ -n "$changed" ] || fail "no checkpoint line of fleece-track in the kernel log"
[ "$changed" -gt 0 ] && [ "$changed" -lt $((DATA_MIB * 1048576 / CH)) ] ||
	fail "the tracker counted $changed chunks changed at the point in time: not some of them"
assert_eq "$read" "$((changed * CH))" "bytes the incremental after the reboot read ($changed changed chunks of $CH bytes)"
shutdown_clean
say "reboot done"
log "done"

#!/bin/bash
# Interrupted backups:
#  - SIGINT and SIGTERM in the middle of a backup: it stops cleanly, exits
#    128+signal, and leaves nothing behind (no FLEECE- device, the original
#    table, no loop device, no fleece file, no output, no state);
#  - a reader that goes away (broken pipe): the same, exit status not 0;
#  - SIGKILL: devices stay; "fleece stop" then removes everything, including
#    the loop device, the fleece file and FILE.partial;
#  - while a backup runs, another fleece command on the device is refused.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
cli_fixture 32 64

# Start a slow backup and wait until it has read something.
slow_backup() {
	$F backup --fleece-dir /mnt/fdir --rate 2M --block-size 1M -p lines -i 1 \
		data -o out.img 2> backup.err &
	bpid=$!
	local i
	for i in $(seq 1 300); do
		grep -q "MiB of 32.0 MiB" backup.err 2>/dev/null && return 0
		kill -0 $bpid 2>/dev/null || { cat backup.err; fail "backup ended early"; }
		sleep 0.1
	done
	cat backup.err
	fail "backup makes no progress"
}

for sig in INT TERM; do
	step "SIG$sig in the middle of a backup"
	slow_backup
	[ -e out.img.partial ] && [ -e /mnt/fdir/data.fleece ] || fail "no partial output or fleece file"
	if [ $sig = INT ]; then
		rc=0; $F stop data 2> stop.err || rc=$?
		cat stop.err
		assert_eq "$rc" 3 "stop while a backup runs"
		grep -q "another fleece command is working on it" stop.err || fail "no lock message"
		[ -b /dev/mapper/data-fleece-view ] || fail "the refused stop removed the view"
	fi
	kill -$sig $bpid
	rc=0; wait $bpid || rc=$?
	cat backup.err
	want=$((128 + $(kill -l $sig)))
	assert_eq "$rc" "$want" "exit status after SIG$sig"
	grep -q "interrupted by signal" backup.err || fail "no message about the signal"
	as_before "after SIG$sig"
done

step "the reader of a pipe goes away"
{ rc=0; $F backup --fleece-dir /mnt/fdir --block-size 1M -p none data -o - 2> backup.err || rc=$?
  echo $rc > rc.txt; } | head -c 1000000 > /dev/null
rc=$(cat rc.txt)
cat backup.err
assert_eq "$rc" 1 "exit status of a backup into a closed pipe (the operation failed)"
grep -q "broken pipe" backup.err || fail "no message about the closed pipe"
as_before "after a broken pipe"

step "SIGKILL in the middle of a backup, then fleece stop"
slow_backup
kill -KILL $bpid
wait $bpid 2>/dev/null || true
[ -b /dev/mapper/data-fleece-view ] || fail "SIGKILL: the view should still be there"
[ -e out.img.partial ] || fail "SIGKILL: the partial output should still be there"
$F status data | tee status.out
grep -q "^data: active" status.out || fail "status after SIGKILL"
$F stop data
as_before "stop after SIGKILL"

umount /mnt/fdir
step "ok"

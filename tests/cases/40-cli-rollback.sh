#!/bin/bash
# A start of two devices (one in the linear layout, one with a hidden
# origin) that fails at any step is undone completely: exit 1, both
# devices' tables and contents as before, nothing of a fleece left (no
# FLEECE- device, loop device, fleece file or state), and a start after it
# works.  Each step is made to fail with the test-only fault hook
# FLEECE_FAULT (tools/util.c).
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
cli_fixture 16 64
two0=$(mkdev two0 8 2)
two1=$(mkdev two1 8 2)
dmsetup create two --table "0 16384 linear $two0 0
16384 16384 linear $two1 0"
put pat /dev/mapper/two
twotable=$(dmsetup table two)

# state-write@1 and @2: the state files of data and two (phase 3: what
# was written is removed again, nothing else was made, so no rollback);
# fleece-file@N: device N's fleece file, loop-attach@N: its loop device
# (the file made is the rollback's to remove); state-write@3 and @4: the
# loop devices recorded; dm-load@N: the fleece table of device N;
# dm-create@1: two's hidden origin, @2 and @3: the views; suspend@N,
# table-check@N: device N in the suspend window; dm-resume@1: the resume
# that swaps the fleece tables in; state-write@5 and @6: "running", after
# the views.
for f in state-write@1 state-write@2 fleece-file@1 fleece-file@2 loop-attach@1 loop-attach@2 \
	 state-write@3 state-write@4 dm-load@1 dm-load@2 dm-create@1 dm-create@2 dm-create@3 \
	 suspend@1 suspend@2 table-check@1 table-check@2 dm-resume@1 dm-resume@2 \
	 state-write@5 state-write@6; do
	step "start fails at $f"
	rc=0
	FLEECE_FAULT=$f=EIO $F start --fleece-dir /mnt/fdir data two > start.out 2>&1 || rc=$?
	cat start.out
	assert_eq "$rc" 1 "$f: exit status of start"
	case $f in
	state-write@*|fleece-file@*|loop-attach@*)
		grep -q "Input/output error" start.out || fail "$f: the fault was not hit" ;;
	esac
	case $f in
	state-write@[12])
		! grep -q "undoing the start" start.out || fail "$f: a rollback of nothing" ;;
	*)
		grep -q "undoing the start" start.out || fail "$f: no rollback" ;;
	esac
	assert_eq "$(dmsetup table two)" "$twotable" "$f: two's table"
	dmsetup info two | grep -q "Tables present: *LIVE$" || fail "$f: two: $(dmsetup info two)"
	dmsetup info data | grep -q "Tables present: *LIVE$" || fail "$f: data: $(dmsetup info data)"
	dmsetup info -c --noheadings -o name,suspended two data | grep -q Suspended &&
		fail "$f: a device left suspended"
	same /dev/mapper/two pat "$f: two's content"
	as_before "$f"
done
rm -f start.out

step "a start after the failed ones works"
$F start -q --fleece-dir /mnt/fdir data two
same /dev/mapper/data-fleece-view pat "data's view"
same /dev/mapper/two-fleece-view pat "two's view"
$F stop -q data two
as_before "after the stop"
umount /mnt/fdir
step "ok"

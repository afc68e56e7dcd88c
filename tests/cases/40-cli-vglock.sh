#!/bin/bash
# For an LV, fleece start and stop hold lvm2's lock of its volume group
# (flock on /run/lock/lvm/V_<vg>, as lvm2 takes it) from reading its table
# to the swap, so that an lvextend or the end of a pvmove cannot reload it
# in between:
#  1. start waits for an lvm2 command that holds the lock, and says so;
#  2. an lvextend started while start is held just before its suspend
#     waits (test-only fault hook FLEECE_FAULT=before-suspend=STOP);
#  3. the same while stop is held before it removes the view;
#  4. the lock is taken in lvm.conf's global/locking_dir (here set through
#     LVM_SYSTEM_DIR, as lvm2 reads it), and under lvmlockd
#     (global/use_lvmlockd=1) start and stop refuse (exit 3): they cannot
#     take that lock; stop --force goes on without it, and says so.
# The VG's name has a '-' (dm name "vg--l-lv").
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
pvcreate -q /dev/ram2 > /dev/null
vgcreate -q vg-l /dev/ram2 > /dev/null
lvcreate -q -y -L 32M -n lv vg-l > /dev/null
fl=$(mkdev fl 64 1)
lv_table=$(dmsetup table vg--l-lv)
size=$(blockdev --getsz /dev/mapper/vg--l-lv)
lockf=/run/lock/lvm/V_vg-l
mkdir -p /run/lock/lvm
pid=

# An lvextend must wait while fleece is held; it is then given up (SIGINT).
lvextend_waits() { # what
	local lvp i rc=0
	lvextend -L +8M vg-l/lv > lvextend.out 2>&1 &
	lvp=$!
	sleep 8
	if ! kill -0 $lvp 2>/dev/null; then
		cat lvextend.out
		fail "$1: lvextend did not wait for the VG's lock held by fleece"
	fi
	assert_eq "$(blockdev --getsz /dev/mapper/vg--l-lv)" "$size" "$1: the LV's size while lvextend waits"
	kill -INT $lvp	# lvm2 gives up waiting for a lock on SIGINT
	for i in $(seq 1 100); do kill -0 $lvp 2>/dev/null || break; sleep 0.1; done
	kill -0 $lvp 2>/dev/null && kill -KILL $lvp
	wait $lvp || rc=$?
	cat lvextend.out
	[ "$rc" != 0 ] || fail "$1: lvextend succeeded"
}
# Once fleece let the lock go (lvs takes it too, for reading).
lv_size_unchanged() { # what
	assert_eq "$(lvs --noheadings --units s --nosuffix -o lv_size vg-l/lv 2>/dev/null | tr -d ' ')" \
		"$size" "$1: the LV's size in lvm2's metadata"
}

step "1. start waits for an lvm2 command holding the VG's lock"
rm -f released
flock -x "$lockf" -c 'sleep 8; touch released' &
hold=$!
for i in $(seq 1 50); do flock -n "$lockf" true || break; sleep 0.1; done
! flock -n "$lockf" true || fail "the lock is not held"
$F start --fleece-dev "$fl" /dev/vg-l/lv 2> start.err || { cat start.err; fail "start"; }
cat start.err
[ -e released ] || fail "start did not wait for the VG's lock"
grep -q "vg--l-lv: waiting for lvm2's lock of volume group vg-l ($lockf)" start.err ||
	fail "start did not say what it waits for"
wait $hold
dmsetup table vg--l-lv | grep -q " fleece " || fail "the LV is not fleeced"
$F stop -q /dev/vg-l/lv
assert_eq "$(dmsetup table vg--l-lv)" "$lv_table" "the LV's table after stop"

step "2. an lvextend waits for start"
run_held held.out env FLEECE_FAULT=before-suspend=STOP $F start --fleece-dev "$fl" /dev/vg-l/lv
lvextend_waits "start"
kill -CONT $pid
wait $pid || { cat held.out; fail "start after the lvextend gave up"; }
pid=
lv_size_unchanged "start"
dmsetup table vg--l-lv | grep -q " fleece " || fail "the LV is not fleeced"
same /dev/mapper/vg--l-lv-fleece-view /dev/mapper/vg--l-lv "the view of the idle LV"

step "3. an lvextend waits for stop"
run_held held.out env FLEECE_FAULT=dm-remove@1=STOP $F stop /dev/vg-l/lv
lvextend_waits "stop"
kill -CONT $pid
wait $pid || { cat held.out; fail "stop after the lvextend gave up"; }
pid=
lv_size_unchanged "stop"
assert_eq "$(dmsetup table vg--l-lv)" "$lv_table" "the LV's table after stop"
no_fleece_devices
lvextend -q -L +8M vg-l/lv > /dev/null || fail "lvextend once fleece is done"
assert_eq "$(blockdev --getsz /dev/mapper/vg--l-lv)" $((size + 16384)) "the LV's size after lvextend"

step "4. lvm.conf's locking_dir, and lvmlockd"
lv_table=$(dmsetup table vg--l-lv)
mkdir -p lvmalt lvmlockd /run/lock/lvm-alt
echo 'global { locking_dir = "/run/lock/lvm-alt" }' > lvmalt/lvm.conf
echo 'global { use_lvmlockd = 1 }' > lvmlockd/lvm.conf
assert_eq "$(LVM_SYSTEM_DIR=$PWD/lvmalt lvmconfig global/locking_dir 2>/dev/null)" \
	'locking_dir="/run/lock/lvm-alt"' "lvm2's locking_dir with the override"
rm -f released
flock -x /run/lock/lvm-alt/V_vg-l -c 'sleep 8; touch released' &
hold=$!
for i in $(seq 1 50); do flock -n /run/lock/lvm-alt/V_vg-l true || break; sleep 0.1; done
LVM_SYSTEM_DIR=$PWD/lvmalt $F start --fleece-dev "$fl" /dev/vg-l/lv 2> start.err ||
	{ cat start.err; fail "start with locking_dir"; }
cat start.err
[ -e released ] || fail "start did not wait for the VG's lock in locking_dir"
grep -q "waiting for lvm2's lock of volume group vg-l (/run/lock/lvm-alt/V_vg-l)" start.err ||
	fail "start did not say what it waits for"
wait $hold
LVM_SYSTEM_DIR=$PWD/lvmalt $F stop -q /dev/vg-l/lv
assert_eq "$(dmsetup table vg--l-lv)" "$lv_table" "the LV's table after stop"
expect_exit 3 env LVM_SYSTEM_DIR=$PWD/lvmlockd $F start --fleece-dev "$fl" /dev/vg-l/lv
echo "$T_ERR"
[[ $T_ERR == *"use_lvmlockd"* ]] || fail "start under lvmlockd: no reason given"
no_fleece_devices
assert_eq "$(dmsetup table vg--l-lv)" "$lv_table" "the LV's table after the refusal"
# stop refuses too, and goes on without the lock with --force
$F start -q --fleece-dev "$fl" /dev/vg-l/lv
expect_exit 3 env LVM_SYSTEM_DIR=$PWD/lvmlockd $F stop /dev/vg-l/lv
[[ $T_ERR == *"use_lvmlockd"* ]] || fail "stop under lvmlockd: no reason given"
dmsetup table vg--l-lv | grep -q " fleece " || fail "the refused stop changed the LV"
LVM_SYSTEM_DIR=$PWD/lvmlockd $F stop --force /dev/vg-l/lv 2> stop.err || { cat stop.err; fail "stop --force under lvmlockd"; }
cat stop.err
grep -q "going on without lvm2's lock" stop.err || fail "stop --force under lvmlockd: no warning"
no_fleece_devices
assert_eq "$(dmsetup table vg--l-lv)" "$lv_table" "the LV's table after stop --force"
vgchange -q -an vg-l > /dev/null
step "ok"

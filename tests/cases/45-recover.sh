#!/bin/bash
# fleece-recover.service: the command it runs at boot cleans up what a
# "fleece backup" killed with SIGKILL leaves (the guest has no systemd: the
# unit's ExecStart line is run as it stands, with this build's fleece):
#  - with nothing left over: exit 0, "no fleece found";
#  - killed, no reboot (the devices are still there): everything removed;
#  - killed, then a reboot (only files survive it: the state file, the
#    fleece file, FILE.partial; the devices are gone, data has its own table
#    again): "fleece backup data" is refused until the unit's command runs,
#    which removes the files and says so; then a backup works again.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
unit=$SRC/tools/systemd/fleece-recover.service
cli_fixture 32 64

step "the unit's command"
[ -f "$unit" ] || fail "$unit: no such file"
exec_line=$(sed -n 's/^ExecStart=//p' "$unit")
assert_eq "$exec_line" "/usr/local/sbin/fleece stop --all" "the unit's ExecStart"
read -ra recover <<< "${exec_line/\/usr\/local\/sbin\/fleece/$F}"
# The unit runs only when the default state directory has something in it.
assert_eq "$(sed -n 's/^ConditionDirectoryNotEmpty=//p' "$unit")" \
	"$(sed -n 's/^#define FLEECE_STATE_DIR[[:space:]]*"\(.*\)"$/\1/p' "$SRC/tools/fleece.h")" \
	"the unit's condition: fleece's default state directory"

# The unit's command: exit 0, its messages in recover.err.
run_recover() { # what
	local rc=0
	"${recover[@]}" 2> recover.err || rc=$?
	cat recover.err
	assert_eq "$rc" 0 "$1: exit status of '${recover[*]}'"
}

# A slow backup, killed with SIGKILL once it has read something: nothing
# of it is cleaned up.
killed_backup() {
	local i
	$F backup --fleece-dir /mnt/fdir --rate 2M --block-size 1M -p lines -i 1 \
		data -o out.img 2> backup.err &
	bpid=$!
	for i in $(seq 1 300); do
		grep -q "MiB of 32.0 MiB" backup.err 2>/dev/null && break
		kill -0 $bpid 2>/dev/null || { cat backup.err; fail "backup ended early"; }
		sleep 0.1
	done
	grep -q "MiB of 32.0 MiB" backup.err || { cat backup.err; fail "backup makes no progress"; }
	kill -KILL $bpid
	wait $bpid 2>/dev/null || true
	[ -f state/data ] && [ -f out.img.partial ] && [ -f /mnt/fdir/data.fleece ] ||
		fail "SIGKILL: the state file, FILE.partial or the fleece file is missing"
	[ -b /dev/mapper/data-fleece-view ] || fail "SIGKILL: the view should still be there"
}

step "nothing left over"
run_recover "nothing left over"
grep -q "no fleece found" recover.err || fail "nothing left over: no 'no fleece found'"
as_before "nothing left over"

step "fleece backup killed (SIGKILL), no reboot"
killed_backup
run_recover "killed, no reboot"
grep -q "^fleece stop: data: stopped$" recover.err || fail "killed, no reboot: no 'data: stopped'"
as_before "killed, no reboot"

step "fleece backup killed (SIGKILL), then a reboot"
killed_backup
grep -q '^partial=.*out.img.partial$' state/data || fail "the state file does not name FILE.partial"
grep -q '^fleece_file=/mnt/fdir/data.fleece$' state/data || fail "the state file does not name the fleece file"
# What a reboot does: no device-mapper device or loop device of the fleece
# is there any more, and data is activated with its own table.
loop=$(losetup -j /mnt/fdir/data.fleece | cut -d: -f1)
[ -b "$loop" ] || fail "no loop device on the fleece file"
dmsetup remove data-fleece-view
dmsetup load data --table "$table"
dmsetup suspend data
dmsetup resume data
# fleece's loop devices are autoclear: detached once nothing holds them.
[ -z "$(losetup -j /mnt/fdir/data.fleece)" ] || losetup -d "$loop"
[ -z "$(losetup -j /mnt/fdir/data.fleece)" ] || fail "the loop device is still attached"
no_fleece_devices
expect_exit 3 $F backup --fleece-dir /mnt/fdir data -o out2.img
[[ $T_ERR == *"run 'fleece stop data' first"* ]] || fail "leftovers: backup refused without the reason: $T_ERR"
run_recover "killed, then a reboot"
grep -q "^fleece stop: data: stopped$" recover.err || fail "after a reboot: no 'data: stopped'"
as_before "killed, then a reboot"

step "a backup after the clean-up"
$F backup --fleece-dir /mnt/fdir -q data -o out.img
cmp out.img pat || fail "the backup after the clean-up differs from data"
rm -f out.img
as_before "after the last backup"
umount /mnt/fdir
step "ok"

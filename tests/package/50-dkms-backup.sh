#!/bin/bash
# make check-package, in the guest: the module DKMS built and the installed
# fleece command (the guest sees the build machine's root, where the
# packages were installed) back up a device while it is being written.
#  1. the module loaded (the harness insmods fleece.module) is DKMS's build
#     for this kernel (its path and vermagic), and /usr/sbin/fleece belongs
#     to the fleece package;
#  2. fleece backup, rate-limited, while the device's last 8 MiB are
#     overwritten right after the point in time: the image equals the old
#     content byte for byte, writes were copied before they were read, and
#     nothing is left.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check-package" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=/usr/sbin/fleece
export FLEECE_STATE_DIR=$PWD/state

step "the module is DKMS's build, the command the package's"
mod=$(arg fleece.module)
[[ $mod == /var/lib/dkms/dm-fleece/*/"$(uname -r)"/* ]] ||
	fail "the module loaded ($mod) is not DKMS's build for $(uname -r)"
assert_eq "$(</sys/module/dm_fleece/initstate)" live "the state of the loaded dm_fleece"
vermagic=$(modinfo -F vermagic "$mod")
[[ $vermagic == "$(uname -r) "* ]] || fail "$mod was built for '$vermagic', this is $(uname -r)"
# (dpkg -S would read every package's file list over 9p: a minute here)
grep -qx "$F" /var/lib/dpkg/info/fleece.list || fail "$F is not in the fleece package's file list"
[ -f /usr/lib/udev/rules.d/60-fleece.rules ] || fail "the package's udev rules are not installed"

step "backup through the installed command while the device is written"
cli_fixture 32 64
mkpattern new 8 new
$F backup data -o out.img --fleece-dir /mnt/fdir --rate 2M 2> backup.err &
pid=$!
for i in $(seq 1 200); do
	[[ $(dmsetup table data) == *" fleece "* ]] && break
	sleep 0.1
done
[[ $(dmsetup table data) == *" fleece "* ]] || fail "data is not fleeced 20 s after the backup started: $(cat backup.err)"
put new "$data" $((24 * 2048))
rc=0
wait $pid || rc=$?
[ $rc = 0 ] || fail "fleece backup exited $rc: $(cat backup.err)"
cmp out.img pat || fail "the image differs from the content at the point in time"
copied=$(sed -n 's/.* \([0-9]*\) chunks copied before they were read.*/\1/p' backup.err)
[ "${copied:-0}" -gt 0 ] || fail "the writes made no copy-before-write (summary: $(tail -1 backup.err))"
cmp <(dev_range "$data" $((24 * 1024)) $((8 * 1024))) new || fail "the writes did not reach data"
head -c $((24 << 20)) pat > old-head
cmp <(dev_range "$data" 0 $((24 * 1024))) old-head || fail "data's first 24 MiB changed"
no_fleece_devices
[ -z "$(ls -A state 2>/dev/null)" ] || fail "state files left: $(ls state)"
[ -z "$(losetup -a)" ] || fail "loop devices left: $(losetup -a)"
echo "ok: image exact, $copied chunks copied before they were read"

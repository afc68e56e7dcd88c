#!/bin/bash
# With systemd-udevd running and tools/udev/60-fleece.rules installed (and
# the lvm2 filter of tools/lvm/lvmlocal-fleece.conf):
#  - views, hidden origins and fleece loop devices are not probed: no
#    /dev/disk/by-uuid or by-label link moves to them, no dm-uuid links,
#    even after change events; they carry UDISKS_IGNORE=1, SYSTEMD_READY=0;
#  - the stable links /dev/fleece/NAME/{view,origin,fleece} exist (origin
#    only where a hidden origin does: not for a one-linear-target table),
#    the view's and origin's as soon as start returns, gone when stop does
#    (each waits for udev once, for all its devices);
#  - an LVM PV on the fleeced device shows up once in pvs/vgs, with no
#    duplicate warnings, and nothing gets activated from the view;
#  - a VM's VG inside an LV stays invisible to the host;
#  - without the rules file, the libdevmapper udev flags alone keep the
#    by-uuid links in place.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
[ "$(arg fleece.udev)" != 0 ] ||
	skip "no udevd in this guest (fleece.udev=0: the debug kernel's): the udev rules are tested on Debian's kernels"
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state

cp /etc/lvm/lvmlocal.conf lvmlocal.conf.orig
restore() {
	rm -f /etc/udev/rules.d/60-fleece.rules
	udevadm control --reload 2>/dev/null || true
	cp lvmlocal.conf.orig /etc/lvm/lvmlocal.conf
}
trap restore EXIT
cp "$SRC/tools/udev/60-fleece.rules" /etc/udev/rules.d/
udevadm control --reload
cat "$SRC/tools/lvm/lvmlocal-fleece.conf" >> /etc/lvm/lvmlocal.conf
lvmconfig devices/global_filter

real() { readlink -f "$1"; }
prop() { udevadm info --query=property --name="$1" | sed -n "s/^$2=//p"; }
# Under TCG each program started costs much: test -ef (a shell built-in:
# same device and inode once links are followed) instead of readlink.
no_links_to() { # device: no /dev/disk link may point to it
	local l
	for l in /dev/disk/by-*/*; do
		[ -e "$l" ] || continue
		! [ "$l" -ef "$1" ] || fail "$l points to $1"
	done
}

fsdev=$(mkdev fsdev 64 1)
mkfs.ext4 -q -F "$fsdev"
mkdir -p /mnt/fdir
mount "$fsdev" /mnt/fdir

step "ext4 with a label and a UUID on data, a table of two targets (so a hidden origin)"
# Space on ram0 from mkdev, used directly: no other dm device may hold the
# file system's superblock, or blkid could find it there.
mkdev space 32 > /dev/null
off=$(dmsetup table space | cut -d' ' -f5)
dmsetup remove space
dmsetup create data --table "0 32768 linear /dev/ram0 $off
32768 32768 linear /dev/ram0 $((off + 32768))"
data=/dev/mapper/data
uuid=3c9b6f1e-9a1d-4d8e-a7b3-5f1e2d3c4b5a
mkfs.ext4 -q -F -L fleecetest -U $uuid "$data"
udevadm settle
assert_eq "$(real /dev/disk/by-uuid/$uuid)" "$(real "$data")" "by-uuid before"

$F start --fleece-dir /mnt/fdir data
# start waits for udev (once, for all its devices) before it returns: the
# nodes and rule-made links are there without a settle.
for l in /dev/mapper/data-fleece-view /dev/mapper/data-fleece-origin /dev/fleece/data/view \
	/dev/fleece/data/origin; do
	[ -e "$l" ] || fail "$l missing when start returned (udev not waited for)"
done
udevadm settle
view=/dev/mapper/data-fleece-view
origin=/dev/mapper/data-fleece-origin
loop=$(losetup -j /mnt/fdir/data.fleece | cut -d: -f1)
assert_eq "$(real /dev/fleece/data/view)" "$(real $view)" "/dev/fleece/data/view"
assert_eq "$(real /dev/fleece/data/origin)" "$(real $origin)" "/dev/fleece/data/origin"
assert_eq "$(real /dev/fleece/data/fleece)" "$(real "$loop")" "/dev/fleece/data/fleece"
assert_eq "$(real /dev/disk/by-uuid/$uuid)" "$(real "$data")" "by-uuid with a view"
assert_eq "$(real /dev/disk/by-label/fleecetest)" "$(real "$data")" "by-label with a view"
ls /dev/disk/by-id/ | grep_q 'FLEECE-\|fleece' && fail "by-id links for fleece devices: $(ls /dev/disk/by-id)"
for d in $view $origin "$loop"; do
	no_links_to "$d"
	props=$'\n'$(udevadm info --query=property --name="$d")$'\n'
	[[ $props != *$'\n'ID_FS_UUID=* ]] || fail "$d was probed by blkid"
	[[ $props == *$'\n'UDISKS_IGNORE=1$'\n'* ]] || fail "UDISKS_IGNORE of $d is not 1: $props"
	[[ $props == *$'\n'SYSTEMD_READY=0$'\n'* ]] || fail "SYSTEMD_READY of $d is not 0: $props"
done
assert_eq "$(prop $view DM_UDEV_DISABLE_DISK_RULES_FLAG)" 1 "disk rules disabled on the view"
assert_eq "$(prop $view DM_UDEV_DISABLE_OTHER_RULES_FLAG)" 1 "other rules disabled on the view"

step "change events (as from a watch or udevadm trigger) change nothing"
put <(head -c 1M /dev/urandom) "$data"	# chunk 0 with the superblock: now in the fleece file
mkfs.ext4 -q -F -L fleecetest -U $uuid "$data"
udevadm trigger --action=change "$(real $view)" "$(real $origin)" "$(real "$loop")" "$(real "$data")"
udevadm settle
assert_eq "$(real /dev/disk/by-uuid/$uuid)" "$(real "$data")" "by-uuid after change events"
for d in $view $origin "$loop"; do no_links_to "$d"; done
[ -e /dev/fleece/data/view ] || fail "the view link went away"
$F stop data
for l in /dev/mapper/data-fleece-view /dev/mapper/data-fleece-origin /dev/fleece/data/view \
	/dev/fleece/data/origin; do
	[ ! -e "$l" ] || fail "$l still there when stop returned (udev not waited for)"
done
udevadm settle
[ ! -e /dev/fleece/data ] || fail "/dev/fleece/data left: $(ls -R /dev/fleece)"
assert_eq "$(real /dev/disk/by-uuid/$uuid)" "$(real "$data")" "by-uuid after stop"

step "an LVM PV on the fleeced device"
pvd=$(mkdev pvd 32)
fl=$(mkdev fl 32 1)
pvcreate -q "$pvd" > /dev/null
vgcreate -q innervg "$pvd" > /dev/null
lvcreate -q -y -L 8M -n inlv innervg > /dev/null
$F start --fleece-dev "$fl" pvd
udevadm settle
[ -e /dev/fleece/pvd/view ] || fail "no /dev/fleece/pvd/view"
[ ! -e /dev/fleece/pvd/origin ] || fail "/dev/fleece/pvd/origin for a linear table (no hidden origin)"
pvs > pvs.out 2>&1; cat pvs.out
grep -qiE "warning|duplicate" pvs.out && fail "pvs warns"
assert_eq "$(pvs --noheadings -o pv_name -S vg_name=innervg | tr -d ' ')" "$pvd" "innervg's PV"
vgs innervg > vgs.out 2>&1 || { cat vgs.out; fail "vgs innervg"; }
grep -qiE "warning|duplicate" vgs.out && fail "vgs warns: $(cat vgs.out)"
assert_eq "$(dmsetup ls | grep -c '^innervg-')" 1 "innervg LVs active"
[ -z "$(prop /dev/mapper/pvd-fleece-view ID_FS_TYPE)" ] || fail "the view was probed"
lvchange -q -an innervg/inlv
udevadm trigger --action=add "$(real /dev/mapper/pvd-fleece-view)"
udevadm settle
sleep 1
assert_eq "$(dmsetup ls | grep -c '^innervg-' || true)" 0 "LVs activated from the view"
# Without the filter lvm2 reads the view too (for the record).
pvs --config 'devices/global_filter=["a|.*|"]' -o pv_name,vg_name 2>&1 | sed 's/^/   without the filter: /' || true
$F stop pvd
vgchange -q -an innervg > /dev/null

step "a VM's VG inside an LV stays invisible"
pvcreate -q /dev/ram2 > /dev/null
vgcreate -q vgo /dev/ram2 > /dev/null
lvcreate -q -y -L 32M -n disk vgo > /dev/null
lvmc='devices/scan_lvs=1'
pvcreate -q --config "$lvmc" /dev/vgo/disk > /dev/null
vgcreate -q --config "$lvmc" guestvg /dev/vgo/disk > /dev/null
lvcreate -q -y --config "$lvmc" -an -Zn -L 8M -n root guestvg > /dev/null
vgs guestvg > /dev/null 2>&1 && fail "guestvg should be invisible with scan_lvs=0"
fl2=$(mkdev fl2 32 1)
$F start --fleece-dev "$fl2" vgo-disk
udevadm settle
sleep 1
vgs > vgs2.out 2>&1; cat vgs2.out
grep -q guestvg vgs2.out && fail "guestvg became visible through the fleece devices"
# (lvm2 does warn "Device mismatch detected for vgo/disk": the LV's table
# is the fleece's while it runs; see CAVEATS in fleece(8).)
grep -qiE "duplicate|not using device|prefers device" vgs2.out && fail "vgs sees duplicates"
[ -z "$(dmsetup ls | grep '^guestvg-' || true)" ] || fail "guestvg activated"
$F stop vgo-disk
vgchange -q -an vgo > /dev/null

step "without the rules file: the libdevmapper flags alone"
rm /etc/udev/rules.d/60-fleece.rules
udevadm control --reload
$F start --fleece-dev "$fl" data
udevadm settle
assert_eq "$(real /dev/disk/by-uuid/$uuid)" "$(real "$data")" "by-uuid without the rules"
no_links_to $view
no_links_to $origin
[ -z "$(prop $view ID_FS_UUID)" ] || fail "the view was probed without the rules"
assert_eq "$(prop $view DM_UDEV_DISABLE_OTHER_RULES_FLAG)" 1 "libdevmapper flag on the view"
$F stop data
umount /mnt/fdir
step "ok"

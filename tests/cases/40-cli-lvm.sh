#!/bin/bash
# fleece start/stop on an LV of a real lvm2 volume group with a mounted,
# busy ext4: the view holds the point-in-time files and passes fsck; stop
# puts the LV's table back and the file system keeps what was written.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state

# --- an LV of a real volume group, mounted ---------------------------------
step "an LV with a mounted ext4"
pvcreate -q /dev/ram2 >/dev/null
vgcreate -q vgf /dev/ram2 >/dev/null
lvcreate -q -y -L 32M -n lv vgf >/dev/null
fl2=$(mkdev fl2 32 1)
mkfs.ext4 -q -F /dev/vgf/lv
mkdir -p /mnt/lv /mnt/view
mount /dev/vgf/lv /mnt/lv
for i in $(seq 1 20); do head -c $((i * 20000)) /dev/urandom > /mnt/lv/f$i; done
manifest=$PWD/manifest
(cd /mnt/lv && sha256sum f*) > "$manifest"
lv_table=$(dmsetup table vgf-lv)
lv_uuid=$(dmsetup info -c --noheadings -o uuid vgf-lv)

# A writer keeps the file system busy across the start.
( while :; do dd if=/dev/urandom of=/mnt/lv/busy bs=64k count=4 conv=fsync status=none; done ) &
busy=$!
sleep 1
$F start --fleece-dev "$fl2" /dev/vgf/lv
kill $busy; wait $busy 2>/dev/null || true
[ -b /dev/mapper/vgf-lv-fleece-view ] || fail "no view for the LV"
# One segment: the fleece target takes the place of its linear target.
read -r _ len type pv pe_start <<< "$lv_table"
assert_eq "$type" linear "the LV's target"
fmm=$(devno fl2)
assert_eq "$(dmsetup table vgf-lv)" "0 $len fleece $pv $fmm 128 4 cbw_timeout_ms 45000 origin_offset $pe_start" \
	"the LV's fleece table: on the PV at the LV's offset"
# The mounted file system keeps changing.
for i in $(seq 1 20); do head -c 50000 /dev/urandom > /mnt/lv/f$i; done
rm /mnt/lv/f1 /mnt/lv/f2
head -c 2000000 /dev/urandom > /mnt/lv/new
sync
mount -o ro,noload /dev/mapper/vgf-lv-fleece-view /mnt/view
(cd /mnt/view && sha256sum -c --quiet "$manifest") || fail "view's files differ from the point in time"
[ ! -e /mnt/view/new ] || fail "a file created after the point is in the view"
umount /mnt/view
fsck.ext4 -n -f /dev/mapper/vgf-lv-fleece-view > fsck.out 2>&1 || { cat fsck.out; fail "fsck of the view"; }
$F status vgf-lv | grep_q "vgf-lv: active" || fail "LV status"
lvs --noheadings -o lv_active vgf/lv | grep_q active || fail "lvs does not see the LV active"

$F stop /dev/vgf/lv
no_fleece_devices
assert_eq "$(dmsetup table vgf-lv)" "$lv_table" "LV table back"
assert_eq "$(dmsetup info -c --noheadings -o uuid vgf-lv)" "$lv_uuid" "LV uuid unchanged"
lvs vgf/lv > /dev/null || fail "lvs"
[ "$(stat -c %s /mnt/lv/new)" = 2000000 ] || fail "the LV lost a file written during the fleece"
umount /mnt/lv
fsck.ext4 -n -f /dev/vgf/lv > fsck2.out 2>&1 || { cat fsck2.out; fail "fsck of the LV after stop"; }

# --- a read-only LV ----------------------------------------------------------
# lvm2's permission (lvchange -pr) is the table's read-only flag: each
# table fleece loads must keep it, or the LV becomes writable and stays so.
step "a read-only LV stays read-only"
lvcreate -q -y -L 8M -n rolv vgf >/dev/null
fl3=$(mkdev fl3 8 1)	# fl2 holds the first LV's old ext4 superblock now
head -c $((8 << 20)) /dev/urandom > rolv.pat
dd if=rolv.pat of=/dev/vgf/rolv bs=1M oflag=direct status=none
lvchange -q -pr vgf/rolv
ro_table=$(dmsetup table vgf-rolv)
lv_ro() { # what
	assert_eq "$(blockdev --getro /dev/mapper/vgf-rolv)" 1 "$1: the LV's read-only flag"
	! dd if=/dev/zero of=/dev/mapper/vgf-rolv bs=4k count=1 oflag=direct status=none 2>/dev/null ||
		fail "$1: a write to the read-only LV succeeded"
	attr=$(lvs --noheadings -o lv_attr vgf/rolv | tr -d ' ')
	assert_eq "${attr:1:1}" r "$1: the permission in lvs's attributes ($attr)"
}
lv_ro "before"
$F start -q --fleece-dev "$fl3" vgf/rolv
dmsetup table vgf-rolv | grep -q " fleece " || fail "the read-only LV is not fleeced"
lv_ro "while fleeced"
cmp /dev/mapper/vgf-rolv-fleece-view rolv.pat || fail "the view of the read-only LV"
$F stop -q vgf/rolv
lv_ro "after stop"
assert_eq "$(dmsetup table vgf-rolv)" "$ro_table" "the read-only LV's table after stop"
$F backup -q --fleece-dev "$fl3" vgf/rolv -o rolv.img
cmp rolv.img rolv.pat || fail "the backup of the read-only LV"
lv_ro "after backup"
no_fleece_devices
rm -f rolv.img rolv.pat
vgchange -q -an vgf >/dev/null
step "ok"

#!/bin/bash
# The fleece space must not be on NAME, also where st_dev does not tell:
#  1. --fleece-dir on an overlayfs whose upper directory is on NAME;
#  2. --fleece-dev: a loop device whose backing file is on that overlayfs;
#  3. a partition of a loop device whose backing file is on NAME (as
#     --fleece-dev, and a file system on it as --fleece-dir);
#  4. an overlayfs whose upper directory cannot be found (its file system
#     lazily unmounted): "cannot tell", refused unless --force;
#  5. a tmpfs holds on no device: accepted;
#  6. btrfs over NAME and another device (its devices from /sys/fs/btrfs).
# Each refusal is exit 3, names the problem and changes nothing.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
data=$(mkdev data 64)
mkfs.ext4 -q -F "$data"
mkdir -p /mnt/self /mnt/low /mnt/ovl /mnt/part /mnt/t2 /mnt/ovl2 /mnt/t3
mount "$data" /mnt/self
table=$(dmsetup table data)
modprobe loop
modprobe overlay
shopt -s nullglob

nothing_changed() { # what
	local u f
	u=$(dmsetup info -c --noheadings -o uuid 2>/dev/null | grep '^FLEECE-' || true)
	[ -z "$u" ] || fail "$1: FLEECE- devices left: $u"
	[ -z "$(ls -A state 2>/dev/null)" ] || fail "$1: state left: $(ls state)"
	assert_eq "$(dmsetup table data)" "$table" "$1: data's table"
	f=(/mnt/*/data.fleece)
	[ ${#f[@]} = 0 ] || fail "$1: fleece file created: ${f[*]}"
}
refused() { # message-glob what command...
	local want=$1 what=$2
	shift 2
	expect_exit 3 "$@"
	echo "$T_ERR"
	[[ $T_ERR == $want ]] || fail "$what: not the reason expected ($want): $T_ERR"
	nothing_changed "$what"
}

step "1. --fleece-dir on an overlayfs whose upper directory is on NAME"
mount -t tmpfs -o size=80m tmpfs /mnt/low
mkdir -p /mnt/self/up /mnt/self/work
mount -t overlay overlay -o lowerdir=/mnt/low,upperdir=/mnt/self/up,workdir=/mnt/self/work /mnt/ovl
assert_eq "$(stat -c %Hd /mnt/ovl)" 0 "major of the overlay's st_dev"
refused "*--fleece-dir /mnt/ovl: it is on data itself*/mnt/self/up*" "overlay on NAME" \
	$F start --fleece-dir /mnt/ovl data

step "2. --fleece-dev: a loop device over a file on that overlayfs"
truncate -s 64M /mnt/ovl/fl.img
loop=$(losetup -f --show /mnt/ovl/fl.img)
refused "*fleece device $loop: it is data itself, or part of it*" "loop over a file on the overlay" \
	$F start --fleece-dev "$loop" data
losetup -d "$loop"
rm /mnt/ovl/fl.img

step "3. a partition of a loop device over a file on NAME"
truncate -s 60M /mnt/self/disk.img
# An MBR with one Linux partition from sector 2048 to the end (no sfdisk here).
printf '\x00\x00\x00\x00\x83\x00\x00\x00\x00\x08\x00\x00\x00\xd8\x01\x00' |
	dd of=/mnt/self/disk.img bs=1 seek=446 conv=notrunc status=none
printf '\x55\xaa' | dd of=/mnt/self/disk.img bs=1 seek=510 conv=notrunc status=none
ploop=$(losetup -f -P --show /mnt/self/disk.img)
for i in $(seq 1 50); do [ -b "${ploop}p1" ] && break; sleep 0.1; done
[ -b "${ploop}p1" ] || fail "no partition ${ploop}p1"
refused "*fleece device ${ploop}p1: it is data itself, or part of it*" "a partition as --fleece-dev" \
	$F start --fleece-dev "${ploop}p1" data
mkfs.ext4 -q -F "${ploop}p1"
mount "${ploop}p1" /mnt/part
refused "*--fleece-dir /mnt/part: it is on data itself*" "a file system on the partition" \
	$F start --fleece-dir /mnt/part data
umount /mnt/part
losetup -d "$ploop"

step "4. an overlayfs whose upper directory cannot be found: refused unless --force"
mount -t tmpfs -o size=80m tmpfs /mnt/t2
mkdir -p /mnt/t2/up /mnt/t2/work
mount -t overlay overlay -o lowerdir=/mnt/low,upperdir=/mnt/t2/up,workdir=/mnt/t2/work /mnt/ovl2
umount -l /mnt/t2	# the overlay keeps it; its path leads nowhere now
[ ! -e /mnt/t2/up ] || fail "/mnt/t2/up still there"
refused "*--fleece-dir /mnt/ovl2: cannot tell whether it is on data: */mnt/t2/up*(give --force if it is not)*" \
	"an overlay whose upper directory is gone" $F start --fleece-dir /mnt/ovl2 data
$F start --force --fleece-dir /mnt/ovl2 data 2> force.err || { cat force.err; fail "start --force"; }
cat force.err
grep -q "cannot tell whether it is on data .*: using it (--force)" force.err || fail "no warning with --force"
[ -f /mnt/ovl2/data.fleece ] || fail "no fleece file in /mnt/ovl2"
dmsetup table data | grep -q " fleece " || fail "data is not fleeced"
$F stop -q data
nothing_changed "after start --force and stop"

step "5. a tmpfs holds on no device: accepted"
mkdir -p /mnt/t3
mount -t tmpfs -o size=80m tmpfs /mnt/t3
$F start -q --fleece-dir /mnt/t3 data
[ -f /mnt/t3/data.fleece ] || fail "no fleece file on the tmpfs"
$F stop -q data
nothing_changed "after a fleece on a tmpfs"

step "6. btrfs"
command -v mkfs.btrfs > /dev/null || fail "mkfs.btrfs is not in the guest (btrfs-progs, tests/vm/deps.sh)"
umount /mnt/ovl2 /mnt/ovl	# the overlay on /mnt/self holds data open
umount /mnt/self
bt=$(mkdev bt 128 1)
modprobe btrfs	# /dev/btrfs-control, where mkfs registers both devices
mkfs.btrfs -q -f -M "$data" "$bt" > /dev/null	# two devices, data is one (-M: data is under the 72 MiB minimum of separate metadata)
mount -o "device=$data,device=$bt" "$bt" /mnt/self
assert_eq "$(stat -c %Hd /mnt/self)" 0 "major of btrfs's st_dev"
refused "*--fleece-dir /mnt/self: it is on data itself*btrfs*" "btrfs over data and bt" \
	$F start --fleece-dir /mnt/self data
umount /mnt/self
mountpoint -q /mnt/self && umount /mnt/self
umount /mnt/low /mnt/t3
step "ok"

#!/bin/bash
# A --fleece-dev is overwritten and discarded: one that holds a signature
# (a file system, swap) is refused with exit 3, naming it, and
# left as it was, unless --force; the copy of NAME's own signature that an
# earlier fleece of NAME left on it is no reason to refuse.  A loop device
# whose backing file is on NAME is refused as NAME's own space.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
data=$(mkdev data 16)
table=$(dmsetup table data)
fl=$(mkdev fl 16 1)
fl2=$(mkdev fl2 16 1)
shopt -s nullglob

nothing_changed() { # what
	local u
	u=$(dmsetup info -c --noheadings -o uuid 2>/dev/null | grep '^FLEECE-' || true)
	[ -z "$u" ] || fail "$1: FLEECE- devices left: $u"
	[ -z "$(ls -A state 2>/dev/null)" ] || fail "$1: state left"
	assert_eq "$(dmsetup table data)" "$table" "$1: data's table"
}
sig() { blkid -p -o value -s TYPE "$1" 2>/dev/null || blkid -p -o value -s PTTYPE "$1" 2>/dev/null || true; }

step "a fleece device with an ext4 file system is refused"
mkfs.ext4 -q -F "$fl"
uuid=$(blkid -p -o value -s UUID "$fl")
expect_exit 3 $F start --fleece-dev "$fl" data
echo "$T_ERR"
[[ $T_ERR == *"holds a ext4 signature UUID $uuid"* ]] || fail "no reason given: $T_ERR"
expect_exit 3 $F backup --fleece-dev "$fl" data -o out.img
[ ! -e out.img ] && [ ! -e out.img.partial ] || fail "the refused backup left output"
assert_eq "$(sig "$fl")" ext4 "the file system on the fleece device"
fsck.ext4 -n "$fl" > /dev/null || fail "the file system on the fleece device is damaged"
nothing_changed "ext4"

step "a fleece device with a swap signature is refused"
mkswap -q "$fl2" > /dev/null
expect_exit 3 $F start --fleece-dev "$fl2" data
[[ $T_ERR == *"holds a swap signature"* ]] || fail "no reason given: $T_ERR"
assert_eq "$(sig "$fl2")" swap "the swap signature on the fleece device"
nothing_changed "swap"

step "--force uses it"
$F start --force --fleece-dev "$fl" data 2> start.err
cat start.err
grep -q "holds a ext4 signature: overwriting it (--force)" start.err || fail "no warning with --force"
dmsetup table data | grep -q " fleece " || fail "not fleeced with --force"
$F stop -q data
nothing_changed "--force"

step "a copy of NAME's own signature left by an earlier fleece of NAME"
dd if=/dev/zero of="$fl" bs=1M count=1 oflag=direct status=none
mkfs.ext4 -q -F "$data"
table=$(dmsetup table data)
$F start -q --fleece-dev "$fl" data
# rewrite chunk 0 as it is: its copy-before-write puts data's superblock on fl
dd if="$data" of=chunk0 bs=64k count=1 iflag=direct status=none
dd if=chunk0 of="$data" bs=64k count=1 oflag=direct conv=notrunc status=none
$F stop -q data
assert_eq "$(blkid -p -o value -s UUID "$fl")" "$(blkid -p -o value -s UUID "$data")" \
	"the copy of data's superblock on the fleece device"
$F start -q --fleece-dev "$fl" data || fail "refused its own leftover signature"
$F stop -q data
mkfs.ext4 -q -F "$data"	# a new file system: the copy on fl is no longer data's
table=$(dmsetup table data)
expect_exit 3 $F start --fleece-dev "$fl" data
[[ $T_ERR == *"holds a ext4 signature"* ]] || fail "no reason given: $T_ERR"
nothing_changed "another file system's copy"

step "a loop device over a file on NAME is NAME's own space"
mkdir -p /mnt/d
mount "$data" /mnt/d
truncate -s 16M /mnt/d/fl.img
modprobe loop
loop=$(losetup -f --show /mnt/d/fl.img)
expect_exit 3 $F start --fleece-dev "$loop" data
echo "$T_ERR"
[[ $T_ERR == *"it is data itself, or part of it"* ]] || fail "loop on NAME: $T_ERR"
losetup -d "$loop"
umount /mnt/d
nothing_changed "loop on NAME"
step "ok"

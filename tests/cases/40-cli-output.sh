#!/bin/bash
# The output of fleece backup:
#  1. a new image is mode 0600 whatever the umask, and equals the device;
#  2. a symlink at FILE.partial (or any existing FILE.partial) is refused and
#     left alone: the file it points to is not written;
#  3. a second backup of the same device while the first runs fails at the
#     lock (exit 3) without touching the first one's output, which completes;
#  4. -o on NAME itself, its fleece device, a device NAME is built on, a
#     mounted device, the view's name, or a file on NAME is refused (exit 3,
#     or 2 for the view's name) and nothing is written;
#  5. block-device and stdout-to-file outputs are synced before each release
#     (BLKDISCARD on the view), as files are: checked with strace;
#  6. a read that fails midway (the view invalidated: exit 4; SIGTERM: exit
#     143), of fleece read and of fleece backup, removes its FILE.partial and
#     says so, and leaves no FILE.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
cli_fixture 16 32
fl=$(mkdev fl 16 1)

leftovers() { # what: no devices, state, partial, fleece files
	local u
	u=$(dmsetup info -c --noheadings -o uuid 2>/dev/null | grep '^FLEECE-' || true)
	[ -z "$u" ] || fail "$1: FLEECE- devices left: $u"
	[ -z "$(ls -A state 2>/dev/null)" ] || fail "$1: state left: $(ls state)"
	[ "$(dmsetup table data)" = "$table" ] || fail "$1: data's table changed"
	[ -z "$(ls /mnt/fdir | grep -v lost+found)" ] || fail "$1: fleece files left"
}

step "1. a new image is 0600 under umask 022, and equals the device"
(umask 022; $F backup -q --fleece-dir /mnt/fdir data -o out.img)
assert_eq "$(stat -c %a out.img)" 600 "mode of the image"
cmp out.img pat || fail "the image differs from the device"
leftovers "backup"
rm out.img

step "2. a symlink at FILE.partial is refused, its target left alone"
echo "precious" > victim
ln -s "$PWD/victim" out.img.partial
expect_exit 3 $F backup -q --fleece-dir /mnt/fdir data -o out.img
echo "$T_ERR"
[[ $T_ERR == *"out.img.partial exists"* ]] || fail "no reason given: $T_ERR"
assert_eq "$(cat victim)" "precious" "the symlink's target"
[ -L out.img.partial ] || fail "the symlink was removed"
[ ! -e out.img ] || fail "out.img created"
leftovers "symlink"
rm out.img.partial
echo "another run's data" > out.img.partial
expect_exit 3 $F backup -q --fleece-dir /mnt/fdir data -o out.img
assert_eq "$(cat out.img.partial)" "another run's data" "an existing FILE.partial"
rm out.img.partial victim
leftovers "existing partial"

step "3. a second backup of the same device while the first runs"
$F backup -q --fleece-dir /mnt/fdir --rate 2M data -o out.img 2> first.err &
bpid=$!
for i in $(seq 1 300); do
	[ -b /dev/mapper/data-fleece-view ] && [ -e out.img.partial ] && break
	kill -0 $bpid 2>/dev/null || { cat first.err; fail "the first backup ended early"; }
	sleep 0.1
done
[ -e out.img.partial ] || fail "the first backup has no partial output"
ino=$(stat -c %i out.img.partial)
expect_exit 3 $F backup -q --fleece-dir /mnt/fdir data -o out.img
echo "$T_ERR"
[[ $T_ERR == *"another fleece command"* ]] || fail "second backup: no reason: $T_ERR"
expect_exit 3 $F backup -q --fleece-dir /mnt/fdir data -o out2.img
[ ! -e out2.img.partial ] && [ ! -e out2.img ] || fail "the refused backup created its output"
assert_eq "$(stat -c %i out.img.partial)" "$ino" "the first backup's partial output"
kill -0 $bpid 2>/dev/null || { cat first.err; fail "the first backup ended early"; }
wait $bpid || { cat first.err; fail "the first backup failed"; }
cmp out.img pat || fail "the first backup's image differs"
leftovers "two backups"
rm out.img

step "4. outputs that are, or are on, what is being backed up"
out=$(mkdev outdev 16 2)
expect_exit 3 $F backup -q --fleece-dev "$fl" data -o /dev/mapper/data
[[ $T_ERR == *"it is data"* ]] || fail "-o NAME: $T_ERR"
expect_exit 3 $F backup -q --fleece-dev "$fl" data -o "$fl"
[[ $T_ERR == *"the fleece device"* ]] || fail "-o the fleece device: $T_ERR"
expect_exit 3 $F backup -q --fleece-dev "$fl" data -o /dev/ram0
[[ $T_ERR == *"in use"* || $T_ERR == *"built on it"* ]] || fail "-o NAME's disk: $T_ERR"
expect_exit 3 $F backup -q --fleece-dev "$fl" data -o "$fsdev"
[[ $T_ERR == *"in use"* ]] || fail "-o a mounted device: $T_ERR"
expect_exit 2 $F backup -q --fleece-dev "$fl" data -o /dev/mapper/data-fleece-view
[[ $T_ERR == *"no such device"* ]] || fail "-o the view's name: $T_ERR"
[ ! -e /dev/mapper/data-fleece-view.partial ] || fail "a file was created in /dev/mapper"
# a file on the device being backed up
fsd=$(mkdev fsd 16 2)
mkfs.ext4 -q -F "$fsd"
mkdir -p /mnt/fsd
mount "$fsd" /mnt/fsd
expect_exit 3 $F backup -q --fleece-dir /mnt/fdir fsd -o /mnt/fsd/img
[[ $T_ERR == *"on fsd itself"* ]] || fail "-o a file on NAME: $T_ERR"
[ -z "$(ls /mnt/fsd | grep -v lost+found)" ] || fail "a file was created on fsd"
umount /mnt/fsd
same "$data" pat "data after the refused outputs"
leftovers "refused outputs"

step "5. block device and stdout-to-file outputs are synced before each release"
# 16 MiB in 4 MiB blocks: four releases, each after a sync of the output.
synced_before_release() { # strace-log what
	awk '/fdatasync\(|fsync\(/ { synced = 1 }
	     /BLKDISCARD/ { n++; if (!synced) bad++; synced = 0 }
	     END { if (n != 4 || bad) { print n " releases, " bad + 0 " unsynced"; exit 1 } }' "$1" ||
		{ cat "$1"; fail "$2: a release not preceded by a sync of the output"; }
}
strace -f -qq -e trace=fdatasync,fsync,ioctl -o trace.blk \
	$F backup -q --fleece-dev "$fl" data -o "$out"
synced_before_release trace.blk "block device output"
same "$out" pat "the image on the block device"
strace -f -qq -e trace=fdatasync,fsync,ioctl -o trace.std \
	$F backup -q --fleece-dev "$fl" data -o - > out.img
synced_before_release trace.std "stdout to a file"
cmp out.img pat || fail "the image on standard output"
rm out.img
leftovers "synced outputs"

step "6. a read that fails midway removes FILE.partial, and says so"
fl_table=$(dmsetup table fl)
# The reader (in the background, 1 MiB/s: 16 s for data, ended early by the
# invalidation or the signal) has written part of OUT.partial.
reading() { # out pid err
	local i
	for i in $(seq 1 300); do
		[ -s "$1.partial" ] && [ "$(stat -c %b "$1.partial")" -gt 0 ] && return 0
		kill -0 "$2" 2>/dev/null || { cat "$3"; fail "$1: the reader ended early"; }
		sleep 0.1
	done
	fail "$1: nothing written"
}
# The fleece device fails every write: a copy-before-write of the next write
# to data fails, and the view becomes invalid.
invalidate() {
	dmsetup load fl --table "0 $(sectors "$fl") error"
	dmsetup suspend fl
	dmsetup resume fl
	dd if=/dev/zero of="$data" bs=64k count=1 seek=255 oflag=direct status=none
}
fl_back() {
	dmsetup load fl --table "$fl_table"
	dmsetup suspend fl
	dmsetup resume fl
}
partial_removed() { # rc-wanted rc err-file out what
	cat "$3"
	assert_eq "$2" "$1" "$5: exit status"
	grep -q "removed the incomplete image $4.partial" "$3" || fail "$5: no message about $4.partial"
	[ ! -e "$4.partial" ] && [ ! -e "$4" ] || fail "$5: $4 or $4.partial left: $(ls "$4"*)"
}
$F start -q --fleece-dev "$fl" data
$F read -p none --rate 1M --block-size 1M /dev/mapper/data-fleece-view -o r.img 2> r.err &
rpid=$!
reading r.img $rpid r.err
invalidate
rc=0; wait $rpid || rc=$?
partial_removed 4 "$rc" r.err r.img "fleece read, the view invalidated"
grep -q "the view became invalid" r.err || fail "fleece read: the view's invalidation not named"
$F stop -q data
fl_back
put pat "$data"
leftovers "read, view invalidated"

$F start -q --fleece-dev "$fl" data
$F read -p none --rate 1M --block-size 1M /dev/mapper/data-fleece-view -o r.img 2> r.err &
rpid=$!
reading r.img $rpid r.err
kill -TERM $rpid
rc=0; wait $rpid || rc=$?
partial_removed 143 "$rc" r.err r.img "fleece read, SIGTERM"
$F stop -q data
leftovers "read, SIGTERM"

$F backup -p none --rate 1M --block-size 1M --fleece-dev "$fl" data -o b.img 2> b.err &
bpid=$!
reading b.img $bpid b.err
invalidate
rc=0; wait $bpid || rc=$?
partial_removed 4 "$rc" b.err b.img "fleece backup, the view invalidated"
fl_back
put pat "$data"
leftovers "backup, view invalidated"
as_before "end"
umount /mnt/fdir
step "ok"

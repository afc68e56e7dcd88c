#!/bin/bash
# fleece-track and a power loss: every write that reached the disk is
# covered by a mark that reached the store before it.  A kill of qemu
# (make check-crash) keeps every completed write, so it cannot test the
# flushes; here dm-log-writes records what a volatile disk cache would
# hold: the tracked data and the store are two slices of one log-writes
# device, over a loop device (which has a write cache, so REQ_PREFLUSH and
# REQ_FUA reach log-writes; a ram disk has none and the block layer drops
# them).  log-writes logs a REQ_FUA write when it completes and a plain
# one at the next flush: every prefix of its log is a state the disks can
# be in after a power loss.  tests/track/powerloss.py replays the store's
# writes in log order and checks, at each write or discard of the data,
# that the store then on "disk" marks its chunks.  Writes with O_SYNC
# (REQ_FUA: logged as they complete, so a mark written without REQ_FUA,
# or after its write was let go, comes after it in the log), plain writes
# with an fsync every 16 (flushes), discards, then a clean close.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

CH=65536			# tracker chunk
DATA_MIB=64
STORE_KIB=1024
DATA_SECT=$((DATA_MIB * 2048))
STORE_SECT=$((STORE_KIB * 2))

modprobe loop
modprobe dm-log-writes
mkdir -p /mnt/plw
mount -t tmpfs -o size=$((DATA_MIB + 8))m tmpfs /mnt/plw
cleanup() {
	udevadm settle
	for d in pdata pstore plw; do
		dmsetup remove --retry "$d" 2>/dev/null || true
	done
	[ -z "${loop:-}" ] || losetup -d "$loop" 2>/dev/null || true
	umount /mnt/plw 2>/dev/null || true
}
trap cleanup EXIT
truncate -s $(((DATA_SECT + STORE_SECT) * 512)) /mnt/plw/disk.img
loop=$(losetup -f --show /mnt/plw/disk.img)
assert_eq "$(cat "/sys/block/$(sysfs_name "$loop")/queue/write_cache")" "write back" \
	"the loop device's write cache (flushes must reach log-writes)"
# The log on the first ram disk, its first MiB zeroed: no old super.
dd if=/dev/zero of=/dev/ram1 bs=1M count=1 oflag=direct status=none
dmsetup create plw --table "0 $((DATA_SECT + STORE_SECT)) log-writes $loop /dev/ram1"
dmsetup create pstore --table "0 $STORE_SECT linear /dev/mapper/plw $DATA_SECT"
dmsetup create pdata --table \
	"0 $DATA_SECT fleece-track /dev/mapper/plw 0 /dev/mapper/pstore $((CH / 512)) disk-P 1 format"
udevadm settle
for d in plw pdata; do
	assert_eq "$(cat "/sys/block/$(sysfs_name /dev/mapper/$d)/queue/write_cache")" \
		"write back" "$d's write cache"
done

step "writes with O_SYNC (REQ_FUA), 4 jobs"
fio --name=fua --filename=/dev/mapper/pdata --rw=randwrite --bs=4k --direct=1 --sync=1 \
	--ioengine=psync --numjobs=4 --io_size=2m --randrepeat=0 --output=/dev/null
step "plain writes at queue depth 16, an fsync (a flush) every 16"
fio --name=plain --filename=/dev/mapper/pdata --rw=randwrite --bs=4k --direct=1 \
	--ioengine=libaio --iodepth=16 --fsync=16 --io_size=8m --randrepeat=0 --output=/dev/null
step "discards of 1 MiB, then a flush"
for o in 3 17 40; do
	blkdiscard -o $((o * 1048576)) -l 1048576 /dev/mapper/pdata
done
python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd)' /dev/mapper/pdata
status=$(dmsetup status pdata | cut -d' ' -f4-)
echo "tracker: $status"

step "the clean close, then the log"
udevadm settle
dmsetup remove --retry pdata
dmsetup remove pstore
read -r _ _ _ entries last <<< "$(dmsetup status plw)"
echo "log-writes: $entries entries, last sector $last"
dmsetup remove plw		# the log's kthread has written everything
# The status was read before the close: the log's end (the close's
# superblock write, log-writes' end mark) lies a little further.
dd if=/dev/ram1 of=plw.log bs=1M count=$((last / 2048 + 9)) iflag=direct status=none
python3 "$SRC/tests/track/powerloss.py" plw.log $((DATA_SECT * 512)) $((DATA_SECT * 512)) \
	$((STORE_SECT * 512)) $CH > pl.out || { cat pl.out; fail "a write reached the disk before its mark"; }
cat pl.out
expect_no_dmesg() { ! dmesg_since_start | grep -E "$1" || fail "kernel log: $1"; }
expect_no_dmesg "log-writes.*(error|failed)|fleece-track.*(error|failed)"

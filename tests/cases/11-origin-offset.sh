#!/bin/bash
# origin_offset: a fleece over a slice of its origin device, as fleece(8)
# loads it in place of a one-segment linear table.  Origin I/O lands at the
# offset; copy-before-write reads the old data there and keeps it at the
# region's own offsets on the fleece device; the view reads pending chunks
# from the origin at the offset.  The origin device outside the slice is
# never touched.  A reload with the same offset keeps the state.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

disk=$(mkdev disk 16)
fl=$(mkdev fl 8 1)
OFF=6152	# 3 MiB + 4 KiB: not a multiple of the 64 KiB chunk
LEN=16384	# 8 MiB: 128 chunks
OFF_K=$((OFF / 2))
LEN_K=$((LEN / 2))
mkpattern img 16 disk
mkpattern new 8 new
put img "$disk"
file_range img $OFF_K $LEN_K > old	# the slice at the point in time

# dm-ima records each table's setup (the targets' STATUSTYPE_IMA).
ima_ok=
if ima_setup; then ima_ok=1; fi

TABLE="0 $LEN fleece $disk $fl 128 2 origin_offset $OFF"
dmsetup create fo --table "$TABLE"
dmsetup create fv --table "0 $LEN fleece-view $disk $fl"
udevadm settle
assert_eq "$(dmsetup table fo)" "0 $LEN fleece $(devno disk) $(devno fl) 128 2 origin_offset $OFF" "table"
if [ -n "$ima_ok" ]; then
	assert_eq "$(ima_record fleece)" \
		"target_name=fleece,target_version=1.5.0,origin_name=$(devno disk),fleece_name=$(devno fl),chunk_sectors=128,origin_offset=$OFF,fail_origin_writes=n,cbw_timeout_ms=0,track_store=none;" \
		"dm-ima's record of the fleece table"
	assert_eq "$(ima_record fleece-view)" \
		"target_name=fleece-view,target_version=1.1.0,origin_name=$(devno disk),fleece_name=$(devno fl);" \
		"dm-ima's record of the fleece-view table"
fi
same /dev/mapper/fo old "origin through the fleece target: the slice at the offset"
same /dev/mapper/fv old "view before any write (pending chunks, from the origin at the offset)"

# The disk outside the slice, and the slice itself, as they should be now.
disk_is() { # slice-file what
	cmp <(dev_range "$disk" 0 $OFF_K) <(file_range img 0 $OFF_K) ||
		fail "$2: the disk before the slice changed"
	cmp <(dev_range "$disk" $((OFF_K + LEN_K)) $((16384 - OFF_K - LEN_K))) \
		<(file_range img $((OFF_K + LEN_K)) $((16384 - OFF_K - LEN_K))) ||
		fail "$2: the disk after the slice changed"
	cmp <(dev_range "$disk" $OFF_K $LEN_K) "$1" || fail "$2: the slice on the disk is not as written"
}

log "every other MiB overwritten: 64 chunks copied, runs mix copied and pending"
cp old expect
for ((m = 0; m < 8; m += 2)); do
	dd if=new of=/dev/mapper/fo bs=1M skip=$m seek=$m count=1 oflag=direct conv=notrunc status=none
	dd if=new of=expect bs=1M skip=$m seek=$m count=1 conv=notrunc status=none
done
assert_eq "$(fleece_counts fo)" "64 64 0 64 0 active" "status after half the chunks were written"
same /dev/mapper/fo expect "origin after half the chunks were written"
disk_is expect "after half the chunks were written"
same /dev/mapper/fv old "view after half the chunks were written"
for ((m = 0; m < 8; m += 2)); do
	cmp <(dev_range "$fl" $((m * 1024)) 1024) <(file_range old $((m * 1024)) 1024) ||
		fail "fleece device: MiB $m of the region does not hold the old data at the region's offset"
done

log "a reload with the same offset keeps the state"
dmsetup load fo --table "$TABLE"
dmsetup suspend fo
dmsetup resume fo
assert_eq "$(fleece_counts fo)" "64 64 0 64 0 active" "status after the reload"

log "the rest overwritten, first by 8 KiB writes across a chunk boundary"
for ((m = 1; m < 8; m += 2)); do
	b=$(((m * 16 + 7) * 16 + 15))	# the last 4 KiB of chunk 16m+7
	dd if=new of=/dev/mapper/fo bs=4k skip=$b seek=$b count=2 oflag=direct conv=notrunc status=none
done
assert_eq "$(fleece_counts fo)" "56 72 0 72 0 active" "status after the writes across boundaries"
put new /dev/mapper/fo
assert_eq "$(fleece_counts fo)" "0 128 0 128 0 active" "status after the whole slice was written"
same /dev/mapper/fo new "origin after the whole slice was written"
disk_is new "after the whole slice was written"
same /dev/mapper/fv old "view after the whole slice was written"
same "$fl" old "fleece device: the old slice at the region's offsets"

log "released chunks: the view refuses them, the origin is unaffected"
blkdiscard -o 0 -l 1048576 /dev/mapper/fv
assert_eq "$(fleece_counts fo)" "0 112 16 128 0 active" "status after releasing 1 MiB"
expect_fail dd if=/dev/mapper/fv of=/dev/null bs=64k count=1 iflag=direct status=none
disk_is new "after the release"

dmsetup remove fv
dmsetup remove fo
disk_is new "after removal"

#!/bin/bash
# Every kind of I/O on the origin side, checked byte for byte against the
# point-in-time image (the view) and the expected new content (the origin),
# with the copy-before-write counts after each step:
#  - plain writes copy a pending chunk once, never a copied one again;
#  - 512-byte writes at odd sectors change only those bytes and copy the
#    whole chunk (the fleece device holds the whole old chunk);
#  - writes straddling two or three chunks copy each of them, also when
#    pending chunks sit between or after copied ones in the same bio (the
#    target cuts a bio only where a pending chunk starts or ends);
#  - write-zeroes (fallocate --punch-hole, which may not fall back to plain
#    writes, then blkdiscard -z and fallocate --zero-range, which may) copy
#    first: the view keeps the old data, the origin reads zeros; each one
#    reached the origin as a write-zeroes, not as the kernel's fallback of
#    plain writes: the backing file has a hole (punch-hole) or an unwritten
#    extent (REQ_NOUNMAP: zero-range) exactly there, and no write-zeroes
#    failed on the origin;
#  - discards: dropped on pending chunks (origin data and its backing
#    file's allocation unchanged, no copy), passed down on copied chunks
#    (the origin reads zeros and its backing file has a hole there);
#  - FUA (O_DIRECT|O_SYNC) and flush (fsync) reach the origin device;
#  - a region whose length is not a multiple of the chunk size: chunks_total
#    is rounded up, the short last chunk is copied up to the region's end
#    only, and the view serves the tail;
#  - on brd (whose discard support depends on the kernel: none in 6.1, some
#    in Debian's 6.12) the fleece device advertises discard exactly when the
#    origin does; without it a discard fails and changes nothing, with it a
#    discard is passed down on a copied chunk and dropped on a pending one.
# The origin is a loop device on a file in an ext4 file system: loop turns
# discards and write-zeroes into hole punching, and write-zeroes with
# REQ_NOUNMAP into FALLOC_FL_ZERO_RANGE (unwritten extents), which ext4
# supports (tmpfs does not: there the kernel fell back to plain writes), so
# the effect of each is visible in the file's extent map.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

K=1024
CH=$((64 * K))		# chunk: 128 sectors
NCH=128			# 8 MiB

modprobe loop
bdev=$(mkdev backing 48 2)
mkfs.ext4 -q -F -b 4096 "$bdev"
mkdir -p /mnt/io-kinds
mount "$bdev" /mnt/io-kinds
bfile=/mnt/io-kinds/origin.img
truncate -s 8M "$bfile"
lo=$(losetup -f --show "$bfile")
lodev=$(basename "$lo")
fl=$(mkdev fl 8 1)
mkpattern old 8 old
mkpattern new 8 new
put old "$lo"
cp old expect		# what the origin must hold, updated step by step

fo=$(fleece_create fo "$lo" "$fl" 128)
view=$(view_create fv "$lo" "$fl")
udevadm settle
fodev=$(sysfs_name "$fo")
assert_eq "$(fleece_counts fo)" "$NCH 0 0 0 0 active" "status after start"

cbw=0
counts() { # what: the fleece status must show $cbw copies, nothing else
	assert_eq "$(fleece_counts fo)" "$((NCH - cbw)) $cbw 0 $cbw 0 active" "$1"
}
# Write bytes [off, off+len) of "new" to the origin, O_DIRECT, and to expect.
wr() { # byte_offset byte_len [extra oflags]
	dd if=new of="$fo" bs=64k iflag=skip_bytes,count_bytes \
		oflag=direct,seek_bytes${3:+,$3} skip="$1" seek="$1" count="$2" \
		conv=notrunc status=none
	dd if=new of=expect bs=64k iflag=skip_bytes,count_bytes oflag=seek_bytes \
		skip="$1" seek="$1" count="$2" conv=notrunc status=none
}
zero_expect() { # byte_offset byte_len
	dd if=/dev/zero of=expect bs=64k iflag=count_bytes oflag=seek_bytes \
		seek="$1" count="$2" conv=notrunc status=none
}
# Chunks [first, last]: origin == expect, view == old.
check() { # what first last
	local off=$(($2 * 64)) len=$((($3 - $2 + 1) * 64))
	cmp <(dev_range "$fo" $off $len) <(file_range expect $off $len) ||
		fail "$1: origin chunks $2-$3 differ from the expected content"
	cmp <(dev_range "$view" $off $len) <(file_range old $off $len) ||
		fail "$1: view chunks $2-$3 differ from the point-in-time image"
}
# The fleece device holds the whole old data of these copied chunks.
in_fleece() { # what chunk...
	local what=$1 c
	shift
	for c in "$@"; do
		cmp <(dev_range "$fl" $((c * 64)) 64) <(file_range old $((c * 64)) 64) ||
			fail "$what: the fleece device does not hold the old chunk $c"
	done
}
# How the backing file maps chunks [first, last]: "hole", "written",
# "unwritten" (allocated, reads zeros) or "mixed", from its extent map
# (FIEMAP, after a sync of the file).  4 KiB file system blocks, 16 a chunk.
fmap() { # first_chunk last_chunk [first_block last_block, instead]
	local a=$(($1 * 16)) b=$(($2 * 16 + 15))
	[ $# = 4 ] && a=$3 b=$4
	filefrag -s -v -b4096 "$bfile" | awk -v a=$a -v b=$b '
		/^ *[0-9]+: *[0-9]+\.\. *[0-9]+:/ {
			s = $0; sub(/^ *[0-9]+: */, "", s); split(s, f, /[^0-9]+/)
			st = ($0 ~ /unwritten/) ? "unwritten" : "written"
			for (i = f[1] + 0; i <= f[2] + 0; i++) if (i >= a && i <= b) m[i] = st
		}
		END { for (i = a; i <= b; i++) { x = (i in m) ? m[i] : "hole"
			r = (r == "" || r == x) ? x : "mixed" } print r }'
}
# No write-zeroes failed on the origin since the mark (a failed one that the
# kernel then did with plain writes: "operation not supported ... WRITE_ZEROES").
wz_not_refused() { # what
	if dmesg_since_mark | grep -E "error, dev $lodev, .*WRITE_ZEROES"; then
		fail "$1: a write-zeroes failed on the origin (the kernel fell back to plain writes)"
	fi
}
flushes() { awk '{ print $16 }' "/sys/block/$lodev/stat"; }	# flush requests completed

log "plain writes: 4 KiB inside chunk 2, all of chunk 3, chunk 2 again"
wr $((2 * CH + 8 * K)) $((4 * K)); cbw=1; counts "4 KiB write to a pending chunk"
wr $((3 * CH)) $CH; cbw=2; counts "whole-chunk write"
wr $((2 * CH + 32 * K)) $((4 * K)); counts "write to a copied chunk: no copy"
check "plain writes" 1 4
in_fleece "plain writes" 2 3

log "512-byte writes at odd sectors of chunk 5"
wr $((5 * CH + 3 * 512)) 512; cbw=3; counts "512-byte write"
wr $((5 * CH + 77 * 512)) 512; counts "second 512-byte write to the copied chunk"
check "512-byte writes" 4 6
in_fleece "512-byte writes" 5
diff=$({ cmp -l <(dev_range "$fo" $((5 * 64)) 64) <(file_range old $((5 * 64)) 64) || true; } | awk '
	{ s = int(($1 - 1) / 512); if (s != 3 && s != 77) bad++ } END { print bad + 0 }')
assert_eq "$diff" 0 "bytes changed outside the two 512-byte sectors"

log "writes straddling chunks: 7|8, 10|11|12, and 1 KiB across 13|14"
wr $((7 * CH + 32 * K)) $CH; cbw=5; counts "write over two chunks"
wr $((10 * CH + 60 * K)) $((120 * K)); cbw=8; counts "write over three chunks"
wr $((14 * CH - 512)) 1024; cbw=10; counts "1 KiB write across a chunk boundary"
check "straddling writes" 6 15
in_fleece "straddling writes" 7 8 10 11 12 13 14

log "write-zeroes: punch hole over chunks 16|17, then over copied chunk 3"
wz=$(cat "/sys/block/$fodev/queue/write_zeroes_max_bytes")
[ "$wz" -gt 0 ] || fail "the fleece device does not pass write-zeroes (origin: $(cat /sys/block/$lodev/queue/write_zeroes_max_bytes))"
for c in 2 3 16 17 19 20; do
	assert_eq "$(fmap $c $c)" written "backing file over chunk $c before the write-zeroes"
done
dmesg_mark
# --punch-hole is a write-zeroes that may not fall back to writing zeros.
fallocate --punch-hole --keep-size -o $((16 * CH + 16 * K)) -l $((80 * K)) "$fo"
zero_expect $((16 * CH + 16 * K)) $((80 * K)); cbw=12; counts "write-zeroes over two pending chunks"
assert_eq "$(fmap 0 0 $((16 * 16 + 4)) $((16 * 16 + 23)))" hole "backing file under the punched 80 KiB in chunks 16|17"
assert_eq "$(fmap 0 0 $((16 * 16)) $((16 * 16 + 3)))" written "backing file before the punched range"
fallocate --punch-hole --keep-size -o $((3 * CH)) -l $CH "$fo"
zero_expect $((3 * CH)) $CH; counts "write-zeroes on a copied chunk: no copy"
assert_eq "$(fmap 3 3)" hole "backing file under the punched copied chunk 3"
check "write-zeroes" 2 18
in_fleece "write-zeroes" 3 16 17
log "write-zeroes with REQ_NOUNMAP: blkdiscard -z on chunk 19, fallocate --zero-range in chunk 20"
# Both may fall back to plain writes of zeros, which would copy and zero
# just the same: the extent map tells a write-zeroes from those.
blkdiscard -z -o $((19 * CH)) -l $CH "$fo"
zero_expect $((19 * CH)) $CH; cbw=13; counts "blkdiscard -z"
assert_eq "$(fmap 19 19)" unwritten "backing file under chunk 19 after blkdiscard -z (a write-zeroes reaches it as ZERO_RANGE)"
fallocate --zero-range --keep-size -o $((20 * CH + 4 * K)) -l $((8 * K)) "$fo"
zero_expect $((20 * CH + 4 * K)) $((8 * K)); cbw=14; counts "fallocate --zero-range"
assert_eq "$(fmap 0 0 $((20 * 16 + 1)) $((20 * 16 + 2)))" unwritten "backing file under the 8 KiB zero-range in chunk 20"
assert_eq "$(fmap 0 0 $((20 * 16 + 3)) $((20 * 16 + 15)))" written "backing file after the zero-range in chunk 20"
wz_not_refused "write-zeroes"
check "zeroing" 18 21
in_fleece "zeroing" 19 20

log "discards: pending chunks 22|23 dropped, copied chunk 8 passed down, 14|15 and 4-7 mixed"
dmax=$(cat "/sys/block/$fodev/queue/discard_max_bytes")
[ "$dmax" -gt 0 ] || fail "the fleece device does not pass discards although its origin supports them"
for c in 8 14 15 22 23; do
	assert_eq "$(fmap $c $c)" written "backing file over chunk $c before the discards"
done
blkdiscard -o $((22 * CH)) -l $((2 * CH)) "$fo"
counts "discard of pending chunks: no copy"
assert_eq "$(fmap 22 23)" written "backing file over pending chunks 22|23 after their discard"
check "discard of pending chunks" 21 24
blkdiscard -o $((8 * CH)) -l $CH "$fo"
zero_expect $((8 * CH)) $CH; counts "discard of a copied chunk: no copy"
assert_eq "$(fmap 8 8)" hole "backing file over copied chunk 8 after its discard"
blkdiscard -o $((14 * CH)) -l $((2 * CH)) "$fo"	# 14 copied, 15 pending
zero_expect $((14 * CH)) $CH; counts "discard over a copied and a pending chunk"
assert_eq "$(fmap 14 14)" hole "backing file over copied chunk 14 after the mixed discard"
assert_eq "$(fmap 15 15)" written "backing file over pending chunk 15 after the mixed discard"
# Discards are never cut (dm core sends them as duplicate bios): one over
# pending 4, copied 5, pending 6, copied 7 goes down over 5 as a bio of its
# own and over 7 as the discard itself, trimmed.
for c in 4 5 6 7; do
	assert_eq "$(fmap $c $c)" written "backing file over chunk $c before the discard 4-7"
done
blkdiscard -o $((4 * CH)) -l $((4 * CH)) "$fo"
zero_expect $((5 * CH)) $CH; zero_expect $((7 * CH)) $CH
counts "discard over pending and copied chunks: no copy"
assert_eq "$(fmap 4 4) $(fmap 5 5) $(fmap 6 6) $(fmap 7 7)" "written hole written hole" \
	"backing file over chunks 4-7 after their discard"
check "discards" 3 16
in_fleece "discards on the origin" 5 7 8 14

log "FUA: O_DIRECT|O_SYNC write to pending chunk 25 reaches the origin as a flush"
[ "$(cat /sys/block/$lodev/queue/write_cache)" = "write back" ] ||
	fail "the loop device has no volatile write cache: flushes are not observable"
f0=$(flushes)
wr $((25 * CH + 4 * K)) $((8 * K)) sync; cbw=15; counts "FUA write"
f1=$(flushes)
log "origin flushes $f0 -> $f1, origin FUA support: $(cat /sys/block/$lodev/queue/fua)"
if [ "$(cat /sys/block/$lodev/queue/fua)" = 0 ]; then
	# The loop device emulates FUA with a flush after the write.
	[ "$f1" -gt "$f0" ] || fail "the FUA write did not reach the origin as FUA (flushes $f0 -> $f1)"
fi
log "flush: buffered write to chunk 26 and fsync"
dd if=new of="$fo" bs=64k skip=26 seek=26 count=1 conv=notrunc,fsync status=none
dd if=new of=expect bs=64k skip=26 seek=26 count=1 conv=notrunc status=none
cbw=16; counts "buffered write + fsync"
f2=$(flushes)
log "origin flushes $f1 -> $f2"
[ "$f2" -gt "$f1" ] || fail "fsync on the fleece device sent no flush to the origin (flushes $f1 -> $f2)"
check "flush/FUA" 24 27
in_fleece "flush/FUA" 25 26

log "one bio over copied and pending chunks: 30|31, then 30|31|32, then 34|35|36 around copied 35"
wr $((30 * CH)) $((2 * CH)); cbw=18; counts "write over pending chunks 30|31"
wr $((30 * CH + 16 * K)) $((2 * CH)); cbw=19; counts "write over copied 30|31 into pending 32"
wr $((35 * CH + 4 * K)) $((4 * K)); cbw=20; counts "4 KiB write to pending chunk 35"
wr $((34 * CH + 60 * K)) $((CH + 8 * K)); cbw=22; counts "write from pending 34 over copied 35 into pending 36"
wr $((29 * CH)) $((10 * CH)); cbw=26; counts "1 MiB write over chunks 29-38 (29, 33, 37, 38 pending)"
check "mixed writes" 28 39
in_fleece "mixed writes" 29 30 31 32 33 34 35 36 37 38

log "whole devices: origin == expected content, view == point-in-time image"
same "$fo" expect "origin"
same "$view" old "view"
counts "final status"
assert_eq "$(status_field fo 6)" 0 "cbw_errors"
dmsetup remove fv
dmsetup remove fo
losetup -d "$lo"
cmp "$bfile" expect || fail "the origin's backing file differs from the expected content"

log "last partial chunk: region of 4060 sectors (31 chunks + 92 sectors), chunk 128"
o2=$(mkdev o2 2 2)
f2=$(mkdev f2 2 3)
head -c 2M old > old2
head -c 2M new > new2
put old2 "$o2"		# the fleece device $f2 is fresh: zeros
len=4060
dmsetup create fo2 --table "0 $len fleece $o2 $f2 128"
dmsetup create fv2 --table "0 $len fleece-view $o2 $f2"
udevadm settle
assert_eq "$(status_field fo2 1)" 32 "chunks_total is rounded up"
assert_eq "$(fleece_counts fo2)" "32 0 0 0 0 active" "status of the unaligned region"
assert_eq "$(sectors /dev/mapper/fv2)" $len "view size"
tail_off=$((31 * CH)) region=$((len * 512))
# write from inside the short last chunk up to the region's end
dd if=new2 of=/dev/mapper/fo2 bs=2k iflag=skip_bytes,count_bytes oflag=direct,seek_bytes \
	skip=$((tail_off + 6 * K)) seek=$((tail_off + 6 * K)) count=$((region - tail_off - 6 * K)) \
	conv=notrunc status=none
cp old2 expect2
dd if=new2 of=expect2 bs=2k iflag=skip_bytes,count_bytes oflag=seek_bytes \
	skip=$((tail_off + 6 * K)) seek=$((tail_off + 6 * K)) count=$((region - tail_off - 6 * K)) \
	conv=notrunc status=none
assert_eq "$(fleece_counts fo2)" "31 1 0 1 0 active" "status after writing the last chunk"
cmp <(dd if=/dev/mapper/fv2 bs=512 iflag=direct status=none) <(head -c $region old2) ||
	fail "the view of the unaligned region differs from the point-in-time image"
cmp <(dd if=/dev/mapper/fo2 bs=512 iflag=direct status=none) <(head -c $region expect2) ||
	fail "the origin of the unaligned region differs from the expected content"
cmp <(dd if="$f2" bs=2k iflag=direct,skip_bytes,count_bytes skip=$tail_off count=$((region - tail_off)) status=none) \
	<(dd if=old2 bs=2k iflag=skip_bytes,count_bytes skip=$tail_off count=$((region - tail_off)) status=none) ||
	fail "the fleece device does not hold the old short last chunk"
cmp <(dd if="$f2" bs=2k iflag=direct,skip_bytes skip=$region status=none) \
	<(head -c $((2048 * K - region)) /dev/zero) ||
	fail "the copy of the short last chunk went past the region's end on the fleece device"
cmp <(dd if="$o2" bs=2k iflag=direct,skip_bytes skip=$region status=none) \
	<(dd if=old2 bs=2k iflag=skip_bytes skip=$region status=none) ||
	fail "the origin beyond the region changed"

log "brd origin: the fleece device advertises discard exactly when the origin does"
fo2dev=$(sysfs_name /dev/mapper/fo2)
ram=$(cat /sys/block/ram2/queue/discard_max_bytes)
d2=$(cat "/sys/block/$fo2dev/queue/discard_max_bytes")
log "brd discard_max_bytes=$ram, fleece on it: $d2"
if [ "$ram" = 0 ]; then
	assert_eq "$d2" 0 "discard_max_bytes of a fleece on brd without discard"
	expect_fail blkdiscard -o 0 -l $CH /dev/mapper/fo2
	cmp <(dev_range /dev/mapper/fo2 0 64) <(file_range expect2 0 64) ||
		fail "a refused discard changed the origin"
	assert_eq "$(fleece_counts fo2)" "31 1 0 1 0 active" "status after the refused discard"
else
	[ "$d2" -gt 0 ] || fail "brd supports discard, the fleece device on it does not"
	# brd frees the pages of a discard: a discard passed down reads as zeros
	dd if=new2 of=/dev/mapper/fo2 bs=4k skip=$((5 * 16)) seek=$((5 * 16)) count=1 \
		oflag=direct conv=notrunc status=none
	dd if=new2 of=expect2 bs=4k skip=$((5 * 16)) seek=$((5 * 16)) count=1 conv=notrunc status=none
	blkdiscard -o $((5 * CH)) -l $((2 * CH)) /dev/mapper/fo2	# 5 copied, 6 pending
	dd if=/dev/zero of=expect2 bs=64k seek=5 count=1 conv=notrunc status=none
	assert_eq "$(fleece_counts fo2)" "30 2 0 2 0 active" "status after the discards on brd"
	cmp <(dev_range /dev/mapper/fo2 $((5 * 64)) 128) <(file_range expect2 $((5 * 64)) 128) ||
		fail "on brd: a discard was not passed down on a copied chunk, or not dropped on a pending one"
	cmp <(dev_range /dev/mapper/fv2 $((5 * 64)) 128) <(file_range old2 $((5 * 64)) 128) ||
		fail "on brd: the view changed after origin discards"
fi
dmsetup remove fv2
dmsetup remove fo2

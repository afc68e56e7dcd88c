#!/bin/bash
# fleece backup --incremental on a raw tracked device (no writer: the
# device is its own point in time), the images on ext4, which has no
# reflink (FILE is copied to FILE.partial first, and the backup says so):
#  1. dd writes at known chunks: the changed map is exactly those chunks
#     (and empty when nothing changed); each image equals the device and
#     none of it is left in the page cache (--sha256's read back too).
#     A bitmap block of the store corrupted under the attached tracker:
#     the next incremental is exact (the sets are in memory); corrupted
#     while detached: the attach reads it as every chunk changed, and the
#     next incremental reads them all, exact.
#  2. each fallback to a full backup, with its reason: no previous image,
#     epoch mismatch (another image took the last backup), generation
#     changed (the store failed: history lost), store reformatted, size
#     changed, not tracked (which also removes the stale record); each
#     such full backup is exact, and the next one is incremental again.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state FLEECE_TRACK_DIR=$PWD/trackdir

CH=65536		# tracker and fleece chunk
mkdir -p /mnt/out4 /mnt/fdir
mount -t tmpfs -o size=100m tmpfs /mnt/fdir		# fleece space
out4=$(mkdev out4 100 3)
mkfs.ext4 -q -F "$out4"
mount "$out4" /mnt/out4


# --- 1. dd at known chunks ---------------------------------------------------
step "a raw tracked device: the map is exactly the chunks written"
raw=$(mkdev raw 16)
store2=$(mkdev store2 1 1)
mkpattern pat 16 raw
put pat "$raw"
$F track start raw --store "$store2"
R=/mnt/out4/raw.img
rawbk() { # name options...: back up raw (no writer) to ${IMG:-$R}, check it
	local n=$1 o=${IMG:-$R}
	shift
	dd if=/dev/mapper/raw of=rref bs=1M iflag=direct status=none
	# shellcheck disable=SC2086 # WRAP: a command and its words, or nothing
	${WRAP:-} $F backup --fleece-dir /mnt/fdir --changed-map rmap.$n "$@" raw -o "$o" 2> rerr.$n ||
		{ cat rerr.$n; fail "raw backup $n failed"; }
	cat rerr.$n
	# Synced, not to be read again: none of it in the page cache (the
	# clone's copy on ext4 and --sha256's read back included).
	assert_eq "$(fincore -b -n -o RES "$o" | tr -d " ")" 0 "raw backup $n: bytes of the image left in the page cache"
	cmp "$o" rref || fail "raw backup $n: the image differs from the device"
	no_leftovers /mnt/out4 /mnt/fdir
}
wr() { # chunk count
	dd if=/dev/urandom of=/dev/mapper/raw bs=$CH seek="$1" count="$2" oflag=direct \
		conv=notrunc status=none
}
rawbk r1 --incremental
grep_q "a full backup: no previous image" rerr.r1 || fail "r1: reason"
wr 3 1; wr 100 2; wr 255 1
rawbk r2 --incremental
grep_q "no reflink here" rerr.r2 || fail "r2: FILE on ext4 copied without saying so"
assert_eq "$(map_extents rmap.r2 | tr '\n' ' ')" \
	"$((3 * CH))+$CH $((100 * CH))+$((2 * CH)) $((255 * CH))+$CH " "r2: the changed map"
wr 7 1
WRAP="strace -f -y -e trace=ioctl -o r3.trace" rawbk r3 --incremental
assert_eq "$(map_extents rmap.r3 | tr '\n' ' ')" "$((7 * CH))+$CH " "r3: the changed map"
# The kernel released the 255 unchanged chunks at the point in time
# (track_store): the reader discards only the chunk it saved, not the
# ranges around it again (one discard where it made three).  On the view
# (a dm device, strace -y): the loop device's direct I/O probe discards
# its test block too.
grep -E 'dm-[0-9]+.*BLKDISCARD' r3.trace || true
assert_eq "$(grep -cE 'dm-[0-9]+[^,]*, BLKDISCARD' r3.trace)" 1 "r3: discards on the view"
# Three scattered chunks: the kernel released the gaps between them, so a
# batch goes out as one discard over its span, from its first changed chunk
# to the end of its last, gaps included; no gap is discarded on its own.
# Usually one batch, one discard; a slow guest (the debug kernel under
# load: 9.9 s for r3's one chunk) may close a batch by its age (BATCH_SECS)
# between two chunks, hence one to three spans.  --json counts each
# released byte once.
wr 40 1; wr 90 1; wr 200 1
WRAP="strace -f -y -e trace=ioctl -o r3b.trace" rawbk r3b --incremental --json > r3b.out
assert_eq "$(map_extents rmap.r3b | tr '\n' ' ')" \
	"$((40 * CH))+$CH $((90 * CH))+$CH $((200 * CH))+$CH " "r3b: the changed map"
grep -E 'dm-[0-9]+.*BLKDISCARD' r3b.trace || true
spans=$(sed -nE 's/.*dm-[0-9]+[^,]*, BLKDISCARD, \[([0-9]+), ([0-9]+)\].*/\1 \2/p' r3b.trace)
n=$(echo "$spans" | grep -c .)
[ "$n" -ge 1 ] && [ "$n" -le 3 ] || fail "r3b: $n discards on the view (1 to 3 spans expected)"
echo "$spans" | while read -r off len; do
	[ $((off % CH)) = 0 ] && [ $((len % CH)) = 0 ] ||
		fail "r3b: a discard on the view not on chunk boundaries: $off+$len"
	case "$((off / CH)):$(((off + len) / CH))" in
	40:41|40:91|40:201|90:91|90:201|200:201) ;;
	*) fail "r3b: a discard on the view that is not a span of changed chunks: $off+$len" ;;
	esac
done || exit 1
echo "# r3b: $n discard(s) on the view"
assert_eq "$(python3 -c '
import json, sys
top = json.loads(next(l for l in open(sys.argv[1]) if l.startswith("{")))
d = top["devices"][0]
print(d["bytes_read"], d["released_bytes"], d["size_bytes"])' r3b.out)" \
	"$((3 * CH)) $((256 * CH)) $((256 * CH))" "r3b: bytes read, released, size"
rawbk r4 --incremental --sha256 > r4.out
assert_eq "$(map_field rmap.r4 extents)" "[]" "r4: nothing changed, nothing read"
# (r4.out also has rawbk's copy of the messages: the line naming the image.)
assert_eq "$(awk -v f="$R" '$2 == f { print $1 }' r4.out)" "$(sha256sum < rref | cut -d' ' -f1)" \
	"r4: --sha256 of the image"

# A bit of the store flipped: the current area's only block (256 chunks:
# one block per area).
flip_cur_block() { # epoch
	python3 - "$store2" $(((2 + ($1 & 1)) * 4096 + 1000)) <<'PY'
import mmap, os, sys
byte = int(sys.argv[2])
fd = os.open(sys.argv[1], os.O_RDWR | os.O_DIRECT)
m = mmap.mmap(-1, 4096)		# aligned, for O_DIRECT
os.preadv(fd, [m], byte - byte % 4096)
m[byte % 4096] ^= 0x10
os.pwritev(fd, [m], byte - byte % 4096)
os.close(fd)
PY
}
step "a bitmap block corrupted under the attached tracker: its sets are in memory, exact"
wr 20 1
flip_cur_block "$(status_field raw 2)"
rawbk r4a --incremental
assert_eq "$(map_extents rmap.r4a | tr '\n' ' ')" "$((20 * CH))+$CH " "r4a: the changed map"
step "a corrupted bitmap block found at attach: read as all changed, the incremental reads it all"
wr 21 1
read -r _ _ _ rdev roff _ <<< "$(dmsetup table raw)"
ep=$(status_field raw 2)
udevadm settle
dmsetup remove raw		# as at a shutdown: the store closed cleanly
flip_cur_block "$ep"
dmsetup create raw --table "0 32768 linear $rdev $roff"
$F track attach raw > rattach.out 2>&1 || { cat rattach.out; fail "attach after the bitmap block was damaged"; }
cat rattach.out
grep_q "raw: attached: .*epoch $ep, generation 1, 256 chunks changed" rattach.out ||
	fail "attach: the damaged block is not read as all changed"
assert_eq "$(status_field raw 9)" 1 "the tracker's count of blocks read as all changed"
expect_dmesg "bitmap blocks failed their checks: read as all changed"
rawbk r4b --incremental
assert_eq "$(map_field rmap.r4b incremental)" true "r4b: incremental"
assert_eq "$(map_extents rmap.r4b | tr '\n' ' ')" "0+$((256 * CH)) " "r4b: every chunk of the damaged block"
wr 22 1
rawbk r4c --incremental
assert_eq "$(map_extents rmap.r4c | tr '\n' ' ')" "$((22 * CH))+$CH " "r4c: exact again"

# --- 2. fallbacks ----------------------------------------------------------
fallback() { # name reason options...
	local n=$1 why=$2
	shift 2
	rawbk "$n" "$@"
	grep_q -- "--incremental: a full backup.*: $why" rerr.$n ||
		fail "$n: no full backup for '$why'"
	assert_eq "$(map_field rmap.$n incremental)" false "$n: map says full"
}
step "epoch mismatch: another image took the last backup"
wr 9 1
IMG=/mnt/out4/other.img rawbk r5
wr 11 1
fallback r6 "epoch mismatch" --incremental
wr 12 1
rawbk r7 --incremental
assert_eq "$(map_extents rmap.r7 | tr '\n' ' ')" "$((12 * CH))+$CH " "r7: incremental again"

step "generation changed: the store fails, the history is lost"
stable=$(dmsetup table store2)
dmsetup suspend store2
dmsetup load store2 --table "0 2048 error"
dmsetup resume store2
expect_fail dd if=/dev/urandom of=/dev/mapper/raw bs=$CH seek=40 count=1 oflag=direct conv=notrunc status=none
dmsetup suspend store2
dmsetup load store2 --table "$stable"
dmsetup resume store2
wr 41 1
echo "# tracker: $(dmsetup status raw)"
fallback r8 "generation changed: history lost" --incremental
wr 42 1
rawbk r9 --incremental
assert_eq "$(map_extents rmap.r9 | tr '\n' ' ')" "$((42 * CH))+$CH " "r9: incremental again"

step "store reformatted"
$F track stop raw
dd if=/dev/zero of="$store2" bs=4k count=2 oflag=direct status=none
$F track start raw --store "$store2"
fallback r10 "store reformatted" --incremental

step "size changed"
$F track stop raw
dmsetup suspend raw
dmsetup load raw --table "0 $((20 * 2048)) linear /dev/ram3 $((120 * 2048))"
dmsetup resume raw
dd if=/dev/zero of="$store2" bs=4k count=2 oflag=direct status=none
$F track start raw --store "$store2"
fallback r11 "size changed" --incremental

step "not tracked"
$F track stop raw
fallback r12 "not tracked" --incremental
[ ! -e $R.fleece.json ] || fail "a stale record after an untracked full backup"
log "done"

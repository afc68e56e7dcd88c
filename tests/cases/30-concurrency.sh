#!/bin/bash
# Integrity under concurrency, for chunks of 4 KiB, 64 KiB and 1 MiB.
#
# For each chunk size, on fresh 64 MiB devices: the origin holds a known
# pattern, the point-in-time image; fleece and view are started.  Then, at
# the same time:
#   - fio writers with crc32c verification overwrite the whole origin
#     through the fleece target, each on its own quarter: random 4 KiB at
#     iodepth 16 (a burst), random 4 KiB synchronous, random 1 MiB at
#     iodepth 4 straddling chunk boundaries, sequential 1 MiB synchronous;
#     the last three spread their writes (hence the copies) over ~22 s;
#   - a reader reads the whole view with O_DIRECT, in blocks of 16 chunks
#     (at most 1 MiB: one chunk at 1 MiB) in a shuffled order, paced over
#     $LOAD_S s, compares every block with the point-in-time image byte for
#     byte, and discards it on the view as soon as it has checked it (a
#     block's chunks may be pending, being copied, or copied, in any mix:
#     the view reads runs of pending chunks from the origin in one piece).
# fio rounds (each with new data, unthrottled after the first) repeat until
# the reader is done, so the load lasts at least 3 x $LOAD_S s in all.
#
# Checked, for each chunk size:
#   - every chunk the reader read equals the point-in-time image;
#   - every fio job of every round wrote its whole range and read all of it
#     back with a good crc32c;
#   - the three ranges fio never writes (2 MiB) still hold the old data;
#   - the reader was served both from the origin (pending chunks) and from
#     the fleece device (copied chunks), at least once per block, and no
#     read was refused;
#   - final status: no chunk pending or copied, all released, at least one
#     copy and no more copies than chunks, no copy error, still active; no
#     message from fleece in the kernel log.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

MIB=64		# region per chunk size
LOAD_S=20	# the reader's pace: seconds per chunk size, at least
Q=$((MIB / 4))	# a quarter of the region, MiB

# The point-in-time image (as mkpattern, but much faster under TCG).  The
# first runs of python3 and fio are slow (their files come over 9p): warm up.
python3 -c "import random, sys; sys.stdout.buffer.write(random.Random(30).randbytes($MIB << 20))" > pit &
fio --version >/dev/null
wait $!

# The reader: chunkread.py VIEW IMAGE BLOCK_BYTES SEED SECONDS STATUS_FILE
cat > chunkread.py <<'EOF'
import fcntl, mmap, os, random, struct, subprocess, sys, time

view, image, bsize, seed, secs, status_file = sys.argv[1:7]
bsize, secs = int(bsize), float(secs)
BLKDISCARD = 0x1277
fd = os.open(view, os.O_RDWR | os.O_DIRECT)	# discard needs write mode
size = os.lseek(fd, 0, os.SEEK_END)
with open(image, "rb") as f:
    img = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
if len(img) != size:
    sys.exit(f"reader: image is {len(img)} bytes, view {size}")
n = (size + bsize - 1) // bsize
order = list(range(n))
random.Random(seed).shuffle(order)
buf = mmap.mmap(-1, bsize)	# page aligned, as O_DIRECT wants
open("reader.ready", "w").close()
while not os.path.exists("reader.go"):	# until the writers have begun
    time.sleep(0.01)
t0 = time.monotonic()
for i, c in enumerate(order):
    ahead = t0 + secs * i / n - time.monotonic()
    if ahead > 0.005:
        time.sleep(ahead)
    off = c * bsize
    ln = min(bsize, size - off)
    try:
        got = os.preadv(fd, [memoryview(buf)[:ln]], off)
    except OSError as e:
        sys.exit(f"reader: block {c} (read #{i}): read failed: {e}")
    if got != ln:
        sys.exit(f"reader: block {c}: short read {got} of {ln}")
    if buf[:ln] != img[off:off + ln]:
        bad = next(j for j in range(ln) if buf[j] != img[off + j])
        sys.exit(f"reader: block {c} (read #{i}) differs from the point-in-time "
                 f"image at byte {off + bad}")
    fcntl.ioctl(fd, BLKDISCARD, struct.pack("QQ", off, ln))
# The view's status before our close: closing a device opened for writing
# makes udev probe it again, and those reads of released chunks fail.
st = subprocess.run(["dmsetup", "status", os.path.basename(view)],
                    capture_output=True, text=True, check=True).stdout
open(status_file, "w").write(st)
print(f"reader: {n} blocks of {bsize} bytes checked and released "
      f"in {time.monotonic() - t0:.1f}s")
EOF

# fio's terse output, one line per job: no error, and every job read back
# (verified) all it wrote.
fio_check() { # terse-output
	awk -F';' '{ printf "  %s: wrote %d KiB in %.1fs, verified %d KiB in %.1fs\n",
			$3, $47, $50 / 1000, $6, $9 / 1000 }' "$1"
	awk -F';' 'NF < 50 || $5 != 0 || $47 == 0 || $6 != $47 { bad = 1 }
		END { exit bad || NR != 4 }' "$1" || fail "fio: a job failed or verified less than it wrote"
}

# One fio round over the whole region but three small gaps, with new data.
# The first round spreads its writes, hence the copies, over $LOAD_S seconds
# (but for a burst of random 4 KiB writes at iodepth 16); later ones do not.
fio_round() { # dev seed out round
	local rate=""
	[ "$4" = 1 ] && rate="rate=,$((Q * 1024 / (LOAD_S + 2)))k"
	fio --output-format=terse --output="$3" - <<-EOF
	[global]
	filename=$1
	direct=1
	rw=randwrite
	verify=crc32c
	do_verify=1
	verify_fatal=1
	randseed=$2
	[rand4k-aio]
	ioengine=libaio
	iodepth=16
	bs=4k
	offset=0
	size=${Q}m
	[rand4k-sync]
	$rate
	ioengine=psync
	bs=4k
	offset=${Q}m
	size=${Q}m
	[rand1m-aio-straddling]
	$rate
	ioengine=libaio
	iodepth=4
	bs=1m
	offset=$((2 * Q * 1024 + 512))k
	size=$((Q - 1))m
	[seq1m-sync]
	$rate
	ioengine=psync
	rw=write
	bs=1m
	offset=$((3 * Q))m
	size=$((Q - 1))m
	EOF
}

wait_for() { # what command...: polls for up to 60 s
	local what=$1 i
	shift
	for ((i = 0; i < 600; i++)); do
		"$@" && return 0
		sleep 0.1
	done
	fail "timed out waiting for $what"
}

for chunk in 8 128 2048; do
	block=$((chunk * 512 * 16 > 1 << 20 ? 1 << 20 : chunk * 512 * 16))
	total=$((MIB * 2048 / chunk))
	blocks=$((MIB * 1048576 / block))
	log "chunk $chunk sectors: $total chunks, $MIB MiB, read in $blocks blocks"
	origin=$(mkdev origin$chunk $MIB 0)
	fl=$(mkdev fl$chunk $MIB 1)
	put pit "$origin"
	fleece_create fo "$origin" "$fl" $chunk >/dev/null
	view=$(view_create fv "$origin" "$fl")
	udevadm settle
	probe_reads=$(status_field fv 0)	# udev's probe of the new view
	assert_eq "$(fleece_counts fo)" "$total 0 0 0 0 active" "status at the start"

	log "load: fio writers on the origin, reader on the view"
	dmesg_mark
	rm -f reader.ready reader.go
	python3 chunkread.py "$view" pit $block $chunk $LOAD_S view.status &
	reader_pid=$!
	start=$SECONDS
	round=1
	fio_round /dev/mapper/fo $((chunk * 100 + round)) fio.$round.out $round &
	fio_pid=$!
	wait_for "the reader to start" test -e reader.ready
	wait_for "the first copy" eval '[ "$(status_field fo 5)" -gt 0 ]'
	touch reader.go	# the reader's clock starts with the writers'
	while :; do
		wait $fio_pid || { cat fio.$round.out; fail "fio round $round failed"; }
		fio_check fio.$round.out
		kill -0 $reader_pid 2>/dev/null || break
		round=$((round + 1))
		fio_round /dev/mapper/fo $((chunk * 100 + round)) fio.$round.out $round &
		fio_pid=$!
	done
	wait $reader_pid || fail "the reader failed (chunk $chunk)"
	log "load: $((SECONDS - start))s, $round fio round(s)"

	read -r _ _ _ from_origin from_fleece refused released state < view.status
	log "view: $((from_origin - probe_reads)) reads from the origin, $from_fleece from the fleece"
	[ $((from_origin - probe_reads)) -gt 0 ] || fail "no view read was served by the origin"
	[ "$from_fleece" -gt 0 ] || fail "no view read was served by the fleece"
	[ $((from_origin - probe_reads + from_fleece)) -ge $blocks ] ||
		fail "the view served fewer reads than the reader made"
	assert_eq "$refused $released $state" "0 $total active" "view status (refused released state)"

	read -r pending copied rel cbw errors fstate <<< "$(fleece_counts fo)"
	assert_eq "$pending $copied $rel $errors $fstate" "0 0 $total 0 active" \
		"fleece status (pending copied released errors state)"
	[ "$cbw" -ge 1 ] && [ "$cbw" -le $total ] || fail "cbw_count $cbw not in 1..$total"
	log "fleece: $cbw copies for $total chunks"
	if dmesg_since_mark | grep -E 'device-mapper: fleece'; then
		fail "fleece complained in the kernel log"
	fi

	# fio never writes [2Q, 2Q + 512k), [3Q - 512k, 3Q) and [4Q - 1M, 4Q).
	for r in "$((2 * Q * 1024)) 512" "$((3 * Q * 1024 - 512)) 512" "$((4 * Q * 1024 - 1024)) 1024"; do
		set -- $r
		cmp <(dev_range /dev/mapper/fo $1 $2) <(file_range pit $1 $2) ||
			fail "origin range at $1 KiB, never written by fio, changed"
	done
	dmsetup remove fv
	dmsetup remove fo
done

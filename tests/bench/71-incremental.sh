#!/bin/bash
# Benchmark 7b, incremental backups (issue 14): `fleece backup --incremental`
# against a full `fleece backup` of the same state, with 1% and 10% of the
# chunks changed, and the fleece's peak size in both with a writer running.
#
#   origin   incorig, dm-linear on the first 512 MiB of /dev/ram0, tracked
#            by the real tool (`fleece track start --store`, 64 KiB chunks:
#            8192); VM_APPEND=fleece.inc_mib=N for N MiB (a multiple of 64;
#            above 512 the ram disks are made 1.25 N MiB each, so give the
#            VM memory: VM_MEM=10G for 2048)
#   store    incstore, the first 16 MiB of /dev/ram1
#   images   xfs with reflink (what the README advises: the incremental
#            clones FILE to FILE.partial) on the rest of ram1 + ram2
#   fleece   --fleece-dir on a tmpfs (a sparse file on a loop device)
#
# With `make bench DISK=FILE` (a virtio disk on a host file, cache=none)
# the origin, the store and the images' xfs are slices of that disk after
# bench.lib's first 4 GiB: the origin fleece.inc_mib=N MiB, the store 16
# MiB, the xfs the rest (at least 2.5 N MiB: two images and a clone's
# copies).  That measures a device large enough for the fixed cost
# (process starts and udev's programs, which TCG makes slow) to weigh as
# little as on a real host: e.g. N=16384 with a 61G FILE.
# VM_APPEND=fleece.inc_writer=0 leaves out the rounds with a writer and
# the timelines that take up their writes (at 16 GiB each full backup with
# a writer takes a quarter of an hour).
#
# First, with nothing changed (`unchanged`), ROUNDS rounds of an
# incremental and a full backup: the incremental's time is its fixed cost
# (the tool's start, udev, the fleece's setup and teardown, the clone, the
# records), which does not grow with the device.
#
# The origin is written full once through the tracker, then backed up with
# --incremental to image A ("no previous image": a full backup).  Then, for
# each fraction (1%, 10%), ROUNDS timing rounds with no other I/O:
#   1. change: 64 KiB writes of fresh random data (fio, refill_buffers) at
#      that fraction of the chunks, chosen at random (shuf, seeded); the
#      tracker must then count exactly that many chunks changed;
#   2. incremental: `fleece backup --incremental` of the image that took the
#      last backup; its --changed-map must say incremental and exactly the
#      changed chunks' bytes read;
#   2b. device: fio replays the incremental's reads (its --changed-map) on
#      the disk under the whole stack (device_reads): the least those reads
#      take on this machine, with nothing of ours in the way;
#   3. full: `fleece backup` (no --incremental) of the same state to the other
#      image (removed first), which then holds the last backup: the images
#      swap roles each round.  (Fixed order: a full backup first would take
#      the epoch and leave the incremental nothing to read.)
# Each time is the guest's wall clock (date +%s.%N) around the whole command:
# the tool's start, the fleece's setup and teardown, the image's clone or
# write and sync, as a user sees it.  Before each: udevadm settle, sync (the
# previous step's write-back and xfs's background freeing of a removed image
# are not counted in the next backup; no drop_caches: the programs would be
# read again over 9p), 1 s of sleep.  The tool's own summary line (its read
# phase alone) is kept too.
#
# Run it on the host's clock: make bench T=71 ICOUNT= (TEST_TIMEOUT=3600).
# Under icount every wait of the guest for the host (9p: each program's
# start, udev's workers) becomes a jump of the guest's clock, and whole
# commands timed so came out at random: an incremental of 81 chunks that
# the tool read in 0.6 s took 5.8, 9.8 and 47.5 s, and one run overran the
# guest's 3600 s in 6 minutes of the host.
# Then one round with a writer: fio 4 KiB random writes, 1000 IOPS, QD1,
# started before each backup and held (exec_prerun) until the backup's
# view exists, i.e. until just after the point in time, so that the changed
# set is exactly the fraction; it runs until the backup ends.  Meanwhile a
# sampler reads every 0.1 s the fleece target's chunks_copied (dmsetup
# status: chunks whose frozen data is in the fleece and not yet released)
# and the fleece file's allocated size (st_blocks); the peak is the largest
# sample.  Both images of that round are checked: the image's CRC-32 and
# length (cksum: sha256sum of 512 MiB costs minutes of TCG) equal those of
# the origin read (O_DIRECT) just before the backup, with no writer yet.  An unrecorded incremental then takes up the writer's writes.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
. "$SRC/tests/bench/bench.lib"

MIB=$(arg fleece.inc_mib)
MIB=${MIB:-512}
[[ $MIB =~ ^[0-9]+$ ]] && [ $((MIB % 64)) = 0 ] && [ "$MIB" -ge 64 ] ||
	fail "fleece.inc_mib=$MIB: not a multiple of 64 MiB"
CH=65536
len=$((MIB * 2048))
nchunks=$((MIB * 1048576 / CH))
STORE_SECT=32768
FRACS=(1 10)
WRITER_IOPS=1000
WITH_WRITER=$(arg fleece.inc_writer)
WITH_WRITER=${WITH_WRITER:-1}

find_fleece_tool backup
[ -n "$FLEECE" ] || fail "tools/fleece has no backup command"
F=$FLEECE
$F --version >/dev/null
export FLEECE_STATE_DIR=$PWD/state FLEECE_TRACK_DIR=$PWD/trackdir

# The ram disks: 1 GiB each (the VM's), or for a larger origin 1.25 times
# its size each, so that ram1 + ram2 hold two images and a clone's
# copies.  Put back as they were at the end.
RD_MIB=1024
brd_load() { # MiB
	udevadm settle
	modprobe -r brd || fail "cannot unload brd to resize the ram disks"
	modprobe brd rd_nr=4 rd_size=$(($1 * 1024)) max_part=0
	udevadm settle
}
if [ -n "$BENCH_DISK" ]; then
	# Slices of the whole disk after bench.lib's four 1 GiB ones.
	disk=/dev/$BENCH_DISK
	base=$((4 * 2097152))
	img_sect=$(($(blockdev --getsz "$disk") - base - len - STORE_SECT))
	[ "$img_sect" -ge $((len * 5 / 2)) ] ||
		fail "$disk is too small for a $MIB MiB origin: 4 GiB + 3.5 times the origin + 16 MiB are needed"
	log "origin, store and images on $disk: $MIB MiB, 16 MiB, $((img_sect / 2048)) MiB"
	ORIG_DEV=$disk ORIG_OFF=$((base * 512))
	dmsetup create incorig --table "0 $len linear $disk $base"
	dmsetup create incstore --table "0 $STORE_SECT linear $disk $((base + len))"
	dmsetup create incimg --table "0 $img_sect linear $disk $((base + len + STORE_SECT))"
else
	if [ "$MIB" -gt 512 ]; then
		RD_MIB=$((MIB * 5 / 4))
		log "ram disks of $RD_MIB MiB for a $MIB MiB origin"
		brd_load $RD_MIB
	fi
	rd_sect=$((RD_MIB * 2048))
	log "prefill $D1 and $D2 (brd allocates pages on first write; $D0 is filled through the tracker)"
	fill $D1 $RD_MIB
	fill $D2 $RD_MIB
	ORIG_DEV=$D0 ORIG_OFF=0
	dmsetup create incorig --table "0 $len linear $D0 0"
	dmsetup create incstore --table "0 $STORE_SECT linear $D1 0"
	dmsetup create incimg <<-EOF
		0 $((rd_sect - STORE_SECT)) linear $D1 $STORE_SECT
		$((rd_sect - STORE_SECT)) $rd_sect linear $D2 0
	EOF
fi
dd if=/dev/zero of=/dev/mapper/incstore bs=64k count=16 oflag=direct status=none
udevadm settle
mkfs.xfs -q -f -K -m reflink=1 /dev/mapper/incimg	# -K: no discard (brd would free its pages)
mkdir -p /mnt/img /mnt/fdir
mount /dev/mapper/incimg /mnt/img
mount -t tmpfs -o size=$((MIB * 6 / 5))m tmpfs /mnt/fdir
FDIR=/mnt/fdir
cleanup() {
	kill_writer
	stop_sampler
	umount /mnt/fdir 2>/dev/null || true
	umount /mnt/img 2>/dev/null || true
}
trap cleanup EXIT

$F track start incorig --store /dev/mapper/incstore
log "fill the origin through the tracker"
fill /dev/mapper/incorig $MIB
assert_eq "$(status_field incorig 3)" "$nchunks" "chunks changed after the fill"

# backup KIND IMAGE TAG [options...]: one `fleece backup` of incorig to
# /mnt/img/IMAGE, timed; KIND incremental or full.  Sets T0, T1, MAP, ERR.
backup() {
	local kind=$1 img=/mnt/img/$2 tag=$3 opt=()
	shift 3
	[ "$kind" = full ] || opt=(--incremental)
	MAP=$RAW/$tag.map.json ERR=$RAW/$tag.err
	udevadm settle --timeout=30
	sync
	sleep 1
	T0=$(date +%s.%N)
	$F backup incorig --fleece-dir $FDIR -o "$img" --changed-map "$MAP" --progress none \
		"${opt[@]}" "$@" 2> "$ERR" || { cat "$ERR"; fail "$tag: backup failed"; }
	T1=$(date +%s.%N)
	cat "$ERR"
	[ -z "$(ls -A $FDIR)" ] || fail "$tag: fleece files left: $(ls $FDIR)"
}
map_num() { sed -n "s/.*\"$2\": \\([0-9a-z]*\\).*/\\1/p" "$1"; }
check_map() { # tag kind expected-bytes
	assert_eq "$(map_num "$MAP" incremental)" "$([ "$2" = incremental ] && echo true || echo false)" "$1: the map's kind"
	assert_eq "$(map_num "$MAP" read_bytes)" "$3" "$1: bytes read"
}

# change SEED COUNT: 64 KiB of fresh random data at COUNT random chunks.
# (%.0f: mawk's %d stops at 2^31 - 1, which fio refused past 2 GiB.)
change() {
	local seed=$1 k=$2
	{
		printf 'fio version 2 iolog\n%s add\n%s open\n' /dev/mapper/incorig /dev/mapper/incorig
		shuf -i 0-$((nchunks - 1)) -n "$k" --random-source=<(yes "seed $seed") | sort -n |
			awk -v cb=$CH -v d=/dev/mapper/incorig '{ printf "%s write %.0f %d\n", d, $1 * cb, cb }'
		printf '%s close\n' /dev/mapper/incorig
	} > change.iolog
	fio --name=change --read_iolog=change.iolog --ioengine=libaio --direct=1 --iodepth=8 \
		--refill_buffers=1 --output=/dev/null
	assert_eq "$(status_field incorig 3)" "$k" "chunks changed after writing $k chunks"
}

# device_reads TAG: the device's own floor for the incremental just made.
# fio replays the reads the incremental made (the extents of its
# --changed-map, in blocks of at most 1 MiB as the tool reads them, 8 at a
# time, O_DIRECT) on the disk under the whole stack: no dm-fleece, no
# tracker, no image to write.  Timed like a backup (settle, sync, 1 s, the
# guest's wall clock around the command: fio's start included, as the
# tool's is).  Against the full backup of the same round, it is the least
# an incremental of these chunks could take on this machine.  It runs just
# after the incremental: whatever cache below the guest kept of the same
# reads helps fio, not the tool, so the floor is if anything too low.
device_reads() {
	local tag=$1 n_bytes
	n_bytes=$(python3 - "$MAP" "$ORIG_DEV" "$ORIG_OFF" "$tag.iolog" <<-'PYEOF'
		import json, sys
		m, dev, base = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
		n = total = 0
		with open(sys.argv[4], "w") as f:
		    print("fio version 2 iolog", file=f)
		    print(dev, "add", file=f)
		    print(dev, "open", file=f)
		    for off, left in m["extents"]:
		        while left > 0:
		            b = min(left, 1 << 20)
		            print(dev, "read", base + off, b, file=f)
		            off, left, n, total = off + b, left - b, n + 1, total + b
		    print(dev, "close", file=f)
		print(n, total)
	PYEOF
	) || fail "$tag: cannot make fio's log of the reads"
	assert_eq "${n_bytes#* }" "$(map_num "$MAP" read_bytes)" "$tag: bytes in fio's log against the incremental's"
	udevadm settle --timeout=30
	sync
	sleep 1
	T0=$(date +%s.%N)
	fio --name=device --read_iolog="$tag.iolog" --ioengine=libaio --direct=1 --iodepth=8 \
		--output-format=json --output="$RAW/$tag.json" || fail "$tag: fio's replay failed"
	T1=$(date +%s.%N)
	# total_ios, not io_bytes: fio 3.33 leaves the last iodepth - 1
	# replayed reads out of io_bytes (seen: 33 of 40 at iodepth 8).
	assert_eq "$(python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))["jobs"][0]["read"]; print(r["total_ios"], r["short_ios"])' "$RAW/$tag.json")" \
		"${n_bytes% *} 0" "$tag: reads fio made (and short ones) against its log's"
	# fio's own run time, the counterpart of the tool's read phase.
	FIO_SECS=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["jobs"][0]["read"]["runtime"] / 1000)' "$RAW/$tag.json")
}

# The writer: held in exec_prerun until a fleece-view exists.
cat > waitview.sh <<-'EOF'
	#!/bin/sh
	until dmsetup table --target fleece-view 2>/dev/null | grep -q fleece-view; do sleep 0.02; done
EOF
chmod +x waitview.sh
WPID=
start_writer() { # json
	fio --name=writer --filename=/dev/mapper/incorig --rw=randwrite --bs=4k --iodepth=1 \
		--ioengine=libaio --direct=1 --rate_iops=$WRITER_IOPS --norandommap=1 \
		--randrepeat=0 --time_based=1 --runtime=3600 --exec_prerun="$PWD/waitview.sh" \
		--output-format=json --output="$1" &
	WPID=$!
}
kill_writer() {
	[ -n "$WPID" ] || return 0
	kill -INT "$WPID" 2>/dev/null || true
	wait "$WPID" 2>/dev/null || true
	WPID=
}
SPID=
start_sampler() { # file
	(
		while :; do
			c=$(dmsetup status --target fleece 2>/dev/null | awk '$4 == "fleece" { print $8 }') || c=
			b=$(stat -c %b $FDIR/*.fleece 2>/dev/null | head -n 1) || b=
			echo "${c:--} ${b:--}"
			sleep 0.1
		done
	) > "$1" &
	SPID=$!
}
stop_sampler() {
	[ -n "$SPID" ] || return 0
	kill "$SPID" 2>/dev/null || true
	wait "$SPID" 2>/dev/null || true
	SPID=
}
origin_sum() { dd if=/dev/mapper/incorig bs=4M iflag=direct status=none | cksum; }
image_sum() { echo 3 > /proc/sys/vm/drop_caches; cksum < "/mnt/img/$1"; }

cur=a.img other=b.img
swap() { local t=$cur; cur=$other; other=$t; }

log "the first backup: --incremental with no previous image (a full one)"
backup incremental $cur first
grep_q "a full backup: no previous image" "$ERR" || fail "first backup: no 'no previous image'"
check_map first full $((MIB * 1048576))

rec() { # case workload round kind tag [extra members...]
	local c=$1 w=$2 r=$3 tag=$5
	shift 5
	record "$c" "$w" "$r" "t0=$T0" "t1=$T1" "read_bytes=$(map_num "$MAP" read_bytes)" \
		"size_bytes=$((MIB * 1048576))" "fleece_chunk_bytes=$CH" "err=\"$RAWREL/$tag.err\"" "$@"
}

log "== nothing changed: the fixed cost"
for round in $(seq 1 "$ROUNDS"); do
	backup incremental $cur "unchanged.inc.r$round"
	check_map "unchanged.inc.r$round" incremental 0
	rec incremental unchanged "$round" incremental "unchanged.inc.r$round" "changed_chunks=0"
	rm -f "/mnt/img/$other" "/mnt/img/$other.fleece.json"
	backup full $other "unchanged.full.r$round"
	check_map "unchanged.full.r$round" full $((MIB * 1048576))
	rec full unchanged "$round" full "unchanged.full.r$round" "changed_chunks=0"
	swap
done

for pct in "${FRACS[@]}"; do
	k=$((nchunks * pct / 100))
	w=changed-${pct}pct
	log "== $pct% of the chunks: $k of $nchunks"
	for round in $(seq 1 "$ROUNDS"); do
		change "$((pct * 100 + round))" "$k"
		backup incremental $cur "$w.inc.r$round"
		check_map "$w.inc.r$round" incremental $((k * CH))
		rec incremental "$w" "$round" incremental "$w.inc.r$round" "changed_chunks=$k"
		device_reads "$w.dev.r$round"
		rec device "$w" "$round" device "$w.dev.r$round" "changed_chunks=$k" "tool_secs=$FIO_SECS"
		rm -f "/mnt/img/$other" "/mnt/img/$other.fleece.json"
		backup full $other "$w.full.r$round"
		check_map "$w.full.r$round" full $((MIB * 1048576))
		rec full "$w" "$round" full "$w.full.r$round" "changed_chunks=$k"
		log "round $round: full $(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.2f", b - a }') s"
		swap
	done

	# The writer's round: peaks and the images checked.
	[ "$WITH_WRITER" != 0 ] || continue
	w=writer-${pct}pct
	change "$((pct * 100 + 99))" "$k"
	ref=$(origin_sum)
	start_writer "$RAW/$w.inc.writer.json"
	start_sampler "$RAW/$w.inc.samples"
	backup incremental $cur "$w.inc"
	stop_sampler
	kill_writer
	check_map "$w.inc" incremental $((k * CH))
	assert_eq "$(image_sum $cur)" "$ref" "$w: the incremental image against the origin at the point in time"
	log "$w: incremental image verified ($ref)"
	rec incremental "$w" 1 incremental "$w.inc" "changed_chunks=$k" \
		"samples=\"$RAWREL/$w.inc.samples\"" "writer=\"$RAWREL/$w.inc.writer.json\"" "verified=true"
	ref=$(origin_sum)
	rm -f "/mnt/img/$other" "/mnt/img/$other.fleece.json"
	start_writer "$RAW/$w.full.writer.json"
	start_sampler "$RAW/$w.full.samples"
	backup full $other "$w.full"
	stop_sampler
	kill_writer
	check_map "$w.full" full $((MIB * 1048576))
	assert_eq "$(image_sum $other)" "$ref" "$w: the full image against the origin at the point in time"
	log "$w: full image verified ($ref)"
	rec full "$w" 1 full "$w.full" "changed_chunks=$k" \
		"samples=\"$RAWREL/$w.full.samples\"" "writer=\"$RAWREL/$w.full.writer.json\"" "verified=true"
	swap
	# Take up the writer's writes: an incremental with -v, each message
	# stamped with the guest's clock (where the time of a backup goes: the
	# setup before "reading", the read, the teardown after "complete").
	log "take up the writer's writes (timeline of an incremental with -v)"
	# The writer changed most chunks: the clone's copies could need as
	# much room as the image; the other image is not needed.
	rm -f "/mnt/img/$other" "/mnt/img/$other.fleece.json"
	udevadm settle --timeout=30
	sync
	sleep 1
	T0=$(date +%s.%N)
	$F backup incorig --fleece-dir $FDIR -o "/mnt/img/$cur" --incremental --progress none -v \
		--changed-map "$RAW/$w.absorb.map.json" 2>&1 |
		while IFS= read -r l; do echo "$(date +%s.%N) $l"; done > "$RAW/$w.absorb.timeline"
	T1=$(date +%s.%N)
	cat "$RAW/$w.absorb.timeline"
	MAP=$RAW/$w.absorb.map.json
	assert_eq "$(map_num "$MAP" incremental)" true "$w.absorb: the map's kind"
	rec incremental "diag-${pct}pct" 1 incremental "$w.absorb" "timeline=\"$RAWREL/$w.absorb.timeline\""
done
$F track stop incorig
umount /mnt/img /mnt/fdir
trap - EXIT
dm_remove incorig incimg incstore
[ "$RD_MIB" = 1024 ] || brd_load 1024

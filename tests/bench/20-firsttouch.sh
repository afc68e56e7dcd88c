#!/bin/bash
# Benchmark 2, first touch: every write needs a copy-before-write.
#
# 4 KiB writes, one at the start of each chunk of a region (256 MiB for
# 64 KiB chunks: 4096 writes; 512 MiB for 1 MiB chunks: 512 writes), every
# chunk exactly once, in a random order (a fio iolog replayed at iodepth 16
# with libaio and O_DIRECT: fio 3.33's own random map cannot give "each
# chunk once" with blockalign, it repeats offsets).  Chunk sizes 64 KiB and
# 1 MiB.  Cases, all on the same origin "base" (dm-linear on /dev/ram0), so
# that every stack is two device-mapper layers above the ram disk:
#
#   fleece   fleece base /dev/ram1 <chunk>, with a fleece-view on it
#   snap-N   snapshot-origin base + snapshot base /dev/ram2 N <chunk>
#   snap-P   snapshot-origin base + snapshot base /dev/ram2 P <chunk>
#
# Every round starts each case afresh (a new point in time), round-robin
# over the cases in a rotated order; the same random order of chunks is
# used by every case of a round.
#
# On the virtio disk each record also holds the requests the disk completed
# during the job (disk_ios): every case needs the same three per write
# (read the old chunk, write it to the copy, write the new data), so equal
# disk requests per second mean the disk, not the target, sets the pace.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
. "$SRC/tests/bench/bench.lib"

QD=16
MIB=512		# the largest region
len=$((MIB * 2048))

log "prefill the ram disks (brd allocates pages on first write)"
fill $D0 $MIB
fill $D1 $MIB
fill $D2 $((MIB + 64))
dmsetup create base --table "0 $len linear $D0 0"
udevadm settle

# A fio iolog: a 4 KiB write at the start of every chunk, in an order
# shuffled reproducibly from the seed.
mklog() { # file region_MiB chunk_bytes seed
	{
		printf 'fio version 2 iolog\ndev add\ndev open\n'
		seq 0 $(($2 * 1048576 / $3 - 1)) |
			shuf --random-source=<(yes "seed $4") |
			awk -v cb="$3" '{ printf "dev write %d 4096\n", $1 * cb }'
		printf 'dev close\n'
	} > "$1"
}

setup() { # case chunk_sectors -> prints the device to write
	case $1 in
	fleece-*)
		dmsetup create ft --table "0 $len fleece /dev/mapper/base $D1 $2"
		dmsetup create fv --table "0 $len fleece-view /dev/mapper/base $D1"
		echo /dev/mapper/ft ;;
	snap-*)
		local mode=${1#snap-}
		mode=${mode%%-*}
		# A new persistent store needs a zeroed header.
		dd if=/dev/zero of=$D2 bs=$(($2 * 512)) count=4 oflag=direct status=none
		dmsetup create snap --table "0 $len snapshot /dev/mapper/base $D2 $mode $2"
		dmsetup create so --table "0 $len snapshot-origin /dev/mapper/base"
		echo /dev/mapper/so ;;
	esac
	udevadm settle
}

status_of() { # case disk_ios
	case $1 in
	fleece-*) fleece_json ft ;;
	snap-*) dmsetup status snap | awk '{ printf "{\"snapshot_status\": \"%s %s\"}", $4, $5 }' ;;
	esac | sed "s/}\$/, \"disk_ios\": $2}/"
}

# Reads and writes the virtio disk completed so far (null on ram disks,
# whose stat counts nothing).
disk_ios() {
	if [ -n "$BENCH_DISK" ]; then
		awk '{ print $1 + $5 }' "/sys/block/$BENCH_DISK/stat"
	else
		echo null
	fi
}

teardown_case() { # case
	case $1 in
	fleece-*) dm_remove fv ft ;;
	snap-*) dm_remove so snap ;;
	esac
	udevadm settle
}

for round in $(seq 1 "$ROUNDS"); do
	for cs in 64k 1m; do
		case $cs in
		64k) sectors=128 mib=256 ;;
		1m) sectors=2048 mib=512 ;;
		esac
		nchunks=$((mib * 2048 / sectors))
		mklog "iolog.$cs.$round" $mib $((sectors * 512)) "$round"
		for c in $(rotate "$round" fleece-$cs snap-N-$cs snap-P-$cs); do
			dev=$(setup "$c" $sectors)
			log "round $round: $c ($nchunks chunks) on $dev"
			json=$RAW/$c.firsttouch-4k-qd$QD.r$round.json
			ios0=$(disk_ios)
			fio "${FIO_COMMON[@]}" --output="$json" --name=firsttouch \
				--read_iolog="iolog.$cs.$round" --replay_redirect="$dev" \
				--iodepth=$QD
			ios1=$(disk_ios)
			[ "$ios0" = null ] || ios1=$((ios1 - ios0))
			extra=$(status_of "$c" "$ios1")
			log "$c: $extra"
			record_fio "$c" firsttouch-4k-qd$QD "$round" "$json" "" "$extra"
			if [[ $c == fleece-* ]]; then
				assert_eq "$(status_field ft 5)" "$nchunks" "$c: one copy per chunk"
			fi
			teardown_case "$c"
		done
	done
done

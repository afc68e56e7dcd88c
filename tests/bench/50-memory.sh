#!/bin/bash
# Benchmark 5, memory: kernel memory of a fleece over a 1 TiB origin with
# 64 KiB chunks (16 Mi chunks).  Origin and fleece device are dm "zero"
# devices of 1 TiB each: no memory behind them.
#
# Static cost, from /proc/meminfo before and after creating the table (after
# udev settled and caches were dropped), each round in a rotated order:
#   linear-1t     dm-linear over the 1 TiB zero device (what any dm device costs)
#   fleece-1t     fleece, 1 TiB, 64 KiB chunks: 16777216 chunks
#   fleece-1g     fleece, 1 GiB, 64 KiB chunks: 16384 chunks
#   fleece-1t-4k  fleece, 1 TiB, 4 KiB chunks: 268435456 chunks
#   fleece-1t-view  fleece 1 TiB + its fleece-view
# Reported: delta of SUnreclaim + VmallocUsed (where a kvmalloc'ed bitmap
# lands: kmalloc up to 4 MiB, vmalloc beyond), delta of MemFree
# (everything, noisier), the dm_fleece lines of /proc/vmallocinfo, and the
# cost per chunk as a slope: between 4 KiB and 64 KiB chunks on 1 TiB
# (252 Mi chunks apart: slab noise of some KiB is negligible), and between
# 1 TiB and 1 GiB at 64 KiB.
#
# In-flight buffers: the lowest MemFree while 4 KiB random writes at
# iodepth 256 hit pending chunks (each one a copy-before-write) for $RT s,
# relative to MemFree just before fio starts: inflight-64k-qd256,
# inflight-1m-qd256;
# and the same on a dm-linear (inflight-linear-qd256: fio's own memory),
# which the report subtracts, round by round.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
. "$SRC/tests/bench/bench.lib"

RT=3
TIB=$((1 << 31))	# sectors
GIB=$((1 << 21))

dmsetup create z-origin --table "0 $TIB zero"
dmsetup create z-fleece --table "0 $TIB zero"
udevadm settle

create_case() { # case
	case $1 in
	linear-1t) dmsetup create m --table "0 $TIB linear /dev/mapper/z-origin 0" ;;
	fleece-1t) dmsetup create m --table "0 $TIB fleece /dev/mapper/z-origin /dev/mapper/z-fleece 128" ;;
	fleece-1g) dmsetup create m --table "0 $GIB fleece /dev/mapper/z-origin /dev/mapper/z-fleece 128" ;;
	fleece-1t-4k) dmsetup create m --table "0 $TIB fleece /dev/mapper/z-origin /dev/mapper/z-fleece 8" ;;
	fleece-1t-view)
		dmsetup create m --table "0 $TIB fleece /dev/mapper/z-origin /dev/mapper/z-fleece 128"
		dmsetup create mv --table "0 $TIB fleece-view /dev/mapper/z-origin /dev/mapper/z-fleece" ;;
	esac
}

sample_memfree() {
	local m
	rm -f memfree.fifo
	mkfifo memfree.fifo
	exec 9<> memfree.fifo
	while :; do
		mapfile -n 2 m < /proc/meminfo
		m=${m[1]#MemFree:}
		echo "${m% kB*}"
		read -r -t 0.02 -u 9 || true
	done
}

remove_case() {
	if [ "$1" = fleece-1t-view ]; then dm_remove mv; fi
	dm_remove m
	udevadm settle
}

for round in $(seq 1 "$ROUNDS"); do
	for c in $(rotate "$round" linear-1t fleece-1t fleece-1g fleece-1t-4k fleece-1t-view); do
		settle
		before=$(meminfo)
		create_case "$c"
		settle
		after=$(meminfo)
		vm=$RAWREL/$c.r$round.vmallocinfo
		grep -a 'dm_fleece' /proc/vmallocinfo > "$OUT/$vm" || true
		chunks=0
		[[ $c == linear-* ]] || chunks=$(status_field m 1)
		log "round $round: $c: chunks $chunks, before $before, after $after"
		record "$c" static "$round" "chunks=$chunks" "before=$before" \
			"after=$after" "vmallocinfo=\"$vm\""
		remove_case "$c"
	done
	for c in $(rotate "$round" inflight-64k-qd256 inflight-1m-qd256 inflight-linear-qd256); do
		case $c in
		inflight-64k-*) table="fleece /dev/mapper/z-origin /dev/mapper/z-fleece 128" ;;
		inflight-1m-*) table="fleece /dev/mapper/z-origin /dev/mapper/z-fleece 2048" ;;
		*) table="linear /dev/mapper/z-origin 0" ;;
		esac
		dmsetup create m --table "0 $TIB $table"
		udevadm settle
		fio --version > /dev/null	# its libraries in the page cache
		before=$(meminfo)
		# Sample MemFree every 20 ms, without forking (a fork and exec
		# per sample moves MemFree by MiBs): bash builtins only, the
		# pause is a read with a timeout on a fifo nobody writes.
		samples=$RAW/$c.r$round.memfree
		: > "$samples"
		sample_memfree >> "$samples" &
		spid=$!
		sleep 1
		echo start >> "$samples"
		json=$RAW/$c.randwrite-4k-qd256.r$round.json
		fio "${FIO_COMMON[@]}" --output="$json" --name=inflight \
			--filename=/dev/mapper/m --rw=randwrite --bs=4k --iodepth=256 \
			--norandommap=1 --randrepeat=0 --time_based=1 --runtime=$RT
		sleep 0.5
		kill "$spid"
		wait "$spid" 2>/dev/null || true
		st='{}'
		[[ $c == inflight-linear-* ]] || st=$(fleece_json m)
		log "round $round: $c: $st"
		record_fio "$c" randwrite-4k-qd256 "$round" "$json" "" \
			"{\"fleece\": $st, \"before\": $before, \"memfree_samples\": \"$RAWREL/$c.r$round.memfree\"}"
		dm_remove m
		udevadm settle
	done
done

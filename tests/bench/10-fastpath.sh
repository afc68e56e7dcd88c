#!/bin/bash
# Benchmark 1, fast path: writes to chunks that are already copied or
# released take no lock and do no copy.  fleece vs dm-linear on the same
# ram disk, each one device-mapper layer above it:
#
#   linear          linear  /dev/ram0                        (the baseline)
#   fleece-64k-cp   fleece  /dev/ram0 /dev/ram1 128   every chunk copied
#   fleece-64k-rel  fleece  /dev/ram0 /dev/ram2 128   every chunk released
#   fleece-1m-cp    fleece  /dev/ram0 /dev/ram3 2048  every chunk copied
#   split-64k       striped 1 128 /dev/ram0 0: dm-stripe with one stripe,
#                   i.e. dm-linear that dm core splits at every 64 KiB: a
#                   control, the price of cutting 1 MiB bios at every chunk
#                   (the fleece target cuts bios only at pending chunks)
#
# Workloads (libaio, O_DIRECT, over the whole $MIB MiB region, $RT s after
# 0.5 s of ramp): 4 KiB random writes at iodepth 16; 1 MiB sequential writes
# at iodepth 4.  Two fio runs:
#  - one job after the other (stonewall): for each round, for each
#    workload, the cases in an order rotated each round;
#  - paired (workloads *-paired): each case at the same time as a dm-linear
#    job, one on each vCPU, so that whatever slows the host down slows both
#    alike; which of the two is listed first alternates.  Runs a few seconds
#    apart differ by up to 2x under TCG, runs side by side much less.
# At the end no copy may have happened.
. "$SRC/tests/lib.sh"
. "$SRC/tests/bench/bench.lib"

MIB=512
RT=2
ROUNDS=10	# short runs, many rounds: the ratios pair neighbouring runs,
		# and runs a few seconds apart differ by up to 2x under TCG
len=$((MIB * 2048))
CASES=(linear fleece-64k-cp fleece-64k-rel fleece-1m-cp split-64k)

log "prefill $D0 (brd allocates pages on first write)"
fill $D0 $MIB

dmsetup create linear --table "0 $len linear $D0 0"
dmsetup create split-64k --table "0 $len striped 1 128 $D0 0"
dmsetup create fleece-64k-cp --table "0 $len fleece $D0 $D1 128"
dmsetup create fleece-64k-rel --table "0 $len fleece $D0 $D2 128"
dmsetup create fleece-1m-cp --table "0 $len fleece $D0 $D3 2048"
dmsetup create view-64k-rel --table "0 $len fleece-view $D0 $D2"
udevadm settle

log "copy every chunk (write the whole region through the fleece targets)"
fill /dev/mapper/fleece-64k-cp $MIB
fill /dev/mapper/fleece-1m-cp $MIB
log "release every chunk (discard the whole view)"
blkdiscard /dev/mapper/view-64k-rel
dm_remove view-64k-rel	# udev would probe it, and read released chunks
udevadm settle
for d in fleece-64k-cp fleece-64k-rel fleece-1m-cp; do
	log "$d: $(fleece_json $d)"
	assert_eq "$(status_field $d 2)" 0 "$d: chunks pending"
done

workload_opts() { # workload
	case $1 in
	randwrite-4k-qd16) printf 'rw=randwrite\nbs=4k\niodepth=16\nnorandommap=1\nrandrepeat=0\n' ;;
	write-1m-qd4) printf 'rw=write\nbs=1M\niodepth=4\n' ;;
	esac
}
{
	fio_timed_global
	for round in $(seq 1 "$ROUNDS"); do
		for w in randwrite-4k-qd16 write-1m-qd4; do
			for c in $(rotate "$round" "${CASES[@]}"); do
				printf '[%s.%s.r%d]\nstonewall\nfilename=/dev/mapper/%s\n' \
					"$c" "$w" "$round" "$c"
				workload_opts "$w"
			done
		done
	done
} > fastpath.fio
run_jobfile fastpath randwrite-4k-qd16 write-1m-qd4

# Pair k of round P is round 10P+k of both its jobs: the report divides
# the case by the dm-linear job of the same round, i.e. the one beside it.
PAIRED=(fleece-64k-cp fleece-64k-rel fleece-1m-cp split-64k)
PROUNDS=5
{
	fio_timed_global
	for round in $(seq 1 "$PROUNDS"); do
		k=0
		for c in $(rotate "$round" "${PAIRED[@]}"); do
			k=$((k + 1))
			for w in randwrite-4k-qd16 write-1m-qd4; do
				pair=(linear "$c")
				[ $(((round + k) % 2)) = 0 ] || pair=("$c" linear)
				printf '[%s.%s-paired.r%d]\nstonewall\nfilename=/dev/mapper/%s\n' \
					"${pair[0]}" "$w" $((round * 10 + k)) "${pair[0]}"
				workload_opts "$w"
				printf '[%s.%s-paired.r%d]\nfilename=/dev/mapper/%s\n' \
					"${pair[1]}" "$w" $((round * 10 + k)) "${pair[1]}"
				workload_opts "$w"
			done
		done
	done
} > paired.fio
cp paired.fio "$RAW/"
log "fio: $(grep -c '^\[.*\.r' paired.fio) jobs of ${RT}s, two at a time"
fio --output-format=json --output="$RAW/paired.json" paired.fio
log "fio done"
for round in $(seq 1 "$PROUNDS"); do
	k=0
	for c in $(rotate "$round" "${PAIRED[@]}"); do
		k=$((k + 1))
		for w in randwrite-4k-qd16 write-1m-qd4; do
			for x in linear "$c"; do
				record_fio "$x" "$w-paired" $((round * 10 + k)) "$RAW/paired.json" \
					"$x.$w-paired.r$((round * 10 + k))"
			done
		done
	done
done

for d in fleece-64k-cp fleece-64k-rel fleece-1m-cp; do
	log "$d after: $(fleece_json $d)"
done
# The fast path did no copy.
assert_eq "$(status_field fleece-64k-cp 5)" $((MIB * 16)) "fleece-64k-cp: cbw_count"
assert_eq "$(status_field fleece-64k-rel 5)" 0 "fleece-64k-rel: cbw_count"
assert_eq "$(status_field fleece-1m-cp 5)" "$MIB" "fleece-1m-cp: cbw_count"

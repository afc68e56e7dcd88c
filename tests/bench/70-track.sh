#!/bin/bash
# Benchmark 7, change tracking: what fleece-track costs writers, against
# dm-linear on the same ram disk, each one device-mapper layer above it:
#
#   linear   linear       /dev/ram0 0
#   track    fleece-track /dev/ram0 0 <store: a slice of /dev/ram1> 128 (64 KiB chunks)
#
# (a) Marked chunks (the steady state between backups): every chunk of the
#     region was written once in this epoch, so each write passes after one
#     lock-free bitmap test.  4 KiB random writes at iodepth 16 and 1 MiB
#     sequential writes at iodepth 4, $RT s each, rounds interleaved and
#     rotated as in 10-fastpath.  No commit may happen meanwhile.
# (b) First write to a chunk per epoch: each round starts a new epoch
#     (suspend, checkpoint, backup_done, resume: every chunk unmarked), then
#     writes every chunk once: a 4 KiB write at the start of each chunk in
#     a random order at iodepth 16 (an iolog, as 20-firsttouch), or the
#     whole region in 1 MiB sequential writes at iodepth 4.  Each write
#     waits for its marks to be durable (group commits: one FUA write of
#     each changed bitmap block for every first write gathered meanwhile;
#     "Commit batching" in the rst).  dm-linear runs the same I/O.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
. "$SRC/tests/bench/bench.lib"

MIB=256
RT=2
CHUNK=128
len=$((MIB * 2048))
nchunks=$((len / CHUNK))
QD=16

log "prefill $D0 and $D1 (brd allocates pages on first write)"
fill $D0 $MIB
fill $D1 16
dd if=/dev/zero of=$D1 bs=64k count=16 oflag=direct status=none	# a blank store
dmsetup create tstore --table "0 2048 linear $D1 0"
dmsetup create linear --table "0 $len linear $D0 0"
dmsetup create track --table "0 $len fleece-track $D0 0 /dev/mapper/tstore $CHUNK bench-track 1 format"
udevadm settle

track_json() { # the status fields that matter here, as JSON
	dmsetup status track | awk '{ printf "{\"epoch\": %s, \"changed\": %s, \"history\": \"%s\", \"commits\": %s, \"store_errors\": %s}", $6, $7, $11, $15, $14 }'
}

new_epoch() {
	dmsetup suspend track
	dmsetup message track 0 checkpoint
	dmsetup message track 0 backup_done
	dmsetup resume track
	assert_eq "$(status_field track 3)" 0 "chunks changed in a new epoch"
}

# --- (a) marked chunks ------------------------------------------------------
log "(a) mark every chunk: write the whole region through the tracker"
fill /dev/mapper/track $MIB
assert_eq "$(status_field track 3)" "$nchunks" "chunks changed after the fill"
commits0=$(status_field track 11)
log "track before (a): $(track_json)"
ROUNDS=10
CASES=(linear track)
{
	fio_timed_global
	# The first jobs of a run come out slow (see 10-fastpath): not recorded.
	cat <<-EOF
	[warmup]
	stonewall
	filename=/dev/mapper/linear
	rw=randwrite
	bs=4k
	iodepth=16
	runtime=5
	EOF
	for round in $(seq 1 "$ROUNDS"); do
		for c in $(rotate "$round" "${CASES[@]}"); do
			cat <<-EOF
			[$c.marked-randwrite-4k-qd16.r$round]
			stonewall
			filename=/dev/mapper/$c
			rw=randwrite
			bs=4k
			iodepth=16
			norandommap=1
			randrepeat=0
			EOF
		done
		for c in $(rotate "$round" "${CASES[@]}"); do
			cat <<-EOF
			[$c.marked-write-1m-qd4.r$round]
			stonewall
			filename=/dev/mapper/$c
			rw=write
			bs=1M
			iodepth=4
			EOF
		done
	done
} > marked.fio
run_jobfile marked marked-randwrite-4k-qd16 marked-write-1m-qd4
log "track after (a): $(track_json)"
assert_eq "$(status_field track 11)" "$commits0" "commits during writes to marked chunks"

# --- (b) first write per chunk per epoch ------------------------------------
mklog() { # file seed: a 4 KiB write at the start of every chunk, shuffled
	{
		printf 'fio version 2 iolog\ndev add\ndev open\n'
		seq 0 $((nchunks - 1)) |
			shuf --random-source=<(yes "seed $2") |
			awk -v cb=$((CHUNK * 512)) '{ printf "dev write %d 4096\n", $1 * cb }'
		printf 'dev close\n'
	} > "$1"
}
ROUNDS=${BENCH_ROUNDS:-3}
for round in $(seq 1 "$ROUNDS"); do
	mklog "iolog.$round" "$round"
	for w in firstwrite-4k-qd$QD firstwrite-1m-qd4; do
		for c in $(rotate "$round" linear track); do
			[ $c = linear ] || new_epoch
			c0=$(status_field track 11)
			json=$RAW/$c.$w.r$round.json
			case $w in
			firstwrite-4k-*)
				fio "${FIO_COMMON[@]}" --output="$json" --name=$w \
					--read_iolog="iolog.$round" --replay_redirect=/dev/mapper/$c \
					--iodepth=$QD ;;
			firstwrite-1m-*)
				fio "${FIO_COMMON[@]}" --output="$json" --name=$w \
					--filename=/dev/mapper/$c --rw=write --bs=1M --iodepth=4 \
					--size=${MIB}M ;;
			esac
			extra=null
			if [ $c = track ]; then
				assert_eq "$(status_field track 3)" "$nchunks" "$w: chunks changed after writing each once"
				extra=$(track_json | sed "s/}\$/, \"commits_during\": $(($(status_field track 11) - c0))}/")
				log "round $round $w: $extra"
			fi
			record_fio "$c" "$w" "$round" "$json" "" "$extra"
		done
	done
done
assert_eq "$(status_field track 7)" valid "the tracker's history at the end"
dm_remove track linear tstore

#!/bin/bash
# Benchmark 4, backup read: reading the view vs a raw read of the origin,
# O_DIRECT, 1 MiB, sequential, iodepth 1.
#
# fio, $RT s after 0.5 s of ramp, over the whole $MIB MiB region (it wraps):
#   raw-origin        the origin's first $MIB MiB ("raw", dm-linear on ram0,
#                     as "base", the 1 GiB origin of the fleece tables, whose
#                     regions are slices of it of their own: fleece tables
#                     may not overlap on one origin device)
#   view-64k          the view of a fleece with 64 KiB chunks, all pending
#                     (reads go to the origin, tracked against CBW)
#   view-1m           the same with 1 MiB chunks
#   view-64k-copied   every chunk copied: reads come from the fleece device
#   split-64k         control: dm-stripe with one stripe and 64 KiB chunks on
#                     ram0, i.e. the raw read as dm core splits it at every
#                     64 KiB: what a view read would cost if it were cut at
#                     every chunk (it is not: runs of chunks go down whole)
#   linear-on-base    control: dm-linear on "base", i.e. the raw read through
#                     one more dm layer, as view reads of pending chunks go
#                     (view -> base -> ram0)
# The whole origin (1 GiB, "base") once, output /dev/null, timed by each
# program itself (dd's summary, fleece read's summary):
#   raw-origin-reader `dd iflag=direct bs=4M` of the origin itself
#   view-64k-backup   `tools/fleece read` of the view of a new fleece (64 KiB
#                     chunks): 4 MiB O_DIRECT reads to stdout, discarding each
#                     block on the view once written, as `fleece backup` does
# (`fleece read` only reads views, hence dd for the raw read).
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
. "$SRC/tests/bench/bench.lib"

MIB=256		# four fleece tables on slices of the 1 GiB /dev/ram0 (base):
		# fleece tables may not overlap on one origin device
RT=3
ROUNDS=6	# more rounds than elsewhere: on the host's clock, runs a few seconds
		# apart differ by up to 30%, and the ratios pair neighbours
len=$((MIB * 2048))

log "prefill the ram disks (brd allocates pages on first write)"
fill $D0 $((4 * MIB))
fill $D1 $MIB
fill $D3 $MIB
dmsetup create base --table "0 $((4 * len)) linear $D0 0"
dmsetup create raw --table "0 $len linear $D0 0"
dmsetup create split-64k --table "0 $len striped 1 128 $D0 0"
dmsetup create linear-on-base --table "0 $len linear /dev/mapper/base 0"
# First the copied one: filling it writes the origin.
dmsetup create fo-64k-copied --table "0 $len fleece /dev/mapper/base $D3 128"
fill /dev/mapper/fo-64k-copied $MIB
dmsetup create view-64k-copied --table "0 $len fleece-view /dev/mapper/base $D3"
dmsetup create fo-64k --table "0 $len fleece /dev/mapper/base $D1 128 2 origin_offset $len"
dmsetup create view-64k --table "0 $len fleece-view /dev/mapper/base $D1"
# Two fleece devices that nothing is copied to (no writer): dm-zero, as
# the four ram disks of 1 GiB are taken.
dmsetup create fl-1m --table "0 $len zero"
dmsetup create fl-bk --table "0 $((4 * len)) zero"
dmsetup create fo-1m --table "0 $len fleece /dev/mapper/base /dev/mapper/fl-1m 2048 2 origin_offset $((2 * len))"
dmsetup create view-1m --table "0 $len fleece-view /dev/mapper/base /dev/mapper/fl-1m"
udevadm settle
for d in fo-64k-copied fo-64k fo-1m; do log "$d: $(fleece_json $d)"; done

dev_of() {
	case $1 in
	raw-origin) echo /dev/mapper/raw ;;
	*) echo "/dev/mapper/$1" ;;
	esac
}

find_fleece_tool read
[ -n "$FLEECE" ] || fail "tools/fleece has no read command"
log "whole-device reads: fleece read on the view, dd on the origin"

# Each program's own time, from its first read to its last write: program
# start (slow over 9p, and under icount a jump of the clock) is not in it.
reader() { # case round dev [--no-discard]
	local c=$1 round=$2 dev=$3 out secs how
	shift 3
	udevadm settle
	if [ "${1:-}" = --no-discard ]; then
		how=dd
		dd if="$dev" of=/dev/null bs=4M iflag=direct 2> reader.err ||
			{ cat reader.err; fail "$c: dd failed"; }
		secs=$(sed -n 's/.* copied, \([0-9.e-]*\) s, .*/\1/p' reader.err)
	else
		how="fleece read"
		"$FLEECE" read -p none "$dev" -o - > /dev/null 2> reader.err ||
			{ cat reader.err; fail "$c: fleece read failed"; }
		secs=$(sed -n 's/.* read complete: .* in \([0-9.]*\) s (.*/\1/p' reader.err)
	fi
	[ -n "$secs" ] || { cat reader.err; fail "$c: no time in the output of $how"; }
	out=$(awk -v b="$(blockdev --getsize64 "$dev")" -v s="$secs" -v how="$how" \
		'BEGIN { printf "{\"tool\": \"%s\", \"bytes\": %d, \"seconds\": %.3f, \"MBps\": %.2f}", how, b, s, b / s / 1e6 }')
	log "round $round: $c: $out"
	record "$c" read-1m-whole "$round" "reader=$out"
}

CASES=(raw-origin view-64k view-1m view-64k-copied split-64k linear-on-base)
{
	fio_timed_global
	echo "rw=read"
	echo "bs=1M"
	echo "iodepth=1"
	for round in $(seq 1 "$ROUNDS"); do
		for c in $(rotate "$round" "${CASES[@]}"); do
			printf '[%s]\nstonewall\nfilename=%s\n' "$c.read-1m-qd1.r$round" "$(dev_of "$c")"
		done
	done
} > read.fio
run_jobfile read read-1m-qd1

for d in fo-64k-copied fo-64k fo-1m; do log "$d: $(fleece_json $d)"; done

# The whole-device reads cover all of "base" (1 GiB, as before origin
# slices): the other fleece tables go first, so that this one overlaps none.
for d in view-64k-copied view-64k view-1m fo-64k-copied fo-64k fo-1m; do dm_remove $d; done
BK=$((4 * len))
for round in $(seq 1 "$ROUNDS"); do
	for c in $(rotate "$round" raw-origin-reader view-64k-backup); do
		if [ "$c" = raw-origin-reader ]; then
			reader "$c" "$round" /dev/mapper/base --no-discard
		else
			dmsetup create fo-bk --table "0 $BK fleece /dev/mapper/base /dev/mapper/fl-bk 128"
			dmsetup create view-bk --table "0 $BK fleece-view /dev/mapper/base /dev/mapper/fl-bk"
			reader "$c" "$round" /dev/mapper/view-bk
			assert_eq "$(status_field fo-bk 4)" $((BK / 128)) "$c: all chunks released"
			dm_remove view-bk
			dm_remove fo-bk
		fi
	done
done

#!/bin/bash
# Benchmark 3, writers during a backup: origin writers (4 KiB random
# writes, iodepth 16, libaio, O_DIRECT, $RT s) while a backup reads the view
# from start to end (O_DIRECT), writes it out, and discards on the view
# what it wrote (releasing those chunks).  64 KiB chunks, $MIB MiB origin
# "base" (dm-linear on ram0), fleece device /dev/ram1.  Two workloads:
#
#   randwrite-4k-qd16       uniform over the whole origin: the worst case,
#                           nearly every chunk gets its first touch
#   randwrite-4k-qd16-zipf  zipf(1.1): a hot set that takes most writes,
#                           as in most real workloads
#
# Cases, each round from a new point in time:
#
#   backup-10MBps     the backup's output runs at 10 MB/s: a slow target
#   backup-unlimited  the output takes whatever comes (/dev/null)
#   no-backup         a fleece, but no reader: every chunk the writers touch
#                     is copied, none released (reference)
#
# The window is the whole slow backup: $MIB MiB at 10 MB/s take about
# 6.7 s, and the writers run $RT s in every case, so every copy the slow
# backup causes falls inside the window (the bench fails if that backup
# does not finish in it).  A copy-before-write happens at most once per
# chunk, before the reader gets there, so over a whole backup the copies
# are bounded by the backup's own rate (10 MB/s of 64 KiB chunks: 160
# copies/s on average); a window that ends mid-backup, with the unthrottled
# backup long done, would price the first touches of a larger device
# against none.  The unthrottled backup ends within a second; its writers
# spend the rest of the window on the bare device.
#
# The backup is `tools/fleece backup`: it starts the fleece on "base"
# (table swap), reads the view in its default 4 MiB blocks to stdout
# (/dev/null here), discards, stops; `--rate 10000000` makes it read, write
# and release at most 10^6 * 10 bytes per second, i.e. a target that takes
# 10 MB/s.  The writers and the backup start together: fio sets up, then
# waits in exec_prerun for the view to appear.
#
# Wanted: writer IOPS with the 10 MB/s target / with the unthrottled one.
#
# Then the same question for the module alone (uniform writers only), so
# that the tool's own costs show apart.  "base" is one linear target, so
# `fleece start` puts the fleece target in its place, on ram0 at the same
# offset: no dm layer is added (a table of any other shape moves to a
# hidden origin NAME-fleece-origin under the fleece target: one more
# layer).  Every start and stop still swaps a table and makes udev events.
# Here a fleece and its view are made by hand directly on ram0, the writers
# write that fleece, and `tools/fleece read` reads the view (10 MB/s, or
# unthrottled), releasing what it read; nothing is swapped.  Controls:
#
#   bare              the writers on "base" (dm-linear on ram0), no fleece
#   linear-on-base    the writers on a dm-linear over "base": the price of
#                     the layer a hidden origin adds
#   view-read-10MBps  hand-made fleece, `fleece read --rate 10000000`
#   view-read-unlimited  the same, unthrottled
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
. "$SRC/tests/bench/bench.lib"

MIB=64
RT=8
len=$((MIB * 2048))
export FLEECE_STATE_DIR=/run/fleece-bench

log "prefill the ram disks (brd allocates pages on first write)"
fill $D0 $MIB
fill $D1 $MIB
dmsetup create base --table "0 $len linear $D0 0"
udevadm settle

find_fleece_tool backup
[ -n "$FLEECE" ] || fail "tools/fleece has no backup command"

WRITERS=(--name=writers --rw=randwrite --bs=4k --iodepth=16 --norandommap=1
	--randrepeat=0 --size=${MIB}M --time_based=1 --runtime=$RT)
declare -A DIST=([randwrite-4k-qd16]=random [randwrite-4k-qd16-zipf]=zipf:1.1)

# Start the writers on DEV and wait until fio has set up: it then waits in
# exec_prerun until GATE exists (at most 60 s) before its clock starts.
# Sets WPID.
writers_start() { # dev distribution json gate
	rm -f ready
	fio "${FIO_COMMON[@]}" --output="$3" "${WRITERS[@]}" --filename="$1" \
		--random_distribution="$2" \
		--exec_prerun="sh -c 'touch $PWD/ready; i=0; while [ ! -e $4 ] && [ \$i -lt 6000 ]; do sleep 0.01; i=\$((i + 1)); done'" &
	WPID=$!
	while [ ! -e ready ] && kill -0 "$WPID" 2>/dev/null; do sleep 0.05; done
}

# One round of one case with tools/fleece.
run_tool() { # case workload round json
	local c=$1 w=$2 round=$3 json=$4 bpid= brc=none st
	local view=/dev/mapper/base-fleece-view
	writers_start /dev/mapper/base "${DIST[$w]}" "$json" "$view"
	local fpid=$WPID
	case $c in
	backup-10MBps)
		"$FLEECE" backup -p none -d $D1 --rate 10000000 base -o - > /dev/null 2> backup.err &
		bpid=$! ;;
	backup-unlimited)
		"$FLEECE" backup -p none -d $D1 base -o - > /dev/null 2> backup.err &
		bpid=$! ;;
	no-backup)
		"$FLEECE" start -q -d $D1 base ;;
	esac
	wait "$fpid"
	st=$(dmsetup status base | awk '$3 == "fleece" { printf "{\"pending\": %s, \"copied\": %s, \"released\": %s, \"cbw_count\": %s, \"cbw_errors\": %s, \"state\": \"%s\"}", $6, $7, $8, $9, $10, $11 }')
	[ -n "$st" ] || st='"stopped"'
	local finished=null copies=null
	if [ -n "$bpid" ]; then
		kill -0 "$bpid" 2>/dev/null && fail "$c: the backup did not finish within the $RT s window"
		finished=true
		wait "$bpid" && brc=0 || brc=$?
		[ "$brc" = 0 ] || { cat backup.err; fail "$c: fleece backup failed (exit $brc)"; }
		copies=$(sed -n 's/.* \([0-9]*\) chunks copied before they were read.*/\1/p' backup.err)
		[ -n "$copies" ] || { cat backup.err; fail "$c: no summary from fleece backup"; }
	else
		"$FLEECE" stop -q base
	fi
	assert_eq "$(dmsetup table base | awk '{ print $3 }')" linear "$c: base is linear again"
	EXTRA="{\"tool\": \"fleece backup\", \"fleece_at_end\": $st, \"backup_finished_in_window\": $finished, \"backup_exit\": \"$brc\", \"backup_copies\": $copies}"
}

for round in $(seq 1 "$ROUNDS"); do
	for w in randwrite-4k-qd16 randwrite-4k-qd16-zipf; do
		for c in $(rotate "$round" backup-10MBps backup-unlimited no-backup); do
			log "round $round: $c $w"
			json=$RAW/$c.$w.r$round.json
			run_tool "$c" "$w" "$round" "$json"
			udevadm settle
			log "$c: $EXTRA"
			record_fio "$c" "$w" "$round" "$json" "" "$EXTRA"
		done
	done
done

# The module alone: see the header.
dmsetup create linear-on-base --table "0 $len linear /dev/mapper/base 0"
udevadm settle
find_fleece_tool read
[ -n "$FLEECE" ] || fail "tools/fleece has no read command"
run_module() { # case round json
	local c=$1 round=$2 json=$3 dev rpid= copies=null
	case $c in
	bare) dev=/dev/mapper/base ;;
	linear-on-base) dev=/dev/mapper/linear-on-base ;;
	view-read-*)
		dmsetup create fo --table "0 $len fleece $D0 $D1 128"
		dmsetup create fv --table "0 $len fleece-view $D0 $D1"
		udevadm settle
		dev=/dev/mapper/fo ;;
	esac
	# The writers wait for "go": the reader starts with them.
	rm -f go
	writers_start "$dev" random "$json" "$PWD/go"
	local fpid=$WPID
	case $c in
	view-read-10MBps)
		"$FLEECE" read -p none --rate 10000000 /dev/mapper/fv -o - > /dev/null 2> read.err &
		rpid=$! ;;
	view-read-unlimited)
		"$FLEECE" read -p none /dev/mapper/fv -o - > /dev/null 2> read.err &
		rpid=$! ;;
	esac
	touch go
	wait "$fpid"
	EXTRA='{}'
	if [ -n "$rpid" ]; then
		kill -0 "$rpid" 2>/dev/null && fail "$c: the reader did not finish within the $RT s window"
		wait "$rpid" || { cat read.err; fail "$c: fleece read failed"; }
		assert_eq "$(status_field fo 4)" $((len / 128)) "$c: every chunk released"
		copies=$(status_field fo 5)
		EXTRA="{\"tool\": \"fleece read\", \"fleece_at_end\": $(fleece_json fo), \"backup_copies\": $copies}"
		dm_remove fv fo
	fi
}

for round in $(seq 1 "$ROUNDS"); do
	for c in $(rotate "$round" bare linear-on-base view-read-10MBps view-read-unlimited); do
		log "round $round: $c (module alone) randwrite-4k-qd16"
		json=$RAW/$c.randwrite-4k-qd16.r$round.json
		run_module "$c" "$round" "$json"
		udevadm settle
		log "$c: $EXTRA"
		record_fio "$c" randwrite-4k-qd16 "$round" "$json" "" "$EXTRA"
	done
done
dm_remove linear-on-base

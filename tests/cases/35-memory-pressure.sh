#!/bin/bash
# Forward progress under memory pressure: first-touch writes (every one a
# copy) and a view read at once, under both policies, while the kernel's
# fault injection fails 20% of the slab and page allocations that cannot
# wait (failslab, fail_page_alloc with ignore-gfp-wait): every mempool's
# first try, so copies run on the mempools' reserves.  Checked: no hang
# (bounded time), no splat, no I/O error, the origin holds the new data and
# the view the old, byte for byte, and failures were really injected.
# Needs a kernel with fault injection (the debug kernel: make check
# KERNEL=debug); others report the test as skipped.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

dbg=/sys/kernel/debug
mountpoint -q $dbg || mount -t debugfs none $dbg
if [ ! -d $dbg/failslab ] || [ ! -d $dbg/fail_page_alloc ]; then
	skip "no failslab/fail_page_alloc in this kernel (the debug kernel has them)"
fi

TIMES=1000000
inject() { # probability in percent
	local d
	for d in $dbg/failslab $dbg/fail_page_alloc; do
		echo 0 > $d/verbose
		echo Y > $d/ignore-gfp-wait
		echo N > $d/task-filter
		echo 1 > $d/interval
		echo $TIMES > $d/times
		echo "$1" > $d/probability
	done
}
injected() { # failures injected since inject(), both kinds
	echo $((2 * TIMES - $(cat $dbg/failslab/times) - $(cat $dbg/fail_page_alloc/times)))
}
trap 'inject 0' EXIT

MIB=32
mkpattern old $MIB old
mkpattern new $MIB new

for pol in default fail_origin_writes; do
	for chunk in 128 2048; do
		log "$pol, $((chunk / 2)) KiB chunks: first-touch writes and a view read, allocations failing"
		origin=$(mkdev "o-$pol-$chunk" $MIB)
		put old "$origin"
		slice=$(mkdev "f-$pol-$chunk" $MIB 1)
		feat=()
		[ $pol = default ] || feat=(fail_origin_writes)
		fleece_create fo "$origin" "$slice" $chunk "${feat[@]}" >/dev/null
		view=$(view_create fv "$origin" "$slice")
		inject 20
		t0=$(ms)
		timeout 600 dd if=new of=/dev/mapper/fo bs=64k oflag=direct conv=notrunc status=none &
		wpid=$!
		timeout 600 dd if="$view" of=got bs=1M iflag=direct status=none
		wait $wpid || fail "the writer failed (exit $?)"
		n=$(injected)
		inject 0
		log "done in $(($(ms) - t0)) ms; $n allocations failed meanwhile"
		[ "$n" -gt 0 ] || fail "no allocation failure was injected"
		cmp got old || fail "the view read during the writes is not the point-in-time data"
		read -r pending copied released cbw errors state <<< "$(fleece_counts fo)"
		assert_eq "$errors $state" "0 active" "copy errors, state"
		same "$origin" new "origin"
		same "$view" old "view after the writes"
		dmsetup remove fv fo
	done
done

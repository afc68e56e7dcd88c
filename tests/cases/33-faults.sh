#!/bin/bash
# Faults of the fleece device while copies are in flight, under both
# policies: what writers wait for, what the view returns, that suspend
# completes and that the target is quiet once suspended.
#
#   (a) a stalled fleece device (dm-delay holding writes 90 s) fills every
#       copy slot (16 MiB chunks: 4 slots); the next first write to a
#       chunk waits for a slot (checked: copies_in_flight counts it).
#       Default policy: it goes on once the view is invalid, within the
#       timeout; fail_origin_writes: it fails with EIO at its timeout.  A suspend of the origin while such a write waits
#       completes within the timeout too.
#   (b) the policy changed by a table reload (default -> fail_origin_writes)
#       while a copy that already let its write pass is in its fleece write;
#       then the copy times out, or its fleece write fails: the view must
#       become invalid, never serve the new data.
#   (c) a suspend returns only once the copies that are not abandoned have
#       ended: no fleece write after it.
#   (d) swapping the origin back to linear while an abandoned copy is stuck:
#       the swap waits for it (documented), and meanwhile no new fleece of
#       the same devices can start (its late write would land in the new
#       point in time).
#   (e) the origin failing the copy's read (dm-flakey, down: every bio
#       fails): the default policy invalidates the view and lets the write
#       go on (to fail on the origin), fail_origin_writes fails it and keeps
#       the view, which reads the old data once the origin works again.
#   (f) the fleece device stalled by a suspend of it, or by a thin pool out
#       of data space (queue_if_no_space), five writers at once, both
#       policies: writers let go or failed by the timeout, the origin's
#       suspend prompt, the view never new.
#   (g) the timeout firing while the copy reads a stalled origin, both
#       policies.
#   (h) default policy: view reads and writes of chunks across the moment
#       their copies time out or fail their fleece write, ten trials of
#       varied timing: no read returns new data, no write fails.
#
# Every view read is checked to return the point-in-time data or an error,
# never data written after the point in time.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

BIG=32768		# chunk sectors: 16 MiB, so 4 copy slots (64 MiB)
CHUNK_KIB=16384
NCHUNKS=5
MIB=$((NCHUNKS * 16))
DELAY=90000		# ms: "stalled"; a suspend of the delay device ends it
MARGIN=15000		# ms a bound may be overrun by under TCG / a debug kernel

mkpattern old $MIB old
mkpattern new $MIB new

# 4 KiB of "new", O_DIRECT, at the start of chunk N.
wr_dd() { # dev chunk [dd operand...]
	dd if=new of="$1" bs=4k seek=$(($2 * CHUNK_KIB / 4)) skip=$(($2 * CHUNK_KIB / 4)) \
		count=1 oflag=direct conv=notrunc "${@:3}"
}
wr() { wr_dd "$1" "$2" status=none; }	# dev chunk
# The same write, timed by dd itself (its summary, in FILE): from after its
# open to its end, the time the write was held.  A time taken by the shell
# around it also counts the fork and exec, seconds on a debug kernel.
wr_timed() { wr_dd "$1" "$2" 2> "$3"; }	# dev chunk file
held_ms() { # file...: the longest time dd reports in them, in ms
	local f t max=-1
	for f in "$@"; do
		t=$(sed -n 's/.* copied, \([^ ]*\) s,.*/\1/p' "$f" | awk '{ printf "%d", $1 * 1000 }')
		[ -n "$t" ] || fail "no time in dd's summary: $(cat "$f")"
		[ "$t" -gt $max ] && max=$t
	done
	echo $max
}
least_ms() { # file...: the shortest time dd reports in them, in ms
	local f t min=
	for f in "$@"; do
		t=$(held_ms "$f")
		[ -z "$min" ] || [ "$t" -lt "$min" ] && min=$t
	done
	echo $min
}
# The view's 4 KiB at the start of chunk N must be the point-in-time data,
# or (if "eio" is allowed) an I/O error; never the new data.
view_check() { # view chunk old|eio what
	if dev_range "$1" $(($2 * CHUNK_KIB)) 4 > blk 2> err; then
		if cmp -s blk <(file_range new $(($2 * CHUNK_KIB)) 4); then
			fail "$4: the view served data written after the point in time (chunk $2)"
		fi
		cmp -s blk <(file_range old $(($2 * CHUNK_KIB)) 4) ||
			fail "$4: the view served data that is neither old nor new (chunk $2)"
		[ "$3" = old ] || [ "$3" = eio ] || fail "bad expectation $3"
		return 0
	fi
	[ "$3" = eio ] || fail "$4: view read of chunk $2 failed: $(cat err)"
	grep_q "Input/output error" err || fail "$4: view read of chunk $2: $(cat err)"
}
# The origin's 4 KiB at the start of chunk N.
origin_check() { # dev chunk old|new what
	cmp -s <(dev_range "$1" $(($2 * CHUNK_KIB)) 4) <(file_range "$3" $(($2 * CHUNK_KIB)) 4) ||
		fail "$4: origin chunk $2 is not the $3 data"
}

# origin, fleece slice and a delay device over it: $1 names the case.
setup() { # case
	origin=$(mkdev "origin-$1" $MIB)
	put old "$origin"
	slice=$(mkdev "slice-$1" $MIB 1)
	dmsetup create "delay-$1" --table "0 $((MIB * 2048)) delay $slice 0 0 $slice 0 $DELAY"
	iostats_on "delay-$1"
	fleece=/dev/mapper/delay-$1
}

# === (a) a stalled fleece device fills every copy slot =====================

TO=30000		# long enough that the slots are surely full before it
log "(a) default policy: stalled fleece device, cbw_timeout_ms $TO"
dmesg_mark
setup ad
fleece_create fo-ad "$origin" "$fleece" $BIG cbw_timeout_ms $TO >/dev/null
view=$(view_create fv-ad "$origin" "$fleece")
t1=$(ms)
pids=()
for n in 0 1 2 3; do
	wr /dev/mapper/fo-ad $n &
	pids+=($!)
done
for p in "${pids[@]}"; do
	wait "$p" || fail "a write that fills a slot failed under the default policy"
done
t=$(($(ms) - t1))
log "4 writes that fill the 4 slots: $t ms (they pass once the old data is in memory)"
[ $t -lt $TO ] || fail "the writes that fill the slots took $t ms (timeout $TO ms)"
assert_eq "$(status_field fo-ad 7) $(copies_in_flight fo-ad)" "active 4" \
	"state, copies in flight once the slots are full"
t0=$(ms)
wr_timed /dev/mapper/fo-ad 4 w4 &
wpid=$!
sleep 1
kill -0 $wpid 2>/dev/null || fail "the fifth write did not wait for a slot"
waiting="$(status_field fo-ad 7) $(copies_in_flight fo-ad)"
log "suspend of the origin while the fifth write waits for a slot"
dmsetup suspend fo-ad
ts=$(($(ms) - t0))
wait $wpid || fail "the fifth write failed under the default policy: $(cat w4)"
t=$(held_ms w4)
log "the fifth write took <= $t ms, the suspend returned after $ts ms"
[ $t -le $((TO + MARGIN)) ] || fail "the fifth write was held $t ms (timeout $TO ms)"
[ $ts -le $((TO + MARGIN)) ] || fail "the suspend took $ts ms (timeout $TO ms)"
assert_eq "$waiting" "active 5" "state, copies in flight with the fifth waiting for a slot"
dmsetup resume fo-ad
assert_eq "$(status_field fo-ad 7)" invalid "state once a copy timed out"
for n in 0 1 2 3 4; do
	origin_check "$origin" $n new "(a) default"
	view_check "$view" $n eio "(a) default"
done
expect_dmesg_since_mark "timed out after $TO ms"
expect_dmesg_since_mark "view invalidated: copy-before-write timed out"
log "later first writes pass at once"
t0=$(ms)
dd if=new of=/dev/mapper/fo-ad bs=4k seek=100 skip=100 count=1 oflag=direct conv=notrunc status=none
[ $(($(ms) - t0)) -lt $((TO / 2)) ] || fail "a write after the invalidation waited $(($(ms) - t0)) ms"
release_delayed delay-ad
copies_settle fo-ad
dmsetup remove fv-ad fo-ad delay-ad

TOF=15000		# "at once" must stand out from the noise of a loaded host
log "(a) fail_origin_writes: stalled fleece device, cbw_timeout_ms $TOF"
dmesg_mark
setup af
fleece_create fo-af "$origin" "$fleece" $BIG fail_origin_writes cbw_timeout_ms $TOF >/dev/null
view=$(view_create fv-af "$origin" "$fleece")
# In the background, a 4 KiB write to chunk N that must fail with EIO.
wr_eio_bg() { # chunk
	( wr_timed /dev/mapper/fo-af "$1" "err$1" && echo "write to chunk $1 succeeded" >> "err$1" ) &
}
check_eio() { # chunk
	grep_q "Input/output error" "err$1" || fail "write to chunk $1: $(cat "err$1")"
}
for n in 0 1 2 3; do
	wr_eio_bg $n
done
wait || true	# check_eio tells
for n in 0 1 2 3; do
	check_eio $n
done
t=$(held_ms err0 err1 err2 err3)
tmin=$(least_ms err0 err1 err2 err3)
log "4 writes that fill the 4 slots: EIO after $tmin to $t ms"
[ $tmin -ge $((TOF * 9 / 10)) ] || fail "a write failed after $tmin ms, before its timeout"
[ $t -le $((TOF + MARGIN)) ] || fail "the writes were held $t ms (timeout $TOF ms)"
assert_eq "$(copies_in_flight fo-af)" 4 "abandoned copies in flight: every slot"
log "the fifth chunk's copy waits for a slot; a suspend meanwhile"
t0=$(ms)
wr_eio_bg 4
wpid=$!
sleep 1
kill -0 $wpid 2>/dev/null || fail "the fifth write did not wait for a slot"
waiting=$(copies_in_flight fo-af)
dmsetup suspend fo-af
ts=$(($(ms) - t0))
wait $wpid || true	# check_eio tells
check_eio 4
t=$(held_ms err4)
log "write to chunk 4: EIO after <= $t ms, the suspend returned after $ts ms"
[ $t -ge $((TOF * 9 / 10)) ] || fail "the queued write failed after $t ms, before its timeout"
[ $t -le $((TOF + MARGIN)) ] || fail "the queued write was held $t ms (timeout $TOF ms)"
[ $ts -le $((TOF + MARGIN)) ] || fail "the suspend took $ts ms (timeout $TOF ms)"
assert_eq "$waiting" 5 "copies in flight with the fifth waiting for a slot"
dmsetup resume fo-af
expect_dmesg_since_mark "chunk 4 timed out after $TOF ms waiting for a copy slot"
log "a write to a chunk whose copy is stuck fails at once"
t0=$(ms)
expect_eio wr /dev/mapper/fo-af 1
t=$(($(ms) - t0))
[ $t -lt $((TOF / 2)) ] || fail "a write to an abandoned chunk waited $t ms"
read -r pending copied released cbw errors state inflight <<< "$(fleece_counts_now fo-af)"
assert_eq "$state $cbw $errors" "active 5 6" "state, copies asked for, errors"
for n in 0 1 2 3 4; do
	origin_check "$origin" $n old "(a) fail_origin_writes"
	view_check "$view" $n old "(a) fail_origin_writes"
done
log "the fleece device completes the abandoned copies: they count as copied"
dmsetup load delay-af --table "0 $((MIB * 2048)) linear $slice 0"
dmsetup resume delay-af
copies_settle fo-af
read -r pending copied released cbw errors state inflight <<< "$(fleece_counts_now fo-af)"
assert_eq "$pending $copied $state" "1 4 active" "status after the copies ended"
wr /dev/mapper/fo-af 4
origin_check "$origin" 4 new "(a) fail_origin_writes, after repair"
for n in 0 1 2 3 4; do
	view_check "$view" $n old "(a) fail_origin_writes, after repair"
done
same "$view" old "(a) fail_origin_writes: the whole view"
dmsetup remove fv-af fo-af delay-af

# === (b) the policy changed by a reload while a copy is in flight ==========

# The reload must be done before the copy times out: on the unfixed
# module the new policy was then read by the timeout.
TOB=15000
log "(b) default -> fail_origin_writes by a reload; the copy then times out"
dmesg_mark
setup bt
fleece_create fo-bt "$origin" "$fleece" $BIG cbw_timeout_ms $TOB >/dev/null
view=$(view_create fv-bt "$origin" "$fleece")
wr /dev/mapper/fo-bt 1	# passes once the old data is in memory
t0=$(ms)
dmsetup load fo-bt --table "0 $((MIB * 2048)) fleece $origin $fleece $BIG 3 fail_origin_writes cbw_timeout_ms $TOB"
dmsetup suspend fo-bt
dmsetup resume fo-bt
log "reloaded after $(($(ms) - t0)) ms"
while [ $(($(ms) - t0)) -lt $((TOB + 1000)) ]; do sleep 0.2; done
view_check "$view" 1 eio "(b) timeout after the reload"
assert_eq "$(status_field fo-bt 7)" invalid "state after the copy that passed a write timed out"
release_delayed delay-bt
copies_settle fo-bt
view_check "$view" 1 eio "(b) timeout after the reload, copy ended"
dmsetup remove fv-bt fo-bt delay-bt

log "(b) default -> fail_origin_writes by a reload; the copy's fleece write then fails"
dmesg_mark
origin=$(mkdev origin-bf $MIB)
put old "$origin"
slice=$(mkdev slice-bf $MIB 1)
dmsetup create mid-bf --table "0 $((MIB * 2048)) linear $slice 0"
dmsetup create delay-bf --table "0 $((MIB * 2048)) delay /dev/mapper/mid-bf 0 0 /dev/mapper/mid-bf 0 $DELAY"
fleece=/dev/mapper/delay-bf
fleece_create fo-bf "$origin" "$fleece" $BIG cbw_timeout_ms 30000 >/dev/null
view=$(view_create fv-bf "$origin" "$fleece")
wr /dev/mapper/fo-bf 1
dmsetup load fo-bf --table "0 $((MIB * 2048)) fleece $origin $fleece $BIG 3 fail_origin_writes cbw_timeout_ms 30000"
( dmsetup suspend fo-bf && dmsetup resume fo-bf ) &
rpid=$!
sleep 1
log "the fleece device fails the delayed write"
dmsetup load mid-bf --table "0 $((MIB * 2048)) error"
dmsetup resume mid-bf
release_delayed delay-bf
wait $rpid || fail "the reload failed"
copies_settle fo-bf
view_check "$view" 1 eio "(b) failed fleece write after the reload"
assert_eq "$(status_field fo-bf 7)" invalid "state after the copy that passed a write failed"
expect_dmesg_since_mark "chunk 1 failed writing the fleece"
log "a later write to the chunk must not copy the new data in"
dmsetup load mid-bf --table "0 $((MIB * 2048)) linear $slice 0"
dmsetup resume mid-bf
dmsetup load delay-bf --table "0 $((MIB * 2048)) linear /dev/mapper/mid-bf 0"
dmsetup resume delay-bf
wr /dev/mapper/fo-bf 1
view_check "$view" 1 eio "(b) after a later write"
dmsetup remove fv-bf fo-bf delay-bf mid-bf

# === (c) no I/O of the target's own after a suspend ========================

log "(c) suspend waits for the copy's fleece write (delayed 3 s)"
dmesg_mark
origin=$(mkdev origin-c $MIB)
put old "$origin"
slice=$(mkdev slice-c $MIB 1)
dmsetup create delay-c --table "0 $((MIB * 2048)) delay $slice 0 0 $slice 0 3000"
iostats_on delay-c
fleece_create fo-c "$origin" /dev/mapper/delay-c $BIG >/dev/null
view=$(view_create fv-c "$origin" /dev/mapper/delay-c)
wr /dev/mapper/fo-c 2
assert_eq "$(writes_done delay-c)" 0 "fleece writes done before the suspend"
dmsetup suspend fo-c
assert_eq "$(copies_in_flight fo-c)" 0 "copies in flight once suspended"
n=$(writes_done delay-c)
assert_eq "$n" 1 "fleece writes done once suspended"
sleep 3.5
assert_eq "$(writes_done delay-c)" "$n" "fleece writes done while suspended"
dmsetup resume fo-c
view_check "$view" 2 old "(c) after the suspend"
assert_eq "$(status_field fo-c 7)" active "state"
dmsetup remove fv-c fo-c delay-c

# === (d) a swap to linear while an abandoned copy is stuck =================

log "(d) swap to linear with an abandoned copy stuck on the fleece device"
dmesg_mark
setup d
fleece_create fo-d "$origin" "$fleece" $BIG cbw_timeout_ms 500 >/dev/null
wr /dev/mapper/fo-d 3
sleep 1.5
assert_eq "$(status_field fo-d 7) $(copies_in_flight fo-d)" "invalid 1" "state, the abandoned copy in flight"
dmsetup load fo-d --table "0 $((MIB * 2048)) linear $origin 0"
dmsetup resume fo-d &
spid=$!
sleep 2
kill -0 $spid 2>/dev/null || fail "the swap did not wait for the abandoned copy"
log "a new fleece of the same devices is refused meanwhile"
expect_fail dmsetup create fo-d2 --table "0 $((MIB * 2048)) fleece $origin $fleece $BIG"
expect_dmesg_since_mark "has 1 copies in flight"
release_delayed delay-d
wait $spid || fail "the swap to linear failed"
[[ $(dmsetup table fo-d) == *" linear "* ]] || fail "fo-d is not linear: $(dmsetup table fo-d)"
log "once the copy ended, a new fleece of the same devices starts"
fleece_create fo-d2 "$origin" "$fleece" $BIG >/dev/null
assert_eq "$(status_field fo-d2 7)" active "state of the new fleece"
dmsetup remove fo-d2 fo-d delay-d

# === (e) the origin fails the copy's read ===================================

for pol in default fail_origin_writes; do
	log "(e) $pol: the origin fails the copy's read"
	dmesg_mark
	ram=$(mkdev ram-e-$pol $MIB)
	put old "$ram"
	dmsetup create origin-e-$pol --table "0 $((MIB * 2048)) linear $ram 0"
	origin=/dev/mapper/origin-e-$pol
	slice=$(mkdev slice-e-$pol $MIB 1)
	feat=()
	[ $pol = default ] || feat=(fail_origin_writes)
	fleece_create fo-e "$origin" "$slice" $BIG "${feat[@]}" >/dev/null
	view=$(view_create fv-e "$origin" "$slice")
	dmsetup load origin-e-$pol --table "0 $((MIB * 2048)) flakey $ram 0 0 3600"
	dmsetup resume origin-e-$pol
	# Down, dm-flakey fails every bio: under the default policy the write
	# goes on once the view is invalid, and fails on the origin itself.
	expect_eio wr /dev/mapper/fo-e 1
	expect_dmesg_since_mark "copy-before-write of chunk 1 failed reading the origin"
	read -r pending copied released cbw errors state <<< "$(fleece_counts fo-e)"
	dmsetup load origin-e-$pol --table "0 $((MIB * 2048)) linear $ram 0"
	dmsetup resume origin-e-$pol
	if [ $pol = default ]; then
		assert_eq "$cbw $errors $state" "1 1 invalid" "(e) default: status"
		expect_dmesg_since_mark "view invalidated: copy-before-write failed"
		origin_check "$origin" 1 old "(e) default"
		view_check "$view" 1 eio "(e) default"
	else
		assert_eq "$pending $cbw $errors $state" "$NCHUNKS 1 1 active" "(e) fail_origin_writes: status"
		origin_check "$origin" 1 old "(e) fail_origin_writes"
		view_check "$view" 1 old "(e) fail_origin_writes"
		wr /dev/mapper/fo-e 1
		origin_check "$origin" 1 new "(e) fail_origin_writes, origin repaired"
		view_check "$view" 1 old "(e) fail_origin_writes, origin repaired"
		assert_eq "$(fleece_counts fo-e)" "$((NCHUNKS - 1)) 1 0 2 1 active" "(e) status after the repaired write"
	fi
	dmsetup remove fv-e fo-e origin-e-$pol
done

# === (f) the fleece device stalled by a suspend, or by a full thin pool =====
#
# Two stalls an administrator meets: the fleece LV suspended (an lvm2
# command holding it), and a thin pool out of data space under lvm2's
# default queue_if_no_space (writes to new blocks queue for
# no_space_timeout, 60 s).  Five writers to five chunks at once (4 copy
# slots, one write waits for a slot), both policies: every writer is let go
# (default) or failed (fail_origin_writes) by the timeout, a suspend of the
# origin completes meanwhile, the view never serves new data.

TOS=5000
# The writers, in the background, each to the first 4 KiB of its chunk;
# they must all have ended within the timeout plus the margin.
alive() { # pid...
	local p
	for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done
	return 1
}
writers_bounded() { # dev what
	local n pids=() t0 t errs=()
	t0=$(ms)
	for n in $(seq 0 $((NCHUNKS - 1))); do
		(if wr_timed "$1" $n "werr$n"; then echo 0; else echo $?; fi > "wrc$n") &
		pids+=($!) errs+=("werr$n")
	done
	# A backstop, timed by the shell: each writer's own time is checked next.
	while alive "${pids[@]}"; do
		t=$(($(ms) - t0))
		[ $t -le $((TOS + 3 * MARGIN)) ] ||
			fail "$2: writers still held after $t ms (cbw_timeout_ms $TOS)"
		sleep 0.2
	done
	wait
	held=$(held_ms "${errs[@]}")
	held_least=$(least_ms "${errs[@]}")
	log "$2: the $NCHUNKS writers were held $held_least to $held ms"
	[ $held -le $((TOS + MARGIN)) ] || fail "$2: a writer was held $held ms (cbw_timeout_ms $TOS)"
}
# How a stall is made and ended, per kind.
stall_make() { # kind case
	local slice
	case $1 in
	suspended)
		slice=$(mkdev "slice-$2" $MIB 3)
		dmsetup create "fdev-$2" --table "0 $((MIB * 2048)) linear $slice 0"
		;;
	thin-full)
		# A pool of 8 MiB of data for a thin volume of $MIB MiB: the first
		# copy (16 MiB) fills it.
		local meta data
		meta=$(mkdev "tmeta-$2" 4 3)
		data=$(mkdev "tdata-$2" 8 3)
		dd if=/dev/zero of="$meta" bs=4k count=1 oflag=direct status=none
		dmsetup create "pool-$2" --table "0 16384 thin-pool $meta $data 128 0"
		dmsetup message "pool-$2" 0 "create_thin 0"
		dmsetup create "fdev-$2" --table "0 $((MIB * 2048)) thin /dev/mapper/pool-$2 0"
		pool_meta=$meta pool_data=$data
		;;
	esac
	fleece=/dev/mapper/fdev-$2
}
stall_start() { # kind case
	[ "$1" = suspended ] && dmsetup suspend "fdev-$2"
	return 0
}
stall_end() { # kind case
	case $1 in
	suspended) dmsetup resume "fdev-$2" ;;
	thin-full)
		# error_if_no_space: the queued writes fail now, as the copies do.
		dmsetup load "pool-$2" --table "0 16384 thin-pool $pool_meta $pool_data 128 0 1 error_if_no_space"
		dmsetup resume "pool-$2"
		;;
	esac
}
for kind in suspended thin-full; do
	for pol in default fail_origin_writes; do
		c=f-$kind-${pol%%_*}
		log "(f) $kind fleece device, $pol, cbw_timeout_ms $TOS"
		dmesg_mark
		origin=$(mkdev "origin-$c" $MIB 2)
		put old "$origin"
		stall_make $kind "$c"
		feat=(cbw_timeout_ms $TOS)
		[ $pol = default ] || feat=(fail_origin_writes "${feat[@]}")
		fleece_create "fo-$c" "$origin" "$fleece" $BIG "${feat[@]}" >/dev/null
		view=$(view_create "fv-$c" "$origin" "$fleece")
		stall_start $kind "$c"
		writers_bounded "/dev/mapper/fo-$c" "(f) $kind, $pol"
		[ $pol = default ] || [ $held_least -ge $((TOS * 9 / 10)) ] ||
			fail "(f) $kind, $pol: a write failed after $held_least ms, before the timeout"
		t0=$(ms)
		dmsetup suspend "fo-$c"
		ts=$(($(ms) - t0))
		dmsetup resume "fo-$c"
		[ $ts -le $MARGIN ] || fail "(f) $kind, $pol: the origin's suspend took $ts ms"
		for n in $(seq 0 $((NCHUNKS - 1))); do
			if [ $pol = default ]; then
				assert_eq "$(cat "wrc$n")" 0 "(f) $kind, default: write to chunk $n: $(cat "werr$n")"
				origin_check "$origin" $n new "(f) $kind, default"
				view_check "$view" $n eio "(f) $kind, default"
			else
				grep_q "Input/output error" "werr$n" ||
					fail "(f) $kind, fail_origin_writes: write to chunk $n: exit $(cat "wrc$n"): $(cat "werr$n")"
				origin_check "$origin" $n old "(f) $kind, fail_origin_writes"
				view_check "$view" $n old "(f) $kind, fail_origin_writes"
			fi
		done
		if [ $pol = default ]; then
			assert_eq "$(status_field "fo-$c" 7)" invalid "(f) $kind, default: state"
			expect_dmesg_since_mark "view invalidated: copy-before-write timed out"
		else
			assert_eq "$(status_field "fo-$c" 7)" active "(f) $kind, fail_origin_writes: state"
		fi
		stall_end $kind "$c"
		copies_settle "fo-$c"
		[ $pol = default ] || view_check "$view" 0 old "(f) $kind, fail_origin_writes, stall ended"
		dmsetup remove "fv-$c" "fo-$c" "fdev-$c"
		[ $kind = suspended ] || dmsetup remove "pool-$c"
	done
done

# === (g) the timeout fires while the copy reads the origin =================
#
# The origin's reads stall (dm-delay: reads held 4x the timeout, writes
# not); the copy of the chunk a write needs is still reading when its
# timeout fires.  Default policy: the view is invalidated and the write
# goes on at the timeout; fail_origin_writes: the write fails at the
# timeout, the view keeps the chunk, and once the read completes the copy
# is good and counts as copied.

# dmsetup does not wait for udev here: udev's probe of the origin after the
# reload stalls in the held reads too (it reads the origin directly, not
# through the fleece), and ends once they are let go.
reads_stall() { # dm-delay name, backing device, ms
	dmsetup load "$1" --table "0 $((MIB * 2048)) delay $2 0 $3 $2 0 0"
	dmsetup resume --noudevsync "$1"
}

for pol in default fail_origin_writes; do
	c=g-${pol%%_*}
	log "(g) $pol: the timeout fires in the copy's origin read"
	dmesg_mark
	ram=$(mkdev "ram-$c" $MIB 2)
	put old "$ram"
	dmsetup create "origin-$c" --table "0 $((MIB * 2048)) delay $ram 0 0"
	origin=/dev/mapper/origin-$c
	slice=$(mkdev "slice-$c" $MIB 3)
	feat=(cbw_timeout_ms $TOS)
	[ $pol = default ] || feat=(fail_origin_writes "${feat[@]}")
	fleece_create "fo-$c" "$origin" "$slice" $BIG "${feat[@]}" >/dev/null
	view=$(view_create "fv-$c" "$origin" "$slice")
	udevadm settle
	reads_stall "origin-$c" "$ram" $((4 * TOS))
	if [ $pol = default ]; then
		wr_timed "/dev/mapper/fo-$c" 1 wg || fail "(g) default: the write failed: $(cat wg)"
	else
		! wr_timed "/dev/mapper/fo-$c" 1 wg || fail "(g) fail_origin_writes: the write succeeded"
		grep_q "Input/output error" wg || fail "(g) fail_origin_writes: the write: $(cat wg)"
	fi
	t=$(held_ms wg)
	log "(g) $pol: the write ended after $t ms"
	[ $t -ge $((TOS * 9 / 10)) ] || fail "(g) $pol: the write ended after $t ms, before the timeout"
	[ $t -le $((TOS + MARGIN)) ] || fail "(g) $pol: the write was held $t ms (cbw_timeout_ms $TOS)"
	expect_dmesg_since_mark "copy-before-write of chunk 1 timed out after $TOS ms"
	if [ $pol = default ]; then
		assert_eq "$(status_field "fo-$c" 7)" invalid "(g) default: state"
		expect_dmesg_since_mark "view invalidated: copy-before-write timed out"
		view_check "$view" 1 eio "(g) default"
		reads_stall "origin-$c" "$ram" 0	# ends the held read
		udevadm settle
		copies_settle "fo-$c"
		origin_check "$origin" 1 new "(g) default"
	else
		assert_eq "$(status_field "fo-$c" 7)" active "(g) fail_origin_writes: state"
		reads_stall "origin-$c" "$ram" 0	# ends the held read
		udevadm settle
		copies_settle "fo-$c"
		read -r pending copied released cbw errors state <<< "$(fleece_counts "fo-$c")"
		assert_eq "$copied $state" "1 active" "(g) fail_origin_writes: the late copy counts as copied"
		origin_check "$origin" 1 old "(g) fail_origin_writes"
		view_check "$view" 1 old "(g) fail_origin_writes"
		wr "/dev/mapper/fo-$c" 1
		origin_check "$origin" 1 new "(g) fail_origin_writes, after the read ended"
		view_check "$view" 1 old "(g) fail_origin_writes, after the read ended"
	fi
	dmsetup remove "fv-$c" "fo-$c" "origin-$c"
done

# === (h) the window between a failed copy and the invalidation ==============
#
# Issue 12, items 3 and 4.  Under the default policy a copy lets its writes
# pass once the old data is in memory; when it then times out, or its
# fleece write fails, the view must be invalid before the chunk can be read
# from the origin, and writes to the chunk go on throughout.  The unfixed
# module marked the region abandoned (or dropped it) under the bucket lock,
# dropped the lock, logged, and only then invalidated: a view read issued
# in between went to the origin and returned the new data, and a write in
# between to an abandoned chunk failed with EIO.
#
# Each trial: writers do first writes to one to three 64 KiB chunks and go
# on writing them (one write in flight per chunk, each 4 KiB write carrying
# its own number, so that new data is told from old byte for byte); the
# view's copies of those chunks are read in tight loops, and from a little
# before the moment the copies fail to a little after the first view read
# fails, a new read of one of them is submitted every few tens of
# microseconds (Linux AIO: no read waits for another).  Checked: every view
# read returns the point-in-time bytes or EIO, never anything else; no
# write fails; the view ends invalid; the origin holds each block's last
# write.  Two faults, alternating: the fleece device holds writes 60 s
# (dm-delay) and the copies time out (cbw_timeout_ms T), or it fails them
# after D ms (dm-delay over dm-error, cbw_timeout_ms 30000).  T or D, how
# long before that moment the probing starts, the probe interval, the
# writers' pace and the chunks vary with the trial number.  The unfixed
# module's window (a few ms under TCG: the kernel log line) is only seen
# with two or more vCPUs (make check's default, CI's): the first writes go
# from one CPU, where the copies' timeout work then runs, and the rest from
# another.  On one vCPU the work item runs through the window with nothing
# else scheduled (Debian's kernels do not preempt it there), and the step
# passes on that module too.

# window_io FO VIEW OLD CHUNK_BYTES CHUNKS EVENT_MS BEFORE_MS AFTER_MS PROBE_US WRITE_GAP_US
window_io() {
	python3 - "$@" <<'PY'
import ctypes, mmap, os, sys, time

fo, fv, oldf = sys.argv[1:4]
CH = int(sys.argv[4])
hot = [int(c) for c in sys.argv[5].split(",")]
event, before, after = (int(a) / 1000 for a in sys.argv[6:9])
probe_gap = int(sys.argv[9]) / 1e6
write_gap = int(sys.argv[10]) / 1e6
BS = 4096
MAXR = 1024                     # view reads in flight at most
old = open(oldf, "rb").read()

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class Iocb(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("key", ctypes.c_uint32),
                ("rw_flags", ctypes.c_int32), ("opcode", ctypes.c_uint16),
                ("reqprio", ctypes.c_int16), ("fildes", ctypes.c_uint32),
                ("buf", ctypes.c_uint64), ("nbytes", ctypes.c_uint64),
                ("offset", ctypes.c_int64), ("reserved2", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("resfd", ctypes.c_uint32)]


class Event(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64),
                ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


def syscall(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


IO_SETUP, IO_GETEVENTS, IO_SUBMIT = 206, 208, 209
actx = ctypes.c_ulong(0)
syscall(IO_SETUP, ctypes.c_long(MAXR + len(hot) + 8), ctypes.byref(actx))
rbuf = mmap.mmap(-1, MAXR * CH)
wbuf = mmap.mmap(-1, len(hot) * BS)
raddr = ctypes.addressof(ctypes.c_char.from_buffer(rbuf))
waddr = ctypes.addressof(ctypes.c_char.from_buffer(wbuf))
wfd = os.open(fo, os.O_RDWR | os.O_DIRECT)
rfd = os.open(fv, os.O_RDONLY | os.O_DIRECT)
riocb = [Iocb(data=i, opcode=0, fildes=rfd, buf=raddr + i * CH, nbytes=CH)
         for i in range(MAXR)]
wiocb = [Iocb(data=(1 << 32) | w, opcode=1, fildes=wfd, buf=waddr + w * BS,
              nbytes=BS) for w in range(len(hot))]
events = (Event * 64)()


def submit(io):
    arr = (ctypes.POINTER(Iocb) * 1)(ctypes.pointer(io))
    syscall(IO_SUBMIT, actx, ctypes.c_long(1), arr)


t0 = time.monotonic()


def now():
    return time.monotonic() - t0


free = list(range(MAXR))
reading = {}                    # slot: (chunk, submitted, probe?)
looping = {c: True for c in hot}    # the chunk's tight-loop reader goes on
n_old = n_eio = n_probes = n_writes = 0
first_eio = None
bad, werr = [], []
seq = 0
wnext = [0.0] * len(hot)        # when writer w submits next (None: in flight)
winflight = [None] * len(hot)
last = {}                       # origin offset: the last 4 KiB written there
pieces = CH // BS


def read(chunk, probe):
    slot = free.pop()
    io = riocb[slot]
    io.offset = chunk * CH
    reading[slot] = (chunk, now(), probe)
    submit(io)


def write(w):
    global seq
    seq += 1
    off = hot[w] * CH + (seq % pieces) * BS
    data = (b"NEW write %d, chunk %d, offset %d " % (seq, hot[w], off)).ljust(BS, b"*")
    wbuf[w * BS:(w + 1) * BS] = data
    wiocb[w].offset = off
    winflight[w] = (off, data)
    wnext[w] = None
    submit(wiocb[w])


def reap(wait):
    global n_old, n_eio, n_writes, first_eio
    ts = Timespec(0, int(wait * 1e9))
    n = syscall(IO_GETEVENTS, actx, ctypes.c_long(0), ctypes.c_long(64),
                events, ctypes.byref(ts))
    for i in range(n):
        ev = events[i]
        if ev.data >> 32:
            w = ev.data & 0xffffffff
            off, data = winflight[w]
            winflight[w] = None
            if ev.res == BS:
                last[off] = data
                n_writes += 1
            else:
                werr.append("%.1f ms: write at %d: %s" % (now() * 1000, off, os.strerror(-ev.res) if ev.res < 0 else ev.res))
            wnext[w] = now() + write_gap
            continue
        slot = ev.data
        chunk, t, probe = reading.pop(slot)
        free.append(slot)
        when = "submitted at %.1f ms, ended at %.1f ms" % (t * 1000, now() * 1000)
        if ev.res == CH:
            got = rbuf[slot * CH:(slot + 1) * CH]
            if got == old[chunk * CH:(chunk + 1) * CH]:
                n_old += 1
            elif b"NEW write" in got:
                j = got.index(b"NEW write")
                bad.append("view read of chunk %d %s returned data written after the point in time: '%s'"
                           % (chunk, when, got[j:j + 48].decode(errors="replace")))
            else:
                bad.append("view read of chunk %d %s returned data that is neither old nor new" % (chunk, when))
        elif ev.res == -5:
            n_eio += 1
            if first_eio is None:
                first_eio = now()
            looping[chunk] = False
        else:
            bad.append("view read of chunk %d %s: result %d" % (chunk, when, ev.res))
        if looping[chunk] and not probe and not stop:
            read(chunk, False)


# The first writes are submitted from the first CPU, which arms the copies'
# timers there, and so runs their timeout work there (kfleeced is a per-CPU
# workqueue); everything after them from the last CPU, which is thus free
# to submit reads and writes while that work runs.
cpus = sorted(os.sched_getaffinity(0))
os.sched_setaffinity(0, {cpus[0]})
stop = False
for c in hot:
    read(c, False)
for w in range(len(hot)):
    write(w)
os.sched_setaffinity(0, {cpus[-1]})
start = event - before
deadline = event + 20           # the view must be invalid long before
k = 0
nextprobe = start
while True:
    t = now()
    end = first_eio + after if first_eio is not None else deadline
    if t >= end:
        break
    if t >= start and t >= nextprobe and free:
        read(hot[k % len(hot)], True)
        k += 1
        n_probes += 1
        nextprobe = t + probe_gap
    for w in range(len(hot)):
        if wnext[w] is not None and t >= wnext[w]:
            write(w)
    reap(0 if t >= start - 0.005 else 0.002)
stop = True
t_end = now()
while reading or any(x is not None for x in winflight):
    if now() > t_end + 60:
        bad.append("%d view reads, %d writes still in flight 60 s after the end"
                   % (len(reading), sum(x is not None for x in winflight)))
        break
    reap(0.05)

# The origin holds each block's last write, or the old data.
vbuf = mmap.mmap(-1, CH)
for c in hot:
    os.preadv(wfd, [vbuf], c * CH)
    for p in range(pieces):
        off = c * CH + p * BS
        if vbuf[p * BS:(p + 1) * BS] != last.get(off, old[off:off + BS]):
            bad.append("origin at %d: not the last data written there" % off)

print("window_io: first view EIO at %s ms (expected about %d); %d probes from %d ms; "
      "view reads: %d old, %d EIO; %d writes, %d failed"
      % ("%.1f" % (first_eio * 1000) if first_eio is not None else "none",
         event * 1000, n_probes, start * 1000, n_old, n_eio, n_writes, len(werr)))
for m in bad[:10] + werr[:10]:
    print("  " + m)
if first_eio is None:
    print("  no view read failed within %d s: the view did not become invalid" % deadline)
sys.exit(1 if bad or werr or first_eio is None else 0)
PY
}

HCH=128			# 64 KiB chunks
HKIB=64
mkpattern oldh 1 oldh
HTRIALS=10
for i in $(seq 1 $HTRIALS); do
	ev=$((600 + (i * 337) % 1100))		# ms: the copies' timeout, or the fleece write's delay
	probe=$((50 << (i % 4)))		# us between probes: 50 to 400
	before=$((20 + (i * 53) % 230))		# ms: the probing starts this long before,
	[ $before -le $((probe * 4 / 5)) ] || before=$((probe * 4 / 5))	# with its reads in flight in 1024 buffers
	wgap=$(((i % 3) * 150))			# us between one write and the next to a chunk
	nhot=$((1 + i % 3))
	hot=$((i % 16))
	for ((j = 1; j < nhot; j++)); do hot+=,$(((i + 5 * j) % 16)); done
	c=h$i
	origin=$(mkdev "origin-$c" 1 2)
	put oldh "$origin"
	slice=$(mkdev "slice-$c" 1 3)
	if ((i % 2)); then
		kind="copies time out (cbw_timeout_ms $ev, fleece writes held 60 s)"
		dmsetup create "fdev-$c" --table "0 2048 delay $slice 0 0 $slice 0 60000"
		feat=(cbw_timeout_ms $ev)
	else
		kind="fleece writes fail after $ev ms (cbw_timeout_ms 30000)"
		dmsetup create "ferr-$c" --table "0 2048 error"
		dmsetup create "fdev-$c" --table "0 2048 delay $slice 0 0 /dev/mapper/ferr-$c 0 $ev"
		feat=(cbw_timeout_ms 30000)
	fi
	log "(h) trial $i/$HTRIALS, default policy: $kind; chunks $hot; probes from $before ms before, every $probe us; writes every $wgap us"
	dmesg_mark
	fleece_create "fo-$c" "$origin" "/dev/mapper/fdev-$c" $HCH "${feat[@]}" >/dev/null
	view=$(view_create "fv-$c" "$origin" "/dev/mapper/fdev-$c")
	udevadm settle
	window_io "/dev/mapper/fo-$c" "$view" oldh $((HKIB * 1024)) "$hot" "$ev" "$before" 300 "$probe" "$wgap" ||
		fail "(h) trial $i: $kind: see above"
	assert_eq "$(status_field "fo-$c" 7)" invalid "(h) trial $i: fleece state"
	assert_eq "$(status_field "fv-$c" 4)" invalid "(h) trial $i: view state"
	expect_eio dd if="$view" of=/dev/null bs=64k count=1 iflag=direct status=none
	expect_dmesg_since_mark "view invalidated: copy-before-write (timed out|failed)"
	release_delayed "fdev-$c"
	copies_settle "fo-$c"
	dmsetup remove "fv-$c" "fo-$c" "fdev-$c"
	((i % 2)) || dmsetup remove "ferr-$c"
done

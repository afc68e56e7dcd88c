#!/bin/bash
# make check-crash, a crash boot (tests/vm/crash.sh runs it ten times and
# more, one moment each): after the previous boot ended (cleanly, or by a
# hard kill of qemu), the tracker is re-attached (the unit's ExecStart),
# what the crash interrupted is cleaned up (fleece stop --all, as fleece(8)
# says), and a backup is taken: incremental when it can be, else a full
# one with its reason; it must be exact byte for byte.  Then the moment
# fleece.crash_moment is set up and announced on the console ("arm"):
# the host kills qemu (SIGKILL) that many milliseconds later.  This boot
# never ends by itself.
#   idle          no writes (the baseline)
#   rand          4 KiB random writes at queue depth 16: new chunks all
#                 the time, so a bitmap commit after the other
#   slowstore     the same with every store I/O delayed (dm-delay,
#                 fleece.crash_store_delay ms): a commit is in flight
#                 nearly all the time (sampled, and said)
#   commit        the same, the kill as soon as a store write is seen in
#                 flight (give a store delay longer than "arm" takes, e.g.
#                 commit:0:2000): the one moment that is a kill during a
#                 commit by construction; the host's summary shows the
#                 last sample before the kill
#   seq           1 MiB sequential writes (bios over 16 chunks)
#   discard       random writes and 256 KiB random discards
#   backup-start  random writes; the kill as an incremental backup starts
#                 (its suspend, checkpoint, table swaps)
#   backup-read   random writes; an incremental backup reading (--rate)
#   backup-full   random writes; the image removed: a full backup reading
#   backup-end    random writes; the kill right after an incremental
#                 backup completed (its rename, record, backup_done)
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check-crash" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
. "$SRC/tests/crash/common.inc" || exit 1

step "activate, attach (the unit's ExecStart)"
activate
attach
if grep_q "not closed cleanly" attach.out; then
	say "attach: the store was not closed cleanly (status: $(dmsetup status "$DMNAME" | cut -d' ' -f4-))"
else
	say "attach: the store was closed cleanly"
fi
stale_sessions

step "the backup after the previous boot: exact"
verified_backup "boot$BOOT"

# The tracker's status: NAME's, or while a backup runs, its hidden origin's.
track_status_field() { # n
	local d=$DMNAME
	[ "$(dmsetup table "$d" | cut -d' ' -f3)" = fleece-track ] || d=$DMNAME-fleece-origin
	status_field "$d" "$1"
}
# No splat so far (after the kill nothing more is scanned but the console).
splat_check() {
	dmesg > "$OUT/dmesg-boot$BOOT.txt"
	! grep -aqE -f "$SRC/tests/vm/splat-patterns" "$OUT/dmesg-boot$BOOT.txt" ||
		fail "kernel splat before the kill: see $OUT/dmesg-boot$BOOT.txt"
}
arm() {
	splat_check
	say "arm moment=$MOMENT commits=$(track_status_field 11) changed=$(track_status_field 3) $*"
}
# From the writer's start until the kill, every 20 ms: the store's writes
# in flight (a commit under way), from the store device's sysfs inflight
# file (no process started: a sleep(1) per sample took 500 ms under TCG
# on a loaded host; started before "arm", as its own start costs that much).  The host keeps the last sample before the kill, so each
# moment with writes says whether a commit was in flight when it died.
sample_store() {
	local store r w nap
	store=/sys/block/$(sysfs_name "/dev/mapper/$CSTORE")/inflight
	exec {nap}<> <(:)	# read -t on it: a 20 ms pause without starting sleep(1)
	while :; do
		read -r r w < "$store"
		say "sample store-writes-in-flight=$w"
		read -rt 0.02 -u "$nap" _ || true
	done
}
partial_grows() { # pid errfile
	local i
	for ((i = 0; i < 600; i++)); do
		[ "$(du -k "$IMG.partial" 2>/dev/null | cut -f1 || echo 0)" -gt 1024 ] && return 0
		kill -0 "$1" 2>/dev/null || { cat "$2"; fail "the backup ended before the kill"; }
		sleep 0.1
	done
	fail "$IMG.partial does not grow"
}

step "the moment: $MOMENT"
case $MOMENT in
idle)
	sync
	arm
	;;
rand | seq | discard)
	writer "$MOMENT"
	sample_store &
	arm
	;;
slowstore)
	[ "$STORE_DELAY" -gt 0 ] || fail "slowstore without fleece.crash_store_delay"
	writer rand
	sample_store &
	# How often a store write is in flight: 25 samples, 20 ms apart, soon
	# after the writes began (the chunks not all marked yet: "changed").
	inflight=/sys/block/$(sysfs_name "/dev/mapper/$CSTORE")/inflight
	busy=0
	for i in $(seq 1 25); do
		read -r _ w < "$inflight"
		[ "$w" = 0 ] || busy=$((busy + 1))
		sleep 0.02
	done
	arm "store-writes-in-flight=$busy/25-samples"
	;;
commit)
	[ "$STORE_DELAY" -gt 0 ] || fail "commit without fleece.crash_store_delay"
	writer rand
	sample_store &
	store=/sys/block/$(sysfs_name "/dev/mapper/$CSTORE")/inflight
	splat_check
	t=$((SECONDS + 30))
	w=0
	while [ "$w" = 0 ] && [ $SECONDS -lt $t ]; do
		read -r _ w < "$store"
	done
	[ "$w" != 0 ] || fail "commit: no store write seen in flight in 30 s"
	say "arm moment=$MOMENT store-writes-in-flight=$w"
	;;
backup-start)
	writer rand
	sleep 2
	arm
	backup_cmd --incremental > b.out 2> b.err || true
	cat b.err
	;;
backup-read | backup-full)
	writer rand
	sleep 3
	if [ "$MOMENT" = backup-full ]; then
		rm -f "$IMG" "$IMG.fleece.json"
		sync
	fi
	backup_cmd --incremental --rate 4M > b.out 2> b.err &
	bpid=$!
	wait_view $bpid b.err
	partial_grows $bpid b.err
	arm "$(head -c 300 b.err | tr '\n' ' ')"
	;;
backup-end)
	writer rand
	sleep 2
	backup_cmd --incremental > b.out 2> b.err || { cat b.err; fail "backup-end: the backup failed"; }
	arm "$(tail -n 2 b.err | tr '\n' ' ')"
	;;
*)
	fail "no moment '$MOMENT'"
	;;
esac
# The host kills qemu now; if it does not, the test fails.
sleep 300
fail "armed at $MOMENT, but not killed within 300 s"

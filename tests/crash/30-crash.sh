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
#                 fleece.crash_store_delay ms): commits take longer
#                 (sampled, and said)
#   commit        the same, the kill as soon as the store's delay device
#                 holds a new write (give a store delay of seconds, e.g.
#                 commit:0:5000): a kill during a commit by construction;
#                 the host's summary shows the last sample before the kill
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
# From the writer's start until the kill: how many store writes the
# store's dm-delay device holds (its status: reads, writes, flushes
# held), a sample per dmsetup call.  Not /sys/block/dm-N/inflight: it
# reads 0 for a bio-based dm device while dm-delay holds a write (tried
# 2026-12-01 on 6.12: a 4 KiB write held 2 s, inflight "0 0" throughout;
# tests/results/2026-12-01-dm-inflight-zero-6.12.txt).  The host keeps
# the last sample before the kill.
store_writes_held() { local f; read -ra f <<< "$(dmsetup status "$CSTORE")"; echo "${f[4]}"; }
sample_store() {
	while :; do
		say "sample store-writes-held=$(store_writes_held)"
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
	# How often the store's delay device holds a write: 5 samples soon
	# after the writes began (the chunks not all marked yet: "changed").
	busy=0
	for i in 1 2 3 4 5; do
		[ "$(store_writes_held)" = 0 ] || busy=$((busy + 1))
	done
	arm "store-writes-held=$busy/5-samples"
	;;
commit)
	[ "$STORE_DELAY" -gt 0 ] || fail "commit without fleece.crash_store_delay"
	writer rand
	sample_store &
	splat_check
	# A write held now that was not one sample ago was issued within the
	# last sample's time (well under a second): it stays held for the
	# store delay (commit:0:5000: 5 s), so the kill, within a second of
	# "arm", hits the commit it belongs to while it is in flight.
	t=$((SECONDS + 60))
	prev=$(store_writes_held)
	while :; do
		now=$(store_writes_held)
		[ "$prev" = 0 ] && [ "$now" != 0 ] && break
		[ $SECONDS -lt $t ] || fail "commit: no new store write seen held in 60 s"
		prev=$now
	done
	say "arm moment=$MOMENT store-writes-held=$prev->$now"
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

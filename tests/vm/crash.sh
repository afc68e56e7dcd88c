#!/bin/bash
# make check-crash: crash and reboot tests of change tracking (issue 14) on
# a disk image that persists across VM boots.
#
# usage: crash.sh KVER KIMAGE KMODROOT MODULE OUTDIR
#   CRASH_MOMENTS: the crash boots, "moment:delay_ms[:store_delay_ms]"
#   words (tests/crash/30-crash.sh lists the moments); default: ten.
#   CRASH_REBOOT=0: no 20-reboot boot (a shorter run, to prove a fault).
#
# Boots, each a run of tests/vm/run.sh with the same raw disk image
# (OUTDIR/disk.img, a virtio disk, cache=none: see below), its own OUTDIR/NN-*
# and its boot script of tests/crash:
#   1     10-setup   LVM on the disk, track start, a full backup (exact),
#                    writes, an orderly shutdown;
#   2     20-reboot  attach (fleece-track-attach.service's ExecStart), the
#                    store clean, writes, an incremental: incremental, exact;
#   3..   30-crash   attach, clean up, a backup (incremental or a full one
#                    with its reason): exact; then the moment is set up
#                    and the guest says "arm" on the console: delay_ms
#                    later this script kills qemu with SIGKILL;
#   last  40-final   attach, clean up, a backup: exact; orderly shutdown.
# A clean boot passes as run.sh says (KTAP, the kernel log scanned); a
# crash boot passes when its backup was exact, it armed, it was killed,
# and neither the kernel log the guest saved at "arm" nor the console
# holds a splat (tests/vm/splat-patterns).  The summary (OUTDIR/summary.txt)
# gives, per boot, the moment of the crash before it and whether its
# backup was incremental or a full one, and why.
#
# The disk: cache=none (run.sh's VM_DISK), so a write the guest saw
# complete is in the host's file, not only in qemu; SIGKILL then loses
# exactly the writes still in flight in qemu, which may or may not have
# landed: what the tracker's marks must cover.  The guest sees a volatile
# write cache (cache=none keeps writeback on) and sends flushes; a kill
# does not drop completed writes that no flush covered (a host power loss
# could), so these runs do not test the flushes themselves.
set -uo pipefail
kver=$1 kimage=$2 kmodroot=$3 module=$4 out=$5
src=$(cd "$(dirname "$0")/../.." && pwd)
run=$src/tests/vm/run.sh
: "${CRASH_MOMENTS:=rand:300 slowstore:500:50 seq:1500 discard:1500 backup-start:0 backup-read:800 commit:0:5000 backup-full:1500 backup-end:0 rand:3000}"
export VM_MEM=${VM_MEM:-2G} VM_CPUS=${VM_CPUS:-1} TEST_TIMEOUT=${TEST_TIMEOUT:-900}
export VM_TIMEOUT=${VM_TIMEOUT:-1200}
rm -rf "$out" && mkdir -p "$out"
export VM_DISK=$out/disk.img VM_PIDFILE=$out/qemu.pid
truncate -s 1536M "$VM_DISK"
summary=$out/summary.txt
: > "$summary"
bad=0 n=0 t_start=$SECONDS

note() { echo "crash: $*" | tee -a "$summary"; }
# The guest's "FLEECE-CRASH boot=N ..." lines on a console, without the
# prefix (the console has CR LF).
lines() { tr -d '\r' < "$1" | sed -n "s/^FLEECE-CRASH boot=$2 //p"; }

# boot KIND [MOMENT DELAY_MS STORE_DELAY_MS]
boot() {
	local kind=$1 moment=${2:-} delay=${3:-0} sdelay=${4:-0}
	local dir rpid rc armed='' killed='' t0=$SECONDS t_arm='' res why=''
	n=$((n + 1))
	dir=$out/$(printf %02d $n)-$kind${moment:+-$moment-$delay}
	rm -f "$VM_PIDFILE"
	VM_APPEND="fleece.crash_boot=$n fleece.crash_moment=${moment:-none} fleece.crash_store_delay=$sdelay" \
		"$run" "$kver" "$kimage" "$kmodroot" "$module" "$dir" crash "$kind" > "$dir.log" 2>&1 &
	rpid=$!
	if [ -n "$moment" ]; then
		while kill -0 $rpid 2>/dev/null; do
			if lines "$dir/console.log" $n 2>/dev/null | grep -q '^arm '; then
				armed=1
				break
			fi
			sleep 0.05
		done
		if [ -n "$armed" ]; then
			t_arm=$((SECONDS - t0))
			sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
			if [ -s "$VM_PIDFILE" ] && kill -KILL "$(cat "$VM_PIDFILE")" 2>/dev/null; then
				killed=1
			fi
		fi
	fi
	wait $rpid
	rc=$?
	res=$(lines "$dir/console.log" $n | sed -n 's/^result //p' | head -n 1)
	if [ -z "$moment" ]; then
		[ $rc = 0 ] || why="run.sh failed (exit $rc): $(tail -n 3 "$dir.log" | tr '\n' ' ')"
	else
		if [ -z "$armed" ]; then
			why="never armed (run.sh exit $rc): $(grep -a '^#' "$dir.log" | tail -n 8 | tr '\n' ' ')"
		elif [ -z "$killed" ]; then
			why="armed, but qemu was gone before the kill (run.sh exit $rc)"
		fi
		if grep -aqE -f "$src/tests/vm/splat-patterns" "$dir/console.log"; then
			why+=" kernel splat on the console"
		fi
		if [ -f "$dir/dmesg-boot$n.txt" ] && grep -aqE -f "$src/tests/vm/splat-patterns" "$dir/dmesg-boot$n.txt"; then
			why+=" kernel splat in the log saved at arm"
		fi
	fi
	[[ $res == *" exact ("* ]] || why+=" no exact backup in this boot${res:+: $res}"
	if [ -n "$why" ]; then
		bad=1
		note "boot $n $kind${moment:+ $moment +${delay}ms}: FAIL:$why (log: $dir.log, $dir/)"
		grep -a '^#' "$dir.log" | tail -n 40 | sed 's/^/crash:   /'
	else
		note "boot $n $kind${moment:+, crash at $moment +${delay}ms (armed after ${t_arm}s)}: ok in $((SECONDS - t0)) s; backup: $res"
	fi
	# Of the store samples after "arm", only the last one before the kill.
	lines "$dir/console.log" $n | grep -v '^result \|^sample ' | sed 's/^/crash:   /' | tee -a "$summary"
	res=$(lines "$dir/console.log" $n | grep '^sample store-writes-held=[0-9][0-9]*$' | tail -n 1)
	[ -z "$res" ] || note "boot $n: last $res (of $(lines "$dir/console.log" $n | grep -c '^sample ') samples before the kill)"
	return 0
}

note "kernel $kver, moments: $CRASH_MOMENTS"
boot 10-setup
[ $bad = 0 ] && [ "${CRASH_REBOOT:-1}" != 0 ] && boot 20-reboot
if [ $bad = 0 ]; then
	for m in $CRASH_MOMENTS; do
		IFS=: read -r moment delay sdelay <<< "$m"
		boot 30-crash "$moment" "${delay:-0}" "${sdelay:-0}"
		[ $bad = 0 ] || break
	done
fi
[ $bad = 0 ] && boot 40-final
crashes=$(grep -c 'crash at' "$summary")
incr=$(grep -c 'backup: tag=[^ ]* kind=incremental' "$summary")
full=$(grep -c 'backup: tag=[^ ]* kind=full' "$summary")
note "$n boots, $crashes crashes, backups: $incr incremental, $full full; $((SECONDS - t_start)) s"
if [ $bad = 0 ]; then
	note "passed"
	rm -f "$VM_DISK"
else
	note "FAILED (the disk image is kept: $VM_DISK)"
fi
exit $bad

#!/bin/bash
# Release by discards on the view, with the fleece device on an lvm2 thin LV
# so that freeing its space is observable:
#  - a view discard covering whole chunks releases them: chunks_released
#    grows in the fleece status and in the view status; the fleece range of
#    released copied chunks is discarded (the thin LV's mapped sectors and
#    data% drop by exactly those chunks), released pending chunks free
#    nothing (they had no copy);
#  - discards covering only part of a chunk change nothing;
#  - later origin writes to released chunks do no copy (cbw_count and the
#    thin LV's usage unchanged) and reach the origin;
#  - view reads of released chunks fail with EIO (O_DIRECT), also a read
#    that only partly covers one, while neighbouring chunks read the old data;
#  - releasing the whole view empties the thin LV;
#  - a discard that meets a chunk with a copy under way waits for it and
#    releases, and counts, every chunk it covers.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

K=1024
CH=$((128 * K))		# chunk: 256 sectors = two 64 KiB thin-pool blocks
NCH=128			# 16 MiB

origin=$(mkdev origin 16)
mkpattern old 16 old
mkpattern new 16 new
put old "$origin"
cp old expect

log "fleece device: a 16 MiB thin LV in a pool with 64 KiB blocks on ram1"
lvm_() { "$@" --devices /dev/ram1; }	# lvm sees only ram1: much less scanning
lvm_ pvcreate -q /dev/ram1 >/dev/null
lvm_ vgcreate -q fvg /dev/ram1 >/dev/null
lvm_ lvcreate -q --type thin-pool -L 32M --chunksize 64k -n pool fvg >/dev/null
lvm_ lvcreate -q -V 16M --thinpool fvg/pool -n fl fvg >/dev/null
fl=/dev/mapper/fvg-fl
mapped() { dmsetup status fvg-fl | awk '{ print $4 }'; }	# thin: mapped sectors
data_percent() { lvm_ lvs --noheadings -o data_percent fvg/fl | tr -d ' '; }
assert_eq "$(mapped)" 0 "thin LV usage before the backup"

fo=$(fleece_create fo "$origin" "$fl" 256)
view=$(view_create fv "$origin" "$fl")
udevadm settle
assert_eq "$(fleece_counts fo)" "$NCH 0 0 0 0 active" "status after start"

counts() { # pending copied released cbw what
	assert_eq "$(fleece_counts fo)" "$1 $2 $3 $4 0 active" "$5: fleece status"
	assert_eq "$(status_field fv 3)" "$3" "$5: chunks_released in the view status"
}
wr() { # first_chunk nr_chunks: new data onto the origin, and into expect
	dd if=new of="$fo" bs=128k skip="$1" seek="$1" count="$2" oflag=direct conv=notrunc status=none
	dd if=new of=expect bs=128k skip="$1" seek="$1" count="$2" conv=notrunc status=none
}
# blkdiscard -f: without it, blkdiscard first probes the view for signatures,
# which fails once a released chunk is in the way.
vdiscard() { blkdiscard -f -o "$1" -l "$2" "$view" 2> err || { cat err >&2; return 1; }; }	# byte offset, length
view_ok() { # first last: view chunks hold the point-in-time image
	cmp <(dev_range "$view" $(($1 * 128)) $((($2 - $1 + 1) * 128))) \
		<(file_range old $(($1 * 128)) $((($2 - $1 + 1) * 128))) ||
		fail "view chunks $1-$2 differ from the point-in-time image"
}
view_eio() { # byte_offset byte_len: an O_DIRECT read there must fail with EIO
	local err
	if err=$(dd if="$view" of=got bs="$2" iflag=direct,skip_bytes skip="$1" count=1 status=none 2>&1); then
		fail "view read of [$1, +$2) succeeded on a released chunk"
	fi
	[[ $err == *"Input/output error"* ]] || fail "view read of [$1, +$2): '$err', expected EIO"
	[ ! -s got ] || fail "view read of [$1, +$2) returned data"
}

log "copy chunks 0-7 by writing the origin: 8 copies, 16 thin blocks mapped"
wr 0 8
counts $((NCH - 8)) 8 0 8 "after writing chunks 0-7"
assert_eq "$(mapped)" $((8 * 256)) "thin LV mapped sectors after 8 copies"
pct0=$(data_percent)
same "$view" old "view after the writes"

log "release copied chunks 0-1 with one view discard"
vdiscard 0 $((2 * CH))
counts $((NCH - 8)) 6 2 8 "after releasing chunks 0-1"
assert_eq "$(mapped)" $((6 * 256)) "thin LV mapped sectors after releasing 2 copied chunks"
pct1=$(data_percent)
log "thin LV data%: $pct0 -> $pct1"
awk -v a="$pct0" -v b="$pct1" 'BEGIN { exit !(b < a) }' ||
	fail "thin LV data% did not drop: $pct0 -> $pct1"

log "partial-chunk discards change nothing"
vdiscard $((2 * CH + 4 * K)) $((CH - 4 * K))		# chunk 2 but its first 4 KiB
vdiscard $((3 * CH + 64 * K)) $CH			# second half of 3, first half of 4
vdiscard $((20 * CH)) $((CH / 2))			# half of pending chunk 20
vdiscard $((30 * CH + 512)) $CH			# 30 but its first sector, 31 but its last
counts $((NCH - 8)) 6 2 8 "after partial discards"
assert_eq "$(mapped)" $((6 * 256)) "thin LV mapped sectors after partial discards"
view_ok 2 4
view_ok 20 20
view_ok 30 31

log "release pending chunks 10-11 (nothing to free), and chunk 5 by a discard reaching into 6"
vdiscard $((10 * CH)) $((2 * CH))
counts $((NCH - 10)) 6 4 8 "after releasing pending chunks 10-11"
assert_eq "$(mapped)" $((6 * 256)) "thin LV mapped sectors after releasing pending chunks"
vdiscard $((5 * CH)) $((CH + CH / 2))
counts $((NCH - 10)) 5 5 8 "after releasing chunk 5"
assert_eq "$(mapped)" $((5 * 256)) "thin LV mapped sectors after releasing chunk 5"

log "origin writes to released chunks 0, 1, 5, 10, 11 (and copied 4, 6, 7): no copy"
wr 0 2
wr 5 1
wr 10 2
# one O_DIRECT bio each over released and copied chunks: 4-7 and 10|11
dd if=new of="$fo" bs=$((4 * CH)) iflag=skip_bytes oflag=direct,seek_bytes \
	skip=$((4 * CH)) seek=$((4 * CH)) count=1 conv=notrunc status=none
dd if=new of="$fo" bs=$((2 * CH)) iflag=skip_bytes oflag=direct,seek_bytes \
	skip=$((10 * CH)) seek=$((10 * CH)) count=1 conv=notrunc status=none
dd if=new of=expect bs=128k skip=4 seek=4 count=4 conv=notrunc status=none
counts $((NCH - 10)) 5 5 8 "after writing released chunks"
assert_eq "$(mapped)" $((5 * 256)) "thin LV mapped sectors after writing released chunks"
same "$fo" expect "origin after writing released chunks"

log "view reads of released chunks fail with EIO, neighbours read the old data"
refused0=$(status_field fv 2)
for c in 0 1 5 10 11; do
	view_eio $((c * CH)) 4096
	view_eio $((c * CH + CH - 4096)) 4096
done
view_eio $((4 * CH)) $((2 * CH))		# chunk 4 (copied) and 5 (released)
view_eio $((9 * CH + 64 * K)) $CH		# chunk 9 (pending) and 10 (released)
refused1=$(status_field fv 2)
[ "$refused1" -ge $((refused0 + 12)) ] ||
	fail "reads_refused went from $refused0 to $refused1 after 12 refused reads"
view_ok 2 4
view_ok 6 9
view_ok 12 $((NCH - 1))

log "release the whole view: every chunk released, the thin LV empty"
blkdiscard -f "$view" 2> err || { cat err >&2; fail "blkdiscard of the whole view"; }
counts 0 0 $NCH 8 "after releasing everything"
assert_eq "$(mapped)" 0 "thin LV mapped sectors after releasing everything"
assert_eq "$(data_percent)" "0.00" "thin LV data% after releasing everything"
view_eio $((100 * CH)) 4096
wr 0 $NCH
counts 0 0 $NCH 8 "after overwriting the whole origin"
same "$fo" new "origin after overwriting everything"
assert_eq "$(mapped)" 0 "thin LV mapped sectors after overwriting the released origin"

dmsetup remove fv
dmsetup remove fo
same "$origin" new "origin device after removal"

# A discard that meets a chunk whose copy is under way waits for it whole
# (it is never cut: dm core sends discards as duplicate bios), then releases
# the rest: every chunk it covers is released and counted once, also those
# it released before it waited.  The copy's fleece write is held for as
# long as the test needs: the fleece device (a dm-delay passing through) is
# suspended with --noflush, so its writes wait in dm core until the resume
# (a fixed delay was too short for the debug kernel under load: the copy
# had ended before the test looked).
log "a discard over chunks 0-3 waits for the copy of chunk 2, then releases all four"
origin2=$(mkdev origin2 16 2)
put old "$origin2"
slice2=$(mkdev slice2 16 3)
dmsetup create delay2 --table "0 32768 delay $slice2 0 0 $slice2 0 0"
fleece_create fo2 "$origin2" /dev/mapper/delay2 256 > /dev/null
view2=$(view_create fv2 "$origin2" /dev/mapper/delay2)
udevadm settle
dmsetup suspend --noflush delay2
# Default policy: the write passes once the old data is in memory; the
# copy's fleece write then waits for delay2's resume.
dd if=new of=/dev/mapper/fo2 bs=128k seek=2 count=1 oflag=direct conv=notrunc status=none
assert_eq "$(copies_in_flight fo2)" 1 "the copy of chunk 2 is under way"
blkdiscard -f -o 0 -l $((4 * CH)) "$view2" 2> err &
dpid=$!
# In the BLKDISCARD ioctl (syscall 16 in /proc/PID/syscall while it sleeps
# there), and still there a second later: waiting for the copy.
in_ioctl() { [ "$(cut -d' ' -f1 "/proc/$dpid/syscall" 2>/dev/null)" = 16 ]; }
for _ in $(seq 1 600); do in_ioctl && break; kill -0 $dpid 2>/dev/null || break; sleep 0.1; done
sleep 1
in_ioctl || { dmsetup resume delay2; wait $dpid; cat err; fail "the discard did not wait for the copy under way"; }
assert_eq "$(copies_in_flight fo2)" 1 "the copy of chunk 2 still under way while the discard waits"
dmsetup resume delay2
wait $dpid || { cat err; fail "the discard over chunks 0-3"; }
assert_eq "$(status_field fv2 3)" 4 "chunks_released in the view status after the discard over chunks 0-3"
read -r pending copied released cbw errors state <<< "$(fleece_counts fo2)"
assert_eq "$released $copied $cbw $errors $state" "4 0 1 0 active" "fleece status after the discard over chunks 0-3"
dmsetup remove fv2 fo2 delay2

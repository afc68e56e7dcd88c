#!/bin/bash
# --fleece-dir: a sparse file DIR/NAME.fleece on a loop device with direct
# I/O; its space grows with copy-before-write and shrinks as the reader
# discards; stop detaches the loop device and removes the file.  Also
# "fleece read" on the view.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
kib() { du -k "$1" | cut -f1; }	# allocated KiB

fsdev=$(mkdev fsdev 96 1)
mkfs.ext4 -q -F "$fsdev"
mkdir -p /mnt/fdir
mount "$fsdev" /mnt/fdir
data=$(mkdev data 32)
mkpattern old 32 old
mkpattern new 16 new
put old "$data"

step "start with --fleece-dir"
$F start --fleece-dir /mnt/fdir data | tee start.out
f=/mnt/fdir/data.fleece
[ -f $f ] || fail "no fleece file $f"
assert_eq "$(stat -c %s $f)" $((32 << 20)) "fleece file size"
[ "$(kib $f)" -lt 1024 ] || fail "the fleece file is not sparse: $(kib $f) KiB"
loop=$(losetup -j $f | cut -d: -f1)
[ -n "$loop" ] || fail "no loop device on $f"
assert_eq "$(cat /sys/block/${loop#/dev/}/loop/dio)" 1 "loop direct I/O"
assert_eq "$(cat /sys/block/${loop#/dev/}/loop/autoclear)" 1 "loop autoclear"
[ "$(dmsetup table data | cut -d' ' -f5)" = "$(cat /sys/block/${loop#/dev/}/dev)" ] ||
	fail "the fleece table does not use $loop: $(dmsetup table data)"
$F status data | tee status.out
grep -q "fleece:     $loop ($f, direct I/O), 0 B in use" status.out || fail "status of the fleece file"

step "copy-before-write grows the file"
put new /dev/mapper/data		# the first 16 MiB: 256 chunks of 64 KiB
copies_settle data	# the last copies land after the writes complete
grown=$(kib $f)
echo "allocated after writing 16 MiB: $grown KiB"
[ "$grown" -ge $((16 * 1024)) ] && [ "$grown" -lt $((17 * 1024)) ] ||
	fail "fleece file should hold 16 MiB of copies, has $grown KiB"
$F status --json data | python3 -c '
import json, sys
d = json.load(sys.stdin)["devices"][0]
assert d["fleece_bytes_used_exact"] and d["fleece_bytes_used"] >= 16 << 20, d
assert d["chunks_copied"] == 256 and d["cbw_in_flight"] == 0, d
assert d["fleece_file"] == "/mnt/fdir/data.fleece", d'

step "on a terminal: a progress bar (read --no-discard releases nothing)"
script -qec "$F read --no-discard --rate 8M --block-size 1M /dev/mapper/data-fleece-view -o tty.img" typescript > /dev/null
cat -v typescript | tail -c 300; echo
grep -q $'\r' typescript || fail "no carriage returns: not a bar"
grep -qE '\[#+\.*\] +[0-9]+% .* / 32.0 MiB .*/s +(ETA|in) ' typescript || fail "no progress bar with bytes, rate and ETA"
cmp tty.img old || fail "read --no-discard: wrong image"
assert_eq "$(status_field data 4)" 0 "--no-discard released chunks"
rm tty.img

step "the reader discards: the file shrinks"
$F read --rate 4M --block-size 1M -p none /dev/mapper/data-fleece-view -o view.img 2> read.err &
rpid=$!
samples=()
while kill -0 $rpid 2>/dev/null; do samples+=("$(kib $f)"); sleep 0.3; done
wait $rpid || { cat read.err; fail "fleece read failed"; }
cat read.err
# The summary: 32 MiB at 4 MiB/s take 8 s.
secs=$(sed -n 's/^.*data-fleece-view: read complete: 32\.0 MiB in \([0-9]*\.[0-9][0-9]\) s ([0-9.]* [KM]iB\/s)$/\1/p' read.err)
[ -n "$secs" ] || fail "no summary from fleece read"
awk -v s="$secs" 'BEGIN { exit !(s >= 7.5 && s < 60) }' || fail "read took $secs s: at 4 MiB/s it takes 8 s or more"
samples+=("$(kib $f)")
echo "allocated KiB while reading: ${samples[*]}"
prev=$grown between=0
for s in "${samples[@]}"; do
	[ "$s" -le "$prev" ] || fail "the fleece file grew while nothing was written: ${samples[*]}"
	[ "$s" -gt 1024 ] && [ "$s" -lt $((15 * 1024)) ] && between=1
	prev=$s
done
[ "$between" = 1 ] || fail "never saw the file partly released: ${samples[*]}"
[ "${samples[-1]}" -lt 256 ] || fail "the file still holds ${samples[-1]} KiB after the reader"
cmp view.img old || fail "fleece read: the image is not the point-in-time content"
assert_eq "$(status_field data 4)" 512 "all chunks released"

step "stop: loop device and file gone"
$F stop data
[ ! -e $f ] || fail "fleece file left"
[ -z "$(losetup -a)" ] || fail "loop device left: $(losetup -a)"
[ -z "$(dmsetup info -c --noheadings -o uuid | grep FLEECE- || true)" ] || fail "FLEECE- devices left"
cmp <(dd if="$data" bs=1M count=16 iflag=direct status=none) new || fail "data lost its new content"

step "read refuses what is not a fleece view; a stale fleece file is refused"
expect_exit 3 $F read "$data" -o x.img
echo "$T_ERR" | grep_q "not a fleece view" || fail "read of a non-view: $T_ERR"
[ ! -e x.img ] && [ ! -e x.img.partial ] || fail "read of a non-view created output"
touch /mnt/fdir/data.fleece
expect_exit 3 $F start --fleece-dir /mnt/fdir data
echo "$T_ERR" | grep_q "already exists" || fail "existing fleece file: $T_ERR"
rm /mnt/fdir/data.fleece
[ -z "$(dmsetup info -c --noheadings -o uuid | grep FLEECE- || true)" ] || fail "refused start left devices"

step "a fleece dir on the device itself is refused"
mkfs.ext4 -q -F "$data"
mkdir -p /mnt/self && mount "$data" /mnt/self
expect_exit 3 $F start --fleece-dir /mnt/self data
echo "$T_ERR" | grep_q "on data itself" || fail "fleece dir on the device: $T_ERR"
umount /mnt/self
umount /mnt/fdir
step "ok"

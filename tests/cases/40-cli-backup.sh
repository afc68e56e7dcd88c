#!/bin/bash
# fleece backup while fio writes to the device: the image equals a copy of
# the device taken while it was quiesced at the point in time.
#  1. ext4 with fio writing a file in it, backup to a file: same checksum as
#     the reference, holes for zero chunks, fsck -n passes, --sha256 right.
#  2. the raw device under fio, backup to standard output through a pipe.
# Nothing is left afterwards: no FLEECE- device, no state, no .partial.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
fio_pid=
cleanup() {
	fsfreeze -u /mnt/data 2>/dev/null || true
	if [ -n "$fio_pid" ]; then
		kill -CONT $(fio_pids $fio_pid) 2>/dev/null || true
		kill $(fio_pids $fio_pid) 2>/dev/null || true
	fi
	wait 2>/dev/null || true
}
trap cleanup EXIT

# fio and its job processes (each job runs in a session of its own).
fio_pids() { echo "$1" $(pgrep -P "$1"); }

# Stop every fio process and wait until each is really stopped ('T'): a
# process inside a write syscall stops only once the write has completed.
quiesce_fio() { # pid
	local i p st all pids
	pids=$(fio_pids "$1")
	[ "$(echo $pids | wc -w)" -ge 2 ] || fail "fio has no job process"
	kill -STOP $pids
	for i in $(seq 1 200); do
		all=1
		for p in $pids; do
			st=$(awk '{ print $3 }' /proc/$p/stat 2>/dev/null || echo T)
			[ "$st" = T ] || all=0
		done
		[ $all = 1 ] && return 0
		sleep 0.05
	done
	fail "fio does not stop"
}

# On a mismatch: which 4K blocks differ, and how (fio stamps each 512-byte
# sector of its buffers with the offset and the time at bytes 0..63).
explain_mismatch() { # ref out current
	python3 - "$@" <<'PY'
import struct, sys
ref, out, cur = (open(f, "rb").read() for f in sys.argv[1:4])
n = 0
for b in range(len(ref) // 4096):
    r, o, c = (x[b * 4096:(b + 1) * 4096] for x in (ref, out, cur))
    if r == o:
        continue
    n += 1
    if n <= 10:
        t = lambda x: struct.unpack("<QQ", x[48:64])
        print("block %d (chunk %d): ref t=%s out t=%s current t=%s out==current:%s" %
              (b, b // 16, t(r), t(o), t(c), o == c))
print("%d 4K blocks differ" % n)
PY
}

# Wait until NAME's view exists (the backup has taken its point in time);
# $2: the backup's pid, $3: its stderr.
wait_view() {
	local i
	for i in $(seq 1 600); do
		[ -b "/dev/mapper/$1-fleece-view" ] && dmsetup status "$1" | grep_q ' fleece ' && return 0
		kill -0 "$2" 2>/dev/null || { cat "$3"; fail "the backup ended before its view appeared"; }
		sleep 0.1
	done
	cat "$3"
	fail "no view for $1"
}

# --- 1. ext4 + fio, backup to a file ---------------------------------------
step "ext4 with files, fio writing into it"
data=$(mkdev data 32)
fl=$(mkdev fl 32 1)
mkfs.ext4 -q -F -E nodiscard "$data"
mkdir -p /mnt/data
mount "$data" /mnt/data
for i in $(seq 1 10); do head -c $((i * 60000)) /dev/urandom > /mnt/data/f$i; done
head -c 8M /dev/urandom > /mnt/data/fio.dat
sync
(cd /mnt/data && sha256sum f[0-9]*) > manifest
table_before=$(dmsetup table data)

setsid fio --name=w --filename=/mnt/data/fio.dat --size=8M --rw=randwrite --bs=4k \
	--direct=1 --ioengine=psync --time_based --runtime=600 --randrepeat=0 \
	> fio.log 2>&1 &
fio_pid=$!
dmname=$(sysfs_name "$data")
writes() { awk '{ print $5 }' /sys/block/$dmname/stat; }
# fio must be writing before the point in time.
w0=$(writes)
for i in $(seq 1 300); do
	[ "$(writes)" -gt $((w0 + 100)) ] && break
	kill -0 $fio_pid || { cat fio.log; fail "fio died"; }
	sleep 0.1
done
[ "$(writes)" -gt $((w0 + 100)) ] || { cat fio.log; fail "fio does not write"; }

step "quiesce (fsfreeze), take the reference, start the backup, thaw"
fsfreeze -f /mnt/data
dd if="$data" of=ref.img bs=1M iflag=direct status=none
$F backup --fleece-dev "$fl" --sha256 --rate 4M --progress lines --interval 2 \
	data -o out.img > backup.out 2> backup.err &
bpid=$!
wait_view data $bpid backup.err
fsfreeze -u /mnt/data
# fio must be writing again: copies before the reader gets there.
# cbw: copies so far; -1 once data no longer runs the fleece (backup over).
cbw() { dmsetup status data | awk '$3 == "fleece" { print $9; exit } { print -1 }'; }
w1=$(writes)
for i in $(seq 1 200); do
	n=$(cbw)
	[ "$n" -ne 0 ] && break
	sleep 0.1
done
# A backup over before a poll saw a copy (-1) is not a failure here: the
# polls are slow where a program start takes a second (the debug kernel),
# and the copies are released as the reader passes.  The summary's count
# of copies, checked below, says whether fio's writes made any.
if [ "$n" -eq 0 ]; then
	dmsetup status; cat backup.err fio.log
	for p in $(pgrep fio); do echo "fio $p: $(cat /proc/$p/wchan) $(awk '{print $3}' /proc/$p/stat)"; cat /proc/$p/stack; done
	fail "fio does not write after the thaw (device writes: $w1 at the thaw, $(writes) now)"
fi
[ "$n" -gt 0 ] || log "the backup ended before a poll saw a copy (device writes: $w1 at the thaw, $(writes) now)"
[ -e out.img.partial ] || [ "$n" -lt 0 ] || fail "the backup does not write out.img.partial"
[ ! -e out.img ] || [ "$n" -lt 0 ] || fail "out.img exists before the backup is complete"
step "backup running while fio writes"
wait $bpid || { cat backup.err; fail "backup failed"; }
cat backup.err backup.out
kill $(fio_pids $fio_pid)
wait $fio_pid 2>/dev/null || true
fio_pid=
no_leftovers
assert_eq "$(dmsetup table data)" "$table_before" "original table back"

step "compare"
if ! cmp out.img ref.img; then
	dd if="$data" of=cur.img bs=1M iflag=direct status=none
	explain_mismatch ref.img out.img cur.img
	fail "the image differs from the point-in-time reference"
fi
assert_eq "$(cut -d' ' -f1 backup.out)" "$(sha256sum < ref.img | cut -d' ' -f1)" "--sha256"
assert_eq "$(cut -d' ' -f3 backup.out)" "out.img" "--sha256 names the file"
grep -q "of 32.0 MiB" backup.err || fail "no progress lines"
copied=$(sed -n 's/.* \([0-9]*\) chunks copied before they were read.*/\1/p' backup.err)
[ "${copied:-0}" -gt 0 ] || fail "fio's writes made no copy-before-write (summary: $(tail -1 backup.err))"
alloc=$(( $(stat -c %b out.img) * $(stat -c %B out.img) ))
[ "$alloc" -lt $((28 << 20)) ] || fail "no holes in out.img: $alloc bytes allocated"
fsck.ext4 -n -f out.img > fsck.out 2>&1 || { cat fsck.out; fail "fsck -n of the image"; }
mkdir -p /mnt/img
modprobe loop
mount -o ro,loop,noload out.img /mnt/img
(cd /mnt/img && sha256sum --quiet -c "$OLDPWD/manifest") || fail "files in the image differ"
umount /mnt/img
umount /mnt/data

# --- 2. the raw device under fio, backup to stdout ----------------------------
step "raw device under fio, backup to standard output"
raw=$(mkdev raw 16)
mkpattern pat 16 raw
put pat "$raw"
setsid fio --name=w --filename="$raw" --rw=randwrite --bs=4k --direct=1 \
	--ioengine=psync --time_based --runtime=600 --randrepeat=0 > fio2.log 2>&1 &
fio_pid=$!
dmname=$(sysfs_name "$raw")
w0=$(writes)
for i in $(seq 1 300); do
	[ "$(writes)" -gt $((w0 + 100)) ] && break
	kill -0 $fio_pid || { cat fio2.log; fail "fio died"; }
	sleep 0.1
done
quiesce_fio $fio_pid
dd if="$raw" of=ref2.img bs=1M iflag=direct status=none
# A tmpfs: no block device under it (the guest's overlay root, whose layers
# fleece cannot find, would be refused without --force).
mkdir -p /mnt/bfdir
mount -t tmpfs -o size=64m tmpfs /mnt/bfdir
# The pipe's reader starts stopped: until it runs, the backup cannot write
# more than the pipe holds, so its reader stays within the first two 4 MiB
# blocks (the one it writes, the one read ahead) whatever the timing.
rm -f consumer.pid
( $F backup --fleece-dir /mnt/bfdir --sha256 --rate 2M -p lines -i 2 raw -o - 2> backup2.err |
	{ echo $BASHPID > consumer.pid; kill -STOP $BASHPID; exec cat; } > out2.img ) &
bpid=$!
wait_view raw $bpid backup2.err
kill -CONT $(fio_pids $fio_pid)
# A copy-before-write for certain, whatever fio gets done on a loaded host
# before the reader is through: the last MiB, which the reader cannot have
# read yet (its output is held), rewritten now (after the point in time:
# the image must not show it); then the output flows.
dd if=/dev/urandom of=/dev/mapper/raw bs=64k seek=$(((16 - 1) * 16)) count=16 \
	oflag=direct conv=notrunc status=none
[ -s consumer.pid ] || fail "the pipe's reader did not start"
kill -CONT "$(cat consumer.pid)"
wait $bpid || { cat backup2.err; fail "backup to stdout failed"; }
cat backup2.err
kill $(fio_pids $fio_pid)
wait $fio_pid 2>/dev/null || true
fio_pid=
no_leftovers
[ -z "$(ls -A /mnt/bfdir)" ] || fail "fleece files left: $(ls /mnt/bfdir)"
umount /mnt/bfdir
if ! cmp out2.img ref2.img; then
	dd if="$raw" of=cur2.img bs=1M iflag=direct status=none
	explain_mismatch ref2.img out2.img cur2.img
	fail "the streamed image differs from the point-in-time reference"
fi
grep -q "^$(sha256sum < ref2.img | cut -d' ' -f1)  -$" backup2.err || fail "--sha256 with -o - goes to stderr"
copied=$(sed -n 's/.* \([0-9]*\) chunks copied before they were read.*/\1/p' backup2.err)
[ "${copied:-0}" -gt 0 ] || fail "no copy-before-write during the streamed backup"
step "ok"

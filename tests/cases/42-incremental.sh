#!/bin/bash
# fleece backup --incremental: a chain of backups of a tracked device, each
# image checked byte for byte against the point in time.
#  1. ext4 on a tracked device, fio writing into it before, between and
#     during every backup; the images on xfs (reflink clones): a full
#     backup, then incrementals.  For the proof the file system is frozen
#     while the backup takes its point in time and the device is
#     checksummed then (ref).  Each incremental's changed map covers every
#     chunk that differs from the previous point in time and is a small
#     part of the device.
#     The changed chunks are cloned into the image from a scratch file
#     (backup 2), or copied in where the clone is refused (backup 3).
#  2. an incremental stopped midway (SIGTERM) leaves FILE the previous
#     image, the tracker merges the set back, and the next incremental is
#     exact; the same after a read error (FLEECE_FAULT) and after a
#     SIGKILL and "fleece stop".
# 42-incremental-raw: exact changed maps, the copy where there is no
# reflink, and every fallback to a full backup.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state FLEECE_TRACK_DIR=$PWD/trackdir
fio_pid=
cleanup() {
	fsfreeze -u /mnt/vol 2>/dev/null || true
	[ -z "$fio_pid" ] || kill -- -"$fio_pid" 2>/dev/null || true
	wait 2>/dev/null || true
}
trap cleanup EXIT

CH=65536		# tracker and fleece chunk
mkdir -p /mnt/vol /mnt/img /mnt/fdir
mount -t tmpfs -o size=200m tmpfs /mnt/fdir		# fleece space
img=$(mkdev img 300 2)
mkfs.xfs -q -f -m reflink=1 "$img"
mount "$img" /mnt/img


wait_view() { # name pid errfile
	local i
	for i in $(seq 1 600); do
		[ -b "/dev/mapper/$1-fleece-view" ] && dmsetup status "$1" | grep_q ' fleece ' && return 0
		kill -0 "$2" 2>/dev/null || { cat "$3"; fail "the backup ended before its view appeared"; }
		sleep 0.1
	done
	cat "$3"
	fail "no view for $1"
}

sha() { sha256sum < "$1" | cut -d' ' -f1; }
# Every chunk that differs between two images must be inside the map's extents.
map_covers() { # old new map
	python3 - "$@" <<'PY'
import json, sys
old, new = (open(f, "rb").read() for f in sys.argv[1:3])
m = json.load(open(sys.argv[3]))
ch = m["chunk_bytes"]
ext = m["extents"]
def inside(off):
    return any(a <= off and off + ch <= a + l for a, l in ext)
bad = [c for c in range(len(new) // ch)
       if old[c * ch:(c + 1) * ch] != new[c * ch:(c + 1) * ch] and not inside(c * ch)]
diff = sum(1 for c in range(len(new) // ch) if old[c * ch:(c + 1) * ch] != new[c * ch:(c + 1) * ch])
print("%d chunks differ, %d read, %d outside the map" % (diff, m["read_bytes"] // ch, len(bad)))
sys.exit(1 if bad else 0)
PY
}

# --- 1. ext4 + fio, a chain on xfs -----------------------------------------
step "a tracked ext4 device, fio writing into it"
vol=$(mkdev vol 32)
store=$(mkdev store 1 1)
mkfs.ext4 -q -F -E nodiscard "$vol"
$F track start vol --store "$store"
dmsetup table vol | grep_q ' fleece-track ' || fail "vol is not tracked: $(dmsetup table vol)"
mount "$vol" /mnt/vol
for i in $(seq 1 8); do head -c $((i * 60000)) /dev/urandom > /mnt/vol/f$i; done
head -c 4M /dev/urandom > /mnt/vol/db.dat
sync

fio_start() {
	setsid fio --name=db --filename=/mnt/vol/db.dat --size=4M --rw=randwrite --bs=4k \
		--direct=1 --ioengine=psync --rate_iops=150 --time_based --runtime=3600 \
		--randrepeat=0 > fio.log 2>&1 &
	fio_pid=$!
	sleep 1
	kill -0 $fio_pid || { cat fio.log; fail "fio did not start"; }
}
fio_stop() { kill -- -"$fio_pid" 2>/dev/null || true; wait $fio_pid 2>/dev/null || true; fio_pid=; }

# backup N [options...]: a backup of vol to /mnt/img/vol.img while fio
# writes, its point in time taken frozen (ref.N), the image checked; the
# map in map.N, stderr in err.N.  Sets $bpid while it runs (via $1).
backup_start() { # n options...
	local n=$1
	shift
	fsfreeze -f /mnt/vol
	dd if="$vol" of=ref.$n bs=1M iflag=direct status=none
	$F backup --fleece-dir /mnt/fdir --sha256 --changed-map map.$n "$@" \
		vol -o /mnt/img/vol.img > out.$n 2> err.$n &
	bpid=$!
	wait_view vol $bpid err.$n
	fsfreeze -u /mnt/vol
}
backup_check() { # n
	local n=$1
	cat err.$n
	cmp /mnt/img/vol.img ref.$n || fail "backup $n: the image differs from the point in time"
	assert_eq "$(cut -d' ' -f1 out.$n)" "$(sha ref.$n)" "backup $n: --sha256"
	[ -s /mnt/img/vol.img.fleece.json ] || fail "backup $n: no record"
	no_leftovers /mnt/img /mnt/fdir
	assert_eq "$(dmsetup table vol | cut -d' ' -f3)" fleece-track "backup $n: vol's table after"
}
backup() { # n options...
	local t0=$SECONDS
	backup_start "$@"
	wait $bpid || { cat err.$1; fail "backup $1 failed"; }
	backup_check "$1"
	echo "# backup $1: $((SECONDS - t0)) s"
}
# The map of incremental N: incremental, every changed chunk since N-1 in
# it, and at most $2 percent of the device.
check_incr() { # n max_percent
	local n=$1 p=$(($1 - 1)) rb
	assert_eq "$(map_field map.$n incremental)" true "backup $n: incremental"
	grep_q "incremental backup complete: read" err.$n || fail "backup $n: no incremental summary"
	! grep_q "a full backup" err.$n || fail "backup $n fell back to full"
	[ -e ref.$p ] || p=$(($1 - 2))
	map_covers ref.$p ref.$n map.$n || fail "backup $n: a changed chunk outside the map"
	rb=$(map_field map.$n read_bytes)
	[ "$rb" -gt 0 ] || fail "backup $n read nothing while fio wrote"
	[ $((rb * 100)) -le $(($(sectors "$vol") * 512 * $2)) ] ||
		fail "backup $n read $rb bytes: more than $2% of the device"
	echo "# backup $n read $rb of $(($(sectors "$vol") * 512)) bytes"
	rm -f ref.$((p - 1))
}

fio_start
step "backup 1: --incremental with no image yet: a full one"
backup 1 --incremental
grep_q -- "--incremental: a full backup: no previous image" err.1 || fail "backup 1: no reason given"
assert_eq "$(map_field map.1 incremental)" false "map 1: incremental"
assert_eq "$(map_field map.1 extents)" "[[0, $((32 << 20))]]" "map 1: the whole device"
grep_q '"epoch"' /mnt/img/vol.img.fleece.json || fail "no epoch in the record"
# How the changed chunks went into the clone (tools/remap.c; -v):
# "cloned in from a scratch file: X; copied in where the file system
# refused the clone: Y".
cloned() { sed -n 's/.*cloned in from a scratch file: \([^;]*\);.*/\1/p' "$1"; }
refused() { sed -n 's/.*refused the clone: \(.*\)$/\1/p' "$1"; }
step "backup 2: incremental while fio writes, its chunks cloned into the image"
backup 2 --incremental -v
check_incr 2 40
[ -n "$(cloned err.2)" ] && [ "$(cloned err.2)" != "0 B" ] ||
	fail "backup 2: no chunk cloned in from the scratch file: '$(cloned err.2)'"
assert_eq "$(refused err.2)" "0 B" "backup 2: bytes copied in after a refused clone"
step "backup 3: incremental, the clone refused (FLEECE_FAULT remap=EOPNOTSUPP): copied in"
export FLEECE_FAULT=remap=EOPNOTSUPP
backup 3 --incremental -v
unset FLEECE_FAULT
check_incr 3 40
assert_eq "$(cloned err.3)" "0 B" "backup 3: bytes cloned in with the clone refused"
[ -n "$(refused err.3)" ] && [ "$(refused err.3)" != "0 B" ] ||
	fail "backup 3: nothing copied in after the refused clone: '$(refused err.3)'"

step "backup 4: incremental, stopped midway by SIGTERM: FILE stays image 3"
# Many changed chunks, so that the slow reader is still at it when stopped.
dd if=/dev/urandom of=/mnt/vol/f8 bs=64k count=12 conv=notrunc oflag=direct status=none
before=$(sha /mnt/img/vol.img)
backup_start 4 --incremental --rate 128K
for i in $(seq 1 100); do
	[ "$(stat -c %s /mnt/img/vol.img.partial 2>/dev/null || echo 0)" -gt 0 ] && break
	sleep 0.1
done
sleep 1
kill -TERM $bpid
rc=0
wait $bpid || rc=$?
cat err.4
assert_eq "$rc" 143 "backup 4: exit status after SIGTERM"
assert_eq "$(sha /mnt/img/vol.img)" "$before" "backup 4: FILE after the stopped backup"
no_leftovers /mnt/img /mnt/fdir
status=$(dmsetup status vol)
echo "# tracker: $status"
assert_eq "$(echo "$status" | cut -d' ' -f12)" merged "backup 4: the tracker's previous set"
rm -f ref.4

step "backup 4b: incremental failed by a read error at its 3rd block: FILE stays image 3"
# FLEECE_FAULT read@3 (tools/read.c, reader_get()): the reader takes the
# blocks its threads read ahead in order, and the 3rd one fails.
dd if=/dev/urandom of=/mnt/vol/f6 bs=64k count=12 conv=notrunc oflag=direct status=none
export FLEECE_FAULT=read@3=EIO
backup_start 4b --incremental
unset FLEECE_FAULT
rc=0
wait $bpid || rc=$?
cat err.4b
assert_eq "$rc" 1 "backup 4b: exit status after a read error"
grep_q "vol: read error at [0-9]* bytes: Input/output error" err.4b ||
	fail "backup 4b: no read error reported"
assert_eq "$(sha /mnt/img/vol.img)" "$before" "backup 4b: FILE after the failed backup"
no_leftovers /mnt/img /mnt/fdir
assert_eq "$(dmsetup status vol | cut -d' ' -f12)" merged "backup 4b: the tracker's previous set"
assert_eq "$(dmsetup table vol | cut -d' ' -f3)" fleece-track "backup 4b: vol's table after"
rm -f ref.4b
step "backup 5: incremental again, exact (the merged set is read too)"
backup 5 --incremental
check_incr 5 50

step "backup 6: incremental killed (SIGKILL) midway, then fleece stop"
dd if=/dev/urandom of=/mnt/vol/f7 bs=64k count=12 conv=notrunc oflag=direct status=none
before=$(sha /mnt/img/vol.img)
backup_start 6 --incremental --rate 128K
sleep 2
kill -KILL $bpid
wait $bpid || true
$F stop vol 2> stop.err || { cat stop.err; fail "fleece stop after SIGKILL"; }
assert_eq "$(sha /mnt/img/vol.img)" "$before" "backup 6: FILE after SIGKILL and stop"
no_leftovers /mnt/img /mnt/fdir
rm -f ref.6
step "backup 7: incremental, exact (the ready set is merged by the checkpoint)"
backup 7 --incremental
check_incr 7 50
fio_stop
ls -ls /mnt/img
umount /mnt/vol
fsck.ext4 -n -f /mnt/img/vol.img > fsck.out 2>&1 || { cat fsck.out; fail "fsck -n of the last image"; }
rm -f ref.*

log "done"

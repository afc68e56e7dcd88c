#!/bin/bash
# make demo: dm-fleece's main job, end to end.
#
# A virtual machine's disk is an LVM logical volume with an ext4 file system
# on it, busy: fio keeps writing to a database-like file.  "fleece backup"
# takes a consistent point in time, reads the frozen image to a file while
# the writes go on, and cleans up.  Then the proof: the image's SHA-256 is
# the one the LV had at the point in time, fsck -n passes on it and every
# file in it is intact.  The LV's changes are tracked ("fleece track"):
# after more writes, "fleece backup --incremental" brings the image up to
# date reading only the chunks that changed, proved the same way.
#
# The story is printed on the VM console ("# " lines reach the terminal of
# "make demo") and into the log.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state FLEECE_TRACK_DIR=$PWD/trackdir

say() { echo "$*"; echo "# $*" > /dev/console; }
show() { sed -u 's/^/    /' | while IFS= read -r l; do say "$l"; done; }
fio_pid=
cleanup() {
	fsfreeze -u /mnt/vm 2>/dev/null || true
	[ -z "$fio_pid" ] || kill -- -"$fio_pid" 2>/dev/null || true
	wait 2>/dev/null || true
}
trap cleanup EXIT

say ""
say "=== dm-fleece demo: back up a busy ext4 LV while it is being written ==="
say ""
say "--- setup: volume group 'demo' on a RAM disk, four LVs"
pvcreate -q /dev/ram2 > /dev/null
vgcreate -q demo /dev/ram2 > /dev/null
lvcreate -q -y -L 128M -n vm demo > /dev/null		# the VM's disk
lvcreate -q -y -L 96M -n scratch demo > /dev/null	# local space for the fleece file
lvcreate -q -y -L 320M -n backup demo > /dev/null	# the backup target (xfs: reflink)
lvcreate -q -y -L 4M -n track demo > /dev/null		# the change tracker's store
for lv in vm scratch; do mkfs.ext4 -q -F -L $lv /dev/demo/$lv; done
mkfs.xfs -q -f -m reflink=1 -L backup /dev/demo/backup
mkdir -p /mnt/vm /mnt/scratch /mnt/backup /mnt/image
mount /dev/demo/vm /mnt/vm
mount /dev/demo/scratch /mnt/scratch
mount /dev/demo/backup /mnt/backup
say "    demo/vm      128 MiB, ext4, mounted on /mnt/vm      (the disk to back up)"
say "    demo/scratch  96 MiB, ext4, mounted on /mnt/scratch (fleece space)"
say "    demo/backup  320 MiB, xfs,  mounted on /mnt/backup  (backup target)"
say "    demo/track     4 MiB, the store of demo/vm's change tracker"
say "\$ fleece track start demo/vm --store /dev/demo/track"
$F track start demo/vm --store /dev/demo/track 2>&1 | show

say "--- files on the disk"
mkdir -p /mnt/vm/docs /mnt/vm/data
cp -r /usr/share/doc/bash /usr/share/doc/lvm2 /usr/share/doc/fio /mnt/vm/docs/ 2>/dev/null || true
for i in $(seq 1 24); do head -c $((i * 60000)) /dev/urandom > /mnt/vm/data/blob$i; done
head -c 24M /dev/urandom > /mnt/vm/db.dat
sync
(cd /mnt/vm && find docs data -type f -print0 | xargs -0 sha256sum) > manifest
say "    $(wc -l < manifest) files, $(du -sh /mnt/vm | cut -f1) used; 24 MiB database file db.dat"

say "--- a writer: fio, random 4 KiB direct writes into db.dat, all along"
setsid fio --name=db --filename=/mnt/vm/db.dat --size=24M --rw=randwrite --bs=4k \
	--direct=1 --ioengine=psync --rate_iops=400 --time_based --runtime=3600 \
	--randrepeat=0 > fio.log 2>&1 &
fio_pid=$!
sleep 3
kill -0 $fio_pid || { cat fio.log; fail "fio did not start"; }

say "--- for the proof only: freeze the file system for a moment and checksum the"
say "    LV, so that we know the exact point-in-time content (fleece needs no freeze)"
fsfreeze -f /mnt/vm
ref_sum=$(dd if=/dev/demo/vm bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1)
say "    point-in-time SHA-256: $ref_sum"

say ""
# The command as run, shown as typed (progress as lines: the console is no terminal).
backup=(backup --fleece-dir /mnt/scratch --sha256 --rate 6M --progress lines --interval 3
	demo/vm -o /mnt/backup/vm.img)
say "\$ fleece ${backup[*]}"
t0=$(date +%s.%N)
$F "${backup[@]}" > backup.out 2> backup.err &
bpid=$!
tail -n +1 -f --pid=$bpid backup.err | show &
tpid=$!
for i in $(seq 1 600); do
	[ -b /dev/mapper/demo-vm-fleece-view ] && break
	kill -0 $bpid 2>/dev/null || { cat backup.err; fail "the backup ended early"; }
	sleep 0.1
done
fsfreeze -u /mnt/vm
say "    (the file system runs again: fio writes on during the backup)"
# What "fleece status" says in the middle of it.
sleep 6
if kill -0 $bpid 2>/dev/null; then
	say "\$ fleece status demo-vm"
	$F status demo-vm 2>&1 | show || true
	say "\$ du -h /mnt/scratch/demo-vm.fleece"
	du -h /mnt/scratch/demo-vm.fleece | show || true
fi
wait $bpid || { cat backup.err; fail "fleece backup failed"; }
t1=$(date +%s.%N)
wait $tpid || true
kill -- -$fio_pid; wait $fio_pid 2>/dev/null || true; fio_pid=
writes=$(sed -n 's/.*write: IOPS=\([^,]*\),.*/\1/p' fio.log | head -1)
cat backup.out | show

say ""
say "--- proof"
img_sum=$(sha256sum < /mnt/backup/vm.img | cut -d' ' -f1)
say "    image SHA-256:         $img_sum"
say "    point-in-time SHA-256: $ref_sum"
[ "$img_sum" = "$ref_sum" ] || fail "the image is not the point-in-time content"
assert_eq "$(cut -d' ' -f1 backup.out)" "$ref_sum" "fleece's --sha256"
say "    equal: the image is the LV exactly as it was at the point in time"
fsck.ext4 -n -f /mnt/backup/vm.img > fsck.out 2>&1 || { cat fsck.out; fail "fsck -n of the image"; }
say "    fsck.ext4 -n: $(tail -1 fsck.out)"
modprobe loop
mount -o ro,loop,noload /mnt/backup/vm.img /mnt/image
(cd /mnt/image && sha256sum --quiet -c "$OLDPWD/manifest") || fail "files in the image differ"
say "    all $(wc -l < manifest) files in the image match their checksums"
umount /mnt/image
u=$(dmsetup info -c --noheadings -o uuid | grep '^FLEECE-' || true)
[ -z "$u" ] || fail "fleece devices left: $u"
[ -z "$(losetup -a)" ] || fail "loop devices left"
[ -z "$(ls /mnt/scratch | grep -v lost+found || true)" ] || fail "fleece file left"
say "    nothing left behind: no fleece devices, no loop device, no fleece file"

summary=$(grep "backup complete" backup.err)
copied=$(echo "$summary" | sed -n 's/.* \([0-9]*\) chunks copied before they were read.*/\1/p')
peak=$(echo "$summary" | sed -n 's/.*fleece peak \(.*\)$/\1/p')
alloc=$(du -h /mnt/backup/vm.img | cut -f1)
say ""
say "--- summary"
say "    image:            128 MiB ($alloc allocated: zero chunks are holes)"
say "    backup time:      $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s (read at most 6 MiB/s, to let the writer work)"
say "    writer:           fio, ${writes:-?} write IOPS on average over its run (capped at 400)"
say "    copies:           $copied chunks of 64 KiB were copied before the reader got to them"
say "    fleece space:     peak $peak in /mnt/scratch, 0 at the end"
say ""

say "=== incremental: more writes, then only the changed chunks are read ==="
# incr N FIO_SIZE MAX_PERCENT: fio writes into the first FIO_SIZE of db.dat
# during the backup; the image must be the point in time, the read at most
# MAX_PERCENT of the LV.
incr() {
	local n=$1 i
	say ""
	say "--- incremental $n: fio writes 4 KiB blocks into the first $2 of db.dat"
	setsid fio --name=db --filename=/mnt/vm/db.dat --size="$2" --rw=randwrite --bs=4k \
		--direct=1 --ioengine=psync --rate_iops=400 --time_based --runtime=3600 \
		--randrepeat=0 > fio$n.log 2>&1 &
	fio_pid=$!
	sleep 3
	kill -0 $fio_pid || { cat fio$n.log; fail "fio did not start"; }
	say "    freeze for the proof only, checksum the LV"
	fsfreeze -f /mnt/vm
	ref_sum=$(dd if=/dev/demo/vm bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1)
	say "    point-in-time SHA-256: $ref_sum"
	incr=(backup --fleece-dir /mnt/scratch --incremental --changed-map /mnt/backup/vm.map
		--sha256 --progress lines --interval 3 demo/vm -o /mnt/backup/vm.img)
	say "\$ fleece ${incr[*]}"
	t0=$(date +%s.%N)
	$F "${incr[@]}" > incr$n.out 2> incr$n.err &
	bpid=$!
	for i in $(seq 1 600); do
		[ -b /dev/mapper/demo-vm-fleece-view ] && break
		kill -0 $bpid 2>/dev/null || { cat incr$n.err; fail "the incremental backup ended early"; }
		sleep 0.1
	done
	fsfreeze -u /mnt/vm
	wait $bpid || { cat incr$n.err; fail "fleece backup --incremental failed"; }
	t1=$(date +%s.%N)
	show < incr$n.err
	kill -- -$fio_pid; wait $fio_pid 2>/dev/null || true; fio_pid=
	img_sum=$(sha256sum < /mnt/backup/vm.img | cut -d' ' -f1)
	say "    image SHA-256:         $img_sum"
	say "    point-in-time SHA-256: $ref_sum"
	[ "$img_sum" = "$ref_sum" ] || fail "incremental $n: the image is not the point-in-time content"
	assert_eq "$(cut -d' ' -f1 incr$n.out)" "$ref_sum" "fleece's --sha256 (incremental $n)"
	grep -q '"incremental": true' /mnt/backup/vm.map || { cat incr$n.err /mnt/backup/vm.map; fail "not incremental"; }
	! grep_q "no reflink here" incr$n.err || fail "no reflink on xfs"
	read_bytes=$(sed -n 's/.*"read_bytes": \([0-9]*\).*/\1/p' /mnt/backup/vm.map)
	size=$(blockdev --getsize64 /dev/demo/vm)
	[ $((read_bytes * 100)) -le $((size * $3)) ] || fail "incremental $n read $read_bytes of $size bytes"
	say "    equal: the image is again the LV exactly as it was at the point in time"
	fsck.ext4 -n -f /mnt/backup/vm.img > fsck$n.out 2>&1 || { cat fsck$n.out; fail "fsck -n of incremental $n"; }
	say "    fsck.ext4 -n: $(tail -1 fsck$n.out)"
	u=$(dmsetup info -c --noheadings -o uuid | grep '^FLEECE-' || true)
	[ -z "$u" ] || fail "fleece devices left: $u"
	say "    read:             $(awk -v r="$read_bytes" -v s="$size" 'BEGIN { printf "%.1f MiB of %.0f MiB (%.1f%%)", r / 1048576, s / 1048576, 100 * r / s }'), backup in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
}
say "    (the first incremental reads what fio changed during and after the"
say "    first backup, all over db.dat; the second only what changed since)"
incr 1 2M 30
incr 2 2M 10
say ""
say "--- the image's history (next to it, in vm.img.fleece.json)"
say "    $(tr -d '\n ' < /mnt/backup/vm.img.fleece.json | sed 's/,"image_dev.*//')"
say ""

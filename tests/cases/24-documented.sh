#!/bin/bash
# Promises of Documentation/admin-guide/device-mapper/dm-fleece.rst that no
# other test checked, through dmsetup alone (no fleece(8)):
#  1. secure erase.  The rst: "Writes, write-zeroes and secure erase that
#     touch a pending chunk first copy the whole chunk"; the view is
#     read-only ("Writes and write-zeroes fail with an I/O error"; it says
#     nothing of secure erase).  A BLKSECDISCARD reaches device-mapper only
#     when the device under it advertises secure erase, so every block
#     device the guest can make (brd, loop, null_blk, scsi_debug) is probed,
#     without harm (a BLKSECDISCARD past the device's end: EINVAL where
#     secure erase is supported, EOPNOTSUPP where not).  With such a device
#     the origin's copy-before-write is checked (the copies counted, the
#     view unchanged); without one, the log says exactly why it cannot be,
#     and what is checked is that the fleece device advertises no secure
#     erase over an origin without it and refuses it, changing nothing.
#     Either way a secure erase of the view is refused and changes nothing
#     (no chunk released, the view's data the same).
#  2. a view shorter than its region ("It may be shorter than the region,
#     not longer"): its size is its table's length; it reads back byte for
#     byte as the point-in-time image, from copied and pending chunks, up to
#     its end, which is not on a chunk boundary; reads at and past its end
#     return nothing, a read over its end returns the part before it
#     (block-device semantics: the rst says no more); a discard of the whole
#     short view releases the chunks it covers whole and leaves the chunk
#     its end cuts (partial-chunk discards are ignored); a longer view is
#     refused with "View is longer than the fleece region".
#  3. "The view accepts discards whatever the fleece device supports, and
#     advertises a discard granularity of one chunk": discard_granularity of
#     views of chunks of 4 KiB, 64 KiB and 1 MiB, discard_max_bytes > 0.
#  4. "Concurrent I/O to that chunk waits for the one copy": 8 fio jobs
#     (O_DIRECT, libaio, iodepth 16) write every 4 KiB block of the same 4
#     chunks at once, right after the point in time, while the origin's
#     reads (the copies' reads of the old chunks) are held 600 ms by
#     dm-delay (a table loaded for the writers' time only), so that writes pile up on each copy under way; no view
#     discard releases anything.  cbw_count must be exactly 4 (and 4 chunks
#     copied, no error), and the view the point-in-time image byte for
#     byte; under the default policy and under fail_origin_writes.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

K=1024
CH=$((64 * K))
mkpattern old 8 old
mkpattern new 8 new

# --- 1. secure erase ----------------------------------------------------------

# "supported", "unsupported" or another errno name: a BLKSECDISCARD of 512
# bytes just past the end of DEV, which the kernel refuses either way.
secure_erase_probe() { # dev
	python3 - "$1" <<'PY'
import errno, fcntl, os, struct, sys
BLKSECDISCARD = 0x127d
try:
    fd = os.open(sys.argv[1], os.O_RDWR)
except OSError as e:	# a CD drive without a medium
    sys.exit("cannot open: %s" % e.strerror)
size = os.lseek(fd, 0, os.SEEK_END)
try:
    fcntl.ioctl(fd, BLKSECDISCARD, struct.pack("QQ", size, 512))
    print("accepted")	# never: the range is past the end
except OSError as e:
    print({errno.EINVAL: "supported", errno.EOPNOTSUPP: "unsupported"}.get(e.errno, errno.errorcode.get(e.errno, str(e.errno))))
PY
}
# What the kernel says of a device's secure erase limit, if it says.
se_sysfs() { # sysfs-name
	cat "/sys/block/$1/queue/max_secure_erase_sectors" 2>/dev/null || echo "n/a"
}

log "1. secure erase: which block devices of this guest support it"
modprobe loop
truncate -s 16M /tmp/se-probe.img
se_loop=$(losetup -f --show /tmp/se-probe.img)
loaded=()
modprobe null_blk nr_devices=1 gb=1 2>/dev/null && loaded+=(null_blk) || log "null_blk: cannot load"
modprobe scsi_debug dev_size_mb=16 2>/dev/null && loaded+=(scsi_debug) || log "scsi_debug: cannot load"
udevadm settle
capable=""
probed=""
for s in /sys/block/*; do
	name=${s##*/}
	dev=/dev/$name
	[ -b "$dev" ] && [ "$(cat "$s/size")" -gt 0 ] || continue
	case $name in dm-*) continue ;; esac
	r=$(secure_erase_probe "$dev" 2>&1) || r="not probed ($r)"
	log "  $name: BLKSECDISCARD $r, max_secure_erase_sectors $(se_sysfs "$name")"
	probed+=" $name:$r"
	# a device that keeps its data, and is scratch in the test VM (a
	# virtio disk there is make bench's DISK=); not a CD drive, say
	if [ "$r" = supported ] && [ -z "$capable" ]; then
		case $name in ram*|loop*|vd*|xvd*|mmcblk*) capable=$name ;; esac
	fi
done
for m in "${loaded[@]}"; do rmmod "$m" || log "$m: cannot unload"; done
losetup -d "$se_loop"
rm /tmp/se-probe.img

# A secure erase of the view (its first 4 chunks) is refused, and releases
# nothing; the caller checks its data.
view_secure_erase() { # view fleece-name what
	local rel0 frel0
	rel0=$(status_field "$(basename "$1")" 3)
	frel0=$(status_field "$2" 4)
	assert_eq "$(cat "/sys/block/$(sysfs_name "$1")/queue/max_secure_erase_sectors" 2>/dev/null || echo 0)" 0 \
		"$3: the view advertises secure erase"
	expect_fail blkdiscard -s -o 0 -l $((4 * CH)) "$1"
	log "$3: secure erase of the view: $T_ERR"
	assert_eq "$(status_field "$(basename "$1")" 3)" "$rel0" "$3: chunks released by the view after its secure erase"
	assert_eq "$(status_field "$2" 4)" "$frel0" "$3: chunks released (fleece status) after the view's secure erase"
}

if [ -n "$capable" ]; then
	log "1. secure erase on $capable (supported): copy before, on pending chunks only"
	size8=$((8 << 11))
	dmsetup create se-origin --table "0 $size8 linear /dev/$capable 0"
	put old /dev/mapper/se-origin
	sefl=$(mkdev se-fl 8 1)
	seo=$(fleece_create se-fo /dev/mapper/se-origin "$sefl" 128)
	sev=$(view_create se-fv /dev/mapper/se-origin "$sefl")
	udevadm settle
	assert_eq "$(fleece_counts se-fo)" "128 0 0 0 0 active" "status after start"
	[ "$(secure_erase_probe "$seo")" = supported ] ||
		fail "the fleece device does not advertise secure erase over $capable, which does"
	blkdiscard -s -o $((2 * CH)) -l $((2 * CH)) "$seo"
	assert_eq "$(fleece_counts se-fo)" "126 2 0 2 0 active" "secure erase over pending chunks 2|3: copied first"
	blkdiscard -s -o $((3 * CH)) -l $((2 * CH)) "$seo"
	assert_eq "$(fleece_counts se-fo)" "125 3 0 3 0 active" "secure erase over copied 3 and pending 4"
	same "$sev" old "the view after secure erases of the origin"
	cmp <(dev_range "$sefl" 128 192) <(file_range old 128 192) ||
		fail "the fleece device does not hold the old chunks 2-4"
	view_secure_erase "$sev" se-fo "secure erase"
	same "$sev" old "the view after its secure erase"
	dmsetup remove se-fv se-fo se-origin
else
	log "1. NOTE: the origin's copy before a secure erase (rst: \"Writes, write-zeroes and secure erase that touch a pending chunk first copy the whole chunk\") CANNOT be checked in this guest: no block device here supports secure erase (probed:$probed)."
	log "   The block layer refuses BLKSECDISCARD with EOPNOTSUPP on a device whose max_secure_erase_sectors is 0 (blk_ioctl_secure_erase), and device-mapper advertises secure erase only when every device under the table does (dm_table_supports_secure_erase): brd, loop, null_blk and scsi_debug (sd has no secure erase) never do; only mmc, xen-blkfront and virtio-blk with VIRTIO_BLK_F_SECURE_ERASE can, and the VM (kernel $(uname -r)) has none of them (its only disk, with make bench DISK=, is a virtio-blk of qemu 7.2, which does not offer the feature).  So no secure erase can reach the fleece target: checked instead that it advertises none and refuses one, copying and changing nothing."
	o1=$(mkdev se-origin 8 0)
	put old "$o1"
	f1=$(mkdev se-fl 8 1)
	fo1=$(fleece_create se-fo "$o1" "$f1" 128)
	v1=$(view_create se-fv "$o1" "$f1")
	udevadm settle
	assert_eq "$(secure_erase_probe "$fo1")" unsupported "the fleece device over an origin without secure erase"
	expect_fail blkdiscard -s -o $((2 * CH)) -l $((2 * CH)) "$fo1"
	log "secure erase of the fleece device: $T_ERR"
	[[ $T_ERR == *"not supported"* ]] || fail "secure erase of the fleece device: not refused as unsupported: $T_ERR"
	assert_eq "$(fleece_counts se-fo)" "128 0 0 0 0 active" "status after the refused secure erase"
	same "$fo1" old "the origin after the refused secure erase"
	view_secure_erase "$v1" se-fo "secure erase"
	same "$v1" old "the view after its refused secure erase"
	dmsetup remove se-fv se-fo
fi

# --- 2. a view shorter than its region ---------------------------------------

log "2. a view shorter than its region: 8 MiB region, view of 16181 sectors (ends 53 sectors into chunk 126)"
NCH=128
L=16181
# Both devices 1 MiB longer than the region: a longer view still fits on
# them, so that only the target, not dm core's device size check, refuses it.
o2=$(mkdev sv-origin 9 0)
f2=$(mkdev sv-fl 9 1)
put old "$o2"
dmsetup create sv-fo --table "0 $((NCH * 128)) fleece $o2 $f2 128"
fo2=/dev/mapper/sv-fo
# chunks 0, 5, 126 (where the view ends) and 127 (past it) copied; 125 and the
# rest pending: the view's tail is read from both devices
for c in 0 5 126 127; do
	dd if=new of="$fo2" bs=4k skip=$((c * 16 + 3)) seek=$((c * 16 + 3)) count=2 \
		oflag=direct conv=notrunc status=none
done
dmsetup create sv-fv --table "0 $L fleece-view $o2 $f2"
v2=/dev/mapper/sv-fv
udevadm settle
assert_eq "$(sectors "$v2")" $L "size of the short view"
assert_eq "$(fleece_counts sv-fo)" "$((NCH - 4)) 4 0 4 0 active" "status after the writes"
r0=$(status_field sv-fv 0) f0=$(status_field sv-fv 1)
cmp <(dd if="$v2" bs=512 iflag=direct status=none) <(head -c $((L * 512)) old) ||
	fail "the short view differs from the point-in-time image"
cmp <(dd if="$v2" bs=1M iflag=direct status=none) <(head -c $((L * 512)) old) ||
	fail "the short view, read in 1 MiB blocks, differs from the point-in-time image"
cmp <(dev_range "$v2" $((125 * 64)) 64) <(file_range old $((125 * 64)) 64) ||
	fail "short view: pending chunk 125"
log "view reads: $(($(status_field sv-fv 0) - r0)) from the origin, $(($(status_field sv-fv 1) - f0)) from the fleece"
[ "$(status_field sv-fv 1)" -gt "$f0" ] || fail "the short view read nothing from the fleece device"
[ "$(status_field sv-fv 0)" -gt "$r0" ] || fail "the short view read nothing from the origin"
# reads at, past and over the end, O_DIRECT: "bytes_read" for each
ends=$(python3 - "$v2" $((L * 512)) <<'PY'
import mmap, os, sys
dev, size = sys.argv[1], int(sys.argv[2])
fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 1 << 20)
res = []
for off, ln in ((size, 4096), (size + 65536, 4096), (size - 1536, 4096),
                (size - 5 * 512, 1 << 20), ((size // 4096 - 2) * 4096, 1 << 20)):
    try:
        n = os.preadv(fd, [memoryview(buf)[:ln]], off)
    except OSError as e:
        res.append("error:%s" % e.strerror.replace(" ", "_"))
        continue
    res.append(str(n))
    with open("tail.%d" % off, "wb") as f:
        f.write(buf[:n])
print(" ".join(res))
PY
)
log "reads of 4 KiB at the end, 64 KiB past it, 4 KiB from 1536 bytes before it; 1 MiB from 2560 bytes and from 8 KiB-ish before it: $ends"
tail2=$(((L * 512 / 4096 - 2) * 4096))
assert_eq "$ends" "0 0 1536 2560 $((L * 512 - tail2))" "bytes read at/past/over the end of the short view"
for off in $((L * 512 - 1536)) $((L * 512 - 2560)) $tail2; do
	cmp "tail.$off" <(dd if=old bs=512 iflag=skip_bytes,count_bytes skip=$off count=$((L * 512 - off)) status=none) ||
		fail "short view: the read from byte $off up to its end differs from the point-in-time image"
done
assert_eq "$(status_field sv-fv 2)" 0 "reads refused by the short view"
# blkdiscard: the view carries the origin's content, so -f (random data
# here, but it must not matter)
blkdiscard -f "$v2"
assert_eq "$(status_field sv-fv 3)" 126 "chunks released by discarding the whole short view (0-125; 126 is cut by its end)"
assert_eq "$(fleece_counts sv-fo)" "0 2 126 4 0 active" "status after discarding the whole short view"
cmp <(dd if="$v2" bs=512 skip=$((126 * 128)) iflag=direct status=none) \
	<(dd if=old bs=512 skip=$((126 * 128)) count=$((L - 126 * 128)) status=none) ||
	fail "short view: the part of chunk 126 in it, not released, differs from the point-in-time image"
expect_eio dd if="$v2" of=/dev/null bs=64k skip=125 count=1 iflag=direct status=none
log "2. a longer view is refused (it would fit on both devices)"
dmesg_mark
expect_fail dmsetup create sv-long --table "0 $((NCH * 128 + 8)) fleece-view $o2 $f2"
expect_dmesg_since_mark "View is longer than the fleece region"
if dmsetup info sv-long >/dev/null 2>&1; then
	fail "the refused longer view left a device: $(dmsetup info sv-long)"
fi
# a view as long as the region is fine, and so is a view of one sector
dmsetup create sv-one --table "0 1 fleece-view $o2 $f2"
assert_eq "$(sectors /dev/mapper/sv-one)" 1 "size of a one-sector view"
expect_eio dd if=/dev/mapper/sv-one of=/dev/null bs=512 count=1 iflag=direct status=none	# chunk 0: released
dmsetup remove sv-one sv-fv sv-fo

# --- 3. discard granularity of the view ----------------------------------------

log "3. the view advertises a discard granularity of one chunk"
for chunk in 8 128 2048; do
	o3=$(mkdev dg-origin$chunk 4 0)
	f3=$(mkdev dg-fl$chunk 4 1)
	fleece_create dg-fo "$o3" "$f3" $chunk >/dev/null
	v3=$(view_create dg-fv "$o3" "$f3")
	n=$(sysfs_name "$v3")
	g=$(cat /sys/block/$n/queue/discard_granularity)
	m=$(cat /sys/block/$n/queue/discard_max_bytes)
	log "chunk $chunk sectors: view $n discard_granularity $g, discard_max_bytes $m (fleece device: $(cat /sys/block/$(sysfs_name "$f3")/queue/discard_max_bytes))"
	assert_eq "$g" $((chunk * 512)) "discard_granularity of the view, chunk $chunk sectors"
	[ "$m" -gt 0 ] || fail "the view (chunk $chunk) does not accept discards"
	dmsetup remove dg-fv dg-fo
done

# --- 4. one copy per chunk under concurrent writers --------------------------

log "4. one copy per chunk: 8 writers on the same 4 chunks, copies' reads held 600 ms"
D=600
head -c 4M old > old4
for policy in default fail_origin_writes; do
	o4=$(mkdev cc-origin-$policy 4 0)
	f4=$(mkdev cc-fl-$policy 4 1)
	put old4 "$o4"
	# The origin's reads are held D ms, writes not, while the writers run
	# only: udev's probes and the checks are not slowed down.
	dmsetup create cc-delay --table "0 8192 delay $o4 0 0"
	if [ $policy = default ]; then
		fleece_create cc-fo /dev/mapper/cc-delay "$f4" 128 >/dev/null
	else
		fleece_create cc-fo /dev/mapper/cc-delay "$f4" 128 fail_origin_writes >/dev/null
	fi
	v4=$(view_create cc-fv /dev/mapper/cc-delay "$f4")
	udevadm settle
	assert_eq "$(fleece_counts cc-fo)" "64 0 0 0 0 active" "$policy: status at the start"
	dmsetup load cc-delay --table "0 8192 delay $o4 0 $D $o4 0 0"
	dmsetup suspend cc-delay
	dmsetup resume cc-delay
	t0=$(ms)
	fio --output-format=json --output=fio.$policy.json - <<-EOF
	[global]
	filename=/dev/mapper/cc-fo
	direct=1
	ioengine=libaio
	iodepth=16
	rw=randwrite
	bs=4k
	offset=$((3 * 64))k
	size=256k
	thread
	[w]
	numjobs=8
	EOF
	log "$policy: fio took $(($(ms) - t0)) ms"
	dmsetup load cc-delay --table "0 8192 delay $o4 0 0"
	dmsetup suspend cc-delay
	dmsetup resume cc-delay
	jobs=$(python3 - fio.$policy.json $D <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
held = 0
for j in d["jobs"]:
    w = j["write"]
    mx = w["clat_ns"]["max"] / 1e6
    print("  job %s: error %d, %d writes, latency max %.0f ms" % (j["jobname"], j["error"], w["total_ios"], mx), file=sys.stderr)
    if j["error"] or w["total_ios"] != 64:
        sys.exit("job %s: error %d, %d writes of 64" % (j["jobname"], j["error"], w["total_ios"]))
    held += mx >= int(sys.argv[2]) / 2
print(len(d["jobs"]), held)
PY
)
	read -r njobs held <<< "$jobs"
	log "$policy: $njobs jobs, $held of them had a write held >= $((D / 2)) ms by a copy"
	assert_eq "$njobs" 8 "$policy: fio jobs"
	[ "$held" -ge 2 ] || fail "$policy: fewer than 2 writers waited for a copy: the writes did not meet a copy under way"
	assert_eq "$(fleece_counts cc-fo)" "60 4 0 4 0 active" "$policy: status after 8 writers on 4 chunks (pending copied released cbw_count errors state)"
	same "$v4" old4 "$policy: the view after the concurrent writers"
	cmp <(dev_range "$f4" 192 256) <(file_range old4 192 256) ||
		fail "$policy: the fleece device does not hold the old chunks 3-6"
	cmp <(dev_range "$o4" 0 192) <(file_range old4 0 192) ||
		fail "$policy: the origin changed before chunk 3"
	cmp <(dev_range "$o4" 448 $((4096 - 448))) <(file_range old4 448 $((4096 - 448))) ||
		fail "$policy: the origin changed after chunk 6"
	assert_eq "$(status_field cc-fv 2)" 0 "$policy: view reads refused"
	dmsetup remove cc-fv cc-fo cc-delay
done
log "ok"

#!/bin/bash
# Lifecycle of fleece tables and views:
#  - reloading the identical fleece table mid-backup (load, suspend, resume)
#    keeps the table, every count and the view's contents, and copying goes
#    on from there (released chunks stay released);
#  - swapping the fleece table for a linear one while a view exists makes
#    the view invalid: every view read fails with EIO (also one that was
#    waiting while the origin was suspended), and none ever returns data
#    written to the origin after the swap;
#  - removing the view while it is being read (a forced removal, under an
#    origin writer) never gives the reader wrong data and leaves the fleece
#    active: the reader has read at least one whole pass of the view and is
#    reading on when the view is removed, and then its reads fail with EIO;
#    a deferred removal requested while a reader has the view open lets it
#    read the whole view afterwards, with the right data;
#  - suspend/resume loops of the fleece device while writers write it (and
#    copies happen) and a reader compares the whole view with the
#    point-in-time image;
#  - rmmod dm_fleece is refused while a table exists;
#  - 50 create/remove cycles (200 in the longer tier, TIER=long) of a
#    fleece and its view, each copying a block and reading it back through
#    the view; afterwards no module reference and no fleece worker thread
#    is left (the probe counts 1 while a pair exists, so it sees the thread
#    on this kernel), and the module still works;
#  - 3 unload/load cycles of the module (10 in the longer tier), each with a
#    pair that copies a chunk in between: the unload succeeds every time
#    (no reference left) and the kernel does not complain (a region leaked
#    would make kmem_cache_destroy warn; the debug kernel's kmemleak scans
#    too).
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

CH=64			# chunk, KiB (128 sectors)
NCH=128			# 8 MiB

wr() { # dev first_chunk nr_chunks: new data onto the origin, and into expect
	dd if=new of="$1" bs=64k skip="$2" seek="$2" count="$3" oflag=direct conv=notrunc status=none
	dd if=new of=expect bs=64k skip="$2" seek="$2" count="$3" conv=notrunc status=none
}
view_ok() { # view first last: these chunks hold the point-in-time image
	cmp <(dev_range "$1" $(($2 * CH)) $((($3 - $2 + 1) * CH))) \
		<(file_range old $(($2 * CH)) $((($3 - $2 + 1) * CH))) ||
		fail "$1: chunks $2-$3 differ from the point-in-time image"
}
view_eio() { # view chunk: an O_DIRECT read of 4 KiB there fails with EIO, no data
	local err
	rm -f got
	if err=$(dd if="$1" of=got bs=4k iflag=direct skip=$(($2 * CH / 4)) count=1 status=none 2>&1); then
		fail "$1: read of chunk $2 succeeded"
	fi
	[[ $err == *"Input/output error"* ]] || fail "$1: read of chunk $2: '$err', expected EIO"
	[ ! -s got ] || fail "$1: read of chunk $2 returned data"
}

origin=$(mkdev origin 8)
fl=$(mkdev fl 8 1)
mkpattern old 8 old
mkpattern new 8 new
put old "$origin"
cp old expect
fo=$(fleece_create fo "$origin" "$fl" 128)
view=$(view_create fv "$origin" "$fl")
udevadm settle

log "mid-backup: copy chunks 0-15, release chunks 0-1"
wr "$fo" 0 16
blkdiscard -f -o 0 -l $((2 * CH * 1024)) "$view" 2> err || { cat err >&2; fail "view discard"; }
assert_eq "$(fleece_counts fo)" "$((NCH - 16)) 14 2 16 0 active" "status before the reload"

log "reload the identical table: load, suspend, resume"
table=$(dmsetup table fo)
before=$(dmsetup status fo)
dmsetup load fo --table "$table"
dmsetup suspend fo
dmsetup resume fo
assert_eq "$(dmsetup table fo)" "$table" "table after the reload"
assert_eq "$(dmsetup status fo)" "$before" "status after the reload"
assert_eq "$(status_field fv 4)" active "view state after the reload"
view_ok "$view" 2 $((NCH - 1))
view_eio "$view" 0
log "after the reload: pending chunks 20-21 are copied, released chunk 1 is not"
wr "$fo" 20 2
wr "$fo" 1 1
assert_eq "$(fleece_counts fo)" "$((NCH - 18)) 16 2 18 0 active" "status after writes following the reload"
view_ok "$view" 2 $((NCH - 1))
same "$fo" expect "origin after the reload"
if dmesg_since_start | grep_q "view invalidated"; then
	fail "the reload invalidated the view"
fi

log "swap the fleece table for linear, a view read of pending chunk 50 waiting meanwhile"
dmsetup load fo --table "0 $((NCH * CH * 2)) linear $origin 0"
dmsetup suspend fo
dd if="$view" of=held bs=4k iflag=direct skip=$((50 * CH / 4)) count=1 status=none 2> held.err &
held=$!
# Resume only once dd waits in its read of the view (syscall 0, state D):
# a read issued after the swap would fail without having waited.
for i in $(seq 300); do
	st=$(cat /proc/$held/stat /proc/$held/syscall 2>/dev/null | awk 'NR == 1 { s = $3 } NR == 2 { c = $1 } END { print s, c }')
	[ "$st" = "D 0" ] && break
	sleep 0.1
done
[ "$st" = "D 0" ] || fail "the view read did not wait while the origin was suspended (dd: '$st')"
dmsetup resume fo
if wait $held; then fail "the view read waiting during the swap succeeded"; fi
assert_eq "$(dmsetup table fo | awk '{ print $3 }')" linear "target after the swap"
grep -q "Input/output error" held.err || fail "the waiting view read: '$(cat held.err)', expected EIO"
[ ! -s held ] || fail "the waiting view read returned data"
assert_eq "$(status_field fv 4)" invalid "view state after the swap"
expect_dmesg "view invalidated: the origin is no longer protected by a fleece target"
log "write new data to chunks 40 (pending) and 5 (copied) through the linear table"
wr "$fo" 40 1
wr "$fo" 5 1
refused0=$(status_field fv 2)
for c in 40 5 100 2; do
	view_eio "$view" $c
done
if dd if="$view" of=/dev/null bs=1M iflag=direct status=none 2>/dev/null; then
	fail "a whole read of the invalid view succeeded"
fi
refused1=$(status_field fv 2)
[ "$refused1" -gt "$refused0" ] || fail "reads_refused did not grow ($refused0 -> $refused1)"
dmsetup remove fv
dmsetup remove fo
same "$origin" expect "origin after the swap"

log "second pair: remove the view (forced) while it is read, an origin writer running"
o2=$(mkdev o2 8)
f2=$(mkdev f2 8 1)
put old "$o2"
cp old expect
fo2=$(fleece_create fo2 "$o2" "$f2" 128)
view2=$(view_create fv2 "$o2" "$f2")
udevadm settle
# A holder keeps the view open throughout.  The reader opens the view once
# and reads it round and round, 4 KiB at a time (O_DIRECT), comparing each
# block with the point-in-time image, until a read fails; it publishes how
# much it has read.  The view is removed only once it has read one whole
# pass, while it reads on.
sleep 600 < "$view2" &
holder=$!
python3 -S - "$view2" old reader.progress > reader.out 2>&1 <<'PY' &
import errno, mmap, os, sys
view, ref, progress = sys.argv[1:4]
old = open(ref, 'rb').read()
fd = os.open(view, os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
n = 0
while True:
	off = n * 4096 % len(old)
	try:
		got = os.preadv(fd, [buf], off)
	except OSError as e:
		print('%s after %d KiB (%d whole passes)' % (errno.errorcode.get(e.errno, e.errno), n * 4, n * 4096 // len(old)))
		sys.exit(0 if e.errno == errno.EIO else 1)
	if got != 4096 or buf[:] != old[off:off + 4096]:
		print('wrong data: %d bytes at %d, after %d KiB' % (got, off, n * 4))
		sys.exit(2)
	n += 1
	if n % 256 == 0:
		with open(progress + '.tmp', 'w') as f:
			f.write('%d\n' % (n * 4096))
		os.rename(progress + '.tmp', progress)
PY
reader=$!
wr "$fo2" 64 64 &
writer=$!
for i in $(seq 600); do
	[ "$(cat reader.progress 2>/dev/null || echo 0)" -ge $((NCH * CH * 1024)) ] && break
	kill -0 $reader 2>/dev/null || break
	sleep 0.1
done
read1=$(cat reader.progress 2>/dev/null || echo 0)
[ "$read1" -ge $((NCH * CH * 1024)) ] || fail "the view reader did not read one whole pass in 60 s ($read1 bytes): $(cat reader.out)"
kill -0 $reader 2>/dev/null || fail "the view reader stopped before the removal: $(cat reader.out)"
expect_fail dmsetup remove fv2
[[ $T_ERR == *"busy"* ]] || fail "removing an open view: '$T_ERR', expected busy"
dmsetup remove --force fv2 >/dev/null 2>&1 || true	# its table is swapped for "error"
rc=0
wait $reader || rc=$?
log "the reader stopped: $(cat reader.out)"
[ $rc = 0 ] || fail "the reader of the view removed under it: exit $rc: $(cat reader.out)"
[[ $(cat reader.out) == EIO\ after\ * ]] || fail "the reader did not stop on EIO: $(cat reader.out)"
wait $writer
kill $holder
wait $holder 2>/dev/null || true
dmsetup remove fv2
if dmsetup info fv2 >/dev/null 2>&1; then fail "the view is still there"; fi
assert_eq "$(status_field fo2 7)" active "fleece state after removing its view"
same "$fo2" expect "origin after the forced view removal"

log "a new view of the same fleece, removed (deferred) while it is read"
view2=$(view_create fv2 "$o2" "$f2")
udevadm settle
sleep 600 < "$view2" &
holder=$!
# The reader opens the view, says so, and reads it all (O_DIRECT, 4 KiB at
# a time) only once the removal has been requested: the removal is
# deferred while the view is open and the reader reads after it.
rm -f reader.opened reader.go
python3 -S - "$view2" got reader.opened reader.go <<'PY' &
import mmap, os, sys, time
view, out, opened, go = sys.argv[1:5]
fd = os.open(view, os.O_RDONLY | os.O_DIRECT)
open(opened, 'w').close()
while not os.path.exists(go):
	time.sleep(0.05)
buf = mmap.mmap(-1, 4096)
with open(out, 'wb') as f:
	off = 0
	while True:
		n = os.preadv(fd, [buf], off)
		if n == 0:
			break
		f.write(buf[:n])
		off += n
PY
reader=$!
for i in $(seq 600); do [ -e reader.opened ] && break; kill -0 $reader 2>/dev/null || break; sleep 0.1; done
[ -e reader.opened ] || fail "the reader did not open the view"
dmsetup remove --deferred fv2
dmsetup info fv2 >/dev/null 2>&1 || fail "the view went away while open (deferred removal)"
touch reader.go
wait $reader || fail "the reader of a view removed with --deferred failed"
cmp got old || fail "the reader of a view removed with --deferred got wrong data"
dmsetup info fv2 >/dev/null 2>&1 || fail "the view went away while still open"
kill $holder
wait $holder 2>/dev/null || true
for i in $(seq 50); do dmsetup info fv2 >/dev/null 2>&1 || break; sleep 0.2; done
if dmsetup info fv2 >/dev/null 2>&1; then fail "the deferred removal did not happen on close"; fi

log "5 suspend/resume cycles of the fleece device under two writers and a view reader"
view2=$(view_create fv2 "$o2" "$f2")
udevadm settle
# The writers write new data into the chunks in two different orders (a
# copy for each chunk not copied yet), again and again, until told to stop.
writer() { # multiplier offset bs_kib
	local pass=0 i k
	while [ ! -e stop ]; do
		for i in $(seq 0 $((NCH - 1))); do
			[ -e stop ] && break
			k=$(((i * $1 + $2) % NCH * CH / $3 + pass % (CH / $3)))
			dd if=new of="$fo2" bs=${3}k skip=$k seek=$k count=1 oflag=direct \
				conv=notrunc status=none || { echo "write $k" > writer.bad; return; }
		done
		pass=$((pass + 1))
	done
}
writer 37 0 4 &
w1=$!
writer 53 7 64 &
w2=$!
(
	n=0
	while [ ! -e stop ]; do
		cmp -s <(dd if="$view2" bs=1M iflag=direct status=none) old || { echo "pass $n" > reader.bad; break; }
		n=$((n + 1))
	done
	echo $n > reader.passes
) &
reader=$!
sleep 1
cbw0=$(status_field fo2 5)
for i in $(seq 5); do
	dmsetup suspend fo2
	sleep 0.2
	dmsetup resume fo2
	sleep 0.3
done
cbw1=$(status_field fo2 5)
touch stop
wait $w1 $w2 $reader
[ ! -e writer.bad ] || fail "a writer failed: $(cat writer.bad)"
[ ! -e reader.bad ] || fail "the view differed from the point-in-time image during the loops ($(cat reader.bad))"
log "copies during the cycles: $cbw0 -> $cbw1, $(cat reader.passes) whole view reads"
[ "$cbw1" -gt "$cbw0" ] || fail "no copy-before-write happened during the suspend/resume cycles"
[ "$(cat reader.passes)" -ge 1 ] || fail "the view reader never completed a pass"
put new "$fo2"
same "$fo2" new "origin after the loops"
same "$view2" old "view after the loops"
assert_eq "$(fleece_counts fo2)" "0 $NCH 0 $NCH 0 active" "status after the loops"

log "rmmod dm_fleece while tables exist is refused"
expect_fail rmmod dm_fleece
grep -q '^dm_fleece ' /proc/modules || fail "dm_fleece is no longer loaded"
[ "$(cat /sys/module/dm_fleece/refcnt)" -gt 0 ] || fail "dm_fleece has no references while in use"
assert_eq "$(status_field fo2 7)" active "fleece state after the refused rmmod"
view_ok "$view2" 0 3
log "a normal stop (view first, then the fleece table) logs nothing"
dmesg_mark
dmsetup remove fv2
dmsetup remove fo2
if dmesg_since_mark | grep_q "fleece"; then
	dmesg_since_mark
	fail "removing a view, then its fleece table, logged a message"
fi
assert_eq "$(cat /sys/module/dm_fleece/refcnt)" 0 "module references with no table left"

CYCLES=$(tiered 50 200)
log "$CYCLES create/remove cycles of fleece + view on 1 MiB devices, chunk 8"
o3=$(mkdev o3 1 2)
f3=$(mkdev f3 1 3)
mkpattern small 1 small
put small "$o3"
# The rescuer thread of each fleece context's workqueue "kfleeced": named
# "kfleeced" up to 6.8, "kworker/R-kfleeced" since 6.9 (15 characters of
# it as the task's comm: "kworker/R-kflee").
workers() { cat /proc/[0-9]*/comm 2>/dev/null | grep -cE '^(kfleeced|kworker/R-kflee(ced)?)$' || true; }
workers0=$(workers)
# The probe must see the thread on this kernel: one more while a pair exists.
fleece_create fop "$o3" "$f3" 8 > /dev/null
assert_eq "$(workers)" $((workers0 + 1)) "fleece worker threads while one fleece table exists"
dmsetup remove fop
assert_eq "$(workers)" "$workers0" "fleece worker threads after removing that table"
log "fleece worker threads: $workers0, $((workers0 + 1)) with one table"
# dmsetup costs a process start per call (slow in the VM): the cycles talk to
# /dev/mapper/control directly (struct dm_ioctl from linux/dm-ioctl.h).
python3 -S - "$(devno o3)" "$(devno f3)" "$(sectors "$o3")" "$CYCLES" <<'PY'
import errno, fcntl, mmap, os, stat, struct, sys, time

origin, fleece, size, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
SZ = 312	# sizeof(struct dm_ioctl)
def iowr(nr): return (3 << 30) | (SZ << 16) | (0xfd << 8) | nr
DEV_CREATE, DEV_REMOVE, DEV_SUSPEND, TABLE_LOAD = iowr(3), iowr(4), iowr(6), iowr(9)
ctl = os.open('/dev/mapper/control', os.O_RDWR)

def dm(cmd, name, target=None):
	data = b''
	if target:
		params = target[1].encode() + b'\0'
		params += b'\0' * (-len(params) % 8)
		data = struct.pack('=QQiI16s', 0, size, 0, 40 + len(params), target[0].encode()) + params
	hdr = struct.pack('=10IQ128s129s7s', 4, 0, 0, SZ + len(data), SZ, 1 if target else 0,
			  0, 0, 0, 0, 0, name.encode(), b'', b'')
	buf = bytearray(hdr + data)
	fcntl.ioctl(ctl, cmd, buf)
	return struct.unpack_from('=Q', buf, 40)[0]

def create(name, target):
	dev = dm(DEV_CREATE, name)
	dm(TABLE_LOAD, name, target)
	dm(DEV_SUSPEND, name)	# without DM_SUSPEND_FLAG: resume
	node = './node-' + name
	if os.path.exists(node):
		os.unlink(node)
	os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(os.major(dev), os.minor(dev)))
	return node

busy = 0
def remove(name):
	global busy
	for _ in range(2000):	# udev may have it open for a moment
		try:
			return dm(DEV_REMOVE, name)
		except OSError as e:
			if e.errno != errno.EBUSY:
				raise
			busy += 1
			time.sleep(0.01)
	sys.exit('cannot remove ' + name)

# udev handles the events of a device much faster while the device exists:
# let it catch up (the queue file is what udevadm settle waits on).
def udev_settle():
	t = time.time()
	while os.path.exists('/run/udev/queue') and time.time() - t < 30:
		time.sleep(0.005)

buf = mmap.mmap(-1, 4096)
def pread(fd, off):
	assert os.preadv(fd, [buf], off) == 4096
	return bytes(buf)

t0 = time.time()
for i in range(cycles):
	fo = create('cyc-fo', ('fleece', '%s %s 8' % (origin, fleece)))
	fv = create('cyc-fv', ('fleece-view', '%s %s' % (origin, fleece)))
	udev_settle()
	off = (i * 4096) % (size * 512)
	wfd = os.open(fo, os.O_RDWR | os.O_DIRECT)
	vfd = os.open(fv, os.O_RDONLY | os.O_DIRECT)
	old = pread(wfd, off)
	buf[:] = struct.pack('=I', i + 1) * 1024
	assert os.pwritev(wfd, [buf], off) == 4096
	if pread(vfd, off) != old:
		sys.exit('cycle %d: the view does not hold the old block' % i)
	if pread(wfd, off) != struct.pack('=I', i + 1) * 1024:
		sys.exit('cycle %d: the origin does not hold the new block' % i)
	os.close(vfd)
	os.close(wfd)
	remove('cyc-fv')
	remove('cyc-fo')
print('%d cycles in %.1f s, %d busy retries' % (cycles, time.time() - t0, busy))
PY
udevadm settle
if dmsetup info cyc-fo >/dev/null 2>&1 || dmsetup info cyc-fv >/dev/null 2>&1; then
	fail "a device of the cycles is left"
fi
assert_eq "$(cat /sys/module/dm_fleece/refcnt)" 0 "module references after the cycles"
assert_eq "$(workers)" "$workers0" "fleece worker threads after the cycles"

log "the module still works: fleece + view, overwrite, compare"
cp small expect
python3 -S -c 'import struct, sys; sys.stdout.buffer.write(b"".join(struct.pack("=I", i + 1) * 1024 for i in range(int(sys.argv[1]))))' "$CYCLES" |
	dd of=expect bs=4k conv=notrunc status=none
cmp <(dd if="$o3" bs=1M iflag=direct status=none) expect || fail "the origin after the cycles"
cp expect small
mkpattern new 1 new2
fo3=$(fleece_create fo3 "$o3" "$f3" 8)
view3=$(view_create fv3 "$o3" "$f3")
udevadm settle
put new "$fo3"
same "$fo3" new "origin after the final overwrite"
same "$view3" small "view after the final overwrite"
assert_eq "$(fleece_counts fo3)" "0 256 0 256 0 active" "status after the final overwrite"
dmsetup remove fv3
dmsetup remove fo3

RELOADS=$(tiered 3 10)
log "$RELOADS unload/load cycles of the module, a pair copying a chunk each time"
module=$(arg fleece.module)
[ -f "$module" ] || fail "no module file on the kernel command line ('$module')"
dmesg_mark
for i in $(seq 1 "$RELOADS"); do
	rmmod dm_fleece || fail "cycle $i: rmmod with no table left failed"
	insmod "$module" || fail "cycle $i: insmod failed"
	fo3=$(fleece_create fo3 "$o3" "$f3" 8)
	view3=$(view_create fv3 "$o3" "$f3")
	dd if=/dev/urandom of="$fo3" bs=4k count=1 seek=$i oflag=direct conv=notrunc status=none
	cmp <(dev_range "$view3" $((i * 4)) 4) <(file_range new $((i * 4)) 4) ||
		fail "cycle $i: the view lost the copied chunk"
	assert_eq "$(fleece_counts fo3)" "255 1 0 1 0 active" "cycle $i: status"
	udevadm settle
	dmsetup remove fv3
	dmsetup remove fo3
done
if dmesg_since_mark | grep -E "fleece|kmem_cache"; then
	fail "the unload/load cycles logged kernel messages"
fi

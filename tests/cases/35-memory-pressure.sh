#!/bin/bash
# Forward progress under memory pressure: first-touch writes (every one a
# copy) and a view read at once, under both policies, while the kernel's
# fault injection fails 20% of the slab and page allocations that cannot
# wait (failslab, fail_page_alloc with ignore-gfp-wait): every mempool's
# first try, so copies run on the mempools' reserves.  Checked: no hang
# (bounded time), no splat, no I/O error, the origin holds the new data and
# the view the old, byte for byte, and failures were really injected.
# Then the other kinds of I/O, both policies, with allocations failing, and
# with fail_make_request failing the copies' fleece I/O (below).
# Needs a kernel with fault injection (the debug kernel: make check
# KERNEL=debug); others report the test as skipped.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

dbg=/sys/kernel/debug
mountpoint -q $dbg || mount -t debugfs none $dbg
if [ ! -d $dbg/failslab ] || [ ! -d $dbg/fail_page_alloc ]; then
	skip "no failslab/fail_page_alloc in this kernel (the debug kernel has them)"
fi

TIMES=1000000
# A fault_attr directory of debugfs (fault-injection.rst): every call
# may fail, with that probability, up to $TIMES failures, silently.
fault_attr() { # dir probability-in-percent
	echo 0 > "$1/verbose"
	echo 1 > "$1/interval"
	echo $TIMES > "$1/times"
	echo "$2" > "$1/probability"
}
inject() { # probability in percent
	local d
	for d in $dbg/failslab $dbg/fail_page_alloc; do
		echo Y > $d/ignore-gfp-wait
		echo N > $d/task-filter
		fault_attr $d "$1"
	done
}
injected() { # failures injected since inject(), both kinds
	echo $((2 * TIMES - $(cat $dbg/failslab/times) - $(cat $dbg/fail_page_alloc/times)))
}
trap 'inject 0' EXIT

# The CI tier writes half as much and runs two thirds of the operations
# below (TIER=long: all of them): on the debug kernel next to two other VMs
# this test took 1699 s of CI's 5400 (2026-12-02).
MIB=$(tiered 16 32)
MP_NOPS=$(tiered 100 150)
export MP_NOPS
mkpattern old $MIB old
mkpattern new $MIB new

for pol in default fail_origin_writes; do
	for chunk in 128 2048; do
		log "$pol, $((chunk / 2)) KiB chunks: first-touch writes and a view read, allocations failing"
		origin=$(mkdev "o-$pol-$chunk" $MIB)
		put old "$origin"
		slice=$(mkdev "f-$pol-$chunk" $MIB 1)
		feat=()
		[ $pol = default ] || feat=(fail_origin_writes)
		fleece_create fo "$origin" "$slice" $chunk "${feat[@]}" >/dev/null
		view=$(view_create fv "$origin" "$slice")
		inject 20
		t0=$(ms)
		timeout 600 dd if=new of=/dev/mapper/fo bs=64k oflag=direct conv=notrunc status=none &
		wpid=$!
		timeout 600 dd if="$view" of=got bs=1M iflag=direct status=none
		wait $wpid || fail "the writer failed (exit $?)"
		n=$(injected)
		inject 0
		log "done in $(($(ms) - t0)) ms; $n allocations failed meanwhile"
		[ "$n" -gt 0 ] || fail "no allocation failure was injected"
		cmp got old || fail "the view read during the writes is not the point-in-time data"
		read -r pending copied released cbw errors state <<< "$(fleece_counts fo)"
		assert_eq "$errors $state" "0 active" "copy errors, state"
		same "$origin" new "origin"
		same "$view" old "view after the writes"
		dmsetup remove fv fo
	done
done

# --- the I/O kinds and the policies, allocations failing ---------------------
#
# The origin is a loop device on a file in ext4 (as in 20-io-kinds): it
# takes discards, write-zeroes (BLKZEROOUT: ZERO_RANGE) and flushes.  One
# Python process per case drives, in a seeded random order (the seed is
# printed; fleece.mp_seed= repeats it), 150 (CI tier: 100) of: plain and FUA writes
# (O_DIRECT, O_DIRECT|O_DSYNC) of 4 KiB to 128 KiB, flushes
# (fsync), write-zeroes of up to three chunks, discards on the origin, and
# discards (releases) on the view, while a second thread reads the view
# chunk by chunk; all of it while failslab and fail_page_alloc fail 20% of
# the allocations that cannot wait.  Then the view is read whole and the
# origin compared with a model of what was written.
#
#   alloc   allocations failing alone.  Both policies: no operation fails,
#           no copy fails, the view stays active and holds the
#           point-in-time data byte for byte (released chunks: EIO).
#   mkrq    and fail_make_request on the fleece device (make-it-fail on its
#           disk), so that copies fail.  Default policy (every fleece I/O
#           failing): no origin operation fails, the view ends invalid,
#           every view read fails.  fail_origin_writes (half of the fleece
#           I/O failing): writes, FUA writes and write-zeroes may fail with
#           EIO, nothing else; the view stays active with the point-in-time
#           data (a view read from the fleece device may fail meanwhile,
#           never return other data); once the fleece device works again
#           each failed write is done again and succeeds.
# In both, the origin holds what the model says (4 KiB blocks that a
# discard or a failed write touched excepted).

io_kinds() { # fo fv policy mode seed make-it-fail-file|-
	python3 - "$@" <<'PY'
import collections, fcntl, mmap, os, random, struct, subprocess, sys, threading, time

fo, fv, pol, mode, seed, mif = sys.argv[1:7]
CH, BS, NOPS = 65536, 4096, int(os.environ["MP_NOPS"])
BLKDISCARD, BLKZEROOUT = 0x1277, 0x127F
# The point-in-time data: the origin as it is before the first write.
ofd = os.open(fo, os.O_RDONLY | os.O_DIRECT)
size = os.lseek(ofd, 0, os.SEEK_END)
obuf = mmap.mmap(-1, size)
assert os.preadv(ofd, [obuf], 0) == size
old = bytes(obuf)
nch = size // CH
rng = random.Random(int(seed))
model = bytearray(old)          # what the origin holds
unknown = set()                 # 4 KiB blocks of it that no model says
released, releasing = set(), set()
lock = threading.Lock()
bugs, failed = [], []
stats = collections.Counter()
stop = threading.Event()
injecting = True                # make-it-fail is on
t_start = time.monotonic()
PLURAL = {"write": "writes", "FUA write": "FUA writes", "flush": "flushes",
          "write-zeroes": "write-zeroes", "discard": "origin discards"}


def status(dev):
    out = subprocess.run(["dmsetup", "status", os.path.basename(dev)],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[3:]


invalid_seen = False


def view_invalid():
    """Is the view invalid?  Once it is, it stays so: no more dmsetup runs."""
    global invalid_seen
    if not invalid_seen:
        invalid_seen = status(fv)[4] == "invalid"
    return invalid_seen


def bug(msg):
    with lock:
        bugs.append(msg)


def model_set(off, data):
    model[off:off + len(data)] = data
    for b in range(off // BS, (off + len(data) + BS - 1) // BS):
        unknown.discard(b)


def model_unknown(off, n):
    unknown.update(range(off // BS, (off + n + BS - 1) // BS))


def reader():
    r = random.Random(int(seed) + 1)
    fd = os.open(fv, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, CH)
    while not stop.is_set():
        c = r.randrange(nch)
        with lock:
            gone, going = c in released, c in releasing
        try:
            n = os.preadv(fd, [buf], c * CH)
            stats["view reads"] += 1
            if n != CH:
                bug("view read of chunk %d: %d bytes" % (c, n))
            elif gone:
                bug("view read of released chunk %d succeeded" % c)
            elif buf[:] != old[c * CH:(c + 1) * CH]:
                bug("view read of chunk %d: not the point-in-time data%s" % (
                    c, " (the origin's new data)" if buf[:] == model[c * CH:(c + 1) * CH] else ""))
        except OSError as e:
            stats["view reads failed"] += 1
            if e.errno != 5:
                bug("view read of chunk %d: %s" % (c, e))
            elif not (gone or going or mode == "mkrq" or view_invalid()):
                bug("view read of chunk %d failed while the view is active" % c)
            time.sleep(0.01)    # failed reads are quick: leave the CPU to the writes
    os.close(fd)


def origin_op(kind, fd, off, n, data):
    try:
        if kind in ("write", "FUA write"):
            buf = mmap.mmap(-1, n)
            buf[:] = data
            os.pwritev(fd, [buf], off)
            model_set(off, data)
        elif kind == "write-zeroes":
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", off, n))
            model_set(off, bytes(n))
        elif kind == "discard":
            fcntl.ioctl(fd, BLKDISCARD, struct.pack("QQ", off, n))
            model_unknown(off, n)
        else:
            os.fsync(fd)
        stats[PLURAL[kind]] += 1
        return True
    except OSError as e:
        model_unknown(off, n)
        if e.errno == 5 and injecting and mode == "mkrq" and \
                pol == "fail_origin_writes" and \
                kind in ("write", "FUA write", "write-zeroes"):
            stats[PLURAL[kind] + " failed (policy)"] += 1
            failed.append((kind, fd, off, n, data))
        else:
            bug("origin %s at %d+%d: %s" % (kind, off, n, e))
        return False


fd = os.open(fo, os.O_RDWR | os.O_DIRECT)
sfd = os.open(fo, os.O_RDWR | os.O_DIRECT | os.O_DSYNC)
vfd = os.open(fv, os.O_RDWR)    # BLKDISCARD needs write mode
if mif != "-":
    open(mif, "w").write("1")
th = threading.Thread(target=reader)
th.start()
for i in range(NOPS):
    x = rng.random()
    if x < 0.70:
        n = rng.choice([4096, 16384, CH, 2 * CH])
        off = rng.randrange((size - n) // BS + 1) * BS
        fua = x < 0.20
        origin_op("FUA write" if fua else "write", sfd if fua else fd, off, n, rng.randbytes(n))
    elif x < 0.75:
        origin_op("flush", fd, 0, 0, None)
    elif x < 0.85:
        n = rng.choice([40960, CH, 3 * CH])
        off = rng.randrange((size - n) // BS + 1) * BS
        origin_op("write-zeroes", fd, off, n, None)
    elif x < 0.92:
        n = rng.choice([CH, 2 * CH, 3 * CH])
        off = rng.randrange((size - n) // BS + 1) * BS
        origin_op("discard", fd, off, n, None)
    else:
        c = rng.randrange(nch)
        k = min(rng.choice([1, 1, 2, 4]), nch - c)
        chunks = set(range(c, c + k))
        with lock:
            releasing.update(chunks)
        try:
            fcntl.ioctl(vfd, BLKDISCARD, struct.pack("QQ", c * CH, k * CH))
            stats["view discards"] += 1
            with lock:
                released.update(chunks)
        except OSError as e:
            if e.errno != 5 or not view_invalid():
                bug("view discard of chunks %d..%d: %s" % (c, c + k - 1, e))
        with lock:
            releasing.difference_update(chunks)
stop.set()
th.join()
if mif != "-":
    open(mif, "w").write("0")
injecting = False
# Failed writes (fail_origin_writes) are tried again: they go on now.
for kind, f, off, n, data in failed:
    if origin_op(kind, f, off, n, data):
        stats["failed ones done again"] += 1

for i in range(300):
    st = status(fo)
    if st[8] == "0":
        break
    time.sleep(0.1)
else:
    bug("copies still in flight after 30 s: %s" % " ".join(st))
cbw, errors, state = int(st[5]), int(st[6]), st[7]
vstate = status(fv)[4]
want = "invalid" if (mode, pol) == ("mkrq", "default") else "active"
if state != want or vstate != want:
    bug("state: fleece %s, view %s; expected %s" % (state, vstate, want))
if mode == "alloc" and errors:
    bug("%d copies failed with only allocations failing" % errors)
if mode == "mkrq" and not errors:
    bug("no copy failed with fail_make_request on the fleece device")

# The whole view: the point-in-time data, EIO for released chunks (every
# chunk when invalid).
rfd = os.open(fv, os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, CH)
eio = 0
for c in range(nch):
    try:
        os.preadv(rfd, [buf], c * CH)
        if state == "invalid" or c in released:
            bug("view read of chunk %d succeeded (view %s, %s)" % (c, state, "released" if c in released else "not released"))
        elif buf[:] != old[c * CH:(c + 1) * CH]:
            bug("view chunk %d is not the point-in-time data" % c)
    except OSError as e:
        eio += 1
        if e.errno != 5 or not (state == "invalid" or c in released):
            bug("view read of chunk %d at the end: %s" % (c, e))
# The origin, block by block, where the model knows it.
os.preadv(ofd, [obuf], 0)
wrong = [b for b in range(size // BS) if b not in unknown and
         obuf[b * BS:(b + 1) * BS] != model[b * BS:(b + 1) * BS]]
if wrong:
    bug("%d blocks of the origin differ from the model, the first at %d" % (len(wrong), wrong[0] * BS))

print("io_kinds %s %s: %.1f s; %s; copies %d, failed %d; fleece %s, view %s; "
      "%d released, %d view chunks EIO at the end, %d origin blocks unknown"
      % (mode, pol, time.monotonic() - t_start,
         ", ".join("%s %d" % kv for kv in sorted(stats.items())),
         cbw, errors, state, vstate, len(released), eio, len(unknown)))
for b in bugs[:20]:
    print("  " + b)
sys.exit(1 if bugs else 0)
PY
}

# fail_make_request: each bio to a disk whose make-it-fail is 1 fails with
# this probability.
mkrq() { fault_attr $dbg/fail_make_request "$1"; }	# probability in percent
mkrq_injected() { echo $((TIMES - $(cat $dbg/fail_make_request/times))); }
[ -d $dbg/fail_make_request ] || fail "no fail_make_request in this kernel, which has failslab"
trap 'inject 0; mkrq 0' EXIT

# One origin and one fleece device for all four cases (each a new point in
# time, whatever the origin then holds): on the debug kernel every command
# costs.
modprobe loop 2>/dev/null || true
bdev=$(mkdev backing 48 2)
mkfs.ext4 -q -F -b 4096 "$bdev"
mkdir -p /mnt/mp35
mount "$bdev" /mnt/mp35
KMIB=16
mkpattern oldk $KMIB oldk
cp oldk /mnt/mp35/origin.img
lo=$(losetup -f --show /mnt/mp35/origin.img)
slice=$(mkdev fk-slice $KMIB 1)
disk=$(sysfs_name "$slice")
[ -e "/sys/block/$disk/make-it-fail" ] || disk=ram1	# the slice's brd
mif=/sys/block/$disk/make-it-fail
seed=$(arg fleece.mp_seed)
seed=${seed:-$RANDOM}
log "I/O kinds: seed $seed (fleece.mp_seed=$seed repeats it)"
for mode in alloc mkrq; do
	for pol in default fail_origin_writes; do
		log "I/O kinds, $mode, $pol: writes, FUA, flushes, write-zeroes, discards, view discards"
		feat=()
		[ $pol = default ] || feat=(fail_origin_writes)
		fleece_create fk "$lo" "$slice" 128 "${feat[@]}" >/dev/null
		view=$(view_create fkv "$lo" "$slice")
		if [ $mode = alloc ] && [ $pol = default ]; then
			q=/sys/block/$(sysfs_name /dev/mapper/fk)/queue
			[ "$(cat $q/discard_max_bytes)" -gt 0 ] && [ "$(cat $q/write_zeroes_max_bytes)" -gt 0 ] ||
				fail "the fleece over the loop device takes no discards or write-zeroes"
		fi
		[ $mode = alloc ] || mkrq $([ $pol = default ] && echo 100 || echo 50)
		inject 20
		io_kinds /dev/mapper/fk "$view" $pol $mode $seed "$([ $mode = alloc ] && echo - || echo "$mif")" ||
			fail "I/O kinds, $mode, $pol: see above"
		n=$(injected)
		inject 0
		[ "$n" -gt 0 ] || fail "no allocation failure was injected"
		if [ $mode = mkrq ]; then
			m=$(mkrq_injected)
			mkrq 0
			[ "$m" -gt 0 ] || fail "no fleece I/O was failed by fail_make_request ($mif)"
			log "$n allocations and $m fleece I/Os ($disk) failed"
		else
			log "$n allocations failed"
		fi
		dmsetup remove fkv fk
		seed=$((seed + 1))
	done
done
losetup -d "$lo"
umount /mnt/mp35

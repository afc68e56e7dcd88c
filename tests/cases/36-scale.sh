#!/bin/bash
# Scale: 64 fleeces at once, each on its own origin with its own fleece
# device and view, written and read all at the same time.
#
# 64 origins of 2 MiB (dm-linear slices of ram0) hold 64 different
# point-in-time images (slices of one random file); 64 fleece devices of
# 2 MiB are slices of ram1.  Chunk sizes cycle over 4 KiB, 64 KiB and
# 1 MiB (512, 32 and 2 chunks).  Then, at once, from one program:
#   - two writer threads per pair write new data through its fleece target:
#     352 KiB per pair in 4 KiB and 64 KiB writes (4 KiB-aligned, the
#     64 KiB ones across chunk boundaries), on ranges that do not overlap,
#     every chunk pending: 128 writers, so that copies run concurrently
#     across all 64 pairs (and within a pair where two writes share a
#     chunk);
#   - one reader thread per pair reads its view with O_DIRECT, in 64 KiB
#     blocks in a shuffled order, and compares each block with the pair's
#     point-in-time image: one block before any writer starts (served by
#     the origin: every chunk pending), then whole passes until its pair's
#     writers are done (at least one), then one more pass after them
#     (what they copied served by the fleece device), so that both kinds
#     of view read happen whatever the timing (on the debug kernel the
#     copies of 1 MiB chunks could all be done before a reader began).
# Checked after that:
#   - every view, byte for byte, equals its pair's point-in-time image, and
#     every origin its image with the pair's new data written over it (the
#     64 devices read one after the other into one comparison: a mismatch
#     names the pair and the offset, so two pairs' data swapped is caught);
#   - each fleece's status: copies == chunks written (cbw_count and
#     chunks_copied), pending == the rest, nothing released, no error,
#     active, nothing in flight; each view: active, no read refused, reads
#     served both from the origin and from the fleece device;
#   - all 64 views released at once (blkdiscard): every chunk released,
#     none copied or pending, still active; every view served reads both
#     from the origin and from the fleece device; a released chunk reads
#     EIO;
#   - two workqueue rescuer threads (kfleeced, kfleeced_start) per pair
#     while the pairs exist (probed with the first pair);
#   - teardown of all 64 leaves no dm device, no fleece worker thread, no
#     reference on the module, and nothing from fleece in the kernel log.
# dmsetup costs a process start per call, much under TCG: the 256 devices
# are made with one "dmsetup create --concise" per kind, and their status
# read with one "dmsetup status".  (Not --noudevsync: udev then gets the
# events of 64 devices at once, and on one slow vCPU its workers starved
# the RCU grace-period kthread for 21 s, a stall the harness counts as a
# splat.)
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

N=64		# pairs
MIB=2		# per origin (and per fleece device)
CHUNKS=(8 128 2048)
SZ=$((MIB * 2048))	# sectors per device

chunk_of() { echo "${CHUNKS[$1 % ${#CHUNKS[@]}]}"; }

# mkdev for many devices at once: NAMEs PREFIX0.. PREFIX(N-1), MIB MiB
# each, consecutive on ram RAM (the same bookkeeping as mkdev's).
mkdevs() { # prefix ram
	local nf=/tmp/.ram$2.next off i spec=""
	off=$(cat "$nf" 2>/dev/null || echo 0)
	for ((i = 0; i < N; i++)); do
		spec+="$1$i,,,rw,0 $SZ linear /dev/ram$2 $((off + i * SZ));"
	done
	echo $((off + N * SZ)) > "$nf"
	[ $((off + N * SZ)) -le 2097152 ] || fail "ram$2 is full"
	dmsetup create --concise "${spec%;}"
	udevadm settle
}

# Rescuer threads of the fleece contexts' workqueues "kfleeced" and
# "kfleeced_start": named so up to 6.8, "kworker/R-<name>" since 6.9; the
# task's comm cuts that to 15 characters ("kworker/R-kflee"), but
# /proc/PID/comm shows a kthread's full name on newer kernels (6.12 here).
workers() {
	cat /proc/[0-9]*/comm 2>/dev/null |
		grep -cE '^(kworker/R-)?(kfleeced|kfleeced_start|kflee)$' || true
}
# A new kthread names itself (since 6.10 in the new thread, not in
# kthread_create): the count may lag behind alloc_workqueue() for a moment
# on a loaded vCPU.  The count once it is N, or after 30 s.
workers_wait() { # N
	local n i
	for i in $(seq 150); do
		n=$(workers)
		[ "$n" = "$1" ] && break
		sleep 0.2
	done
	echo "$n"
}

# All 64 devices PREFIXi, one after the other, compared byte for byte with
# FILE (the 64 images in a row): a mismatch names the pair and the offset.
same_all() { # prefix file what
	local out b
	if out=$(for ((i = 0; i < N; i++)); do
			dd if="/dev/mapper/$1$i" bs=1M iflag=direct status=none
		done | cmp - "$2" 2>&1); then
		return 0
	fi
	b=$(sed -n 's/.* differ: byte \([0-9]*\),.*/\1/p' <<< "$out")
	[ -n "$b" ] || fail "$3: $out"
	b=$((b - 1))
	fail "$3: $1$((b / (SZ * 512))) differs at byte $((b % (SZ * 512))) ($out)"
}

cat > scale.py <<'EOF'
import mmap, os, random, sys, threading, time

mode, n, mib, chunks, seed = sys.argv[1:6]
N, S, SEED = int(n), int(mib) << 20, int(seed)
CHUNKS = [int(c) * 512 for c in chunks.split(",")]
BLK = 65536

if mode == "prep":
    # The 64 point-in-time images and the 64 new contents, one file each,
    # and the images written to the origins.
    # The new data of a pair is its image backwards: as unlike it as
    # random data, at a fraction of the cost of generating more.
    rng = random.Random(SEED)
    with open("pit", "wb") as f, open("new", "wb") as g:
        for i in range(N):
            b = rng.randbytes(S)
            f.write(b)
            g.write(b[::-1])
    buf = mmap.mmap(-1, S)
    with open("pit", "rb") as f:
        for i in range(N):
            buf[:] = f.read(S)
            fd = os.open(f"/dev/mapper/o{i}", os.O_WRONLY | os.O_DIRECT)
            if os.pwritev(fd, [buf], 0) != S:
                sys.exit(f"prep: short write to o{i}")
            os.close(fd)
    sys.exit(0)

# mode "run": the writers and readers, then the expected origins and counts.
pit = mmap.mmap(os.open("pit", os.O_RDONLY), 0, prot=mmap.PROT_READ)
new = mmap.mmap(os.open("new", os.O_RDONLY), 0, prot=mmap.PROT_READ)
exp = bytearray(pit)
errors, lock = [], threading.Lock()
plans, expect = [], []
for i in range(N):
    rng = random.Random(SEED * 1000 + i)
    nblk = S // 4096
    free = [True] * nblk
    ops = []
    for size, count in ((16, 4), (1, 24)):	# in 4 KiB blocks
        placed = 0
        while placed < count:
            b = rng.randrange(nblk - size + 1)
            if all(free[b:b + size]):
                free[b:b + size] = [False] * size
                ops.append((b * 4096, size * 4096))
                placed += 1
    rng.shuffle(ops)
    c = CHUNKS[i % len(CHUNKS)]
    written = set()
    for off, ln in ops:
        written.update(range(off // c, (off + ln - 1) // c + 1))
        exp[i * S + off:i * S + off + ln] = new[i * S + off:i * S + off + ln]
    plans.append(ops)
    expect.append(f"fl{i} {(S + c - 1) // c} {len(written)}")

writing = [2] * N	# writer threads of each pair still running
stats = {"reads": 0, "overlapped": 0, "passes": 0}

def err(msg):
    with lock:
        errors.append(msg)

def writer(i, ops, go):
    base = i * S
    buf = mmap.mmap(-1, BLK)
    fd = os.open(f"/dev/mapper/fl{i}", os.O_WRONLY | os.O_DIRECT)
    go.wait()
    try:
        for off, ln in ops:
            buf[:ln] = new[base + off:base + off + ln]
            if os.pwritev(fd, [memoryview(buf)[:ln]], off) != ln:
                err(f"fl{i}: short write at {off}")
                return
    except OSError as e:
        err(f"fl{i}: write failed: {e}")
    finally:
        os.close(fd)
        with lock:
            writing[i] -= 1

def reader(i, go):
    base = i * S
    buf = mmap.mmap(-1, BLK)
    order = list(range(S // BLK))
    random.Random(SEED + i).shuffle(order)
    fd = os.open(f"/dev/mapper/v{i}", os.O_RDONLY | os.O_DIRECT)

    def read(off, busy):
        if os.preadv(fd, [buf], off) != BLK:
            err(f"v{i}: short read at {off}")
            return False
        if buf[:] != pit[base + off:base + off + BLK]:
            j = next(j for j in range(BLK) if buf[j] != pit[base + off + j])
            what = ("data written after the point in time"
                    if buf[j] == new[base + off + j] else "other data")
            err(f"v{i}: block at {off} differs from the point-in-time "
                f"image at byte {off + j}: {what}")
            return False
        with lock:
            stats["reads"] += 1
            stats["overlapped"] += busy
        return True

    passes = 0
    try:
        # Before any write every chunk is pending: this read is served
        # by the origin, whatever the timing of the rest.
        if not read(order[0] * BLK, False):
            go.abort()	# the others must not wait for this one
            return
        go.wait()
        while passes == 0 or (writing[i] and passes < 2):
            for b in order:
                if not read(b * BLK, writing[i] > 0):
                    return
            passes += 1
        # After the pair's writers: what they copied is served by the
        # fleece device (a slow kernel may have read it all earlier).
        while writing[i]:
            time.sleep(0.01)
        for b in order:
            if not read(b * BLK, False):
                return
        passes += 1
    except OSError as e:
        err(f"v{i}: read failed: {e}")
    finally:
        os.close(fd)
        with lock:
            stats["passes"] += passes

go = threading.Barrier(3 * N + 1)
threads = []
for i in range(N):
    threads.append(threading.Thread(target=writer, args=(i, plans[i][0::2], go)))
    threads.append(threading.Thread(target=writer, args=(i, plans[i][1::2], go)))
    threads.append(threading.Thread(target=reader, args=(i, go)))
for t in threads:
    t.start()
try:
    go.wait()
except threading.BrokenBarrierError:
    pass	# a reader failed before the start: its error is reported below
t0 = time.monotonic()
for t in threads:
    t.join()
dt = time.monotonic() - t0
with open("expected-origins", "wb") as f:
    f.write(exp)
with open("expected-counts", "w") as f:
    f.write("\n".join(expect) + "\n")
nops = sum(len(p) for p in plans)
print(f"run: {nops} writes ({sum(l for p in plans for _, l in p) >> 10} KiB) by {2 * N} "
      f"writers, {stats['reads']} view reads of 64 KiB in {stats['passes']} passes by {N} "
      f"readers ({stats['overlapped']} while their pair's writers ran), {dt:.1f}s")
for e in errors[:20]:
    print(e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF

log "$N origins and $N fleece devices of $MIB MiB"
dmesg_mark
mkdevs o 0
mkdevs s 1
python3 scale.py prep $N $MIB "$(IFS=,; echo "${CHUNKS[*]}")" 36
workers0=$(workers)

log "the first fleece, alone: its worker threads"
fleece_create fl0 /dev/mapper/o0 /dev/mapper/s0 "$(chunk_of 0)" > /dev/null
# Each fleece context has two work queues with a rescuer thread each.
per_pair=$(($(workers_wait $((workers0 + 2))) - workers0))
[ "$per_pair" -ge 1 ] || fail "no fleece worker thread while a fleece table exists"
log "$per_pair worker threads per pair"

log "the other $((N - 1)) fleeces and all $N views"
spec=""
for ((i = 1; i < N; i++)); do
	spec+="fl$i,,,rw,0 $SZ fleece /dev/mapper/o$i /dev/mapper/s$i $(chunk_of $i);"
done
dmsetup create --concise "${spec%;}"
udevadm settle
spec=""
for ((i = 0; i < N; i++)); do
	spec+="v$i,,,rw,0 $SZ fleece-view /dev/mapper/o$i /dev/mapper/s$i;"
done
dmsetup create --concise "${spec%;}"
udevadm settle
assert_eq "$(workers_wait $((workers0 + N * per_pair)))" $((workers0 + N * per_pair)) "fleece worker threads with $N pairs"
dmsetup status > status.start
for ((i = 0; i < N; i++)); do
	c=$(chunk_of $i)
	echo "fl$i: 0 $SZ fleece $c $((SZ / c)) $((SZ / c)) 0 0 0 0 active 0 0"
done | sort > want.start
grep '^fl[0-9]*:' status.start | sort | diff want.start - || fail "fleece status at the start"

log "$((2 * N)) writers on the origins, $N readers on the views, at once"
python3 scale.py run $N $MIB "$(IFS=,; echo "${CHUNKS[*]}")" 36 ||
	fail "the writers or the readers failed"

log "copies settle"
for ((t = 0; t < 300; t++)); do
	dmsetup status > status.end
	awk '$4 == "fleece" && $13 != 0 { busy = 1 } END { exit busy }' status.end && break
	sleep 0.1
done
# Each fleece: chunks total, pending, copied, released, cbw_count, errors,
# state, in flight; each view: nothing refused or released, active.
awk 'FNR == NR { want[$1] = $2 " " $2 - $3 " " $3 " 0 " $3 " 0 active 0"; next }
	$4 == "fleece" { n = $1; sub(":", "", n); seen++
		got = $6 " " $7 " " $8 " " $9 " " $10 " " $11 " " $12 " " $13
		if (got != want[n]) { print n ": total pending copied released cbw errors state in_flight: " got ", expected " want[n]; bad = 1 } }
	$4 == "fleece-view" { views++
		if ($7 != 0 || $8 != 0 || $9 != "active") { print "view " $0; bad = 1 } }
	END { if (seen != '$N' || views != '$N') { print seen " fleeces, " views " views"; bad = 1 }; exit bad }' \
	expected-counts status.end || fail "status after the writes"
awk '$4 == "fleece" { c += $10; ch += $6 } END { printf "== %d copies of %d chunks\n", c, ch }' status.end

log "every view against its point in time, every origin against its new data"
same_all v pit "views"
same_all o expected-origins "origins"

log "all $N views released at once"
for ((i = 0; i < N; i++)); do
	blkdiscard -f "/dev/mapper/v$i" 2> "discard.$i.err" &
done
wait_all=0
for ((i = 0; i < N; i++)); do
	wait -n || wait_all=1
done
[ $wait_all = 0 ] || { cat discard.*.err; fail "a blkdiscard of a view failed"; }
dmsetup status > status.released
# Each fleece: nothing pending or copied, all released, active; each view:
# released all its pair's chunks, served reads both from the origin and
# from the fleece device, active.  (Not "refused none": closing a view
# opened for writing, as blkdiscard does, makes udev probe it, and those
# reads of released chunks are refused.)
awk '{ n = $1; sub(":", "", n) }
	$4 == "fleece" { sub("^fl", "", n); total[n] = $6
		if ($7 != 0 || $8 != 0 || $9 != $6 || $11 != 0 || $12 != "active") { print; bad = 1 } }
	$4 == "fleece-view" { sub("^v", "", n); view[n] = $0; rel[n] = $8
		if ($5 == 0 || $6 == 0 || $9 != "active") { print; bad = 1 } }
	END { for (n in view) if (rel[n] != total[n]) { print view[n] ": released " rel[n] " of " total[n]; bad = 1 }
		exit bad }' status.released || fail "status after releasing every view"
expect_eio dd if=/dev/mapper/v$((N - 1)) of=/dev/null bs=4k count=1 iflag=direct status=none

log "teardown of all $N pairs"
udevadm settle
names() { local i; for ((i = 0; i < N; i++)); do echo "$1$i"; done; }
# shellcheck disable=SC2046
dmsetup remove $(names v)
# shellcheck disable=SC2046
dmsetup remove $(names fl)
assert_eq "$(workers_wait "$workers0")" "$workers0" "fleece worker threads after the teardown"
assert_eq "$(cat /sys/module/dm_fleece/refcnt)" 0 "module references after the teardown"
# shellcheck disable=SC2046
dmsetup remove $(names s) $(names o)
udevadm settle
assert_eq "$(dmsetup ls)" "No devices found" "dm devices after the teardown"
if dmesg_since_mark | grep -E 'fleece'; then
	fail "fleece wrote to the kernel log"
fi
log "done"

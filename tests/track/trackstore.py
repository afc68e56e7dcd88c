#!/usr/bin/env python3
"""The fleece-track store read from userspace, and writers for 37-track.

A reference reader of the on-disk format documented in dm-fleece.rst
("Change tracking"); it shares no code with the kernel.

  trackstore.py show STORE [SKIP_BYTES]
      the store (a device or an image file, from byte SKIP_BYTES on):
      key=value lines; cur= and prev= are the chunk sets, as ranges
  trackstore.py write DEV CHUNK_BYTES CHUNK...
      one O_DIRECT 4 KiB write at the start of each CHUNK
  trackstore.py writers DEV CHUNK_BYTES NR_CHUNKS LOG SEED THREADS
      random 4 KiB O_DIRECT writes until killed; after each one returns,
      its byte offset is appended to LOG (flushed at once)
  trackstore.py covers STORE SKIP_BYTES LOG CHUNK_BYTES
      every offset in LOG lies in a chunk of the current set: exit 0,
      else print the missing chunks and exit 1
"""
import mmap
import os
import random
import struct
import sys
import threading

BLOCK = 4096
SB_MAGIC = 0x4B544C46
BM_MAGIC = 0x42544C46
HDR = 32
BITS = (BLOCK - HDR) * 8
CLEAN, CUR_LOST, PREV_LOST = 1, 2, 4
PREV_NAMES = ["none", "ready", "done", "merged"]

_T = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _T.append(_c)


def crc32c(data):
    c = 0xFFFFFFFF
    t = _T
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def csum_ok(blk):
    return struct.unpack_from("<I", blk, 0)[0] == crc32c(blk[4:])


SB_FMT = "<IIIIQQQQQIIQQQ16s64s"


def parse_sb(blk, slot):
    f = struct.unpack_from(SB_FMT, blk, 0)
    keys = ("csum magic version flags seq generation epoch nr_chunks "
            "data_sectors chunk_sectors prev_state bitmap_blocks "
            "checkpoint_time format_time store_uuid device_id").split()
    sb = dict(zip(keys, f))
    if sb["magic"] != SB_MAGIC or not csum_ok(blk) or sb["seq"] & 1 != slot:
        return None
    return sb


def read_bytes(path, off, n):
    """O_DIRECT where it works: the page cache may hold an older store."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        fd = os.open(path, os.O_RDONLY)
    buf = mmap.mmap(-1, n)
    done = 0
    while done < n:
        got = os.preadv(fd, [memoryview(buf)[done:]], off + done)
        if got <= 0:
            raise SystemExit("%s: short read at %d" % (path, off + done))
        done += got
    os.close(fd)
    return bytes(buf)


def read_store(path, skip=0):
    return parse_store(lambda off, n: read_bytes(path, skip + off, n))


def parse_store(get):
    """The store whose bytes get(offset, length) returns: (sb, sets, bad)."""
    head = get(0, 2 * BLOCK)
    sbs = [parse_sb(head[i * BLOCK:(i + 1) * BLOCK], i) for i in (0, 1)]
    good = [s for s in sbs if s]
    if not good:
        raise SystemExit("no valid superblock")
    sb = max(good, key=lambda s: s["seq"])
    nb = sb["bitmap_blocks"]
    areas = get(2 * BLOCK, 2 * nb * BLOCK)
    epoch = sb["epoch"]
    bad = 0
    sets = {}
    for name, area, want in (("cur", epoch & 1, epoch), ("prev", (epoch - 1) & 1, epoch - 1)):
        chunks = set()
        for b in range(nb):
            off = (area * nb + b) * BLOCK
            blk = areas[off:off + BLOCK]
            magic, tag, a, idx, uu = struct.unpack_from("<IQII8s", blk, 4)
            if (not csum_ok(blk) or magic != BM_MAGIC or a != area or idx != b
                    or uu != sb["store_uuid"][:8] or tag > epoch):
                bad += 1
                chunks.update(range(b * BITS, min((b + 1) * BITS, sb["nr_chunks"])))
                continue
            if tag != want:
                continue
            bits = int.from_bytes(blk[HDR:], "little")
            while bits:
                low = bits & -bits
                chunks.add(b * BITS + low.bit_length() - 1)
                bits ^= low
        sets[name] = chunks
    allc = set(range(sb["nr_chunks"]))
    if sb["flags"] & CUR_LOST:
        sets["cur"] = allc
    if sb["flags"] & PREV_LOST:
        sets["prev"] = allc
    if PREV_NAMES[sb["prev_state"]] in ("none", "done"):
        sets["prev"] = set()	# no checkpoint yet, or dropped by backup_done
    return sb, sets, bad


def ranges(s):
    out, it = [], sorted(s)
    i = 0
    while i < len(it):
        j = i
        while j + 1 < len(it) and it[j + 1] == it[j] + 1:
            j += 1
        out.append(str(it[i]) if i == j else "%d-%d" % (it[i], it[j]))
        i = j + 1
    return ",".join(out) or "-"


def show(path, skip=0):
    sb, sets, bad = read_store(path, skip)
    print("seq=%d" % sb["seq"])
    print("epoch=%d" % sb["epoch"])
    print("generation=%d" % sb["generation"])
    print("clean=%d" % (sb["flags"] & CLEAN))
    print("cur_lost=%d" % (sb["flags"] & CUR_LOST and 1))
    print("prev_lost=%d" % (sb["flags"] & PREV_LOST and 1))
    print("prev_state=%s" % PREV_NAMES[sb["prev_state"]])
    print("chunk_sectors=%d" % sb["chunk_sectors"])
    print("nr_chunks=%d" % sb["nr_chunks"])
    print("device_id=%s" % sb["device_id"].rstrip(b"\0").decode())
    print("store_uuid=%s" % sb["store_uuid"].hex())
    print("bad_blocks=%d" % bad)
    print("cur=%s" % ranges(sets["cur"]))
    print("prev=%s" % ranges(sets["prev"]))


def odirect(dev):
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, BLOCK)
    buf.write(os.urandom(BLOCK))
    return fd, buf


def write(dev, chunk_bytes, chunks):
    fd, buf = odirect(dev)
    for c in chunks:
        os.pwritev(fd, [buf], c * chunk_bytes)
    os.close(fd)


def writers(dev, chunk_bytes, nr_chunks, log, seed, threads):
    out = open(log, "a")
    lock = threading.Lock()

    def run(n):
        rnd = random.Random(seed * 1000 + n)
        fd, buf = odirect(dev)
        while True:
            off = rnd.randrange(nr_chunks) * chunk_bytes + \
                rnd.randrange(chunk_bytes // BLOCK) * BLOCK
            os.pwritev(fd, [buf], off)
            with lock:
                out.write("%d\n" % off)
                out.flush()

    ts = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def covers(path, skip, log, chunk_bytes):
    sb, sets, bad = read_store(path, skip)
    acked = set()
    with open(log) as f:
        for line in f:
            if line.strip():
                acked.add(int(line) // chunk_bytes)
    missing = acked - sets["cur"]
    print("acknowledged_chunks=%d marked=%d bad_blocks=%d missing=%d" %
          (len(acked), len(sets["cur"]), bad, len(missing)))
    if missing:
        print("missing=%s" % ranges(missing))
        sys.exit(1)


def main(a):
    if a[0] == "show":
        show(a[1], int(a[2]) if len(a) > 2 else 0)
    elif a[0] == "write":
        write(a[1], int(a[2]), [int(x) for x in a[3:]])
    elif a[0] == "writers":
        writers(a[1], int(a[2]), int(a[3]), a[4], int(a[5]), int(a[6]))
    elif a[0] == "covers":
        covers(a[1], int(a[2]), a[3], int(a[4]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

#!/usr/bin/env python3
"""A power loss at every point of a dm-log-writes log: is every write that
reached the tracked device covered by a mark already on the store?

  powerloss.py LOG DATA_BYTES STORE_OFFSET STORE_BYTES CHUNK_BYTES

LOG is the log of a log-writes device (dm-log-writes.rst) that carried
both the tracked data, bytes [0, DATA_BYTES), and the tracker's store,
bytes [STORE_OFFSET, STORE_OFFSET + STORE_BYTES).  log-writes records a
write with REQ_FUA when it completes, and a plain write only at the next
flush, after the writes completed before it: each prefix of the log is a
state the disks may be in after a power loss (writes held in a volatile
cache and never flushed are lost).  For every data write or discard in
the log, the store as the writes before it left it (replayed from
zeros: the test starts on a zeroed device) must hold a mark, in the
current or the previous set (trackstore.py's reader), for each chunk it
touches.  A write with REQ_FUA is logged as soon as it completes, so a
mark written without REQ_FUA, or after its write was let go, is found:
its store write is logged after the data write.

Prints the counts; exit 1 if a chunk was unmarked, or if the log lacks
what makes the check mean something (FUA and plain data writes,
flushes, FUA store writes).
"""
import struct
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import trackstore  # noqa: E402

MAGIC = 0x6a736677736872
FLUSH, FUA, DISCARD, MARK = 1, 2, 4, 8


def entries(log):
    magic, version, nr, ss = struct.unpack_from("<QQQI", log, 0)
    if magic != MAGIC or version != 1:
        raise SystemExit("not a log-writes log (magic %#x, version %d)" % (magic, version))
    pos = ss
    for _ in range(nr):
        sector, nsect, flags, dlen = struct.unpack_from("<QQQQ", log, pos)
        data = pos + ss
        size = 0 if flags & (DISCARD | MARK) else nsect * ss
        if data + size > len(log):
            raise SystemExit("log truncated at entry %d" % _)
        yield sector * ss, nsect * ss, flags, log[data:data + size]
        pos = data + size


def main(a):
    log = open(a[0], "rb").read()
    data_bytes, s_off, s_len, chunk = (int(x) for x in a[1:5])
    store = bytearray(s_len)
    sets = None
    n = dict(data_fua=0, data_plain=0, data_discard=0, flush=0, store_fua=0,
             store_plain=0, marks=0, entries=0)
    missing = []
    for off, length, flags, payload in entries(log):
        n["entries"] += 1
        if flags & MARK:
            n["marks"] += 1
            continue
        if flags & FLUSH and not length:
            n["flush"] += 1
            continue
        if off >= s_off and off + length <= s_off + s_len:
            store[off - s_off:off - s_off + length] = \
                bytes(length) if flags & DISCARD else payload
            sets = None
            n["store_fua" if flags & FUA else "store_plain"] += 1
            continue
        if off + length > data_bytes:
            raise SystemExit("a write at %d+%d is neither data nor store" % (off, length))
        n["data_discard" if flags & DISCARD else "data_fua" if flags & FUA
          else "data_plain"] += 1
        if sets is None:
            try:
                _, s, _ = trackstore.parse_store(lambda o, k: bytes(store[o:o + k]))
                sets = s["cur"] | s["prev"]
            except SystemExit:
                sets = set()	# no valid superblock yet: nothing is marked
        for c in range(off // chunk, (off + length - 1) // chunk + 1):
            if c not in sets:
                missing.append((n["entries"], off, length, flags, c))
    print(" ".join("%s=%d" % kv for kv in n.items()) + " unmarked=%d" % len(missing))
    for e in missing[:10]:
        print("unmarked: entry %d, write %d+%d flags %#x, chunk %d" % e)
    empty = [k for k in ("data_fua", "data_plain", "flush", "store_fua") if not n[k]]
    if empty:
        print("the log has no %s: the check would mean nothing" % ", ".join(empty))
    sys.exit(1 if missing or empty else 0)


if __name__ == "__main__":
    main(sys.argv[1:])

#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Randomized, model-checked stress test of the fleece targets.

Runs inside the test guest only (tests/cases/34-stress.sh starts it).  Each
round builds a fleece over an origin whose content the model knows, then
for a while drives at once, in threads:

  writers   origin writes (some with O_DSYNC: FUA or a flush), write-zeroes
            and discards, each thread on its own
            chunks, so that the model of the origin is exact;
  readers   view reads, checked against the point-in-time content, and view
            discards of whole chunks (releases);
  control   suspends and resumes of the origin, reloads that flip the
            policy (default <-> fail_origin_writes), and faults of the
            fleece device: writes delayed below or above cbw_timeout_ms,
            writes failing (dm-flakey error_writes).

What must hold, checked as it happens:
  - a view read returns the point-in-time data, or fails: fails only for a
    released chunk or once the view is invalid (asked of the status then);
    a read of a chunk released before it started never succeeds;
  - an origin write never fails under the default policy unless a copy
    asked for under fail_origin_writes may still be stuck; no origin write,
    suspend or resume takes longer than the timeout plus a margin;
and at the end of a round: the origin holds what the model says, the view
(if still valid) the point-in-time data for every chunk not released.

Prints its seed; FLEECE_STRESS_SEED repeats a run.
"""

import fcntl
import mmap
import os
import random
import struct
import subprocess
import sys
import threading
import time

BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F
SECTOR = 512
TIMEOUT_MS = 1000
MARGIN_S = 30.0          # TCG and debug kernels are slow; hangs are not
UNKNOWN = None


class Bug(Exception):
    pass


def log(msg):
    print(f"[{time.monotonic():9.3f}] {msg}", flush=True)


def dm(*args, timeout=120):
    """Runs dmsetup; a hang or a failure is a bug of the run."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(["dmsetup", *args], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Bug(f"dmsetup {' '.join(args)}: still running after {timeout} s")
    if p.returncode:
        raise Bug(f"dmsetup {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout, time.monotonic() - t0


def aligned(n):
    return mmap.mmap(-1, n)


class Round:
    def __init__(self, rng, args, origin_model, index):
        self.rng = rng
        self.a = args
        self.index = index
        self.chunk_sectors = rng.choice([8, 16, 128, 1024])
        self.chunk = self.chunk_sectors * SECTOR
        self.size = args.mib << 20
        self.nchunks = self.size // self.chunk
        self.origin_model = origin_model        # bytearray, or None per byte-run
        self.pit = bytes(origin_model)          # point in time
        self.released = set()                   # discards that returned
        self.releasing = set()                  # discards under way
        # A view discard passes a released copied chunk's discard on to the
        # fleece device: while that fails writes, the discard fails with
        # EIO, though the chunks may be released already.
        self.uncertain = set()
        # View reads and releases one at a time: a read concurrent with a
        # release of its chunks is unordered (admin guide), so the model
        # could not tell what it must return.
        self.view_io = threading.Lock()
        self.fleece_fails_writes = False
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.failures = []
        self.fail_policy = rng.random() < 0.5
        self.fail_until = 0.0   # EIO on origin writes allowed until then
        if self.fail_policy:
            self.fail_until = float("inf")
        self.stats = {"writes": 0, "fua_writes": 0, "eio_writes": 0, "zeroes": 0, "discards": 0,
                      "view_reads": 0, "view_eio": 0, "releases": 0,
                      "suspends": 0, "reloads": 0, "faults": 0}

    # --- tables ---------------------------------------------------------
    def fleece_table(self):
        feats = ["cbw_timeout_ms", str(TIMEOUT_MS)]
        if self.fail_policy:
            feats.insert(0, "fail_origin_writes")
        return (f"0 {self.size // SECTOR} fleece {self.a.origin} "
                f"/dev/mapper/{self.a.name}-fl {self.chunk_sectors} "
                f"{len(feats)} {' '.join(feats)}")

    def fl_table(self, kind):
        n = self.size // SECTOR
        s = self.a.slice
        if kind == "linear":
            return f"0 {n} linear {s} 0"
        if kind == "slow":
            return f"0 {n} delay {s} 0 0 {s} 0 {TIMEOUT_MS // 4}"
        if kind == "stall":
            return f"0 {n} delay {s} 0 0 {s} 0 {TIMEOUT_MS * 3}"
        if kind == "error":
            return f"0 {n} flakey {s} 0 0 3600 1 error_writes"
        raise ValueError(kind)

    def state(self):
        out, _ = dm("status", f"{self.a.name}-fo")
        return out.split()[10]

    def swap_fl(self, kind):
        dm("load", f"{self.a.name}-fl", "--table", self.fl_table(kind))
        _, t = dm("suspend", f"{self.a.name}-fl")
        dm("resume", f"{self.a.name}-fl")
        return t

    # --- checks ---------------------------------------------------------
    def bug(self, msg):
        with self.lock:
            self.failures.append(msg)
        self.stop.set()

    def check_time(self, what, t):
        if t > TIMEOUT_MS / 1000 + MARGIN_S:
            self.bug(f"{what} took {t:.1f} s (cbw_timeout_ms {TIMEOUT_MS})")

    # --- threads --------------------------------------------------------
    def writer(self, tid, nthreads):
        rng = random.Random(self.rng.random())
        fd = os.open(self.a.fo, os.O_RDWR | os.O_DIRECT)
        # O_DSYNC: a direct write with FUA (or followed by a flush).
        sfd = os.open(self.a.fo, os.O_RDWR | os.O_DIRECT | os.O_DSYNC)
        buf = aligned(2 * self.chunk)
        # Groups of 4 chunks per thread, so that bios may cross chunks.
        group = 4 * self.chunk
        mine = [g for g in range(self.size // group) if g % nthreads == tid]
        try:
            while not self.stop.is_set():
                g = rng.choice(mine)
                off = g * group + rng.randrange(group // 4096) * 4096
                n = min(rng.choice([4096, 8192, self.chunk, 2 * self.chunk]),
                        (g + 1) * group - off)
                op = rng.random()
                t0 = time.monotonic()
                try:
                    if op < 0.85:
                        data = rng.randbytes(n)
                        buf[:n] = data
                        sync = op < 0.15
                        os.pwritev(sfd if sync else fd, [memoryview(buf)[:n]], off)
                        self.model_set(off, data)
                        self.stats["fua_writes" if sync else "writes"] += 1
                    elif op < 0.95:
                        fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", off, n))
                        self.model_set(off, bytes(n))
                        self.stats["zeroes"] += 1
                    else:
                        fcntl.ioctl(fd, BLKDISCARD, struct.pack("QQ", off, n))
                        self.model_unknown(off, n)
                        self.stats["discards"] += 1
                except OSError as e:
                    self.model_unknown(off, n)
                    if e.errno == 95 and op >= 0.95:
                        continue        # the origin does not discard
                    if e.errno != 5:
                        self.bug(f"origin op at {off}+{n}: {e}")
                    elif time.monotonic() > self.fail_until:
                        self.bug(f"origin write at {off}+{n} failed with EIO under the default policy")
                    self.stats["eio_writes"] += 1
                self.check_time(f"origin op at {off}+{n}", time.monotonic() - t0)
        finally:
            os.close(sfd)
            os.close(fd)

    def model_set(self, off, data):
        self.origin_model[off:off + len(data)] = data
        for i in range(off // 4096, (off + len(data) + 4095) // 4096):
            self.unknown.discard(i)

    def model_unknown(self, off, n):
        for i in range(off // 4096, (off + n + 4095) // 4096):
            self.unknown.add(i)

    def reader(self):
        rng = random.Random(self.rng.random())
        fd = os.open(self.a.fv, os.O_RDONLY | os.O_DIRECT)
        dfd = os.open(self.a.fv, os.O_RDWR)     # BLKDISCARD needs write mode
        buf = aligned(4 * self.chunk + 4096)
        try:
            while not self.stop.is_set():
                if rng.random() < 0.1:
                    self.release(dfd, rng)
                    continue
                n = rng.choice([4096, self.chunk, 3 * self.chunk])
                n = max(4096, n - n % 4096)
                off = rng.randrange((self.size - n) // 4096 + 1) * 4096
                first, last = off // self.chunk, (off + n - 1) // self.chunk
                self.view_io.acquire()
                with self.lock:
                    gone = {c for c in range(first, last + 1) if c in self.released}
                    going = {c for c in range(first, last + 1)
                             if c in self.releasing or c in self.uncertain}
                # Timed: the read alone.  Not the wait for view_io (a
                # release's discard, timed in release()) nor the dmsetup
                # status below, whose process start alone took seconds on
                # the debug kernel in a loaded CI run (2026-12-02).
                t0 = time.monotonic()
                try:
                    try:
                        got = os.preadv(fd, [memoryview(buf)[:n]], off)
                    finally:
                        t_read = time.monotonic() - t0
                        self.view_io.release()
                    self.stats["view_reads"] += 1
                    if got != n:
                        self.bug(f"view read at {off}+{n}: {got} bytes")
                    elif gone:
                        self.bug(f"view read at {off}+{n} succeeded over released chunks {sorted(gone)}")
                    elif buf[:n] != self.pit[off:off + n]:
                        bad = next(i for i in range(n) if buf[i] != self.pit[off + i])
                        self.bug(f"view read at {off}+{n}: byte {off + bad} is not the point-in-time data")
                except OSError as e:
                    self.stats["view_eio"] += 1
                    if e.errno != 5:
                        self.bug(f"view read at {off}+{n}: {e}")
                    elif not gone and not going and self.state() != "invalid":
                        self.bug(f"view read at {off}+{n} failed while the view is active")
                self.check_time(f"view read at {off}+{n}", t_read)
        finally:
            os.close(fd)
            os.close(dfd)

    def release(self, fd, rng):
        c = rng.randrange(self.nchunks)
        k = rng.choice([1, 1, 2, 8])
        k = min(k, self.nchunks - c)
        chunks = set(range(c, c + k))
        with self.lock:
            self.releasing |= chunks
        try:
            with self.view_io:
                t0 = time.monotonic()
                try:
                    fcntl.ioctl(fd, BLKDISCARD, struct.pack("QQ", c * self.chunk, k * self.chunk))
                finally:
                    self.check_time(f"view discard of chunks {c}..{c + k - 1}",
                                    time.monotonic() - t0)
            with self.lock:
                self.released |= chunks
            self.stats["releases"] += k
        except OSError as e:
            if e.errno == 5 and self.fleece_fails_writes:
                with self.lock:
                    self.uncertain |= chunks
            elif e.errno != 5 or self.state() != "invalid":
                self.bug(f"view discard of chunks {c}..{c + k - 1}: {e}")
        finally:
            with self.lock:
                self.releasing -= chunks

    def control(self):
        rng = random.Random(self.rng.random())
        fo = f"{self.a.name}-fo"
        fault = None
        while not self.stop.wait(rng.uniform(0.3, 1.5)):
            try:
                op = rng.random()
                if fault:
                    self.swap_fl("linear")
                    self.fleece_fails_writes = False
                    log(f"fleece device repaired ({fault})")
                    fault = None
                elif op < 0.3:
                    fault = rng.choice(["slow", "stall", "error"])
                    if fault == "error":
                        self.fleece_fails_writes = True
                    self.swap_fl(fault)
                    self.stats["faults"] += 1
                    log(f"fleece device fault: {fault}")
                elif op < 0.6:
                    _, t = dm("suspend", fo)
                    self.check_time("suspend of the origin", t)
                    time.sleep(rng.uniform(0, 0.3))
                    dm("resume", fo)
                    self.stats["suspends"] += 1
                else:
                    was_fail = self.fail_policy
                    self.fail_policy = not was_fail
                    if self.fail_policy:
                        self.fail_until = float("inf")
                    dm("load", fo, "--table", self.fleece_table())
                    _, t = dm("suspend", fo)
                    self.check_time("suspend for a reload", t)
                    dm("resume", fo)
                    if was_fail:
                        # Copies asked for under it keep its rule until
                        # they end: their timeout, plus time to see it.
                        self.fail_until = time.monotonic() + TIMEOUT_MS / 1000 + MARGIN_S
                    self.stats["reloads"] += 1
                    log(f"reloaded: {'fail_origin_writes' if self.fail_policy else 'default'}")
            except Bug as e:
                self.bug(str(e))
        if fault:
            self.swap_fl("linear")

    # --- the round ------------------------------------------------------
    def run(self, seconds):
        a = self.a
        self.unknown = set()
        log(f"round {self.index}: chunk {self.chunk_sectors} sectors, "
            f"{'fail_origin_writes' if self.fail_policy else 'default policy'}, {seconds} s")
        dm("create", f"{a.name}-fl", "--table", self.fl_table("linear"))
        dm("create", f"{a.name}-fo", "--table", self.fleece_table())
        dm("create", f"{a.name}-fv", "--table",
           f"0 {self.size // SECTOR} fleece-view {a.origin} /dev/mapper/{a.name}-fl")
        subprocess.run(["udevadm", "settle"], check=False)
        threads = [threading.Thread(target=self.writer, args=(i, 2)) for i in range(2)]
        threads += [threading.Thread(target=self.reader) for _ in range(2)]
        threads.append(threading.Thread(target=self.control))
        for t in threads:
            t.start()
        self.stop.wait(seconds)
        self.stop.set()
        for t in threads:
            t.join(timeout=TIMEOUT_MS / 1000 + 2 * MARGIN_S)
            if t.is_alive():
                self.failures.append("a thread is still blocked after the run")
        log(f"round {self.index}: {self.stats}")
        if not self.failures:
            try:
                self.verify()
            except Bug as e:
                self.failures.append(str(e))
        dm("remove", f"{a.name}-fv")
        dm("remove", f"{a.name}-fo")
        dm("remove", f"{a.name}-fl")
        return self.failures

    def read_all(self, path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        buf = aligned(self.size)
        try:
            if os.preadv(fd, [buf], 0) != self.size:
                raise Bug(f"{path}: short read")
        finally:
            os.close(fd)
        return buf

    def verify(self):
        """Once every copy has ended: the view and the origin, whole."""
        a = self.a
        for _ in range(300):
            out, _ = dm("status", f"{a.name}-fo")
            if out.split()[11] == "0":
                break
            time.sleep(0.1)
        else:
            raise Bug(f"copies still in flight 30 s after the round: {out.strip()}")
        state = self.state()
        if state == "active":
            view = None if self.released or self.uncertain else self.read_all(a.fv)
            fd = os.open(a.fv, os.O_RDONLY | os.O_DIRECT)
            buf = aligned(self.chunk)
            try:
                for c in range(self.nchunks):
                    if c in self.released or c in self.uncertain:
                        continue
                    o = c * self.chunk
                    if view is not None:
                        got = view[o:o + self.chunk]
                    else:
                        os.preadv(fd, [buf], o)
                        got = buf[:]
                    if got != self.pit[o:o + self.chunk]:
                        raise Bug(f"end of round: view chunk {c} is not the point in time")
            finally:
                os.close(fd)
        data = self.read_all(a.fo)
        for blk in range(self.size // 4096):
            o = blk * 4096
            if blk in self.unknown:
                self.origin_model[o:o + 4096] = data[o:o + 4096]
            elif data[o:o + 4096] != self.origin_model[o:o + 4096]:
                self.failures.append(f"end of round: origin block {blk} differs from the model")
                return
        log(f"round {self.index}: view {state}, {len(self.released)} chunks released, origin as modelled")


def main():
    import argparse
    # It creates and removes dm devices: only ever in the test VM.
    with open("/proc/cmdline") as f:
        if "fleece_test_guest=1" not in f.read().split():
            print("fleece-stress: not in the dm-fleece test VM (fleece_test_guest=1 "
                  "missing from /proc/cmdline): refusing to run; use make check",
                  file=sys.stderr)
            return 1
    p = argparse.ArgumentParser()
    p.add_argument("--origin", required=True)
    p.add_argument("--slice", required=True, help="backing of the fleece device")
    p.add_argument("--name", default="st")
    p.add_argument("--mib", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--round", type=float, default=15)
    a = p.parse_args()
    a.fo = f"/dev/mapper/{a.name}-fo"
    a.fv = f"/dev/mapper/{a.name}-fv"
    seed = int(os.environ.get("FLEECE_STRESS_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"fleece-stress: seed {seed} (FLEECE_STRESS_SEED={seed} repeats it)", flush=True)
    rng = random.Random(seed)
    with open(a.origin, "rb", buffering=0) as f:
        model = bytearray(f.read(a.mib << 20))
    end = time.monotonic() + a.seconds
    i = 0
    while True:
        left = end - time.monotonic()
        if left <= 1 and i:
            break
        failures = Round(rng, a, model, i).run(min(a.round, max(left, 1)))
        if failures:
            for f in failures:
                print(f"fleece-stress: BUG (seed {seed}): {f}", flush=True)
            return 1
        i += 1
    print(f"fleece-stress: {i} rounds, no failure (seed {seed})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

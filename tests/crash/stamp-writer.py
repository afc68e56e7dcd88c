#!/usr/bin/python3
"""The crash suite's light writer: random 4 KiB O_DIRECT writes, each
block stamped with a magic, a sequence number and the wall-clock time it
was written, so a block that differs from the point in time tells when it
was written.  usage: stamp-writer.py DEVICE WRITES_PER_SECOND
"""
import mmap
import os
import random
import struct
import sys
import time

MAGIC = b"FLSTAMP1"


def main():
    dev, rate = sys.argv[1], float(sys.argv[2])
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    blocks = os.lseek(fd, 0, os.SEEK_END) // 4096
    buf = mmap.mmap(-1, 4096)
    seq = 0
    while True:
        seq += 1
        buf.seek(0)
        buf.write(struct.pack("<8sQd", MAGIC, seq, time.time()) + os.urandom(4064))
        os.pwrite(fd, buf, random.randrange(blocks) * 4096)
        time.sleep(1 / rate)


if __name__ == "__main__":
    main()

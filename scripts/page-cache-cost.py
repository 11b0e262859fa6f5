#!/usr/bin/env python3
"""What writing into a growing page cache costs on this host.

Writes three files of 512 MiB one after the other in 1 MiB appends, keeping
them (as a node keeps its log and history), then deletes them; once with
the pages left cached, once asking the kernel to drop the pages 8 MiB to
16 MiB behind each append (as paymesh's segment files do). Prints the
system CPU time of each file. Run it on the file system a node's data
lives on: `scripts/page-cache-cost.py [DIR]` (default: target/).
"""
import os
import resource
import sys
import time

MIB = 1 << 20
FILE_BYTES = 512 * MIB
APPEND_BYTES = MIB
TAIL_BYTES = 8 * MIB
SWEEP_BYTES = 8 * MIB


def write(path, drop):
    block = os.urandom(APPEND_BYTES)
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    at = 0
    while at < FILE_BYTES:
        os.pwrite(fd, block, at)
        at += APPEND_BYTES
        if drop:
            end = max(0, at - TAIL_BYTES)
            start = max(0, end - SWEEP_BYTES)
            if end > start:
                os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
    spent = resource.getrusage(resource.RUSAGE_SELF).ru_stime - before
    os.fsync(fd)
    os.close(fd)
    return spent


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "target"
    os.makedirs(directory, exist_ok=True)
    for drop in (False, True, False, True):
        paths = [os.path.join(directory, f"page-cache-cost-{n}.dat") for n in range(3)]
        try:
            spent = [write(path, drop) for path in paths]
        finally:
            for path in paths:
                if os.path.exists(path):
                    os.unlink(path)
        label = "pages behind dropped" if drop else "pages left cached  "
        print(f"{label}: system CPU per 512 MiB file, in turn: " + ", ".join(f"{s:.2f} s" for s in spent))
        # Let freed pages settle before the next round.
        time.sleep(3)


if __name__ == "__main__":
    main()

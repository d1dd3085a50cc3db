#!/usr/bin/env python3
"""What one durable instance costs on a disk, three ways, for N data sets of SIZE bytes in DIR:
a new file written, fsynced, renamed and its directory fsynced (the node's FileStore before it
wrote in place); the same bytes written into a preallocated, already-written journal file and
fdatasynced (the cheapest durable write a journal could do per instance); and a new file without
any sync (storescp). Then the wait left to the node's commit once a file has been written as it
arrives (write-back started every 256 KiB, directory fsynced): two syncs with the magic between
them (before 132b398), and the sealed head written and one fdatasync (now); medians.

    python3 scripts/fsync-floor.py [DIR] [--count 300] [--size 537600] [--rounds 3]
"""
import argparse
import ctypes
import os
import statistics
import tempfile
import time

LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
SYNC_FILE_RANGE_WRITE = 2
STEP = 256 * 1024


def new_files(d, data, n):
    dfd = os.open(d, os.O_RDONLY)
    t = time.perf_counter()
    for i in range(n):
        tmp, final = f"{d}/f{i}.tmp", f"{d}/f{i}.dcm"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, final)
        os.fsync(dfd)
    elapsed = time.perf_counter() - t
    for i in range(n):
        os.unlink(f"{d}/f{i}.dcm")
    os.close(dfd)
    return elapsed / n


def journal(d, data, n):
    path = f"{d}/journal"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.posix_fallocate(fd, 0, n * len(data))
    zeros = bytes(len(data))
    for i in range(n):  # written once, so later writes change no extent metadata
        os.pwrite(fd, zeros, i * len(data))
    os.fsync(fd)
    t = time.perf_counter()
    for i in range(n):
        os.pwrite(fd, data, i * len(data))
        os.fdatasync(fd)
    elapsed = time.perf_counter() - t
    os.close(fd)
    os.unlink(path)
    return elapsed / n


def unsynced(d, data, n):
    t = time.perf_counter()
    for i in range(n):
        fd = os.open(f"{d}/f{i}.dcm", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.close(fd)
    elapsed = time.perf_counter() - t
    for i in range(n):
        os.unlink(f"{d}/f{i}.dcm")
    return elapsed / n


def commit_wait(d, data, n, sealed):
    """Median seconds of the node's commit, after the file was written as it arrived."""
    waits = []
    for i in range(n):
        fd = os.open(f"{d}/c{i}.dcm", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, bytes(132))
        for off in range(0, len(data), STEP):
            os.write(fd, data[off:off + STEP])
            LIBC.sync_file_range(fd, ctypes.c_int64(132 + off),
                                 ctypes.c_int64(min(STEP, len(data) - off)), SYNC_FILE_RANGE_WRITE)
        dfd = os.open(d, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
        t = time.perf_counter()
        if sealed:
            os.pwrite(fd, b"S" * 128 + b"DICM", 0)
            os.fdatasync(fd)
        else:
            os.fdatasync(fd)
            os.pwrite(fd, b"DICM", 128)
            os.fsync(fd)
        waits.append(time.perf_counter() - t)
        os.close(fd)
    for i in range(n):
        os.unlink(f"{d}/c{i}.dcm")
    return statistics.median(waits)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", default=None)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--size", type=int, default=525 * 1024)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    data = os.urandom(a.size)
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        for r in range(a.rounds):
            ms = [f(d, data, a.count) * 1e3 for f in (new_files, journal, unsynced)]
            print(f"round {r + 1}: new file + fsync + rename + directory fsync {ms[0]:.3f} ms, "
                  f"preallocated journal + fdatasync {ms[1]:.3f} ms, no sync {ms[2]:.3f} ms "
                  "per instance", flush=True)
            two, one = (commit_wait(d, data, a.count, sealed) * 1e3 for sealed in (False, True))
            print(f"round {r + 1}: the node's commit after writing as the data set arrives: "
                  f"two syncs {two:.3f} ms, sealed head + one fdatasync {one:.3f} ms", flush=True)


if __name__ == "__main__":
    main()

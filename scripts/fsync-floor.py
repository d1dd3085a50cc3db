#!/usr/bin/env python3
"""What one durable instance costs on a disk, three ways, for N data sets of SIZE bytes in DIR:
a new file written, fsynced, renamed and its directory fsynced (the node's FileStore); the same
bytes written into a preallocated, already-written journal file and fdatasynced (the cheapest
durable write a journal could do per instance); and a new file without any sync (storescp).

    python3 scripts/fsync-floor.py [DIR] [--count 300] [--size 537600] [--rounds 3]
"""
import argparse
import os
import tempfile
import time


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


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Peak resident memory of `jnsc volume` on a series, in its load phase and in all.

Usage: python3 scripts/volume-memory.py JNSC_BINARY SERIES_DIR

Samples the process's VmRSS every 5 ms; the load phase is the first `load` milliseconds that
`jnsc volume` reports (issue 19: the load's peak at most 1.2x the volume plus one slice).
"""
import re
import subprocess
import sys
import time

binary, series = sys.argv[1], sys.argv[2]
started = time.time()
process = subprocess.Popen([binary, "volume", series], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
samples = []
while process.poll() is None:
    try:
        with open(f"/proc/{process.pid}/status") as status:
            rss = re.search(r"VmRSS:\s+(\d+)", status.read())
        if rss:
            samples.append((time.time() - started, int(rss.group(1)) / 1024))
    except OSError:
        pass
    time.sleep(0.005)
out = process.stdout.read()
if process.returncode != 0 or not samples:
    sys.exit(f"jnsc volume failed: {out}")
load_s = float(re.search(r"load (\d+) ms", out).group(1)) / 1000
size = re.search(r"(\d+) slices of (\d+)x(\d+)", out)
slices, rows, columns = (int(v) for v in size.groups())
volume_mib = slices * rows * columns * 4 / 2**20
first = samples[0][0]
in_load = max(r for t, r in samples if t - first <= load_s + 0.05)
print(f"{slices} slices of {rows}x{columns}: volume {volume_mib:.0f} MiB (f32); "
      f"peak RSS in the load ({load_s:.2f} s) {in_load:.0f} MiB = {in_load / volume_mib:.2f}x; "
      f"whole run {max(r for _, r in samples):.0f} MiB")

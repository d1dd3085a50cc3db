#!/usr/bin/env python3
"""The operating point of a model on an `eval studies` folder: the lowest p(nodule) threshold at
which at most MAX false positives per scan are reported (a finding is a hit when it lies within a
reference nodule's radius, as in LUNA16), and what given thresholds report.

    python3 scripts/operating-point.py EVAL_DIR [--max-fp 1.0] [THRESHOLD ...]

Reads EVAL_DIR/reports/*.json (one per study, written by `jnsc eval studies`), seriesuids.csv
and annotations.csv (the reference standard).
"""
import argparse
import glob
import json
import os


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("thresholds", nargs="*", type=float)
    ap.add_argument("--max-fp", type=float, default=1.0)
    a = ap.parse_args()
    reports = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(a.dir, "reports", "*.json")))]
    series = [l.strip() for l in open(os.path.join(a.dir, "seriesuids.csv")) if l.strip()]
    if len(reports) != len(series):
        raise SystemExit(f"{len(reports)} reports but {len(series)} series in {a.dir}")
    nodules = []
    for line in list(open(os.path.join(a.dir, "annotations.csv")))[1:]:
        uid, x, y, z, d = line.strip().split(",")
        nodules.append((uid, (float(x), float(y), float(z)), float(d)))

    def hits(uid, c):
        return [i for i, (s, n, d) in enumerate(nodules)
                if s == uid and sum((c[k] - n[k]) ** 2 for k in range(3)) <= (d / 2) ** 2]

    marks = sorted(((f["p_nodule"], hits(uid, f["center_mm"]))
                    for uid, r in zip(series, reports) for f in r["findings"]),
                   key=lambda m: -m[0])
    fp = 0
    for p, h in marks:
        if not h:
            fp += 1
            if fp / len(series) > a.max_fp:
                print(f"lowest threshold with at most {a.max_fp} false positives per scan: "
                      f"just above {p:.4f}")
                break
    else:
        print(f"every finding can be reported with at most {a.max_fp} false positives per scan")
    big = sum(1 for _, _, d in nodules if d >= 8)
    for t in a.thresholds:
        reported = [m for m in marks if m[0] >= t]
        found = {i for _, h in reported for i in h}
        false = sum(1 for _, h in reported if not h)
        print(f"at {t}: {false / len(series):.2f} false positives per scan, "
              f"{len(found)}/{len(nodules)} nodules reported, "
              f"{sum(1 for i in found if nodules[i][2] >= 8)}/{big} of 8 mm or more")


if __name__ == "__main__":
    main()

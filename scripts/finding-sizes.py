#!/usr/bin/env python3
"""How the sizes the node reports compare with the truth, on `eval studies` folders: for each
reference nodule hit by a finding (a finding centred within its radius, the most probable one
when several are), the finding's diameter (equivalent sphere of its segmented region) against the
reference diameter (phantoms: the equivalent sphere of the truth mask; inserted and real nodules:
the readers' diameter). Prints, per folder, the median ratio, its range and the mean absolute
error in mm, and how many of those findings measure under 3 mm; with several folders, also
all of them pooled. With --min-p-nodule T, only findings reported at T (p(nodule) >= T; the node's
operating point is 0.47) are paired: the sizes a radiologist reads.

    python3 scripts/finding-sizes.py [--min-p-nodule T] EVAL_DIR [EVAL_DIR ...]

Reads EVAL_DIR/annotations.csv and EVAL_DIR/reports/*.json.
"""
import argparse
import csv
import glob
import json
import math
import os
import statistics


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--min-p-nodule", type=float, default=0.0)
    a = ap.parse_args()
    pooled = []
    for folder in a.folders:
        findings = {}
        for path in glob.glob(os.path.join(folder, "reports", "*.json")):
            report = json.load(open(path))
            findings[report["series_uid"]] = report["findings"]
        pairs = []  # (reported, true) diameters
        for nodule in csv.DictReader(open(os.path.join(folder, "annotations.csv"))):
            centre = [float(nodule[k]) for k in ("coordX", "coordY", "coordZ")]
            diameter = float(nodule["diameter_mm"])
            hits = [f for f in findings.get(nodule["seriesuid"], [])
                    if math.dist(f["center_mm"], centre) <= diameter / 2
                    and f["p_nodule"] >= a.min_p_nodule]
            if not hits:
                continue
            best = max(hits, key=lambda f: f["p_nodule"])
            pairs.append((best["diameter_mm"], diameter))
        summary(folder, pairs)
        pooled += pairs
    if len(a.folders) > 1:
        summary("pooled", pooled)


def summary(name, pairs):
    if not pairs:
        print(f"{name}: no nodule hit")
        return
    ratios = [r / t for r, t in pairs]
    errors = [abs(r - t) for r, t in pairs]
    under_3 = sum(1 for r, _ in pairs if r < 3.0)
    print(f"{name}: {len(ratios)} nodules hit; reported / true diameter: median "
          f"{statistics.median(ratios):.3f} (range {min(ratios):.2f}-{max(ratios):.2f}); "
          f"mean absolute error {statistics.mean(errors):.1f} mm; {under_3} measure under 3 mm")


if __name__ == "__main__":
    main()

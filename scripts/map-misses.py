#!/usr/bin/env python3
"""Which reference nodules get no finding, and does the location map see them?

For each study folder (with annotations.csv, and truth.json for synthetic ones), runs
`jnsc analyze --map` (or reads its outputs from --maps when they are there), then prints, per
reference nodule: its diameter, its kind (location and type from truth.json; "real" otherwise),
whether any finding lies strictly within its radius (the LUNA16 hit rule), and the highest
location-map value in its box. Last, the misses counted by location.

A miss whose map maximum is below the findings' threshold (0.4) is one the network does not
mark: no post-processing can find it. A miss whose map is high belongs to a region whose centre
lies elsewhere (a nodule fused with vessels).

    python3 scripts/map-misses.py target/validation/study-* --maps target/maps [--model FILE]
        [--min-p-nodule T]
"""
import argparse
import collections
import json
import os
import subprocess
import sys

import numpy as np

THRESHOLD = 0.4


def read_metaimage(path):
    header = dict(
        line.split(" = ", 1) for line in open(path).read().strip().splitlines()
    )
    size = [int(v) for v in header["DimSize"].split()]
    offset = np.array([float(v) for v in header["Offset"].split()])
    spacing = np.array([float(v) for v in header["ElementSpacing"].split()])
    raw = os.path.join(os.path.dirname(path), header["ElementDataFile"])
    data = np.fromfile(raw, dtype=np.float32).reshape(size[::-1])  # [k, j, i]
    return data, offset, spacing


def analyse(study, maps, jnsc, model, min_p_nodule):
    name = os.path.basename(os.path.normpath(study))
    json_path = os.path.join(maps, name + ".json")
    map_path = os.path.join(maps, name + ".mhd")
    if not (os.path.exists(json_path) and os.path.exists(map_path)):
        command = [jnsc, "analyze", os.path.join(study, "dicom"), "--json", json_path,
                   "--map", map_path]
        if model:
            command += ["--model", model]
        if min_p_nodule is not None:
            command += ["--min-p-nodule", str(min_p_nodule)]
        subprocess.run(command, check=True)
    return name, json.load(open(json_path)), read_metaimage(map_path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("studies", nargs="+")
    parser.add_argument("--maps", required=True, help="folder for the analyses and maps")
    parser.add_argument("--model", help="model file (default: the shipped one)")
    parser.add_argument("--min-p-nodule", type=float,
                        help="reporting threshold, for a model file without an operating point")
    parser.add_argument("--jnsc", default="target/release/jnsc")
    args = parser.parse_args()
    os.makedirs(args.maps, exist_ok=True)
    missed = collections.Counter()
    total = collections.Counter()
    for study in args.studies:
        name, report, (location_map, offset, spacing) = analyse(study, args.maps, args.jnsc, args.model,
                                                              args.min_p_nodule)
        truth = []
        truth_path = os.path.join(study, "truth.json")
        if os.path.exists(truth_path):
            truth = [(np.array(n["center_mm"]), f"{n['location']} {n['type']}")
                     for n in json.load(open(truth_path))["nodules"]]
        centres = np.array([f["center_mm"] for f in report["findings"]]).reshape(-1, 3)
        for row in open(os.path.join(study, "annotations.csv")).read().strip().splitlines()[1:]:
            fields = row.split(",")
            centre = np.array([float(v) for v in fields[1:4]])
            diameter = float(fields[4])
            # annotations.csv rounds to 0.001 mm; a nodule not in truth.json is a real one.
            kind = next((k for c, k in truth if np.abs(c - centre).max() < 0.01), "real")
            hit = bool(len(centres)) and bool(
                (((centres - centre) ** 2).sum(axis=1) < (diameter / 2) ** 2).any())
            lo = np.floor((centre - diameter / 2 - offset) / spacing).astype(int)
            hi = np.ceil((centre + diameter / 2 - offset) / spacing).astype(int) + 1
            lo = np.maximum(lo, 0)
            box = location_map[lo[2]:max(hi[2], lo[2]), lo[1]:max(hi[1], lo[1]), lo[0]:max(hi[0], lo[0])]
            peak = float(box.max()) if box.size else float("nan")
            location = kind.split()[0]
            total[location] += 1
            missed[location] += not hit
            print(f"{name}  {diameter:5.1f} mm  {kind:28s}  {'found' if hit else 'MISSED':6s}  "
                  f"map max {peak:.2f}")
    print("missed by location: " + ", ".join(
        f"{k} {missed[k]} of {total[k]}" for k in sorted(total)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

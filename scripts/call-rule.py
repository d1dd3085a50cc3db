#!/usr/bin/env python3
"""The benign/malignant call of the reported findings of `eval studies` folders, under node
0.1.0's rule (R0: p(cancer | nodule) >= T) and rule 12's (R1: p(nodule) x p(cancer | nodule) >= T,
p(nodule) uncalibrated), at an operating point. Rules log: docs/model-rules/2026-12-04-session-29.md.

    python3 scripts/call-rule.py EVAL_DIR [EVAL_DIR ...] [--min-p-nodule 0.465] [--call 0.285]

A reported finding (p(nodule) >= the operating point) that lies within a reference nodule's
radius (LUNA16's hit rule) takes that nodule's median malignancy rating (> 3 malignant, < 3
benign, 3 left out; from metrics.json's operating_point.nodules); one within an excluded
annotation is left out; one hitting nothing is a false positive. Prints, per rule: false
positives called malignant, balanced accuracy of the call over the reported true nodules, and
over all reported findings with false positives counted as not malignant; then the fraction of
reported findings that are true by p(nodule) bin.
"""
import argparse
import glob
import json
import os


def load(folder):
    """(p_nodule, p_cancer, label) of every finding; label 'fp', 'benign', 'malignant', or None."""
    reports = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(folder, "reports", "*.json")))]
    series = [l.strip() for l in open(os.path.join(folder, "seriesuids.csv")) if l.strip()]
    if len(reports) != len(series):
        raise SystemExit(f"{len(reports)} reports but {len(series)} series in {folder}")
    metrics = json.load(open(os.path.join(folder, "metrics.json")))
    nodules = [(n["series_uid"], n["center_mm"], n["diameter_mm"], n.get("malignancy_median"))
               for n in metrics["operating_point"]["nodules"]]
    excluded = []
    for line in list(open(os.path.join(folder, "annotations_excluded.csv")))[1:]:
        uid, x, y, z, d = line.strip().split(",")
        excluded.append((uid, (float(x), float(y), float(z)), float(d)))

    def within(uid, c, refs):
        return [r for r in refs
                if r[0] == uid and sum((c[k] - r[1][k]) ** 2 for k in range(3)) <= (r[2] / 2) ** 2]

    out = []
    for uid, r in zip(series, reports):
        if r["series_uid"] != uid:
            raise SystemExit(f"report order differs from seriesuids.csv in {folder}")
        for f in r["findings"]:
            if f.get("p_cancer") is None:
                continue
            hit = within(uid, f["center_mm"], nodules)
            if hit:
                m = hit[0][3]
                label = None if m is None or m == 3 else ("malignant" if m > 3 else "benign")
            elif within(uid, f["center_mm"], excluded):
                label = None
            else:
                label = "fp"
            # Reports of node 0.2.0 and later carry p_cancer_finding and call on it (R1), with
            # p(nodule) calibrated where the model carries a calibration (rule 14).
            stored_rule = "R1" if "p_cancer_finding" in f else "R0"
            p_nodule_as_called = f.get("p_nodule_calibrated") or f["p_nodule"]
            out.append((f["p_nodule"], f["p_cancer"],
                        (stored_rule, f["malignant"], p_nodule_as_called), label))
    return out, len(series)


def balanced_accuracy(pairs):
    """pairs: (called malignant, truly malignant)."""
    pos = [c for c, t in pairs if t]
    neg = [c for c, t in pairs if not t]
    if not pos or not neg:
        return float("nan")
    return 0.5 * (sum(pos) / len(pos) + sum(not c for c in neg) / len(neg))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--min-p-nodule", type=float, default=0.465)
    ap.add_argument("--call", type=float, default=0.285)
    a = ap.parse_args()
    findings, scans = [], 0
    for d in a.dirs:
        f, n = load(d)
        findings += f
        scans += n
    reported = [f for f in findings if f[0] >= a.min_p_nodule]
    for p, c, (rule, stored, p_as_called), _ in reported:
        expected = (p_as_called * c if rule == "R1" else c) >= a.call
        if stored != expected:
            raise SystemExit(f"a stored call ({stored}, p(nodule) {p}, p(cancer) {c}) is not "
                             f"{rule}'s at {a.call}")
    fps = [f for f in reported if f[3] == "fp"]
    true = [f for f in reported if f[3] in ("benign", "malignant")]
    print(f"{scans} scans; reported at p(nodule) >= {a.min_p_nodule}: {len(reported)} findings, "
          f"{len(fps)} false positives, {len(true)} on nodules rated benign or malignant "
          f"({sum(f[3] == 'malignant' for f in true)} malignant), "
          f"{len(reported) - len(fps) - len(true)} left out (rated 3 or excluded)")
    rules = {
        "R0 p(cancer|nodule)": lambda p, c: c >= a.call,
        "R1 p(nodule) x p(cancer|nodule)": lambda p, c: p * c >= a.call,
    }
    for name, call in rules.items():
        fp_malignant = sum(call(p, c) for p, c, _, _ in fps)
        on_true = [(call(p, c), l == "malignant") for p, c, _, l in true]
        on_all = on_true + [(call(p, c), False) for p, c, _, _ in fps]
        sens = sum(c for c, t in on_true if t)
        print(f"{name}: false positives called malignant {fp_malignant}/{len(fps)}; "
              f"true nodules: malignant called malignant {sens}/{sum(t for _, t in on_true)}, "
              f"benign called benign {sum(not c for c, t in on_true if not t)}/"
              f"{sum(not t for _, t in on_true)}, balanced accuracy "
              f"{balanced_accuracy(on_true):.3f}; all reported (false positives as not "
              f"malignant): balanced accuracy {balanced_accuracy(on_all):.3f}")
    print("fraction of reported findings that are true, by p(nodule):")
    edges = [a.min_p_nodule, 0.6, 0.8, 0.9, 0.95, 0.99, 1.0001]
    for lo, hi in zip(edges, edges[1:]):
        hit = [f for f in reported if lo <= f[0] < hi]
        true_n = sum(f[3] != "fp" for f in hit)
        if hit:
            print(f"  [{lo:.3f}, {min(hi, 1):.3f}): {true_n}/{len(hit)} true "
                  f"(mean p(nodule) {sum(f[0] for f in hit) / len(hit):.3f})")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Compares the findings of two `jnsc analyze` reports (JSON) of the same series: a reference
(e.g. f32, or the build before a change) and a candidate (e.g. --precision f16, or the build
after). Findings are paired greedily, nearest centres first; prints the largest centre distance
and probability differences of the pairs, the findings either side has unpaired, and whether
both report the same findings at the operating point.

    python3 scripts/compare-findings.py REF.json NEW.json [--threshold 0.47]
        [--max-center-mm 0.5] [--max-dp 1e-3] [--min-p 0]

Only findings whose p(nodule) reaches --min-p in either report are compared. Exit status 1 when
a pair is further apart or differs more than the limits, when a finding is unpaired, or when the
reported sets differ; 0 otherwise.
"""
import argparse
import json
import math
import sys


def load(path):
    with open(path) as f:
        return json.load(f)["findings"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference")
    parser.add_argument("candidate")
    parser.add_argument("--threshold", type=float, default=0.47,
                        help="operating point: findings with p(nodule) at least this are reported")
    parser.add_argument("--max-center-mm", type=float, default=0.5)
    parser.add_argument("--max-dp", type=float, default=1e-3,
                        help="largest difference of p(nodule), p(location) and p(cancer) of a pair")
    parser.add_argument("--min-p", type=float, default=0.0,
                        help="compare only findings with p(nodule) at least this in either report")
    args = parser.parse_args()
    ref_all, new_all = load(args.reference), load(args.candidate)
    # Greedy pairing over all findings of both (one just under --min-p still pairs), nearest
    # first; then only what reaches --min-p on either side of a pair, or alone, is compared.
    distances = sorted(
        (math.dist(a["center_mm"], b["center_mm"]), i, j)
        for i, a in enumerate(ref_all)
        for j, b in enumerate(new_all)
    )
    paired, used_ref, used_new = [], set(), set()
    for d, i, j in distances:
        if d > 5.0 or i in used_ref or j in used_new:
            continue
        used_ref.add(i)
        used_new.add(j)
        paired.append((d, ref_all[i], new_all[j]))
    counts = lambda fs: sum(f["p_nodule"] >= args.min_p for f in fs)
    paired = [(d, a, b) for d, a, b in paired
              if max(a["p_nodule"], b["p_nodule"]) >= args.min_p]
    unpaired = lambda fs, used: [f for i, f in enumerate(fs)
                                 if i not in used and f["p_nodule"] >= args.min_p]
    unpaired_ref, unpaired_new = unpaired(ref_all, used_ref), unpaired(new_all, used_new)

    def dp(key):
        values = [abs(a[key] - b[key]) for _, a, b in paired
                  if a.get(key) is not None and b.get(key) is not None]
        return max(values, default=0.0)

    worst_d = max((d for d, _, _ in paired), default=0.0)
    diffs = {key: dp(key) for key in ("p_nodule", "p_location", "p_cancer")}
    t = args.threshold
    ref_reported = sum(f["p_nodule"] >= t for f in ref_all)
    new_reported = sum(f["p_nodule"] >= t for f in new_all)
    same_reported = ref_reported == new_reported and all(
        (a["p_nodule"] >= t) == (b["p_nodule"] >= t) for _, a, b in paired)
    print(f"findings (p(nodule) >= {args.min_p}): reference {counts(ref_all)}, "
          f"candidate {counts(new_all)}, "
          f"paired {len(paired)}")
    print(f"largest centre distance of a pair: {worst_d:.3f} mm (limit {args.max_center_mm})")
    for key, value in diffs.items():
        print(f"largest |difference| of {key}: {value:.2e} (limit {args.max_dp:g})")
    for name, fs in (("reference", unpaired_ref), ("candidate", unpaired_new)):
        for f in fs:
            print(f"unpaired in the {name}: p(nodule) {f['p_nodule']:.4f} at "
                  f"{[round(c, 1) for c in f['center_mm']]}")
    print(f"reported at {t}: reference {ref_reported}, candidate {new_reported}, "
          f"same findings: {'yes' if same_reported else 'no'}")
    ok = (worst_d <= args.max_center_mm and all(v <= args.max_dp for v in diffs.values())
          and not unpaired_ref and not unpaired_new and same_reported)
    print("within the limits" if ok else "NOT within the limits")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

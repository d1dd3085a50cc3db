#!/usr/bin/env python3
"""Rule 14 (docs/model-rules/2026-12-04-session-29.md): would a Platt scaling of p(nodule),
fitted on the reported findings of one `eval studies` folder, calibrate those of others?

    python3 scripts/nodule-calibration.py --fit DIR [DIR ...] --check DIR [DIR ...]
        [--min-p-nodule 0.465] [--call 0.285]

A reported finding is labelled true when it hits a reference nodule (scripts/call-rule.py's
rule). Prints a, b, then per check folder the expected calibration error (5 equal-count bins)
and Brier score before and after, and rule 12's figures with the calibrated p(nodule) in the
probability of cancer.
"""
import argparse
import importlib.util
import math
import os

spec = importlib.util.spec_from_file_location(
    "call_rule", os.path.join(os.path.dirname(os.path.abspath(__file__)), "call-rule.py"))
call_rule = importlib.util.module_from_spec(spec)
spec.loader.exec_module(call_rule)


def logit(p):
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def fit_platt(samples):
    """a, b maximising the likelihood of (p, true) under sigmoid(a logit p + b): Newton steps."""
    a, b = 1.0, 0.0
    for _ in range(100):
        ga = gb = haa = hab = hbb = 0.0
        for p, t in samples:
            x = logit(p)
            q = sigmoid(a * x + b)
            r = q - (1.0 if t else 0.0)
            w = q * (1 - q)
            ga += r * x
            gb += r
            haa += w * x * x
            hab += w * x
            hbb += w
        det = haa * hbb - hab * hab
        if det <= 0:
            break
        da = (hbb * ga - hab * gb) / det
        db = (haa * gb - hab * ga) / det
        a, b = a - da, b - db
        if abs(da) + abs(db) < 1e-10:
            break
    return a, b


def ece(samples, bins=5):
    s = sorted(samples)
    n = len(s)
    total = 0.0
    for i in range(bins):
        part = s[i * n // bins:(i + 1) * n // bins]
        if part:
            total += len(part) / n * abs(sum(p for p, _ in part) / len(part)
                                         - sum(t for _, t in part) / len(part))
    return total


def brier(samples):
    return sum((p - t) ** 2 for p, t in samples) / len(samples)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", nargs="+", required=True)
    ap.add_argument("--check", nargs="+", required=True)
    ap.add_argument("--min-p-nodule", type=float, default=0.465)
    ap.add_argument("--call", type=float, default=0.285)
    a = ap.parse_args()

    def reported(folder):
        findings, _ = call_rule.load(folder)
        return [f for f in findings if f[0] >= a.min_p_nodule]

    fit = [(p, l != "fp") for d in a.fit for p, _, _, l in reported(d)]
    pa, pb = fit_platt(fit)
    cal = lambda p: sigmoid(pa * logit(p) + pb)
    print(f"Platt fitted on {len(fit)} reported findings ({sum(t for _, t in fit)} true): "
          f"a = {pa:.3f}, b = {pb:.3f}; p(nodule) 0.465 -> {cal(0.465):.3f}, 0.6 -> "
          f"{cal(0.6):.3f}, 0.8 -> {cal(0.8):.3f}, 0.95 -> {cal(0.95):.3f}, 0.99 -> {cal(0.99):.3f}")
    for d in a.check:
        rows = reported(d)
        before = [(p, l != "fp") for p, _, _, l in rows]
        after = [(cal(p), t) for p, t in before]
        print(f"{d}: {len(rows)} reported ({sum(t for _, t in before)} true); ECE "
              f"{ece(before):.3f} -> {ece(after):.3f}; Brier {brier(before):.4f} -> "
              f"{brier(after):.4f}")
        fps = [r for r in rows if r[3] == "fp"]
        true = [r for r in rows if r[3] in ("benign", "malignant")]
        for name, pn in [("rule 12", lambda p: p), ("calibrated", cal)]:
            call = lambda p, c: pn(p) * c >= a.call
            on_true = [(call(p, c), l == "malignant") for p, c, _, l in true]
            on_all = on_true + [(call(p, c), False) for p, c, _, _ in fps]
            print(f"  {name}: false positives called malignant "
                  f"{sum(call(p, c) for p, c, _, _ in fps)}/{len(fps)}; true nodules' balanced "
                  f"accuracy {call_rule.balanced_accuracy(on_true):.3f}; all reported "
                  f"{call_rule.balanced_accuracy(on_all):.3f}")


if __name__ == "__main__":
    main()

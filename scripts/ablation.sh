#!/usr/bin/env bash
# The paper's ablation on synthetic data with marginal labels: pseudo vs soft vs hard labels for
# marginal nodules (malignancy balanced accuracy) and joint vs segmentation-only training
# (detection sensitivity at 0.125 and 1 FP/scan), each trained with CONFIG (default: the shipped
# model's models/train.toml) and evaluated on the first HELD_OUT_COUNT held-out studies (default
# 15). Prints one markdown table. Runs and evaluations go to target/ablation/<config name>/;
# finished ones are reused and interrupted ones resume, so the ablation can be run in parts.
# Each variant's classifier is also measured alone on every reference nodule of NODULE_SCANS
# held-out synthetic scans (default 150; `jnsc eval nodules`), the same nodules for every variant,
# so the label modes are compared apart from what each detected.
# About 45 minutes per variant on 2 cores. With the default configuration the pseudo variant is
# stage 0's own run (same configuration and seed; training is deterministic): copy
# models/jnsc-synthetic.safetensors to target/ablation/train/pseudo/model.safetensors to skip it.
#   bash scripts/ablation.sh [CONFIG] [HELD_OUT_COUNT] [NODULE_SCANS]
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-models/train.toml}"
count="${2:-15}"
nodule_scans="${3:-150}"
bash scripts/heldout-studies.sh "$count" target/heldout >/dev/null
out="target/ablation/$(basename "$config" .toml)"
held="$out/heldout"
rm -rf "$held" && mkdir -p "$held"
for i in $(seq 1 "$count"); do ln -s "$PWD/target/heldout/study-$((1000 + i))" "$held/"; done
bin=target/release/jnsc
for variant in pseudo soft hard segmentation-only; do
  dir="$out/$variant"
  case "$variant" in
    segmentation-only) args=(--segmentation-only) ;;
    *) args=(--labels "$variant") ;;
  esac
  [ -f "$dir/model.safetensors" ] ||
    "$bin" train --dir "$dir" --config "$config" "${args[@]}" --export "$dir/model.safetensors"
  [ -f "$dir/eval/metrics.json" ] ||
    "$bin" eval studies "$held" --model "$dir/model.safetensors" --out "$dir/eval" >/dev/null
  [ -f "$dir/eval-nodules/metrics.json" ] ||
    "$bin" eval nodules --model "$dir/model.safetensors" --scans "$nodule_scans" \
      --out "$dir/eval-nodules" >/dev/null
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
# Balanced accuracy with a normal-approximation 95% interval from the class counts.
def balanced(c):
    if c["balanced_accuracy"] is None:
        return "n/a"
    se, sp, nm, nb = c["sensitivity"], c["specificity"], c["malignant"], c["benign"]
    half = 1.96 * ((se * (1 - se) / nm + sp * (1 - sp) / nb) ** 0.5) / 2
    return f"{c['balanced_accuracy']:.3f} ± {half:.2f} ({nb}/{nm})"
f = lambda x: "n/a" if x is None else f"{x:.3f}"
print("| variant | CPM | sensitivity @ 0.125 FP/scan | @ 1 FP/scan "
      "| balanced accuracy, detected nodules | reference nodules | marginal reference nodules "
      "| AUC, reference nodules |")
print("|---|---|---|---|---|---|---|---|")
for v in ["pseudo", "soft", "hard", "segmentation-only"]:
    m = json.load(open(f"{out}/{v}/eval/metrics.json"))
    n = json.load(open(f"{out}/{v}/eval-nodules/metrics.json"))
    s = dict((round(r, 3), x) for r, x in m["sensitivity_at_fps"])
    print(f"| {v} | {m['cpm']:.3f} | {s[0.125]:.3f} | {s[1.0]:.3f} "
          f"| {balanced(m['classification'])} | {balanced(n['classification'])} "
          f"| {balanced(n['marginal_classification'])} | {f(n['classification']['auc'])} |")
print()
print("Balanced accuracy: value ± half-width of a normal-approximation 95% interval "
      "(benign/malignant nodules, M = 3 excluded).")
PY

#!/usr/bin/env bash
# The paper's ablation on synthetic data with marginal labels: pseudo vs soft vs hard labels for
# marginal nodules (malignancy balanced accuracy) and joint vs segmentation-only training
# (detection sensitivity at 0.125 and 1 FP/scan), each trained with CONFIG (default: the shipped
# model's models/train.toml) and evaluated on the first HELD_OUT_COUNT held-out studies (default
# 15). Prints one markdown table. Runs and evaluations go to target/ablation/<config name>/;
# finished ones are reused and interrupted ones resume, so the ablation can be run in parts.
# About 45 minutes per variant on 2 cores. With the default configuration the pseudo variant is
# the shipped model's own run (same configuration and seed; training is deterministic): copy
# models/jnsc.safetensors to target/ablation/train/pseudo/model.safetensors to skip it.
#   bash scripts/ablation.sh [CONFIG] [HELD_OUT_COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-models/train.toml}"
count="${2:-15}"
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
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
print("| variant | CPM | sensitivity @ 0.125 FP/scan | @ 1 FP/scan | balanced accuracy | AUC |")
print("|---|---|---|---|---|---|")
for v in ["pseudo", "soft", "hard", "segmentation-only"]:
    m = json.load(open(f"{out}/{v}/eval/metrics.json"))
    s = dict((round(r, 3), x) for r, x in m["sensitivity_at_fps"])
    c = m["classification"]
    f = lambda x: "n/a" if x is None else f"{x:.3f}"
    print(f"| {v} | {m['cpm']:.3f} | {s[0.125]:.3f} | {s[1.0]:.3f} | {f(c['balanced_accuracy'])} | {f(c['auc'])} |")
PY

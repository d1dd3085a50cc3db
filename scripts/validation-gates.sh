#!/usr/bin/env bash
# The figures of a detector stage's validation gates (rules 15-16 of docs/model-rules/): the
# candidate is the element-wise mean of BASE (default target/mean-0.6.0.safetensors, 0.6.0's
# detector) and STAGE, combined with 0.3.0's malignancy network (measure fraction 0.8); its
# operating point is chosen by the shipped rule on insertions 2001-2006; then each validation set
# is analysed at it and its CPM (bootstrap 95% interval), what the operating point reports, the
# nodules reported by location and the sizes are printed. Steps already done in OUT are skipped.
#   bash scripts/validation-gates.sh STAGE OUT [BASE]
# The sets, made by their scripts: target/validation (heldout-studies.sh 10 target/validation
# 3001), target/real-insertions (real-insertion-studies.sh), target/ins26
# (real-insertion-studies.sh 24 target/ins26 ../shared/data/real-ct/lidc-idri-0063 2601) and
# target/jv-insertions (... 24 target/jv-insertions ... 2701 --juxta-vascular).
set -euo pipefail
cd "$(dirname "$0")/.."
stage=$1
out=$2
base=${3:-target/mean-0.6.0.safetensors}
jnsc=target/release/jnsc
mkdir -p "$out"
[ -f "$out/mean.safetensors" ] || $jnsc model average --first "$base" --second "$stage" \
  --out "$out/mean.safetensors" --name jnsc-real-backgrounds --version candidate-mean
[ -f "$out/combined.safetensors" ] || $jnsc model combine --detection "$out/mean.safetensors" \
  --malignancy models/jnsc-real-shapes.safetensors --out "$out/combined.safetensors" \
  --name jnsc-real-backgrounds --version candidate --measure-fraction 0.8
# A provisional threshold: the operating point is chosen from every finding of the reports.
[ -f "$out/v3/metrics.json" ] || $jnsc eval studies target/real-insertions \
  --model "$out/combined.safetensors" --out "$out/v3" --min-p-nodule 0.5 > "$out/v3.log" 2>&1
[ -f "$out/model.safetensors" ] || $jnsc eval operating-point "$out/v3" \
  --model "$out/combined.safetensors" --write-model "$out/model.safetensors" \
  --chosen-on "validation insertions 2001-2006 into LIDC-IDRI-0063" | tee "$out/op.txt"
op=$(grep -o ">= [0-9.]*" "$out/op.txt" | head -1 | cut -d" " -f2)
echo "operating point $op"
sets="v1:target/validation v2:target/ins26 v3:target/real-insertions v4:target/jv-insertions"
for s in $sets; do
  [ -f "$out/${s%%:*}/metrics.json" ] || $jnsc eval studies "${s#*:}" \
    --model "$out/model.safetensors" --out "$out/${s%%:*}" > "$out/${s%%:*}.log" 2>&1
done
for s in $sets; do
  n=${s%%:*}
  echo "== $n (${s#*:})"
  $jnsc eval froc --annotations "$out/$n/annotations.csv" \
    --excluded "$out/$n/annotations_excluded.csv" --series "$out/$n/seriesuids.csv" \
    --submission "$out/$n/submission.csv" --bootstrap 1000 | grep -i cpm
  python3 scripts/operating-point.py "$out/$n" "$op" | tail -1
  python3 scripts/reported-by-location.py "$out/$n" "${s#*:}" "$op"
done
echo "== sizes"
python3 scripts/finding-sizes.py --min-p-nodule "$op" "$out/v3" "$out/v1" | tail -3

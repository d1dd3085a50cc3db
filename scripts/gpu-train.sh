#!/usr/bin/env bash
# One call on a lent GPU machine, sized to its time budget (BUDGET_S, default 530 s): the
# binaries of scripts/build-cuda.sh (packed as target/cuda-carry/bins.txz)
#   1. check that CUDA training and the network follow the CPU (the library's CUDA tests);
#   2. time the network on the GPU against PyTorch on the GPU (`bench network`);
#   3. train the `paper` preset on phantoms (models/train-paper-gpu.toml), with `epochs` and the
#      epoch-counted keys scaled to the time the benchmark says is left;
#   4. evaluate it and the shipped model on the same held-out phantoms (seeds 1001..), rendered
#      on the machine's CPUs while the GPU trains, and time `analyze` on one of them.
# Returns under $OUT (or target/gpu-train): logs.tgz (every log, the config used, metrics.csv,
# both evaluations) and the trained model split into <= 15 MiB parts (paper.safetensors.part-*;
# `cat` them back together).
set -uo pipefail
out="${OUT:-target/gpu-train}"
budget="${BUDGET_S:-530}"
work=/tmp/jnsc-gpu
logs=$work/logs
start=$(date +%s)
left() { echo $((budget - ($(date +%s) - start))); }
mkdir -p "$out" "$logs"
# (Python's lzma: the machine may have no xz.)
python3 -c "import tarfile, sys; tarfile.open('target/cuda-carry/bins.txz').extractall(sys.argv[1])" $work
bin=$work
# The CUDA 13 runtime, cuBLAS, cuRAND and NVRTC, wherever a PyTorch or a toolkit put them.
LD_LIBRARY_PATH=$(find /opt /usr -xdev \( -name 'libcublas.so.13' -o -name 'libcublasLt.so.13' \
  -o -name 'libcudart.so.13' -o -name 'libcurand.so.10' -o -name 'libnvrtc.so.13' \) \
  -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH
# The PyTorch peer of the network benchmark is found by the path compiled into the binary.
mkdir -p /work && [ -e /work/main ] || ln -s "$PWD" /work/main
finish() {
  cp $work/run/metrics.csv $work/run/state.json "$logs/" 2>/dev/null
  tar czf "$out/logs.tgz" -C $work logs
  if [ -f $work/paper.safetensors ]; then
    split -b 15M -d $work/paper.safetensors "$out/paper.safetensors.part-"
    sha256sum $work/paper.safetensors | tee "$logs/paper.sha256"
    tar czf "$out/logs.tgz" -C $work logs
  fi
  echo "done at $(($(date +%s) - start)) s"
}
trap finish EXIT
nvidia-smi -L | tee "$logs/gpu.txt"

# Held-out phantoms, on the CPUs, while the GPU works.
(for seed in 1001 1002 1003 1004 1005; do
  "$bin/jnsc" synth --out $work/heldout/study-$seed --seed $seed --nodules 4 >/dev/null &
done; wait) > "$logs/synth.log" 2>&1 &
synth=$!

echo "== 1. CUDA tests ($(left) s left)"
timeout 120 "$bin/jnsc-lib-tests" --test-threads 3 cuda --nocapture >"$logs/tests.log" 2>&1
grep -E "CPU vs CUDA|test result|FAILED|panicked" "$logs/tests.log"

echo "== 2. bench network ($(left) s left)"
timeout 100 "$bin/jnsc" bench network --device cuda --rounds 3 2>&1 | tee "$logs/bench-network.log"
t_fb=$(awk '$1 == "paper" && $2 == "64^3" && $3 == "forward+backward" {print $4}' "$logs/bench-network.log")

echo "== 3. train the paper preset ($(left) s left)"
# An epoch is 48 steps of two 64^3 patches, plus candidates and pseudo-labels (x1.6, a guess);
# keep 150 s for the evaluations and 60 s for preparing the scans.
epochs=$(python3 -c "import sys; t=float(sys.argv[1] or 1); a=$(left)-210; print(max(4, min(60, int(a/(48*2*t*1.6)))))" "${t_fb:-}")
# The scaled copy goes with the logs; the tracked config is left as it is.
python3 - "$epochs" "$logs/train-paper-gpu.toml" <<'EOF'
import re, sys
e, path = int(sys.argv[1]), sys.argv[2]; text = open("models/train-paper-gpu.toml").read()
keys = {"epochs": e, "segmentation_epochs": max(1, round(e * 0.15)),
        "pseudo_warmup_epochs": max(1, round(e * 0.15)), "lr_step_epochs": max(1, round(e * 0.4))}
for k, v in keys.items():
    text = re.sub(rf"(?m)^{k} = .*$", f"{k} = {v}", text)
open(path, "w").write(text)
print("epochs:", keys)
EOF
t_train=$(($(left) - 150)); [ $t_train -lt 30 ] && t_train=30
timeout $t_train "$bin/jnsc" train --device cuda --dir $work/run \
  --config "$logs/train-paper-gpu.toml" --export $work/paper.safetensors \
  --name jnsc-paper-gpu --version 0.3.0 >"$logs/train.log" 2>&1
echo "train exit $?"
tail -c 300 "$logs/train.log"; echo
cat $work/run/metrics.csv 2>/dev/null | tail -4

echo "== 4. evaluate ($(left) s left)"
wait $synth
for model in shipped paper; do
  arg=()
  [ $model = paper ] && { [ -f $work/paper.safetensors ] || continue; arg=(--model $work/paper.safetensors); }
  timeout $(($(left) - 15)) "$bin/jnsc" eval studies $work/heldout "${arg[@]}" --device cuda \
    --out "$logs/eval-$model" >"$logs/eval-$model.log" 2>&1
  echo "$model: exit $?"
  python3 -c "import json,sys; m=json.load(open(sys.argv[1])); o=m['operating_point']
print(sys.argv[2], 'CPM %.3f' % m['cpm'], 'FP/scan at 0.5: %.2f' % o['false_positives_per_scan'],
  '>=8mm reported %d/%d' % (o['nodules_8mm_reported'], o['nodules_8mm']), 'classification', m['classification'])" \
    "$logs/eval-$model/metrics.json" $model
done
[ "$(left)" -gt 30 ] && timeout 25 "$bin/jnsc" analyze $work/heldout/study-1001/dicom --device cuda \
  --json "$logs/analyze-shipped.json" >"$logs/analyze.log" 2>&1 &&
  python3 -c "import json; r=json.load(open('$logs/analyze-shipped.json')); print('analyze (shipped, cuda):', r['timings_ms'])"

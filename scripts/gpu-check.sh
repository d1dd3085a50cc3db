#!/usr/bin/env bash
# Runs on a machine with an NVIDIA GPU the binaries that scripts/build-cuda.sh built elsewhere
# (packed as target/cuda-carry/bins.txz): the library's tests (CPU-vs-CUDA checks of every
# operator and of the network included), the network benchmark against PyTorch on the GPU, and
# `analyze` on a 512x512x300 synthetic chest study with several settings, and with the shipped
# model in f32 and f16 (findings compared by scripts/compare-findings.py). Logs go to $OUT (or
# target/gpu-check). Each step has a time limit so that one slow step cannot hide the others.
set -uo pipefail
out="${OUT:-target/gpu-check}"
mkdir -p /tmp/jnsc-gpu "$out"
# (Python's lzma: the machine may have no xz.)
python3 -c "import tarfile; tarfile.open('target/cuda-carry/bins.txz').extractall('/tmp/jnsc-gpu')"
bin=/tmp/jnsc-gpu
# The CUDA 13 runtime, cuBLAS, cuRAND and NVRTC, wherever a PyTorch or a toolkit put them.
LD_LIBRARY_PATH=$(find /opt /usr -xdev \( -name 'libcublas.so.13' -o -name 'libcublasLt.so.13' \
  -o -name 'libcudart.so.13' -o -name 'libcurand.so.10' -o -name 'libnvrtc.so.13' \) \
  -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH
nvidia-smi -L
# The PyTorch peer of the network benchmark is found by the path compiled into the binary.
mkdir -p /work && [ -e /work/main ] || ln -s "$PWD" /work/main

timeout 180 "$bin/jnsc-lib-tests" --test-threads 4 jnsc:: --nocapture 2>&1 | tee "$out/tests.log" |
  grep -E "CPU vs CUDA|test result|FAILED|panicked"
work=/tmp/jnsc-gpu/work
mkdir -p "$work"
"$bin/jnsc" synth --out "$work/study" --seed 11 --nodules 3 >/dev/null
for preset in paper cpu; do
  "$bin/jnsc" model init --out "$work/$preset.safetensors" --preset "$preset" >/dev/null
done
printf '%-6s %-6s %5s %9s %9s %9s %9s %6s\n' model tiling batch segment classify total peakMiB found
for run in "paper fast 1" "paper fast 4" "paper paper 8" "cpu fast 1" "cpu fast 4"; do
  set -- $run
  json="$out/analyze-$1-$2-$3.json"
  if timeout 150 "$bin/jnsc" analyze "$work/study/dicom" --model "$work/$1.safetensors" \
    --device cuda --tiling "$2" --batch "$3" --json "$json" 2>"$out/analyze-$1-$2-$3.err"; then
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); t=r['timings_ms']
print('%-6s %-6s %5s %8.2fs %8.2fs %8.2fs %9.0f %6d' % (sys.argv[2], sys.argv[3], sys.argv[4],
  t['segmentation']/1e3, t['classification']/1e3, t['total']/1e3, r['peak_memory_mib'], len(r['findings'])))" \
      "$json" "$1" "$2" "$3"
  else
    echo "$1 $2 $3: failed or over 150 s (see $out/analyze-$1-$2-$3.err)"
  fi
done
# The shipped model in each precision (issue 19): its time, and its findings against f32's.
for p in f32 f16; do
  json="$out/analyze-shipped-$p.json"
  if timeout 150 "$bin/jnsc" analyze "$work/study/dicom" --device cuda --precision "$p" \
    --json "$json" 2>"$out/analyze-shipped-$p.err"; then
    python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['timings_ms']
print('shipped %-4s segment %6.2fs classify %6.2fs total %6.2fs' % (sys.argv[2],
  t['segmentation']/1e3, t['classification']/1e3, t['total']/1e3))" "$json" "$p"
  else
    echo "shipped $p: failed or over 150 s (see $out/analyze-shipped-$p.err)"
  fi
done
python3 scripts/compare-findings.py "$out/analyze-shipped-f32.json" "$out/analyze-shipped-f16.json" \
  --max-dp 0.01 | sed "s/^/f16 vs f32: /"
timeout 150 "$bin/jnsc" bench network --device cuda --rounds 5 2>&1 | tee "$out/bench-network.log"

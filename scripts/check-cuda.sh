#!/usr/bin/env bash
# Compile-checks the `cuda` feature on a machine without a GPU: installs NVIDIA's nvcc and the
# CUDA runtime headers from PyPI (no GPU or driver is needed to compile), then runs
# `cargo check --features cuda` for compute capability 9.0 (H100; override CUDA_COMPUTE_CAP).
# The cu12 nvcc wheels ship only ptxas; the CUDA 13 wheels carry the nvcc driver. 13.4 is the
# newest toolkit cudarc 0.19 (Candle's CUDA bindings) accepts.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet "nvidia-cuda-nvcc==13.4.92" "nvidia-cuda-runtime==13.4.92" \
  "nvidia-cuda-crt==13.4.92" "nvidia-nvvm==13.4.92" "nvidia-cuda-cccl==13.2.86"
tree=$(python3 -c "import nvidia, os; print(os.path.join(nvidia.__path__[0], 'cu13'))")
export CUDA_ROOT="$tree" CUDA_PATH="$tree" PATH="$tree/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
nvcc --version | tail -2
cargo check --release --locked --features cuda --lib

#!/usr/bin/env bash
# Builds the CUDA binaries (the `jnsc` binary and the library's test binary) on a machine without
# a GPU, to run on one that has it. NVIDIA's CUDA 13.0 toolkit and libraries come from PyPI into
# target/cuda-13.0 (13.0 matches the lent H100s' driver 580; PTX from a newer nvcc would not load
# there). Linking needs libcuda.so, which only the driver ships: a stub with the driver API's
# symbols stands in here, and the real driver's library is used at run time.
#
#   bash scripts/build-cuda.sh     # -> target/cuda-bin/{jnsc,jnsc-lib-tests} (build in target/cuda-build),
#                                  #    packed as target/cuda-carry/bins.txz
#
# On the GPU machine, put the CUDA 13 runtime, cuBLAS, cuRAND and NVRTC libraries on LD_LIBRARY_PATH (any
# PyTorch cu13 install has them under site-packages/nvidia/cu13/lib).
set -euo pipefail
cd "$(dirname "$0")/.."

toolkit=target/cuda-13.0
if [ ! -x "$toolkit/nvidia/cu13/bin/nvcc" ]; then
  python3 -m pip install --quiet --target "$toolkit" "nvidia-cuda-nvcc==13.0.88" \
    "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-crt==13.0.88" "nvidia-nvvm==13.0.88" \
    "nvidia-cuda-cccl==13.0.85" "nvidia-cublas==13.0.2.14" "nvidia-curand==10.4.0.35" \
    "nvidia-cuda-nvrtc==13.0.88"
fi
tree="$(pwd)/$toolkit/nvidia/cu13"

# Unversioned names for the linker, and the libcuda stub.
links="$(pwd)/target/cuda-link"
mkdir -p "$links"
for lib in cublas cublasLt curand nvrtc cudart; do
  ln -sf "$(ls "$tree"/lib/lib$lib.so.* | head -1)" "$links/lib$lib.so"
done
bindings=$(ls ~/.cargo/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | tail -1)
grep -o 'fn cu[A-Za-z0-9_]*(' "$bindings" | sort -u |
  sed 's/^fn \(.*\)($/void \1(void) {}/' >"$links/libcuda_stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$links/libcuda.so" "$links/libcuda_stub.c"

export CUDA_ROOT="$tree" CUDA_PATH="$tree" PATH="$tree/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export RUSTFLAGS="-L native=$links" CARGO_TARGET_DIR=target/cuda-build
nvcc --version | tail -2
cargo build --release --locked --features cuda --bin jnsc
tests=$(cargo test --release --locked --features cuda --lib --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])')
mkdir -p target/cuda-bin
cp "$tests" target/cuda-bin/jnsc-lib-tests
cp target/cuda-build/release/jnsc target/cuda-bin/jnsc
strip target/cuda-bin/jnsc target/cuda-bin/jnsc-lib-tests
# Packed for the GPU machine (`carry: target/cuda-carry`): xz keeps one copy of the Candle kernels
# both binaries embed, so the pack (about 28 MB) fits the device tool's 64 MiB with the repository.
mkdir -p target/cuda-carry
tar cf - -C target/cuda-bin jnsc jnsc-lib-tests | xz -9 -T2 >target/cuda-carry/bins.txz
ls -la target/cuda-bin target/cuda-carry

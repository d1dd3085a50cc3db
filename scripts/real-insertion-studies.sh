#!/usr/bin/env bash
# Held-out real-background insertion studies: synthetic nodules inserted into the validation
# background (a real chest CT kept out of training; LIDC-IDRI-0063 for models/train-real.toml),
# three per study, seeds FIRST.. (default 2001). Each study's truth.json also lists the
# background's own known nodules (`known_nodules`), which `jnsc eval studies` counts as
# reference nodules. A fifth argument `--juxta-vascular` offers the background's vessels to
# juxta-vascular nodules (the validation set V4 of the model card).
#   bash scripts/real-insertion-studies.sh [COUNT] [OUT] [BACKGROUND] [FIRST] [--juxta-vascular]
#   cargo run --release -- eval studies target/real-insertions --out target/real-insertions-eval
# The card's sets: `6` (2001-2006), `24 DIR ../shared/data/real-ct/lidc-idri-0063 2601` and
# `24 target/jv-insertions ../shared/data/real-ct/lidc-idri-0063 2701 --juxta-vascular`.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-6}"
out="${2:-target/real-insertions}"
background="${3:-../shared/data/real-ct/lidc-idri-0063}"
first="${4:-2001}"
extra=()
if [ -n "${5:-}" ]; then extra=("$5"); fi
cargo build --release --locked --quiet
mkdir -p "$out"
for i in $(seq 1 "$count"); do
  seed=$((first + i - 1))
  dir="$out/insertion-$seed"
  [ -f "$dir/truth.json" ] && continue
  ./target/release/jnsc synth --into "$background" --out "$dir" --seed "$seed" --nodules 3 "${extra[@]}" >/dev/null
  echo "wrote $dir"
done

#!/usr/bin/env bash
# Held-out real-background insertion studies: synthetic nodules inserted into the validation
# background (a real chest CT kept out of training; LIDC-IDRI-0063 for models/train-real.toml),
# three per study, seeds 2001.. . Each study's truth.json also lists the background's own known
# nodules (`known_nodules`), which `jnsc eval studies` counts as reference nodules.
#   bash scripts/real-insertion-studies.sh [COUNT] [OUT] [BACKGROUND]
#   cargo run --release -- eval studies target/real-insertions --out target/real-insertions-eval
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-6}"
out="${2:-target/real-insertions}"
background="${3:-../shared/data/real-ct/lidc-idri-0063}"
cargo build --release --locked --quiet
mkdir -p "$out"
for i in $(seq 1 "$count"); do
  seed=$((2000 + i))
  dir="$out/insertion-$seed"
  [ -f "$dir/truth.json" ] && continue
  ./target/release/jnsc synth --into "$background" --out "$dir" --seed "$seed" --nodules 3 >/dev/null
  echo "wrote $dir"
done

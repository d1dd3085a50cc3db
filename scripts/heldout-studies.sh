#!/usr/bin/env bash
# Writes the held-out synthetic studies the shipped model is evaluated on: full-size chest CT
# studies (512x512, 0.7 mm pixels, 1.25 mm slices, 4 nodules each) from seeds 1001.. (training scans
# use seeds 1..48), into target/heldout/ unless given another folder. Validation studies, for
# choosing post-processing without touching the held-out ones, come from seeds 3001..:
#   bash scripts/heldout-studies.sh [COUNT] [DIR] [FIRST_SEED]
#   bash scripts/heldout-studies.sh 10 target/validation 3001
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-10}"
dir="${2:-target/heldout}"
first="${3:-1001}"
cargo build --release --locked --quiet
mkdir -p "$dir"
for i in $(seq 1 "$count"); do
  seed=$((first + i - 1))
  [ -f "$dir/study-$seed/truth.json" ] || target/release/jnsc synth --out "$dir/study-$seed" --seed "$seed" --nodules 4 >/dev/null
done
echo "$count held-out studies in $dir"

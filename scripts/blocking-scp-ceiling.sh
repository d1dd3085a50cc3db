#!/usr/bin/env bash
# What a thread-per-association receive path could reach on this machine (issue 19's ingest
# targets): DCMTK's storescp, the prototype examples/blocking_scp.rs (a thread per association,
# blocking reads, every file synced before its answer, no index) and the node, in alternating
# rounds, each sent a synthetic 300-slice 512x512 series by DCMTK's storescu (TCP_NODELAY=1) on
# ASSOCIATIONS associations at once. Prints each receiver's rate and its CPU per instance.
#   bash scripts/blocking-scp-ceiling.sh [ASSOCIATIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
associations="${1:-4}"
rounds="${2:-3}"
for port in 11112 11113 11114; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use: the script needs 11112 (node), 11113 (storescp), 11114 (prototype)" >&2
    exit 1
  fi
done
cargo build --release --locked --quiet --bin jnsc --example blocking_scp
repo="$PWD"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$repo/target/release/jnsc" synth --out "$work/study" --seed 1 --nodules 1 >/dev/null
ls "$work"/study/dicom/*.dcm > "$work/all.txt"
count=$(wc -l < "$work/all.txt")
split -n "r/$associations" "$work/all.txt" "$work/part."
cat > "$work/jnsc.toml" <<EOF
[dicom]
listen = "127.0.0.1:11112"
[storage]
dir = "$work/node"
[status]
listen = "127.0.0.1:0"
[log]
level = "warn"
EOF
ticks=$(getconf CLK_TCK)

# measure NAME PID PORT DIR: sends the series to PORT, then stops PID; prints the rate, the
# receiver's CPU per instance and how many files DIR holds.
measure() {
  local cpu0 cpu1 start end pids="" part
  cpu0=$(awk '{print $14+$15}' "/proc/$2/stat")
  start=$(date +%s.%N)
  for part in "$work"/part.*; do
    # shellcheck disable=SC2046
    TCP_NODELAY=1 /usr/bin/storescu -aec JNSC 127.0.0.1 "$3" $(cat "$part") & pids="$pids $!"
  done
  # shellcheck disable=SC2086
  wait $pids
  end=$(date +%s.%N)
  sleep 0.2
  cpu1=$(awk '{print $14+$15}' "/proc/$2/stat")
  kill "$2"; wait "$2" 2>/dev/null || true
  python3 -c "import sys; n, s, e, c0, c1, t = map(float, sys.argv[1:]); \
print(f'  [$1] {n / (e - s):.0f} inst/s, {(c1 - c0) / t * 1000 / n:.2f} ms CPU per instance', end='')" \
    "$count" "$start" "$end" "$cpu0" "$cpu1" "$ticks"
  echo ", $(find "$4" -type f \( -name '*.dcm' -o -name 'CT.*' \) | wc -l) files"
}

# wait_for FILE TEXT: until FILE says TEXT (5 s at most).
wait_for() {
  for _ in $(seq 50); do grep -q "$2" "$1" 2>/dev/null && return; sleep 0.1; done
}

echo "$count instances on $associations association(s) at once, $rounds rounds"
for round in $(seq "$rounds"); do
  echo "round $round"
  rm -rf "$work/scp" "$work/proto" "$work/node"; mkdir -p "$work/scp" "$work/proto"
  TCP_NODELAY=1 /usr/bin/storescp -od "$work/scp" 11113 & pid=$!
  sleep 0.5
  measure storescp "$pid" 11113 "$work/scp"
  "$repo/target/release/examples/blocking_scp" 11114 "$work/proto" > "$work/proto.out" 2>/dev/null & pid=$!
  wait_for "$work/proto.out" listening
  measure "blocking prototype" "$pid" 11114 "$work/proto"
  env -u RUST_BACKTRACE "$repo/target/release/jnsc" serve --config "$work/jnsc.toml" \
    > "$work/node.out" 2>/dev/null & pid=$!
  wait_for "$work/node.out" "as AE"
  measure jnsc "$pid" 11112 "$work/node"
done

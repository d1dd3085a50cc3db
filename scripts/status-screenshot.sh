#!/usr/bin/env bash
# Renders docs/status-page.png: starts a node on free ports with a scratch storage directory,
# sends it a synthetic study (analysed, results sent to a DCMTK storescp) and a series too short
# to analyse, then screenshots the status page with headless Chromium (apt-get install chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release --quiet
bin=target/release/jnsc
$bin synth --out "$work/study" --seed 7 --nodules 3 --size 384 --pixel-spacing 0.9 \
  --slices 120 --slice-spacing 2.5 >/dev/null
$bin synth --out "$work/short" --seed 8 --size 384 --pixel-spacing 0.9 --slices 8 \
  --slice-spacing 2.5 >/dev/null 2>&1 || true
mkdir -p "$work/pacs"
/usr/bin/storescp -aet PACS -od "$work/pacs" 11990 >/dev/null 2>&1 &
cat > "$work/jnsc.toml" <<TOML
[dicom]
listen = "127.0.0.1:11991"
[[dicom.peers]]
ae_title = "CT_SCANNER"
host = "127.0.0.1"
port = 11990
dest_ae_title = "PACS"
[pipeline]
stable_age_secs = 2
[storage]
dir = "$work/storage"
[status]
listen = "127.0.0.1:11992"
TOML
$bin serve --config "$work/jnsc.toml" >"$work/node.out" 2>"$work/node.log" &
sleep 2
/usr/bin/storescu -aet CT_SCANNER -aec JNSC +sd 127.0.0.1 11991 "$work/study/dicom"
if [ -d "$work/short/dicom" ]; then
  /usr/bin/storescu -aet CT_SCANNER -aec JNSC +sd 127.0.0.1 11991 "$work/short/dicom" || true
fi
for _ in $(seq 1 120); do
  if [ "$(ls "$work/pacs" | wc -l)" -ge 2 ]; then break; fi
  sleep 1
done
sleep 3
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,760 \
  --screenshot=docs/status-page.png http://127.0.0.1:11992/ 2>/dev/null
echo "wrote docs/status-page.png"

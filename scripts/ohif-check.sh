#!/usr/bin/env bash
# The OHIF viewer check (issue 16): a synthetic CT study goes to an Orthanc configured like
# deploy/orthanc/orthanc.json, its Lua rule (deploy/orthanc/route-ct.lua) forwards the CT to a jnsc
# node, the node sends its SEG and SR back to Orthanc, and OHIF 3.13 (scripts/ohif: served from
# the same origin as a proxy to Orthanc's DICOMweb) must show them: in the SR's own viewport, zoomed
# in on the first finding, its long axis drawn with its length from results.json and, once the
# SEG is laid over that viewport, the finding's segment around it (ohif-seg-and-axes.png; also
# ohif-sr-axes.png without the SEG and ohif-segments.png with the segmentation panel); then the
# SEG over the CT, the SR's tracked measurements in the panel, and at the first finding its
# measurement drawn and segment 1's colour in the pixels (scripts/ohif/screenshot.js has the
# details). Finally nothing may loop: the node got the CT once, the SEG and SR stay at Orthanc.
#
#   scripts/ohif-check.sh [DIR]          (screenshots; default: a new temporary folder, printed)
#
# OHIF_REQUIRE_PANEL_LENGTH=1: OHIF must also hydrate a length into its measurement panel (3.13
# does so only for measurement groups whose Tracking Identifier names a cornerstone tool, e.g.
# "...:Length" or "...:Bidirectional"; the node's SR stays viewer-neutral, so this fails today).
#
# Uses the built binary ($JNSC_BIN, default target/release/jnsc; it never runs cargo), Debian's
# orthanc, orthanc-dicomweb, chromium and dcmtk (apt-get installs what is missing), and the npm
# packages of scripts/ohif (npm ci when node_modules is missing; never downloads a browser).
# Everything runs on free loopback ports with scratch storage; every process it starts is
# stopped at exit. KEEP_WORK=1 keeps the scratch folder (logs, storage). Exit status 0 when the
# viewer shows both, non-zero with a FAIL line otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${JNSC_BIN:-target/release/jnsc}
t_start=$SECONDS
say() { printf '[ohif-check %3ds] %s\n' $((SECONDS - t_start)) "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

[ -x "$bin" ] || die "$bin is missing: build it first (cargo build --release) or set JNSC_BIN"
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

# --- What the check needs ---------------------------------------------------------------------
missing=()
command -v Orthanc >/dev/null || missing+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/storescu ] || missing+=(dcmtk)
command -v curl >/dev/null || missing+=(curl)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt-get)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
    >/dev/null || die "apt-get install ${missing[*]} failed"
fi
if [ ! -f scripts/ohif/node_modules/@ohif/app/dist/index.html ] \
  || [ ! -d scripts/ohif/node_modules/puppeteer-core ]; then
  say "npm ci in scripts/ohif"
  (cd scripts/ohif && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund \
    >/dev/null) || die "npm ci in scripts/ohif failed"
fi

# --- Scratch folder, processes, cleanup ---------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/jnsc-ohif-check.XXXXXX")
out=${1:-$(mktemp -d "${TMPDIR:-/tmp}/jnsc-ohif-shots.XXXXXX")}
mkdir -p "$out"
out=$(cd "$out" && pwd)
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [ "$rc" -ne 0 ]; then
    for f in orthanc.log node.log serve.log; do
      [ -f "$work/$f" ] && { echo "--- last lines of $f"; tail -n 15 "$work/$f" | cut -c1-300; }
    done
  fi
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "scratch folder kept: $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback TCP ports: orthanc dicom, orthanc http, node dicom, node status, viewer.
read -r p_odicom p_ohttp p_node p_status p_view < <(node -e '
  const net = require("net");
  const ports = []; const servers = [];
  (async () => {
    for (let i = 0; i < 5; i++) {
      const s = net.createServer(); servers.push(s);
      await new Promise((r) => s.listen(0, "127.0.0.1", r));
      ports.push(s.address().port);
    }
    servers.forEach((s) => s.close());
    console.log(ports.join(" "));
  })();')

# --- Orthanc: the site configuration with scratch storage and these ports ------------------------
stable_age=${ORTHANC_STABLE_AGE:-3}
ROOT="$root" WORK="$work" P_ODICOM=$p_odicom P_OHTTP=$p_ohttp P_NODE=$p_node STABLE=$stable_age node -e '
  const fs = require("fs");
  const e = process.env;
  // deploy/orthanc/orthanc.json uses whole-line // comments only (Orthanc accepts them, JSON not).
  const text = fs.readFileSync(e.ROOT + "/deploy/orthanc/orthanc.json", "utf8")
    .split("\n").filter((l) => !/^\s*\/\//.test(l)).join("\n");
  const c = JSON.parse(text);
  c.StorageDirectory = c.IndexDirectory = e.WORK + "/orthanc-db";
  c.DicomPort = Number(e.P_ODICOM);
  c.HttpPort = Number(e.P_OHTTP);
  c.DicomModalities.jnsc = [c.DicomModalities.jnsc[0], "127.0.0.1", Number(e.P_NODE)];
  c.LuaScripts = [e.ROOT + "/deploy/orthanc/route-ct.lua"];
  c.StableAge = Number(e.STABLE);
  fs.writeFileSync(e.WORK + "/orthanc.json", JSON.stringify(c, null, 2));'
mkdir -p "$work/orthanc-db"
Orthanc "$work/orthanc.json" >"$work/orthanc.log" 2>&1 &
pids+=($!)
orthanc="http://127.0.0.1:$p_ohttp"

# --- The node ---------------------------------------------------------------------------------------
cat >"$work/jnsc.toml" <<TOML
[dicom]
listen = "127.0.0.1:$p_node"
[[dicom.peers]]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = $p_odicom
[pipeline]
stable_age_secs = 2
[storage]
dir = "$work/storage"
[status]
listen = "127.0.0.1:$p_status"
TOML
"$bin" serve --config "$work/jnsc.toml" >"$work/node.out" 2>"$work/node.log" &
pids+=($!)

# --- The study ---------------------------------------------------------------------------------------
slices=120
say "synthetic study (seed 7, 3 nodules, $slices slices)"
"$bin" synth --out "$work/study" --seed 7 --nodules 3 --size 384 --pixel-spacing 0.9 \
  --slices $slices --slice-spacing 2.5 >"$work/synth.log" 2>&1 || die "jnsc synth failed"

for _ in $(seq 1 60); do
  curl -sf "$orthanc/system" >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$p_status/health" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -sf "$orthanc/system" >/dev/null || die "Orthanc did not start"
curl -sf "$orthanc/plugins/dicom-web" >/dev/null || die "Orthanc has no DICOMweb plugin"
curl -sf "http://127.0.0.1:$p_status/health" >/dev/null || die "the node did not start"

say "C-STORE to ORTHANC (port $p_odicom)"
/usr/bin/storescu -aet CT_SCANNER -aec ORTHANC +sd 127.0.0.1 "$p_odicom" "$work/study/dicom" \
  >"$work/storescu.log" 2>&1 || die "storescu to Orthanc failed ($(tail -n 2 "$work/storescu.log"))"
study=$(curl -sf "$orthanc/studies?expand" | node -e '
  let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
    const a = JSON.parse(s); console.log(a.length === 1 ? a[0].MainDicomTags.StudyInstanceUID : "");
  });')
[ -n "$study" ] || die "Orthanc does not hold exactly one study"
say "study $study: waiting for the SEG and SR at Orthanc (Lua forwards the CT, the node analyses it)"

modalities() {
  curl -sf "$orthanc/dicom-web/studies/$study/series" | node -e '
    let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
      try { console.log(JSON.parse(s).map((x) => x["00080060"].Value[0]).sort().join(",")); }
      catch (_) { console.log(""); }
    });'
}
deadline=$((SECONDS + ${OHIF_CHECK_ANALYSIS_TIMEOUT:-300}))
mods=""
while [ $SECONDS -lt $deadline ]; do
  mods=$(modalities || true)
  case ",$mods," in *,SEG,*) case ",$mods," in *,SR,*) break ;; esac ;; esac
  kill -0 "${pids[1]}" 2>/dev/null || die "the node exited (see node.log)"
  sleep 2
done
case ",$mods," in *,SEG,*) ;; *) die "no SEG at Orthanc after the analysis timeout (series: $mods)" ;; esac
case ",$mods," in *,SR,*) ;; *) die "no SR at Orthanc after the analysis timeout (series: $mods)" ;; esac
results=$(ls "$work"/storage/results/*/*/results.json 2>/dev/null | head -n 1)
[ -n "$results" ] || die "the node wrote no results.json"
findings=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).findings.length)' "$results")
[ "$findings" -ge 1 ] || die "the node reported no finding for this study: nothing to show"
say "Orthanc has CT, SEG and SR ($findings findings)"

# --- The viewer -------------------------------------------------------------------------------------
node scripts/ohif/serve.js --port "$p_view" --dicomweb "$orthanc/dicom-web" >"$work/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 40); do
  grep -q listening "$work/serve.log" 2>/dev/null && break
  sleep 0.25
done
grep -q listening "$work/serve.log" || die "serve.js did not start"
say "OHIF at http://127.0.0.1:$p_view"
node scripts/ohif/screenshot.js --url "http://127.0.0.1:$p_view" --study "$study" --out "$out" \
  --results "$results" --expect-segments "$findings" --expect-measurements "$findings" \
  || die "the viewer check failed (screenshots in $out)"

# --- Nothing loops: the node got the CT once, and the Lua rule kept the SEG and SR at Orthanc --------
status=$(curl -sf "http://127.0.0.1:$p_status/status")
assoc=$(node -e 'const s = JSON.parse(process.argv[1]); console.log(s.associations_total + " " + s.instances_received)' "$status")
[ "$assoc" = "1 $slices" ] || die "the node received (associations, instances) = ($assoc), expected (1 $slices): something loops"
grep -q 'modality SEG: not sent' "$work/orthanc.log" || die "Orthanc's Lua rule did not see the SEG as stable (no 'modality SEG: not sent' line)"
grep -q 'modality SR: not sent' "$work/orthanc.log" || die "Orthanc's Lua rule did not see the SR as stable (no 'modality SR: not sent' line)"
say "no loop: the node got one association of $slices CT instances; the Lua rule kept SEG and SR"
say "OHIF check passed: screenshots in $out"

#!/usr/bin/env bash
# Installs what the test suite drives on a fresh Debian machine: DCMTK (echoscu, storescu,
# storescp, dcmcjpeg, dcmcrle, dcmdump). Idempotent: does nothing when everything is present.
set -euo pipefail

missing=()
for tool in echoscu storescu storescp dcmcjpeg dcmcrle dcmdump; do
  [ -x "/usr/bin/$tool" ] || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing dcmtk (missing: ${missing[*]})"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dcmtk >/dev/null
fi

#!/usr/bin/env bash
# Installs what the test suite drives on a fresh Debian machine: DCMTK (echoscu, storescu,
# storescp, dcmcjpeg, dcmcrle, dcmdump, dcmodify), dicom3tools (dciodvfy) and SimpleITK (the
# reference for the volume code). Idempotent: does nothing when everything is present.
set -euo pipefail

missing=()
for tool in echoscu storescu storescp dcmcjpeg dcmcrle dcmdump dcmodify; do
  [ -x "/usr/bin/$tool" ] || missing+=("$tool")
done
[ -x /usr/bin/dciodvfy ] || missing+=(dciodvfy)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing dcmtk and dicom3tools (missing: ${missing[*]})"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dcmtk dicom3tools >/dev/null
fi

if ! python3 -c "import SimpleITK, numpy" 2>/dev/null; then
  echo "installing SimpleITK and numpy"
  python3 -m pip install --quiet SimpleITK numpy
fi

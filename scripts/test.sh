#!/usr/bin/env bash
# The whole test suite: installs the third-party tools the tests use, checks formatting and
# lints, then runs every unit and integration test (real DCMTK peers against the real binary),
# then the OHIF viewer check (scripts/ohif-check.sh, which installs chromium and npm packages).
# Release mode: the volume tests resample real 512x512 series, far too slow unoptimised.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/build-deps.sh
bash scripts/install-test-deps.sh
cargo fmt --all -- --check
# Release profile, as the tests: build scripts and proc macros are built once, and no second
# (dev) tree of dependencies fills the disk.
cargo clippy --release --locked --all-targets -- -D warnings
# Dependencies between modules point one way (docs/modules.svg is drawn from the same code).
python3 scripts/module-graph.py --check
# The tests' scratch files (nodes' storage, generated series, PostgreSQL clusters) go in one
# folder, removed when the suite ends, pass or fail: runs leave nothing behind in /tmp. Sticky and
# world-writable as /tmp is, since the tests' PostgreSQL server runs as the postgres user.
scratch=$(mktemp -d /tmp/jnsc-tests-XXXXXX)
chmod 1777 "$scratch"
trap 'rm -rf "$scratch" || true' EXIT
TMPDIR="$scratch" cargo test --release --locked
# The viewer check: Orthanc + the node + OHIF 3.13 in headless Chromium (about 3 minutes).
bash scripts/ohif-check.sh

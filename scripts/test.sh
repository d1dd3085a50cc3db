#!/usr/bin/env bash
# The whole test suite: installs the third-party tools the tests use, checks formatting and
# lints, then runs every unit and integration test (real DCMTK peers against the real binary).
# Release mode: the volume tests resample real 512x512 series, far too slow unoptimised.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --release --locked

#!/usr/bin/env bash
# What building the node needs beyond Rust: a C/C++ compiler and CMake (charls-sys builds CharLS,
# the JPEG-LS codec, from its sources; mimalloc is C). Installs the missing ones with apt-get.
# Idempotent: does nothing when everything is present.
set -euo pipefail

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v c++ >/dev/null || need+=(g++)
command -v cc >/dev/null || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing build tools: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

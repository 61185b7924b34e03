#!/usr/bin/env bash
# Installs the system packages the build needs, if missing: libclang for RocksDB's bindgen.
# Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
# libclang.so itself: libclang-cpp.so, which other packages bring, is not what bindgen loads.
if [ -z "$(ls /usr/lib/llvm-*/lib/libclang.so* 2>/dev/null)" ] && ! dpkg -s libclang-dev >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq libclang-dev >/dev/null
fi

#!/usr/bin/env bash
# The one command that runs every test: unit, in-process end-to-end and multi-process.
# Tests share the release profile with the benchmarks so RocksDB is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo test --release --workspace --no-fail-fast "$@"

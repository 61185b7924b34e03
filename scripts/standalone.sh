#!/usr/bin/env bash
# The one command that runs Strata: builds the `strata` binary and starts
# `strata standalone` with its embedded defaults (QUIC 127.0.0.1:6650, HTTP 127.0.0.1:8080,
# data in ./data/standalone). Extra arguments go to `strata standalone`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
exec cargo run --release --quiet --bin strata -- standalone "$@"

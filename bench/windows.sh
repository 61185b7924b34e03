#!/usr/bin/env bash
# QUIC flow-control windows under a real round-trip time: produce through a UDP relay that
# delays each direction by DELAY_MS (bench tool `udp_delay`), with the server's default windows
# (16 MiB stream / 64 MiB connection) and with 100 KB windows.
#   bench/windows.sh [runs=3] [delay_ms=1] [messages=200000]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"; delay="${2:-1}"; messages="${3:-200000}"
target="${CARGO_TARGET_DIR:-target}/release"
cargo build --release --quiet --bin strata --bin udp_delay
mkdir -p ./data
work=$(mktemp -d ./data/bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
printf 'stream_receive_window = 102400\nconnection_receive_window = 102400\n' > "$work/small.toml"
: > "$work/default.toml"
free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
echo "# $(nproc) cores; relay adds ${delay} ms each way (RTT ≈ $((2 * delay)) ms)"
for windows in default small; do
  echo "## ${windows} windows"
  for _ in $(seq 1 "$runs"); do
    rm -rf "$work/run"
    "$target/strata" standalone --config "$work/$windows.toml" --data-dir "$work/run" --listen 127.0.0.1:0 --http 127.0.0.1:0 2> "$work/server.log" &
    spid=$!
    addr=""
    for _ in $(seq 1 600); do
      addr=$(sed -n 's/^strata standalone: QUIC on \([^,]*\),.*/\1/p' "$work/server.log"); [ -n "$addr" ] && break; sleep 0.1
    done
    port=$(free_port)
    "$target/udp_delay" "127.0.0.1:$port" "$addr" "$delay" &
    rpid=$!
    "$target/strata" --url "quic://127.0.0.1:$port" perf produce win --size 1024 -n "$messages" --max-pending 20000 2>/dev/null | grep summary
    kill "$rpid" "$spid"; wait "$rpid" "$spid" 2>/dev/null || true
  done
done

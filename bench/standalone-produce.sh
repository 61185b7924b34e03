#!/usr/bin/env bash
# Durable produce (and catch-up consume) of a fresh standalone, next to the disk's dsync limits
# measured in the same run.
#   bench/standalone-produce.sh [runs=5] [messages=500000]
# Configurations: 1 KB messages in batches of 1000 and of 10 with the default QUIC windows
# (16 MiB stream / 64 MiB connection), and batches of 1000 with Iggy-like 100 KB windows.
# Prints every run's summaries and the medians per configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
messages="${2:-500000}"
strata="${CARGO_TARGET_DIR:-target}/release/strata"
cargo build --release --quiet --bin strata
mkdir -p ./data
work=$(mktemp -d ./data/bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
printf 'stream_receive_window = 102400\nconnection_receive_window = 102400\n' > "$work/small-windows.toml"
: > "$work/default.toml"

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r), $(df -h . | awk 'NR==2{print $1}')"
bench/disk.sh "$work"

run_one() { # batch size, config file
  local dir="$work/run"
  rm -rf "$dir"
  "$strata" standalone --config "$2" --data-dir "$dir" --listen 127.0.0.1:0 --http 127.0.0.1:0 2> "$work/server.log" &
  local pid=$!
  local addr=""
  for _ in $(seq 1 600); do
    addr=$(sed -n 's/^strata standalone: QUIC on \([^,]*\),.*/\1/p' "$work/server.log")
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "standalone did not start"; cat "$work/server.log"; exit 1; }
  "$strata" --url "quic://$addr" perf produce bench --size 1024 -n "$messages" \
      --batch-max-messages "$1" --max-pending 20000 2>/dev/null | grep summary
  "$strata" --url "quic://$addr" perf consume bench --earliest -n "$messages" 2>/dev/null | grep summary
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

median() { # file, label
  python3 - "$1" "$2" <<'PY'
import re, statistics, sys
rows = [l for l in open(sys.argv[1]) if l.startswith(sys.argv[2] + " summary")]
def col(pat):
    return statistics.median(float(re.search(pat, l).group(1)) for l in rows)
print("median %s (%d runs): %.0f msg/s, %.1f MB/s, p50 %.2f ms, p99 %.2f ms, p999 %.2f ms" % (
    sys.argv[2], len(rows), col(r"= (\d+) msg/s"), col(r"msg/s ([\d.]+) MB/s"),
    col(r"p50 ([\d.]+)"), col(r"p99 ([\d.]+)"), col(r"p999 ([\d.]+)")))
PY
}

for case in "1000 default" "10 default" "1000 small-windows"; do
  set -- $case
  echo "## 1 KB messages, batch $1, $2 windows, $messages messages"
  for i in $(seq 1 "$runs"); do run_one "$1" "$work/$2.toml"; done | tee "$work/out.txt"
  median "$work/out.txt" produce
  median "$work/out.txt" consume
done

#!/usr/bin/env bash
# Durable produce throughput of a fresh standalone, next to the disk's dsync limits measured
# in the same run. Usage: bench/standalone-produce.sh [runs=5] [messages=500000]
# Prints every run's summary and the median msg/s, MB/s and latencies per configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
messages="${2:-500000}"
strata="${CARGO_TARGET_DIR:-target}/release/strata"
[ -x "$strata" ] || cargo build --release --quiet --bin strata
work=$(mktemp -d ./data/bench.XXXXXX 2>/dev/null || (mkdir -p ./data && mktemp -d ./data/bench.XXXXXX))
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
bench/disk.sh "$work"

run_one() { # batch size, label
  local dir="$work/run"
  rm -rf "$dir"
  "$strata" standalone --data-dir "$dir" --listen 127.0.0.1:0 --http 127.0.0.1:0 2> "$work/server.log" &
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
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for batch in 1000 10; do
  echo "## 1 KB messages, batch $batch, $messages messages, $runs runs"
  for i in $(seq 1 "$runs"); do run_one "$batch"; done | tee "$work/batch$batch.txt"
  python3 - "$work/batch$batch.txt" <<'PY'
import re, statistics, sys
rows = [l for l in open(sys.argv[1]) if "summary" in l]
def col(pat):
    return statistics.median(float(re.search(pat, l).group(1)) for l in rows)
print("median: %.0f msg/s, %.1f MB/s, p50 %.2f ms, p99 %.2f ms, p999 %.2f ms" % (
    col(r"= (\d+) msg/s"), col(r"msg/s ([\d.]+) MB/s"), col(r"p50 ([\d.]+)"), col(r"p99 ([\d.]+)"), col(r"p999 ([\d.]+)")))
PY
done

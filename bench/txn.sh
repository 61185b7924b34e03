#!/usr/bin/env bash
# Transactions on a fresh standalone per run: `strata perf txn` (consume -> produce with N
# messages per transaction, and the same pipeline without transactions in the same run),
# then RabbitMQ's tx.select peer (bench/rabbitmq.sh) on the same machine.
#   bench/txn.sh [runs=3] [messages for N=1 and 10 = 8000] [messages for N=100 = 40000]
# A last pass per run is N = 1 over the N = 100 message count without the baseline: the
# sustained rate, once the metastore has flushed and compacts. Prints every run's lines and
# the medians per mode, N, pipelines and message count.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
small="${2:-8000}"
large="${3:-40000}"
strata="${CARGO_TARGET_DIR:-target}/release/strata"
cargo build --release --quiet --bin strata
mkdir -p ./data
work=$(mktemp -d ./data/bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r)"
run_one() { # perf txn arguments...
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
  "$strata" --url "quic://$addr" perf txn "$@" 2>/dev/null | tee -a "$work/results"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for r in $(seq 1 "$runs"); do
  echo "# run $r"
  # The second pass of a pair runs on a standalone still flushing and compacting the first
  # one's writes: the baseline goes first in even runs, so neither mode always comes second.
  order=(); [ $((r % 2)) = 0 ] && order=(--baseline-first)
  run_one -n "$small" --per-txn 1,10 "${order[@]}"
  run_one -n "$large" --per-txn 100 "${order[@]}"
  run_one -n "$small" --per-txn 1 --pipelines 64 "${order[@]}"
  run_one -n "$small" --per-txn 1 --pipelines 128 "${order[@]}"
  # Sustained: five times as long, past the metastore's first memtable flushes.
  run_one -n "$large" --per-txn 1 --pipelines 128 --no-baseline
done

python3 - "$work/results" <<'PY'
import re, statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    f = dict(kv.split("=") for kv in line.split())
    rows[(f["mode"], int(f["n"]), int(f["pipelines"]), int(f["messages"]))].append(f)
for (mode, n, pipelines, messages), fs in sorted(rows.items(), key=lambda k: (k[0][1], k[0][2], k[0][3], k[0][0])):
    med = lambda k: statistics.median(float(f[k]) for f in fs) if k in fs[0] else float("nan")
    print(f"median mode={mode} n={n} pipelines={pipelines} messages={messages} ({len(fs)} runs): "
          f"{med('steps_per_s'):.0f} steps/s {med('msgs_per_s'):.0f} msg/s "
          f"commit p50 {med('commit_p50_ms'):.2f} ms p99 {med('commit_p99_ms'):.2f} ms "
          f"begin p50 {med('begin_p50_ms'):.2f} ms send+ack p50 {med('send_ack_p50_ms'):.2f} ms")
PY
echo "# peer: RabbitMQ tx.select"
bench/rabbitmq.sh "$runs"

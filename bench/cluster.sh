#!/usr/bin/env bash
# A broker cluster on loopback, as processes: one metastore voter, 3 bookies (ledgers
# E3/Qw3/Qa2) and 2 brokers (10 s session lease).
#   bench/cluster.sh [runs=3] [messages=200000] [kills=10]
# 1. Produce + consume throughput, 1 KB messages in batches of up to 1000: a tailing
#    `perf consume` and a `perf produce` at full speed, at the same time.
# 2. End-to-end latency (publish to receive) at a fixed 5,000 msg/s, batches of up to 100.
# 3. Failover: `kills` times, kill -9 the broker owning a topic and time until a fresh client
#    has a message stored on that topic again; then restart the killed broker.
# Prints every run's summaries and the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
messages="${2:-200000}"
kills="${3:-10}"
strata="${CARGO_TARGET_DIR:-target}/release/strata"
cargo build --release --quiet --bin strata
mkdir -p ./data
work=$(mktemp -d ./data/bench-cluster.XXXXXX)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r)"
free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

meta_port=$(free_port)
meta="127.0.0.1:$meta_port"
"$strata" metastore --node-id 1 --data-dir "$work/meta" --listen "$meta" --http 127.0.0.1:0 \
  --initial-members "1=$meta" 2> "$work/meta.log" &
for i in 1 2 3; do
  "$strata" bookie --data-dir "$work/bookie$i" --listen "127.0.0.1:$(free_port)" --http 127.0.0.1:0 \
    --metastore "$meta" 2> "$work/bookie$i.log" &
done
declare -A broker_pid broker_addr
start_broker() { # id
  "$strata" broker --broker-id "$1" --data-dir "$work/$1" --listen "${broker_addr[$1]}" \
    --http 127.0.0.1:0 --metastore "$meta" 2>> "$work/$1.log" &
  broker_pid[$1]=$!
}
for b in b1 b2; do
  broker_addr[$b]="127.0.0.1:$(free_port)"
  start_broker "$b"
done
url="quic://${broker_addr[b1]},${broker_addr[b2]}"
cli() { "$strata" --url "$url" --connect-timeout-secs 2 "$@"; }
for _ in $(seq 1 300); do
  cli cluster bookies --metastore "$meta" 2>/dev/null | grep -q '^3 bookie' \
    && cli topics list >/dev/null 2>&1 && break
  sleep 0.2
done

median() { # file, pattern
  python3 - "$1" "$2" <<'PY'
import re, statistics, sys
rows = [l for l in open(sys.argv[1]) if re.search(sys.argv[2], l)]
def col(pat):
    return statistics.median(float(re.search(pat, l).group(1)) for l in rows)
print("  median of %d: %.0f msg/s, p50 %.2f ms, p99 %.2f ms" % (
    len(rows), col(r"= (\d+) msg/s"), col(r"p50 ([\d.]+)"), col(r"p99 ([\d.]+)")))
PY
}

echo "## 1. produce + consume, 1 KB, batches of up to 1000, E3/Qw3/Qa2"
for i in $(seq 1 "$runs"); do
  topic="tput-$i"
  cli topics create "$topic"
  cli perf consume "$topic" -s bench -n "$messages" --duration-secs 600 2>/dev/null | grep summary > "$work/c.txt" &
  consumer=$!
  cli perf produce "$topic" --size 1024 -n "$messages" --max-pending 20000 2>/dev/null | grep summary
  wait "$consumer"
  cat "$work/c.txt"
done | tee "$work/tput.txt"
echo "produce:"; median "$work/tput.txt" "produce.*summary"
echo "consume (latency = publish to receive):"; median "$work/tput.txt" "consume.*summary"

echo "## 2. end-to-end latency at 5,000 msg/s, 1 KB, batches of up to 100"
for i in $(seq 1 "$runs"); do
  topic="latency-$i"
  cli topics create "$topic"
  n=50000
  cli perf consume "$topic" -s bench -n "$n" --duration-secs 600 2>/dev/null | grep summary > "$work/c.txt" &
  consumer=$!
  cli perf produce "$topic" --size 1024 -n "$n" --rate 5000 --batch-max-messages 100 2>/dev/null > /dev/null
  wait "$consumer"
  cat "$work/c.txt"
done | tee "$work/latency.txt"
median "$work/latency.txt" "summary"

echo "## 3. failover: kill -9 of the owning broker, until a message is stored again"
cli produce failover -m warmup > /dev/null
: > "$work/failover.txt"
for k in $(seq 1 "$kills"); do
  owner=$(cli topics lookup failover | awk '{print $1}')
  survivor=b1; [ "$owner" = b1 ] && survivor=b2
  start=$(date +%s.%N)
  kill -9 "${broker_pid[$owner]}"
  until "$strata" --url "quic://${broker_addr[$survivor]}" --connect-timeout-secs 2 \
      produce failover -m "after kill $k" > /dev/null 2>&1; do :; done
  end=$(date +%s.%N)
  python3 -c "print('kill %d: owner %s, served again after %.2f s' % ($k, '$owner', $end - $start))" | tee -a "$work/failover.txt"
  start_broker "$owner"
  # Wait until the restarted broker serves again, so the next kill has a survivor.
  until "$strata" --url "quic://${broker_addr[$owner]}" --connect-timeout-secs 2 \
      topics list > /dev/null 2>&1; do sleep 0.2; done
done
python3 - "$work/failover.txt" <<'PY'
import re, statistics, sys
t = [float(re.search(r"after ([\d.]+) s", l).group(1)) for l in open(sys.argv[1])]
print("failover over %d kills: median %.2f s, max %.2f s, min %.2f s" % (len(t), statistics.median(t), max(t), min(t)))
PY

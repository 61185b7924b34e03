#!/usr/bin/env bash
# Three metastore voters on loopback: compare-and-set put throughput and latency with 1, 16
# and 256 concurrent clients (3 runs each, 5 s, sent to the leader), watch delivery latency
# (a remote watch on a follower while 16 clients write), then leader failover time
# over 10 SIGKILLs: from the kill to the first acknowledged write.
#   bench/metastore.sh [runs=3] [kills=10]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"; kills="${2:-10}"
strata="${CARGO_TARGET_DIR:-target}/release/strata"
cargo build --release --quiet --bin strata
mkdir -p ./data
work=$(mktemp -d ./data/bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; pkill -f "$work" 2>/dev/null || true; rm -rf "$work"' EXIT
ports=($(python3 -c 'import socket
s=[socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(6)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))'))
members="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
all="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
declare -A pid
start() { # node id
  local i=$1
  "$strata" metastore --node-id "$i" --data-dir "$work/n$i" --listen "127.0.0.1:${ports[$((i-1))]}" \
    --http "127.0.0.1:${ports[$((i+2))]}" --initial-members "$members" 2> "$work/n$i.log" &
  pid[$i]=$!
}
is_leader() { curl -s "127.0.0.1:${ports[$(($1+2))]}/metrics" 2>/dev/null | grep -q '^strata_metastore_is_leader 1'; }
leader() { # waits for a leader among the given ids; prints it
  for _ in $(seq 1 600); do
    for i in "$@"; do is_leader "$i" && { echo "$i"; return; }; done
    sleep 0.05
  done
  echo "no leader" >&2; exit 1
}
now_ms() { date +%s%3N; }
for i in 1 2 3; do start "$i"; done
l=$(leader 1 2 3)
echo "# $(nproc) cores; 3 voters on loopback; leader is node $l"
first="127.0.0.1:${ports[$((l-1))]}"
for clients in ${CLIENTS:-1 16 256}; do
  echo "## CAS put, $clients clients, 128-byte values"
  for _ in $(seq 1 "$runs"); do
    "$strata" perf meta --metastore "$first,$all" --clients "$clients" --duration-secs 5 | grep summary
  done | tee "$work/meta.txt"
  python3 - "$work/meta.txt" <<'PY'
import re, statistics, sys
rows = [l for l in open(sys.argv[1]) if "summary" in l]
col = lambda p: statistics.median(float(re.search(p, l).group(1)) for l in rows)
print("median: %.0f puts/s, p50 %.2f ms, p99 %.2f ms" % (col(r"= (\d+) msg/s"), col(r"p50 ([\d.]+)"), col(r"p99 ([\d.]+)")))
PY
done
echo "## watch delivery: 16 clients doing CAS puts, one remote watch on their prefix (served by a follower)"
follower=""; for i in 1 2 3; do [ "$i" != "$l" ] && { follower="127.0.0.1:${ports[$((i-1))]}"; break; }; done
for _ in $(seq 1 "$runs"); do
  "$strata" perf meta --metastore "$first,$all" --clients 16 --duration-secs 5 --watch --watch-from "$follower" | grep "watch-delivery summary"
done | tee "$work/watch.txt"
python3 - "$work/watch.txt" <<'PY'
import re, statistics, sys
rows = [l for l in open(sys.argv[1]) if "summary" in l]
col = lambda p: statistics.median(float(re.search(p, l).group(1)) for l in rows)
print("median: %.0f events/s, p50 %.2f ms, p99 %.2f ms (put sent -> event received)" % (col(r"= (\d+) msg/s"), col(r"p50 ([\d.]+)"), col(r"p99 ([\d.]+)")))
PY
echo "## failover: SIGKILL the leader, time to the first acknowledged write (ms)"
baseline_start=$(now_ms); "$strata" meta --metastore "$all" put /fo/baseline x > /dev/null; baseline=$(( $(now_ms) - baseline_start ))
echo "one healthy put through the CLI (process start included): ${baseline} ms"
for k in $(seq 1 "$kills"); do
  l=$(leader 1 2 3)
  kill -9 "${pid[$l]}"; wait "${pid[$l]}" 2>/dev/null || true
  t0=$(now_ms)
  until "$strata" --connect-timeout-secs 2 meta --metastore "$all" put "/fo/$k" x > /dev/null 2>&1; do :; done
  echo "kill $k (node $l): $(( $(now_ms) - t0 )) ms"
  start "$l"
  survivors=$(for i in 1 2 3; do if [ "$i" != "$l" ]; then echo -n "$i "; fi; done)
  leader $survivors > /dev/null
  # Wait until the restarted node has caught up with the leader's log (its applied index
  # from disk is not enough: a node behind the leader costs the next election a round).
  nl=$(leader $survivors)
  for _ in $(seq 1 600); do
    applied() { curl -s "127.0.0.1:${ports[$(($1+2))]}/metrics" 2>/dev/null | sed -n "s/^strata_metastore_last_applied_index //p" || true; }
    m=$(applied "$l"); t=$(applied "$nl")
    [ -n "$m" ] && [ -n "$t" ] && [ "$m" -ge "$t" ] && break; sleep 0.05
  done
done | tee "$work/fo.txt"
python3 - "$work/fo.txt" <<'PY'
import re, statistics, sys
v = [int(m.group(1)) for m in (re.search(r": (\d+) ms", l) for l in open(sys.argv[1])) if m]
print("failover median %d ms, max %d ms over %d kills" % (statistics.median(v), max(v), len(v)))
PY

#!/usr/bin/env bash
# Ledger add throughput and latency against bookies on loopback (`strata perf ledger`: a
# metastore and bookie servers in one process, QUIC, RocksDB, fsync per group commit), next to
# the disk's dsync limits measured in the same run.
#   bench/ledger.sh [runs=3] [seconds=10]
# Cases: 1 KB and 64 KB entries; E3/Qw3/Qa2 on three bookies and E1/Qw1/Qa1 on one; payloads
# in RocksDB blob files and inline. Prints every run's summary and the median per case.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
secs="${2:-10}"
strata="${CARGO_TARGET_DIR:-target}/release/strata"
cargo build --release --quiet --bin strata
mkdir -p ./data
work=$(mktemp -d ./data/bench-ledger.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r), $(df -h . | awk 'NR==2{print $1}')"
bench/disk.sh "$work"

median() { # file
  python3 - "$1" <<'PY'
import re, statistics, sys
rows = [l for l in open(sys.argv[1]) if l.startswith("ledger-add summary")]
def col(pat):
    return statistics.median(float(re.search(pat, l).group(1)) for l in rows)
print("median (%d runs): %.0f entries/s, %.1f MB/s, p50 %.2f ms, p99 %.2f ms, p999 %.2f ms" % (
    len(rows), col(r"= (\d+) msg/s"), col(r"msg/s ([\d.]+) MB/s"),
    col(r"p50 ([\d.]+)"), col(r"p99 ([\d.]+)"), col(r"p999 ([\d.]+)")))
PY
}

for size in 1024 65536; do
  for quorum in "3 3 3 2" "1 1 1 1"; do
    for blobs in on off; do
      set -- $quorum
      flags=(--bookies "$1" --ensemble "$2" --write-quorum "$3" --ack-quorum "$4" --size "$size" --duration-secs "$secs")
      [ "$blobs" = off ] && flags+=(--no-blob-files)
      echo "## $size B entries, E$2/Qw$3/Qa$4 on $1 bookie(s), blob files $blobs"
      for i in $(seq 1 "$runs"); do
        "$strata" perf ledger "${flags[@]}" --data-dir "$work/run" 2>/dev/null | grep summary
        rm -rf "$work/run"
      done | tee "$work/out.txt"
      median "$work/out.txt"
    done
  done
done

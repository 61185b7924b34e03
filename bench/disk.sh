#!/usr/bin/env bash
# The disk's own limits for synchronous writes, in the directory given (default: a temp dir
# under ./data): dd with oflag=dsync at 1 MiB and at 4 KiB blocks. Prints one line each.
set -euo pipefail
dir="${1:-./data/bench-disk}"
mkdir -p "$dir"
f="$dir/dd.tmp"
one() { # block size, count
  dd if=/dev/zero of="$f" bs="$1" count="$2" oflag=dsync 2>&1 | tail -1
  rm -f "$f"
}
echo "dd bs=1M oflag=dsync: $(one 1M 256)"
echo "dd bs=4k oflag=dsync: $(one 4k 2000)"

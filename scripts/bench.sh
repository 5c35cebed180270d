#!/usr/bin/env bash
# Throughput figures: the demo (1M items, mockapi with no latency) and a 1M-item run against
# mockapi --latency-ms 20, each RUNS times (default 3), printing items/s per run and the median.
# Everything runs on loopback on this machine; mockapi shares its cores with the fleet.
# usage: scripts/bench.sh [ITEMS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
ITEMS="${1:-1000000}"
RUNS="${2:-3}"
cargo build --release -q --bin supervisor
BIN=target/release/supervisor

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
rate() { grep -o '([0-9,]* items/s)' | tr -d '(),' | awk '{print $1}'; }

bench() {
  local name="$1"; shift
  local rates=()
  for i in $(seq "$RUNS"); do
    r=$("$BIN" demo --items "$ITEMS" "$@" 2>/dev/null | rate)
    echo "  $name run $i: $r items/s"
    rates+=("$r")
  done
  echo "$name median: $(printf '%s\n' "${rates[@]}" | median) items/s ($*)"
}

echo "flota bench: $ITEMS items, $RUNS runs each, $(nproc) cores"
bench "demo (latency 0)" --workers 4 --threads 32
bench "latency 20ms" --latency-ms 20 --workers 16 --threads 64

#!/usr/bin/env bash
# Memory over a long run: starts `supervisor demo --items N` and prints the supervisor's RSS
# and the ids stored so far every few seconds, so a flat line (or not) can be seen.
# usage: scripts/memory.sh [ITEMS] [EVERY_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ITEMS="${1:-2000000}"
EVERY="${2:-5}"
cargo build --release -q --bin supervisor
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
RUST_LOG=info target/release/supervisor demo --items "$ITEMS" >"$log" 2>&1 &
pid=$!
echo "seconds  supervisor_rss_mib  stored"
t=0
while kill -0 "$pid" 2>/dev/null; do
  sleep "$EVERY"; t=$((t + EVERY))
  rss=$(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$pid/status" 2>/dev/null || true)
  stored=$(grep -o 'progress: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  [ -n "$rss" ] && printf "%7d  %18s  %s\n" "$t" "$rss" "${stored:-0}"
done
wait "$pid"
grep -E "fetched" "$log"

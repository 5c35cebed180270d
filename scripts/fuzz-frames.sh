#!/usr/bin/env bash
# Fuzzes the frame decoder with N mutated inputs (default 1,000,000) and prints a tally.
# usage: scripts/fuzz-frames.sh [N] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
FLOTA_FUZZ_INPUTS="${1:-1000000}" FLOTA_FUZZ_SEED="${2:-24301}" \
  cargo test --release -q -p shared --test fuzz_frames -- --ignored --nocapture the_decoder_survives_many

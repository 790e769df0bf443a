#!/usr/bin/env bash
# Cost accounting vs measured speed (issue 5): for each model, the counted MACs by component and, per merge
# setting, the MACs ratio next to the measured wall-clock speed-up with its 95% interval (mergeplug.timing).
# Writes benchmarks/cost/<name>.txt and .json. Took about 7 minutes on 2 cores (2026-11-25).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-benchmarks/cost}
REPS=${REPS:-6}
mkdir -p "$OUT"
run() {  # name, then mergeplug-eval profile arguments
  local name=$1; shift
  echo "== $name" >&2
  "$BIN/mergeplug-eval" profile "$@" --reps "$REPS" --json "$OUT/$name.json" | tee "$OUT/$name.txt"
}
run chronos-t5-small --model random:chronos-t5-small --batch 8 --context 512 --horizon 64 \
  --merge k=1,reduction=0.75 --merge k=global,reduction=0.75 --merge k=1,reduction=0.9,schedule=front-input
run chronos-bolt-small-2048 --model random:chronos-bolt-small --batch 8 --context 2048 --horizon 64 \
  --merge k=1,reduction=0.75 --merge k=global,reduction=0.75 --merge k=1,reduction=0.9,schedule=front-input
run chronos-2-small --model random:chronos-2-small --batch 8 --context 2048 --horizon 64
run patchtst-electricity --model mergeplug:patchtst --dataset electricity_hourly --batch 32 \
  --merge k=3,reduction=0.75 --merge k=global,reduction=0.75
run tst-electricity --model mergeplug:tst --dataset electricity_hourly --batch 8

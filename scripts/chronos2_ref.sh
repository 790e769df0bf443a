#!/usr/bin/env bash
# The Chronos-2 reference (`mergeplug:chronos2-ref`): training in three stages, export, quality gates, frontier
# (test and validation windows) and pre-check calibration. Every stage resumes (training from its checkpoint,
# evaluations from their results).
#
#   scripts/chronos2_ref.sh                 # everything, in order
#   STAGE=gates scripts/chronos2_ref.sh     # one stage: train1, train2, train3, export, gates, frontier,
#                                           # validation, precheck
#
# Stage 1 (10,000 steps of 32 windows, context 2,048): the recipe's defaults (every offline training part with equal
# weight per dataset, TSMixup, KernelSynth, groups of related series). Stage 2 (2,000 steps, from stage 1): the
# five long hourly series weighted 3:1 against each M1 / M3 set, contexts of at least 256 steps, less KernelSynth,
# a lower learning rate: the long context is what the frontier measures. Stage 3 (3,000 steps, from stage 2, same
# data): merge-aware (below). Runs live in RUNS (default runs/); the shipped model is EXPORT.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUNS=${RUNS:-runs}
STAGE=${STAGE:-all}
OUT=${OUT:-benchmarks/chronos2-ref}
TIME_LIMIT=${TIME_LIMIT:-170}
LONG="electricity_hourly sf_traffic_hourly solar_hourly wind_hourly traffic_volume_hourly"
MSETS="m1_yearly m1_quarterly m1_monthly m3_yearly m3_quarterly m3_monthly m3_other"
ZERO="tourism_yearly tourism_quarterly tourism_monthly bikesharing_hourly taylor_30min m4_hourly_sample"
EXPORT=${EXPORT:-$RUNS/export-chronos2-ref}
# shellcheck disable=SC2086
DATA=(--datasets $LONG $MSETS --dataset-weights 3 3 3 3 3 1 1 1 1 1 1 1 --mix 0.7 0.2 0.1 --min-context 256
      --curriculum-steps 0 --batch-size 32 --threads "${THREADS:-1}" --time-limit "$TIME_LIMIT" --no-progress)

want() { [[ "$STAGE" == all || "$STAGE" == "$1" ]]; }

if want train1; then
  "$BIN/mergeplug-train" chronos-2 --out "$RUNS/chronos2-ref" --steps 10000 --batch-size 32 --warmup 300 \
    --threads 1 --time-limit "$TIME_LIMIT" --no-progress
  "$BIN/mergeplug-train" export "$RUNS/chronos2-ref" --out "$RUNS/export-chronos2-stage1" --name chronos2-ref
fi
if want train2; then
  "$BIN/mergeplug-train" chronos-2 --out "$RUNS/chronos2-ref-long" --init-from "$RUNS/export-chronos2-stage1" \
    "${DATA[@]}" --steps 2000 --lr 3e-4 --warmup 100
  "$BIN/mergeplug-train" export "$RUNS/chronos2-ref-long" --out "$RUNS/export-chronos2-stage2" --name chronos2-ref \
    --storage-dtype bfloat16
fi
# Stage 3, merge-aware fine-tuning (ToMe's remedy): every step draws one of these forecast-safe settings or none
# (two in seven steps), so one model learns to forecast unmerged and under each. They protect the last 16-32 patches
# (256-512 steps: up to three weeks of an hourly series), merge the older ones hard and leave proportional attention
# off: at context 2,048, on the stage-2 model, the family default of 8 protected patches costs +10% to +37% WQL and
# log(size) attention bonuses of tokens that average dozens of patches a few percent more
# (benchmarks/chronos2-ref/probes).
P="proportional_attention=false"
ROBUST="none;none;k=global,reduction=0.9,schedule=front,protect_recent=24,$P"
ROBUST="$ROBUST;k=global,reduction=0.9,schedule=input,protect_recent=24,$P"
ROBUST="$ROBUST;k=global,reduction=0.9,schedule=front-input,protect_recent=32,$P"
ROBUST="$ROBUST;k=1,reduction=0.75,protect_recent=24,$P;k=global,reduction=0.75,schedule=input,protect_recent=16,$P"
if want train3; then
  "$BIN/mergeplug-train" chronos-2 --out "$RUNS/chronos2-ref-robust" --init-from "$RUNS/export-chronos2-stage2" \
    --merge "$ROBUST" "${DATA[@]}" --steps 3000 --lr 3e-4 --warmup 50
fi
if want export; then
  "$BIN/mergeplug-train" export "$RUNS/chronos2-ref-robust" --out "$EXPORT" --name chronos2-ref \
    --storage-dtype bfloat16
fi
if want gates; then
  # in-domain (test windows of the five long series) at 512, 1,024 and 2,048 steps of context; zero-shot at 2,048
  for c in 512 1024 2048; do
    # shellcheck disable=SC2086
    "$BIN/mergeplug-eval" run --model "$EXPORT" --datasets $LONG --context "$c" --reps 6 --out "$OUT/gates/long-$c" \
      --no-progress > /dev/null
  done
  # shellcheck disable=SC2086
  "$BIN/mergeplug-eval" run --model "$EXPORT" --datasets $MSETS $ZERO --reps 6 --out "$OUT/gates/zero-shot" \
    --no-progress > /dev/null
  "$BIN/python" scripts/chronos2_gates.py "$OUT/gates" | tee "$OUT/gates/gates.md"
fi
if want validation; then  # the long-context defaults, chosen on validation windows before any test window
  "$BIN/python" scripts/chronos2_frontier.py "$EXPORT" "$OUT/validation" --only validation
fi
if want frontier; then
  "$BIN/python" scripts/chronos2_frontier.py "$EXPORT" "$OUT/frontier"
fi
if want precheck; then
  "$BIN/mergeplug-eval" precheck-validate --model "$EXPORT" --context 2048 --stride 16 --merging safe \
    --out "$OUT/precheck" --no-progress
fi

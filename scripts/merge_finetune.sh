#!/usr/bin/env bash
# Merge-aware fine-tuning of the shipped Chronos-Bolt reference model: training continues from its weights with a
# merge setting on (forecast-safe defaults), so the model learns to forecast from merged tokens (as ToMe trains with
# merging). Then the harness compares, on the eight datasets it was trained on (their test windows were held out of
# training), the original model unmerged with the fine-tuned one merged. Resumable: re-run to continue.
#   scripts/merge_finetune.sh                               # k=1, reduction 0.75, 1500 steps (float32)
#   MERGE=k=global,reduction=0.75 TAG=-global scripts/merge_finetune.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
STEPS=${STEPS:-1500}
MERGE=${MERGE:-k=1,reduction=0.75}
DATASETS=(electricity_hourly sf_traffic_hourly solar_hourly wind_hourly traffic_volume_hourly bikesharing_hourly
          taylor_30min m4_hourly_sample)
OUT=runs/mergeft-bolt-ref${TAG:-}
# the recipe of the shipped model (a fine-tuning run rebuilds it, then loads the weights)
"$BIN/mergeplug-train" bolt --out "$OUT/run" --datasets "${DATASETS[@]}" --synthetic 0 --mix 0.8 0.2 0.0 \
  --batch-size 64 --lr 0.0002 --warmup 100 --steps "$STEPS" --threads 1 \
  --init-from assets/mergeplug_assets/checkpoints/bolt-ref --merge "$MERGE" --no-bf16 --no-progress
"$BIN/mergeplug-train" export "$OUT/run" --out "$OUT/model" --name bolt-ref-mergeft
# the fine-tuned weights, unmerged and merged (the harness loads the weights; --merge applies the settings)
"$BIN/mergeplug-eval" run --model "$OUT/model" --datasets "${DATASETS[@]}" --merge "$MERGE" \
  --merge k=3,reduction=0.75 --merge k=global,reduction=0.75 --out "$OUT/eval" --no-progress

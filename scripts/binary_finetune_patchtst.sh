#!/usr/bin/env bash
# Sparse-binary fine-tuning of the shipped global PatchTST (scores + norms only, signs and initial masks from the
# trained weights), at two densities in parallel (one thread each), then the harness on its eight datasets.
# Resumable (re-run to continue). Results: runs/binft/eval-<density>/ (report.md) and the exported models.
set -euo pipefail
BIN=${BIN:-.venv/bin}
STEPS=${STEPS:-1500}
RECIPE=(--d-model 64 --d-ff 128 --heads 4 --d-kv 32 --encoder-layers 3 --decoder-layers 0 --dropout 0.1
        --context-length 512 --horizon 48 --dataset global --num-samples 100 --distribution student_t
        --patch-length 16 --patch-stride 8 --synthetic 0 --mix 1.0 0.0 0.0
        --train-on electricity_hourly sf_traffic_hourly solar_hourly wind_hourly traffic_volume_hourly
                   bikesharing_hourly taylor_30min m4_hourly_sample
        --datasets electricity_hourly sf_traffic_hourly solar_hourly wind_hourly traffic_volume_hourly
                   bikesharing_hourly taylor_30min m4_hourly_sample)
DATASETS=(electricity_hourly sf_traffic_hourly solar_hourly wind_hourly traffic_volume_hourly bikesharing_hourly
          taylor_30min m4_hourly_sample)
for d in 0.5 0.25; do
  "$BIN/mergeplug-train" patchtst --out "runs/binft/run-$d" "${RECIPE[@]}" --steps "$STEPS" --batch-size 64 \
    --lr 0.01 --warmup 50 --threads 1 --no-progress --init-from mergeplug/checkpoints/patchtst_global \
    --binary-density "$d" --binary-exclude "*head*" &
done
wait
for d in 0.5 0.25; do
  "$BIN/mergeplug-train" export "runs/binft/run-$d" --out "runs/binft/patchtst_global-binary-$d"
  "$BIN/mergeplug-eval" run --model "runs/binft/patchtst_global-binary-$d" --datasets "${DATASETS[@]}" \
    --out "runs/binft/eval-$d" --no-progress
done

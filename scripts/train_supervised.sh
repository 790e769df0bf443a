#!/usr/bin/env bash
# Train the supervised per-dataset reference models (PatchTST, TimeSeriesTransformer) on one CPU thread.
# Resumable: rerunning continues every run from its checkpoint. Logs: runs/<model>-<dataset>/log.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN=${TRAIN:-.venv/bin/mergeplug-train}
DATASETS=${DATASETS:-"electricity_hourly sf_traffic_hourly solar_hourly wind_hourly traffic_volume_hourly bikesharing_hourly taylor_30min"}
common="--threads 1 --no-bf16 --batch-size 32 --warmup 100 --log-every 100 --checkpoint-every 250 --no-progress"
for ds in $DATASETS; do
  $TRAIN patchtst --dataset "$ds" --out "runs/patchtst-$ds" --steps 3000 $common
done
for ds in $DATASETS; do
  $TRAIN tst --dataset "$ds" --out "runs/tst-$ds" --steps 1500 $common
done

#!/usr/bin/env bash
# Sparse-binary fine-tuning of a shipped reference model (scores + norms only, signs and initial masks from the
# trained weights), at two densities in parallel (one thread each), then the harness on the eight datasets it was
# trained on. Resumable (re-run to continue). Results: runs/binft-<model>/eval-<density>/ and the exported models.
#   scripts/binary_finetune.sh                      # the global PatchTST (densities 0.5 and 0.25, 1500 steps)
#   MODEL=bolt-ref scripts/binary_finetune.sh       # the Chronos-Bolt reference model
#   MODEL=bolt-ref EXCLUDE='*input_patch_embedding*' TAG=-outbin scripts/binary_finetune.sh
#                                                   # ... with its output patch block binarized too
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
MODEL=${MODEL:-patchtst_global}
STEPS=${STEPS:-1500}
DENSITIES=${DENSITIES:-"0.5 0.25"}
DATASETS=(electricity_hourly sf_traffic_hourly solar_hourly wind_hourly traffic_volume_hourly bikesharing_hourly
          taylor_30min m4_hourly_sample)
case "$MODEL" in
  patchtst_global)
    # the recipe of the shipped model (a fine-tuning run rebuilds it, then loads the weights)
    RECIPE=(patchtst --d-model 64 --d-ff 128 --heads 4 --d-kv 32 --encoder-layers 3 --decoder-layers 0 --dropout 0.1
            --context-length 512 --horizon 48 --dataset global --num-samples 100 --distribution student_t
            --patch-length 16 --patch-stride 8 --synthetic 0 --mix 1.0 0.0 0.0 --train-on "${DATASETS[@]}"
            --datasets "${DATASETS[@]}" --batch-size 64 --lr 0.01 --warmup 50)
    EXCLUDE=${EXCLUDE:-"*head*"} ;;  # the distribution head stays float
  bolt-ref)
    RECIPE=(bolt --datasets "${DATASETS[@]}" --synthetic 0 --mix 0.8 0.2 0.0 --batch-size 64 --lr 0.01 --warmup 50)
    EXCLUDE=${EXCLUDE:-"*patch_embedding*"} ;;  # Bolt's input / output patch blocks stay float; every T5 projection is binary
  *) echo "MODEL must be patchtst_global or bolt-ref" >&2; exit 2 ;;
esac
OUT=runs/binft-$MODEL${TAG:-}
for d in $DENSITIES; do
  "$BIN/mergeplug-train" "${RECIPE[@]}" --out "$OUT/run-$d" --steps "$STEPS" --threads 1 --no-progress \
    --init-from "assets/mergeplug_assets/checkpoints/$MODEL" --binary-density "$d" --binary-exclude "$EXCLUDE" &
done
wait
for d in $DENSITIES; do
  "$BIN/mergeplug-train" export "$OUT/run-$d" --out "$OUT/$MODEL-binary-$d"
  "$BIN/mergeplug-eval" run --model "$OUT/$MODEL-binary-$d" --datasets "${DATASETS[@]}" --out "$OUT/eval-$d" \
    --no-progress
done

#!/usr/bin/env bash
# Train the Chronos reference models (Chronos-Bolt and Chronos-T5 architectures) on the training parts of the
# eight long offline series, one CPU thread each (the two run side by side), then evaluate them with the harness
# (in-domain: the eight series' test windows; zero-shot: M1 / M3 / Tourism) and export them with a model card.
#
# Resumable: rerunning continues each run from its checkpoint (raise STEPS to train longer). Logs:
# runs/<name>/log.jsonl. Each training stops after TIME_LIMIT minutes with a checkpoint.
#   ONLY=bolt scripts/train_chronos_refs.sh        # one of them
#   STAGE=eval scripts/train_chronos_refs.sh       # skip training, evaluate + export the latest checkpoints
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
ONLY=${ONLY:-"bolt chronos-t5"}
STAGE=${STAGE:-all}
TIME_LIMIT=${TIME_LIMIT:-100}
SEEN="electricity_hourly sf_traffic_hourly solar_hourly wind_hourly traffic_volume_hourly bikesharing_hourly taylor_30min m4_hourly_sample"
ZERO_SHOT="m1_yearly m1_quarterly m1_monthly m3_yearly m3_quarterly m3_monthly m3_other tourism_yearly tourism_quarterly tourism_monthly"
# real windows and TSMixup mixtures of them (no KernelSynth: it slowed the hourly skill down in earlier runs)
DATA="--datasets $SEEN --synthetic 0 --mix 0.8 0.2 0.0 --lr 1e-3 --warmup 200 --threads 1 --no-progress"

run_dir() { case "$1" in bolt) echo runs/bolt8 ;; chronos-t5) echo runs/t5-8 ;; esac; }
ship_name() { case "$1" in bolt) echo bolt-ref ;; chronos-t5) echo chronos-t5-ref ;; esac; }

if [[ "$STAGE" != eval ]]; then
  for m in $ONLY; do
    case "$m" in
      bolt) extra="--steps ${STEPS:-16000} --batch-size 64 --curriculum-steps 1500" ;;
      chronos-t5) extra="--steps ${STEPS:-6000} --batch-size 32 --curriculum-steps 1000" ;;
    esac
    # shellcheck disable=SC2086
    "$BIN/mergeplug-train" "$m" --out "$(run_dir "$m")" $DATA $extra --time-limit "$TIME_LIMIT" &
  done
  wait
fi

for m in $ONLY; do
  run=$(run_dir "$m")
  name=$(ship_name "$m")
  "$BIN/mergeplug-train" export "$run" --out "runs/export-$name" --name "$name"
  # shellcheck disable=SC2086
  "$BIN/mergeplug-eval" run --model "runs/export-$name" --datasets $SEEN $ZERO_SHOT --reps 1 \
    --merge k=1,reduction=0.5 --merge k=1,reduction=0.75 --merge k=global,reduction=0.75 --out "runs/eval-$name"
  "$BIN/mergeplug-train" card "runs/export-$name" --name "$name" --eval-dir "runs/eval-$name"
done

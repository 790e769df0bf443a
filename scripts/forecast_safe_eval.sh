#!/usr/bin/env bash
# The forecast-safe merging acceptance grid on the test windows: k in {1, 3, global} x reduction in {0.25, 0.5,
# 0.75}, with the forecast-safe defaults and (Bolt, PatchTST) plain merging (safe=false) beside them, through the
# harness (accuracy, speed-up, MACs). The defaults were chosen on the validation windows (scripts/forecast_safe_study.py);
# these runs are the held-out check. Resumable: re-run to continue. Results in benchmarks/forecast-safe/.
#   scripts/forecast_safe_eval.sh bolt | patchtst | tst
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-benchmarks/forecast-safe}
SAFE=() PLAIN=()
for k in 1 3 global; do
  for red in 0.25 0.5 0.75; do
    SAFE+=(--merge "k=$k,reduction=$red")
    PLAIN+=(--merge "k=$k,reduction=$red,safe=false")
  done
done
case "${1:-bolt}" in
  bolt)  # in-domain: the eight long series; zero-shot: M1 / M3 / Tourism
    "$BIN/mergeplug-eval" run --model mergeplug:bolt-ref --datasets offline "${SAFE[@]}" "${PLAIN[@]}" \
      --out "$OUT/bolt-ref" --no-progress ;;
  patchtst)
    "$BIN/mergeplug-eval" run --model mergeplug:patchtst_global --datasets long "${SAFE[@]}" "${PLAIN[@]}" \
      --out "$OUT/patchtst-global" --no-progress ;;
  tst)  # slow (the decoder samples 100 paths step by step): the last 5 of the 20 test windows, one timing repetition
    "$BIN/python" - "$OUT/tst" "${SAFE[@]}" <<'PY'
import sys
from dataclasses import replace

from mergeplug.eval.data import load_dataset
from mergeplug.eval.run import run

names = ["electricity_hourly", "traffic_volume_hourly", "taylor_30min", "bikesharing_hourly", "wind_hourly"]
datasets = [replace(load_dataset(n), windows=5) for n in names]
merges = sys.argv[3::2]  # --merge X --merge Y ...
run("mergeplug:tst", datasets, merges, out=sys.argv[1], reps=1, timing_windows=5, progress=False)
PY
    ;;
  *) echo "usage: $0 bolt | patchtst | tst" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The sparse-binary experiments behind the README table (resumable: re-run to continue; finished runs are skipped).
# Two processes, one thread each. Results: runs/sbt/<task>/<variant>/seed<k>/result.json; table: mergeplug-sbt report.
set -euo pipefail
OUT=${OUT:-runs/sbt}
SB="${MERGEPLUG_SBT:-.venv/bin/mergeplug-sbt}"
(
  $SB train --task japanese_vowels basic_motions --variant dense sparse-binary --seeds 0 1 2 --threads 1 --out "$OUT"
  $SB train --task kdd_tsad_135 --variant dense dense-step-t sparse-binary --seeds 0 1 2 --epochs 150 --patience 40 \
    --batch-size 64 --threads 1 --out "$OUT"
  $SB train --task pm25 --variant dense dense-step-t sparse-binary --seeds 0 1 2 --epochs 30 --patience 8 \
    --batch-size 64 --max-batches 100 --threads 1 --out "$OUT"
) &
(
  $SB train --task pm25_injected household_power --variant dense dense-step-t sparse-binary --seeds 0 1 2 --epochs 30 \
    --patience 8 --batch-size 64 --max-batches 100 --threads 1 --out "$OUT"
) &
wait
$SB report --out "$OUT" --md "$OUT/table.md" --json "$OUT/table.json" --plot "$OUT/plot.png"

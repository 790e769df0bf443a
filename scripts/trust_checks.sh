#!/usr/bin/env bash
# Measurements a user can trust (the shared timer, no-op settings named, tune deciding on evidence), on user-style
# CSV files (scripts/trust_data.py) with the shipped Chronos-Bolt reference. Results in benchmarks/trust/.
#   scripts/trust_checks.sh                  every step below (about 15 minutes on 2 cores)
#   SMALL_ONLY=1 scripts/trust_checks.sh     only tune at Chronos-Bolt small dimensions (quiet, killed, loaded)
#   LOAD_ONLY=1 scripts/trust_checks.sh      only the runs under load
# The runs "under load" have a CPU-bound process (scripts/trust_checks.sh's burner: a Python busy loop on one core)
# running beside them; the others should run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-benchmarks/trust}
DATA="$OUT/data"
"$BIN/python" scripts/trust_data.py "$DATA"
MERGES=(--merge k=1,reduction=0.5 --merge k=1,reduction=0.75 --merge k=global,reduction=0.75
        --merge k=1,reduction=0.9,schedule=front-input,safe=false)
DAILY=(--model mergeplug:bolt-ref --datasets "file:$DATA/daily.csv" --prediction-length 28 --windows 3)
# Chronos-Bolt small dimensions (random weights, context 2,048 = 129 tokens): merging pays there, so tune's choice
# between settings that qualify is what must not move with load; the tolerance is wide (random weights: accuracy
# is meaningless), the candidates are three settings that merge
SMALL=(--model random:chronos-bolt-small --datasets "file:$DATA/daily.csv" --prediction-length 28 --windows 3
       --tolerance 10 --merge k=1,reduction=0.5 --merge k=1,reduction=0.75 --merge k=global,reduction=0.75)
QUARTERLY=(--model mergeplug:bolt-ref --datasets "file:$DATA/quarterly.csv" --prediction-length 8 --windows 1)
burn() {  # one busy core for $1 seconds, in the background
  "$BIN/python" -c "import time; end = time.time() + $1
while time.time() < end: pass" &
}
tune_small() {  # quiet, then killed part way (SIGKILL) and resumed into the same folder
  rm -rf "$OUT/tune-small" "$OUT/tune-small-killed"
  "$BIN/mergeplug-eval" tune "${SMALL[@]}" --out "$OUT/tune-small" --no-progress > "$OUT/tune-small.md"
  timeout -s KILL 15 "$BIN/mergeplug-eval" tune "${SMALL[@]}" --out "$OUT/tune-small-killed" --no-progress \
    > /dev/null 2>&1 || true
  wc -l < "$OUT/tune-small-killed/"*/*/tune.jsonl > "$OUT/tune-small-killed.rows-before-resume"
  "$BIN/mergeplug-eval" tune "${SMALL[@]}" --out "$OUT/tune-small-killed" --no-progress > "$OUT/tune-small-killed.md"
}
if [ -n "${SMALL_ONLY:-}" ]; then
  tune_small
elif [ -z "${LOAD_ONLY:-}" ]; then
  for i in 1 2; do
    rm -rf "$OUT/daily-$i"
    "$BIN/mergeplug-eval" run "${DAILY[@]}" "${MERGES[@]}" --out "$OUT/daily-$i" --no-progress > "$OUT/daily-$i.md"
  done
  rm -rf "$OUT/quarterly"
  "$BIN/mergeplug-eval" run "${QUARTERLY[@]}" "${MERGES[@]}" --out "$OUT/quarterly" --no-progress > "$OUT/quarterly.md"
  rm -rf "$OUT/tune-quarterly"
  "$BIN/mergeplug-eval" tune "${QUARTERLY[@]}" --out "$OUT/tune-quarterly" --no-progress > "$OUT/tune-quarterly.md"
  rm -rf "$OUT/tune-daily"
  "$BIN/mergeplug-eval" tune "${DAILY[@]}" --tolerance 0.05 --out "$OUT/tune-daily" --no-progress \
    > "$OUT/tune-daily.md"
  # killed (SIGKILL) part way, then resumed into the same folder
  rm -rf "$OUT/tune-daily-killed"
  timeout -s KILL 25 "$BIN/mergeplug-eval" tune "${DAILY[@]}" --tolerance 0.05 --out "$OUT/tune-daily-killed" \
    --no-progress > /dev/null 2>&1 || true
  wc -l < "$OUT/tune-daily-killed/"*/*/tune.jsonl > "$OUT/tune-daily-killed.rows-before-resume"
  "$BIN/mergeplug-eval" tune "${DAILY[@]}" --tolerance 0.05 --out "$OUT/tune-daily-killed" --no-progress \
    > "$OUT/tune-daily-killed.md"
  tune_small
fi
rm -rf "$OUT/tune-small-load"
burn 600
BURNER=$!
trap 'kill $BURNER 2>/dev/null || true' EXIT
if [ -z "${SMALL_ONLY:-}" ]; then
  rm -rf "$OUT/daily-load" "$OUT/tune-daily-load"
  "$BIN/mergeplug-eval" run "${DAILY[@]}" "${MERGES[@]}" --out "$OUT/daily-load" --no-progress > "$OUT/daily-load.md"
  "$BIN/mergeplug-eval" tune "${DAILY[@]}" --tolerance 0.05 --out "$OUT/tune-daily-load" --no-progress \
    > "$OUT/tune-daily-load.md"
fi
"$BIN/mergeplug-eval" tune "${SMALL[@]}" --out "$OUT/tune-small-load" --no-progress > "$OUT/tune-small-load.md"

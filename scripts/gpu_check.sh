#!/usr/bin/env bash
# The GPU check, for a CUDA machine: from a checkout where `make install` ran (or any Python with mergeplug[test]),
#
#     bash scripts/gpu_check.sh [OUT]          # OUT defaults to results/gpu_check
#
# 1. OUT/env.txt: torch, CUDA, the GPU;
# 2. OUT/tests_cuda.txt: the merge guarantees on the GPU (tests/test_cuda.py: r=0 / remove() bitwise, merged
#    outputs finite and equal to the CPU's, float32 and bfloat16, strict causal mode, exact fast sampling);
#    FULL=1 also runs the whole suite with the GPU visible (OUT/tests_all.txt);
# 3. OUT/bench_families_bf16.{txt,json}: every family merged vs unmerged on the GPU in bfloat16 (context 2048;
#    causal LMs also at 512): MACs ratio, speed-up, efficiency, tokens, output change.
# Stops at the first failure (set -e, pipefail); what ran until then stays in OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results/gpu_check}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"
"$PY" - <<'PY' | tee "$OUT/env.txt"
import torch

import mergeplug

assert torch.cuda.is_available(), "no CUDA device visible: run scripts/gpu_check.sh on a GPU machine"
props = torch.cuda.get_device_properties(0)
print(f"mergeplug {mergeplug.__version__}, torch {torch.__version__}, CUDA {torch.version.cuda}")
print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, bf16 supported: {torch.cuda.is_bf16_supported()}")
PY
MERGEPLUG_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/tests_cuda.txt"
if [ "${FULL:-0}" = "1" ]; then
    "$PY" -m pytest -q -p no:cacheprovider 2>&1 | tee "$OUT/tests_all.txt"
fi
"$PY" -m mergeplug_lab.bench_families --device cuda --dtype bfloat16 --context 2048 --reps 5 \
    --out "$OUT/bench_families_bf16.json" | tee "$OUT/bench_families_bf16.txt"
"$PY" -m mergeplug_lab.bench_families --device cuda --dtype bfloat16 --cases causal-lm --context 512 --reps 5 \
    --out "$OUT/bench_families_bf16_512.json" | tee "$OUT/bench_families_bf16_512.txt"
echo "gpu check done: $OUT"

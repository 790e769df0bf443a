# Everything runs from a virtual environment that this Makefile creates (.venv), so a fresh machine needs
# only python3 (>= 3.10) and make. torch is installed first as the local CPU build (torch==2.13.0); the
# project's own range (torch>=2.2,<3) then installs nothing more.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mergeplug-installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test bench bench-sampling bench-overhead bench-families profile eval-quick eval-full train-supervised sbt clean \
	forecast-safe core-install

install: $(STAMP)

# The shipped reference models and datasets (assets/, mergeplug-assets) and the lab (lab/, mergeplug-lab: training,
# benchmarks, the compact Transformer) are their own distributions (not on PyPI), so the library wheel stays small;
# installed here from the checkout, editable, in one pip call (the lab needs the library installed beside it): the
# harness, `make demo` and the tests read the assets offline, and `mergeplug-train export` writes into
# assets/mergeplug_assets/checkpoints.
$(STAMP): pyproject.toml assets/pyproject.toml lab/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[eval,test]" -e ./assets -e ./lab
	touch $(STAMP)

# Main job: merged vs unmerged Chronos-T5 (tiny dims, random weights), speed and output difference; stock vs fast
# sampling (identical samples); then a quick offline evaluation with the harness: the shipped, trained PatchTST
# models, unmerged and merged, on real data.
demo: $(STAMP)
	$(BIN)/mergeplug-bench --size tiny --batch 4 --horizon 24 --reductions 0.9 --k 1,global --schedule constant,front-input \
		--time-budget 10
	$(BIN)/python -m mergeplug_lab.bench_sampling --size tiny --batches 4 --horizon 24 --time-budget 15 \
		--merge k=1,reduction=0.9,schedule=front-input,safe=false
	$(MAKE) --no-print-directory eval-quick

# The lean install: `pip install .` without extras into a fresh venv; merging on a Hugging Face T5 works and no
# harness dependency (gluonts, datasets, matplotlib, scipy) is installed. CI runs it after `make test`.
core-install:
	TORCH_SPEC="$(TORCH_SPEC)" bash .ci/core_install.sh

test: $(STAMP)
	$(BIN)/ruff check mergeplug lab tests
	$(BIN)/ruff format --check mergeplug lab tests
	$(BIN)/python -m pytest -q

# The README's benchmark table (Chronos-T5 small dims, plain merging; takes ~30 minutes on 2 cores).
bench: $(STAMP)
	$(BIN)/mergeplug-bench --size small --batch 8 --reps 3 --k 1,global --schedule constant,front,front-input --plain \
		--out results/bench_t5_small.json

# Chronos-T5 sampling: stock generate() vs the fast path vs fast path + merging (small dims, batch 8 and 32).
bench-sampling: $(STAMP)
	$(BIN)/python -m mergeplug_lab.bench_sampling --batches 8,32 --reps 3 --out results/bench_sampling.json

# Merging overhead: speed-up vs MACs ratio (efficiency) of the Chronos-T5 / Bolt encoders, tiny and small dims, batch
# 1, 8, 32, one and two threads; and one merge step's time at T = 512 ... 16,384 (resumable; about 15 minutes).
bench-overhead: $(STAMP)
	$(BIN)/python -m mergeplug_lab.bench_overhead --out results/overhead

# Every model family merged vs unmerged at a long context (benchmarks/bench_families*.json; about 40 minutes).
bench-families: $(STAMP)
	$(BIN)/python -m mergeplug_lab.bench_families --context 2048 --out results/bench_families.json
	$(BIN)/python -m mergeplug_lab.bench_families --cases causal-lm --context 512 --out results/bench_families_512.json

# The compact Transformer, dense vs sparse-binary, on the shipped classification / anomaly / forecasting tasks,
# 3 seeds each, 20 for UCR #135 (resumable; about 1.7 hours on 2 cores); tables and plot in runs/sbt/.
sbt: $(STAMP)
	MERGEPLUG_SBT=$(BIN)/mergeplug-sbt scripts/sbt_experiments.sh

# Cost accounting vs measured speed for Chronos-T5 / Bolt / Chronos-2 / PatchTST / TST (benchmarks/cost/, ~7 min).
profile: $(STAMP)
	BIN=$(BIN) scripts/profile_models.sh

# Quick offline evaluation with the harness: accuracy (MASE, WQL vs seasonal naive) and speed of the shipped
# trained Chronos-Bolt and PatchTST models, unmerged and merged (forecast-safe defaults; one plain setting,
# safe=false, beside them), on three real series (about 1 minute).
eval-quick: $(STAMP)
	$(BIN)/mergeplug-eval run --model mergeplug:bolt-ref --datasets electricity_hourly traffic_volume_hourly taylor_30min \
		--merge k=global,reduction=0.75 --merge k=1,reduction=0.5 --merge k=1,reduction=0.5,safe=false \
		--time-budget 8 --out results/demo-bolt --no-progress
	$(BIN)/mergeplug-eval run --model mergeplug:patchtst --datasets electricity_hourly traffic_volume_hourly taylor_30min \
		--merge k=global,reduction=0.75 --merge k=1,reduction=0.75 --merge k=3,reduction=0.75 --out results/demo-patchtst \
		--time-budget 8 --no-progress

# The full offline benchmark: every offline dataset (M1, M3, Tourism, the shipped hourly series), unmerged and
# two merge settings. MODEL defaults to the shipped Chronos-Bolt reference model (trained here on the eight long
# series: those are in-domain, M1 / M3 / Tourism zero-shot); pass MODEL=<local dir or hub id> for another model,
# e.g. MODEL=random:chronos-bolt-small for timing at Bolt-small dimensions (2m42s measured on 2 cores).
MODEL ?= mergeplug:bolt-ref
eval-full: $(STAMP)
	$(BIN)/mergeplug-eval run --model $(MODEL) --datasets offline --merge k=1,reduction=0.75 \
		--merge k=global,reduction=0.75 --out results/full-offline --no-progress

# Per-dataset PatchTST / TimeSeriesTransformer reference runs into runs/ (resumable; about 5 min per PatchTST
# model and 15-30 min per TimeSeriesTransformer on one core).
train-supervised: $(STAMP)
	scripts/train_supervised.sh

# Forecast-safe merging: the validation study that chose the defaults (runs/safe/) and the held-out grid on the test
# windows (benchmarks/forecast-safe/); resumable; about 1 hour on 2 cores.
forecast-safe: $(STAMP)
	BIN=$(BIN) scripts/forecast_safe_experiments.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

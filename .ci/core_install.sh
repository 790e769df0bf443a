#!/usr/bin/env bash
# The lean install: `pip install .` (no extras) into a fresh venv, then merging on a Hugging Face T5 works, none
# of the harness' dependencies (gluonts, datasets, matplotlib, scipy) was installed, the package carries no shipped
# model or dataset (those are mergeplug-assets, assets/) and no lab module (training, benchmarks, the compact
# Transformer: mergeplug-lab, lab/), and the pre-check's calibration loads.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CORE_VENV:-$(mktemp -d)/core-venv}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check .
cd "$(mktemp -d)"  # away from the checkout: the installed package is imported, not the source tree
"$VENV/bin/python" - <<'PY'
import importlib.util
from pathlib import Path

import torch
from transformers import T5Config, T5EncoderModel

import mergeplug

absent = [m for m in ("gluonts", "datasets", "matplotlib", "scipy") if importlib.util.find_spec(m) is not None]
assert not absent, f"the core install pulled in {absent}"
heavy = [p.name for p in Path(mergeplug.__file__).parent.rglob("*") if p.suffix in (".npz", ".safetensors")]
assert not heavy and importlib.util.find_spec("mergeplug_assets") is None, f"the library carries assets: {heavy}"
package = Path(mergeplug.__file__).parent
lab = [p.name for p in package.iterdir() if p.name in ("train", "sbt") or p.name.startswith("bench")]
assert not lab and importlib.util.find_spec("mergeplug_lab") is None, f"the library carries lab modules: {lab}"
from mergeplug.precheck import load_calibration

assert load_calibration()["statistic"]  # the one data file the library ships
torch.manual_seed(0)
cfg = T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=64)
model = T5EncoderModel(cfg).eval()
ids = torch.randint(0, 64, (2, 40))
with torch.no_grad():
    before = model(input_ids=ids).last_hidden_state
    mergeplug.apply(model, k=1, r=8)
    merged = model(input_ids=ids).last_hidden_state
    counts = mergeplug.token_counts(model)
    mergeplug.remove(model)
    after = model(input_ids=ids).last_hidden_state
assert counts == [40, 32, 24], counts
assert torch.equal(before, after)
try:
    import mergeplug.eval  # noqa: F401
except ImportError as exc:
    assert "pip install 'mergeplug[eval]'" in str(exc), exc
    print(f"mergeplug.eval without the extra: {exc}")
else:
    raise AssertionError("mergeplug.eval imported without its extra")
print(f"core install OK: mergeplug {mergeplug.__version__}, T5 encoder tokens per layer {counts}, remove() bitwise, "
      "no assets, calibration loads")
PY

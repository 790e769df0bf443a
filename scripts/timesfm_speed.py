"""TimesFM 2.5 at its published dimensions (random weights: speed only), context 16,384 (512 patches): merged vs
unmerged forecasts, MACs ratio and the speed-up with its 95% interval (``mergeplug.cost.compare``: paired,
interleaved rounds).

    python scripts/timesfm_speed.py --out benchmarks/timesfm [--context 16384] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import TimesFm2_5Config, TimesFm2_5ModelForPrediction

from mergeplug.config import schedule_for_reduction
from mergeplug.cost import compare, format_comparison


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--context", type=int, default=16384)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--time-budget", type=float, default=240.0)
    p.add_argument("--out", default="results/timesfm")
    args = p.parse_args()
    torch.manual_seed(0)
    model = TimesFm2_5ModelForPrediction(TimesFm2_5Config()).eval()  # TimesFM 2.5's own dimensions: 20 x 1280
    layers = model.config.num_hidden_layers
    g = torch.Generator().manual_seed(1)
    t = torch.arange(args.context, dtype=torch.float32)
    series = [10 + 3 * torch.sin(2 * torch.pi * t / 24) + torch.randn(args.context, generator=g).cumsum(0) * 0.1
              for _ in range(args.batch)]  # fmt: skip
    settings = {
        "unmerged": None,
        "safe k=1 75% constant": {"k": 1, "causal": True, **schedule_for_reduction(0.75, layers)},
        "plain k=1 75% constant": {"k": 1, "causal": True, "safe": False, **schedule_for_reduction(0.75, layers)},
        "safe k=1 90% front-input": {"k": 1, "causal": True, **schedule_for_reduction(0.9, layers, "front-input")},
        "plain k=1 90% front-input": {"k": 1, "causal": True, "safe": False,
                                      **schedule_for_reduction(0.9, layers, "front-input")},  # fmt: skip
        "plain global 90% front-input": {"k": None, "causal": True, "safe": False,
                                         **schedule_for_reduction(0.9, layers, "front-input")},  # fmt: skip
    }

    def run() -> torch.Tensor:
        with torch.no_grad():
            return model(past_values=series).mean_predictions

    rows = compare(model, settings, run=run, reps=args.reps, time_budget=args.time_budget, series=args.batch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": "TimesFm2_5ModelForPrediction, TimesFm2_5Config() (random weights)", "context": args.context,
            "batch": args.batch, "threads": torch.get_num_threads(), "torch": torch.__version__}  # fmt: skip
    (out / "speed.json").write_text(json.dumps({"setup": meta, "rows": rows}, indent=1, default=str) + "\n")
    table = format_comparison(rows)
    (out / "speed.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()

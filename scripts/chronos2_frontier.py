"""The long-context frontier of the Chronos-2 reference (issue 30): accuracy on the test windows of the five long
hourly series at contexts 512 / 1,024 / 2,048 through the harness, speed on the reference and at Chronos-2 base
dimensions (random weights, same contexts and settings), one thread.

usage:
  .venv/bin/python scripts/chronos2_frontier.py MODEL OUT [--only dims|validation]

``--only dims`` measures only the base-dimension speed (it does not depend on the trained weights: the token
counts of a setting depend on the context length and the setting). ``--only validation`` scores the forecast-safe
settings on the validation windows (just before the test windows) and writes ``OUT/defaults.json``: per context the
setting :func:`~mergeplug.eval.frontier.choose_default` picks (the long-context defaults). Everything resumes from
OUT.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mergeplug.eval.frontier import _first_windows, choose_default, dims_speed, grid, run_frontier

LONG = ["electricity_hourly", "sf_traffic_hourly", "solar_hourly", "wind_hourly", "traffic_volume_hourly"]
CONTEXTS = (512, 1024, 2048)


def long_variants(context: int, ks: tuple[int | None, ...]) -> list[str]:
    """Forecast-safe settings for long contexts: the last 3/16 of the patches protected (24 of 128 at 2,048 steps)
    instead of the family's 8, proportional attention off; none where that is not more than 8 patches."""
    protect = 3 * (context // 16) // 16
    if protect <= 8:
        return []
    tail = f",protect_recent={protect},proportional_attention=false"
    return [s + tail for s in grid(ks=ks, reductions=(0.75, 0.9), schedules=("front", "front-input", "input"),
                                   safe=(True,))]  # fmt: skip


def settings() -> dict[int, list[str]]:
    """The full grid at the longest context; k in {1, global} x {constant, front-input, input} at the others; the
    long-context variants beside (:func:`long_variants`)."""
    small = grid(ks=(1, None), schedules=("constant", "front-input", "input"))
    return {512: small, 1024: small + long_variants(1024, (1, None)), 2048: grid() + long_variants(2048, (1, 3, None))}


def validation_settings() -> dict[int, list[str]]:
    """The candidates of the long-context defaults: the forecast-safe settings of :func:`settings`."""
    return {c: [s for s in ss if "safe=true" in s] for c, ss in settings().items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--only", choices=["dims", "all", "validation"], default="all")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.only == "dims":
        for context in CONTEXTS:
            batch = _first_windows(LONG[:4], context)
            path = f"{args.out}/ctx{context}/dims_speed.jsonl"
            rows = dims_speed(settings()[context], batch, prediction_length=24, context_length=context, size="base",
                              path=path, budget_s=400, progress=True)  # fmt: skip
            print(context, [(r["setting"], r.get("speedup"), r.get("noop")) for r in rows], flush=True)
        return
    if args.only == "validation":  # the long-context defaults, chosen on the validation windows (no test window)
        result = run_frontier(args.model, LONG, CONTEXTS, out=args.out, settings=validation_settings(), dims=None,
                              timing_windows=20, time_budget=30, validation=True)  # fmt: skip
        chosen = {c: choose_default(points) for c, points in result.items()}
        Path(args.out, "defaults.json").write_text(json.dumps({str(c): p for c, p in chosen.items()}, indent=1))
        for c, p in chosen.items():
            print(c, None if p is None else (p["setting"], p["WQL_change"], p["WQL_worst"], p["macs_ratio"]))
        return
    run_frontier(args.model, LONG, CONTEXTS, out=args.out, settings=settings(), dims="base", dims_batch=4,
                 timing_windows=20, time_budget=30, dims_budget=400)  # fmt: skip


if __name__ == "__main__":
    main()

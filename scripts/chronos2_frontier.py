"""The long-context frontier of the Chronos-2 reference (issue 30): accuracy on the test windows of the five long
hourly series at contexts 512 / 1,024 / 2,048 through the harness, speed on the reference and at Chronos-2 base
dimensions (random weights, same contexts and settings), one thread.

usage:
  .venv/bin/python scripts/chronos2_frontier.py MODEL OUT [--only dims]

``--only dims`` measures only the base-dimension speed (it does not depend on the trained weights: the token
counts of a setting depend on the context length and the setting). Everything resumes from OUT.
"""

from __future__ import annotations

import argparse

import torch

from mergeplug.eval.frontier import _first_windows, dims_speed, grid, run_frontier

LONG = ["electricity_hourly", "sf_traffic_hourly", "solar_hourly", "wind_hourly", "traffic_volume_hourly"]
CONTEXTS = (512, 1024, 2048)


def settings() -> dict[int, list[str]]:
    """The full grid at the longest context; k in {1, global} x {constant, front-input, input} at the others."""
    small = grid(ks=(1, None), schedules=("constant", "front-input", "input"))
    return {512: small, 1024: small, 2048: grid()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--only", choices=["dims", "all"], default="all")
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
    run_frontier(args.model, LONG, CONTEXTS, out=args.out, settings=settings(), dims="base", dims_batch=4,
                 timing_windows=20, time_budget=30, dims_budget=400)  # fmt: skip


if __name__ == "__main__":
    main()

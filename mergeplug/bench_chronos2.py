"""Chronos-2 forward time, merged vs unmerged, at a realistic size and a long context (random weights).

``python -m mergeplug.bench_chronos2`` builds a Chronos-2 with the published *amazon/chronos-2* encoder
dimensions (``base``: d_model 768, d_ff 3072, 12 heads of 64, 12 blocks, 119.5M parameters) and random weights,
forecasts 4 output patches (64 steps) for a batch of series with a context of 2048 (128 patches + [REG] + 4 future
tokens), and compares the unmerged model with merge settings that remove ``--reduction`` of the tokens by the
last block: local (k=1) and global, constant schedule, and k=1 front-loaded. Timing uses
:func:`mergeplug.cost.compare`: per setting a MACs count and a warm-up, then ``--reps`` repetitions interleaved
over the settings; medians. With random weights the output differences only show how far merging moves the
model, not what it costs in accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from . import apply, remove
from .config import schedule_for_reduction
from .cost import compare
from .models import SIZES, chronos2

__all__ = ["run", "format_table", "main"]


def _diffs(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max / mean absolute and relative L2 difference of quantile forecasts (B, Q, H) against the reference."""
    d = (out - ref).abs()
    return {
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "rel_l2_diff": float((out - ref).norm() / ref.norm()),
    }


def run(
    size: str = "base",
    context: int = 2048,
    batch: int = 8,
    group_size: int = 2,
    output_patches: int = 4,
    reps: int = 3,
    reduction: float = 0.75,
    seed: int = 0,
) -> dict[str, Any]:
    """Time and compare the settings; returns ``{"setup": {...}, "rows": [...]}`` (one row per setting).

    Args:
        size: model dimensions (a key of :data:`mergeplug.models.SIZES`).
        context: context length in time steps (the model's context length is set to it).
        batch: number of series (rows).
        group_size: series per group (consecutive rows share a group id; 1 = independent univariate series).
        output_patches: future-patch tokens (forecast horizon = 16 x this).
        reps: timed repetitions per setting (medians).
        reduction: fraction of the tokens removed by the last block in the merged settings.
    """
    torch.manual_seed(seed)
    pipe = chronos2(size, context_length=context, seed=seed)
    model = pipe.model
    num_layers = model.config.num_layers
    t = torch.arange(context, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    ctx = 10 + 3 * torch.sin(2 * torch.pi * t / 24) + torch.randn(batch, context, generator=g).cumsum(-1) * 0.3
    groups = torch.arange(batch) // max(group_size, 1)

    def call() -> torch.Tensor:
        with torch.inference_mode():
            return model(ctx, group_ids=groups, num_output_patches=output_patches).quantile_preds

    settings: dict[str, dict[str, Any] | None] = {
        "unmerged": None,
        f"k=1, constant, -{reduction:.0%}": {"k": 1, **schedule_for_reduction(reduction, num_layers, "constant")},
        f"global, constant, -{reduction:.0%}": {
            "k": None,
            **schedule_for_reduction(reduction, num_layers, "constant"),
        },
        f"k=1, front, -{reduction:.0%}": {"k": 1, **schedule_for_reduction(reduction, num_layers, "front")},
    }
    ref = call()
    diffs = {"unmerged": _diffs(ref, ref)}
    try:
        for label, kw in settings.items():
            if kw:
                apply(model, **kw)
                diffs[label] = _diffs(call(), ref)
    finally:
        remove(model)
    rows = [{**r, **diffs[r["label"]]} for r in compare(model, settings, run=call, reps=reps, series=batch)]
    d_model, d_ff, heads, layers, d_kv = SIZES[size]
    setup = {
        "size": size,
        "d_model": d_model,
        "d_ff": d_ff,
        "heads": heads,
        "layers": layers,
        "d_kv": d_kv,
        "params": sum(p.numel() for p in model.parameters()),
        "context": context,
        "batch": batch,
        "group_size": group_size,
        "output_patches": output_patches,
        "reps": reps,
        "reduction": reduction,
        "threads": torch.get_num_threads(),
    }
    return {"setup": setup, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    """Text table of :func:`run`'s result."""
    s = result["setup"]
    head = (
        f"Chronos-2 {s['size']} dims (d_model {s['d_model']}, {s['layers']} blocks, {s['params'] / 1e6:.1f}M params), "
        f"context {s['context']}, batch {s['batch']} (groups of {s['group_size']}), {s['output_patches']} output "
        f"patches, {s['threads']} threads, medians of {s['reps']}"
    )
    w = max(len(r["label"]) for r in result["rows"]) + 2
    lines = [
        head,
        f"{'setting':<{w}}{'MACs ratio':>11}{'time s':>9}{'speed-up':>10}{'tokens in/last':>16}"
        f"{'max |diff|':>12}{'mean |diff|':>13}{'rel diff':>10}",
    ]
    for r in result["rows"]:
        counts = r.get("token_counts")
        tokens = f"{counts[0]}/{counts[-1]}" if counts else "-"
        lines.append(
            f"{r['label']:<{w}}{r['macs_ratio']:>10.2f}x{r['time_s']:>9.3f}{r['speedup']:>9.2f}x{tokens:>16}"
            f"{r['max_abs_diff']:>12.3e}{r['mean_abs_diff']:>13.3e}{r['rel_l2_diff']:>10.2e}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: run the benchmark, print the table, optionally write JSON."""
    p = argparse.ArgumentParser(prog="python -m mergeplug.bench_chronos2", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="base", choices=sorted(SIZES), help="model dimensions (default: base)")
    p.add_argument("--context", type=int, default=2048, help="context length in time steps")
    p.add_argument("--batch", type=int, default=8, help="number of series")
    p.add_argument("--group-size", type=int, default=2, help="series per group (1: independent series)")
    p.add_argument("--output-patches", type=int, default=4, help="future-patch tokens (16 steps each)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per setting (>= 1; medians)")
    p.add_argument("--reduction", type=float, default=0.75, help="fraction of tokens removed by the last block")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the results as JSON to OUT")
    a = p.parse_args(argv)
    result = run(a.size, a.context, a.batch, a.group_size, a.output_patches, a.reps, a.reduction)
    print(format_table(result))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chronos-2 (small dims, context 8192, one series) and Chronos-Bolt (small dims, context 2048, batch 8) at their
longest contexts: the forward (Chronos-2) / encoder (Bolt) unmerged vs k=1 plain merging removing 90% of the tokens
with the front-input and input schedules; MACs ratio, speed-up and efficiency (mergeplug.cost.compare: warm-up,
interleaved repetitions, medians). Random weights.

usage: .venv/bin/python scripts/long_context_families.py OUT.json   (benchmarks/long-context/chronos2_bolt.json)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from mergeplug.config import schedule_for_reduction
from mergeplug.cost import compare
from mergeplug.models import chronos2, chronos_bolt
from mergeplug_lab.bench import synthetic_context


def cases() -> list[tuple[str, int, Any, Callable[[], Any], int]]:
    """(name, context, pipeline, call, batch) for Chronos-2 and Chronos-Bolt."""
    c2 = chronos2("small", context_length=8192)
    ctx2 = synthetic_context(1, 8192)
    bolt = chronos_bolt("small", context_length=2048)
    ctx_b = synthetic_context(8, 2048)
    return [
        ("Chronos-2 small", 8192, c2, lambda: c2.model(ctx2, num_output_patches=4).quantile_preds, 1),
        ("Chronos-Bolt small", 2048, bolt, lambda: bolt.embed(ctx_b), 8),
    ]


def main(out: str) -> None:
    rows = []
    for name, context, pipe, call, batch in cases():
        layers = pipe.model.config.num_layers
        settings: dict[str, dict[str, Any] | None] = {"unmerged": None}
        for schedule in ("front-input", "input"):
            settings[f"k=1, 90%, {schedule}"] = {
                "k": 1, "safe": False, **schedule_for_reduction(0.9, layers, schedule)  # type: ignore[arg-type]
            }  # fmt: skip
        for r in compare(pipe, settings, run=call, reps=3):
            row = {"model": name, "context": context, "batch": batch, **r, "efficiency": r["speedup"] / r["macs_ratio"]}
            rows.append(row)
            counts = r["token_counts"] or ["-"]
            print(
                f"| {name} | {context} | {batch} | {r['label']} | {counts[0]} -> {counts[-1]} | {r['time_s']:.3f} | "
                f"{r['macs_ratio']:.2f}x | {r['speedup']:.2f}x | {row['efficiency']:.2f} |",
                flush=True,
            )
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])

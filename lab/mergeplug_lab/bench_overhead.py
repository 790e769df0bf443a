"""Merging overhead: measured speed-up against the MACs ratio, and the merge step's cost against sequence length.

``python -m mergeplug_lab.bench_overhead`` (``make bench-overhead``) builds Chronos-T5 and Chronos-Bolt from configs
with the published dimensions (random weights: speed only) and, for every size, batch and thread count asked for,
times the encoder (``pipe.embed``) unmerged and merged with :func:`mergeplug.cost.compare` (the shared timer,
:mod:`mergeplug.timing`: warm-up, paired interleaved rounds, 95% intervals, in one process). Every row shows the
MACs ratio (unmerged multiply-accumulates over merged ones, counted on the calls that really run, the matching
included), the measured speed-up and the **efficiency** = speed-up / MACs ratio: 1.0 means merging saves exactly the
time its arithmetic saving predicts; the target is at least 0.9 (at most 10% of the saving lost to the merge
machinery).

The second table times one merge step alone (:func:`mergeplug.merge.merge_layer`: similarity on the band,
choice, the size-weighted merge and the state update) at T = 512 ... 16,384 tokens, local (k=1) and global:
the local step's time per token stays flat (linear cost), the global one grows with T (quadratic).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mergeplug._cli import checked, number, quiet_third_party
from mergeplug.config import MergeConfig, schedule_for_reduction
from mergeplug.cost import compare
from mergeplug.merge import MergeState, merge_layer
from mergeplug.models import SIZES, chronos_bolt, chronos_t5
from mergeplug.timing import speed_cell
from mergeplug_lab.bench import synthetic_context

__all__ = ["TARGET", "run_models", "run_merge_step", "format_models", "format_merge_step", "main"]

TARGET = 0.9  # efficiency to reach: speed-up >= 90% of the MACs ratio
CONTEXT = {"t5": 512, "bolt": 2048}


def _pipeline(family: str, size: str, context: int):
    if family == "t5":
        pipe = chronos_t5(size, context_length=context, prediction_length=64, num_samples=20, seed=0)
        return pipe, pipe.model.model.config.num_layers
    pipe = chronos_bolt(size, context_length=context, prediction_length=64, seed=0)
    return pipe, pipe.model.config.num_layers


def run_models(
    families: tuple[str, ...] = ("t5", "bolt"),
    sizes: tuple[str, ...] = ("tiny", "small"),
    batches: tuple[int, ...] = (1, 8, 32),
    threads: tuple[int, ...] = (1, 2),
    reduction: float = 0.75,
    reps: int = 5,
    progress: bool = True,
    out: Path | None = None,
) -> list[dict[str, Any]]:
    """One row per (family, size, batch, threads): unmerged vs merged (k=1, plain merging that removes
    ``reduction`` of the encoder tokens by the last layer, constant schedule) encoder time and MACs.

    Rows are appended to ``out`` (JSON lines) as they are measured; rows already there are kept and skipped.
    """
    from tqdm.auto import tqdm

    done: list[dict[str, Any]] = []
    if out is not None and out.exists():
        done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    key = lambda r: (r["family"], r["size"], r["batch"], r["threads"], r["reduction"])  # noqa: E731
    have = {key(r) for r in done}
    todo = [
        (f, s, b, t)
        for f in families
        for s in sizes
        for b in batches
        for t in threads
        if (f, s, b, t, reduction) not in have
    ]
    rows = [r for r in done if r["reduction"] == reduction]
    before = torch.get_num_threads()
    bar = tqdm(total=len(todo), desc="models", disable=not progress)
    try:
        for family in families:
            for size in sizes:
                if not any(c[:2] == (family, size) for c in todo):
                    continue
                context = CONTEXT[family]
                pipe, layers = _pipeline(family, size, context)
                merged = {"k": 1, "safe": False, **schedule_for_reduction(reduction, layers)}
                for batch in batches:
                    ctx = synthetic_context(batch, context)
                    for n_threads in threads:
                        if (family, size, batch, n_threads) not in todo:
                            continue
                        torch.set_num_threads(n_threads)
                        res = compare(
                            pipe, {"unmerged": None, "merged": merged}, run=lambda c=ctx, p=pipe: p.embed(c), reps=reps
                        )
                        ref, m = res
                        row = {
                            "family": family, "size": size, "batch": batch, "threads": n_threads,
                            "reduction": reduction, "context": context, "tokens": m["token_counts"],
                            "time_unmerged_s": ref["time_s"], "time_merged_s": m["time_s"],
                            "macs_ratio": m["macs_ratio"], "speedup": m["speedup"], "speedup_low": m["speedup_low"],
                            "speedup_high": m["speedup_high"], "speed_verdict": m["speed_verdict"],
                            "efficiency": m["speedup"] / m["macs_ratio"],
                        }  # fmt: skip
                        rows.append(row)
                        if out is not None:
                            out.parent.mkdir(parents=True, exist_ok=True)
                            with out.open("a") as f:
                                f.write(json.dumps(row) + "\n")
                        bar.update()
    finally:
        torch.set_num_threads(before)
        bar.close()
    return rows


def run_merge_step(
    lengths: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384),
    global_up_to: int = 4096,
    batch: int = 8,
    channels: int = 512,
    metric_channels: int = 64,
    reps: int = 7,
) -> list[dict[str, Any]]:
    """Median time of one merge step (a quarter of the tokens merge) on random (batch, T, channels) features with a
    (batch, T, metric_channels) metric, local (k=1) at every T and global up to ``global_up_to``."""
    rows = []
    torch.manual_seed(0)
    for t in lengths:
        x = torch.randn(batch, t, channels)
        metric = torch.randn(batch, t, metric_channels)
        for k in (1, None):
            if k is None and t > global_up_to:
                continue
            config = MergeConfig(k=k, r=t // 4, safe=False)
            times = []
            with torch.inference_mode():
                for i in range(reps + 1):
                    state = MergeState.init(batch, t)
                    start = time.perf_counter()
                    merge_layer(x, state, config, 0, metric=metric)
                    if i:  # the first call is a warm-up
                        times.append(time.perf_counter() - start)
            med = statistics.median(times)
            rows.append({"tokens": t, "k": k, "time_ms": med * 1e3, "us_per_token": med * 1e6 / t})
    return rows


def format_models(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one row per case, efficiency marked against :data:`TARGET`."""
    lines = [
        "| model | dims | batch | threads | tokens in -> out | unmerged s | merged s | MACs ratio | speed-up | "
        "efficiency |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = "Chronos-T5" if r["family"] == "t5" else "Chronos-Bolt"
        mark = "" if r["efficiency"] >= TARGET else " (below 0.9)"
        lines.append(
            f"| {name} | {r['size']} | {r['batch']} | {r['threads']} | {r['tokens'][0]} -> {r['tokens'][-1]} | "
            f"{r['time_unmerged_s']:.4f} | {r['time_merged_s']:.4f} | {r['macs_ratio']:.2f}x | {speed_cell(r)} | "
            f"{r['efficiency']:.2f}{mark} |"
        )
    return "\n".join(lines)


def format_merge_step(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the merge step's time at each length."""
    lines = ["| tokens T | matching | one merge step, ms | us per token |", "|---|---|---|---|"]
    for r in rows:
        name = "global" if r["k"] is None else f"k={r['k']}"
        lines.append(f"| {r['tokens']} | {name} | {r['time_ms']:.2f} | {r['us_per_token']:.3f} |")
    return "\n".join(lines)


_LIST_INT = checked(lambda s: tuple(int(x) for x in s.split(",")), lambda v: all(x >= 1 for x in v), "integers >= 1")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``python -m mergeplug_lab.bench_overhead``."""
    quiet_third_party()
    p = argparse.ArgumentParser(prog="python -m mergeplug_lab.bench_overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default="t5,bolt", type=lambda s: tuple(s.split(",")))
    p.add_argument("--sizes", default="tiny,small", type=lambda s: tuple(s.split(",")))
    p.add_argument("--batches", default=(1, 8, 32), type=_LIST_INT)
    p.add_argument("--threads", default=(1, 2), type=_LIST_INT)
    p.add_argument("--reduction", default=0.75, type=checked(float, lambda v: 0 < v < 1, "a fraction in (0, 1)"))
    p.add_argument("--reps", default=5, type=number(int, 1))
    p.add_argument("--step-lengths", default=(512, 1024, 2048, 4096, 8192, 16384), type=_LIST_INT)
    p.add_argument("--skip-models", action="store_true", help="only the merge-step table")
    p.add_argument("--out", type=Path, default=None, help="folder for models.jsonl (resumable) and merge_step.json")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    for f in a.families:
        if f not in CONTEXT:
            p.error(f"--families: unknown family {f!r}; choose from t5, bolt")
    for s in a.sizes:
        if s not in SIZES:
            p.error(f"--sizes: unknown size {s!r}; choose from {', '.join(sorted(SIZES))}")
    if not a.skip_models:
        rows = run_models(
            a.families, a.sizes, a.batches, a.threads, a.reduction, a.reps, not a.no_progress,
            None if a.out is None else a.out / "models.jsonl",
        )  # fmt: skip
        print(
            f"Encoder (pipe.embed), random weights, float32, k=1 plain merging removing {a.reduction:.0%} of the "
            f"tokens by the last layer (constant schedule); median of {a.reps} interleaved runs; torch "
            f"{torch.__version__}. Efficiency = speed-up / MACs ratio (target >= {TARGET})."
        )
        print(format_models(rows))
    steps = run_merge_step(a.step_lengths)
    print("\nOne merge step (match + merge, a quarter of the tokens merge), batch 8, features 512, metric 64:")
    print(format_merge_step(steps))
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "merge_step.json").write_text(json.dumps(steps, indent=1))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chronos-T5 sampling benchmark: stock ``generate`` vs the fast path vs the fast path + token merging.

``python -m mergeplug_lab.bench_sampling`` builds Chronos-T5 with the published dimensions (random weights: speed
only), then times ``pipe.predict`` (context 512, horizon 64, 20 samples, float32) for each batch size with
:func:`mergeplug.timing.paired_speedups` (warm-up, at least ``--reps`` paired interleaved rounds against stock, the
speed-up with its 95% interval).
It also reports the peak resident memory above the starting level of each setting's calls, and checks that the
fast path gives the same samples as stock for the same seed. "top-k sampler" rows use ``fast_sampling(pipe,
exact=False)`` (same distribution, other samples).

A bound comes with every row: the multiply-accumulates the call really runs (counted by
:func:`mergeplug.profile`) at the best rate this machine reaches on the model's big matrix products (decoder and
encoder shapes, :func:`gemm_rate`, measured in the same run) give a floor, the time if every multiply-accumulate
ran at that rate, and stock's time over the floor the speed-up that arithmetic would show then (products run
slower than the best rate in practice: small batched ones, e.g. attention, at about half of it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mergeplug import remove
from mergeplug._cli import quiet_third_party
from mergeplug.config import schedule_for_reduction
from mergeplug.cost import profile
from mergeplug.eval.run import MergeSetting, PeakMemory, apply_setting
from mergeplug.models import chronos_t5, t5_config
from mergeplug.timing import paired_speedups, speed_cell
from mergeplug_lab.bench import synthetic_context

__all__ = ["run", "main", "select_settings", "gemm_rate", "model_shapes"]


def gemm_rate(shapes: list[tuple[int, int, int]], reps: int = 10) -> float:
    """Best float32 rate (GMAC/s) this machine reaches on ``(m, k) @ (k, n)`` products of the given shapes: the
    fastest of ``reps`` runs of each (after a warm-up), the best shape."""
    best = 0.0
    for m, k, n in shapes:
        x, w = torch.randn(m, k), torch.randn(n, k)
        for _ in range(3):  # warm-up
            torch.nn.functional.linear(x, w)
        ts = []
        for _ in range(reps):
            start = time.perf_counter()
            torch.nn.functional.linear(x, w)
            ts.append(time.perf_counter() - start)
        best = max(best, m * k * n / min(ts) / 1e9)
    return best


def model_shapes(cfg: Any, batch: int, samples: int, context: int) -> list[tuple[int, int, int]]:
    """The (m, k, n) shapes of a Chronos-T5 forecast's big products: decoder rows (batch x samples) through the
    q/k/v-sized, feed-forward and output layers, and encoder rows (batch x context) through the attention-sized
    and feed-forward layers."""
    d, f, dec, enc = cfg.d_model, cfg.d_ff, batch * samples, batch * context
    return [(dec, d, d), (dec, d, f), (dec, f, d), (dec, d, cfg.vocab_size), (enc, d, d), (enc, d, f), (enc, f, d)]


def select_settings(
    layers: int,
    merges: dict[str, dict[str, Any]] | None = None,
    dtypes: tuple[str, ...] = (),
    only: tuple[str, ...] = (),
) -> tuple[list[MergeSetting], dict[str, str]]:
    """The settings :func:`run` measures (see there) and the dtype of each label; a ``ValueError`` when ``only``
    matches none (before any model is built)."""
    merges = merges or {
        "k=1, 75%": {"k": 1, "safe": False, **schedule_for_reduction(0.75, layers)},
        "k=1, 90% front-input": {"k": 1, "safe": False, **schedule_for_reduction(0.9, layers, "front-input")},
    }
    settings = [MergeSetting("stock", {}), MergeSetting("fast", {}, "fast")]
    settings.append(MergeSetting("fast, top-k sampler", {}, "fast-topk"))
    settings += [MergeSetting(f"fast + {label}", m, "fast") for label, m in merges.items()]
    settings += [MergeSetting(f"fast, top-k sampler + {label}", m, "fast-topk") for label, m in merges.items()]
    dtype_of = {st.label: "float32" for st in settings}
    for dtype in dtypes:
        extra = [MergeSetting(f"{dtype}: fast, top-k sampler", {}, "fast-topk")]
        extra += [MergeSetting(f"{dtype}: fast, top-k sampler + {lab}", m, "fast-topk") for lab, m in merges.items()]
        settings += extra
        dtype_of.update({st.label: dtype for st in extra})
    if only:
        kept = [st for st in settings if st.label == "stock" or any(o in st.label for o in only)]
        if len(kept) == 1:
            raise ValueError(f"--only {','.join(only)}: no setting matches; settings: {[st.label for st in settings]}")
        settings = kept
    return settings, dtype_of


def run(
    *,
    size: str = "small",
    batches: tuple[int, ...] = (8, 32),
    context: int = 512,
    horizon: int = 64,
    samples: int = 20,
    reps: int = 6,
    merges: dict[str, dict[str, Any]] | None = None,
    dtypes: tuple[str, ...] = (),
    only: tuple[str, ...] = (),
    time_budget: float = 300.0,
) -> list[dict[str, Any]]:
    """One row per (batch, setting): median seconds, speed-up vs stock with its 95% interval, peak memory, same
    samples as stock, MACs and the bound (``floor_s`` = MACs at the best measured matrix-product rate,
    ``bound_speedup`` = stock / floor: the speed-up if every multiply-accumulate ran at that rate).

    ``merges``: label -> ``mergeplug.apply`` arguments for the "fast + merging" rows (default: k=1 removing 75%
    of the encoder tokens with a constant schedule, and 90% with the front-input schedule; plain merging, so those
    reductions are met: with random weights only speed is measured).
    ``dtypes``: reduced precisions (``"bfloat16"``, ``"float16"``) whose top-k-sampler rows (without and with each
    merge setting) run beside the float32 ones, on a copy of the model cast to that dtype; speed-ups are against
    float32 stock. ``only``: keep just the settings whose label contains one of these strings (stock always runs).
    """
    settings, dtype_of = select_settings(t5_config(size).num_layers, merges, dtypes, only)
    pipes = {"float32": chronos_t5(size, context_length=context, prediction_length=horizon, num_samples=samples)}
    for dtype in dtypes:  # the same weights (same seed), cast
        pipes[dtype] = chronos_t5(size, context_length=context, prediction_length=horizon, num_samples=samples)
        pipes[dtype].model.to(getattr(torch, dtype))

    rows = []
    for batch in batches:
        ctx = synthetic_context(batch, context)

        def predict(st: MergeSetting, ctx: torch.Tensor = ctx) -> torch.Tensor:
            torch.manual_seed(0)
            with torch.inference_mode():
                return pipes[dtype_of[st.label]].predict(ctx, prediction_length=horizon, num_samples=samples)

        mem: dict[str, float] = {}
        macs: dict[str, int] = {}
        outs: dict[str, torch.Tensor] = {}
        for st in settings:  # warm-up, memory, outputs, MACs
            pipe = pipes[dtype_of[st.label]]
            apply_setting(pipe, st)
            with PeakMemory() as pm:
                outs[st.label] = predict(st)
            mem[st.label] = pm.extra_mb
            macs[st.label] = profile(pipe, run=lambda st=st: predict(st), storage=False).macs
        rate = gemm_rate(model_shapes(pipes["float32"].model.model.config, batch, samples, context))
        by_label = {st.label: st for st in settings}
        speeds = paired_speedups(
            {st.label: partial(predict, st) for st in settings},
            setup=lambda label, by_label=by_label: apply_setting(pipes[dtype_of[label]], by_label[label]),
            min_rounds=reps,
            max_rounds=max(reps, 40), budget_s=time_budget,
        )  # fmt: skip
        for pipe in pipes.values():
            remove(pipe)
        ref = speeds["stock"].reference_s
        for st in settings:
            label = st.label
            speed = speeds[label]
            floor = macs[label] / (rate * 1e9)
            rows.append(
                {
                    "batch": batch,
                    "setting": label,
                    "dtype": dtype_of[label],
                    **speed.fields(),
                    "peak_mem_mb": mem[label],
                    "same_samples_as_stock": bool(torch.equal(outs[label], outs["stock"])) if label == "fast" else None,
                    "merge": st.kwargs or None,
                    "macs": macs[label],
                    "macs_ratio": macs["stock"] / macs[label],
                    "efficiency": speed.speedup / (macs["stock"] / macs[label]),
                    "gemm_gmacs": rate,
                    "floor_s": floor,
                    "bound_speedup": ref / floor,
                }
            )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    width = max([46, *(len(r["setting"]) + 2 for r in rows)])
    lines = [
        f"{'batch':>5}  {'setting':<{width}}{'time s':>9}  {'speed-up [95% interval]':<28}{'MACs ratio':>11}"
        f"{'effic.':>8}{'peak MB':>9}{'GMAC':>8}{'floor s':>9}{'bound':>8}  same samples"
    ]
    for r in rows:
        same = "" if r["same_samples_as_stock"] is None else str(r["same_samples_as_stock"])
        speed = "reference" if r["setting"] == "stock" else speed_cell(r)
        lines.append(
            f"{r['batch']:>5}  {r['setting']:<{width}}{r['time_s']:>9.2f}  {speed:<28}"
            f"{r['macs_ratio']:>10.2f}x{r['efficiency']:>8.2f}{r['peak_mem_mb']:>9.0f}{r['macs'] / 1e9:>8.0f}"
            f"{r['floor_s']:>9.2f}{r['bound_speedup']:>7.2f}x  {same}"
        )
    rate = ", ".join(f"batch {r['batch']}: {r['gemm_gmacs']:.0f}" for r in rows if r["setting"] == "stock")
    lines.append(
        f"floor = the call's MACs at the best float32 matrix-product rate measured on the model's shapes (GMAC/s, "
        f"{rate}); bound = stock time / floor, the speed-up if every multiply-accumulate ran at that rate; "
        "MACs ratio = stock MACs / these; efficiency = speed-up / MACs ratio"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    quiet_third_party()
    p = argparse.ArgumentParser(prog="python -m mergeplug_lab.bench_sampling", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small")
    p.add_argument("--batches", default="8,32")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--horizon", type=int, default=64)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--reps", type=int, default=6, help="paired timing rounds at least (6 give a 95%% interval)")
    p.add_argument("--time-budget", type=float, default=300.0, help="seconds of timing per batch size at most")
    p.add_argument("--out", default=None, help="also write the rows as JSON")
    p.add_argument(
        "--dtype",
        action="append",
        default=[],
        choices=["bfloat16", "float16"],
        help="also run the top-k-sampler rows with the model cast to this dtype (repeatable; speed-ups against "
        "float32 stock)",
    )
    p.add_argument("--only", default="", help="comma-separated substrings: run only the settings whose label has one")
    p.add_argument(
        "--merge",
        action="append",
        default=[],
        help="merge setting for the 'fast + merging' rows, as for mergeplug-eval run (e.g. 'k=1,reduction=0.5'; "
        "repeatable; default: k=1 at 75%% and 90%% front-input)",
    )
    a = p.parse_args(argv)
    merges = None
    if a.merge:
        from mergeplug.eval.run import parse_merge

        layers = t5_config(a.size).num_layers
        try:
            parsed = [parse_merge(m, layers) for m in a.merge]
        except ValueError as exc:
            p.error(str(exc))
        if any(m.sampling for m in parsed):
            p.error("sampling=... is not a merge setting here: each merge setting runs with both fast samplers")
        merges = {m.label: m.kwargs for m in parsed}
    dtypes, only = tuple(a.dtype), tuple(o for o in a.only.split(",") if o)
    try:  # a bad --only is a one-line error before any model is built
        select_settings(t5_config(a.size).num_layers, merges, dtypes, only)
    except ValueError as exc:
        p.error(str(exc))
    rows = run(
        size=a.size,
        batches=tuple(int(b) for b in a.batches.split(",")),
        context=a.context,
        horizon=a.horizon,
        samples=a.samples,
        reps=a.reps,
        merges=merges,
        dtypes=dtypes,
        only=only,
        time_budget=a.time_budget,
    )
    print(format_table(rows))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

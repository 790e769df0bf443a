"""The speed / accuracy frontier of a model at several context lengths.

For each context length the harness (:func:`mergeplug.eval.run.run` with ``context=``) scores a grid of merge
settings on held-out test windows (accuracy, MACs ratio, tokens per layer, speed-up on the model itself). Speed on
a small reference model says little about a user's model, so every setting is also timed on a model of another
size built from a config (random weights, default: Chronos-2 base dimensions) fed the same test contexts and the
same setting string (the same reduction, schedule and k, resolved for that model's number of layers):
:func:`dims_speed`, paired interleaved rounds against the unmerged model (:func:`mergeplug.timing.paired_speedups`).
:func:`summarise` joins both per setting (geometric-mean and worst-dataset WQL / MASE change, the share of tokens
removed), :func:`table` and :func:`plot` show it, :func:`meets` checks a target.

Everything is written as it finishes (``ctx<N>/results.jsonl`` by the harness, ``ctx<N>/dims_speed.jsonl`` here)
and a rerun resumes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..results import _geomean
from ..timing import paired_speedups, speed_cell
from .data import load_dataset

__all__ = ["grid", "dims_speed", "summarise", "meets", "choose_default", "table", "plot", "run_frontier", "SCHEDULES"]

SCHEDULES = ("constant", "front", "front-input", "input")


def grid(
    ks: Sequence[int | None] = (1, 3, None),
    reductions: Sequence[float] = (0.5, 0.75, 0.9),
    schedules: Sequence[str] = SCHEDULES,
    safe: Sequence[bool] = (True, False),
) -> list[str]:
    """Merge setting strings (``mergeplug-eval run --merge``) for every combination; ``None`` in ``ks`` is global."""
    out = []
    for s in safe:
        for k in ks:
            for red in reductions:
                for sched in schedules:
                    kk = "global" if k is None else str(k)
                    out.append(f"k={kk},reduction={red:g},schedule={sched},safe={'true' if s else 'false'}")
    return out


def _first_windows(datasets: Sequence[str], context: int, per_dataset: int = 1) -> list[np.ndarray]:
    """The last ``context`` steps of the first test inputs of each dataset (what the harness feeds the model)."""
    from .run import _windows, last_steps

    out = []
    for name in datasets:
        ds = load_dataset(name)
        inputs = last_steps(list(_windows(ds).input)[:per_dataset], context)
        out += [np.asarray(inp["target"], dtype=np.float32) for inp in inputs]
    return out


def dims_speed(
    settings: Sequence[str],
    contexts: Sequence[np.ndarray],
    *,
    prediction_length: int,
    context_length: int,
    size: str = "base",
    path: str | Path | None = None,
    min_rounds: int = 6,
    min_time: float = 0.2,
    budget_s: float = 300.0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Speed-ups of ``settings`` on a random-weight Chronos-2 of ``size`` dims (:func:`mergeplug.models.chronos2`).

    ``contexts``: the series of one batch, each (T,) float32 (NaN = missing); one call forecasts them all
    (``predict_quantiles``, ``prediction_length`` steps). Rows (one per setting, the unmerged one first): the
    fields of :meth:`mergeplug.timing.Speedup.fields`, ``tokens_per_layer``, ``layers``; a setting that removed no
    token is named (``noop``) and not timed. ``path``: a JSONL file written when done, reused when it holds these
    settings.
    """
    import mergeplug

    from ..core import recording_token_counts
    from ..models import chronos2
    from ..timing import noop_reason
    from .models import chronos_quantiles
    from .run import parse_merge

    if path is not None and Path(path).exists():
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        if [r["setting"] for r in rows] == ["unmerged", *settings]:
            return rows
    pipe = chronos2(size, context_length=context_length)
    layers = pipe.model.config.num_layers
    parsed = {s: parse_merge(s, layers) for s in settings}
    call = partial(chronos_quantiles, pipe, list(contexts), prediction_length, batch_size=len(contexts))
    counts: dict[str, list[int] | None] = {}
    noop: dict[str, str] = {}
    seen: dict[str, list[list[int]]] = {}
    floors: dict[str, int | None] = {}
    with torch.inference_mode():
        for label, setting in parsed.items():
            mergeplug.remove(pipe)
            mergeplug.apply(pipe, **setting.kwargs)
            with recording_token_counts(pipe) as forwards:
                call()
            counts[label] = mergeplug.token_counts(pipe)
            seen[label] = forwards
            floors[label] = getattr(mergeplug.settings(pipe), "min_tokens", None)
        # input merging shortens the sequence before block 0: compare with the unmerged length (the longest
        # first-block count of a setting that does not merge the input, else the MACs ratio)
        full = [c[0] for s in settings if "input_ratio" not in parsed[s].kwargs for c in seen[s]]
        for label, setting in parsed.items():
            forwards, ratio = seen[label], None
            if "input_ratio" in setting.kwargs:
                if full:
                    forwards = [[max(full), *c] for c in forwards]
                else:  # no unmerged length known: the MACs ratio decides
                    ratio = _macs_ratio(pipe, call, len(contexts), setting.kwargs)
            if reason := noop_reason(forwards, ratio, floors[label]):
                noop[label] = reason
        mergeplug.remove(pipe)
        timed = ["unmerged"] + [s for s in settings if s not in noop]

        def setup(label: str) -> None:
            mergeplug.remove(pipe)
            if label != "unmerged":
                mergeplug.apply(pipe, **parsed[label].kwargs)

        speeds = {} if len(timed) == 1 else paired_speedups(
            {label: call for label in timed}, setup=setup, min_time=min_time, min_rounds=min_rounds,
            max_rounds=max(min_rounds, 40), budget_s=budget_s, progress=progress, desc=f"{size} dims, {context_length}",
        )  # fmt: skip
        mergeplug.remove(pipe)
    rows = [{"setting": "unmerged", "layers": layers, "speedup": 1.0,
             **({"time_s": speeds["unmerged"].reference_s} if speeds else {})}]  # fmt: skip
    for label in settings:
        row = {"setting": label, "layers": layers, "tokens_per_layer": counts[label]}
        row.update({"noop": noop[label]} if label in noop else speeds[label].fields())
        rows.append(row)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _macs_ratio(pipe: Any, call: Any, series: int, kwargs: dict[str, Any]) -> float:
    """Unmerged MACs / MACs under ``kwargs`` of one ``call`` (:func:`mergeplug.cost.profile`); leaves ``pipe``
    merged with ``kwargs``."""
    import mergeplug

    from ..cost import profile

    mergeplug.remove(pipe)
    unmerged = profile(pipe, run=call, series=series, storage=False).macs_per_series
    mergeplug.apply(pipe, **kwargs)
    merged = profile(pipe, run=call, series=series, storage=False).macs_per_series
    return unmerged / merged if merged else 1.0


def _gm_change(ratios: list[float]) -> float:
    return _geomean(ratios) - 1.0


def summarise(rows: list[dict[str, Any]], dims: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One point per merge setting of a harness run at one context (``rows``: its ``results.jsonl``).

    Fields: ``setting``, ``datasets``, ``WQL_change`` / ``MASE_change`` (geometric mean over datasets of merged /
    unmerged, minus 1), ``WQL_worst`` / ``MASE_worst`` (the largest change of a dataset) and ``worst_dataset``,
    ``macs_ratio`` (geometric mean), ``removed`` (share of the encoder's tokens gone after the last block, median
    over datasets; the unmerged count is the longest first-block count of the run's settings that do not merge the
    input), the reference model's speed (``speedup`` etc. of the first dataset that was timed) and, with ``dims``
    (rows of :func:`dims_speed`), ``dims_speedup``, ``dims_low``, ``dims_high``, ``dims_cell``, ``dims_noop``.
    """
    settings = list(dict.fromkeys(r["setting"] for r in rows if r["setting"] not in ("seasonal-naive", "unmerged")))
    unmerged = {r["dataset"]: r for r in rows if r["setting"] == "unmerged"}
    full: dict[str, int] = {}
    for r in rows:
        if r.get("tokens_per_layer") and "input_ratio" not in (r.get("merge") or {}):
            full[r["dataset"]] = max(full.get(r["dataset"], 0), r["tokens_per_layer"][0])
    by_dims = {d["setting"]: d for d in dims or []}
    out = []
    for s in settings:
        mine = [r for r in rows if r["setting"] == s and r["dataset"] in unmerged]
        if not mine:
            continue
        wql = {r["dataset"]: r["WQL"] / unmerged[r["dataset"]]["WQL"] for r in mine}
        mase = {r["dataset"]: r["MASE"] / unmerged[r["dataset"]]["MASE"] for r in mine}
        worst = max(wql, key=wql.__getitem__)
        removed = [1 - r["tokens_per_layer"][-1] / full[r["dataset"]] for r in mine
                   if r.get("tokens_per_layer") and full.get(r["dataset"])]  # fmt: skip
        macs = [r["macs_ratio"] for r in mine if r.get("macs_ratio")]
        timed = next((r for r in mine if "speedup" in r or r.get("noop")), {})
        point = {
            "setting": s, "merge": mine[0].get("merge"), "datasets": len(mine),
            "WQL_change": _gm_change(list(wql.values())), "WQL_worst": wql[worst] - 1, "worst_dataset": worst,
            "MASE_change": _gm_change(list(mase.values())), "MASE_worst": max(mase.values()) - 1,
            "macs_ratio": _geomean(macs) if macs else None,
            "removed": float(np.median(removed)) if removed else None,
            "noop_datasets": sum(1 for r in mine if r.get("noop")),
            **{k: timed[k] for k in ("speedup", "speedup_low", "speedup_high", "speed_verdict", "noop") if k in timed},
        }  # fmt: skip
        point["cell"] = speed_cell(timed)
        d = by_dims.get(s)
        if d is not None:
            point.update(dims_cell=speed_cell(d), dims_noop=d.get("noop"), dims_tokens=d.get("tokens_per_layer"))
            if "speedup" in d:
                point.update(dims_speedup=d["speedup"], dims_low=d["speedup_low"], dims_high=d["speedup_high"])
        out.append(point)
    return out


def meets(
    point: dict[str, Any], *, removed: float = 0.75, wql: float = 0.01, worst: float = 0.05, speed_low: float = 3.0
) -> bool:
    """Does a :func:`summarise` point remove at least ``removed`` of the tokens with a geometric-mean WQL change of
    at most ``wql``, no dataset worse than ``worst``, and a speed-up interval at the other dimensions whose lower
    bound is at least ``speed_low``?"""
    return bool(
        (point.get("removed") or 0) >= removed
        and point["WQL_change"] <= wql
        and point["WQL_worst"] <= worst
        and (point.get("dims_low") or 0) >= speed_low
    )


def choose_default(points: list[dict[str, Any]], *, wql: float = 0.005, worst: float = 0.03) -> dict[str, Any] | None:
    """The long-context default from :func:`summarise` points of *validation* windows (the rule, fixed before any
    test window of a merged setting is scored): among forecast-safe settings that merged something on every dataset,
    with a geometric-mean WQL change of at most ``wql`` and no dataset worse than ``worst`` (stricter than the test
    target of +1% / +5%, to leave room), the one with the largest MACs ratio; ties go to the smaller share of
    tokens removed, then to the smaller setting string. None when no setting qualifies."""
    ok = [p for p in points if (p.get("merge") or {}).get("safe", True) and not p.get("noop_datasets")
          and p.get("macs_ratio") and p["WQL_change"] <= wql and p["WQL_worst"] <= worst]  # fmt: skip
    if not ok:
        return None
    return min(ok, key=lambda p: (-round(p["macs_ratio"], 3), p.get("removed") or 0.0, p["setting"]))


def table(points_by_context: dict[int, list[dict[str, Any]]], *, dims_label: str = "Chronos-2 base dims") -> str:
    """Markdown: one line per (context, setting), sorted by context then by the speed-up at ``dims_label``."""
    lines = [
        f"| context | setting | tokens removed | WQL change (geo-mean) | worst dataset | MASE change | MACs ratio | "
        f"speed-up, this model | speed-up, {dims_label} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for context, points in points_by_context.items():
        for p in sorted(points, key=lambda p: -(p.get("dims_speedup") or 0)):
            removed = f"{100 * p['removed']:.1f}%" if p.get("removed") is not None else ""
            macs = f"{p['macs_ratio']:.2f}x" if p.get("macs_ratio") else ""
            lines.append(
                f"| {context} | {p['setting']} | {removed} | {100 * p['WQL_change']:+.1f}% | "
                f"{100 * p['WQL_worst']:+.1f}% ({p['worst_dataset']}) | {100 * p['MASE_change']:+.1f}% | {macs} | "
                f"{p['cell']} | {p.get('dims_cell', '')} |"
            )
    return "\n".join(lines)


def plot(
    points_by_context: dict[int, list[dict[str, Any]]],
    path: str | Path,
    *,
    dims_label: str = "Chronos-2 base dims",
    title: str = "",
) -> Path:
    """PNG: speed-up at ``dims_label`` (x, log, 95% interval bars; the model's own when no point has one at other
    dimensions) vs geometric-mean WQL change (y, %), one colour per context, filled markers forecast-safe, open
    markers plain merging; a line per context joins its Pareto frontier. Points without a measured speed-up (merged
    nothing there) are not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    from .report import pareto_frontier

    fig, ax = plt.subplots(figsize=(8.5, 5.4))
    dims = any(p.get("dims_speedup") for pts in points_by_context.values() for p in pts)
    x_key, low_key, high_key = ("dims_speedup", "dims_low", "dims_high") if dims else ("speedup", "speedup_low",
                                                                                        "speedup_high")  # fmt: skip
    for i, (context, points) in enumerate(points_by_context.items()):
        color = f"C{i % 10}"
        drawn = [p for p in points if p.get(x_key)]
        for safe in (True, False):
            mine = [p for p in drawn if (p.get("merge") or {}).get("safe", True) is safe]
            if not mine:
                continue
            x = [p[x_key] for p in mine]
            y = [100 * p["WQL_change"] for p in mine]
            bounds = [(p.get(low_key, p[x_key]), p.get(high_key, p[x_key])) for p in mine]
            bounds = [(lo, hi) if 0 < lo <= hi < math.inf else (v, v) for (lo, hi), v in zip(bounds, x, strict=True)]
            err = [
                [v - b[0] for v, b in zip(x, bounds, strict=True)],
                [b[1] - v for v, b in zip(x, bounds, strict=True)],
            ]
            ax.errorbar(x, y, xerr=err, fmt="o", ms=5, capsize=2, lw=0.7, color=color,
                        mfc=color if safe else "white",
                        label=f"context {context}, {'forecast-safe' if safe else 'plain'}")  # fmt: skip
        front = pareto_frontier([(p[x_key], 100 * p["WQL_change"]) for p in drawn])
        if len(front) > 1:
            ax.plot([f[0] for f in front], [f[1] for f in front], color=color, lw=0.9, alpha=0.7)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axhline(1, color="grey", lw=0.6, ls="--")
    ax.axvline(1, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ticks = [t for t in (0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16, 32, 64) if lo <= t <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_locator(NullLocator())
    ys = [100 * p["WQL_change"] for pts in points_by_context.values() for p in pts if p.get(x_key)]
    if ys and max(abs(v) for v in ys) > 10:
        ax.set_yscale("symlog", linthresh=2.0)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:+g}%"))
    if ys:
        low = min(min(ys), 0.0)
        pad = 1.0 if ax.get_yscale() == "symlog" else 0.05 * (max(ys) - low) + 0.5
        ax.set_ylim(low * 1.3 - pad, max(max(ys), 1.0) * 1.3 + 0.5)
    where = f"at {dims_label} (random weights, same contexts and setting)" if dims else "on this model"
    ax.set_xlabel(f"forecast speed-up {where}; bars: 95% interval", fontsize=8)
    ax.set_ylabel("WQL change vs unmerged, geometric mean over datasets (%)", fontsize=8)
    ax.set_title(title or "Token merging frontier (line: Pareto frontier per context; dashed: +1%)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left")
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_frontier(
    model: str,
    datasets: Sequence[str],
    contexts: Sequence[int],
    *,
    out: str | Path,
    settings: dict[int, list[str]] | list[str] | None = None,
    dims: str | None = "base",
    dims_batch: int = 4,
    reps: int = 6,
    timing_windows: int = 20,
    time_budget: float = 30.0,
    dims_budget: float = 300.0,
    progress: bool = True,
    validation: bool = False,
    timed_datasets: int | None = 1,
) -> dict[int, list[dict[str, Any]]]:
    """The frontier of ``model`` on ``datasets`` at each of ``contexts``: the harness run into ``out/ctx<N>``, the
    speed at ``dims`` dimensions (None: skipped) on one batch of ``dims_batch`` test contexts (the first window of
    the first datasets, cycled), then ``out/frontier.json``, ``frontier.md`` and ``frontier.png``. ``settings``:
    one list for every context or a list per context (default :func:`grid`). ``validation``: score the validation
    windows instead (those just before the test windows, :func:`~mergeplug.eval.data.validation_split`), to choose
    settings without seeing the test windows. ``timed_datasets``: how many datasets the model's own speed is timed on
    (None: all; the frontier reads it from the first)."""
    from .data import validation_split
    from .run import run

    out = Path(out)
    result: dict[int, list[dict[str, Any]]] = {}
    for context in contexts:
        mine = (settings.get(context) if isinstance(settings, dict) else settings) or grid()
        items = [validation_split(load_dataset(d)) for d in datasets] if validation else list(datasets)
        rows = run(model, items, mine, out=out / f"ctx{context}", context=context, reps=reps,
                   timing_windows=timing_windows, time_budget=time_budget, progress=progress,
                   timed_datasets=timed_datasets)  # fmt: skip
        speed = None
        if dims:
            batch = _first_windows(list(datasets[:dims_batch]), context)
            batch = [batch[i % len(batch)] for i in range(dims_batch)]
            h = load_dataset(datasets[0]).prediction_length
            speed = dims_speed(mine, batch, prediction_length=h, context_length=context, size=dims,
                               path=out / f"ctx{context}" / "dims_speed.jsonl", budget_s=dims_budget,
                               progress=progress)  # fmt: skip
        result[context] = summarise(rows, speed)
    label = f"Chronos-2 {dims} dims" if dims else "no other dims"
    (out / "frontier.json").write_text(json.dumps({str(c): p for c, p in result.items()}, indent=1))
    (out / "frontier.md").write_text(table(result, dims_label=label) + "\n")
    plot(result, out / "frontier.png", dims_label=label)
    return result

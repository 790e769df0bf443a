"""``mergeplug.tune``: the fastest merge setting that keeps the forecast within a tolerance, on the user's own data.

Backtest: the last ``windows`` windows of ``prediction_length`` steps before the end of every series (the end of the
data is the user's forecast origin; nothing after it is used) are forecast with the model unmerged and with every
candidate setting. Accuracy is the mean weighted quantile loss (WQL, the GluonTS / Chronos definition over the
quantile levels 0.1 ... 0.9) over all windows; speed is measured in the same run on the same contexts with
:func:`mergeplug.timing.paired_speedups` (paired interleaved rounds, the speed-up with its 95% interval).

A candidate **qualifies** when it merges something on this data (a setting whose every forward kept all tokens is
named, not timed), its WQL change is at most ``tolerance`` (relative: 0.01 = 1% worse than unmerged) and the lower
bound of its speed-up interval is above ``1 + margin``. Of the qualifying candidates, those whose intervals overlap
the fastest one's are statistically tied with it, and the tie is broken by what does not depend on the machine's
load: the largest MACs ratio, then the smaller WQL change, then the order of the candidates. If none qualifies, the
model stays unmerged and the result says which condition each candidate failed.

With ``out=`` every finished accuracy row is appended to ``out/tune.jsonl`` at once and a rerun with the same data
and options resumes (a different setup is refused, naming what differs); timings are always re-measured.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import schedule_for_reduction
from .core import (
    apply,
    apply_kwargs,
    encoder_layers,
    long_context_default,
    recording_token_counts,
    remove,
    settings,
    token_counts,
)
from .forecast import QUANTILES, backtest_windows, chronos_quantile_forecast, weighted_quantile_loss
from .store import TuneFiles
from .timing import noop_reason, paired_speedups, speed_cell

__all__ = [
    "tune", "TuneResult", "default_candidates", "weighted_quantile_loss", "backtest_windows", "QUANTILES",
]  # fmt: skip


def default_candidates(num_layers: int, *, model: Any = None, context: int | None = None) -> dict[str, dict[str, Any]]:
    """k in {1, 3, global} x reduction in {0.25, 0.5, 0.75} (constant schedule), forecast-safe defaults. With
    ``model`` and ``context`` (time steps), the family's long-context default for that context, when it has one
    (:func:`mergeplug.long_context_default`): a full setting is added as ``long-context default (<setting>)``;
    protections only (Chronos-2's) go into every candidate, named in its label (``k=1,reduction=0.5,protect_recent=24,
    proportional_attention=False``)."""
    found = None
    if model is not None and context is not None:
        found = long_context_default(model, context, num_layers=num_layers, describe=True)
    full = found is not None and any(k in found[1] for k in ("ratio", "r", "input_ratio"))
    extra, tail = ({}, "") if found is None or full else (found[1], "," + found[0])
    out = {}
    for k in (1, 3, None):
        for red in (0.25, 0.5, 0.75):
            kwargs = {"k": k, **schedule_for_reduction(red, num_layers), **extra}
            out[f"k={k or 'global'},reduction={red}{tail}"] = kwargs
    if found is not None and full:
        out[f"long-context default ({found[0]})"] = found[1]
    return out


def _context_steps(pipeline: Any, contexts: list[Any]) -> int:
    """Time steps of history the model reads: the longest backtest context (GluonTS entries: their ``target``),
    at most the pipeline's ``model_context_length`` when it has one."""
    longest = max(len(c["target"]) if isinstance(c, dict) else len(c) for c in contexts)
    cap = getattr(pipeline, "model_context_length", None)
    return min(longest, cap) if isinstance(cap, int) and cap > 0 else longest


def _chronos_forecast(pipe: Any) -> Callable[[list[np.ndarray], int], np.ndarray]:
    if not hasattr(pipe, "predict_quantiles"):
        raise TypeError(
            f"{type(pipe).__name__} has no predict_quantiles: pass forecast=fn(contexts, prediction_length) -> "
            "(N, 9, H) quantiles at levels 0.1 ... 0.9"
        )

    def forecast(contexts: list[Any], h: int) -> np.ndarray:
        return chronos_quantile_forecast(pipe, [c["target"] if isinstance(c, dict) else c for c in contexts], h)

    return forecast


@dataclass
class TuneResult:
    """What :func:`tune` measured and chose.

    Attributes:
        best: ``mergeplug.apply`` keyword arguments of the chosen setting, or None (stay unmerged).
        best_label: its label ("unmerged" when None).
        rows: one dict per setting (unmerged first): label, WQL, WQL_change, tokens (first and last block of the
            last forward), noop (why it merged nothing, if so), macs_ratio, the speed fields of
            :meth:`mergeplug.timing.Speedup.fields` (not for no-ops), and status (``"chosen"``, ``"qualifies"``,
            or the condition it failed).
        tolerance: the allowed relative WQL change.
        windows: number of backtest windows forecast per setting.
        margin: the speed-up interval's lower bound must exceed ``1 + margin``.
        reason: why the model stays unmerged (empty when a setting was chosen).
    """

    best: dict[str, Any] | None
    best_label: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    tolerance: float = 0.01
    windows: int = 0
    margin: float = 0.05
    reason: str = ""

    def to_markdown(self) -> str:
        lines = [
            "| setting | WQL | WQL change | speed-up [95% interval] | MACs ratio | tokens left | status |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            left = "" if not r.get("tokens") else f"{r['tokens'][-1]}/{r['tokens'][0]}"
            macs = f"{r['macs_ratio']:.2f}x" if r.get("macs_ratio") else ""
            speed = "reference" if r["label"] == "unmerged" else speed_cell(r)
            status = "**chosen**" if r["label"] == self.best_label and self.best is not None else r.get("status", "")
            lines.append(
                f"| {r['label']} | {r['WQL']:.4f} | {r['WQL_change']:+.1%} | {speed} | {macs} | {left} | {status} |"
            )
        lines.append("")
        rule = (
            f"merges something, WQL within {self.tolerance:.1%} of unmerged, speed-up interval above "
            f"{1 + self.margin:.2f}x, on {self.windows} backtest windows"
        )
        if self.best is None:
            lines.append(f"Kept unmerged: {self.reason} (a setting qualifies when it {rule}).")
        else:
            lines.append(f"Chosen: {self.best_label} (qualifies: it {rule}; ties broken by MACs ratio).")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def _model_id(obj: Any) -> str:
    """Class and a hash of the weights of the model ``obj`` holds: a resumed tune run must be the same model."""
    h = hashlib.sha256()
    modules = [m for m in (obj, getattr(obj, "model", None), getattr(obj, "inner_model", None)) if m is not None]
    module = next((m for m in modules if isinstance(m, torch.nn.Module)), None)
    if module is not None:
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])  # a sample of every tensor: fast
            h.update(str(tuple(tensor.shape)).encode())
    return f"{type(obj).__qualname__}:{h.hexdigest()[:16]}"


def _fingerprint(contexts: list[Any], targets: np.ndarray) -> str:
    h = hashlib.sha256()
    for c in contexts:
        h.update(np.ascontiguousarray(c["target"] if isinstance(c, dict) else c, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(targets, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def tune(
    pipeline: Any,
    data: Sequence[Any] | np.ndarray | torch.Tensor,
    *,
    prediction_length: int,
    tolerance: float = 0.01,
    candidates: dict[str, dict[str, Any]] | None = None,
    windows: int = 4,
    context: int | None = None,
    num_layers: int | None = None,
    forecast: Callable[[list[Any], int], np.ndarray] | None = None,
    target: Any = None,
    batch_size: int = 32,
    reps: int = 6,
    min_time: float = 0.2,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
    apply_best: bool = False,
    margin: float = 0.05,
    time_budget: float = 60.0,
    clock: Callable[[], float] | None = None,
) -> TuneResult:
    """Backtest merge settings on ``data`` and return the fastest one whose WQL change is within ``tolerance``.

    Args:
        pipeline: a Chronos pipeline (or any object with ``predict_quantiles``), as the user has it; its current
            merge settings are restored afterwards (unless ``apply_best``).
        data: the user's series up to their forecast origin: a 1-D series, a (N, T) array / tensor, a list of
            1-D series (NaN = missing) or of GluonTS-style entries (dicts with ``"target"``, handed to ``forecast``).
        prediction_length: the horizon H.
        tolerance: allowed relative WQL change (0.01: 1% worse than unmerged).
        candidates: label -> ``mergeplug.apply`` keyword arguments (default: :func:`default_candidates`).
        windows: backtest windows per series (the last ``windows * H`` values are forecast).
        context: longest context handed to the model (default: the whole history before each window).
        num_layers: encoder layers for the default candidates (default: read from the model's config).
        forecast: ``fn(contexts, H) -> (N, 9, H)`` quantiles, for models without ``predict_quantiles``; then
            ``target`` is what ``mergeplug.apply`` patches (default: ``pipeline``).
        batch_size: contexts per forecast call.
        reps: paired timing rounds at least (:func:`mergeplug.timing.paired_speedups`; 6 give a 95% interval).
        min_time: each timed measurement repeats the whole backtest until at least this many seconds passed.
        seed: torch seed set before every forecast (sampling models see the same noise in every setting).
        out: a directory for resumable results (``tune.jsonl``, ``tune.json``), or None.
        progress: show a progress bar.
        apply_best: leave ``pipeline`` merged with the chosen setting.
        margin: a candidate qualifies only if its speed-up interval's lower bound is above ``1 + margin``.
        time_budget: seconds of timing at most (after ``reps`` rounds).
        clock: the timer (default ``time.perf_counter``; tests pass a fake one).

    Returns:
        A :class:`TuneResult`; ``print(result)`` shows the table it decided from.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a number >= 0 (a relative WQL change, 0.01 = 1%), got {tolerance!r}")
    if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 1):
        raise ValueError(f"context must be a number of time steps >= 1 (or None: the whole history), got {context!r}")
    if candidates is not None and (
        not isinstance(candidates, dict) or not all(isinstance(v, dict) for v in candidates.values())
    ):
        raise ValueError(
            "candidates must be a dict of label -> mergeplug.apply keyword arguments, e.g. "
            f"{{'k=1,ratio=0.2': {{'k': 1, 'ratio': 0.2}}}}, got {type(candidates).__name__}"
        )
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < math.inf:
        raise ValueError(f"margin must be a number >= 0 (0.05: at least 5% faster), got {margin!r}")
    if isinstance(prediction_length, bool) or not isinstance(prediction_length, int) or prediction_length < 1:
        raise ValueError(f"prediction_length must be an int >= 1, got {prediction_length!r}")
    for name, v in (("windows", windows), ("batch_size", batch_size), ("reps", reps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    if isinstance(data, np.ndarray):
        series = [data] if data.ndim == 1 else list(data)
    else:
        series = list(data)
        if series and not isinstance(series[0], dict) and np.ndim(series[0]) == 0:
            series = [np.asarray(series, dtype=np.float32)]
    if not series:
        raise ValueError("data holds no series")
    _refuse_infinite(series)
    contexts, targets = backtest_windows(series, prediction_length, windows, context)
    if not np.isfinite(targets).any():
        raise ValueError("every backtest window is missing (NaN): give series with observed values at the end")
    target = pipeline if target is None else target
    fc = forecast or _chronos_forecast(pipeline)
    if candidates is None:
        candidates = default_candidates(
            num_layers or encoder_layers(target), model=target, context=_context_steps(pipeline, contexts)
        )
    if "unmerged" in candidates:
        raise ValueError("'unmerged' is the reference and cannot be a candidate label")
    before = settings(target)

    def configure(kwargs: dict[str, Any] | None) -> None:
        remove(target, merging_only=True)  # the user's fast sampling (if any) stays on
        if kwargs:
            apply(target, **kwargs)

    def run_all(ctxs: list[np.ndarray]) -> np.ndarray:
        parts = []
        for b, a in enumerate(range(0, len(ctxs), batch_size)):
            torch.manual_seed(seed + b)
            parts.append(fc(ctxs[a : a + batch_size], prediction_length))
        return np.concatenate(parts, axis=0)

    store = TuneFiles(out, {
        "model": _model_id(target), "data": _fingerprint(contexts, targets), "prediction_length": prediction_length,
        "windows": windows, "context": context, "seed": seed, "batch_size": batch_size,
        "candidates": {k: candidates[k] for k in sorted(candidates)},
    })  # fmt: skip
    labels = ["unmerged", *candidates]
    rows: dict[str, dict[str, Any]] = {}
    try:
        with torch.inference_mode():
            for label in tqdm(labels, desc="tune: accuracy", disable=not progress, leave=False):
                done = store.get(label)
                if done is not None and "merged" in done:
                    rows[label] = done
                    continue
                configure(candidates.get(label))
                with recording_token_counts(target) as forwards:
                    q = run_all(contexts)
                row = {"label": label, "WQL": weighted_quantile_loss(q, targets)}
                if not math.isfinite(row["WQL"]):
                    raise ValueError(
                        f"the forecasts of {label!r} give a WQL of {row['WQL']}: the model returned non-finite "
                        "quantiles on these series; check them for extreme values"
                    )
                row["tokens"] = token_counts(target) if label != "unmerged" else None
                row["merged"] = any(c[-1] < c[0] for c in forwards)
                row["longest"] = max((c[0] for c in forwards), default=None)
                row["macs_ratio"] = None
                rows[label] = row
                store.add(row)
            _count_macs(rows, labels, candidates, configure, target, lambda: run_all(contexts[:batch_size]))
            noop = {label: reason for label in labels[1:] if (reason := _noop(rows[label], candidates[label], target,
                                                                              configure))}  # fmt: skip
            timed = [label for label in labels if label not in noop]
            speeds = {}
            if len(timed) > 1:
                speeds = paired_speedups(
                    {label: (lambda: run_all(contexts)) for label in timed},
                    setup=lambda label: configure(candidates.get(label)), min_time=min_time, min_rounds=reps,
                    max_rounds=max(reps, 40), budget_s=time_budget, clock=clock, progress=progress,
                    desc="tune: timing",
                )  # fmt: skip
    except BaseException:
        store.close()
        raise
    finally:
        remove(target, merging_only=True)
        if before is not None:
            apply(target, **apply_kwargs(before))
    result = _decide(rows, labels, candidates, noop, speeds, tolerance, margin, len(contexts))
    store.finish(result)
    store.close()
    if apply_best and result.best is not None:
        remove(target, merging_only=True)
        apply(target, **result.best)
    return result


def _refuse_infinite(series: list[Any]) -> None:
    """NaN is a missing value (Chronos masks it); +-inf is refused, naming where it is."""
    for i, s in enumerate(series):
        x = np.asarray(s["target"] if isinstance(s, dict) else s, dtype=np.float64)
        bad = np.flatnonzero(np.isinf(x))
        if bad.size:
            raise ValueError(
                f"series {i} holds {x[bad[0]]} at position {int(bad[0])} ({bad.size} infinite value(s)): replace "
                "infinite values with NaN (a missing value) or drop them before tuning"
            )


def _count_macs(rows, labels, candidates, configure, target, run_one) -> None:
    """MACs ratio (unmerged / candidate) of each row that lacks one, on one batch of the contexts."""
    if all(rows[label].get("macs_ratio") is not None for label in labels[1:]):
        return
    from .cost import profile

    try:
        macs = {}
        for label in labels:
            configure(candidates.get(label))
            macs[label] = profile(target, run=run_one, storage=False).macs
    except (TypeError, RuntimeError):  # not a model the counter can run: no MACs column
        return
    for label in labels[1:]:
        if macs["unmerged"] and macs[label]:
            rows[label]["macs_ratio"] = macs["unmerged"] / macs[label]


def _noop(row: dict[str, Any], kwargs: dict[str, Any], target: Any, configure) -> str | None:
    """Why a candidate merged nothing on this data (:func:`mergeplug.timing.noop_reason`), or None."""
    if row["merged"]:
        return None
    configure(kwargs)
    floor = getattr(settings(target), "min_tokens", None)
    return noop_reason(merged=False, longest=row.get("longest"), macs_ratio=row.get("macs_ratio") or 1.0,
                       min_tokens=floor)  # fmt: skip


def _decide(rows, labels, candidates, noop, speeds, tolerance, margin, windows) -> TuneResult:
    """Apply the qualification rule (module docstring) and build the result table."""
    ref_wql = rows["unmerged"]["WQL"]
    table, ok, failed = [], [], {}
    for label in labels:
        row = dict(rows[label])
        row["WQL_change"] = row["WQL"] / ref_wql - 1.0 if ref_wql > 0 else 0.0
        row["within"] = row["WQL_change"] <= tolerance
        if label in speeds:
            row.update(speeds[label].fields())
        if label == "unmerged":
            row["status"], why = "reference", None
        elif label in noop:
            row["noop"] = noop[label]
            row["status"] = why = "merges nothing here"
        elif not row["within"]:
            row["status"], why = f"WQL {row['WQL_change']:+.1%} > tolerance {tolerance:.1%}", "outside the tolerance"
        elif not row["speedup_low"] > 1 + margin:
            row["status"] = f"not measurably faster (interval low {row['speedup_low']:.2f} <= {1 + margin:.2f})"
            why = "not measurably faster"
        else:
            row["status"], why = "qualifies", None
            ok.append(row)
        if why:
            failed[why] = failed.get(why, 0) + 1
        table.append(row)
    best = None
    if ok:
        top = max(ok, key=lambda r: r["speedup"])
        tied = [r for r in ok if r["speedup_high"] >= top["speedup_low"]]  # intervals overlapping the fastest's
        best = max(tied, key=lambda r: (r.get("macs_ratio") or 0.0, -r["WQL_change"], -labels.index(r["label"])))
    reason = ""
    if best is None:
        reason = (
            "no candidates"
            if len(table) == 1
            else "no candidate qualifies: " + ", ".join(f"{n} {k}" for k, n in failed.items())
        )
    return TuneResult(
        best=None if best is None else dict(candidates[best["label"]]),
        best_label="unmerged" if best is None else best["label"],
        rows=table,
        tolerance=tolerance,
        windows=windows,
        margin=margin,
        reason=reason,
    )

"""Evaluation runs: accuracy (GluonTS MASE / WQL) and speed of unmerged vs merged models, side by side.

For every dataset the test windows are cut as Chronos does (``gluonts.dataset.split``), the seasonal-naive
baseline is scored, then the unmerged model and every merge setting forecast the same windows in the same
process. Speed is measured separately on a fixed subset of windows with :func:`mergeplug.timing.paired_speedups`
(warm-up, paired interleaved rounds against the unmerged model, the speed-up with its 95% interval); a setting
that merged no token on a dataset is not timed and its row says why (``noop``). Each (dataset, setting) result is
appended to ``results.jsonl`` as soon as it exists; a rerun with the same output directory skips finished cells.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from gluonts.dataset.split import split
from gluonts.ev.metrics import MASE, MeanWeightedSumQuantileLoss
from gluonts.model.evaluation import evaluate_forecasts
from gluonts.model.forecast import QuantileForecast
from gluonts.model.seasonal_naive import SeasonalNaivePredictor
from tqdm.auto import tqdm

from .._cli import check_device
from ..core import recording_token_counts
from ..cost import model_fingerprint, profile
from ..patches import families
from ..timing import noop_reason, paired_speedups
from .data import EvalDataset, check_dataset_name, load_dataset
from .memory import PeakMemory
from .models import QUANTILES, Forecaster, chronos_quantiles, load_model
from .run_store import ResultStore
from .settings import HARNESS_KEYS, MERGE_KEYS, SAMPLING, MergeSetting, apply_setting, parse_merge

logger = logging.getLogger("mergeplug")

__all__ = [
    "QUANTILES", "MergeSetting", "parse_merge", "apply_setting", "load_model", "chronos_quantiles", "evaluate", "run",
    "noop_reason", "PeakMemory", "MERGE_KEYS", "HARNESS_KEYS", "SAMPLING",
]  # fmt: skip


def _samples_tokens(forecaster: Forecaster | None) -> bool:
    """Is this a Chronos-T5 (seq2seq) pipeline, the model ``fast_sampling`` speeds up?"""
    from chronos import ChronosPipeline

    target = None if forecaster is None else forecaster.target
    return isinstance(target, ChronosPipeline) and target.model.config.model_type == "seq2seq"


# --------------------------------------------------------------------------------------------- forecasting
def _windows(ds: EvalDataset):
    _, template = split(ds.entries, offset=-ds.prediction_length * ds.windows)
    return template.generate_instances(prediction_length=ds.prediction_length, windows=ds.windows)


def seasonal_naive_quantiles(ds: EvalDataset, inputs: list[dict[str, Any]]) -> np.ndarray:
    """(N, Q, H) seasonal-naive forecasts (GluonTS predictor; every quantile is the point forecast)."""
    predictor = SeasonalNaivePredictor(prediction_length=ds.prediction_length, season_length=ds.season)
    point = np.stack([f.mean for f in predictor.predict(inputs)])  # (N, H)
    return np.repeat(point[:, None, :], len(QUANTILES), axis=1)


def score(ds: EvalDataset, test_data, quantiles: np.ndarray) -> dict[str, float]:
    """MASE (median forecast) and WQL (mean weighted quantile loss over 0.1..0.9), GluonTS definitions."""
    forecasts = [
        QuantileForecast(
            forecast_arrays=quantiles[i],
            start_date=inp["start"] + len(inp["target"]),
            forecast_keys=[str(q) for q in QUANTILES],
            item_id=inp.get("item_id"),
        )
        for i, inp in enumerate(test_data.input)
    ]
    import gluonts.model.evaluation as gluonts_evaluation

    # GluonTS draws a progress bar for every scoring call, with no option to turn it off: off here
    with mock.patch.object(gluonts_evaluation, "tqdm", partial(tqdm, disable=True)):
        metrics = evaluate_forecasts(
            forecasts,
            test_data=test_data,
            metrics=[MASE(), MeanWeightedSumQuantileLoss(list(QUANTILES))],
            seasonality=ds.season,
        )
    row = metrics.iloc[0]
    return {"MASE": float(row["MASE[0.5]"]), "WQL": float(row["mean_weighted_sum_quantile_loss"])}


def evaluate(ds: EvalDataset, forecast: Callable[[list[np.ndarray]], np.ndarray]) -> dict[str, float]:
    """Score ``forecast`` (contexts -> (N, Q, H) quantiles) on the dataset's test windows."""
    test_data = _windows(ds)
    contexts = [np.asarray(inp["target"], dtype=np.float32) for inp in test_data.input]
    return score(ds, test_data, forecast(contexts))


# ------------------------------------------------------------------------------------------------- results
#: run options that change a row's numbers: a directory holding rows computed with other values is not resumed
def run(
    model: str | Forecaster,
    datasets: Sequence[str | EvalDataset],
    merges: Sequence[str] = (),
    *,
    out: str | Path = "results/eval",
    reps: int = 6,
    batch_size: int = 32,
    timing_windows: int = 64,
    max_series: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool = True,
    cost_windows: int = 4,
    prediction_length: int | None = None,
    windows: int | None = None,
    freq: str | None = None,
    min_time: float = 0.2,
    time_budget: float = 60.0,
    context: int | None = None,
    timed_datasets: int | None = None,
) -> list[dict[str, Any]]:
    """Evaluate the seasonal-naive baseline, the unmerged model and each merge setting on each dataset.

    ``datasets``: registry names, ``file:PATH`` (CSV or Parquet, see :func:`~mergeplug.eval.data.load_local`)
    or :class:`~mergeplug.eval.data.EvalDataset` objects (e.g. from :func:`~mergeplug.eval.data.variant`).
    ``model``: a spec for :func:`~mergeplug.eval.models.load_model` (``"seasonal-naive"`` scores only the
    baseline) or a :class:`~mergeplug.eval.models.Forecaster`. Per setting it records MASE, WQL, their change vs
    unmerged, the speed-up on ``timing_windows`` windows with its 95% interval (``speedup``, ``speedup_low``,
    ``speedup_high``, ``speed_verdict``: :func:`mergeplug.timing.paired_speedups`, at least ``reps`` paired rounds
    of at least ``min_time`` seconds each, more until the interval is within +-5% or ``time_budget`` seconds per
    dataset are spent), throughput, encoder tokens per layer, peak memory (``peak_mem_mb``: resident memory above
    the level before that setting's forecasts) and the cost counted by :func:`mergeplug.cost.profile` on
    ``cost_windows`` windows (``macs_per_window``, ``macs_ratio`` = unmerged / this, ``params``). A merge setting
    that removed no token on the dataset is not timed: its row has ``noop`` (the reason, e.g. every series is at
    most ``min_tokens`` tokens long) and no speed-up.

    ``prediction_length`` / ``windows`` replace each dataset's protocol (a local file needs
    ``prediction_length``; its ``windows`` default to 1); ``freq``: a local file's frequency (a pandas offset
    alias, inferred when None). ``context``: the model sees only the last ``context`` time steps of each test
    input (None: all of it; a Chronos pipeline still cuts to its own ``context_length``); scores, seasonal naive
    and MASE's scale use the whole history either way, so runs at several contexts compare directly. ``timed_datasets``:
    only the first N datasets are timed (None: all), the others get accuracy, MACs and token counts only (the
    speed of one model at one context length hardly depends on the dataset). Every option is checked before any
    work. One process writes into ``out`` at a
    time (a second is refused); rows are written as they finish, and a rerun with the same options resumes
    (other options are refused, naming them). Returns all rows of the results directory (finished cells of an
    earlier run included).
    """
    _check_options(
        datasets, merges, model=model, reps=reps, batch_size=batch_size, timing_windows=timing_windows,
        cost_windows=cost_windows, max_series=max_series, prediction_length=prediction_length, windows=windows,
        freq=freq, device=device, dtype=dtype, min_time=min_time, time_budget=time_budget, context=context,
        timed_datasets=timed_datasets,
    )  # fmt: skip
    data_options = dict(prediction_length=prediction_length, windows=windows, max_series=max_series, freq=freq)
    name = model if isinstance(model, str) else (model.name or type(model).__name__)
    meta = {
        "model": name, "quantiles": list(QUANTILES), "seed": seed, "merges": list(merges), "reps": reps,
        "prediction_length": prediction_length, "windows": windows, "freq": freq, "max_series": max_series,
        "batch_size": batch_size, "timing_windows": timing_windows, "cost_windows": cost_windows, "device": device,
        "dtype": dtype, "context": context, "timed_datasets": timed_datasets,
    }  # fmt: skip
    from accelerate import PartialState

    dist = PartialState()  # one process unless started with `accelerate launch`
    store = ResultStore(out, meta, write=dist.is_main_process)
    try:
        forecaster, settings = _forecaster_and_settings(model, merges, device=device, dtype=dtype)
        opt = _Options(reps, batch_size, timing_windows, cost_windows, seed, progress, bool(merges), min_time,
                       time_budget, context)  # fmt: skip
        for i, item in enumerate(tqdm(datasets, desc="datasets", disable=not progress)):
            ds = item if isinstance(item, EvalDataset) else load_dataset(item, **data_options)
            base = {"dataset": ds.name, "series": len(ds), "skipped_series": ds.skipped, "windows": ds.windows,
                    "prediction_length": ds.prediction_length}  # fmt: skip
            if not store.done(ds.name, "seasonal-naive"):
                test_data = _windows(ds)
                metrics = score(ds, test_data, seasonal_naive_quantiles(ds, list(test_data.input)))
                store.add({**base, "setting": "seasonal-naive", **metrics})
            pending = [s for s in settings if not store.done(ds.name, s.label)]
            if pending:
                reference = store.get(ds.name, "unmerged")
                timed = timed_datasets is None or i < timed_datasets
                for row in _measure(forecaster.for_dataset(ds), ds, settings, pending, reference, opt, dist, timed):
                    store.add({**base, **row})
        return store.rows
    finally:
        store.close()


def _check_options(
    datasets: Sequence[str | EvalDataset],
    merges: Sequence[str],
    *,
    model: Any,
    reps: Any,
    batch_size: Any,
    timing_windows: Any,
    cost_windows: Any,
    max_series: Any,
    prediction_length: Any,
    windows: Any,
    freq: str | None,
    device: str,
    dtype: str,
    min_time: Any = 0.2,
    time_budget: Any = 60.0,
    context: Any = None,
    timed_datasets: Any = None,
) -> None:
    """Every option of :func:`run` that can be checked before any work (a ValueError naming it otherwise)."""
    for name, value in (("min_time", min_time), ("time_budget", time_budget)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    for name, value, low in (("reps", reps, 1), ("batch_size", batch_size, 1), ("timing_windows", timing_windows, 1),
                             ("cost_windows", cost_windows, 0)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    for name, value in (("max_series", max_series), ("prediction_length", prediction_length), ("windows", windows),
                        ("context", context), ("timed_datasets", timed_datasets)):  # fmt: skip
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an int >= 1 (or None for the default), got {value!r}")
    check_device(device)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    if model == "seasonal-naive" and merges:
        raise ValueError("seasonal-naive has nothing to merge: drop --merge, or evaluate a model with --model")
    for item in datasets:  # a missing horizon or an unknown name fails now, not after hours of work
        if isinstance(item, str):
            check_dataset_name(item, prediction_length=prediction_length, freq=freq)


def _forecaster_and_settings(
    model: str | Forecaster, merges: Sequence[str], *, device: str, dtype: str
) -> tuple[Forecaster | None, list[MergeSetting]]:
    """The model (None for the seasonal-naive baseline alone) and its settings, unmerged first; settings the model
    cannot run are refused before any forecast."""
    if model == "seasonal-naive":
        return None, []
    forecaster = load_model(model, device=device, dtype=dtype)
    settings = [MergeSetting("unmerged", {})] + [parse_merge(m, forecaster.num_layers) for m in merges]
    if any(s.sampling for s in settings) and not _samples_tokens(forecaster):
        raise ValueError(
            f"sampling=... switches Chronos-T5's token sampling; {forecaster.name or model!r} is not a "
            "Chronos-T5 (seq2seq) pipeline (Chronos-Bolt and Chronos-2 predict quantiles directly): drop "
            "sampling= from --merge"
        )
    if merges and not forecaster.mergeable():
        raise ValueError(
            f"token merging does not apply to {forecaster.name or model!r} (supported families: "
            f"{', '.join(f.name for f in families())}); evaluate it without --merge"
        )
    return forecaster, settings


@dataclass(frozen=True)
class _Options:
    """How :func:`_measure` forecasts and times (see :func:`run`); ``merging``: settings are applied / removed."""

    reps: int
    batch_size: int
    timing_windows: int
    cost_windows: int
    seed: int
    progress: bool
    merging: bool
    min_time: float = 0.2
    time_budget: float = 60.0
    context: int | None = None


def last_steps(inputs: Sequence[dict[str, Any]], context: int | None) -> list[dict[str, Any]]:
    """Test inputs cut to their last ``context`` time steps (``start`` moved with them); None: unchanged."""
    if context is None:
        return list(inputs)
    out = []
    for inp in inputs:
        cut = max(0, len(inp["target"]) - context)
        out.append({**inp, "target": inp["target"][cut:], "start": inp["start"] + cut} if cut else inp)
    return out


def _measure(
    fc: Forecaster,
    ds: EvalDataset,
    settings: list[MergeSetting],
    pending: list[MergeSetting],
    reference: dict[str, Any] | None,
    opt: _Options,
    dist: Any,
    timed: bool = True,
) -> list[dict[str, Any]]:
    """The rows of the ``pending`` settings on one dataset: accuracy on every window, cost on a few, then paired
    timing against the unmerged model (``settings[0]``, always re-timed; ``reference``: its stored row when it is
    not pending; ``timed=False``: no timing, rows without speed fields). Settings that merged no token are named
    (``noop``), not timed."""
    import mergeplug

    def configure(s: MergeSetting) -> None:
        if opt.merging:  # else nothing to apply or remove (and the model may not be patchable at all)
            apply_setting(fc.target, s, season=ds.season)

    def recording(s: MergeSetting):
        if opt.merging and s.kwargs and fc.target is not None:
            return recording_token_counts(fc.target)
        return nullcontext([])

    test_data = _windows(ds)
    inputs = last_steps(test_data.input, opt.context)  # what the model sees; scoring uses the whole history
    merged = [s for s in pending if not s.is_reference]
    accuracy: dict[str, dict[str, float]] = {}
    counts: dict[str, list[int] | None] = {}
    seen: dict[str, list[list[int]]] = {}
    floors: dict[str, int | None] = {}
    memory: dict[str, float] = {}
    costs: dict[str, dict[str, Any]] = {}
    kw = dict(batch_size=opt.batch_size, seed=opt.seed, shard=(dist.process_index, dist.num_processes))
    with torch.inference_mode():
        for s in pending:  # accuracy: every window, same seeds for every setting
            configure(s)
            with PeakMemory() as mem, recording(s) as forwards:
                q = fc.quantiles(
                    inputs, ds.prediction_length, **kw, progress=opt.progress and dist.is_main_process,
                    desc=f"{ds.name} {s.label}",
                )  # fmt: skip
            memory[s.label] = mem.extra_mb
            accuracy[s.label] = score(ds, test_data, q)
            counts[s.label] = mergeplug.token_counts(fc.target) if s.kwargs else None
            seen[s.label] = forwards
            floors[s.label] = getattr(mergeplug.settings(fc.target), "min_tokens", None) if s.kwargs else None
        if fc.target is not None and opt.cost_windows > 0:  # a torch model: count its MACs per window
            few = inputs[: opt.cost_windows]
            for s in [settings[0], *merged]:
                configure(s)
                rep = profile(
                    fc.target,
                    run=partial(fc.quantiles, few, ds.prediction_length, batch_size=len(few), seed=opt.seed),
                    series=len(few),
                    storage=False,
                )
                costs[s.label] = {"macs_per_window": rep.macs_per_series, "params": rep.params["total"]}
        ref_macs = costs.get("unmerged", {}).get("macs_per_window")
        ratios = {s.label: ref_macs / costs[s.label]["macs_per_window"] for s in [settings[0], *merged]
                  if ref_macs and costs.get(s.label, {}).get("macs_per_window")}  # fmt: skip
        noop = {s.label: reason for s in merged if s.kwargs and not s.sampling
                and (reason := noop_reason(seen[s.label], ratios.get(s.label), floors[s.label]))}  # fmt: skip
        to_time = [settings[0]] + [s for s in merged if s.label not in noop] if timed else []
        subset = inputs[: opt.timing_windows]
        speeds = {}
        if len(to_time) > 1:
            by_label = {s.label: s for s in to_time}

            def setup(label: str) -> None:
                configure(by_label[label])
                dist.wait_for_everyone()

            calls = {s.label: partial(fc.quantiles, subset, ds.prediction_length, **kw) for s in to_time}
            speeds = paired_speedups(
                calls, setup=setup, min_time=opt.min_time, min_rounds=opt.reps, max_rounds=max(opt.reps, 40),
                budget_s=opt.time_budget, adaptive=dist.num_processes == 1,
                progress=opt.progress and dist.is_main_process, desc=f"{ds.name} timing",
            )  # fmt: skip
    configure(settings[0])
    ref_acc = accuracy.get("unmerged") or reference
    rows = []
    for s in pending:
        acc = accuracy[s.label]
        macs = costs.get(s.label, {})
        if s.is_reference:
            speed = {"speedup": 1.0, "speed_verdict": "reference"}
            if "unmerged" in speeds:
                speed["time_s"] = speeds["unmerged"].reference_s
        elif s.label in speeds:
            speed = speeds[s.label].fields()
        elif s.label in noop:
            speed = {"noop": noop[s.label]}
        else:  # not timed on this dataset
            speed = {}
        if "time_s" in speed:
            speed["windows_per_s"] = len(subset) / speed["time_s"]
        rows.append({
            "setting": s.label, "merge": s.kwargs, "sampling": s.sampling or "stock", **acc,
            "MASE_change": acc["MASE"] / ref_acc["MASE"] - 1.0, "WQL_change": acc["WQL"] / ref_acc["WQL"] - 1.0,
            **speed, "timing_windows": len(subset), "tokens_per_layer": counts[s.label],
            **({"model_fingerprint": model_fingerprint(fc.target)} if fc.target is not None else {}),
            "peak_mem_mb": memory[s.label],
            "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, **macs,
            **({"macs_ratio": ratios[s.label]} if s.label in ratios else {}),
        })  # fmt: skip
    return rows

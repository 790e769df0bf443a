"""Evaluation runs: accuracy (GluonTS MASE / WQL) and speed of unmerged vs merged models, side by side.

For every dataset the test windows are cut as Chronos does (``gluonts.dataset.split``), the seasonal-naive
baseline is scored, then the unmerged model and every merge setting forecast the same windows in the same
process. Speed is measured separately on a fixed subset of windows: a warm-up, then ``reps`` interleaved
repetitions over all settings, medians. Each (dataset, setting) result is appended to ``results.jsonl`` as
soon as it exists; a rerun with the same output directory skips finished cells.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gluonts.dataset.split import split
from gluonts.ev.metrics import MASE, MeanWeightedSumQuantileLoss
from gluonts.model.evaluation import evaluate_forecasts
from gluonts.model.forecast import QuantileForecast
from gluonts.model.seasonal_naive import SeasonalNaivePredictor
from tqdm.auto import tqdm

from ..config import MergeConfig, schedule_for_reduction
from .data import EvalDataset, load_dataset

__all__ = ["QUANTILES", "MergeSetting", "parse_merge", "load_model", "evaluate", "run"]

QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MERGE_KEYS = ("k", "r", "ratio", "input_ratio", "reduction", "schedule", "proportional_attention")


@dataclass(frozen=True)
class MergeSetting:
    """One merge setting of a run: its label and the keyword arguments for ``mergeplug.apply``."""

    label: str
    kwargs: dict[str, Any]


def parse_merge(text: str, num_layers: int | None = None) -> MergeSetting:
    """Parse ``"k=1,ratio=0.2"`` style settings.

    Keys: ``k`` (int or ``global``), ``r`` (int, or per-layer ints joined by ``:``), ``ratio`` (float or
    per-layer floats joined by ``:``), ``input_ratio``, ``proportional_attention`` (true/false), and
    ``reduction`` + optional ``schedule`` (constant / front / front-input) which need ``num_layers``.
    """
    kwargs: dict[str, Any] = {}
    reduction, schedule = None, "constant"
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ValueError(f"merge setting {text!r}: expected key=value, got {part!r}")
        key, value = (x.strip() for x in part.split("=", 1))
        try:
            if key == "k":
                kwargs["k"] = None if value.lower() in ("global", "none") else int(value)
            elif key == "r":
                vals = [int(v) for v in value.split(":")]
                kwargs["r"] = vals if len(vals) > 1 else vals[0]
            elif key == "ratio":
                fvals = [float(v) for v in value.split(":")]
                kwargs["ratio"] = fvals if len(fvals) > 1 else fvals[0]
            elif key == "input_ratio":
                kwargs["input_ratio"] = float(value)
            elif key == "proportional_attention":
                kwargs["proportional_attention"] = value.lower() in ("1", "true", "yes")
            elif key == "reduction":
                reduction = float(value)
            elif key == "schedule":
                schedule = value
            else:
                raise KeyError(key)
        except KeyError:
            raise ValueError(f"unknown merge key {key!r} in {text!r}; known keys: {', '.join(MERGE_KEYS)}") from None
        except ValueError as exc:
            raise ValueError(f"merge setting {text!r}: bad value for {key!r}: {exc}") from None
    if reduction is not None:
        if num_layers is None:
            raise ValueError("reduction=... needs the model's number of encoder layers")
        kwargs.update(schedule_for_reduction(reduction, num_layers, schedule))  # type: ignore[arg-type]
    MergeConfig(**{k: v for k, v in kwargs.items()})  # validate now, with the config's own messages
    return MergeSetting(label=text.replace(" ", ""), kwargs=kwargs)


def load_model(spec: str, *, device: str = "cpu", dtype: str = "float32"):
    """A Chronos pipeline from a local path or hub id, or ``random:<family>-<size>`` built from a config.

    ``random:chronos-t5-tiny``, ``random:chronos-bolt-small`` etc. have random weights: for speed and plumbing
    checks only.
    """
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if spec.startswith("random:"):
        from ..models import chronos_bolt, chronos_t5

        family, _, size = spec[len("random:") :].rpartition("-")
        builders = {"chronos-t5": chronos_t5, "chronos-bolt": chronos_bolt}
        if family not in builders:
            raise ValueError(
                f"unknown random model {spec!r}; use random:chronos-t5-<size> or random:chronos-bolt-<size>"
            )
        pipe = builders[family](size)  # type: ignore[arg-type]
        pipe.model.to(device=device, dtype=torch_dtype)
        return pipe
    from chronos import BaseChronosPipeline

    try:
        return BaseChronosPipeline.from_pretrained(spec, device_map=device, dtype=torch_dtype)
    except OSError as exc:
        raise OSError(
            f"could not load model {spec!r} ({exc}). A hub id needs internet (or a filled local cache); "
            "offline, pass a local directory or random:chronos-t5-<size>."
        ) from exc


def _encoder_layers(pipe) -> int:
    inner = pipe.inner_model
    return int(getattr(inner.config, "num_layers", 0) or 0)


# --------------------------------------------------------------------------------------------- forecasting
def _windows(ds: EvalDataset):
    _, template = split(ds.entries, offset=-ds.prediction_length * ds.windows)
    return template.generate_instances(prediction_length=ds.prediction_length, windows=ds.windows)


def chronos_quantiles(
    pipe,
    contexts: Sequence[np.ndarray],
    h: int,
    *,
    batch_size: int = 32,
    seed: int | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: bool = False,
    desc: str = "",
) -> np.ndarray:
    """(N, Q, H) quantile forecasts from a Chronos pipeline, in batches (NaNs are missing values).

    Batch ``b`` is seeded with ``seed + b`` (when ``seed`` is given), so a forecast does not depend on which
    process computes it. ``shard=(rank, world)``: this process computes batches ``rank, rank + world, ...``
    and the batches are gathered across processes (``accelerate``), giving the single-process result.
    """
    rank, world = shard
    starts = list(range(0, len(contexts), batch_size))
    mine: dict[int, np.ndarray] = {}
    for b in tqdm(range(rank, len(starts), world), desc=desc, disable=not progress, leave=False):
        if seed is not None:
            torch.manual_seed(seed + b)
        batch = [torch.tensor(c, dtype=torch.float32) for c in contexts[starts[b] : starts[b] + batch_size]]
        q, _ = pipe.predict_quantiles(batch, prediction_length=h, quantile_levels=list(QUANTILES))
        mine[b] = q.float().numpy().transpose(0, 2, 1)
    if world > 1:
        from accelerate.utils import gather_object

        for part in gather_object([mine]):
            mine.update(part)
    return np.concatenate([mine[b] for b in range(len(starts))], axis=0)


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
class ResultStore:
    """``results.jsonl`` + ``run.json`` in a directory; rows are appended as they arrive."""

    def __init__(self, directory: str | Path, meta: dict[str, Any], write: bool = True):
        self.dir = Path(directory)
        self.write = write
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "results.jsonl"
        meta_path = self.dir / "run.json"
        if meta_path.exists():
            old = json.loads(meta_path.read_text())
            for key in ("model", "quantiles", "seed"):
                if old.get(key) != meta.get(key):
                    raise ValueError(
                        f"{self.dir} holds a run with {key}={old.get(key)!r}, this run has {meta.get(key)!r}: "
                        "use another --out directory"
                    )
        if write:
            meta_path.write_text(json.dumps(meta, indent=1))
        self.rows = [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []

    def done(self, dataset: str, setting: str) -> bool:
        return any(r["dataset"] == dataset and r["setting"] == setting for r in self.rows)

    def get(self, dataset: str, setting: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["dataset"] == dataset and r["setting"] == setting), None)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.write:  # other processes of a multi-process run keep rows in memory only
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(
    model: str,
    datasets: Sequence[str],
    merges: Sequence[str] = (),
    *,
    out: str | Path = "results/eval",
    reps: int = 3,
    batch_size: int = 32,
    timing_windows: int = 64,
    max_series: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate the seasonal-naive baseline, the unmerged model and each merge setting on each dataset.

    Returns all rows of the results directory (finished cells of an earlier run included).
    """
    import mergeplug

    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    pipe = None if model == "seasonal-naive" else load_model(model, device=device, dtype=dtype)
    layers = _encoder_layers(pipe) if pipe is not None else None
    settings = [MergeSetting("unmerged", {})] + [parse_merge(m, layers) for m in merges] if pipe is not None else []
    meta = {"model": model, "quantiles": list(QUANTILES), "seed": seed, "merges": list(merges), "reps": reps}
    from accelerate import PartialState

    dist = PartialState()  # one process unless started with `accelerate launch`
    shard = (dist.process_index, dist.num_processes)
    store = ResultStore(out, meta, write=dist.is_main_process)

    def configure(s: MergeSetting) -> None:
        if not s.kwargs:
            mergeplug.remove(pipe)
        else:
            mergeplug.apply(pipe, **s.kwargs)

    for name in tqdm(datasets, desc="datasets", disable=not progress):
        ds = load_dataset(name, max_series=max_series)
        base = {"dataset": name, "series": len(ds), "skipped_series": ds.skipped, "windows": ds.windows}
        base["prediction_length"] = ds.prediction_length
        if not store.done(name, "seasonal-naive"):
            test_data = _windows(ds)
            metrics = score(ds, test_data, seasonal_naive_quantiles(ds, list(test_data.input)))
            store.add({**base, "setting": "seasonal-naive", **metrics})
        pending = [s for s in settings if not store.done(name, s.label)]
        if not pending:
            continue
        test_data = _windows(ds)
        contexts = [np.asarray(inp["target"], dtype=np.float32) for inp in test_data.input]
        timed = [settings[0]] + [s for s in pending if s.kwargs]  # the unmerged reference is always re-timed
        times: dict[str, list[float]] = {s.label: [] for s in timed}
        accuracy: dict[str, dict[str, float]] = {}
        counts: dict[str, list[int] | None] = {}
        with torch.inference_mode():
            for s in pending:  # accuracy: every window, same seeds for every setting
                configure(s)
                q = chronos_quantiles(
                    pipe,
                    contexts,
                    ds.prediction_length,
                    batch_size=batch_size,
                    seed=seed,
                    shard=shard,
                    progress=progress and dist.is_main_process,
                    desc=f"{name} {s.label}",
                )
                accuracy[s.label] = score(ds, test_data, q)
                counts[s.label] = mergeplug.token_counts(pipe) if s.kwargs else None
            subset = contexts[:timing_windows]
            configure(timed[0])
            chronos_quantiles(pipe, subset[:batch_size], ds.prediction_length, batch_size=batch_size)  # warm-up
            for _ in tqdm(range(reps), desc=f"{name} timing", disable=not progress, leave=False):
                for s in timed:  # interleaved
                    configure(s)
                    dist.wait_for_everyone()
                    start = time.perf_counter()
                    chronos_quantiles(pipe, subset, ds.prediction_length, batch_size=batch_size, seed=seed, shard=shard)
                    times[s.label].append(time.perf_counter() - start)  # the gather makes this the slowest shard
        mergeplug.remove(pipe)
        ref_time = statistics.median(times["unmerged"])
        ref_acc = accuracy.get("unmerged") or store.get(name, "unmerged")
        for s in pending:
            t = statistics.median(times[s.label])
            acc = accuracy[s.label]
            store.add(
                {
                    **base,
                    "setting": s.label,
                    "merge": s.kwargs,
                    **acc,
                    "MASE_change": acc["MASE"] / ref_acc["MASE"] - 1.0,
                    "WQL_change": acc["WQL"] / ref_acc["WQL"] - 1.0,
                    "time_s": t,
                    "timing_windows": len(subset),
                    "windows_per_s": len(subset) / t,
                    "speedup": ref_time / t,
                    "tokens_per_layer": counts[s.label],
                    "peak_rss_mb": _peak_rss_mb(),
                }
            )
    return store.rows

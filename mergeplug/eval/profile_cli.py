"""``mergeplug-eval profile``: parameters, storage and MACs of a model, and MACs ratio vs measured speed-up."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..cost import compare, format_comparison, profile
from .data import load_dataset
from .models import PER_DATASET, load_model
from .run import _windows, parse_merge

__all__ = ["profile_model"]


def _synthetic_inputs(n: int, length: int, seed: int) -> list[dict[str, Any]]:
    """``n`` hourly series of ``length`` points: a daily cycle, a random walk and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return [
        {
            "target": (
                10 + 3 * np.sin(2 * np.pi * t / 24 + rng.uniform(0, 6)) + rng.normal(0, 0.3, length).cumsum()
            ).astype(np.float32),
            "start": pd.Period("2020-01-01 00:00", freq="h"),
        }
        for _ in range(n)
    ]


def profile_model(
    model: str,
    *,
    dataset: str | None = None,
    batch: int = 8,
    context: int = 512,
    horizon: int | None = None,
    merges: list[str] | tuple[str, ...] = (),
    reps: int = 3,
    seed: int = 0,
    out: str | Path | None = None,
) -> str:
    """Profile ``model`` (a :func:`~mergeplug.eval.models.load_model` spec) forecasting ``batch`` windows.

    The windows are the first ``batch`` test windows of ``dataset``, or synthetic hourly series of ``context``
    points. Returns the printable text: the cost report of the unmerged model and, with ``merges``, the MACs
    ratio next to the measured speed-up of each setting (``reps`` interleaved repetitions, medians). ``out``:
    also write both as JSON.
    """
    for name, value in (("batch", batch), ("context", context), ("reps", reps), ("horizon", horizon)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"--{name} must be an int >= 1, got {value!r}")
    fc = load_model(model)
    if dataset is not None:
        ds = load_dataset(dataset, max_series=batch)
        fc = fc.for_dataset(ds)
        inputs = list(_windows(ds).input)[:batch]
        h = horizon or ds.prediction_length
    else:
        if model.removeprefix("mergeplug:") in PER_DATASET:
            raise ValueError(f"{model} has one model per dataset: pass --dataset (e.g. electricity_hourly)")
        inputs = _synthetic_inputs(batch, context, seed)
        h = horizon or 64
    if fc.target is None:
        raise ValueError(f"{model} is not a PyTorch model: there is nothing to count")
    if merges and not fc.mergeable():
        raise ValueError(f"token merging does not apply to {model}; profile it without --merge")
    run = partial(fc.quantiles, inputs, h, batch_size=len(inputs), seed=seed)
    report = profile(fc.target, run=run, series=len(inputs))
    where = f"dataset {dataset}" if dataset else f"synthetic context {context}"
    text = f"{model}: {len(inputs)} windows ({where}), horizon {h}\n{report}"
    rows: list[dict[str, Any]] = []
    if merges:
        settings = {"unmerged": None}
        for m in merges:
            s = parse_merge(m, fc.num_layers)
            if s.sampling:
                raise ValueError(f"{m!r}: sampling=... is a `mergeplug-eval run` setting; profile counts merging only")
            settings[s.label] = s.kwargs
        rows = compare(fc.target, settings, run=run, reps=reps, seed=seed, series=len(inputs))
        text += "\n\n" + format_comparison(rows)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"model": model, "profile": report.to_dict(), "comparison": rows}, indent=1))
    return text

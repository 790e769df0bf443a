"""The shipped tasks of the compact Transformer, prepared as tensors (:class:`~mergeplug_lab.sbt.train.TaskSpec`).

| task | kind | data | window | model |
|---|---|---|---|---|
| ``japanese_vowels`` | classification | UEA JapaneseVowels, 12 channels, length 7-29, 9 classes | series | d 64 |
| ``basic_motions`` | classification | UEA BasicMotions, 6 channels, length 100, 4 classes | series | d 64 |
| ``kdd_tsad_135`` | anomaly | UCR anomaly archive #135 (univariate, one 12-step anomaly) | 64 | d 32 |
| ``pm25_injected`` | anomaly | Beijing PM2.5, 7 variables, **injected** anomalies in validation / test | 64 | d 64 |
| ``pm25`` | forecast | Beijing PM2.5, 11 channels (7 variables + one-hot wind direction) | 64 | d 64 |
| ``household_power`` | forecast | UCI household power, 7 variables, hourly means | 64 | d 64 |

Classification: validation = a stratified 20% of the training series (fixed split), test = the official test
split. Anomaly: every test step is scored by the window that ends at it (the preceding context comes from the
earlier parts); KDD #135 has no labelled validation part, so its validation windows are the clean last 20% of
the training series. Forecast / anomaly data are standardised with training statistics; forecast MSE / MAE are
in standardised units (the usual convention of the sparse-binary work).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from mergeplug_lab.sbt import data
from mergeplug_lab.sbt.model import SBTConfig
from mergeplug_lab.sbt.train import TaskSpec

__all__ = ["TASKS", "build_task"]

TASKS: dict[str, dict[str, Any]] = {
    "japanese_vowels": {"kind": "classification", "source": "JapaneseVowels", "d_model": 64},
    "basic_motions": {"kind": "classification", "source": "BasicMotions", "d_model": 64},
    "kdd_tsad_135": {"kind": "anomaly", "source": "kdd_tsad_135", "window": 64, "d_model": 32},
    "pm25_injected": {"kind": "anomaly", "source": "beijing_pm25_injected", "window": 64, "d_model": 64},
    "pm25": {"kind": "forecast", "source": "beijing_pm25", "window": 64, "d_model": 64},
    "household_power": {"kind": "forecast", "source": "household_power", "window": 64, "d_model": 64},
}


def _tail(x: np.ndarray, n: int) -> np.ndarray:
    """The last ``n`` rows of ``x`` (none for n = 0, unlike ``x[-0:]``)."""
    return x[len(x) - n :]


def _windows(series: np.ndarray, window: int, first_end: int) -> torch.Tensor:
    """Windows of ``series`` (T, C) ending at every step from ``first_end`` on -> (N, window, C) float32."""
    w = data.sliding_windows(series, window)[first_end - window + 1 :]
    return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))


def _classification(name: str, spec: dict[str, Any], max_series: int | None) -> TaskSpec:
    ds = data.load_classification(spec["source"])
    train, val = ds.validation_split(0.2, seed=0)
    t_max = max(len(x) for x in ds.train_x + ds.test_x)

    def part(xs: list[np.ndarray], ys: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xs, ys = (xs[:max_series], ys[:max_series]) if max_series else (xs, ys)
        x, mask = data.pad_batch(xs, max_len=t_max)
        return x, mask, torch.from_numpy(np.asarray(ys, dtype=np.int64))

    model = SBTConfig(n_channels=ds.n_channels, task="classification", n_classes=ds.n_classes,
                      d_model=spec["d_model"], max_len=t_max)  # fmt: skip
    return TaskSpec(name, "classification", model, part(train.x, train.y), part(val.x, val.y),
                    part(ds.test_x, ds.test_y), {"classes": ds.classes})  # fmt: skip


def _anomaly(name: str, spec: dict[str, Any], max_series: int | None) -> TaskSpec:
    ds = data.load_anomaly(spec["source"])
    w = spec["window"]
    std = data.Standardizer.fit(ds.train)
    train = std.transform(ds.train)
    if ds.validation is not None:
        fit, val, val_labels = train, std.transform(ds.validation), ds.validation_labels
        before_val = train
    else:  # no labelled validation part: hold out the clean end of the training series
        cut = int(len(train) * 0.8)
        fit, val, val_labels = train[:cut], train[cut:], np.zeros(len(train) - cut, dtype=np.int64)
        before_val = fit
    test = std.transform(ds.test)
    before_test = np.concatenate([before_val, val]) if ds.validation is not None else train
    x_fit = _windows(fit, w, w - 1)
    x_val = _windows(np.concatenate([_tail(before_val, w - 1), val]), w, w - 1)
    x_test = _windows(np.concatenate([_tail(before_test, w - 1), test]), w, w - 1)
    if max_series:
        x_fit, x_val, x_test = x_fit[:max_series], x_val[:max_series], x_test[:max_series]
        val_labels, test_labels = val_labels[:max_series], ds.test_labels[:max_series]
    else:
        test_labels = ds.test_labels
    extra = {"val_target": x_val[:, -1].clone(), "test_target": x_test[:, -1].clone(), "columns": ds.columns}
    model = SBTConfig(n_channels=ds.n_channels, task="reconstruction", d_model=spec["d_model"], max_len=w)
    return TaskSpec(
        name,
        "anomaly",
        model,
        (x_fit, None, x_fit[:, -1].clone()),
        (x_val, None, torch.from_numpy(np.asarray(val_labels, dtype=np.int64))),
        (x_test, None, torch.from_numpy(np.asarray(test_labels, dtype=np.int64))),
        extra,
    )


def _forecast(name: str, spec: dict[str, Any], max_series: int | None) -> TaskSpec:
    ds = data.load_forecasting(spec["source"])
    w = spec["window"]
    train, val, test = ds.chronological_split()
    std = data.Standardizer.fit(train)
    train, val, test = std.transform(train), std.transform(val), std.transform(test)
    x_fit = _windows(train, w, w - 1)
    x_val = _windows(np.concatenate([_tail(train, w - 1), val]), w, w - 1)
    x_test = _windows(np.concatenate([_tail(val, w - 1), test]), w, w - 1)
    if max_series:
        x_fit, x_val, x_test = x_fit[:max_series], x_val[:max_series], x_test[:max_series]
    model = SBTConfig(n_channels=train.shape[1], task="forecast", d_model=spec["d_model"], max_len=w)
    parts = [(x, None, x[:, -1].clone()) for x in (x_fit, x_val, x_test)]
    return TaskSpec(name, "forecast", model, *parts, {"columns": ds.columns})


def build_task(name: str, *, max_series: int | None = None, **model_overrides: Any) -> TaskSpec:
    """Prepare a shipped task.

    Args:
        name: one of :data:`TASKS`.
        max_series: keep only the first N series / windows of every part (tests, smoke runs).
        model_overrides: :class:`~mergeplug_lab.sbt.model.SBTConfig` fields to change (e.g. ``attention="step-t"``,
            ``qkv_keep=0.5``, ``d_model=32``).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    spec = TASKS[name]
    build = {"classification": _classification, "anomaly": _anomaly, "forecast": _forecast}[spec["kind"]]
    task = build(name, spec, max_series)
    if model_overrides:
        task.model = replace(task.model, **model_overrides)
    return task

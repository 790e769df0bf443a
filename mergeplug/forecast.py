"""Quantile forecasts: the levels every forecast and score uses, the one call that asks a Chronos pipeline for them
(``mergeplug.tune`` and the harness both go through it), backtest windows cut from a user's series and their
weighted quantile loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["QUANTILES", "chronos_quantile_forecast", "weighted_quantile_loss", "backtest_windows"]

#: the quantile levels every model forecasts and WQL averages over (Chronos' protocol)
QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def chronos_quantile_forecast(pipe: Any, contexts: Sequence[Any], h: int) -> np.ndarray:
    """(N, Q, H) float32 quantiles (levels :data:`QUANTILES`) of a Chronos-T5 / Chronos-Bolt / Chronos-2 pipeline
    for ``contexts``: N 1-D series (arrays, lists or tensors, each its own length; NaN = missing), ``h`` steps
    ahead. Chronos-2 gives one (variates, H, Q) tensor per series: its first variate is the series."""
    batch = [c if isinstance(c, torch.Tensor) else torch.tensor(c) for c in contexts]
    q, _ = pipe.predict_quantiles(batch, prediction_length=h, quantile_levels=list(QUANTILES))
    if isinstance(q, list):  # Chronos-2: one (variates, H, Q) tensor per series
        q = torch.stack([x[0] for x in q])
    return q.float().numpy().transpose(0, 2, 1)


def weighted_quantile_loss(quantiles: np.ndarray, target: np.ndarray, levels: Sequence[float] = QUANTILES) -> float:
    """Mean weighted quantile loss: ``mean_q 2 * sum |pinball_q| / sum |y|`` over every window and step.

    Args:
        quantiles: (N, Q, H) forecasts; target: (N, H) true values (NaN = missing, left out).
    """
    q = np.asarray(quantiles, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)[:, None, :]
    ok = np.isfinite(y)
    lv = np.asarray(levels, dtype=np.float64)[None, :, None]
    loss = np.where(ok, np.abs((y - q) * ((y <= q) - lv)), 0.0)  # pinball loss, per quantile
    denom = np.where(ok[:, 0], np.abs(y[:, 0]), 0.0).sum()
    if denom == 0:
        raise ValueError("the backtest windows' values are all zero or missing: WQL is undefined for them")
    return float((2.0 * loss.sum(axis=(0, 2)) / denom).mean())


def backtest_windows(
    series: Sequence[Any], prediction_length: int, windows: int, context: int | None = None
) -> tuple[list[Any], np.ndarray]:
    """Contexts and targets of the last ``windows`` windows of every series (oldest first).

    ``series``: 1-D arrays, or GluonTS-style entries (dicts with ``"target"``, e.g. ``"start"``): those give
    entries back with the target cut (``context`` must then be None, so ``start`` stays right).

    Returns:
        contexts: list of 1-D arrays or entries (each context at most ``context`` long); targets: (N * windows, H).
    """
    h = prediction_length
    contexts, targets = [], []
    for i, s in enumerate(series):
        entry = s if isinstance(s, dict) else None
        if entry is not None and context is not None:
            raise ValueError("entries (dicts) keep their start: pass context=None with them")
        x = np.asarray(s["target"] if entry is not None else s, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"series {i} has shape {x.shape}; give 1-D series (one per row / list entry)")
        if len(x) < h * windows + h:
            raise ValueError(
                f"series {i} has {len(x)} values, too short for {windows} backtest window(s) of {h} steps plus "
                f"{h} steps of context; pass fewer windows or a shorter prediction_length"
            )
        for w in range(windows, 0, -1):
            end = len(x) - w * h
            start = 0 if context is None else max(0, end - context)
            contexts.append(x[start:end] if entry is None else {**entry, "target": x[:end]})
            targets.append(x[end : end + h])
    return contexts, np.stack(targets)

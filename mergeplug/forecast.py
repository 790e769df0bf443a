"""Quantile forecasts: the levels every forecast and score uses, and the one call that asks a Chronos pipeline for
them (``mergeplug.tune`` and the harness both go through it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["QUANTILES", "chronos_quantile_forecast"]

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

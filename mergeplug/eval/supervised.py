"""Forecasts of the supervised Hugging Face time-series models (PatchTST, TimeSeriesTransformer) for the harness:
quantiles from their samples, with the calendar features TimeSeriesTransformer reads."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from .data import QUANTILES

__all__ = ["time_features", "past_tensors", "supervised_quantiles"]


def time_features(start: pd.Period, first: int, length: int) -> np.ndarray:
    """GluonTS calendar features for steps ``first .. first+length-1`` of a series starting at ``start``.

    Returns float32 (length, F) with values in [-0.5, 0.5] (``time_features_from_frequency_str``), F >= 1.
    """
    from gluonts.time_feature import time_features_from_frequency_str

    index = pd.period_range(start + first, periods=length, freq=start.freq)
    feats = [f(index) for f in time_features_from_frequency_str(start.freqstr)]
    if not feats:
        feats = [np.zeros(length)]
    return np.stack(feats, axis=-1).astype(np.float32)


def past_tensors(context: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """NaN-free values and observed mask of a (B, T) context."""
    observed = np.isfinite(context)
    return torch.from_numpy(np.where(observed, context, 0.0).astype(np.float32)), torch.from_numpy(observed)


def supervised_quantiles(
    model: torch.nn.Module, inputs: list[dict[str, Any]], h: int, *, batch_size: int = 64, seed: int | None = None
) -> np.ndarray:
    """(N, Q, H) quantiles (0.1..0.9) of a PatchTST / TimeSeriesTransformer model, from its samples.

    ``inputs`` are GluonTS test inputs (``target`` float (T,), ``start`` pd.Period). The model's own
    horizon must cover ``h``; the context is the last ``context_length`` (+ max lag) values, left-padded
    with unobserved zeros when the series is shorter.
    """
    config = model.config
    if config.prediction_length < h:
        raise ValueError(f"model predicts {config.prediction_length} steps, the dataset needs {h}")
    is_tst = config.model_type == "time_series_transformer"
    past = config.context_length + (max(config.lags_sequence) if is_tst else 0)
    out = []
    for b in range(0, len(inputs), batch_size):
        if seed is not None:
            torch.manual_seed(seed + b // batch_size)
        chunk = inputs[b : b + batch_size]
        ctx = np.full((len(chunk), past), np.nan, dtype=np.float32)
        for i, inp in enumerate(chunk):
            x = np.asarray(inp["target"], dtype=np.float32)[-past:]
            ctx[i, past - len(x) :] = x
        values, observed = past_tensors(ctx)
        with torch.no_grad():
            if is_tst:
                feats = np.stack(
                    [
                        time_features(inp["start"], len(inp["target"]) - past, past + config.prediction_length)
                        for inp in chunk
                    ]
                )
                samples = model.generate(
                    past_values=values,
                    past_observed_mask=observed,
                    past_time_features=torch.from_numpy(feats[:, :past]),
                    future_time_features=torch.from_numpy(feats[:, past:]),
                ).sequences  # (B, S, H)
            else:
                samples = model.generate(
                    past_values=values[..., None], past_observed_mask=observed[..., None]
                ).sequences[..., 0]
        q = torch.quantile(samples[..., :h].float(), torch.tensor(QUANTILES), dim=1)  # (Q, B, H)
        out.append(q.permute(1, 0, 2).numpy())
    return np.concatenate(out, axis=0)

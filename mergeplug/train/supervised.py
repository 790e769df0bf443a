"""Supervised per-dataset Transformers from ``transformers``: PatchTST and TimeSeriesTransformer.

As in the local-merging paper's experiments, one model per long series, trained on the series'
training part (everything before the harness' test windows) with a long context, and evaluated on the
test windows. Both predict a Student-t distribution (negative log-likelihood training); quantiles are
read from ``num_samples`` samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..eval.data import load_dataset
from .data import Batch, WindowSampler, training_series
from .recipes import QUANTILES, RECIPES, Recipe

__all__ = ["PatchTSTRecipe", "TSTRecipe", "time_features", "supervised_quantiles"]


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


@dataclass
class _Supervised(Recipe):
    """Shared settings: one dataset, fixed long context, the dataset's horizon, complete targets."""

    dataset: str = "electricity_hourly"
    d_model: int = 64
    d_ff: int = 128
    heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 0
    dropout: float = 0.1
    context_length: int = 512
    horizon: int = 0  # 0: the dataset's prediction length
    datasets: list[str] = field(default_factory=list)
    synthetic: int = 0
    mix: tuple[float, float, float] = (1.0, 0.0, 0.0)
    num_samples: int = 100
    distribution: str = "student_t"  # student_t | normal | mse (a point forecast: every quantile equal)
    train_on: list[str] = field(default_factory=list)  # one global model on these datasets (then dataset="global")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.distribution not in ("student_t", "normal", "mse"):
            raise ValueError(f"distribution must be student_t, normal or mse, got {self.distribution!r}")
        if self.train_on:
            self.dataset = "global"
        dss = [load_dataset(n) for n in (self.train_on or [self.dataset])]
        if self.horizon == 0:
            self.horizon = max(d.prediction_length for d in dss)
        self.datasets = list(self.train_on) or [self.dataset]
        self._start = dss[0].entries[0]["start"]
        self._freq = dss[0].freq

    def past_length(self) -> int:
        return self.context_length

    def sampler(self, seed: int, cache_dir: Any, progress: bool = True) -> WindowSampler:
        if self._sampler is None:
            self._data = training_series(self.datasets)
            if not self.train_on and len(self._data.series[0]) != 1:
                raise ValueError(f"supervised recipes train on one long series; {self.dataset} has several")
            self._sampler = WindowSampler(
                self._data,
                context_length=self.past_length(),
                horizon=self.horizon,
                mix=(1.0, 0.0, 0.0),
                min_context=self.past_length(),
                fixed_context=True,
                complete_target=True,
                seed=seed,
            )
        return self._sampler


def _past(context: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """NaN-free values and observed mask of a (B, T) context."""
    observed = np.isfinite(context)
    return torch.from_numpy(np.where(observed, context, 0.0).astype(np.float32)), torch.from_numpy(observed)


@dataclass
class PatchTSTRecipe(_Supervised):
    """``PatchTSTForPrediction``: patches of 16 (stride 8), Student-t head, std scaling."""

    patch_length: int = 16
    patch_stride: int = 8
    kind: str = "patchtst"

    def build(self) -> torch.nn.Module:
        from transformers import PatchTSTConfig, PatchTSTForPrediction

        config = PatchTSTConfig(
            num_input_channels=1,
            context_length=self.context_length,
            prediction_length=self.horizon,
            patch_length=self.patch_length,
            patch_stride=self.patch_stride,
            d_model=self.d_model,
            num_attention_heads=self.heads,
            num_hidden_layers=self.encoder_layers,
            ffn_dim=self.d_ff,
            dropout=self.dropout,
            ff_dropout=self.dropout,
            head_dropout=self.dropout,
            distribution_output="student_t" if self.distribution == "mse" else self.distribution,
            loss="mse" if self.distribution == "mse" else "nll",
            scaling="std",
            num_parallel_samples=self.num_samples,
        )
        config.mergeplug_dataset = self.dataset if not self.train_on else "global:" + ",".join(self.train_on)
        return PatchTSTForPrediction(config)

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        values, observed = _past(batch.context)
        return model(
            past_values=values[..., None],
            past_observed_mask=observed[..., None],
            future_values=torch.from_numpy(batch.target)[..., None],
        ).loss


@dataclass
class TSTRecipe(_Supervised):
    """``TimeSeriesTransformerForPrediction``: encoder-decoder with lags and GluonTS calendar features."""

    encoder_layers: int = 2
    decoder_layers: int = 2
    d_model: int = 32
    d_ff: int = 64
    context_length: int = 336
    lags: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7, 23, 24, 25, 47, 48, 49, 167, 168, 169])
    # dropout on the (B, H, N, N) attention probabilities: transformers' default 0.1; 0 trains ~2x faster on CPU
    attention_dropout: float = 0.1
    kind: str = "tst"

    def __post_init__(self) -> None:
        if self.distribution == "mse":
            raise ValueError("TimeSeriesTransformer is trained by likelihood: use distribution student_t or normal")
        if self.train_on:
            raise ValueError("TimeSeriesTransformer uses one dataset's calendar features: train_on is PatchTST-only")
        super().__post_init__()

    def past_length(self) -> int:
        return self.context_length + max(self.lags)

    def build(self) -> torch.nn.Module:
        from transformers import TimeSeriesTransformerConfig, TimeSeriesTransformerForPrediction

        config = TimeSeriesTransformerConfig(
            prediction_length=self.horizon,
            context_length=self.context_length,
            lags_sequence=list(self.lags),
            num_time_features=time_features(self._start, 0, 1).shape[-1],
            distribution_output="normal" if self.distribution == "normal" else "student_t",
            loss="nll",
            scaling="std",
            d_model=self.d_model,
            encoder_layers=self.encoder_layers,
            decoder_layers=self.decoder_layers,
            encoder_attention_heads=self.heads,
            decoder_attention_heads=self.heads,
            encoder_ffn_dim=self.d_ff,
            decoder_ffn_dim=self.d_ff,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            num_parallel_samples=self.num_samples,
        )
        config.mergeplug_dataset = self.dataset
        return TimeSeriesTransformerForPrediction(config)

    def _features(self, starts: list[pd.Period], cuts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        p, h = self.past_length(), self.horizon
        feats = np.stack([time_features(s, int(c) - p, p + h) for s, c in zip(starts, cuts, strict=True)])
        return torch.from_numpy(feats[:, :p]), torch.from_numpy(feats[:, p:])

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        values, observed = _past(batch.context)
        past_feats, future_feats = self._features([self._start] * len(batch.cut), batch.cut)
        target = torch.from_numpy(batch.target)
        return model(
            past_values=values,
            past_observed_mask=observed,
            past_time_features=past_feats,
            future_values=target,
            future_time_features=future_feats,
            future_observed_mask=torch.ones_like(target, dtype=torch.bool),
        ).loss


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
        values, observed = _past(ctx)
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


RECIPES.update({"patchtst": PatchTSTRecipe, "tst": TSTRecipe})

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

from mergeplug.eval.data import load_dataset
from mergeplug.eval.supervised import past_tensors as _past
from mergeplug.eval.supervised import supervised_quantiles, time_features
from mergeplug_lab.train.data import Batch, WindowSampler, training_series
from mergeplug_lab.train.recipes import RECIPES, Recipe

__all__ = ["PatchTSTRecipe", "TSTRecipe", "time_features", "supervised_quantiles"]


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


RECIPES.update({"patchtst": PatchTSTRecipe, "tst": TSTRecipe})

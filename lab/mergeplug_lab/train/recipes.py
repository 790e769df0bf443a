"""What is trained: model builders and losses for the reference models.

A recipe builds the model from its settings, computes the training loss of batch ``step`` (drawn by a
:class:`~mergeplug_lab.train.data.WindowSampler`, so batches depend only on the seed and the step) and saves
the model so that ``BaseChronosPipeline.from_pretrained(path)`` (Chronos) or ``from_pretrained`` of its
class (supervised models) loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergeplug.forecast import QUANTILES as _LEVELS
from mergeplug.models import chronos2_config, chronos_bolt_config, chronos_t5_config, t5_config
from mergeplug_lab.train.data import (
    DEFAULT_TRAIN_DATASETS,
    MULTIVARIATE_TRAIN,
    Batch,
    TrainingSeries,
    WindowSampler,
    multivariate_training_parts,
    training_series,
)

__all__ = ["Recipe", "BoltRecipe", "ChronosT5Recipe", "Chronos2Recipe", "RECIPES", "QUANTILES"]

QUANTILES = list(_LEVELS)  # the Chronos configs hold a JSON list


@dataclass
class Recipe:
    """Settings shared by the Chronos recipes (everything here is recorded in the run's config.json).

    ``d_model, d_ff, heads, d_kv, encoder_layers, decoder_layers`` give the T5 dimensions; ``dataset_weights``:
    relative weights of ``datasets`` when a real window is drawn (empty: equal).
    """

    d_model: int = 128
    d_ff: int = 512
    heads: int = 4
    d_kv: int = 32
    encoder_layers: int = 6
    decoder_layers: int = 1
    dropout: float = 0.0
    context_length: int = 1024
    horizon: int = 64
    datasets: list[str] = field(default_factory=lambda: list(DEFAULT_TRAIN_DATASETS))
    synthetic: int = 8000
    mix: tuple[float, float, float] = (0.5, 0.2, 0.3)
    min_context: int = 32
    curriculum_steps: int = 0
    dataset_weights: list[float] = field(default_factory=list)
    kind: str = "base"

    def __post_init__(self) -> None:
        self._sampler: WindowSampler | None = None
        self._data: TrainingSeries | None = None

    def t5(self, **overrides: Any):
        """The T5 config with this recipe's dimensions."""
        return t5_config(
            "test",
            d_model=self.d_model,
            d_ff=self.d_ff,
            num_heads=self.heads,
            d_kv=self.d_kv,
            num_layers=self.encoder_layers,
            num_decoder_layers=self.decoder_layers,
            dropout_rate=self.dropout,
            **overrides,
        )

    def sampler(self, seed: int, cache_dir: str | Path | None, progress: bool = True) -> WindowSampler:
        """The (cached) window sampler over this recipe's training data (``progress``: a bar while the KernelSynth
        bank is generated)."""
        if self._sampler is None:
            self._data = training_series(self.datasets) if self.datasets else None
            self._sampler = WindowSampler(
                self._data,
                context_length=self.context_length,
                horizon=self.horizon,
                synthetic=self.synthetic,
                mix=self.mix,
                min_context=self.min_context,
                curriculum_steps=self.curriculum_steps,
                dataset_weights=self.dataset_weights,
                seed=seed,
                cache_dir=cache_dir,
                progress=progress,
                **self.sampler_options(),
            )
        return self._sampler

    def sampler_options(self) -> dict[str, Any]:
        """Further :class:`WindowSampler` arguments of this recipe (groups of related series, for Chronos-2)."""
        return {}

    def seen(self) -> list[dict]:
        """What training sees: per dataset series and values (training parts), plus the synthetic bank."""
        rows = self._data.describe() if self._data is not None else []
        if self.synthetic:
            rows.append(
                {
                    "dataset": "kernelsynth",
                    "series": self.synthetic,
                    "values": self.synthetic * (self.context_length + self.horizon),
                    "held_out_last": 0,
                }
            )
        return rows

    def build(self) -> torch.nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract


def _init_residual_blocks(model: torch.nn.Module) -> None:
    """Fan-in initialisation of Bolt's patch in/out blocks.

    chronos-forecasting's own ``_init_weights`` for them is not applied under transformers 5 (their weights
    come out with std 1, so a fresh model predicts values in the hundreds of standard deviations).
    """
    from chronos.chronos_bolt import ResidualBlock

    factor = model.config.initializer_factor
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, ResidualBlock):
                for layer in (block.hidden_layer, block.residual_layer, block.output_layer):
                    layer.weight.normal_(0.0, factor * layer.in_features**-0.5)
                    if layer.bias is not None:
                        layer.bias.zero_()


@dataclass
class BoltRecipe(Recipe):
    """Chronos-Bolt architecture: patches of 16, [REG] token, direct multi-quantile loss over 64 steps."""

    patch_size: int = 16
    kind: str = "bolt"

    def build(self) -> torch.nn.Module:
        from chronos.chronos_bolt import ChronosBoltModelForForecasting

        config = self.t5()
        config.chronos_config = chronos_bolt_config(self.context_length, self.horizon, self.patch_size)
        config.chronos_pipeline_class = "ChronosBoltPipeline"
        model = ChronosBoltModelForForecasting(config)
        _init_residual_blocks(model)
        return model

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Bolt's own quantile loss; context (B, C) and target (B, H) with NaN for missing values."""
        return model(context=torch.from_numpy(batch.context), target=torch.from_numpy(batch.target)).loss


@dataclass
class ChronosT5Recipe(Recipe):
    """Chronos-T5 architecture: mean scaling, 4096 uniform bins, one token per time step, cross-entropy."""

    context_length: int = 512
    encoder_layers: int = 3
    decoder_layers: int = 3
    n_tokens: int = 4096
    kind: str = "chronos-t5"

    def chronos_config(self) -> dict[str, Any]:
        return chronos_t5_config(self.context_length, self.horizon, n_tokens=self.n_tokens)

    def build(self) -> torch.nn.Module:
        from transformers import T5ForConditionalGeneration

        config = self.t5(vocab_size=self.n_tokens)
        config.chronos_config = self.chronos_config()
        return T5ForConditionalGeneration(config)

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Cross-entropy over the tokenized target (missing values are ignored)."""
        from chronos.chronos import ChronosConfig

        if not hasattr(self, "_tokenizer"):
            self._tokenizer = ChronosConfig(**self.chronos_config()).create_tokenizer()
        tok = self._tokenizer
        input_ids, attention_mask, scale = tok.context_input_transform(torch.from_numpy(batch.context))
        labels, labels_mask = tok.label_input_transform(torch.from_numpy(batch.target), scale)
        labels = labels.masked_fill(~labels_mask.bool(), -100)
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss


@dataclass
class Chronos2Recipe(Recipe):
    """Chronos-2 architecture: encoder-only, patches of 16 with a [REG] token and future-patch tokens read out as 21
    quantiles, group attention across the related series of a batch (``group_ids``), Chronos-2's own quantile loss.

    Batches mix single series (real training parts, TSMixup, KernelSynth) with groups of related series filling
    about ``group_fraction`` of the rows (variables of the shipped multivariate series at one time, and synthetic
    groups of delayed, scaled copies; see :class:`~mergeplug_lab.train.data.WindowSampler`), so group attention has
    something to learn. ``decoder_layers`` is unused (Chronos-2 has no decoder).

    Default size (d_model 192, 6 blocks, 4.2M parameters, about 8 MB in bfloat16): six blocks give merge schedules
    room (Chronos-2 base has 12), and a step of 32 windows at context 2,048 takes about 1.2 s on one CPU thread, so
    ~10,000 steps fit a budget of about 4 CPU hours.
    """

    d_model: int = 192
    d_ff: int = 768
    heads: int = 4
    d_kv: int = 48
    encoder_layers: int = 6
    decoder_layers: int = 0
    context_length: int = 2048
    horizon: int = 64
    synthetic: int = 3000
    mix: tuple[float, float, float] = (0.5, 0.2, 0.3)
    curriculum_steps: int = 1000
    patch_size: int = 16
    multivariate: list[str] = field(default_factory=lambda: list(MULTIVARIATE_TRAIN))
    group_fraction: float = 0.3
    max_group: int = 4
    kind: str = "chronos-2"

    def sampler_options(self) -> dict[str, Any]:
        parts = multivariate_training_parts(self.multivariate) if self.multivariate else None
        return {"multivariate": parts, "group_fraction": self.group_fraction, "max_group": self.max_group}

    def seen(self) -> list[dict]:
        rows = super().seen()
        for name, part in zip(self.multivariate, multivariate_training_parts(self.multivariate), strict=True):
            rows.append({"dataset": f"{name} (multivariate, {part.shape[1]} variables)", "series": part.shape[1],
                         "values": int(part.size), "held_out_last": "the last 30% of the time steps"})  # fmt: skip
        return rows

    def build(self) -> torch.nn.Module:
        from chronos.chronos2.model import Chronos2Model

        config = chronos2_config(d_model=self.d_model, d_ff=self.d_ff, num_heads=self.heads,
                                 num_layers=self.encoder_layers, d_kv=self.d_kv, context_length=self.context_length,
                                 patch_size=self.patch_size, dropout_rate=self.dropout)  # fmt: skip
        return Chronos2Model(config)

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Chronos-2's quantile loss over ``ceil(horizon / patch_size)`` output patches; context (B, C) and target
        (B, H) with NaN for missing values, ``batch.group`` as ``group_ids``."""
        group = torch.from_numpy(batch.group) if batch.group is not None else None
        return model(
            context=torch.from_numpy(batch.context),
            group_ids=group,
            num_output_patches=-(-self.horizon // self.patch_size),
            future_target=torch.from_numpy(batch.target),
        ).loss


RECIPES: dict[str, type[Recipe]] = {"bolt": BoltRecipe, "chronos-t5": ChronosT5Recipe, "chronos-2": Chronos2Recipe}

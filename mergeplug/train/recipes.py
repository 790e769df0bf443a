"""What is trained: model builders and losses for the reference models.

A recipe builds the model from its settings, computes the training loss of batch ``step`` (drawn by a
:class:`~mergeplug.train.data.WindowSampler`, so batches depend only on the seed and the step) and saves
the model so that ``BaseChronosPipeline.from_pretrained(path)`` (Chronos) or ``from_pretrained`` of its
class (supervised models) loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..eval.data import QUANTILES as _EVAL_QUANTILES
from ..models import chronos_bolt_config, chronos_t5_config, t5_config
from .data import DEFAULT_TRAIN_DATASETS, Batch, TrainingSeries, WindowSampler, training_series

__all__ = ["Recipe", "BoltRecipe", "ChronosT5Recipe", "RECIPES", "QUANTILES"]

QUANTILES = list(_EVAL_QUANTILES)


@dataclass
class Recipe:
    """Settings shared by the Chronos recipes (everything here is recorded in the run's config.json).

    ``d_model, d_ff, heads, d_kv, encoder_layers, decoder_layers`` give the T5 dimensions.
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

    def sampler(self, seed: int, cache_dir: str | Path | None) -> WindowSampler:
        """The (cached) window sampler over this recipe's training data."""
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
                seed=seed,
                cache_dir=cache_dir,
            )
        return self._sampler

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


RECIPES: dict[str, type[Recipe]] = {"bolt": BoltRecipe, "chronos-t5": ChronosT5Recipe}

"""Chronos models built from configs (no hub, no download), with the published architectures' dimensions.

Random weights: these are for speed measurements, tests and demos. Accuracy measurements need trained
weights (``BaseChronosPipeline.from_pretrained`` with a local directory or, where there is internet, a hub id).
Every pipeline built here has ``config.mergeplug_random_weights = True``, so that a model card never claims a base
model for it (:func:`mergeplug.save_pretrained` refuses ``base_model=`` then).
"""

from __future__ import annotations

from typing import Literal

import torch
from chronos import ChronosBoltPipeline, ChronosPipeline
from chronos.chronos import ChronosConfig, ChronosModel
from chronos.chronos_bolt import ChronosBoltModelForForecasting
from transformers import T5Config, T5ForConditionalGeneration

from .forecast import QUANTILES

__all__ = [
    "SIZES",
    "t5_config",
    "chronos_t5_config",
    "chronos_bolt_config",
    "chronos_t5",
    "chronos_causal",
    "chronos_bolt",
    "chronos2",
    "chronos2_config",
    "CHRONOS2_QUANTILES",
]

Size = Literal["test", "tiny", "mini", "small", "base"]

# d_model, d_ff, num_heads, layers (encoder = decoder), d_kv; "test" is a few-second-model for unit tests.
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "test": (64, 128, 4, 2, 16),
    "tiny": (256, 1024, 4, 4, 64),
    "mini": (384, 1536, 8, 4, 64),
    "small": (512, 2048, 8, 6, 64),
    "base": (768, 3072, 12, 12, 64),
}


def _chronos_pipeline(chronos_kwargs: dict, inner: torch.nn.Module) -> ChronosPipeline:
    """A ``ChronosPipeline`` (its tokenizer and ``ChronosModel``) around the transformers model ``inner``, marked as
    having random weights."""
    chronos_config = ChronosConfig(**chronos_kwargs)
    model = ChronosModel(config=chronos_config, model=inner)
    return _random(ChronosPipeline(tokenizer=chronos_config.create_tokenizer(), model=model))


def _random(pipe):
    """Mark a pipeline's model as built with random weights (see the module docstring); returns the pipeline."""
    pipe.inner_model.config.mergeplug_random_weights = True
    return pipe


def t5_config(size: Size, **overrides) -> T5Config:
    """T5 config with Chronos' common settings and the dimensions of ``size``."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    d_model, d_ff, heads, layers, d_kv = SIZES[size]
    kwargs = dict(
        d_model=d_model,
        d_ff=d_ff,
        d_kv=d_kv,
        num_heads=heads,
        num_layers=layers,
        num_decoder_layers=layers,
        feed_forward_proj="relu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return T5Config(**kwargs)


def chronos_t5_config(
    context_length: int = 512, prediction_length: int = 64, num_samples: int = 20, n_tokens: int = 4096
) -> dict:
    """Chronos-T5's ``chronos_config`` (mean scaling, uniform bins on [-15, 15], seq2seq, sampling settings)."""
    return dict(
        tokenizer_class="MeanScaleUniformBins",
        tokenizer_kwargs={"low_limit": -15.0, "high_limit": 15.0},
        context_length=context_length,
        prediction_length=prediction_length,
        n_tokens=n_tokens,
        n_special_tokens=2,
        pad_token_id=0,
        eos_token_id=1,
        use_eos_token=True,
        model_type="seq2seq",
        num_samples=num_samples,
        temperature=1.0,
        top_k=50,
        top_p=1.0,
    )


def chronos_bolt_config(context_length: int = 2048, prediction_length: int = 64, patch_size: int = 16) -> dict:
    """Chronos-Bolt's ``chronos_config`` (patches, nine quantiles 0.1..0.9, [REG] token)."""
    return {
        "context_length": context_length,
        "prediction_length": prediction_length,
        "input_patch_size": patch_size,
        "input_patch_stride": patch_size,
        "quantiles": list(QUANTILES),
        "use_reg_token": True,
    }


def chronos_t5(
    size: Size = "small",
    *,
    context_length: int = 512,
    prediction_length: int = 64,
    num_samples: int = 20,
    seed: int = 0,
) -> ChronosPipeline:
    """A ``ChronosPipeline`` (Chronos-T5) with random weights, in eval mode, float32."""
    chronos_kwargs = chronos_t5_config(context_length, prediction_length, num_samples)
    config = t5_config(size, vocab_size=4096)
    config.chronos_config = chronos_kwargs
    torch.manual_seed(seed)
    inner = T5ForConditionalGeneration(config).eval()
    return _chronos_pipeline(chronos_kwargs, inner)


def chronos_causal(
    size: Size = "small",
    *,
    backbone: Literal["gpt2", "llama"] = "gpt2",
    context_length: int = 512,
    prediction_length: int = 64,
    num_samples: int = 20,
    seed: int = 0,
) -> ChronosPipeline:
    """A decoder-only Chronos (``model_type="causal"``) with random weights, in eval mode, float32.

    The backbone has the width of ``size`` and as many blocks as its encoder and decoder together: GPT-2
    (absolute positions, as in the Chronos paper's decoder-only model) or Llama (rotary positions).
    """
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    if backbone not in ("gpt2", "llama"):
        raise ValueError(f"unknown backbone {backbone!r}; choose 'gpt2' or 'llama'")
    chronos_kwargs = {**chronos_t5_config(context_length, prediction_length, num_samples), "model_type": "causal"}
    d_model, d_ff, heads, layers, _ = SIZES[size]
    n_positions = context_length + prediction_length + 1
    special = dict(vocab_size=4096, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    if backbone == "gpt2":
        config = GPT2Config(n_embd=d_model, n_inner=d_ff, n_head=heads, n_layer=2 * layers, n_positions=n_positions,
                            **special)  # fmt: skip
    else:
        config = LlamaConfig(hidden_size=d_model, intermediate_size=d_ff, num_attention_heads=heads,
                             num_hidden_layers=2 * layers, max_position_embeddings=n_positions, **special)  # fmt: skip
    config.chronos_config = chronos_kwargs
    torch.manual_seed(seed)
    inner = (GPT2LMHeadModel if backbone == "gpt2" else LlamaForCausalLM)(config).eval()
    return _chronos_pipeline(chronos_kwargs, inner)


def chronos_bolt(
    size: Size = "small",
    *,
    context_length: int = 2048,
    prediction_length: int = 64,
    patch_size: int = 16,
    seed: int = 0,
) -> ChronosBoltPipeline:
    """A ``ChronosBoltPipeline`` with random weights, in eval mode, float32."""
    config = t5_config(size)
    config.chronos_config = chronos_bolt_config(context_length, prediction_length, patch_size)
    config.chronos_pipeline_class = "ChronosBoltPipeline"
    torch.manual_seed(seed)
    model = ChronosBoltModelForForecasting(config).eval()
    return _random(ChronosBoltPipeline(model=model))


CHRONOS2_QUANTILES = [0.01, 0.05] + [round(0.1 + 0.05 * i, 2) for i in range(17)] + [0.95, 0.99]


def chronos2_config(
    *,
    d_model: int,
    d_ff: int,
    num_heads: int,
    num_layers: int,
    d_kv: int,
    context_length: int = 2048,
    patch_size: int = 16,
    dropout_rate: float | None = None,
):
    """A ``Chronos2CoreConfig`` with Chronos-2's forecasting settings (21 quantiles, [REG] token, arcsinh scaling,
    up to 64 output patches) and the given dimensions (``dropout_rate=None``: the config class's default)."""
    from chronos.chronos2.config import Chronos2CoreConfig

    config = Chronos2CoreConfig(
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        feed_forward_proj="relu",
        **({} if dropout_rate is None else {"dropout_rate": dropout_rate}),
    )
    config.chronos_config = {
        "context_length": context_length,
        "input_patch_size": patch_size,
        "input_patch_stride": patch_size,
        "output_patch_size": patch_size,
        "quantiles": list(CHRONOS2_QUANTILES),
        "use_reg_token": True,
        "use_arcsinh": True,
        "max_output_patches": 64,
    }
    config.chronos_pipeline_class = "Chronos2Pipeline"
    return config


def chronos2(size: Size = "small", *, context_length: int = 2048, patch_size: int = 16, seed: int = 0):
    """A ``Chronos2Pipeline`` with random weights (``size``'s dimensions, ``layers`` encoder blocks), eval, float32."""
    from chronos import Chronos2Pipeline
    from chronos.chronos2.model import Chronos2Model

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    d_model, d_ff, heads, layers, d_kv = SIZES[size]
    config = chronos2_config(d_model=d_model, d_ff=d_ff, num_heads=heads, num_layers=layers, d_kv=d_kv,
                             context_length=context_length, patch_size=patch_size)  # fmt: skip
    torch.manual_seed(seed)
    return _random(Chronos2Pipeline(model=Chronos2Model(config).eval()))

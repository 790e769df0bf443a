"""Per-architecture injection: one module per model family, each registering a :class:`Family`.

:func:`find_family` picks the first family whose ``matches`` accepts an object, so the order below is the order
of registration (``t5`` is also imported by ``chronos``; user models from ``register_patch`` go first). The shared
between-blocks machinery (``inject_blocks``, ``register_patch``) is :mod:`mergeplug.patches.generic`.
"""

# isort: off
from . import (
    timesfm,  # noqa: F401  (registers "timesfm": TimesFM 2.5; before causal-lm, whose layout it also has)
    causal_lm,  # noqa: F401  (registers "causal-lm": GPT-2 / Llama-style decoder-only models)
    t5,  # noqa: F401  (registers "t5")
    chronos,  # noqa: F401  (registers "chronos-t5", "chronos-bolt", "chronos-causal")
    chronos2,  # noqa: F401  (registers "chronos-2")
    torch_transformer,  # noqa: F401  (registers "torch-transformer-encoder", "torch-transformer-decoder")
    mamba,  # noqa: F401  (registers "mamba")
    hf_time_series,  # noqa: F401  (registers "hf-time-series": TimeSeriesTransformer / Informer)
    patchtst,  # noqa: F401  (registers "patchtst")
)

# isort: on
from .base import Family, PatchRecord, families, find_family, register

__all__ = ["Family", "PatchRecord", "families", "find_family", "register"]

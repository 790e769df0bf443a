"""Per-architecture injection: one module per model family, each registering a :class:`Family`."""

from . import (
    causal_lm,  # noqa: E402,F401  (registers "causal-lm": GPT-2 / Llama-style decoder-only models)
    chronos,  # noqa: E402,F401  (registers "chronos-t5", "chronos-bolt")
    chronos2,  # noqa: E402,F401  (registers "chronos-2")
    generic,  # noqa: E402,F401  (registers "torch-transformer-encoder"; provides register_patch)
    patchtst,  # noqa: E402,F401  (registers "patchtst")
    t5,  # noqa: E402,F401  (registers "t5")
)
from .base import Family, PatchRecord, families, find_family, register

__all__ = ["Family", "PatchRecord", "families", "find_family", "register"]

"""Hugging Face ``MambaModel`` / ``MambaForCausalLM``: causal token merging between the Mamba blocks.

Family ``mamba``, built on :func:`~mergeplug.patches.generic.inject_blocks`: Mamba is causal, so it merges with
``causal=True`` only (``threshold`` for the strict mode in which no output depends on later inputs); an
attention mask that pads nothing (``generate`` passes one) is dropped, any other raises.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import MergeConfig
from .base import Family, register
from .generic import inject_blocks


def _mamba_blocks(obj: nn.Module) -> nn.ModuleList:
    return obj.backbone.layers if hasattr(obj, "backbone") else obj.layers


def _is_mamba(obj: Any) -> bool:
    try:
        from transformers import MambaForCausalLM, MambaModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(obj, (MambaModel, MambaForCausalLM))


def _check_mamba(config: MergeConfig) -> None:
    if not config.causal:
        raise ValueError(
            "Mamba is causal: merge with causal=True (add threshold=... for the strict mode in which no output "
            "depends on later inputs)"
        )


register(
    Family(
        name="mamba",
        description="Hugging Face MambaModel / MambaForCausalLM (causal merging between Mamba blocks)",
        matches=_is_mamba,
        inject=lambda obj, record: inject_blocks(
            _mamba_blocks(obj),
            record,
            seq_dim=1,
            padding_kwargs=("attention_mask",),
            no_padding=lambda mask: bool(mask.bool().all()),
        ),
        modules=lambda obj: [obj],
        check=_check_mamba,
    )
)

"""Plain PyTorch ``nn.TransformerEncoder`` / ``nn.TransformerDecoder``: tokens merge between their layers.

Families ``torch-transformer-encoder`` and ``torch-transformer-decoder`` (batch_first or not), built on
:func:`~mergeplug.patches.generic.inject_blocks`: a causal ``src_mask`` / ``tgt_mask`` is rebuilt for the merged
tokens, a padding mask raises, and the decoder's ``memory_mask`` (whose query axis would have to follow the
merged tokens) raises.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import Family, register
from .generic import inject_blocks


def _register_torch_stack(cls: type, name: str, description: str, **block_options: Any) -> None:
    """A family for a ``torch.nn`` stack whose ``layers`` exchange (B, T, C) or (T, B, C) hidden states."""

    def seq_dim(stack: nn.Module) -> int:
        return 1 if getattr(stack.layers[0].self_attn, "batch_first", False) else 0

    register(
        Family(
            name=name,
            description=description,
            matches=lambda obj: isinstance(obj, cls),
            inject=lambda obj, record: inject_blocks(obj.layers, record, seq_dim=seq_dim(obj), **block_options),
            modules=lambda obj: [obj],
        )
    )


_register_torch_stack(
    nn.TransformerEncoder,
    "torch-transformer-encoder",
    "torch.nn.TransformerEncoder (batch_first or not; tokens merge between its layers)",
    mask_kwargs=("src_mask",),
    padding_kwargs=("src_key_padding_mask",),
)
_register_torch_stack(
    nn.TransformerDecoder,
    "torch-transformer-decoder",
    "torch.nn.TransformerDecoder (target tokens merge between its layers; causal masks follow them)",
    mask_kwargs=("tgt_mask",),
    padding_kwargs=("tgt_key_padding_mask",),
    causal_flag="tgt_is_causal",
    unsupported_kwargs=("memory_mask",),
)

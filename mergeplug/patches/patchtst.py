"""Hugging Face PatchTST (``PatchTSTModel`` / ``PatchTSTForPrediction`` / ...): merging between patch tokens.

Each encoder layer runs attention over the (merged) patch tokens of every channel, merges, then runs its
feed-forward sublayer on the shorter sequence. Before the head, which reads a fixed number of patches,
tokens are copied back to every patch position they stand for (:func:`~mergeplug.merge.unmerge`), so the
heads, scalers and distribution outputs run unchanged. The merge metric is the layer's attention keys
(``self_attn.k_proj`` output, captured by a forward hook) averaged over heads. Channel attention
(``channel_attention=True``) mixes channels at every patch position and is not supported.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.patchtst.modeling_patchtst import PatchTSTEncoder, PatchTSTEncoderLayer, PatchTSTModel

from ..config import MergeConfig
from ..merge import MergeState
from .base import Family, PatchRecord, call_capturing_keys, hook_keys, key_metric, record_of, register, swap_class
from .loop import MergedBlocks, protected_tokens, short_input

__all__ = ["merged_patchtst_forward"]


#: forecast-safe defaults (tokens are patches; see the README's "choosing a setting" for how they were chosen)
PATCHTST_DEFAULTS = {"protect_recent": 8, "min_tokens": 8, "period": "auto", "min_similarity": 0.9}


def _check(config: MergeConfig) -> None:
    if config.causal:
        raise ValueError("PatchTST encoders are bidirectional: use causal=False (the default)")
    if config.input_ratio:
        raise ValueError("input_ratio is not supported for PatchTST (merge inside the layers with r / ratio)")


def _sublayer_attention(layer: PatchTSTEncoderLayer, h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Attention sublayer of ``layer`` on (B*C, T, D) tokens with an additive key bias (B*C, 1, 1, T)."""
    if layer.pre_norm:
        attn, _ = layer.self_attn(hidden_states=layer.norm_sublayer1(h), attention_mask=bias)
        return h + layer.dropout_path1(attn)
    attn, _ = layer.self_attn(hidden_states=h, attention_mask=bias)
    return layer.norm_sublayer1(h + layer.dropout_path1(attn))


def _sublayer_ff(layer: PatchTSTEncoderLayer, h: torch.Tensor) -> torch.Tensor:
    if layer.pre_norm:
        return h + layer.dropout_path3(layer.ff(layer.norm_sublayer3(h)))
    return layer.norm_sublayer3(h + layer.dropout_path3(layer.ff(h)))


class _PatchTSTBlocks(MergedBlocks):
    """PatchTST encoder layers: attention (``log(size)`` key bias with proportional attention), merge, feed-forward."""

    bias: torch.Tensor | None = None

    def tokens_changed(self) -> None:
        if self.merged:
            prop = self.config.proportional_attention
            self.bias = self.state.log_size_bias(self.dtype, prop) if prop else None

    def attention(self, i: int, layer: nn.Module, h: torch.Tensor):
        h, keys = call_capturing_keys(self.record, _sublayer_attention, layer, h, self.bias)
        return h, key_metric(keys, layer.self_attn.num_heads)

    def rest(self, i: int, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        return _sublayer_ff(layer, h)


def merged_patchtst_forward(encoder: PatchTSTEncoder, record: PatchRecord, patch_input: torch.Tensor) -> torch.Tensor:
    """Encoder forward with merging.

    Args:
        patch_input: (B, C, N, patch_length) patches of every channel.

    Returns:
        (B, C, N', D) hidden states, N' = N (+1 with a CLS token), merged tokens copied back to their patches.
    """
    cfg = record.config
    h = encoder.positional_encoder(encoder.embedder(patch_input))  # (B, C, N, D)
    n_b, n_c, n, d = h.shape
    h = h.reshape(n_b * n_c, n, d)
    # the most recent patches (before the forecast origin) and the CLS token (position 0) never merge
    protected = protected_tokens(cfg, n_b * n_c, n, h.device, first=int(encoder.config.use_cls_token))
    state = MergeState.init(n_b * n_c, n, protected=protected, device=h.device)
    loop = _PatchTSTBlocks(record, cfg, state)
    return loop.unmerged(loop.run(encoder.layers, h)).reshape(n_b, n_c, n, d)


class _MergingPatchTSTEncoder:
    """Mixin for ``PatchTSTEncoder``: merged forward, or the original one when nothing would merge."""

    def forward(self, patch_input: torch.Tensor, output_hidden_states=None, output_attentions=None, **kwargs: Any):
        record = record_of(self)
        n_patches = patch_input.shape[2] + int(self.config.use_cls_token)
        if short_input(record, len(self.layers), n_patches) or output_hidden_states or output_attentions:
            return super().forward(
                patch_input, output_hidden_states=output_hidden_states, output_attentions=output_attentions, **kwargs
            )
        return BaseModelOutput(last_hidden_state=merged_patchtst_forward(self, record, patch_input))


def _encoder(obj: nn.Module) -> PatchTSTEncoder:
    model = obj if isinstance(obj, PatchTSTModel) else obj.model
    return model.encoder


def _inject(obj: nn.Module, record: PatchRecord) -> None:
    encoder = _encoder(obj)
    if encoder.config.channel_attention:
        raise ValueError("PatchTST with channel_attention=True mixes channels per patch; merging does not support it")
    hook_keys(record, (layer.self_attn.k_proj for layer in encoder.layers))  # the merge metric
    record.hints.num_layers = len(encoder.layers)
    record.hints.bypassed += [(f"encoder.layers[{i}]", layer) for i, layer in enumerate(encoder.layers)]
    swap_class(encoder, _MergingPatchTSTEncoder, record)


def _matches(obj: Any) -> bool:
    if isinstance(obj, PatchTSTModel):
        return True
    return isinstance(obj, nn.Module) and isinstance(getattr(obj, "model", None), PatchTSTModel)


register(
    Family(
        name="patchtst",
        description="Hugging Face PatchTSTModel, PatchTSTForPrediction / Regression / Classification / "
        "Pretraining (merging between patch tokens; unmerged before the head)",
        matches=_matches,
        inject=_inject,
        modules=lambda obj: [obj],
        check=_check,
        forecast_defaults=PATCHTST_DEFAULTS,
        steps_per_token=lambda obj: float(_encoder(obj).config.patch_stride),
    )
)

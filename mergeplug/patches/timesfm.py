"""TimesFM 2.5 (``TimesFm2_5ModelForPrediction`` / ``TimesFm2_5Model`` from ``transformers``): causal merging inside
the decoder layers.

TimesFM is decoder-only: its input is one token per 32-step patch of the (normalised) context, every layer runs
causal self-attention (rotary positions) and an MLP, and the forecast is read from the *last* patch's output. Where
merging sits: inside every layer, between self-attention and the MLP (the ToMe placement), in the shared block loop
(:class:`~mergeplug.patches.loop.MergedBlocks`); the metric is the layer's attention keys (``self_attn.k_proj``
output, captured by a forward hook) averaged over the key-value heads.

* **Causal.** Merged tokens sit at their latest member; the attention mask is rebuilt from the merged positions
  (query ``i`` sees key ``j`` iff ``pos_j <= pos_i``; padded patches never), with ``log(size)`` per key
  (proportional attention). With ``threshold`` (strict mode) an output at patch t never depends on patches after t.
  Bidirectional settings (``causal=False``) are refused.
* **Rotary positions** of merged tokens are recomputed from their positions (the model's own rotary embedding,
  which takes real-valued positions); left padding shifts positions as the model does.
* **Read-out.** The last patch never merges (its output is the forecast); ``protect_recent`` counts back from it.
  After the last layer every patch position gets the latest merged token at or before it
  (:func:`~mergeplug.merge.causal_unmerge`), so the output head runs unchanged, and the model's own autoregressive
  loop for horizons beyond one output patch runs on the merged model (each step merges its own context).
* **How the loop is owned.** The model's forward runs its layers in order; on a merged call the first layer runs the
  whole merged loop over every layer's parts and the other layers pass their input through, so the model's own
  embedding, normalisation and head code runs as it is.

``r=0`` / ``ratio=0`` runs the original forward (bitwise). TimesFM 2.0 (``TimesFmModelForPrediction``) is not
supported yet (a TypeError lists the supported families).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import TimesFm2_5Model, TimesFm2_5ModelForPrediction
from transformers.models.timesfm2_5.modeling_timesfm2_5 import TimesFm2_5DecoderLayer

from ..config import MergeConfig
from ..merge import MergeState, causal_bias
from .base import (
    RECORD_ATTR,
    Family,
    PatchRecord,
    begin,
    call_capturing_keys,
    current,
    end,
    hook_keys,
    key_metric,
    last_forward,
    record_of,
    register,
    report,
    swap_class,
)
from .loop import MergedBlocks, protected_tokens, short_input

__all__ = ["TIMESFM_DEFAULTS", "token_source"]

#: forecast-safe defaults (tokens are 32-step patches): the newest 4 patches (128 steps) stay, no step leaves fewer
#: than 16 patches (not chosen on validation data yet: no trained TimesFM reaches this machine)
TIMESFM_DEFAULTS = {"protect_recent": 4, "min_tokens": 16, "period": "auto"}
_CALL = "timesfm"  # per-call key: the merged loop of this forward ran (the model's later layer calls pass through)


def _check(config: MergeConfig) -> None:
    if not config.causal:
        raise ValueError(
            "TimesFM is decoder-only (causal self-attention): merge with causal=True (add threshold=... for the "
            "strict mode, in which no output depends on later patches)"
        )


class _TimesFmBlocks(MergedBlocks):
    """TimesFM 2.5 decoder layers: causal self-attention (mask and rotary positions of the merged tokens), merge,
    MLP."""

    def __init__(
        self,
        record: PatchRecord,
        state: MergeState,
        model: TimesFm2_5Model,
        attention_mask: torch.Tensor | None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        position_ids: torch.Tensor | None,
    ) -> None:
        """``attention_mask`` (B, 1, N, N) or None, ``position_embeddings`` and ``position_ids`` (B, N): the model's
        own, for the input patches."""
        super().__init__(record, record.config, state)
        self.model, self.original = model, (attention_mask, position_embeddings, position_ids)
        self.mask, self.rotary, self.positions = self.original

    def tokens_changed(self) -> None:
        if not self.merged:  # exactly the model's own mask and positions until the first merge
            self.mask, self.rotary, self.positions = self.original
            return
        state, prop = self.state, self.config.proportional_attention
        # empty slots (strict mode) sit at +inf: a finite position for the rotary only (they are masked as keys)
        pos = torch.where(torch.isfinite(state.pos), state.pos, 0.0)
        self.mask = causal_bias(state.pos, state.pos, state.size, state.mask, self.dtype, prop)
        self.rotary = self.model.rotary_emb(self.mask, pos)
        self.positions = pos.round().long()

    def attention(self, i: int, block: nn.Module, h: torch.Tensor):
        layer: TimesFm2_5DecoderLayer = block
        normed = layer.input_layernorm(h)
        (out, _), keys = call_capturing_keys(
            self.record, layer.self_attn, hidden_states=normed, position_embeddings=self.rotary,
            attention_mask=self.mask, position_ids=self.positions,
        )  # fmt: skip
        heads = layer.self_attn.config.num_key_value_heads
        return layer.post_attention_layernorm(out) + h, key_metric(keys, heads)

    def rest(self, i: int, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
        layer: TimesFm2_5DecoderLayer = block
        return layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h))) + h


class _MergingLayer:
    """Mixin for every ``TimesFm2_5DecoderLayer``: the first runs the merged loop over all layers, the others then
    pass their input through; with nothing to merge every layer is the original."""

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None, position_ids=None,
                **kwargs: Any) -> torch.Tensor:  # fmt: skip
        record = record_of(self)
        model: TimesFm2_5Model = record.hints.extra["timesfm_model"]
        if self is not model.layers[0]:
            if current(record, _CALL) is None:  # an unmerged forward
                return super().forward(
                    hidden_states, position_embeddings=position_embeddings, attention_mask=attention_mask,
                    position_ids=position_ids, **kwargs,
                )  # fmt: skip
            if self is model.layers[-1]:  # the merged call is over
                end(record, _CALL)
            return hidden_states  # the merged loop already ran this layer
        end(record, _CALL)  # a merged call an exception cut short: this is a new forward
        if short_input(record, len(model.layers), hidden_states.shape[1]):
            return super().forward(
                hidden_states, position_embeddings=position_embeddings, attention_mask=attention_mask,
                position_ids=position_ids, **kwargs,
            )  # fmt: skip
        n_b, n, _ = hidden_states.shape
        device = hidden_states.device
        real = _real_patches(attention_mask, n_b, n, device)
        cfg = record.config
        state = MergeState.init(n_b, n, mask=real, protected=protected_tokens(cfg, n_b, n, device, last=1),
                                causal=True, device=device)  # fmt: skip
        if position_ids is not None:
            state.pos = position_ids.to(state.pos.dtype).expand(n_b, n).clone()
        loop = _TimesFmBlocks(record, state, model, attention_mask, position_embeddings, position_ids)
        h = loop.run(model.layers, hidden_states)
        report(record, "token_source", state.source)
        if len(model.layers) > 1:
            begin(record, _CALL, True)  # the model calls the later layers next: they pass their input through
        return loop.unmerged(h) if loop.merged else h


def token_source(obj: Any) -> torch.Tensor | None:
    """(B, N) long: the merged token that held every input patch in the last merged forward of ``obj`` on this
    thread; None before one."""
    record = _model(obj).layers[0].__dict__.get(RECORD_ATTR)
    return None if record is None else last_forward(record, "token_source")


def _real_patches(mask: torch.Tensor | None, n_b: int, n: int, device: torch.device) -> torch.Tensor | None:
    """(B, N) bool: patches that are not padding, read from the model's (B, 1, N, N) additive or boolean causal
    mask (a padded key is masked for every query, the last included); None: no padding."""
    if mask is None:
        return None
    last_row = mask[:, 0, -1, :]
    return last_row if mask.dtype == torch.bool else last_row == 0


def _model(obj: Any) -> TimesFm2_5Model:
    return obj.model if isinstance(obj, TimesFm2_5ModelForPrediction) else obj


def _inject(obj: Any, record: PatchRecord) -> None:
    model = _model(obj)
    hook_keys(record, (layer.self_attn.k_proj for layer in model.layers))  # the merge metric
    record.hints.num_layers = len(model.layers)
    record.hints.extra["timesfm_model"] = model
    for i, layer in enumerate(model.layers):  # the merged forward calls their parts directly
        record.hints.bypassed.append((f"layers[{i}]", layer))
        swap_class(layer, _MergingLayer, record)


register(
    Family(
        name="timesfm",
        description="transformers TimesFm2_5ModelForPrediction or its TimesFm2_5Model (TimesFM 2.5: causal merging "
        "inside the decoder layers; the read-out patch protected)",
        matches=lambda obj: isinstance(obj, (TimesFm2_5ModelForPrediction, TimesFm2_5Model)),
        inject=_inject,
        modules=lambda obj: [obj],
        check=_check,
        forecast_defaults=TIMESFM_DEFAULTS,
        steps_per_token=lambda obj: float(_model(obj).config.patch_length),
    )
)

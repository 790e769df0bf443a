"""Chronos-2 (``Chronos2Pipeline`` / ``Chronos2Model`` from chronos-forecasting): merging in the time axis.

Chronos-2 is an encoder-only model. Its input is one token sequence per series (batch row): the context patches,
a [REG] token and ``num_output_patches`` future-patch tokens, whose outputs are read out as quantiles. Every
encoder block runs *time* self-attention (along the sequence, RoPE positions), *group* self-attention (along
the batch axis, at every time slot, among the series of one group: the variates / covariates of a
multivariate task) and a feed-forward layer.

Where merging sits: inside every block, between time attention and group attention (the ToMe placement: after
the attention that gives the metric, before the rest of the block). Group attention, the feed-forward layer and
all later blocks then run on the shorter sequence, so all three sublayers get cheaper (merging only between
blocks would leave a whole block's group attention and feed-forward at full length). The metric is the time
attention's keys (``layer[0].self_attention.k`` output, before RoPE) averaged over heads, captured by a forward
hook (no extra matmul).

* **Groups.** Group attention mixes the rows of a group *slot by slot*, so token ``t`` must stand for the same
  input positions in every row of a group. The merge decision is therefore made per group
  (:func:`mergeplug.merge.match` with ``groups=group_ids``): the band scores of the rows of a group are averaged
  before choosing, and one destination map serves the whole group. Independent series (the default
  ``group_ids = arange(B)``) keep their own decisions; a group's decisions do not depend on the other groups in
  the batch (except for the batch-wide cap on ``r``, see below), so a group's forecast is the same alone or
  inside a bigger batch up to floating-point rounding.
* **[REG] and future tokens** (the last ``1 + num_output_patches`` positions; the number is taken from the
  ``encode`` call) are protected: they never merge, so every read-out token keeps its own state. After the
  last block, merged tokens are copied back to every position they stand for
  (:func:`~mergeplug.merge.unmerge`), so the encoder returns (B, N, C) as before: the output head, the
  pipeline's ``predict`` and ``embed`` run unchanged.
* **RoPE.** A merged token sits at the size-weighted mean position of its members (fractional); the rotary
  cos/sin are recomputed from these positions (``Chronos2RotaryEmbedding`` takes float positions), so relative
  offsets between merged tokens stay those of their centres. A group shares one position per token.
* **Masks.** Missing / padded patches (attention mask 0) merge only with each other (for a group: a pair merges
  only if it is padding-padding or real-real in *every* row of the group). The time attention gets the additive
  key bias ``log(size)`` (proportional attention) or 0, and the dtype's minimum for masked keys; the group
  attention mask is rebuilt from the merged mask. Proportional attention is not added to group attention: all
  rows of a group have the same sizes at a slot, so it would shift every logit of a query equally.
* **Cap.** ``r`` (or ``ratio * T``) is capped to what the most constrained group can merge, so the batch keeps
  one length; only then can another group change how many tokens a group merges.

``r=0`` / ``ratio=0`` runs the original forward (bitwise equal outputs). Chronos-2's time attention is
bidirectional: ``causal=True`` (and so ``threshold``) raises ``ValueError``. ``output_attentions=True`` (weights
over merged tokens would not match the input positions) raises ``NotImplementedError``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ..config import MergeConfig
from ..merge import MergeState, key_bias
from .base import (
    RECORD_ATTR,
    Family,
    PatchRecord,
    call_capturing_keys,
    current,
    hook_keys,
    in_call,
    key_metric,
    last_forward,
    record_of,
    register,
    report,
    swap_class,
)
from .loop import MergedBlocks, protected_tokens, short_input

try:  # chronos-forecasting is a dependency, but keep the import error readable
    from chronos import Chronos2Pipeline
    from chronos.chronos2.layers import FeedForward, GroupSelfAttention, TimeSelfAttention
    from chronos.chronos2.model import (
        Chronos2Encoder,
        Chronos2EncoderBlock,
        Chronos2EncoderOutput,
        Chronos2Model,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the dependency
    raise ImportError(
        "mergeplug's Chronos-2 support needs chronos-forecasting >= 2.0: pip install 'chronos-forecasting>=2.0'"
    ) from exc

__all__ = ["merged_chronos2_encoder_forward", "token_source"]

_UNSUPPORTED_HINT = (
    "mergeplug's chronos-2 family supports the Chronos2EncoderBlock of chronos-forecasting 2.x (time attention, "
    "group attention, feed-forward); run this model unmerged (mergeplug.remove) or write a family for it in "
    "mergeplug/patches/"
)


#: forecast-safe defaults (tokens are patches; see the README's "choosing a setting" for how they were chosen)
CHRONOS2_DEFAULTS = {"protect_recent": 8, "min_tokens": 16, "period": "auto"}
#: long-context defaults (:func:`mergeplug.long_context_default`): protections chosen on the validation windows of
#: mergeplug:chronos2-ref (benchmarks/chronos2-ref/validation, 2026-12-07): with 3/16 of the patches protected and
#: proportional attention off, every paired forecast-safe setting cost less WQL than with the family defaults (18 of
#: 18 at 2,048 steps, 8 of 8 at 1,024); no reduction stayed within +0.5%, so none is part of the default
CHRONOS2_LONG_CONTEXT = (
    (64, {"protect_recent": 12, "proportional_attention": False}),
    (128, {"protect_recent": 24, "proportional_attention": False}),
)


def _check(config: MergeConfig) -> None:
    """Settings the bidirectional Chronos-2 encoder can run."""
    if config.causal:
        raise ValueError(
            "Chronos-2's time attention is bidirectional (every patch, [REG] and future token sees all others): "
            "use causal=False (the default) for Chronos-2"
        )


def _time_mask(state: MergeState, dtype: torch.dtype, proportional: bool) -> torch.Tensor:
    """(B, 1, 1, T) additive time-attention mask: log(size) (or 0) for real keys, dtype min for masked keys."""
    return key_bias(state.size, state.mask, dtype, proportional)


def _group_mask(encoder: Chronos2Encoder, group_ids: torch.Tensor, state: MergeState, dtype: torch.dtype):
    """(T, 1, B, B) additive group-attention mask for the current tokens (same group and key not masked)."""
    return encoder._construct_and_invert_group_time_mask(group_ids, state.mask.to(dtype), dtype)


class _Chronos2Blocks(MergedBlocks):
    """Chronos-2 encoder blocks: time attention (RoPE at the merged positions, ``log(size)`` key bias), merge,
    group attention (mask rebuilt from the merged mask), feed-forward."""

    def __init__(
        self,
        record: PatchRecord,
        state: MergeState,
        encoder: Chronos2Encoder,
        group_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> None:
        """``attention_mask`` (B, N) and ``position_ids`` (1 or B, N) of the input tokens."""
        super().__init__(record, record.config, state, groups=group_ids)
        self.encoder, self.attention_mask, self.position_ids = encoder, attention_mask, position_ids

    def tokens_changed(self) -> None:
        state, group_ids = self.state, self.groups
        if self.merged:  # the masks and RoPE positions follow the merged tokens
            self.time_mask = _time_mask(state, self.dtype, self.config.proportional_attention)
            self.group_mask, self.positions = _group_mask(self.encoder, group_ids, state, self.dtype), state.pos
        else:  # exactly the original masks and positions until the first merge
            self.time_mask = self.encoder._expand_and_invert_time_attention_mask(self.attention_mask, self.dtype)
            mask = self.attention_mask
            self.group_mask = self.encoder._construct_and_invert_group_time_mask(group_ids, mask, self.dtype)
            self.positions = self.position_ids

    def attention(self, i: int, block: nn.Module, h: torch.Tensor):
        time_attn: TimeSelfAttention = block.layer[0]
        mask = self.time_mask
        out, keys = call_capturing_keys(self.record, time_attn, h, position_ids=self.positions, attention_mask=mask)
        return out[0], key_metric(keys, time_attn.self_attention.n_heads)

    def rest(self, i: int, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
        h = block.layer[1](h, attention_mask=self.group_mask)[0]
        return block.layer[2](h)


def merged_chronos2_encoder_forward(
    encoder: Chronos2Encoder,
    record: PatchRecord,
    inputs_embeds: torch.Tensor,
    group_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    protect_last: int,
) -> Chronos2EncoderOutput:
    """Run the Chronos-2 encoder with merging in the time axis.

    Args:
        encoder: the model's ``Chronos2Encoder``.
        record: the patch record (settings; reports ``"token_counts"`` and ``"token_source"``, see
            :func:`token_source`).
        inputs_embeds: (B, N, C) token embeddings: context patches, [REG], future patches.
        group_ids: (B,) group label of every series; rows with equal labels attend to each other.
        attention_mask: (B, N), 1 for observed tokens, 0 for missing / padded patches; None = all observed.
        position_ids: (1, N) or (B, N) RoPE positions of the input tokens; None = 0..N-1.
        protect_last: number of trailing tokens that never merge ([REG] and the future-patch tokens).

    Returns:
        ``Chronos2EncoderOutput`` whose ``last_hidden_state`` is (B, N, C): every merged token copied back to
        the positions it stands for (attention weights are not returned).
    """
    cfg = record.config
    n_b, n, _ = inputs_embeds.shape
    device, dtype = inputs_embeds.device, inputs_embeds.dtype
    if attention_mask is None:
        attention_mask = torch.ones(n_b, n, device=device, dtype=dtype)
    if position_ids is None:
        position_ids = torch.arange(n, dtype=torch.long, device=device)[None]
    protected = protected_tokens(cfg, n_b, n, device, tail=protect_last, last=protect_last)
    state = MergeState.init(n_b, n, mask=attention_mask > 0, protected=protected, device=device)
    state.pos = position_ids.to(state.pos.dtype).expand(n_b, n).clone()
    loop = _Chronos2Blocks(record, state, encoder, group_ids, attention_mask, position_ids)
    h = loop.run(encoder.block, encoder.dropout(inputs_embeds), input_metric=inputs_embeds)
    h = encoder.dropout(encoder.final_layer_norm(h))  # per token: cheaper before unmerging, same result
    report(record, "token_source", state.source)
    return Chronos2EncoderOutput(
        last_hidden_state=loop.unmerged(h), all_time_self_attn_weights=(), all_group_self_attn_weights=()
    )


_ENCODE = "chronos-2-encode"  # per-call key: trailing read-out tokens of the encode call in progress (an int)


class _MergingChronos2Encoder:
    """Mixin for ``Chronos2Encoder``: merged forward, or the original one when nothing would merge."""

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        *,
        group_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> Chronos2EncoderOutput:
        record = record_of(self)
        if short_input(record, len(self.block), inputs_embeds.shape[1]):
            return super().forward(
                inputs_embeds,
                group_ids=group_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_attentions=output_attentions,
            )
        if output_attentions:
            raise NotImplementedError(
                "output_attentions=True is not supported with Chronos-2 token merging (the weights would be over "
                "merged tokens, not input positions); call mergeplug.remove(model) or apply it with r=0 first"
            )
        protect_last = current(record, _ENCODE)
        if protect_last is None:
            raise RuntimeError(
                "the merging Chronos-2 encoder was called directly; call Chronos2Model.encode / forward (or the "
                "pipeline), which tell mergeplug how many [REG] / future-patch tokens to protect"
            )
        return merged_chronos2_encoder_forward(
            self, record, inputs_embeds, group_ids, attention_mask, position_ids, protect_last
        )


class _MergingChronos2Model:
    """Mixin for ``Chronos2Model``: ``encode`` tells the encoder how many trailing tokens are read out."""

    def encode(self, *args: Any, **kwargs: Any):
        record = record_of(self)
        bound = inspect.signature(super().encode).bind(*args, **kwargs)
        bound.apply_defaults()
        n_out = int(bound.arguments["num_output_patches"])
        with in_call(record, _ENCODE, n_out + int(bool(self.chronos_config.use_reg_token))):
            return super().encode(*args, **kwargs)


def token_source(obj: Any) -> torch.Tensor | None:
    """(B, N) long: the merged token that held every input token in the last merged forward of ``obj`` (a
    patched ``Chronos2Pipeline`` / ``Chronos2Model``) on this thread; None before one."""
    model = _model(obj)
    record = model.__dict__.get(RECORD_ATTR)
    return None if record is None else last_forward(record, "token_source")


def _model(obj: Any) -> Chronos2Model:
    return obj.model if isinstance(obj, Chronos2Pipeline) else obj


def _validate(model: Chronos2Model) -> None:
    """Raise for sub-structures the merged forward cannot run, naming the module."""
    if "num_output_patches" not in inspect.signature(model.encode).parameters:
        raise NotImplementedError(
            f"{type(model).__name__}.encode has no num_output_patches argument, so mergeplug cannot tell which "
            f"future-patch tokens to protect; {_UNSUPPORTED_HINT}"
        )
    encoder = model.encoder
    if type(encoder).forward is not Chronos2Encoder.forward:
        raise NotImplementedError(
            f"encoder is a {type(encoder).__name__} with its own forward, which the merged forward would bypass; "
            f"{_UNSUPPORTED_HINT}"
        )
    expected = (TimeSelfAttention, GroupSelfAttention, FeedForward)
    for i, block in enumerate(encoder.block):
        where = f"encoder.block[{i}]"
        if not isinstance(block, Chronos2EncoderBlock) or type(block).forward is not Chronos2EncoderBlock.forward:
            raise NotImplementedError(
                f"{where} is a {type(block).__name__}, not a Chronos2EncoderBlock; {_UNSUPPORTED_HINT}"
            )
        if len(block.layer) != 3 or not all(isinstance(m, c) for m, c in zip(block.layer, expected, strict=False)):
            found = ", ".join(type(m).__name__ for m in block.layer)
            raise NotImplementedError(
                f"{where}.layer holds ({found}), expected (TimeSelfAttention, GroupSelfAttention, FeedForward); "
                f"{_UNSUPPORTED_HINT}"
            )
        attn = block.layer[0].self_attention
        if not isinstance(getattr(attn, "k", None), nn.Linear):
            raise NotImplementedError(
                f"{where}.layer[0].self_attention has no key projection .k (nn.Linear) to take the merge metric "
                f"from; {_UNSUPPORTED_HINT}"
            )


def _inject(obj: Any, record: PatchRecord) -> None:
    model = _model(obj)
    _validate(model)
    hook_keys(record, (block.layer[0].self_attention.k for block in model.encoder.block))  # the merge metric
    record.hints.num_layers = len(model.encoder.block)
    for i, block in enumerate(model.encoder.block):  # the merged forward calls their parts directly
        record.hints.bypassed += [(f"encoder.block[{i}]", block), (f"encoder.block[{i}].layer[0]", block.layer[0])]
    swap_class(model.encoder, _MergingChronos2Encoder, record)
    swap_class(model, _MergingChronos2Model, record)


register(
    Family(
        name="chronos-2",
        description="chronos.Chronos2Pipeline or its Chronos2Model (merging in the encoder's time axis, one "
        "decision per group of series; [REG] and future-patch tokens protected)",
        matches=lambda obj: isinstance(obj, (Chronos2Pipeline, Chronos2Model)),
        inject=_inject,
        modules=lambda obj: [_model(obj)],
        check=_check,
        forecast_defaults=CHRONOS2_DEFAULTS,
        long_context=CHRONOS2_LONG_CONTEXT,
        steps_per_token=lambda obj: float(_model(obj).chronos_config.input_patch_stride),
    )
)

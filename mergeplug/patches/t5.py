"""Token merging in Hugging Face T5 encoders (``T5ForConditionalGeneration``, ``T5EncoderModel``).

Merging sits between self-attention and feed-forward in every encoder block (as in ToMe). The similarity
metric is the block's attention keys averaged over heads, captured by a forward hook on ``SelfAttention.k``
(no extra matmul). After a merge the relative position bias is recomputed from the merged tokens'
*positions* (size-weighted mean of their members), not their new indices, and ``log(size)`` of every key is
added to the logits (proportional attention); padding is folded into the same additive bias.

The encoder returns a :class:`MergedEncoderOutput`: a shorter ``last_hidden_state`` plus the tokens' sizes,
mask, positions and source map. ``T5ForConditionalGeneration.forward`` is swapped so that the decoder's
cross-attention uses the merged memory with the matching additive mask (``log(size)`` for real tokens);
``generate()`` expands these tensors per returned sequence along with the hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import T5EncoderModel, T5ForConditionalGeneration, T5Model
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.t5.modeling_t5 import T5Attention, T5Stack

from ..config import MergeConfig
from ..merge import MergeState, key_bias, match, merge_step, unmerge
from .base import Family, PatchRecord, mark, register, swap_class

__all__ = ["MergedEncoderOutput", "inject_encoder", "inject_seq2seq"]


@dataclass
class MergedEncoderOutput(BaseModelOutput):
    """Encoder output after merging.

    Attributes:
        last_hidden_state: (B, T', C) merged hidden states.
        token_sizes: (B, T') number of input tokens each merged token stands for.
        token_mask: (B, T') bool, real (non-padding) tokens.
        token_positions: (B, T') float, position of each merged token in the input.
        token_source: (B, N) long, index of the merged token holding each input position.
    """

    token_sizes: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    token_positions: torch.Tensor | None = None
    token_source: torch.Tensor | None = None

    def attention_bias(self, dtype: torch.dtype, proportional: bool = True) -> torch.Tensor:
        """(B, 1, 1, T') additive mask for attention over the merged tokens: log(size) or 0; dtype min for padding."""
        return key_bias(self.token_sizes, self.token_mask, dtype, proportional)

    def unmerged(self) -> torch.Tensor:
        """(B, N, C) hidden states with every merged token copied back to the positions it came from."""
        return unmerge(self.last_hidden_state, self.token_source)


def check_encoder_config(config: MergeConfig) -> None:
    """Settings a bidirectional T5 encoder can run."""
    if config.causal:
        raise ValueError(
            "T5 encoders are bidirectional: causal=True applies to decoders and causal models; "
            "use causal=False (the default) for T5, Chronos-T5 and Chronos-Bolt encoders"
        )


def _clamp_fp16(h: torch.Tensor) -> torch.Tensor:
    if h.dtype != torch.float16:
        return h
    big = torch.finfo(h.dtype).max
    clamp = torch.where(torch.isinf(h).any(), big - 1000, big)
    return torch.clamp(h, min=-clamp, max=clamp)


def _relative_bias(stack: T5Stack, state: MergeState, merged: bool) -> torch.Tensor:
    """T5 relative position bias for the current tokens: (1, H, T, T) before any merge, (B, H, T, T) after.

    After merging, relative distances are those of the tokens' positions (rounded), not of their indices.
    The (B, H, T, T) tensor is gathered contiguously from the (H, buckets) table in one pass.
    """
    attn0: T5Attention = stack.block[0].layer[0].SelfAttention
    t = state.length
    if not merged:
        return attn0.compute_bias(t, t, device=state.pos.device)
    rel = (state.pos[:, None, :] - state.pos[:, :, None]).round_().long()  # memory - query, (B, T, T)
    buckets = T5Attention._relative_position_bucket(
        rel,
        bidirectional=not stack.is_decoder,
        num_buckets=attn0.relative_attention_num_buckets,
        max_distance=attn0.relative_attention_max_distance,
    )
    n_b, heads = buckets.shape[0], attn0.n_heads
    table = attn0.relative_attention_bias.weight.t()  # (H, num_buckets)
    table = table[None, :, None, :].expand(n_b, heads, t, table.shape[1])
    return torch.gather(table, 3, buckets[:, None].expand(n_b, heads, t, t))


def _attention_bias(stack: T5Stack, state: MergeState, merged: bool, dtype: torch.dtype, proportional: bool):
    """Additive self-attention bias: relative position bias + log(size) (proportional attention) + padding."""
    bias = _relative_bias(stack, state, merged)
    if not merged and bool(state.mask.all()):
        return bias  # sizes are all 1 and nothing is masked: the original (1, H, T, T) bias
    extra = state.log_size_bias(dtype, proportional)  # (B, 1, 1, T)
    return bias.add_(extra) if bias.shape[0] == extra.shape[0] else bias + extra


def _protected(record: PatchRecord, input_ids: torch.Tensor | None, n_b: int, n: int, device) -> torch.Tensor:
    prot = torch.zeros(n_b, n, dtype=torch.bool, device=device)
    ids = record.hints.get("protect_ids", ())
    if input_ids is not None and ids:
        prot |= torch.isin(input_ids, torch.tensor(list(ids), device=device))
    last = record.hints.get("protect_last", 0)
    if last:
        prot[:, -last:] = True
    return prot


def merged_encoder_forward(
    stack: T5Stack,
    record: PatchRecord,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
) -> MergedEncoderOutput:
    """Run a T5 encoder stack with merging.

    Args:
        input_ids: (B, N) token ids, or None when ``inputs_embeds`` (B, N, C) is given.
        attention_mask: (B, N), 1 for real tokens, 0 for padding / missing values; None = all real.

    Returns:
        :class:`MergedEncoderOutput` with (B, T', C) hidden states.
    """
    cfg = record.config
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if inputs_embeds is None:
        inputs_embeds = stack.embed_tokens(input_ids)
    n_b, n, _ = inputs_embeds.shape
    device, dtype = inputs_embeds.device, inputs_embeds.dtype
    mask = None if attention_mask is None else attention_mask.to(device).bool()
    state = MergeState.init(n_b, n, mask=mask, protected=_protected(record, input_ids, n_b, n, device), device=device)
    h = stack.dropout(inputs_embeds)
    bias, merged = None, False
    r_in = cfg.input_merges(n)
    if r_in > 0:  # before the first block, on the input embeddings
        dst, t_new = match(inputs_embeds, state, r=r_in, k=cfg.k)
        if t_new < n:
            h, merged = merge_step(h, state, dst, t_new), True
    scratch = record.scratch
    counts = [state.length]  # tokens entering block 0
    for i, block in enumerate(stack.block):
        if bias is None:
            bias = _attention_bias(stack, state, merged, dtype, cfg.proportional_attention)
        sa = block.layer[0]
        scratch["capture"] = True
        try:
            attn, _, _ = sa.SelfAttention(sa.layer_norm(h), mask=None, position_bias=bias)
        finally:
            scratch["capture"] = False
        h = _clamp_fp16(h + sa.dropout(attn))
        r = cfg.merges_at(i, state.length)
        if r > 0 or cfg.threshold is not None:
            keys = scratch.pop("keys")  # (B, T, H * dk)
            metric = keys.view(n_b, state.length, -1, sa.SelfAttention.key_value_proj_dim).mean(dim=2)
            dst, t_new = match(metric, state, r=r, threshold=cfg.threshold, k=cfg.k)
            if t_new < state.length:
                h = merge_step(h, state, dst, t_new)
                bias, merged = None, True
        scratch.pop("keys", None)
        counts.append(state.length)  # tokens leaving block i
        h = _clamp_fp16(block.layer[-1](h))
    h = stack.dropout(stack.final_layer_norm(h))
    scratch["token_counts"] = counts
    return MergedEncoderOutput(
        last_hidden_state=h,
        token_sizes=state.size,
        token_mask=state.mask,
        token_positions=state.pos,
        token_source=state.source,
    )


class _MergingEncoder:
    """Mixin for an encoder ``T5Stack``: merged forward, or the original one when nothing would merge."""

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs: Any):
        record: PatchRecord = self.__dict__["_mergeplug_record"]
        if record.config.is_noop(len(self.block)):
            return super().forward(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
            )
        out = merged_encoder_forward(self, record, input_ids, attention_mask, inputs_embeds)
        if record.hints.get("stash_output"):  # for callers that only see last_hidden_state (Chronos-Bolt)
            record.scratch["last_output"] = out
        return out


class _MergingSeq2Seq:
    """Mixin for ``T5ForConditionalGeneration`` / ``T5Model``: cross-attention over the merged memory."""

    def forward(self, input_ids=None, attention_mask=None, encoder_outputs=None, inputs_embeds=None, **kwargs: Any):
        if encoder_outputs is None and (input_ids is not None or inputs_embeds is not None):
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds
            )
        if isinstance(encoder_outputs, MergedEncoderOutput):
            record: PatchRecord = self.__dict__["_mergeplug_record"]
            dtype = encoder_outputs.last_hidden_state.dtype
            attention_mask = encoder_outputs.attention_bias(dtype, record.config.proportional_attention)
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_outputs=encoder_outputs,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )


def inject_encoder(stack: T5Stack, record: PatchRecord) -> None:
    """Swap an encoder ``T5Stack`` to the merging forward and hook its blocks' key projections."""
    if stack.is_decoder:
        raise TypeError("inject_encoder expects an encoder T5Stack (config.is_decoder=False)")

    def grab(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if record.scratch.get("capture"):
            record.scratch["keys"] = output

    for block in stack.block:
        k_proj = block.layer[0].SelfAttention.k
        record.hooks.append(k_proj.register_forward_hook(grab))
        mark(k_proj, record)
    swap_class(stack, _MergingEncoder, record)


def inject_seq2seq(model: nn.Module, record: PatchRecord) -> None:
    """Patch a T5 encoder-decoder: merging encoder + decoder cross-attention over the merged memory."""
    _protect_eos(model, record)
    inject_encoder(model.encoder, record)
    swap_class(model, _MergingSeq2Seq, record)


def _protect_eos(model: nn.Module, record: PatchRecord) -> None:
    eos = model.config.eos_token_id
    record.hints.setdefault("protect_ids", () if eos is None else (eos,))


def _inject_t5(obj: nn.Module, record: PatchRecord) -> None:
    if isinstance(obj, T5Stack):
        inject_encoder(obj, record)
    elif isinstance(obj, T5EncoderModel):
        _protect_eos(obj, record)
        inject_encoder(obj.encoder, record)
    else:
        inject_seq2seq(obj, record)


register(
    Family(
        name="t5",
        description="Hugging Face T5ForConditionalGeneration, T5Model, T5EncoderModel or an encoder T5Stack "
        "(encoder merging; the decoder cross-attends to the merged memory)",
        matches=lambda obj: (
            isinstance(obj, (T5ForConditionalGeneration, T5Model, T5EncoderModel))
            or (isinstance(obj, T5Stack) and not obj.is_decoder)
        ),
        inject=_inject_t5,
        modules=lambda obj: [obj],
        check=check_encoder_config,
    )
)

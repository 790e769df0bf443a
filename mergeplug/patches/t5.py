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

Decoder merging (opt-in, causal, teacher forcing) is :mod:`mergeplug.patches.t5_decoder`; the relative position
bias over merged positions and the attention sublayer both stacks share are :mod:`mergeplug.patches.t5_layers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import T5EncoderModel, T5ForConditionalGeneration, T5Model
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.t5.modeling_t5 import T5Stack

from ..config import MergeConfig
from ..merge import MergeState, key_bias, unmerge
from .base import Family, PatchRecord, current, hook_keys, record_of, register, swap_class
from .loop import MergedBlocks, protected_tokens, short_input
from .t5_decoder import (
    DECODER_KEY,
    decoder_config,
    decoder_settings,
    decoder_token_counts,
    inject_decoder,
    merged_decoder_forward,
)
from .t5_layers import attention_sublayer, causal_attention_bias, clamp_fp16, encoder_bias

__all__ = [
    "MergedEncoderOutput", "OutputSlot", "OUTPUT_SLOT", "merged_encoder_forward", "inject_encoder", "inject_seq2seq",
    # decoder merging (mergeplug.patches.t5_decoder), importable from here too
    "DECODER_KEY", "inject_decoder", "decoder_config", "decoder_settings", "decoder_token_counts",
    "merged_decoder_forward", "causal_attention_bias",
]  # fmt: skip

OUTPUT_SLOT = "t5-encoder-output"  # per-call key of an :class:`OutputSlot`


@dataclass
class OutputSlot:
    """Opened by a caller (``base.in_call(record, OUTPUT_SLOT, OutputSlot())``) around code that runs a merging T5
    encoder but keeps only its ``last_hidden_state`` (Chronos-Bolt's ``encode``): the encoder puts its whole
    :class:`MergedEncoderOutput` here. Per call and per thread; a direct encoder call fills no slot."""

    value: Any = None


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


class _EncoderBlocks(MergedBlocks):
    """The T5 encoder blocks: self-attention (relative position bias of the merged positions, ``log(size)``,
    padding), merge, feed-forward."""

    def __init__(self, record: PatchRecord, state: MergeState, stack: T5Stack) -> None:
        super().__init__(record, record.config, state)
        self.stack, self.bias = stack, None

    def tokens_changed(self) -> None:
        self.bias = None  # rebuilt by the next block that runs (none after the last)

    def attention(self, i: int, block: nn.Module, h: torch.Tensor):
        if self.bias is None:
            prop = self.config.proportional_attention
            self.bias = encoder_bias(self.stack, self.state, self.merged, self.dtype, prop)
        return attention_sublayer(block, h, self.bias, self.record)

    def rest(self, i: int, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
        return clamp_fp16(block.layer[-1](h))


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
    device = inputs_embeds.device
    mask = None if attention_mask is None else attention_mask.to(device).bool()
    hints = record.hints
    ids = None if input_ids is None else (input_ids, hints.protect_ids or ())
    prot = protected_tokens(cfg, n_b, n, device, tail=hints.recent_tail, last=hints.protect_last, ids=ids)
    state = MergeState.init(n_b, n, mask=mask, protected=prot, device=device)
    loop = _EncoderBlocks(record, state, stack)
    h = loop.run(stack.block, stack.dropout(inputs_embeds), input_metric=inputs_embeds)
    h = stack.dropout(stack.final_layer_norm(h))
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
        record = record_of(self)
        tokens = input_ids if input_ids is not None else inputs_embeds
        length = None if tokens is None else tokens.shape[1]
        if short_input(record, len(self.block), length):
            return super().forward(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
            )
        out = merged_encoder_forward(self, record, input_ids, attention_mask, inputs_embeds)
        slot = current(record, OUTPUT_SLOT)
        if slot is not None:  # a caller that only sees last_hidden_state (Chronos-Bolt) asked for the whole output
            slot.value = out
        return out


class _MergingSeq2Seq:
    """Mixin for ``T5ForConditionalGeneration`` / ``T5Model``: cross-attention over the merged memory."""

    def forward(self, input_ids=None, attention_mask=None, encoder_outputs=None, inputs_embeds=None, **kwargs: Any):
        record = record_of(self)
        dec = decoder_settings(record.config)
        if (
            dec is not None
            and not dec.is_noop(len(self.decoder.block))
            and kwargs.get("labels") is not None
            and kwargs.get("use_cache") is None
            and kwargs.get("cache") is None
            and kwargs.get("past_key_values") is None
        ):  # teacher forcing: the cache would be of no use, and a merged decoder cannot fill one
            kwargs["use_cache"] = False
        if encoder_outputs is None and (input_ids is not None or inputs_embeds is not None):
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds
            )
        if isinstance(encoder_outputs, MergedEncoderOutput):
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
    hook_keys(record, (block.layer[0].SelfAttention.k for block in stack.block))  # the merge metric
    record.hints.num_layers = len(stack.block)
    for i, block in enumerate(stack.block):  # the merged forward calls their attention and sub-layers directly
        record.hints.bypassed += [(f"encoder.block[{i}]", block), (f"encoder.block[{i}].layer[0]", block.layer[0])]
    swap_class(stack, _MergingEncoder, record)


def inject_seq2seq(model: nn.Module, record: PatchRecord) -> None:
    """Patch a T5 encoder-decoder: merging encoder, decoder cross-attention over the merged memory, and the
    opt-in causal decoder merging of :func:`merge_decoder`."""
    _protect_eos(model, record)
    inject_encoder(model.encoder, record)
    inject_decoder(model.decoder, record)
    swap_class(model, _MergingSeq2Seq, record)


def _protect_eos(model: nn.Module, record: PatchRecord) -> None:
    eos = model.config.eos_token_id
    if record.hints.protect_ids is None:  # Chronos-T5 sets its own
        record.hints.protect_ids = () if eos is None else (eos,)


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
        "(encoder merging; the decoder cross-attends to the merged memory; opt-in causal decoder merging with "
        "mergeplug.merge_decoder)",
        matches=lambda obj: (
            isinstance(obj, (T5ForConditionalGeneration, T5Model, T5EncoderModel))
            or (isinstance(obj, T5Stack) and not obj.is_decoder)
        ),
        inject=_inject_t5,
        modules=lambda obj: [obj],
        check=check_encoder_config,
    )
)

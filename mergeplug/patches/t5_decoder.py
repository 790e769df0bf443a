"""Causal token merging in the decoder of Hugging Face T5 (``T5ForConditionalGeneration`` / ``T5Model``, Chronos-T5).

**Decoder merging (opt-in, teacher forcing).** :func:`mergeplug.merge_decoder` adds *causal* merging to the decoder of a
patched encoder-decoder (``T5ForConditionalGeneration`` / ``T5Model``, Chronos-T5, and the Hugging Face
time-series models of :mod:`mergeplug.patches.hf_time_series`); its settings live in ``config.decoder`` (a
:class:`~mergeplug.config.MergeConfig` with ``causal=True``), and ``mergeplug.apply`` on a patched model resets
them (new settings replace the old ones). Example::

    mergeplug.apply(model, k=1, ratio=0.2)                  # encoder (bidirectional), as before
    merge_decoder(model, k=1, ratio=0.2)                    # + decoder, r / ratio mode
    merge_decoder(model, k=1, threshold=0.9)                # + decoder, strict causal mode
    loss = model(input_ids=ids, labels=labels).loss         # the decoder merges (teacher forcing)
    decoder_token_counts(model)                             # [N, ...]: target tokens entering / leaving blocks

The T5 decoder merges only when it processes several target positions at once *without* a KV cache: no cache
object is passed and ``use_cache`` resolves to False. A forward with ``labels`` and no explicit ``use_cache`` is
run with ``use_cache=False`` while decoder merging is on (as BART and the time-series models do with labels),
so the usual training call merges; ``T5Model`` callers pass ``use_cache=False``. Whenever a cache is in use
(``generate()``, or an explicit ``use_cache=True``) the decoder runs the original code, bitwise;
``generate(use_cache=False)`` re-runs the whole prefix every step and so merges it like teacher forcing (the
step reads the last position, whose output comes from the latest token, which always holds it).

Inside the merged decoder, merging sits between self-attention and cross-attention in every block (the
similarity is the block's self-attention keys averaged over heads); merged tokens sit at their latest member,
the relative position bias is recomputed from the merged positions, query ``i`` sees key ``j`` iff
``pos_j <= pos_i`` (masked and empty slots never), and ``log(size)`` is added per key. Cross-attention queries
are the merged target tokens, keys the (merged or not) encoder memory. After the last block
:func:`~mergeplug.merge.causal_unmerge` gives every target position the latest token at or before it, so the
LM head sees (B, N, C). With ``threshold`` every decoder output at position p depends only on decoder inputs at
positions <= p (up to float rounding: later inputs can change the merged length and so GEMM rounding).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.models.t5.modeling_t5 import T5Attention, T5Stack

from ..config import MergeConfig
from ..merge import MergeState, key_bias
from .base import PatchRecord, find_family, find_record, hook_keys, last_forward, record_of, swap_class
from .loop import MergedBlocks
from .t5_layers import attention_sublayer, clamp_fp16, decoder_bias

__all__ = [
    "DECODER_KEY", "decoder_settings", "decoder_config", "decoder_token_counts", "merged_decoder_forward",
    "inject_decoder",
]  # fmt: skip

DECODER_KEY = "decoder"  # the MergeConfig field of the decoder settings (``MergeConfig.decoder``)


def decoder_settings(config: MergeConfig) -> MergeConfig | None:
    """The decoder merge settings of ``config`` (``config.decoder``, a causal MergeConfig), or None when decoder
    merging is off."""
    return config.decoder


def decoder_config(**kwargs: Any) -> MergeConfig:
    """A validated causal MergeConfig for a decoder (``causal=True`` implied; no input merging)."""
    if kwargs.pop("input_ratio", 0.0):
        raise ValueError("input_ratio is not supported for decoders: merge target tokens with r, ratio or threshold")
    if kwargs.pop("causal", True) is not True:
        raise ValueError("decoder merging is always causal (target position p must not see later positions)")
    return MergeConfig.for_decoder(kwargs)


def decoder_token_counts(obj: Any) -> list[int] | None:
    """Target-token counts of the last merged decoder forward: [entering block 0, leaving block 0, ...].

    None if ``obj`` is not patched or its decoder has not run a merged forward since it was patched.
    """
    record = find_record(find_family(obj).modules(obj))
    return None if record is None else last_forward(record, "decoder_token_counts")


def _cross_attention_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive cross-attention mask (B, 1, 1, S) from an encoder mask: (B, S) 0/1, or an additive / boolean
    (B, 1, 1, S) mask (the merged memory's ``log(size)`` bias). Per-query masks cannot follow merged queries."""
    if mask is None:
        return None
    if mask.dim() == 2:
        return key_bias(torch.ones_like(mask, dtype=dtype), mask.bool(), dtype, proportional=False)
    if mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
        if mask.dtype == torch.bool:
            return key_bias(torch.ones(mask.shape[0], mask.shape[-1], dtype=dtype, device=mask.device),
                            mask[:, 0, 0], dtype, proportional=False)  # fmt: skip
        return mask.to(dtype)
    raise NotImplementedError(
        f"T5 decoder merging: encoder_attention_mask of shape {tuple(mask.shape)} gives every target position its "
        "own mask, which cannot follow merged target tokens. Pass a (B, S) padding mask, or switch decoder merging "
        "off (merge_decoder(model, r=0))."
    )


class _DecoderBlocks(MergedBlocks):
    """The T5 decoder blocks: self-attention (causal bias over merged positions), merge, cross-attention over the
    encoder memory, feed-forward."""

    def __init__(
        self,
        record: PatchRecord,
        config: MergeConfig,
        state: MergeState,
        stack: T5Stack,
        memory: torch.Tensor | None,
        cross_bias: torch.Tensor | None,
    ) -> None:
        """``memory`` (B, S, C): the encoder output; ``cross_bias``: its additive (B, 1, 1, S) mask."""
        super().__init__(record, config, state, counts_as="decoder_token_counts")
        self.stack, self.memory, self.cross_bias, self.bias = stack, memory, cross_bias, None

    def tokens_changed(self) -> None:
        self.bias = None  # rebuilt by the next block that runs (none after the last)

    def attention(self, i: int, block: nn.Module, h: torch.Tensor):
        if self.bias is None:
            prop = self.config.proportional_attention
            self.bias = decoder_bias(self.stack, self.state, self.merged, self.dtype, prop)
        return attention_sublayer(block, h, self.bias, self.record)

    def rest(self, i: int, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if self.memory is not None:
            h, _, _ = block.layer[1](h, key_value_states=self.memory, position_bias=self.cross_bias)
            h = clamp_fp16(h)
        return clamp_fp16(block.layer[-1](h))


def merged_decoder_forward(
    stack: T5Stack,
    record: PatchRecord,
    config: MergeConfig,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    encoder_hidden_states: torch.Tensor | None,
    encoder_attention_mask: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
) -> BaseModelOutputWithPastAndCrossAttentions:
    """Run a T5 decoder stack on all target positions at once (no cache) with causal merging.

    Args:
        config: the decoder's (causal) merge settings.
        input_ids: (B, N) target ids, or None when ``inputs_embeds`` (B, N, C) is given.
        attention_mask: (B, N) decoder padding mask (1 real, 0 padding), or None.
        encoder_hidden_states: (B, S, C) encoder memory (merged or not), or None.
        encoder_attention_mask: (B, S) 0/1 or (B, 1, 1, S) additive mask over the memory, or None.

    Returns:
        Output with ``last_hidden_state`` (B, N, C): every target position restored by ``causal_unmerge``
        (after the final layer norm); ``cache`` is None.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if inputs_embeds is None:
        inputs_embeds = stack.embed_tokens(input_ids)
    n_b, n, _ = inputs_embeds.shape
    device, dtype = inputs_embeds.device, inputs_embeds.dtype
    if attention_mask is not None and attention_mask.dim() != 2:
        raise NotImplementedError(
            f"T5 decoder merging takes a (B, N) decoder_attention_mask, got shape {tuple(attention_mask.shape)}: a "
            "custom per-query mask cannot follow merged target tokens. Switch decoder merging off for this call."
        )
    mask = None if attention_mask is None else attention_mask.to(device).bool()
    state = MergeState.init(n_b, n, mask=mask, causal=True, device=device)
    cross_bias = _cross_attention_bias(encoder_attention_mask, dtype)
    loop = _DecoderBlocks(record, config, state, stack, encoder_hidden_states, cross_bias)
    h = stack.final_layer_norm(loop.run(stack.block, stack.dropout(inputs_embeds)))
    if loop.merged:
        h = loop.unmerged(h)  # (B, N, C): position p <- the latest token at or before p
    return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=stack.dropout(h), cache=None)


def _uses_cache(module: nn.Module, cache: Any, use_cache: bool | None) -> bool:
    """Will this decoder call read or fill a KV cache? (``use_cache`` defaults to the config, as in transformers.)"""
    if cache is not None:
        return True
    if use_cache is None:
        use_cache = getattr(module.config, "use_cache", False)
    if use_cache and getattr(module, "gradient_checkpointing", False) and module.training and torch.is_grad_enabled():
        return False  # transformers switches the cache off here
    return bool(use_cache)


class _MergingDecoder:
    """Mixin for a decoder ``T5Stack``: causal merged forward under teacher forcing, else the original forward.

    The merged forward runs only when decoder merging is on, more than one target position comes in and no KV
    cache is in use (see :func:`_uses_cache`); everything else (``generate()``, cached steps) is the original code.
    """

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        inputs_embeds=None,
        cache=None,
        use_cache=None,
        **kwargs: Any,
    ):
        record = record_of(self)
        config = decoder_settings(record.config)
        tokens = input_ids if input_ids is not None else inputs_embeds
        if (
            config is not None
            and not config.is_noop(len(self.block))
            and tokens is not None
            and tokens.shape[1] > 1
            and not _uses_cache(self, cache if cache is not None else kwargs.get("past_key_values"), use_cache)
        ):
            for flag in ("output_attentions", "output_hidden_states"):
                if kwargs.get(flag, getattr(self.config, flag, False)):
                    raise NotImplementedError(
                        f"T5 decoder merging cannot return per-layer outputs ({flag}=True): the layers run on merged "
                        "target tokens. Call without it, or switch decoder merging off (merge_decoder(model, r=0))."
                    )
            return merged_decoder_forward(
                self, record, config, input_ids, attention_mask, encoder_hidden_states, encoder_attention_mask,
                inputs_embeds,
            )  # fmt: skip
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )


def inject_decoder(stack: T5Stack, record: PatchRecord) -> None:
    """Swap a decoder ``T5Stack`` to the (opt-in) causal merging forward and hook its self-attention keys."""
    if not stack.is_decoder:
        raise TypeError("inject_decoder expects a decoder T5Stack (config.is_decoder=True)")
    for i, block in enumerate(stack.block):
        if len(block.layer) != 3 or not isinstance(block.layer[0].SelfAttention, T5Attention):
            # encoder merging still works; merge_decoder raises with this reason
            record.hints.decoder_unsupported = (
                f"{type(stack).__name__} decoder block {i} is not T5 self-attention, cross-attention and feed-forward "
                f"({len(block.layer)} sub-layers), so mergeplug cannot merge this decoder; leave decoder merging off."
            )
            return
    hook_keys(record, (block.layer[0].SelfAttention.k for block in stack.block))  # the merge metric
    swap_class(stack, _MergingDecoder, record)
    record.hints.decoder_merging = True

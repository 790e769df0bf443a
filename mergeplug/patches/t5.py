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

**Decoder merging (opt-in, teacher forcing).** :func:`mergeplug.merge_decoder` adds *causal* merging to the decoder of a
patched encoder-decoder (``T5ForConditionalGeneration`` / ``T5Model``, Chronos-T5, and the Hugging Face
time-series models of :mod:`mergeplug.patches.hf_time_series`); its settings live in ``config.extra["decoder"]`` (a
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

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

import torch
from torch import nn
from transformers import T5EncoderModel, T5ForConditionalGeneration, T5Model
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPastAndCrossAttentions
from transformers.models.t5.modeling_t5 import T5Attention, T5Stack

from ..config import MergeConfig
from ..merge import MergeState, causal_bias, causal_unmerge, head_mean, key_bias, merge_layer, recent_mask, unmerge
from .base import (
    Family,
    PatchRecord,
    call_capturing_keys,
    current,
    find_family,
    find_record,
    hook_keys,
    last_forward,
    merge_inputs,
    record_of,
    register,
    report,
    swap_class,
)

__all__ = [
    "MergedEncoderOutput",
    "OutputSlot",
    "OUTPUT_SLOT",
    "inject_encoder",
    "inject_decoder",
    "inject_seq2seq",
    "decoder_config",
    "decoder_settings",
    "decoder_token_counts",
    "causal_attention_bias",
]

T = TypeVar("T")

DECODER_KEY = "decoder"  # key of the decoder settings in MergeConfig.extra
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


def _clamp_fp16(h: torch.Tensor) -> torch.Tensor:
    if h.dtype != torch.float16:
        return h
    big = torch.finfo(h.dtype).max
    clamp = torch.where(torch.isinf(h).any(), big - 1000, big)
    return torch.clamp(h, min=-clamp, max=clamp)


def _relative_bias(stack: T5Stack, state: MergeState, merged: bool, extra: torch.Tensor | None = None) -> torch.Tensor:
    """T5 relative position bias for the current tokens: (1, H, T, T) before any merge (the numbers of
    ``compute_bias``, bucketing the 2L+1 distances instead of T·T pairs), (B, H, T, T) after; a (B, 1, 1, T)
    ``extra`` bias (``log(size)``, padding) is added to the merged one in the same pass.

    After merging, relative distances are those of the tokens' positions (rounded), not of their indices; the
    bias of every distance up to ``L = max(N - 1, relative_attention_max_distance)`` is computed once and looked up.
    L comes from shapes and the config, not from the positions (reading those back would be a host synchronisation
    on a GPU): merged positions lie in [0, N-1] (means or latest members of input positions), and T5's buckets are
    constant beyond ``relative_attention_max_distance``, so clamping longer distances (positions set by hand) to L
    changes no bucket.

    The lookup is an ``index_select`` of the distance indices from the (H, 2L+1) table (contiguous rows): on CPU one
    per row, written straight into the (B, H, T, T) result (2-3x faster than a ``gather`` from a table expanded over
    heads), elsewhere one for the batch; the same numbers either way.
    """
    attn0: T5Attention = stack.block[0].layer[0].SelfAttention
    t = state.length
    n = max(state.source.shape[1], attn0.relative_attention_max_distance + 1)
    # every distance memory - query is clamped into [-(n-1), n-1]: the buckets of those 2n-1 values, then look them up
    buckets = _distance_buckets(
        n, not stack.is_decoder, attn0.relative_attention_num_buckets, attn0.relative_attention_max_distance,
        state.pos.device,
    )  # fmt: skip
    values = attn0.relative_attention_bias.weight[buckets].t().contiguous()  # (H, 2n-1)
    rowwise = state.pos.device.type == "cpu"
    if not merged:  # positions 0..T-1: the (1, H, T, T) bias compute_bias gives, from 2n-1 buckets, not T*T
        ar = torch.arange(t, dtype=torch.int32, device=state.pos.device)
        bias = _lookup_bias(values, (ar[None, :] - ar[:, None] + (n - 1))[None], None, rowwise=rowwise)
        return bias if extra is None else bias + extra
    # table index of every (query, key) distance, exact in float32 (|distance| < 2^24), then int32
    rel = (state.pos[:, None, :] - state.pos[:, :, None]).round_().clamp_(-(n - 1), n - 1).add_(n - 1)
    return _lookup_bias(values, rel.to(torch.int32), extra, rowwise=rowwise)


@functools.lru_cache(maxsize=64)
def _distance_buckets(
    n: int, bidirectional: bool, num_buckets: int, max_distance: int, device: torch.device
) -> torch.Tensor:
    """(2n-1,) long: T5's bucket of every distance -(n-1) .. n-1. Shapes and config only, so built once per length
    (every merged layer of every forward asks again); outside inference mode, so that training can use it too."""
    with torch.inference_mode(False):
        dist = torch.arange(-(n - 1), n, device=device)
        return T5Attention._relative_position_bucket(
            dist, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
        )


def _lookup_bias(values: torch.Tensor, rel: torch.Tensor, extra: torch.Tensor | None, *, rowwise: bool) -> torch.Tensor:
    """(B, H, T, T) bias ``values[:, rel] (+ extra)`` from the (H, L) table and (B, T, T) int32 table indices; ``extra``
    (B or 1, 1, 1 or T, T) is added. ``rowwise`` (CPU inference): one ``index_select`` per row written straight into
    the result, its extra added while the row is in cache; else one for the batch (one kernel launch; also whenever
    gradients flow to the table, which ``out=`` cannot carry). Same numbers either way."""
    n_b, t = rel.shape[0], rel.shape[-1]
    heads = values.shape[0]
    grads = torch.is_grad_enabled() and (values.requires_grad or (extra is not None and extra.requires_grad))
    out = None if grads else torch.empty(n_b, heads, t, t, dtype=values.dtype, device=values.device)
    if rowwise and out is not None:  # no (H, B, T, T) intermediate

        def rows(lo: int, hi: int) -> None:
            for b in range(lo, hi):
                torch.index_select(values, 1, rel[b].reshape(-1), out=out[b].view(heads, t * t))
                if extra is not None:
                    out[b].add_(extra[b if extra.shape[0] > 1 else 0])

        _in_threads(rows, n_b)
        return out
    looked_up = values.index_select(1, rel.reshape(-1)).view(heads, n_b, t, t).transpose(0, 1)
    if out is None:
        return (looked_up if extra is None else looked_up + extra).contiguous()
    return out.copy_(looked_up) if extra is None else torch.add(looked_up, extra, out=out)


_POOL: tuple[ThreadPoolExecutor, int] | None = None  # (pool, its number of workers)


def _in_threads(rows: Callable[[int, int], None], n: int) -> None:
    """``rows(lo, hi)`` over [0, n) split into one chunk per torch thread, run in a thread pool: ``index_select``
    into a given output runs on one thread, and the bias is written at memory speed, so the rows of a batch are
    spread by hand (torch releases the GIL in its kernels). One thread, or one row: a plain call. Only for work
    without gradients (the caller's inference mode is carried over, gradients are off)."""
    global _POOL
    threads = min(torch.get_num_threads(), n)
    if threads <= 1:
        rows(0, n)
        return
    if _POOL is None or _POOL[1] < threads:
        _POOL = (ThreadPoolExecutor(threads, thread_name_prefix="mergeplug-bias"), threads)
    inference = torch.is_inference_mode_enabled()

    def chunk(lo: int, hi: int) -> None:  # grad and inference modes are per thread: the caller's, no gradients
        with torch.inference_mode(inference), torch.no_grad():
            rows(lo, hi)

    step = -(-n // threads)
    for future in [_POOL[0].submit(chunk, lo, min(lo + step, n)) for lo in range(0, n, step)]:
        future.result()


def _attention_bias(stack: T5Stack, state: MergeState, merged: bool, dtype: torch.dtype, proportional: bool):
    """Additive self-attention bias: relative position bias + log(size) (proportional attention) + padding."""
    if not merged and bool(state.mask.all()):
        return _relative_bias(stack, state, merged)  # sizes are all 1 and nothing is masked: the original bias
    return _relative_bias(stack, state, merged, state.log_size_bias(dtype, proportional))


def _protected(record: PatchRecord, input_ids: torch.Tensor | None, n_b: int, n: int, device) -> torch.Tensor:
    prot = torch.zeros(n_b, n, dtype=torch.bool, device=device)
    if input_ids is not None:  # comparisons with host numbers: no tensor of ids copied to the device
        for token in record.hints.protect_ids or ():
            prot |= input_ids == token
    last = record.hints.protect_last
    if last:
        prot[:, -last:] = True
    recent = record.config.protect_recent
    return prot | recent_mask(n_b, n, recent, tail=record.hints.recent_tail, device=device) if recent else prot


def _attend_and_merge(
    block: nn.Module,
    h: torch.Tensor,
    bias: torch.Tensor,
    state: MergeState,
    config: MergeConfig,
    i: int,
    record: PatchRecord,
) -> tuple[torch.Tensor, bool]:
    """A T5 block's self-attention sublayer on (B, T, C) with the additive ``bias``, then the layer's scheduled
    merge on its keys (averaged over heads, captured by the hook on ``.k``). Returns (h, whether tokens merged)."""
    sa = block.layer[0]
    (attn, _, _), keys = call_capturing_keys(record, sa.SelfAttention, sa.layer_norm(h), mask=None, position_bias=bias)
    h = _clamp_fp16(h + sa.dropout(attn))
    before = state.length
    h = merge_layer(h, state, config, i, metric=partial(head_mean, keys, sa.SelfAttention.n_heads))
    return h, state.length < before


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
    h, merged = merge_inputs(stack.dropout(inputs_embeds), state, cfg, metric=inputs_embeds)
    bias = None
    counts = [state.length]  # tokens entering block 0
    for i, block in enumerate(stack.block):
        if bias is None:
            bias = _attention_bias(stack, state, merged, dtype, cfg.proportional_attention)
        h, changed = _attend_and_merge(block, h, bias, state, cfg, i, record)
        if changed:
            bias, merged = None, True
        counts.append(state.length)  # tokens leaving block i
        h = _clamp_fp16(block.layer[-1](h))
    h = stack.dropout(stack.final_layer_norm(h))
    report(record, "token_counts", counts)
    return MergedEncoderOutput(
        last_hidden_state=h,
        token_sizes=state.size,
        token_mask=state.mask,
        token_positions=state.pos,
        token_source=state.source,
    )


# ------------------------------------------------------------------------------------------------ decoder merging


def decoder_settings(config: MergeConfig) -> MergeConfig | None:
    """The decoder merge settings of ``config`` (``config.extra["decoder"]``), or None when decoder merging is off.

    The entry may be a :class:`MergeConfig` or a dict of its arguments (turned into a causal MergeConfig here).
    """
    value = config.extra.get(DECODER_KEY)
    if value is None or isinstance(value, MergeConfig):
        return value
    value = decoder_config(**value)
    config.extra[DECODER_KEY] = value
    return value


def decoder_config(**kwargs: Any) -> MergeConfig:
    """A validated causal MergeConfig for a decoder (``causal=True`` implied; no input merging)."""
    if kwargs.pop("input_ratio", 0.0):
        raise ValueError("input_ratio is not supported for decoders: merge target tokens with r, ratio or threshold")
    if kwargs.pop("causal", True) is not True:
        raise ValueError("decoder merging is always causal (target position p must not see later positions)")
    return MergeConfig(causal=True, **kwargs)


def decoder_token_counts(obj: Any) -> list[int] | None:
    """Target-token counts of the last merged decoder forward: [entering block 0, leaving block 0, ...].

    None if ``obj`` is not patched or its decoder has not run a merged forward since it was patched.
    """
    record = find_record(find_family(obj).modules(obj))
    return None if record is None else last_forward(record, "decoder_token_counts")


def causal_attention_bias(state: MergeState, dtype: torch.dtype, proportional: bool = True) -> torch.Tensor:
    """Additive causal self-attention mask over merged tokens, shape (B, 1, T, T) (query, key).

    Query ``i`` sees key ``j`` iff ``pos_j <= pos_i`` and key ``j`` is real (``state.mask``); a seen key gets
    ``log(size_j)`` (proportional attention) or 0, any other the dtype's minimum. A query that would see no key
    (a padding query before every real token) sees itself, so no softmax row is empty.
    """
    return causal_bias(state.pos, state.pos, state.size, state.mask, dtype, proportional)


def _decoder_self_bias(stack: T5Stack, state: MergeState, merged: bool, dtype: torch.dtype, proportional: bool):
    """T5 decoder self-attention bias (B, H, T, T): relative position bias of the merged positions + causal mask.

    Empty slots (strict mode) sit at position +inf; they are given a finite position for the relative bias only
    (they are masked as keys, and their outputs are never read).
    """
    # no host check for "all finite": replacing nothing is cheaper than a synchronisation
    pos_state = replace(state, pos=torch.where(torch.isfinite(state.pos), state.pos, 0.0))
    causal = causal_attention_bias(state, dtype, proportional)
    if merged and stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight.dtype == dtype:
        return _relative_bias(stack, pos_state, merged, causal)  # (B, H, T, T), the mask added as it is written
    return _relative_bias(stack, pos_state, merged) + causal


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
    h = stack.dropout(inputs_embeds)
    bias, merged = None, False
    counts = [n]
    for i, block in enumerate(stack.block):
        if bias is None:
            bias = _decoder_self_bias(stack, state, merged, dtype, config.proportional_attention)
        h, changed = _attend_and_merge(block, h, bias, state, config, i, record)
        if changed:
            bias, merged = None, True
        counts.append(state.length)  # target tokens leaving block i
        if encoder_hidden_states is not None:
            h, _, _ = block.layer[1](h, key_value_states=encoder_hidden_states, position_bias=cross_bias)
            h = _clamp_fp16(h)
        h = _clamp_fp16(block.layer[-1](h))
    h = stack.final_layer_norm(h)
    if merged:
        h = causal_unmerge(h, state)  # (B, N, C): position p <- the latest token at or before p
    report(record, "decoder_token_counts", counts)
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


class _MergingEncoder:
    """Mixin for an encoder ``T5Stack``: merged forward, or the original one when nothing would merge."""

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs: Any):
        record = record_of(self)
        tokens = input_ids if input_ids is not None else inputs_embeds
        length = None if tokens is None else tokens.shape[1]
        if record.config.is_noop(len(self.block), length):
            if not record.config.is_noop(len(self.block)):  # short: at most min_tokens tokens, nothing merges
                report(record, "token_counts", [length] * (len(self.block) + 1))
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


def inject_encoder(stack: T5Stack, record: PatchRecord) -> None:
    """Swap an encoder ``T5Stack`` to the merging forward and hook its blocks' key projections."""
    if stack.is_decoder:
        raise TypeError("inject_encoder expects an encoder T5Stack (config.is_decoder=False)")
    hook_keys(record, (block.layer[0].SelfAttention.k for block in stack.block))  # the merge metric
    record.hints.num_layers = len(stack.block)
    for i, block in enumerate(stack.block):  # the merged forward calls their attention and sub-layers directly
        record.hints.bypassed += [(f"encoder.block[{i}]", block), (f"encoder.block[{i}].layer[0]", block.layer[0])]
    swap_class(stack, _MergingEncoder, record)


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
        "mergeplug.patches.t5.merge_decoder)",
        matches=lambda obj: (
            isinstance(obj, (T5ForConditionalGeneration, T5Model, T5EncoderModel))
            or (isinstance(obj, T5Stack) and not obj.is_decoder)
        ),
        inject=_inject_t5,
        modules=lambda obj: [obj],
        check=check_encoder_config,
    )
)

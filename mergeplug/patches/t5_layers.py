"""The pieces of Hugging Face T5 that both merged stacks (encoder and decoder) use.

* :func:`relative_bias`: T5's relative position bias for merged tokens, looked up from the distances of their
  *positions* (size-weighted mean of their members in the encoder, latest member in the decoder), not of their
  new indices; on CPU the rows are written by a small thread pool (:func:`_in_threads`).
* :func:`encoder_bias` / :func:`decoder_bias`: the whole additive self-attention bias of a stack (position bias,
  ``log(size)`` of proportional attention, padding; the causal mask in the decoder).
* :func:`attention_sublayer`: a block's self-attention sublayer on merged tokens, with the keys captured for the
  merge metric; :func:`clamp_fp16` as T5 clamps float16 activations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import torch
from torch import nn
from transformers.models.t5.modeling_t5 import T5Attention, T5Stack

from ..merge import MergeState, causal_bias
from .base import PatchRecord, call_capturing_keys, key_metric

__all__ = ["relative_bias", "encoder_bias", "decoder_bias", "causal_attention_bias", "attention_sublayer", "clamp_fp16"]


def clamp_fp16(h: torch.Tensor) -> torch.Tensor:
    if h.dtype != torch.float16:
        return h
    big = torch.finfo(h.dtype).max
    clamp = torch.where(torch.isinf(h).any(), big - 1000, big)
    return torch.clamp(h, min=-clamp, max=clamp)


def relative_bias(stack: T5Stack, state: MergeState, merged: bool, extra: torch.Tensor | None = None) -> torch.Tensor:
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


def encoder_bias(stack: T5Stack, state: MergeState, merged: bool, dtype: torch.dtype, proportional: bool):
    """Additive self-attention bias: relative position bias + log(size) (proportional attention) + padding."""
    if not merged and bool(state.mask.all()):
        return relative_bias(stack, state, merged)  # sizes are all 1 and nothing is masked: the original bias
    return relative_bias(stack, state, merged, state.log_size_bias(dtype, proportional))


def causal_attention_bias(state: MergeState, dtype: torch.dtype, proportional: bool = True) -> torch.Tensor:
    """Additive causal self-attention mask over merged tokens, shape (B, 1, T, T) (query, key).

    Query ``i`` sees key ``j`` iff ``pos_j <= pos_i`` and key ``j`` is real (``state.mask``); a seen key gets
    ``log(size_j)`` (proportional attention) or 0, any other the dtype's minimum. A query that would see no key
    (a padding query before every real token) sees itself, so no softmax row is empty.
    """
    return causal_bias(state.pos, state.pos, state.size, state.mask, dtype, proportional)


def decoder_bias(stack: T5Stack, state: MergeState, merged: bool, dtype: torch.dtype, proportional: bool):
    """T5 decoder self-attention bias (B, H, T, T): relative position bias of the merged positions + causal mask.

    Empty slots (strict mode) sit at position +inf; they are given a finite position for the relative bias only
    (they are masked as keys, and their outputs are never read).
    """
    # no host check for "all finite": replacing nothing is cheaper than a synchronisation
    pos_state = replace(state, pos=torch.where(torch.isfinite(state.pos), state.pos, 0.0))
    causal = causal_attention_bias(state, dtype, proportional)
    if merged and stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight.dtype == dtype:
        return relative_bias(stack, pos_state, merged, causal)  # (B, H, T, T), the mask added as it is written
    return relative_bias(stack, pos_state, merged) + causal


def attention_sublayer(
    block: nn.Module, h: torch.Tensor, bias: torch.Tensor, record: PatchRecord
) -> tuple[torch.Tensor, Callable[[], torch.Tensor]]:
    """A T5 block's self-attention sublayer on (B, T, C) tokens with the additive ``bias``: (its output, the merge
    metric: the keys captured by the hook on ``.k``, averaged over heads, computed when asked for)."""
    sa = block.layer[0]
    (attn, _, _), keys = call_capturing_keys(record, sa.SelfAttention, sa.layer_norm(h), mask=None, position_bias=bias)
    return clamp_fp16(h + sa.dropout(attn)), key_metric(keys, sa.SelfAttention.n_heads)

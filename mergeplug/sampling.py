"""Fast Chronos-T5 sampling: cross-attention shared by the samples of a series and a static decoder cache.

Stock ``ChronosPipeline.predict`` calls ``generate(num_return_sequences=S)``, which copies each series' encoder
states S times and then recomputes the cross-attention keys and values of every copy (for Chronos-T5 small
at context 512 that alone is ~40% of the MACs of a forecast), reads S copies at every step, grows the
self-attention cache by concatenation and pays ``generate``'s general-purpose loop at every step.

:func:`fast_sampling` gives the pipeline's ``ChronosModel`` an instance-level ``forward`` (recorded, undone by
``mergeplug.remove``; independent of the class swaps of token merging) that runs :func:`sample_tokens`:

* the encoder runs once per series (merged, if ``mergeplug.apply`` merged it);
* each decoder layer's cross-attention keys / values are computed once per series, (B, H, L, d_kv), and the
  S samples of a series attend to them together as S query rows;
* the self-attention keys / values go into a preallocated (B, S, H, T, d_kv) cache; T5's relative position bias
  is computed once for all T steps; every projection is the module's own call (adapters and hooks apply);
* the logits are processed by ``transformers``' own processors in ``generate``'s order (EOS suppressed until
  ``min_new_tokens``; temperature, top-k, top-p) and sampled with one ``torch.multinomial`` per step, as
  ``generate`` does, so a seed gives the same samples wherever the arithmetic rounds alike.

``fast_sampling(pipe, exact=False)`` samples each step among the top-k tokens only (:func:`sample_top_k`): the
same distribution (EOS suppressed, temperature, top-k, then top-p on the survivors, as ``generate`` orders them),
but ``torch.multinomial`` draws over k = 50 candidates instead of the whole vocabulary of 4,096, whose random
numbers were ~10% of a forecast. That path also runs the first decoding step once per series (its input is the
start token for every sample), which is not bitwise the arithmetic of S rows for every batch size. The samples
are then not those of ``generate`` for the same seed (a test compares the distributions); greedy decoding
(top-k 1) still gives ``generate``'s tokens.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from chronos import ChronosPipeline
from chronos.chronos import ChronosModel
from torch import nn
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .config import MergeConfig
from .patches.base import AUX_ATTR, PatchRecord, find_record, restore, unhooked

__all__ = ["fast_sampling", "sample_tokens", "sample_top_k", "FAMILY"]

FAMILY = "chronos-t5-sampling"


def _processors(
    t_generated: int, min_new: int, eos: int, temperature: float, top_k: int | None, top_p: float | None
) -> LogitsProcessorList:
    """``generate``'s processors for Chronos' sampling settings, in ``generate``'s order."""
    procs = LogitsProcessorList([MinNewTokensLengthLogitsProcessor(t_generated, min_new, eos)])
    if temperature is not None and temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k is not None and top_k != 0:
        procs.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p is not None and top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return procs


def sample_top_k(
    logits: torch.Tensor, top_k: int, *, temperature: float = 1.0, top_p: float | None = 1.0, eos: int | None = None
) -> torch.Tensor:
    """One token per row from ``softmax(logits / temperature)`` restricted to the top-k (then top-p) tokens.

    Args:
        logits: (N, V) float logits.
        top_k: candidates per row (>= 1); top_p: nucleus mass kept among them (1.0: all); eos: a token id never
            sampled (``generate``'s ``min_new_tokens`` for a forecast of fixed length).

    Returns:
        (N,) long token ids. The distribution is that of ``generate``'s processors + ``torch.multinomial`` over the
        whole vocabulary, except that ties at the k-th logit keep exactly k tokens (``generate`` keeps them all).
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1 (candidates per row), got {top_k}; for no top-k use exact sampling")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if eos is not None:
        logits = logits.clone()
        logits[:, eos] = -float("inf")
    if temperature is not None and temperature != 1.0:
        logits = logits / temperature
    vals, idx = logits.topk(min(top_k, logits.shape[-1]), dim=-1)  # (N, k), descending
    if top_p is not None and top_p < 1.0:  # generate's rule: drop the low tail whose mass is <= 1 - top_p
        asc = vals.flip(-1)
        drop = asc.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -1] = False  # keep at least one token
        vals = vals.masked_fill(drop.flip(-1), -float("inf"))
    choice = torch.multinomial(vals.softmax(-1), num_samples=1)  # (N, 1) index among the k candidates
    return idx.gather(1, choice).squeeze(1)


def _cross_bias(enc: Any, attention_mask: torch.Tensor, dtype: torch.dtype, record: PatchRecord | None):
    """(B, 1, 1, L) additive bias for cross-attention over the encoder output (merged or not)."""
    if hasattr(enc, "attention_bias") and getattr(enc, "token_sizes", None) is not None:
        proportional = record.config.proportional_attention if record is not None else True
        return enc.attention_bias(dtype, proportional)
    return torch.where(attention_mask.bool(), 0.0, torch.finfo(dtype).min).to(dtype)[:, None, None, :]


@torch.no_grad()
def sample_tokens(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    prediction_length: int,
    num_samples: int,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float | None = 1.0,
    eos_token_id: int = 1,
    merge_record: PatchRecord | None = None,
    exact: bool = True,
) -> torch.Tensor:
    """Sample ``num_samples`` token paths per series from a ``T5ForConditionalGeneration``.

    Args:
        model: the T5 model (possibly with a merged encoder).
        input_ids: (B, N) context tokens; attention_mask: (B, N), 0 for padding / missing values.
        prediction_length: T, tokens per path (no EOS before T, as Chronos asks ``generate``).
        num_samples: S paths per series.
        exact: sample over the whole vocabulary as ``generate`` does (same samples for a seed); ``False`` samples
            among the top-k tokens only (:func:`sample_top_k`; same distribution, other samples, faster).

    Returns:
        (B, S, T) long tokens; rows ``b`` are series ``b`` (the order of ``generate``'s
        ``num_return_sequences``).
    """
    cfg = model.config
    n_b, s, t_len = input_ids.shape[0], num_samples, prediction_length
    enc = model.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
    memory = enc.last_hidden_state  # (B, L, C)
    dtype = memory.dtype
    cross_bias = _cross_bias(enc, attention_mask, dtype, merge_record)  # (B, 1, 1, L)
    if not cross_bias.any():  # no padding and no size bias: adding zeros changes nothing, skip the pass
        cross_bias = None
    dec = model.decoder
    heads, d_kv = cfg.num_heads, cfg.d_kv
    cross_kv = []
    for block in dec.block:  # once per series, not once per sample
        ca = block.layer[1].EncDecAttention
        # contiguous once here, so that no step copies them again: K^T (B, H, d_kv, L), V (B, H, L, d_kv)
        k_t = ca.k(memory).view(n_b, -1, heads, d_kv).permute(0, 2, 3, 1).contiguous()
        v = ca.v(memory).view(n_b, -1, heads, d_kv).transpose(1, 2).contiguous()
        cross_kv.append((k_t, v))
    rows = n_b * s
    # self-attention cache, (B, S, H, T, d_kv) so that a step shared by the S samples can write all of them
    # (never read before written: position t is filled before a step reads positions <= t).
    # float32 / float64 steps read the filled positions <= t. CPU products in reduced precision copy a cache sliced so
    # (a third of a bfloat16 forecast), so there a step reads the whole of a contiguous cache whose capacity grows
    # 16, 32, 64, ... with t, zero-initialised, the positions after t masked out (-inf bias: zero weight).
    full = dtype in (torch.bfloat16, torch.float16)
    cap = min(t_len, 16) if full else t_len
    new_cache = memory.new_zeros if full else memory.new_empty
    cache_k = [new_cache(n_b, s, heads, cap, d_kv) for _ in dec.block]
    cache_v = [new_cache(n_b, s, heads, cap, d_kv) for _ in dec.block]
    self_bias = dec.block[0].layer[0].SelfAttention.compute_bias(t_len, t_len, device=memory.device).to(dtype)
    if full:
        future = torch.ones(t_len, t_len, dtype=torch.bool, device=memory.device).triu(1)
        self_bias = self_bias.masked_fill(future, float("-inf"))
    # top-k path: one product for q, k and v where they are plain bias-free linear layers without hooks (the
    # exact path calls each module, so that its arithmetic is stock's)
    qkv = [None if exact else _stacked_weight(b.layer[0].SelfAttention) for b in dec.block]
    seq = torch.empty(rows, t_len + 1, dtype=torch.long, device=memory.device)  # start token + sampled tokens
    seq[:, 0] = cfg.decoder_start_token_id
    scale = cfg.d_model**-0.5 if getattr(cfg, "scale_decoder_outputs", False) else None

    def step(tokens: torch.Tensor, t: int, s_step: int) -> torch.Tensor:
        """Decoder step t for (B * s_step,) tokens; fills cache position t of all S samples; (B * s_step, V) logits."""
        n = n_b * s_step
        x = dec.embed_tokens(tokens)[:, None, :]  # (n, 1, C)
        for i, block in enumerate(dec.block):
            sa = block.layer[0]
            att = sa.SelfAttention
            h = sa.layer_norm(x)
            if qkv[i] is not None:
                q, k, v = nn.functional.linear(h, qkv[i]).chunk(3, dim=-1)
            else:  # the modules themselves (not their weights), so that adapters and hooks on them keep working
                q, k, v = att.q(h), att.k(h), att.v(h)
            cache_k[i][:, :, :, t] = k.view(n_b, s_step, heads, d_kv)  # s_step 1: broadcast to all S
            cache_v[i][:, :, :, t] = v.view(n_b, s_step, heads, d_kv)
            span = cache_k[i].shape[3] if full else t + 1
            keys = cache_k[i][:, :s_step, :, :span].reshape(n, heads, span, d_kv)
            values = cache_v[i][:, :s_step, :, :span].reshape(n, heads, span, d_kv)
            q = q.reshape(n, heads, 1, d_kv)
            scores = q @ keys.transpose(-1, -2) + self_bias[:, :, t : t + 1, :span]
            a = torch.softmax(scores.float(), dim=-1).to(dtype) @ values  # (n, H, 1, d_kv)
            x = x + att.o(a.reshape(n, 1, heads * d_kv))
            ca = block.layer[1]
            h = ca.layer_norm(x)
            q = ca.EncDecAttention.q(h).view(n_b, s_step, heads, d_kv).transpose(1, 2)  # (B, H, s_step, d_kv)
            k_t, v = cross_kv[i]
            scores = q @ k_t  # (B, H, s_step, L): the samples of a series share one K/V
            if cross_bias is not None:
                scores = scores + cross_bias
            a = torch.softmax(scores.float(), dim=-1).to(dtype) @ v  # (B, H, s_step, d_kv)
            x = x + ca.EncDecAttention.o(a.transpose(1, 2).reshape(n, 1, heads * d_kv))
            x = block.layer[2](x)
        h = dec.final_layer_norm(x)
        if scale is not None:
            h = h * scale
        return model.lm_head(h)[:, 0, :].float()  # (n, V)

    procs = _processors(1, t_len, eos_token_id, temperature, top_k, top_p)
    top_k_only = not exact and top_k is not None and top_k > 0
    tokens = seq[:, 0]
    for t in range(t_len):
        if t >= cache_k[0].shape[3]:  # a full reduced-precision cache: twice the capacity
            grown = min(2 * cache_k[0].shape[3], t_len)
            cache_k = [_grow(c, grown) for c in cache_k]
            cache_v = [_grow(c, grown) for c in cache_v]
        if t == 0 and not exact:
            # the first step sees only the start token, the same for the S samples of a series: run it once per
            # series (not bitwise the numbers of S rows for every batch size, hence not on the exact path)
            logits = step(tokens[::s], 0, 1).repeat_interleave(s, dim=0)
        else:
            logits = step(tokens, t, s)
        if top_k_only:
            tokens = sample_top_k(logits, top_k, temperature=temperature, top_p=top_p, eos=eos_token_id)
        else:
            scores = procs(seq[:, : t + 1], logits)
            tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        seq[:, t + 1] = tokens
    return seq[:, 1:].reshape(n_b, s, t_len)


def _stacked_weight(att: nn.Module) -> torch.Tensor | None:
    """(3·H·d_kv, C) q, k and v weights stacked, when the three are plain bias-free ``nn.Linear`` layers without hooks
    (so that one product gives what the three calls would); None otherwise (adapters, hooks, quantized layers)."""
    mods = [att.q, att.k, att.v]
    plain = all(type(m) is nn.Linear and m.bias is None and unhooked(m) for m in mods)
    return torch.cat([m.weight for m in mods]) if plain else None


def _grow(cache: torch.Tensor, capacity: int) -> torch.Tensor:
    """A (B, S, H, T, d) cache copied into a zero-filled one of ``capacity`` positions."""
    out = cache.new_zeros(*cache.shape[:3], capacity, cache.shape[4])
    out[:, :, :, : cache.shape[3]] = cache
    return out


def _fast_forward(self: ChronosModel, input_ids, attention_mask, prediction_length=None, num_samples=None,
                  temperature=None, top_k=None, top_p=None):  # fmt: skip
    """``ChronosModel.forward`` with seq2seq forecasts sampled by :func:`sample_tokens`."""
    if self.config.model_type != "seq2seq":  # decoder-only Chronos: the class's own (stock) path
        return type(self).forward(self, input_ids, attention_mask, prediction_length, num_samples, temperature,
                                  top_k, top_p)  # fmt: skip
    c = self.config
    return sample_tokens(
        self.model,
        input_ids,
        attention_mask,
        prediction_length=prediction_length if prediction_length is not None else c.prediction_length,
        num_samples=num_samples if num_samples is not None else c.num_samples,
        temperature=temperature if temperature is not None else c.temperature,
        top_k=top_k if top_k is not None else c.top_k,
        top_p=top_p if top_p is not None else c.top_p,
        eos_token_id=c.eos_token_id,
        merge_record=find_record([self.model]),
        exact=self.__dict__[AUX_ATTR].config.extra.get("exact", True),
    )


def _chronos_model(obj: Any) -> ChronosModel:
    if isinstance(obj, ChronosPipeline):
        return obj.model
    if isinstance(obj, ChronosModel):
        return obj
    raise TypeError(
        f"fast_sampling works on a ChronosPipeline (Chronos-T5) or its ChronosModel, not {type(obj).__name__}; "
        "Chronos-Bolt and Chronos-2 predict quantiles directly and do not sample"
    )


def fast_sampling(obj: Any, enable: bool = True, *, exact: bool = True) -> Any:
    """Switch Chronos-T5 sampling to the fast path (``enable=False``, or ``mergeplug.remove``, switches back).

    ``exact=False`` also samples among the top-k tokens only (same distribution, not the same samples as stock for
    a seed; faster). Works with and without ``mergeplug.apply`` (in any order); returns ``obj``.
    """
    cm = _chronos_model(obj)
    record = find_record([cm], aux=True, family=FAMILY)
    for name, value in (("enable", enable), ("exact", exact)):
        if not isinstance(value, bool):
            raise ValueError(f"fast_sampling: {name} must be True or False, got {value!r}")
    if not enable:
        if record is not None:
            restore(record)
        return obj
    if record is not None:
        record.config.extra["exact"] = bool(exact)
    else:
        # an instance attribute, not a class swap: token merging swaps ChronosModel's class independently
        record = PatchRecord(family=FAMILY, config=MergeConfig(r=0, extra={"exact": bool(exact)}), aux=True)
        cm.__dict__["forward"] = types.MethodType(_fast_forward, cm)
        cm.__dict__[AUX_ATTR] = record
        record.undo += [lambda: cm.__dict__.pop("forward", None), lambda: cm.__dict__.pop(AUX_ATTR, None)]
    return obj

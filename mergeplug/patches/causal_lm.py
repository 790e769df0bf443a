"""Causal local merging in decoder-only Transformers: Hugging Face causal LMs and decoder-only Chronos.

Supported: GPT-2-style models (absolute position embeddings added before the blocks ``.h``; e.g.
``GPT2LMHeadModel`` / ``GPT2Model``) and Llama-style models (rotary position embeddings handed to every block
of ``.layers``; e.g. ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``), and Chronos with
``model_type="causal"`` (``ChronosPipeline`` / ``ChronosModel`` around such a causal LM).

**Prefill** (a forward with an empty or no KV cache): tokens merge *between* blocks, causally (a token merges
only into a later one, and a merged token sits at its latest member), so every later block runs on the shorter
sequence. Each merged block gets

* an attention mask rebuilt from the tokens' positions (query i sees key j iff pos_j <= pos_i; padding and
  empty slots never), plus ``log(size)`` of every key (proportional attention, unless turned off);
* rotary embeddings gathered at the merged tokens' positions (the latest member's; the original cos/sin,
  which already account for left padding, are reused), so RoPE follows the merged tokens. GPT-2 adds its
  position embeddings before the first block, so nothing is needed there.

After the last block every position gets an output again (:func:`~mergeplug.merge.causal_unmerge`), so the
LM head sees the full sequence. The first block always sees every token, so the cache length that ``generate``
reads (the first layer's) and the positions it derives stay right.

**Decoding** after a merged prefill: the KV cache of block ``i`` holds the ``T_i`` tokens that entered it.
Every later step builds, for each block, the mask over its own cached tokens (sizes and empty slots kept from
the prefill) plus the new ones, so ``generate()`` (greedy, sampling, beam search: the per-row cache facts are
reordered with the cache) continues from the merged prefill.

Guarantees: with ``threshold`` (strict mode) every output at position p depends only on inputs at positions
<= p; with ``r`` / ``ratio`` the choice of merges can depend on later inputs, which is fine for a prefill whose
only used output is the last position (forecasting, generation).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import MergeConfig
from ..merge import MergeState, causal_bias, causal_unmerge, gather_rows, merge_layer
from .base import Family, PatchRecord, begin, current, mark, register, report, swap_class

__all__ = ["inject_causal_lm", "find_stack", "check_causal_lm_config"]


def find_stack(obj: nn.Module) -> tuple[nn.Module, nn.ModuleList, bool]:
    """The decoder stack of a causal LM: (base model, blocks, uses rotary embeddings).

    Raises:
        TypeError: the model has no GPT-2-style (``.h``) or Llama-style (``.layers`` + ``.rotary_emb``) stack.
    """
    base = getattr(obj, "base_model", obj)
    blocks = getattr(base, "h", None)
    if isinstance(blocks, nn.ModuleList) and hasattr(blocks[0], "attn") and hasattr(base, "wpe"):
        return base, blocks, False
    blocks = getattr(base, "layers", None)
    if isinstance(blocks, nn.ModuleList) and hasattr(blocks[0], "self_attn") and hasattr(base, "rotary_emb"):
        return base, blocks, True
    raise TypeError(
        f"{type(obj).__name__}: no GPT-2-style (.h blocks, .wpe) or Llama-style (.layers with self_attn, "
        ".rotary_emb) decoder stack found; register your model with mergeplug.register_patch(...)"
    )


def _is_causal_lm(obj: Any) -> bool:
    from transformers import PreTrainedModel

    if not isinstance(obj, PreTrainedModel) or getattr(obj.config, "is_encoder_decoder", False):
        return False
    try:
        find_stack(obj)
    except TypeError:
        return False
    return True


class _Args:
    """Read and replace a block's arguments by name, whether they came positionally or as keywords."""

    def __init__(self, fn: Any) -> None:
        self.names = list(inspect.signature(fn).parameters)

    def get(self, args: tuple, kwargs: dict, name: str) -> Any:
        if name in kwargs:
            return kwargs[name]
        i = self.names.index(name) if name in self.names else len(args)
        return args[i] if i < len(args) else None

    def set(self, args: tuple, kwargs: dict, name: str, value: Any) -> tuple[tuple, dict]:
        i = self.names.index(name) if name in self.names else len(args)
        if name not in kwargs and i < len(args):
            return (*args[:i], value, *args[i + 1 :]), kwargs
        return args, {**kwargs, name: value}


def _gather_rope(pe: tuple[torch.Tensor, torch.Tensor], pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary (cos, sin), each (B or 1, N, D), taken at positions ``pos`` (B, T) -> (B, T, D) each."""
    idx = pos.clamp(0, pe[0].shape[1] - 1).long()
    return tuple(gather_rows(t, idx) for t in pe)


KV_ATTR = "_mergeplug_kv"  # on a KV cache filled by a merged prefill: per block i >= 1, [pos, size, mask] (B, T_i)


def _check_attention(model: nn.Module) -> None:
    cfg = getattr(model, "config", None)
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in ("eager", "sdpa"):
        raise NotImplementedError(
            f"{type(model).__name__} uses attn_implementation={impl!r}; merged tokens need an additive (B, 1, Q, K) "
            "mask, which only 'eager' and 'sdpa' take. Load the model with attn_implementation='sdpa'."
        )
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        raise NotImplementedError(
            f"{type(model).__name__} uses sliding-window attention (sliding_window={cfg.sliding_window}), whose "
            "rolling cache and window mask mergeplug does not rebuild for merged tokens. If your contexts are "
            "shorter than the window, set model.config.sliding_window = None before mergeplug.apply."
        )


_KEY = "causal-lm"  # per-call key of :class:`_Call`


@dataclass
class _Call:
    """One forward of a patched decoder-only model (started by the pre-hook on its base stack).

    Attributes:
        pad: the (B, N) padding mask of the forward, or None.
        phase: ``"prefill"`` (merging), ``"decode"`` (on a merged cache) or None (original code).
        state: the merge state of the prefill in progress.
        rope: the rotary (cos, sin) of the prefill in progress.
        counts: tokens entering block 0, then leaving every block, of the prefill.
    """

    pad: torch.Tensor | None = None
    phase: str | None = None
    state: MergeState | None = None
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    counts: list[int] = field(default_factory=list)


def inject_causal_lm(model: nn.Module, record: PatchRecord) -> None:
    """Hook the decoder stack of ``model`` (see the module docstring) and, for a model with ``generate``,
    swap its class so beam search reorders the merged cache's per-row facts with the cache.

    The facts a later decoding step needs (per block: the cached tokens' positions, sizes and padding mask)
    live on the KV cache object itself (attribute ``_mergeplug_kv``), so any cache filled by a merged prefill
    decodes correctly, whichever forward ran in between, and copies of it (``copy.deepcopy``) too.
    """
    _check_attention(model)
    base, blocks, rope = find_stack(model)
    n_layers = min(len(blocks), int(getattr(model.config, "num_hidden_layers", len(blocks)) or len(blocks)))
    blocks = blocks[:n_layers]  # the blocks the model runs
    record.hints.num_layers = n_layers
    spec, base_spec = _Args(blocks[0].forward), _Args(base.forward)

    def base_pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = base_spec.get(args, kwargs, "attention_mask")
        if mask is not None and mask.dim() != 2 and not record.config.is_noop(n_layers):
            raise NotImplementedError(
                f"{type(module).__name__} received a {mask.dim()}-D attention_mask; mergeplug rebuilds the mask for "
                "merged tokens from a 2-D padding mask (batch, length) only. Pass a 2-D mask or none."
            )
        begin(record, _KEY, _Call(pad=mask if mask is not None and mask.dim() == 2 else None))

    def pre(i: int, block: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        cfg: MergeConfig = record.config
        call: _Call | None = current(record, _KEY)
        if call is None:  # the blocks run outside a forward of the model's stack
            return None
        x = args[0] if args else kwargs["hidden_states"]
        cache = spec.get(args, kwargs, "cache")
        facts = getattr(cache, KV_ATTR, None) if cache is not None else None
        if i == 0 and facts is not None and _cached_length(cache, 0) > 0:
            call.phase = "decode"  # decoding on a merged cache, whatever the current settings
            return None  # the first block caches every token: the model's own mask is right
        if call.phase == "decode":
            return spec.set(
                args, kwargs, "attention_mask", _decode_mask(call, cache, facts, i, x, cfg.proportional_attention)
            )
        if cfg.is_noop(n_layers):
            return None
        if i == 0:
            past = 0 if cache is None else _cached_length(cache, 0)
            if past and any(_cached_length(cache, j) != past for j in range(1, n_layers)):
                raise RuntimeError(
                    "this KV cache holds different lengths per block (a merged prefill) but no mergeplug facts: it "
                    "was rebuilt or converted after the prefill. Decode on the cache object the prefill filled."
                )
            call.phase = "prefill" if past == 0 else None
            if past == 0:
                _start_prefill(call, x, cache, spec.get(args, kwargs, "position_embeddings") if rope else None)
        if call.phase != "prefill" or i == 0:
            return None
        state: MergeState = call.state
        if cache is not None:
            facts = cache.__dict__.setdefault(KV_ATTR, {})
            facts[i] = [state.pos.clone(), state.size.clone(), state.mask.clone()]
        if state.length < state.source.shape[1] or not bool(state.mask.all()):
            m = causal_bias(state.pos, state.pos, state.size, state.mask, x.dtype, cfg.proportional_attention)
            args, kwargs = spec.set(args, kwargs, "attention_mask", m)
            if rope:
                pe = _gather_rope(call.rope, state.pos)
                args, kwargs = spec.set(args, kwargs, "position_embeddings", pe)
        return args, kwargs

    def _start_prefill(call: _Call, x: torch.Tensor, cache: Any, pe: Any) -> None:
        n_b, n, _ = x.shape
        pad = call.pad
        mask = None if pad is None else pad[:, -n:].bool()
        call.state = MergeState.init(n_b, n, mask=mask, causal=True, device=x.device, dtype=torch.float32)
        call.counts = [n]
        call.rope = pe
        if cache is not None:
            cache.__dict__.pop(KV_ATTR, None)

    def _decode_mask(call: _Call, cache: Any, facts: dict, i: int, x: torch.Tensor, prop: bool) -> torch.Tensor:
        """(B, 1, q, T_i + q) mask of block i over its cached (merged) tokens and the q new ones."""
        n_b, q = x.shape[:2]
        held = _cached_length(cache, i)  # what the cache holds for block i (a crop may have cut the tail)
        k_pos, k_size, k_mask = (t[:, :held] for t in facts[i])
        if k_pos.shape[1] != held or k_pos.shape[0] != n_b:
            raise RuntimeError(
                f"block {i}: the merged KV cache holds {held} tokens x {n_b} rows but mergeplug knows "
                f"{k_pos.shape[1]} x {k_pos.shape[0]}: the cache was extended or re-batched outside a forward of "
                "this model. Run the prefill with the final batch (generate expands it first)."
            )
        start = _cached_length(cache, 0) - q  # block 0 (full length) already holds this step's tokens
        new_pos = torch.arange(start, start + q, device=x.device, dtype=k_pos.dtype).expand(n_b, q)
        pad = call.pad
        new_mask = torch.ones(n_b, q, dtype=torch.bool, device=x.device) if pad is None else pad[:, -q:].bool()
        k_pos = torch.cat([k_pos, new_pos], 1)
        k_size = torch.cat([k_size, torch.ones_like(new_pos)], 1)
        k_mask = torch.cat([k_mask, new_mask], 1)
        facts[i] = [k_pos, k_size, k_mask]
        return causal_bias(new_pos, k_pos, k_size, k_mask, x.dtype, prop)

    def post(i: int, block: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        cfg: MergeConfig = record.config
        call: _Call | None = current(record, _KEY)
        if call is None or call.phase != "prefill":
            return None
        state: MergeState = call.state
        h = out if isinstance(out, torch.Tensor) else out[0]
        if i < n_layers - 1:
            h = merge_layer(h, state, cfg, i)
        call.counts.append(state.length)
        if i == n_layers - 1:
            h = causal_unmerge(h, state)
            call.state = call.phase = None
            report(record, "token_counts", call.counts)
        return h if isinstance(out, torch.Tensor) else (h, *out[1:])

    record.hooks.append(base.register_forward_pre_hook(base_pre, with_kwargs=True))
    mark(base, record)
    for i, block in enumerate(blocks):
        mark(block, record)
        record.hooks.append(block.register_forward_pre_hook(lambda m, a, kw, i=i: pre(i, m, a, kw), with_kwargs=True))
        record.hooks.append(
            block.register_forward_hook(lambda m, a, kw, o, i=i: post(i, m, a, kw, o), with_kwargs=True)
        )
    if hasattr(model, "generate") and model is not base:
        swap_class(model, _ReorderingLM, record)


def _cached_length(cache: Any, layer: int) -> int:
    """Tokens already in the cache of ``layer`` before this step (0 at a prefill)."""
    try:
        return int(cache.get_seq_length(layer))
    except (TypeError, IndexError, AttributeError):  # pragma: no cover - caches without per-layer lengths
        return int(cache.get_seq_length())


class _ReorderingLM:
    """Mixin for a patched causal LM: beam search reorders the merged cache's per-row facts with the cache."""

    def _reorder_cache(self, cache: Any, beam_idx: torch.Tensor) -> Any:
        facts = getattr(cache, KV_ATTR, None)
        if facts:
            for i, kept in facts.items():
                facts[i] = [t.index_select(0, beam_idx.to(t.device)) for t in kept]
        cache.reorder_cache(beam_idx)
        return cache


def check_causal_lm_config(config: MergeConfig) -> None:
    """Settings a decoder-only model can run (causal, no input merging)."""
    if not config.causal:
        raise ValueError(
            "decoder-only models are causal: merge with causal=True (add threshold=... for the strict mode in "
            "which no output depends on later inputs)"
        )
    if config.input_ratio:
        raise ValueError(
            "input_ratio is not supported for decoder-only models: the first block must see every token so that "
            "the KV cache length generate() reads stays the sequence length; use r / ratio / threshold"
        )


register(
    Family(
        name="causal-lm",
        description="Hugging Face decoder-only LMs: GPT-2-style (.h, absolute positions) and Llama-style "
        "(.layers, rotary positions) — causal merging between blocks in the prefill, generate() on the merged cache",
        matches=_is_causal_lm,
        inject=inject_causal_lm,
        modules=lambda obj: [obj],
        check=check_causal_lm_config,
    )
)

"""Token merging between the blocks of any stack: the shared machinery of the black-box families and user models.

The blocks are treated as black boxes that map hidden states (B, T, C) (or (T, B, C)) to the same shape:
forward hooks merge tokens *between* blocks, so every later block runs on the shorter sequence, and after the
last block the tokens are copied back (``unmerge``; ``causal_unmerge`` in the causal modes) so that the rest
of the model sees every position. The similarity is the cosine of the hidden states leaving the block.

* ``causal=True``: merged tokens sit at their latest member; when the blocks receive a causal mask (``is_causal``
  / ``src_mask`` of ``nn.TransformerEncoderLayer``), it is rebuilt from the merged tokens' positions (a token
  sees the tokens at or before its position). With ``threshold`` (strict mode) every output at position p
  depends only on inputs at positions <= p; with ``r`` / ``ratio`` the *choice* of merges can depend on later
  inputs (good for a prefill whose only used output is the last position).
* Padding masks cannot follow merged tokens through a black-box block: a block that receives one raises.
* Proportional attention needs access to the attention logits, which a black box does not give: it is not
  applied here (model-specific families such as ``t5`` and ``patchtst`` do apply it).

:func:`inject_blocks` hooks a stack; the families built on it are :mod:`mergeplug.patches.torch_transformer`
(``nn.TransformerEncoder`` / ``nn.TransformerDecoder``), :mod:`mergeplug.patches.mamba` and the encoder of
:mod:`mergeplug.patches.hf_time_series`. :func:`register_patch` adds a user model in one call (the README shows
one). This module registers no family itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import MergeConfig
from ..merge import MergeState, merge_layer
from .base import Family, PatchRecord, begin, current, end, mark, merge_inputs, register, report
from .loop import protected_tokens, short_input, unmerged

__all__ = ["register_patch", "inject_blocks"]


def _get(obj: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _first_tensor(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def _replace_first(out: Any, x: torch.Tensor) -> Any:
    if isinstance(out, torch.Tensor):
        return x
    return (x, *out[1:]) if isinstance(out, tuple) else type(out)([x, *out[1:]])


def _causal_mask(pos: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(T, T) float mask: query i sees key j iff pos_j <= pos_i (rows share positions: uses row 0)."""
    p = pos[0]
    allowed = p[None, :] <= p[:, None]
    return torch.zeros(allowed.shape, dtype=like.dtype, device=like.device).masked_fill(~allowed, float("-inf"))


@dataclass
class _BlocksCall:
    """One forward through a hooked stack: its merge state and the token counts so far."""

    state: MergeState
    counts: list[int]


def inject_blocks(
    blocks: nn.ModuleList,
    record: PatchRecord,
    *,
    seq_dim: int = 1,
    mask_kwargs: tuple[str, ...] = (),
    padding_kwargs: tuple[str, ...] = (),
    causal_flag: str = "is_causal",
    unsupported_kwargs: tuple[str, ...] = (),
    no_padding: Callable[[torch.Tensor], bool] | None = None,
    padding_args: tuple[int, ...] = (),
) -> None:
    """Hook ``blocks`` so that tokens merge between them (see the module docstring).

    Args:
        blocks: the stack, run in order by its parent with the hidden states as first argument.
        record: the patch record (settings are read at run time).
        seq_dim: the token dimension of the hidden states (1 for (B, T, C), 0 for (T, B, C)).
        mask_kwargs: keyword arguments holding an attention mask; a causal one is rebuilt for the merged
            tokens, any other raises.
        padding_kwargs: keyword arguments holding a padding mask; a block receiving one raises.
        causal_flag: the keyword argument that says a mask is causal (``tgt_is_causal`` for decoder layers).
        unsupported_kwargs: keyword arguments that must be None (e.g. a decoder's ``memory_mask``, whose query
            axis would have to follow the merged tokens).
        no_padding: tells a padding mask that pads nothing (e.g. all ones); such a mask is dropped instead of
            raising (``generate`` passes one).
        padding_args: positions (in ``args``) of padding / attention masks, handled like ``padding_kwargs``.
    """
    n_layers = len(blocks)
    if n_layers == 0:
        raise ValueError("inject_blocks: the block list is empty")
    _check_seq_dim(seq_dim)
    record.hints.num_layers = n_layers
    call_key = f"blocks-{id(blocks)}"  # this stack's calls (a model may hook two stacks)

    def to_btc(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(
                f"mergeplug merges hidden states of shape (batch, tokens, channels) or (tokens, batch, channels); "
                f"this block gets a {x.dim()}-D tensor of shape {tuple(x.shape)}: register the blocks whose input is "
                "3-D, or run the model unmerged (mergeplug.remove)"
            )
        return x if seq_dim == 1 else x.transpose(0, 1)

    def pre(i: int, block: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        cfg: MergeConfig = record.config
        if cfg.is_noop(n_layers):
            return None
        if i == 0:  # a new forward; a sequence no longer than the token floor runs the original blocks, bitwise
            end(record, call_key)
            if short_input(record, n_layers, to_btc(args[0]).shape[1]):
                return None
        call: _BlocksCall | None = current(record, call_key)
        if i > 0 and call is None:  # short, or blocks called outside a forward of the stack
            return None
        for key in padding_kwargs:
            mask = kwargs.get(key)
            if mask is not None and no_padding is not None and no_padding(mask):
                kwargs = {**kwargs, key: None}
        for pos in padding_args:
            mask = args[pos] if len(args) > pos else None
            if mask is None:
                continue
            if no_padding is None or not no_padding(mask):
                raise NotImplementedError(
                    f"{type(block).__name__} received a padding / attention mask, which cannot follow merged tokens "
                    "through a black-box block. Run without padding, or write a model family in mergeplug/patches/."
                )
            args = (*args[:pos], None, *args[pos + 1 :])
        for key in padding_kwargs + unsupported_kwargs:
            if kwargs.get(key) is not None:
                raise NotImplementedError(
                    f"{type(block).__name__} received {key}, which cannot follow merged tokens through a black-box "
                    "block (padding mask or per-query mask). Run without it, or write a model family in "
                    "mergeplug/patches/."
                )
        x = to_btc(args[0])
        if i == 0:  # a new forward: fresh state, optional merging of the input tokens
            n_b, n, _ = x.shape
            protected = protected_tokens(cfg, n_b, n, x.device, tail=record.hints.recent_tail)
            # sizes and positions in float32 whatever x's dtype (bfloat16 rounds positions above 256)
            state = MergeState.init(n_b, n, protected=protected, causal=cfg.causal, device=x.device)
            call = begin(record, call_key, _BlocksCall(state, [n]))
            x, merged = merge_inputs(x, state, cfg)
            if merged:
                args = (x if seq_dim == 1 else x.transpose(0, 1), *args[1:])
                call.counts[0] = state.length
        state = call.state
        n = state.source.shape[1]
        for key in mask_kwargs:
            mask = kwargs.get(key)
            if mask is None or state.length == n:
                continue
            if not kwargs.get(causal_flag):
                raise NotImplementedError(
                    f"{type(block).__name__} received an attention mask ({key}) not flagged {causal_flag}=True; only a "
                    "causal mask can be rebuilt for merged tokens. Pass is_causal=True with a causal mask, run "
                    "without a mask, or write a model family in mergeplug/patches/."
                )
            if not cfg.causal:
                raise ValueError(
                    f"{type(block).__name__} runs causally ({causal_flag}=True) but merging is bidirectional: "
                    "use mergeplug.apply(..., causal=True)"
                )
            kwargs = {**kwargs, key: _causal_mask(state.pos, x)}
        return args, kwargs

    def post(i: int, block: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        cfg: MergeConfig = record.config
        call: _BlocksCall | None = current(record, call_key)
        if cfg.is_noop(n_layers) or call is None:
            return None
        state = call.state
        h = to_btc(_first_tensor(out))
        if i < n_layers - 1:
            h = merge_layer(h, state, cfg, i)
        call.counts.append(state.length)
        if i == n_layers - 1:  # back to every position for the rest of the model
            h = unmerged(h, state)
            end(record, call_key)
            report(record, "token_counts", call.counts)
        return _replace_first(out, h if seq_dim == 1 else h.transpose(0, 1))

    for i, block in enumerate(blocks):
        mark(block, record)
        record.hooks.append(block.register_forward_pre_hook(lambda m, a, kw, i=i: pre(i, m, a, kw), with_kwargs=True))
        record.hooks.append(
            block.register_forward_hook(lambda m, a, kw, o, i=i: post(i, m, a, kw, o), with_kwargs=True)
        )


def _check_seq_dim(seq_dim: Any) -> None:
    """The token axis of 3-D hidden states: 1 for (batch, tokens, channels), 0 for (tokens, batch, channels)."""
    if isinstance(seq_dim, bool) or seq_dim not in (0, 1):
        raise ValueError(
            f"seq_dim must be 1 (hidden states (batch, tokens, channels)) or 0 ((tokens, batch, channels)), "
            f"got {seq_dim!r}"
        )


def register_patch(
    match_: type | Callable[[Any], bool],
    *,
    blocks: str,
    seq_dim: int | Callable[[Any], int] = 1,
    name: str | None = None,
    description: str = "",
    mask_kwargs: tuple[str, ...] = (),
    padding_kwargs: tuple[str, ...] = (),
) -> Family:
    """Make ``mergeplug.apply`` work on your own model: tokens merge between the blocks of ``obj.<blocks>``.

    Args:
        match_: the model class (instances of it and of subclasses match) or a predicate.
        blocks: attribute path of the ``nn.ModuleList`` of blocks (e.g. ``"layers"``, ``"encoder.layer"``).
        seq_dim: token dimension of the hidden states the blocks exchange (or a function of the model).
        name: family name (default: the class name).
        mask_kwargs / padding_kwargs: see :func:`inject_blocks`.

    Returns:
        The registered :class:`~mergeplug.patches.base.Family` (registered before the built-in generic ones).
    """
    if not isinstance(match_, type) and not callable(match_):
        raise TypeError(
            f"register_patch: match_ must be the model class or a predicate obj -> bool, got {match_!r} "
            f"({type(match_).__name__})"
        )
    if not isinstance(blocks, str) or not all(part.isidentifier() for part in blocks.split(".")):
        raise ValueError(
            f"register_patch: blocks must be the attribute path of the block list, e.g. 'layers' or "
            f"'encoder.layer', got {blocks!r}"
        )
    if not callable(seq_dim):
        _check_seq_dim(seq_dim)
    if isinstance(match_, type):
        cls = match_

        def matches(obj: Any) -> bool:
            return isinstance(obj, cls)

        label = name or cls.__name__
    else:
        matches, label = match_, name or getattr(match_, "__name__", "custom")

    def inject(obj: Any, record: PatchRecord) -> None:
        try:
            stack = _get(obj, blocks)
        except AttributeError:
            raise TypeError(
                f"{type(obj).__name__} has no attribute path {blocks!r} (the blocks to merge between)"
            ) from None
        if not isinstance(stack, (nn.ModuleList, nn.Sequential)):
            raise TypeError(f"{type(obj).__name__}.{blocks} is a {type(stack).__name__}, not an nn.ModuleList")
        dim = seq_dim(obj) if callable(seq_dim) else seq_dim
        inject_blocks(stack, record, seq_dim=dim, mask_kwargs=mask_kwargs, padding_kwargs=padding_kwargs)

    family = Family(
        name=label,
        description=description or f"{label}: tokens merge between the blocks of .{blocks}",
        matches=matches,
        inject=inject,
        modules=lambda obj: [obj],
    )
    return register(family, first=True)  # user families win over the built-in ones

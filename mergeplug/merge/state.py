"""The state a merged sequence carries (sizes, positions, masks, the source map), the attention biases it
implies, restoring merged tokens to every position (unmerge), and named regions for cost accounting.

Part of the merge engine (:mod:`mergeplug.merge`); imports nothing of the rest of the package.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = [
    "scope", "current_scope", "MergeSchedule", "MergeState", "key_bias", "causal_bias", "recent_mask",
    "group_leaders", "head_mean", "gather_rows", "unmerge", "causal_unmerge",
]  # fmt: skip


# ------------------------------------------------------------------------------------------- named regions
_SCOPES: list[str] = []


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Name the work done inside this block (e.g. ``"matching"``); :mod:`mergeplug.cost` attributes the
    products counted there to it. Also a decorator (``@scope("matching")``)."""
    _SCOPES.append(name)
    try:
        yield
    finally:
        _SCOPES.pop()


def current_scope() -> str | None:
    """The innermost :func:`scope` in force, or None."""
    return _SCOPES[-1] if _SCOPES else None


class MergeSchedule(Protocol):
    """What :func:`merge_layer` reads of a schedule (:class:`mergeplug.config.MergeConfig` is one)."""

    k: int | None
    threshold: float | None
    min_similarity: float | None
    min_tokens: int | None

    @property
    def token_period(self) -> float | str | None: ...

    def merges_at(self, layer: int, length: int) -> int: ...


# Score given to pairs that may never merge, and to pairs of two padding tokens (merged first: free).
_NEVER = float("-inf")
_PAD_PAIR = 2.0  # above any cosine similarity


@dataclass
class MergeState:
    """What every token carries through the merged layers.

    Attributes:
        size: (B, T) float, number of original tokens each token stands for (0 for empty padding slots).
        pos: (B, T) float, position of each token in the original sequence: the size-weighted mean of its
            members (bidirectional) or its latest member (causal).
        mask: (B, T) bool, True for real tokens, False for padding / missing values / empty slots.
        protected: (B, T) bool, tokens that never merge (EOS, [REG], read-out tokens).
        source: (B, N) long, for every original position the index of the token that now holds it.
        causal: whether positions follow the latest member.
        period: (B,) float seasonal period in input tokens found by :func:`detect_period` (0: none), once
            ``period="auto"`` merging has looked at this sequence; None before.

    ``size`` and ``pos`` stay float32 whatever the model's dtype (the default of :meth:`init`): bfloat16 has 8
    significant bits, so positions and sizes above 256 would round (float16: above 2048), and merged tokens would
    sit at wrong positions, tie in ``searchsorted`` and, in the causal modes, fill positions before their own.
    """

    size: torch.Tensor
    pos: torch.Tensor
    mask: torch.Tensor
    protected: torch.Tensor
    source: torch.Tensor
    causal: bool = False
    period: torch.Tensor | None = None

    @classmethod
    def init(
        cls,
        batch: int,
        length: int,
        *,
        mask: torch.Tensor | None = None,
        protected: torch.Tensor | None = None,
        causal: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> MergeState:
        """State of an unmerged sequence of shape (batch, length): sizes 1, positions 0..length-1.

        ``dtype`` is that of ``size`` and ``pos``: leave it float32 for bfloat16 / float16 models (see the class
        docstring); features may have any dtype.
        """
        ar = torch.arange(length, device=device)
        return cls(
            size=torch.ones(batch, length, device=device, dtype=dtype),
            pos=ar.to(dtype).expand(batch, length).clone(),
            mask=(torch.ones(batch, length, dtype=torch.bool, device=device) if mask is None else mask.bool()),
            protected=(
                torch.zeros(batch, length, dtype=torch.bool, device=device) if protected is None else protected.bool()
            ),
            source=ar.expand(batch, length).clone(),
            causal=causal,
        )

    @property
    def length(self) -> int:
        """Current number of token slots T."""
        return self.size.shape[1]

    def log_size_bias(self, dtype: torch.dtype, proportional: bool = True) -> torch.Tensor:
        """(B, 1, 1, T) additive attention bias over these tokens as keys (see :func:`key_bias`)."""
        return key_bias(self.size, self.mask, dtype, proportional)


def key_bias(size: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype, proportional: bool = True) -> torch.Tensor:
    """Additive attention bias over keys, shape (B, 1, 1, T), from sizes (B, T) and mask (B, T).

    ``log(size)`` for real keys when ``proportional`` (ToMe's proportional attention: a merged key counts as
    many times as it has members), 0 otherwise, and the dtype's minimum for masked keys.
    """
    # in ``dtype`` throughout: float64's minimum does not fit the float32 sizes
    zero = torch.zeros((), dtype=dtype, device=size.device)
    real = size.clamp_min(1e-6).log().to(dtype) if proportional else zero
    bias = torch.where(mask, real, torch.full((), torch.finfo(dtype).min, dtype=dtype, device=size.device))
    return bias[:, None, None, :]


def causal_bias(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    k_size: torch.Tensor,
    k_mask: torch.Tensor,
    dtype: torch.dtype,
    proportional: bool = True,
) -> torch.Tensor:
    """Additive causal attention mask over (merged) tokens, shape (B, 1, Q, K).

    Query ``i`` sees key ``j`` iff ``k_pos_j <= q_pos_i`` and key ``j`` is real (``k_mask``); a seen key gets
    ``log(k_size_j)`` (proportional attention) or 0, any other the dtype's minimum. When the queries are the keys
    (``q_pos is k_pos``), a query that would see no key (padding before every real token) sees itself, so no
    softmax row is empty.

    Args:
        q_pos: (B, Q) query positions; k_pos, k_size: (B, K) key positions and sizes; k_mask: (B, K) bool.
    """
    allowed = (k_pos[:, None, :] <= q_pos[:, :, None]) & k_mask[:, None, :]  # (B, Q, K)
    if q_pos is k_pos:
        eye = torch.eye(k_pos.shape[1], dtype=torch.bool, device=k_pos.device)
        allowed = allowed | (eye & ~allowed.any(dim=-1, keepdim=True))
    seen = (
        k_size.clamp_min(1e-6).log()[:, None, :].to(dtype)
        if proportional
        else torch.zeros((), dtype=dtype, device=k_pos.device)
    )
    return torch.where(allowed, seen, torch.finfo(dtype).min)[:, None]


def recent_mask(
    batch: int, length: int, recent: int | None, *, tail: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """(batch, length) bool, True for the ``recent`` tokens just before the last ``tail`` tokens.

    Forecasting families protect these (OR them into :attr:`MergeState.protected`): the context tokens next to the
    forecast origin, which sit before read-out tokens such as [REG] / EOS (the ``tail``), keep full resolution.
    """
    out = torch.zeros(batch, length, dtype=torch.bool, device=device)
    if recent:
        end = max(length - tail, 0)
        out[:, max(end - recent, 0) : end] = True
    return out


def _normalize(metric: torch.Tensor) -> torch.Tensor:
    """Unit-norm features, in float32 at least: similarities of bfloat16 / float16 features are computed in float32.

    bfloat16 spaces numbers near 1 by 2^-8, so cosine similarities of alike tokens (the ones that merge) would tie
    in bulk and a ``min_similarity`` / ``threshold`` would be compared at 3 significant digits; a float32 copy of
    the (B, T, C) metric is cheap next to the attention that produced it. float32 / float64 stay as they are.
    """
    metric = metric.to(torch.promote_types(metric.dtype, torch.float32))
    return metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def group_leaders(groups: torch.Tensor) -> torch.Tensor:
    """(B,) long: for every row, the first row with the same label in ``groups`` (B,) (any integer labels).

    Found with a (B, B) comparison rather than ``torch.unique``, whose output size (the number of groups) would
    need a host synchronisation on a GPU; the leaders index per-group accumulators of B slots instead.
    """
    rows = torch.arange(groups.shape[0], device=groups.device)
    same = groups[:, None] == groups[None, :]
    return torch.where(same, rows[None, :], groups.shape[0]).amin(dim=1)


def head_mean(keys: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention keys (B, T, H * d) averaged over the H heads -> (B, T, d): ToMe's similarity metric."""
    return keys.view(*keys.shape[:2], heads, -1).mean(dim=2)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (B or 1, T, C) picked per batch row: ``out[b, n] = x[b, index[b, n]]``, (B, N, C) for ``index``
    (B, N) long.

    One ``index_select`` over the flattened (B·T, C) rows: the same values as ``x.gather(1, index[..., None].expand(
    -1, -1, C))``, 10-20x faster on CPU (whole rows are copied, not one element per index entry).
    """
    n_b, n = index.shape
    c = x.shape[-1]
    if x.shape[0] == 1:
        return x[0].index_select(0, index.reshape(-1)).view(n_b, n, c)
    rows = torch.arange(n_b, device=index.device)[:, None] * x.shape[1]
    return x.reshape(-1, c).index_select(0, (index + rows).reshape(-1)).view(n_b, n, c)


def unmerge(x: torch.Tensor, source: MergeState | torch.Tensor) -> torch.Tensor:
    """Copy every merged token back to all original positions it stands for: (B, T', C) -> (B, N, C).

    ``source`` is a :class:`MergeState` or its (B, N) source map.
    """
    return gather_rows(x, source.source if isinstance(source, MergeState) else source)


def causal_unmerge(x: torch.Tensor, state: MergeState) -> torch.Tensor:
    """Causal restoration: position p gets the latest token of its kind (real or padding, per ``state.mask``)
    whose position is <= p. (B, T', C) -> (B, N, C).

    Requires a causal state (positions = latest member, ascending, empty slots at +inf). A position with no
    token at or before it (only possible in the non-strict mode) falls back to the token that holds it.
    """
    if not state.causal:
        raise ValueError("causal_unmerge needs a causal MergeState (causal=True)")
    n_b, n = state.source.shape
    orig = torch.arange(n, device=x.device, dtype=state.pos.dtype).expand(n_b, n).contiguous()
    idx = torch.searchsorted(state.pos.contiguous(), orig, right=True) - 1  # latest token at or before p
    # ... of the position's own kind (real / padding), so padding never fills a real position and vice versa
    ar = torch.arange(state.length, device=x.device).expand(n_b, -1)
    last_real = torch.where(state.mask, ar, -1).cummax(dim=1).values
    last_pad = torch.where(state.mask, -1, ar).cummax(dim=1).values
    real = state.mask.gather(1, state.source)  # (B, N) is position p a real token
    safe = idx.clamp_min(0)
    idx = torch.where(idx >= 0, torch.where(real, last_real.gather(1, safe), last_pad.gather(1, safe)), -1)
    return gather_rows(x, torch.where(idx >= 0, idx, state.source))

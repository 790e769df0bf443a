"""Choosing and performing merges: local bipartite soft matching (ToMe's, restricted to a band of ``k``
neighbours, with seasonal twins, groups of rows that decide together and the strict causal rule), the merge step
that scatters tokens into their merged slots, and the scheduled merge of one layer.

Part of the merge engine (:mod:`mergeplug.merge`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .seasonal import detect_period, seasonal_candidates
from .state import _NEVER, _PAD_PAIR, MergeSchedule, MergeState, _normalize, group_leaders, scope

__all__ = ["band_scores", "group_mean_scores", "match", "merge_tokens", "merge_step", "merge_layer"]


def _offsets(k: int | None, causal: bool, t_b: int) -> tuple[int, int] | None:
    """Band of B indices j = i + d (d in [lo, hi]) that A token i (sequence index 2i) may merge with.

    B token j sits at sequence index 2j+1; ``|2j+1-2i| <= k`` gives d in [-(k+1)//2, (k-1)//2]; the causal
    variant keeps only later B tokens (d >= 0). Returns None when the band covers all of B (global).
    """
    if k is None:
        return None if not causal else (0, t_b)
    return (0 if causal else -((k + 1) // 2)), (k - 1) // 2


def band_scores(metric: torch.Tensor, k: int | None, *, causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of every A token to the B tokens in its band.

    Args:
        metric: (B, T, C) features to compare (e.g. attention keys averaged over heads).
        k: largest distance (in the sequence entering the step) between an A token and a B token it may
            merge with; None for global.
        causal: only later B tokens are candidates.

    Returns:
        scores: (B, Ta, W) similarities (float32 at least, see :func:`_normalize`), -inf where the candidate does
            not exist (Ta = ceil(T/2)).
        cand: (Ta, W) long, index j into set B of each candidate (clamped into range where invalid).

    For a band of width W the cost is O(T·W·C): the band is gathered with ``unfold``, never masked out of a
    full T×T matrix. The global case (band covering B) uses one (Ta×C)·(C×Tb) product.
    """
    m = _normalize(metric)
    a, b = m[:, ::2], m[:, 1::2]
    t_a, t_b = a.shape[1], b.shape[1]
    band = _offsets(k, causal, t_b)
    cand, invalid = _band_index(t_a, t_b, band, m.device)
    if band is None or (band[1] - band[0] + 1) >= t_b:
        scores = a @ b.transpose(1, 2)  # (B, Ta, Tb)
    else:
        lo, hi = band
        width = hi - lo + 1
        # b_pad[i + w] = b[i + lo + w]; windows of length `width` start at every A index i.
        pad_front, pad_back = max(-lo, 0), max(t_a + hi - t_b, 0)
        b_pad = F.pad(b, (0, 0, pad_front, pad_back))
        start = lo + pad_front
        b_win = b_pad[:, start : start + t_a + width - 1].unfold(1, width, 1)  # (B, Ta, C, W)
        scores = (a.unsqueeze(-2) @ b_win).squeeze(-2)  # (B, Ta, W)
    return scores.masked_fill_(invalid, _NEVER), cand


@functools.lru_cache(maxsize=256)
def _band_index(
    t_a: int, t_b: int, band: tuple[int, int] | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates (Ta, W) long (clamped into range) and where they do not exist (Ta, W) bool, for a band of B offsets
    (None: all of B). They depend on the shapes only, so each is built once per (Ta, Tb, band, device): a merged
    model meets a handful of lengths. Built outside inference mode, so that training after inference can use them."""
    with torch.inference_mode(False):
        ii = torch.arange(t_a, device=device)
        if band is None or (band[1] - band[0] + 1) >= t_b:
            cand = torch.arange(t_b, device=device).expand(t_a, t_b)
            if band is None:
                invalid = torch.zeros(t_a, t_b, dtype=torch.bool, device=device)
            else:
                d = cand - ii[:, None]
                invalid = (d < band[0]) | (d > band[1])
        else:
            lo, hi = band
            cand = ii[:, None] + torch.arange(lo, hi + 1, device=device)[None, :]
            invalid = (cand < 0) | (cand >= t_b)
        return cand.clamp(0, max(t_b - 1, 0)), invalid


def _pair_rules(scores: torch.Tensor, cand: torch.Tensor, state: MergeState) -> torch.Tensor:
    """Apply protection and padding rules to band scores (B, Ta, W); ``cand`` is (Ta, W) or per row (B, Ta, W)."""
    mask_a, mask_b = state.mask[:, ::2], state.mask[:, 1::2]
    prot_a, prot_b = state.protected[:, ::2], state.protected[:, 1::2]
    n_b = scores.shape[0]
    flat = cand.reshape(cand.shape[0] if cand.dim() == 3 else 1, -1).expand(n_b, -1)
    mb = mask_b.gather(1, flat).view_as(scores)
    pb = prot_b.gather(1, flat).view_as(scores)
    ma = mask_a[:, :, None]
    never = pb | prot_a[:, :, None] | (ma != mb)
    exists = scores > _NEVER
    scores = torch.where(~ma & ~mb & exists, _PAD_PAIR, scores)
    return scores.masked_fill(never, _NEVER)


def group_mean_scores(scores: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average band scores over the rows of each group, so that one merge decision serves a whole group.

    Args:
        scores: (B, Ta, W) band scores of every row (after the protection / padding rules; ``-inf`` = never).
        groups: (B,) integer group label of every row (any values; equal labels = one group).

    Returns:
        mean: (B, Ta, W) every row holds the mean score of its group (rows of a group are equal, bitwise). A pair
            that may never merge in *any* row of a group (``-inf``) stays ``-inf`` for the group.
        leader: (B,) long, the first row of every row's group (:func:`group_leaders`).
    """
    if groups.ndim != 1 or groups.shape[0] != scores.shape[0]:
        raise ValueError(f"groups must have shape (B,) = ({scores.shape[0]},), got {tuple(groups.shape)}")
    leader = group_leaders(groups)
    s32 = scores.float()  # sums and counts in float32 (bf16 counts stop being exact above 256)
    total = torch.zeros_like(s32).index_add_(0, leader, s32)
    count = torch.zeros(leader.shape, dtype=torch.float32, device=scores.device).index_add_(
        0, leader, torch.ones_like(leader, dtype=torch.float32)
    )
    return (total[leader] / count[leader, None, None]).to(scores.dtype), leader


@scope("matching")
def match(
    metric: torch.Tensor,
    state: MergeState,
    *,
    r: int | None = None,
    threshold: float | None = None,
    k: int | None = 1,
    groups: torch.Tensor | None = None,
    period: float | str | None = None,
    min_similarity: float | None = None,
    min_slots: int = 0,
) -> tuple[torch.Tensor, int]:
    """Choose the merges of one step and return the destination map.

    Args:
        metric: (B, T, C) features compared by cosine similarity.
        state: the tokens' state (mask and protection are honoured: padding merges only with padding,
            protected tokens never merge).
        r: merge exactly this many A tokens in every row (capped to what the most constrained row can
            merge, so that the batch keeps one length). Bidirectional or causal-positions mode.
        threshold: strict causal mode (requires ``state.causal``): merge each A token whose similarity to
            its predecessor is >= threshold into its successor; counts vary per row.
        k: band width (see :func:`band_scores`); in strict causal mode the predecessor is searched among the
            previous ``k`` tokens (the best one counts).
        groups: optional (B,) integer group label of every row (``r`` mode only). The rows of a group get one
            merge decision: their band scores (after the protection / padding rules of every row) are averaged
            over the group (:func:`group_mean_scores`) before choosing, so all rows of a group share one
            destination map and their token ``t`` stands for the same input positions (needed when attention
            also runs across the rows of a group). A pair that may not merge in one row of a group merges in
            none. The cap on ``r`` is the most constrained group's. ``None``: every row decides alone.
        period: ``r`` mode only: also offer every A token its seasonal twins, the B tokens nearest to
            ``state.pos`` one period (in input tokens) before and after it (:func:`seasonal_candidates`).
            ``"auto"``: the period of each row found by :func:`detect_period` on this step's metric the first time
            (the sequence must still be unmerged then), kept in ``state.period`` for later steps.
        min_similarity: ``r`` mode only: a pair merges only if its similarity is at least this (padding pairs always
            may); fewer than ``r`` merges happen where fewer pairs are alike (the cap on ``r`` below).
        min_slots: ``r`` mode only: no row is left with fewer real (unmasked) slots than this, so that a short
            series batched with longer ones keeps the token floor it has alone: a row merges its padding first
            (padding pairs score highest), and ``r`` is capped at the padding pairs plus the real slots to spare of
            the row with the fewest.

    Returns:
        dst: (B, T) long, destination slot of every token.
        t_new: number of slots T' after the step (rows with fewer tokens get empty, masked slots).
    """
    n_b, t, _ = metric.shape
    device = metric.device
    if t < 2 or (r is not None and r <= 0):
        return torch.arange(t, device=device).expand(n_b, t), t
    if threshold is not None:
        if not state.causal:
            raise ValueError("threshold merging is the strict causal mode: create the MergeState with causal=True")
        if groups is not None:
            raise ValueError("groups (one merge decision per group of rows) is supported in r mode only, not threshold")
        vac_a, target = _strict_causal_choice(metric, state, threshold, k)
    else:
        assert r is not None, "match() needs r or threshold"
        scores, cand = band_scores(metric, k, causal=state.causal)
        twins = None if k is None else period  # global merging sees every twin anyway
        if twins == "auto":
            if state.period is None:
                if state.length != state.source.shape[1]:
                    raise ValueError('period="auto" must see the sequence before any merge')
                state.period = detect_period(metric, state.mask & ~state.protected, groups=groups)
            twins = state.period
        if twins is not None:  # seasonal twins beside the local band
            s_twin, c_twin = seasonal_candidates(metric, state.pos, twins, causal=state.causal)
            scores = torch.cat([scores, s_twin], dim=-1)
            cand = torch.cat([cand.expand(n_b, -1, -1), c_twin], dim=-1)
        scores = _pair_rules(scores, cand, state)
        if groups is not None:  # one decision per group: every row gets its group's mean scores (equal rows)
            scores, leader = group_mean_scores(scores, groups.to(device))
            if cand.dim() == 3:  # rows of a group share positions, so candidates: take each group's first row
                cand = cand[leader]
        best, arg = scores.max(dim=-1)  # (B, Ta)
        allowed = best > _NEVER
        if min_similarity is not None:  # only pairs alike enough (padding pairs score above any similarity)
            allowed = allowed & (best >= min_similarity)
        # one length for the batch: the most constrained row (group) sets the count (a row that merged more would
        # only leave empty slots: the batch keeps the longest row's length). The one host synchronisation of the
        # r mode: the merged length is a shape, and it depends on the data when the cap binds.
        can = allowed.sum(dim=1)
        if min_slots > 0:  # per row: padding merges, plus the real slots above the floor
            pad_pairs = (allowed & ~state.mask[:, ::2][:, : allowed.shape[1]]).sum(dim=1)
            can = torch.minimum(can, pad_pairs + (state.mask.sum(dim=1) - min_slots).clamp_min(0))
        r = min(r, int(can.min()))
        if r <= 0:
            return torch.arange(t, device=device).expand(n_b, t), t
        order = best.argsort(dim=-1, descending=True, stable=True)[:, :r]  # (B, r) A indices
        vac_a = torch.zeros_like(best, dtype=torch.bool).scatter_(1, order, True)
        if cand.dim() == 3:  # per-row candidates (B, Ta, W)
            target = 2 * cand.gather(2, arg[..., None])[..., 0] + 1
        else:
            target = 2 * cand[torch.arange(cand.shape[0], device=device)[None, :], arg] + 1  # (B, Ta) seq index
    keep = torch.ones(n_b, t, dtype=torch.bool, device=device)
    keep[:, ::2] = ~vac_a
    new_idx = keep.cumsum(dim=1).sub_(1)  # (B, T) long: slot of every kept token
    dst = new_idx.clone()
    dst[:, ::2] = torch.where(vac_a, new_idx.gather(1, target), new_idx[:, ::2])  # A tokens that leave: their target
    # r mode: every row vacates exactly r slots, so T' is known on the host; strict mode: counts vary per row,
    # and the longest row sets T' (a data-dependent shape: a host synchronisation)
    t_new = t - r if threshold is None else int(keep.sum(dim=1).max())
    return dst, t_new


def _strict_causal_choice(
    metric: torch.Tensor, state: MergeState, threshold: float, k: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Strict causal rule: A token at index 2i leaves iff max similarity to its previous k tokens >= threshold.

    The successor 2i+1 (a B token, never vacated in this step) receives it. Returns (vac_a (B, Ta) bool,
    target (B, Ta) long sequence index).
    """
    n_b, t, _ = metric.shape
    m = _normalize(metric)
    a = m[:, ::2]
    idx_a = torch.arange(0, t, 2, device=m.device)
    same_mask_a = state.mask[:, ::2, None]
    if k is None or k >= 64:  # wide band: one (Ta x C) . (C x T) product, masked to the previous k tokens
        sim = a @ m.transpose(1, 2)  # (B, Ta, T)
        back = idx_a[:, None] - torch.arange(t, device=m.device)[None, :]
        ok = (back >= 1) & (back <= (t if k is None else k))
        ok = ok[None] & (state.mask[:, None, :] == same_mask_a)
    else:  # narrow band: gather the k previous tokens of every A token, O(T·k·C)
        m_pad = F.pad(m, (0, 0, k, 0))  # m_pad[p + k] = m[p]
        win = m_pad.unfold(1, k, 1)[:, idx_a]  # (B, Ta, C, k): tokens 2i-k .. 2i-1
        sim = (a.unsqueeze(-1) * win).sum(-2)  # (B, Ta, k)
        mask_win = F.pad(state.mask, (k, 0)).unfold(1, k, 1)[:, idx_a]  # (B, Ta, k)
        exists = (idx_a[:, None] - k + torch.arange(k, device=m.device)[None, :]) >= 0
        ok = exists[None] & (mask_win == same_mask_a)
    best = torch.where(ok, sim, _NEVER).amax(dim=-1)  # (B, Ta)
    has_succ = (idx_a + 1 < t)[None, :]
    succ = (idx_a + 1).clamp(max=t - 1)
    allowed = has_succ & ~state.protected[:, ::2] & ~state.protected[:, succ]
    allowed = allowed & (state.mask[:, ::2] == state.mask[:, succ])
    vac_a = allowed & (best >= threshold)
    return vac_a, succ.expand(n_b, -1)


def _flat_destinations(dst: torch.Tensor, t_new: int) -> torch.Tensor:
    """(B·T,) destination of every token in the flattened (B·T', ...) output: ``dst`` (B, T) offset by row."""
    rows = torch.arange(dst.shape[0], device=dst.device)[:, None] * t_new
    return (dst + rows).view(-1)


def merge_tokens(
    x: torch.Tensor, dst: torch.Tensor, size: torch.Tensor, t_new: int, *, flat: torch.Tensor | None = None
) -> torch.Tensor:
    """Size-weighted average of the tokens that share a destination.

    Args:
        x: (B, T, C) features; dst: (B, T) long; size: (B, T) sizes *before* the step; t_new: T'.
        flat: (B·T,) ``dst`` offset by row (:func:`_flat_destinations`), when the caller has it already.

    Returns:
        (B, T', C) merged features (0 in empty slots).

    The sums are ``index_add_`` over the flattened (B·T', C) output (rows of C contiguous values, about 5x faster
    on CPU than a ``scatter_add_`` with an index expanded over C, and the same numbers).
    """
    n_b, t, c = x.shape
    flat = _flat_destinations(dst, t_new) if flat is None else flat
    w = size.to(x.dtype).reshape(-1)
    total = x.new_zeros(n_b * t_new).index_add_(0, flat, w)
    out = x.new_zeros(n_b * t_new, c).index_add_(0, flat, x.reshape(-1, c) * w[:, None])
    return out.div_(total.clamp_min_(1e-12)[:, None]).view(n_b, t_new, c)


def merge_step(x: torch.Tensor, state: MergeState, dst: torch.Tensor, t_new: int) -> torch.Tensor:
    """Merge features ``x`` (B, T, C) along ``dst`` and update ``state`` in place; returns (B, T', C)."""
    flat = _flat_destinations(dst, t_new)
    out = merge_tokens(x, dst, state.size, t_new, flat=flat)
    n_b = x.shape[0]
    size_new = state.size.new_zeros(n_b * t_new).index_add_(0, flat, state.size.reshape(-1)).view(n_b, t_new)
    filled = size_new > 0
    if state.causal:  # latest member; empty slots at +inf so positions stay ascending
        pos_new = state.pos.new_full((n_b, t_new), float("-inf")).scatter_reduce_(
            1, dst, state.pos, reduce="amax", include_self=True
        )
        pos_new = pos_new.masked_fill(~filled, float("inf"))
    else:  # size-weighted mean of the members
        pos_new = state.pos.new_zeros(n_b * t_new).index_add_(0, flat, (state.pos * state.size).reshape(-1))
        pos_new = pos_new.view(n_b, t_new) / size_new.clamp_min(1e-12)
    mask_new = torch.zeros(n_b, t_new, dtype=torch.bool, device=x.device).scatter_reduce_(
        1, dst, state.mask, reduce="amax", include_self=True
    )
    prot_new = torch.zeros(n_b, t_new, dtype=torch.bool, device=x.device).scatter_reduce_(
        1, dst, state.protected, reduce="amax", include_self=True
    )
    state.size = size_new
    state.pos = pos_new
    state.mask = mask_new & filled
    state.protected = prot_new
    state.source = dst.gather(1, state.source)
    return out


def merge_layer(
    x: torch.Tensor,
    state: MergeState,
    config: MergeSchedule,
    layer: int,
    *,
    metric: torch.Tensor | Callable[[], torch.Tensor] | None = None,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """The scheduled merge of one layer: ``config.merges_at(layer, T)`` tokens (or the strict ``threshold`` rule),
    chosen on ``metric`` (default: ``x`` itself; a callable is only called when something may merge), with the
    config's seasonal period and similarity floor.

    Args:
        x: (B, T, C) features to merge; ``state`` is updated in place.
        groups: (B,) rows that share one decision (see :func:`match`).

    Returns:
        (B, T', C), or ``x`` itself when nothing merges.
    """
    strict = config.threshold is not None
    r = config.merges_at(layer, state.length)
    if r <= 0 and not strict:
        return x
    m = x if metric is None else metric() if callable(metric) else metric
    dst, t_new = match(
        m, state, r=None if strict else r, threshold=config.threshold, k=config.k, groups=groups,
        period=config.token_period, min_similarity=config.min_similarity, min_slots=config.min_tokens or 0,
    )  # fmt: skip
    return merge_step(x, state, dst, t_new) if t_new < state.length else x

"""Seasonal twins: the tokens one period before / after a token (found by position, so they stay right after
earlier merges) and each series' own period, detected from its tokens by FFT autocorrelation.

Part of the merge engine (:mod:`mergeplug.merge`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .state import _NEVER, _normalize, gather_rows, group_leaders

__all__ = ["seasonal_candidates", "detect_period"]


def seasonal_candidates(
    metric: torch.Tensor, pos: torch.Tensor, period: float | torch.Tensor, *, causal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity of every A token to its seasonal twins: the B tokens nearest to one ``period`` before and after it.

    Args:
        metric: (B, T, C) features; pos: (B, T) positions of the tokens (in input tokens, ascending along T).
        period: the seasonal period in input tokens (may be fractional), or (B,) one per row (0: no twins).
        causal: only twins one period *after* the A token (later B tokens).

    Returns:
        scores: (B, Ta, 4) cosine similarities to the two B tokens bracketing ``pos_a + period`` and the two
            bracketing ``pos_a - period`` (``-inf`` where such a token does not exist or is out of the rules).
        cand: (B, Ta, 4) long, indices into set B.

    Twins are found by position (``searchsorted`` on the running maximum of the B tokens' positions), so they stay
    right in later layers, after tokens have merged and indices no longer match time; once twins have merged
    (bidirectional positions are then no longer in order) the bracketing tokens are approximate: only the quality
    of the candidates suffers. With the alternate A/B split a twin at an even distance is an A token itself; the
    bracketing B tokens (one token to either side) are then the candidates.
    Cost: O(T log T + T·C).
    """
    m = _normalize(metric)
    a, b = m[:, ::2], m[:, 1::2]
    pos_a, pos_b = pos[:, ::2].contiguous(), pos[:, 1::2].contiguous()
    t_b = b.shape[1]
    if t_b == 0:
        empty = torch.full((*a.shape[:2], 0), _NEVER, dtype=m.dtype, device=m.device)
        return empty, torch.zeros(empty.shape, dtype=torch.long, device=m.device)
    # searchsorted needs ascending values: empty slots (+inf) stay last, and a token that merged with a twin sits
    # between its members (bidirectional), so search the running maximum of the positions
    finite_b = torch.where(torch.isfinite(pos_b), pos_b, torch.finfo(pos_b.dtype).max).cummax(dim=1).values
    if isinstance(period, torch.Tensor):
        per_row = period.to(device=pos.device, dtype=pos.dtype).reshape(-1, 1)  # (1 | B, 1)
        has_period = per_row > 0
    else:  # a number stays on the host: a blocking copy to the device would synchronise
        per_row, has_period = float(period), period > 0
    cands, valid = [], []
    for sign in (1.0, -1.0):
        j = torch.searchsorted(finite_b, pos_a + sign * per_row)  # first B token at or after the twin position
        for c in (j - 1, j):
            ok = (c >= 0) & (c < t_b) & has_period
            if causal:  # later B tokens only: B index j sits after A index i iff j >= i
                ok = ok & (c >= torch.arange(a.shape[1], device=m.device)[None, :])
            cands.append(c.clamp(0, t_b - 1))
            valid.append(ok)
    cand = torch.stack(cands, dim=-1)  # (B, Ta, 4)
    ok = torch.stack(valid, dim=-1)
    twins = gather_rows(b, cand.flatten(1)).view(*cand.shape, b.shape[-1])
    scores = (a.unsqueeze(-2) * twins).sum(-1)
    return scores.masked_fill(~ok, _NEVER), cand


def detect_period(
    metric: torch.Tensor,
    valid: torch.Tensor,
    *,
    max_lag: int = 512,
    min_similarity: float = 0.2,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """The seasonal period of every row, in tokens, from its own features: the lag at which tokens repeat best.

    Args:
        metric: (B, T, C) features of an unmerged sequence (token ``t`` at position ``t``).
        valid: (B, T) bool, tokens to use (real, unprotected).
        max_lag: longest period looked at (also at most half of the valid tokens: two cycles must be seen).
        min_similarity: a peak below this mean cosine similarity means no period (0).
        groups: (B,) labels of rows that must share one period (their curves are averaged).

    Returns:
        (B,) float, the period in tokens, 0 where none is found.

    The features are centred per row and normalised per token; the mean cosine similarity of tokens ``L`` apart is
    computed for every lag at once by FFT (O(T log T · C)). The period is the shortest lag whose similarity is
    within 10% of the highest one after the curve first dips (a local minimum or a negative value), so plain
    smoothness (neighbours alike) is not taken for a cycle, nor a multiple of the period for the period.
    """
    n_b, t, _ = metric.shape
    x = metric.float() * valid[..., None]
    count = valid.sum(dim=1, keepdim=True).clamp_min(1)
    x = (x - x.sum(dim=1, keepdim=True) / count[..., None]) * valid[..., None]
    x = _normalize(x)
    n_fft = 2 * t
    spec = torch.fft.rfft(x, n=n_fft, dim=1)
    corr = torch.fft.irfft((spec * spec.conj()).sum(-1), n=n_fft, dim=1)[:, :t]  # (B, T): sum over pairs, lag L
    m = torch.fft.rfft(valid.float(), n=n_fft, dim=1)
    pairs = torch.fft.irfft(m * m.conj(), n=n_fft, dim=1)[:, :t].round()  # valid pairs at each lag
    valid_count = count[:, 0]
    if groups is not None:  # one curve and one longest lag per group: every row of a group gets the same period
        leader = group_leaders(groups.to(metric.device))  # accumulate at each group's first row
        corr = torch.zeros_like(corr).index_add_(0, leader, corr)[leader]
        pairs = torch.zeros_like(pairs).index_add_(0, leader, pairs)[leader]
        valid_count = torch.full_like(valid_count, t).scatter_reduce(0, leader, valid_count, reduce="amin")[leader]
    sim = corr / pairs.clamp_min(1)
    lags = torch.arange(t, device=metric.device)
    longest = (valid_count // 2).clamp(max=max_lag)  # (B,)
    usable = (lags[None, :] >= 2) & (lags[None, :] <= longest[:, None]) & (pairs > 0)
    prev = F.pad(sim, (1, 0), value=float("inf"))[:, :-1]
    nxt = F.pad(sim, (0, 1), value=float("inf"))[:, 1:]
    dip = ((sim <= prev) & (sim <= nxt)) | (sim < 0)
    dip = dip & (lags[None, :] >= 1)
    after_dip = dip.long().cummax(dim=1).values.bool()
    score = torch.where(usable & after_dip, sim, float("-inf"))
    best = score.max(dim=1).values
    # multiples of a period repeat about as well as the period itself: take the shortest lag within 10% of the best
    near = score >= (best - 0.1 * best.abs())[:, None]
    lag = torch.where(near, lags[None, :], t).min(dim=1).values
    return torch.where(best >= min_similarity, lag.float(), 0.0)

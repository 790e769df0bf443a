"""Model-agnostic local token merging.

Notation used in every docstring: ``B`` batch, ``T`` tokens entering a merge step, ``T'`` tokens after it,
``N`` tokens of the original (unmerged) sequence, ``C`` channels.

A merge step is described by a *destination map* ``dst`` of shape (B, T): token ``t`` of row ``b`` goes
to slot ``dst[b, t]`` of the merged sequence. Every operation (merging features, sizes, positions, masks,
the source map used to unmerge) is a scatter along that map, so one description serves them all.

Matching follows ToMe's bipartite soft matching: the tokens are split alternately into set A (even
indices) and set B (odd indices); each A token proposes the most similar B token; the best proposals are
merged (A is averaged into B, weighted by size). *Local* merging restricts the proposals to B tokens at
most ``k`` positions away in the sequence entering the step (``k=1``: the immediate neighbours), and the
similarity is computed on that band only, in O(T·k·C); ``k=None`` is global ToMe, O(T²·C).

Causal guarantees (see :class:`MergeState` and :func:`match`):

* ``causal=False``: bidirectional. No causality; merged tokens sit at the size-weighted mean position.
* ``causal=True`` with a fixed count (``r``): A tokens merge only into *later* B tokens, a merged token sits
  at the position of its latest member and :func:`causal_unmerge` fills every position from the latest token
  at or before it. The content of every token depends only on inputs at or before its position *for a given
  merge pattern*, but the pattern is a top-r ranking over the whole sequence, so later inputs can change
  which earlier tokens merge. Good for prefill, where only the last position's output is used.
* ``causal=True`` with ``threshold``: strict. An A token leaves its slot iff its similarity to its
  *predecessor* is at least the threshold (a decision that uses inputs up to its own position only); it is
  merged into its successor (the merged token sits at the successor's position), and its output is restored
  from its predecessor, which it resembles. Every output at position p then depends only on inputs at
  positions <= p, exactly; the number of merges varies per row, and rows are padded with masked slots.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

__all__ = [
    "MergeSchedule",
    "scope",
    "current_scope",
    "MergeState",
    "band_scores",
    "group_mean_scores",
    "group_leaders",
    "match",
    "merge_tokens",
    "unmerge",
    "key_bias",
    "causal_bias",
    "causal_unmerge",
    "merge_step",
    "merge_layer",
    "head_mean",
    "recent_mask",
    "seasonal_candidates",
    "detect_period",
]


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
    min_val = torch.finfo(dtype).min
    bias = torch.where(mask, size.clamp_min(1e-6).log() if proportional else 0.0, min_val)
    return bias.to(dtype)[:, None, None, :]


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
    n_b, t_a, t_b = m.shape[0], a.shape[1], b.shape[1]
    device = m.device
    ii = torch.arange(t_a, device=device)
    band = _offsets(k, causal, t_b)
    if band is None or (band[1] - band[0] + 1) >= t_b:
        scores = a @ b.transpose(1, 2)  # (B, Ta, Tb)
        cand = torch.arange(t_b, device=device).expand(t_a, t_b)
        valid = torch.ones(t_a, t_b, dtype=torch.bool, device=device)
        if band is not None:
            d = cand - ii[:, None]
            valid = (d >= band[0]) & (d <= band[1])
    else:
        lo, hi = band
        width = hi - lo + 1
        # b_pad[i + w] = b[i + lo + w]; windows of length `width` start at every A index i.
        pad_front, pad_back = max(-lo, 0), max(t_a + hi - t_b, 0)
        b_pad = F.pad(b, (0, 0, pad_front, pad_back))
        start = lo + pad_front
        b_win = b_pad[:, start : start + t_a + width - 1].unfold(1, width, 1)  # (B, Ta, C, W)
        scores = (a.unsqueeze(-2) @ b_win).squeeze(-2)  # (B, Ta, W)
        cand = ii[:, None] + torch.arange(lo, hi + 1, device=device)[None, :]
        valid = (cand >= 0) & (cand < t_b)
    scores = scores.masked_fill(~valid.expand(n_b, -1, -1), _NEVER)
    return scores, cand.clamp(0, max(t_b - 1, 0))


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
    twins = b.gather(1, cand.flatten(1)[..., None].expand(-1, -1, b.shape[-1])).view(*cand.shape, b.shape[-1])
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


def group_leaders(groups: torch.Tensor) -> torch.Tensor:
    """(B,) long: for every row, the first row with the same label in ``groups`` (B,) (any integer labels).

    Found with a (B, B) comparison rather than ``torch.unique``, whose output size (the number of groups) would
    need a host synchronisation on a GPU; the leaders index per-group accumulators of B slots instead.
    """
    rows = torch.arange(groups.shape[0], device=groups.device)
    same = groups[:, None] == groups[None, :]
    return torch.where(same, rows[None, :], groups.shape[0]).amin(dim=1)


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

    Returns:
        dst: (B, T) long, destination slot of every token.
        t_new: number of slots T' after the step (rows with fewer tokens get empty, masked slots).
    """
    n_b, t, _ = metric.shape
    device = metric.device
    if t < 2 or (r is not None and r <= 0):
        return torch.arange(t, device=device).expand(n_b, t), t
    idx_a = torch.arange(0, t, 2, device=device)
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
        r = min(r, int(allowed.sum(dim=1).min()))
        if r <= 0:
            return torch.arange(t, device=device).expand(n_b, t), t
        order = best.argsort(dim=-1, descending=True, stable=True)[:, :r]  # (B, r) A indices
        vac_a = torch.zeros_like(best, dtype=torch.bool).scatter_(1, order, True)
        if cand.dim() == 3:  # per-row candidates (B, Ta, W)
            target = 2 * cand.gather(2, arg[..., None])[..., 0] + 1
        else:
            target = 2 * cand[torch.arange(cand.shape[0], device=device)[None, :], arg] + 1  # (B, Ta) seq index
    vacated = torch.zeros(n_b, t, dtype=torch.bool, device=device)
    vacated[:, idx_a] = vac_a
    keep = ~vacated
    new_idx = keep.long().cumsum(dim=1) - 1
    dst = torch.where(vacated[:, idx_a], new_idx.gather(1, target), new_idx[:, idx_a])
    dst = new_idx.scatter(1, idx_a.expand(n_b, -1), dst)
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


def merge_tokens(x: torch.Tensor, dst: torch.Tensor, size: torch.Tensor, t_new: int) -> torch.Tensor:
    """Size-weighted average of the tokens that share a destination.

    Args:
        x: (B, T, C) features; dst: (B, T) long; size: (B, T) sizes *before* the step; t_new: T'.

    Returns:
        (B, T', C) merged features (0 in empty slots).
    """
    n_b, _, c = x.shape
    w = size.to(x.dtype)[..., None]
    total = x.new_zeros(n_b, t_new, 1).scatter_add_(1, dst[..., None], w)
    out = x.new_zeros(n_b, t_new, c).scatter_add_(1, dst[..., None].expand(-1, -1, c), x * w)
    return out / total.clamp_min(1e-12)


def merge_step(x: torch.Tensor, state: MergeState, dst: torch.Tensor, t_new: int) -> torch.Tensor:
    """Merge features ``x`` (B, T, C) along ``dst`` and update ``state`` in place; returns (B, T', C)."""
    out = merge_tokens(x, dst, state.size, t_new)
    n_b = x.shape[0]
    size_new = state.size.new_zeros(n_b, t_new).scatter_add_(1, dst, state.size)
    filled = size_new > 0
    if state.causal:  # latest member; empty slots at +inf so positions stay ascending
        pos_new = state.pos.new_full((n_b, t_new), float("-inf")).scatter_reduce_(
            1, dst, state.pos, reduce="amax", include_self=True
        )
        pos_new = pos_new.masked_fill(~filled, float("inf"))
    else:  # size-weighted mean of the members
        pos_new = state.pos.new_zeros(n_b, t_new).scatter_add_(1, dst, state.pos * state.size)
        pos_new = pos_new / size_new.clamp_min(1e-12)
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


def head_mean(keys: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention keys (B, T, H * d) averaged over the H heads -> (B, T, d): ToMe's similarity metric."""
    return keys.view(*keys.shape[:2], heads, -1).mean(dim=2)


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
        period=config.token_period, min_similarity=config.min_similarity,
    )  # fmt: skip
    return merge_step(x, state, dst, t_new) if t_new < state.length else x


def unmerge(x: torch.Tensor, source: MergeState | torch.Tensor) -> torch.Tensor:
    """Copy every merged token back to all original positions it stands for: (B, T', C) -> (B, N, C).

    ``source`` is a :class:`MergeState` or its (B, N) source map.
    """
    index = source.source if isinstance(source, MergeState) else source
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


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
    idx = torch.where(idx >= 0, idx, state.source)
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))

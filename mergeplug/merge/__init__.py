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

from .matching import band_scores, group_mean_scores, match, merge_layer, merge_step, merge_tokens
from .seasonal import detect_period, seasonal_candidates
from .state import (
    MergeSchedule,
    MergeState,
    causal_bias,
    causal_unmerge,
    current_scope,
    gather_rows,
    group_leaders,
    head_mean,
    key_bias,
    recent_mask,
    scope,
    unmerge,
)

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
    "gather_rows",
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

"""Merge settings: validation and per-layer schedules (model-agnostic)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MergeConfig", "ratio_for_reduction"]


def ratio_for_reduction(reduction: float, num_layers: int) -> float:
    """Per-layer ``ratio`` that removes the fraction ``reduction`` of tokens after ``num_layers`` merge steps.

    Each step keeps ``1 - ratio`` of the tokens, so ``(1 - ratio) ** num_layers = 1 - reduction``. Per step at
    most half of the tokens can merge (each merge pairs an A token with a B token), so a reduction that needs
    ``ratio > 0.5`` raises.
    """
    if not 0.0 <= reduction < 1.0:
        raise ValueError(f"reduction must be in [0, 1), got {reduction}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    ratio = 1.0 - (1.0 - reduction) ** (1.0 / num_layers)
    if ratio > 0.5:
        raise ValueError(
            f"removing {reduction:.0%} of the tokens in {num_layers} layers needs ratio {ratio:.3f} > 0.5 per layer; "
            "at most half of the tokens can merge in one layer"
        )
    return ratio


@dataclass
class MergeConfig:
    """Token-merging settings shared by every patched model family.

    Args:
        k: locality: an A token may merge only with B tokens at most ``k`` positions away in the sequence
            entering the merge step (``k=1``: immediate neighbours; with the alternate A/B split an even ``k``
            adds nothing over ``k-1``). ``None`` = global (ToMe). Must be >= 1.
        r: tokens merged per layer, an int for every layer or a list with one entry per layer (missing
            entries mean 0). Capped per layer at what can merge (about half the tokens, fewer with padding,
            protected tokens or a narrow band); the cap is applied so every row of a batch keeps one length.
        ratio: alternative to ``r``: fraction of the *current* tokens merged in each layer, in [0, 1);
            values above 0.5 hit the cap above.
        threshold: strict causal mode only (``causal=True``): merge an A token into its successor when its
            cosine similarity to its predecessor is >= threshold, in [-1, 1].
        causal: merged tokens sit at their latest member and never attend to later positions.
        proportional_attention: add log(size) of each key to the attention logits (ToMe).
    """

    k: int | None = 1
    r: int | list[int] | None = None
    ratio: float | None = None
    threshold: float | None = None
    causal: bool = False
    proportional_attention: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.k is not None:
            if isinstance(self.k, bool) or not isinstance(self.k, int):
                raise ValueError(f"k must be an int >= 1 or None (global merging), got {self.k!r}")
            if self.k < 1:
                raise ValueError(f"k must be >= 1 (1 = merge only with immediate neighbours) or None, got {self.k}")
        chosen = [n for n in ("r", "ratio", "threshold") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give only one of r, ratio, threshold; got {', '.join(chosen)}")
        if not chosen:
            self.r = 0
        if self.r is not None:
            values = self.r if isinstance(self.r, (list, tuple)) else [self.r]
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(f"r must be an int >= 0 or a list of them (one per layer), got {self.r!r}")
            if isinstance(self.r, tuple):
                self.r = list(self.r)
        if self.ratio is not None and not (0.0 <= float(self.ratio) < 1.0):
            raise ValueError(f"ratio must be in [0, 1) (fraction of tokens merged per layer), got {self.ratio}")
        if self.threshold is not None:
            if not self.causal:
                raise ValueError("threshold selects the strict causal mode: pass causal=True with it")
            if not -1.0 <= float(self.threshold) <= 1.0:
                raise ValueError(f"threshold is a cosine similarity and must be in [-1, 1], got {self.threshold}")

    def merges_at(self, layer: int, length: int) -> int:
        """Number of tokens to merge in ``layer`` when ``length`` tokens enter it (before capping)."""
        if self.ratio is not None:
            return int(math.floor(self.ratio * length + 0.5))
        if isinstance(self.r, list):
            return self.r[layer] if layer < len(self.r) else 0
        return int(self.r or 0)

    def is_noop(self, num_layers: int) -> bool:
        """True when no layer would merge anything: patched models then run the original code path."""
        if self.threshold is not None:
            return False
        if self.ratio is not None:
            return self.ratio == 0
        values: Sequence[int] = self.r if isinstance(self.r, list) else [int(self.r or 0)]
        return all(v == 0 for v in values[:num_layers])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings."""
        return asdict(self)

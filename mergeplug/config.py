"""Merge settings: validation and per-layer schedules (model-agnostic)."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, get_args

__all__ = ["MergeConfig", "ratio_for_reduction", "schedule_for_reduction"]


def _is_number(v: Any) -> bool:
    """A real number (Python or NumPy int / float; not a bool, not a string)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_reduction(reduction: Any, num_layers: Any) -> None:
    if not _is_number(reduction) or not 0.0 <= reduction < 1.0:
        raise ValueError(f"reduction must be a number in [0, 1) (the fraction of tokens removed), got {reduction!r}")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")


def ratio_for_reduction(
    reduction: float, num_layers: int, schedule: Literal["constant", "front"] = "constant"
) -> float | list[float]:
    """Per-layer ``ratio`` that removes the fraction ``reduction`` of the tokens after ``num_layers`` merge steps.

    ``"constant"``: the same fraction every layer, ``(1 - ratio) ** num_layers = 1 - reduction`` (a float).
    ``"front"``: merge as early as possible, half of the tokens per layer until the target is reached (a list,
    one ratio per layer): fewer tokens in more layers, so faster, at a possibly larger accuracy cost.
    At most half of the tokens can merge in one layer (each merge pairs an A token with a B token), so a
    constant schedule that needs ``ratio > 0.5`` raises, and so does a reduction above ``1 - 0.5**num_layers``.
    """
    _check_reduction(reduction, num_layers)
    if schedule == "front":
        ratios, keep = [], 1.0
        for _ in range(num_layers):
            step = min(0.5, max(0.0, 1.0 - (1.0 - reduction) / keep))
            ratios.append(step)
            keep *= 1.0 - step
        if keep > 1.0 - reduction + 1e-9:
            raise ValueError(
                f"cannot remove {reduction:.0%} of the tokens in {num_layers} layers (at most half per layer)"
            )
        return ratios
    if schedule != "constant":
        raise ValueError(f"schedule must be 'constant' or 'front', got {schedule!r}")
    ratio = 1.0 - (1.0 - reduction) ** (1.0 / num_layers)
    if ratio > 0.5:
        raise ValueError(
            f"removing {reduction:.0%} of the tokens in {num_layers} layers needs ratio {ratio:.3f} > 0.5 per layer; "
            "at most half of the tokens can merge in one layer"
        )
    return ratio


Schedule = Literal["constant", "front", "front-input", "input"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


def schedule_for_reduction(reduction: float, num_layers: int, schedule: Schedule = "constant") -> dict[str, Any]:
    """``apply`` keyword arguments that remove the fraction ``reduction`` of the tokens by the last layer.

    ``"constant"`` and ``"front"`` are :func:`ratio_for_reduction`'s schedules (``{"ratio": ...}``);
    ``"front-input"`` also merges up to half of the input tokens before the first block
    (``{"input_ratio": ..., "ratio": [...]}``), so the first block's attention runs on fewer tokens too;
    ``"input"`` removes the whole fraction before the first block (``{"input_ratio": reduction, "ratio": 0}``,
    several merge steps on the input embeddings when it is above one half): every block runs on the reduced
    sequence, the cheapest schedule and the one that changes the model most.

    Example: ``mergeplug.apply(pipe, k=1, **schedule_for_reduction(0.9, 6, "front-input"))``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    _check_reduction(reduction, num_layers)
    if schedule in ("constant", "front"):
        return {"ratio": ratio_for_reduction(reduction, num_layers, schedule)}
    if schedule == "input":
        return {"input_ratio": reduction, "ratio": 0.0}
    input_ratio = min(0.5, reduction)
    rest = 1.0 - (1.0 - reduction) / (1.0 - input_ratio)
    return {"input_ratio": input_ratio, "ratio": ratio_for_reduction(max(rest, 0.0), num_layers, "front")}


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
        ratio: alternative to ``r``: fraction of the *current* tokens merged in each layer, in [0, 1), or a
            list with one fraction per layer; values above 0.5 hit the cap above.
        threshold: strict causal mode only (``causal=True``): merge an A token into its successor when its
            cosine similarity to its predecessor is >= threshold, in [-1, 1].
        causal: merged tokens sit at their latest member and never attend to later positions.
        proportional_attention: add log(size) of each key to the attention logits (ToMe).
        input_ratio: fraction of the *input* tokens merged before the first block, with the input embeddings as
            the similarity metric, in [0, 1); 0 = off. One merge step removes at most about half; above 0.5 further
            steps run on the merged input tokens. This also shrinks the first block's attention, which the
            per-layer schedule (applied after each block's attention) cannot.
        safe: forecast-safe merging (default ``True``). For forecasting families (Chronos-T5, Chronos-Bolt,
            Chronos-2, PatchTST, TimeSeriesTransformer / Informer) ``protect_recent`` and ``min_tokens`` left at
            ``None`` take the family's defaults (see ``mergeplug.patches.families()``); ``safe=False`` is the plain
            merging of the local-merging paper (both 0 unless given). Other families have no such defaults.
        protect_recent: number of tokens just before the forecast origin (the last context tokens, before [REG] /
            EOS / read-out tokens) that never merge; ``None`` = the family default (see ``safe``).
        min_tokens: floor on the sequence: no merge step (input merging included) leaves fewer than this many token
            slots; short series are left (almost) untouched. ``None`` = the family default (see ``safe``).
        period: seasonal period in *time steps* of the input series (e.g. 24 for hourly data with a daily cycle).
            An A token may then also merge with the B tokens nearest to one period before and after it (its
            seasonal twins, found by position), besides its ``k`` neighbours: still O(T·k·C). Converted to tokens
            with the family's time steps per token (``steps_per_token``, set by ``mergeplug.apply``). ``"auto"``:
            each series' period is found from its own tokens (:func:`mergeplug.merge.detect_period`; the
            forecast-safe default of forecasting families); ``0``: off; ``None``: the family default (see ``safe``).
        min_similarity: a pair merges only if its cosine similarity is at least this (in [-1, 1]); where fewer pairs
            are alike, fewer tokens merge than ``r`` / ``ratio`` ask. A batch keeps one length, so the series (for
            PatchTST: the channel) with the fewest alike pairs sets the count for the whole batch. ``None``: the
            family default (see ``safe``); ``-1``: off.
        steps_per_token: input time steps per token (1 for Chronos-T5 and TimeSeriesTransformer, the patch stride
            for patch models); set by ``mergeplug.apply`` from the model, not by users.
    """

    k: int | None = 1
    r: int | list[int] | None = None
    ratio: float | list[float] | None = None
    threshold: float | None = None
    causal: bool = False
    proportional_attention: bool = True
    input_ratio: float = 0.0
    safe: bool = True
    protect_recent: int | None = None
    min_tokens: int | None = None
    period: float | str | None = None
    min_similarity: float | None = None
    steps_per_token: float = 1.0
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
        if self.ratio is not None:
            values = self.ratio if isinstance(self.ratio, (list, tuple)) else [self.ratio]
            for v in values:
                if not _is_number(v) or not 0.0 <= v < 1.0:
                    raise ValueError(
                        f"ratio must be in [0, 1) (fraction of tokens merged per layer) or a list of such values, "
                        f"got {self.ratio!r}"
                    )
            # plain floats (NumPy scalars do not go into a saved JSON config)
            self.ratio = [float(v) for v in values] if isinstance(self.ratio, (list, tuple)) else float(self.ratio)
        if not _is_number(self.input_ratio) or not 0.0 <= self.input_ratio < 1.0:
            raise ValueError(
                f"input_ratio must be a number in [0, 1) (fraction of input tokens merged), got {self.input_ratio!r}"
            )
        self.input_ratio = float(self.input_ratio)
        for name in ("safe", "causal", "proportional_attention"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("protect_recent", "min_tokens"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{name} must be an int >= 0 (a number of tokens) or None (family default), got {v!r}")
        if self.period is not None and self.period != "auto":
            p = self.period
            if not _is_number(p) or not math.isfinite(p) or not (p == 0 or p >= 1):
                raise ValueError(
                    f"period must be a number of time steps >= 1 (e.g. 24 for hourly data), 'auto' (found per series "
                    f"from its tokens), 0 (off) or None (the family default), got {self.period!r}"
                )
            if self.threshold is not None:
                raise ValueError(
                    "period (seasonal candidates) applies to the r / ratio modes, not to threshold merging"
                )
        if self.min_similarity is not None:
            v = self.min_similarity
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -1.0 <= v <= 1.0:
                raise ValueError(f"min_similarity is a cosine similarity in [-1, 1] (-1: off) or None, got {v!r}")
            if self.threshold is not None:
                raise ValueError("min_similarity applies to the r / ratio modes; threshold merging has its own floor")
        if self.min_tokens and self.threshold is not None:
            raise ValueError("min_tokens applies to the r / ratio modes; threshold merging decides per token (drop it)")
        if not _is_number(self.steps_per_token) or not self.steps_per_token > 0:
            raise ValueError(f"steps_per_token must be > 0, got {self.steps_per_token!r}")
        if self.threshold is not None:
            if not self.causal:
                raise ValueError("threshold selects the strict causal mode: pass causal=True with it")
            if not _is_number(self.threshold) or not -1.0 <= self.threshold <= 1.0:
                raise ValueError(f"threshold is a cosine similarity and must be in [-1, 1], got {self.threshold}")

    def merges_at(self, layer: int, length: int) -> int:
        """Number of tokens to merge in ``layer`` when ``length`` tokens enter it (before the engine's caps), at
        most what keeps ``min_tokens`` slots."""
        if self.ratio is not None:
            r = int(math.floor(_per_layer(self.ratio, layer) * length + 0.5))
        else:
            r = int(_per_layer(self.r, layer))
        return self._floored(r, length)

    def input_merges(self, length: int) -> int:
        """Number of input tokens to merge before the first block (before capping), at most what keeps
        ``min_tokens`` slots."""
        return self._floored(int(math.floor(self.input_ratio * length + 0.5)), length)

    def _floored(self, r: int, length: int) -> int:
        return max(0, min(r, length - (self.min_tokens or 0)))

    @property
    def token_period(self) -> float | str | None:
        """The seasonal period in tokens (``period / steps_per_token``), ``"auto"`` or None."""
        if self.period is None or self.period == "auto":
            return self.period
        if not self.period:
            return None
        return float(self.period) / float(self.steps_per_token)

    def resolved(self, defaults: dict[str, Any], steps_per_token: float = 1.0) -> MergeConfig:
        """A copy with ``protect_recent`` / ``min_tokens`` filled in (``defaults`` when ``safe``, else 0), ``period``
        and ``min_similarity`` too where they are None and the defaults give them (``safe`` only), and
        ``steps_per_token`` set: the settings a patched model runs with."""
        out = replace(self, extra=dict(self.extra), steps_per_token=float(steps_per_token))
        for name in ("protect_recent", "min_tokens"):
            if getattr(out, name) is None:
                setattr(out, name, int(defaults.get(name, 0)) if self.safe else 0)
        if self.safe and self.threshold is None:
            if out.period is None:
                out.period = defaults.get("period")
            if out.min_similarity is None:
                out.min_similarity = defaults.get("min_similarity")
        return out

    def is_noop(self, num_layers: int, length: int | None = None) -> bool:
        """True when no layer would merge anything: patched models then run the original code path.

        ``length``: tokens entering the model; a sequence of at most ``min_tokens`` tokens never merges (the floor
        holds in every step), so short series run the original code, bitwise."""
        if self.threshold is not None:
            return False
        if length is not None and self.min_tokens and length <= self.min_tokens:
            return True
        if self.input_ratio > 0:
            return False
        return all(_per_layer(self.ratio if self.ratio is not None else self.r, i) == 0 for i in range(num_layers))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings."""
        return asdict(self)


def _per_layer(value: float | list | None, layer: int) -> float:
    """Entry ``layer`` of a per-layer list (0 past its end), or the scalar itself."""
    if isinstance(value, list):
        return value[layer] if layer < len(value) else 0
    return value or 0

"""Per-layer schedules: the ``ratio`` / ``input_ratio`` that remove a given fraction of the tokens (model-agnostic)."""

from __future__ import annotations

import numbers
from typing import Any, Literal, get_args

__all__ = ["Schedule", "SCHEDULES", "ratio_for_reduction", "schedule_for_reduction"]


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

"""Merge settings as the harness takes them: ``--merge`` strings (every :class:`~mergeplug.config.MergeConfig`
setting, plus the harness' ``reduction`` / ``schedule`` / ``sampling`` and ``period=season``) and putting a model in
one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import MergeConfig, schedule_for_reduction

__all__ = ["HARNESS_KEYS", "MERGE_KEYS", "SAMPLING", "MergeSetting", "parse_merge", "apply_setting"]

#: keys of a ``--merge`` string: every setting with a string form (``MergeConfig.string_keys``) and the harness' own
HARNESS_KEYS = ("reduction", "schedule", "sampling")
MERGE_KEYS = (*MergeConfig.string_keys(), *HARNESS_KEYS)
#: ``sampling=`` values: stock ``generate``, ``fast_sampling(exact=True)``, ``fast_sampling(exact=False)``
SAMPLING = ("stock", "fast", "fast-topk")


@dataclass(frozen=True)
class MergeSetting:
    """One setting of a run: its label, the keyword arguments for ``mergeplug.apply`` (empty: no merging) and
    the Chronos-T5 sampling path (``None``: stock ``generate``; ``"fast"`` / ``"fast-topk"``: ``fast_sampling`` with
    ``exact=True`` / ``False``)."""

    label: str
    kwargs: dict[str, Any]
    sampling: str | None = None

    @property
    def is_reference(self) -> bool:
        """The unmerged model as shipped (no merging, stock sampling)."""
        return not self.kwargs and self.sampling is None


def parse_merge(text: str, num_layers: int | None = None) -> MergeSetting:
    """Parse ``"k=1,ratio=0.2"`` style settings.

    Keys: every setting :meth:`MergeConfig.from_string` reads (``MergeConfig.string_keys()``: ``k`` an int or
    ``global``, ``r`` / ``ratio`` one value or per-layer values joined by ``:``, ``true`` / ``false`` flags, ...;
    ``period`` also ``season``: the dataset's seasonal period), and the harness' own: ``reduction`` + optional
    ``schedule`` (constant / front / front-input / input), which need ``num_layers``, and ``sampling`` (Chronos-T5
    only: ``stock``, ``fast`` = ``fast_sampling(exact=True)``, same samples as stock, or ``fast-topk`` =
    ``fast_sampling(exact=False)``); ``"sampling=fast"`` alone is the fast path without merging.
    """
    kwargs: dict[str, Any] = {}
    reduction, schedule, sampling, stock = None, "constant", None, False
    for key, value in MergeConfig.string_pairs(text):
        try:
            if key == "period" and value == "season":  # the dataset's seasonal period, known when it runs
                kwargs[key] = value
            elif key == "reduction":
                reduction = float(value)
            elif key == "schedule":
                schedule = value
            elif key == "sampling":
                if value not in SAMPLING:
                    raise ValueError(f"use one of {', '.join(SAMPLING)}")
                stock = value == "stock"
                sampling = None if stock else value
            else:
                kwargs[key] = MergeConfig.parse_value(key, value)
        except KeyError:
            raise ValueError(f"unknown merge key {key!r} in {text!r}; known keys: {', '.join(MERGE_KEYS)}") from None
        except ValueError as exc:
            raise ValueError(f"merge setting {text!r}: bad value for {key!r}: {exc}") from None
    if reduction is not None:
        if num_layers is None:
            raise ValueError("reduction=... needs the model's number of encoder layers")
        kwargs.update(schedule_for_reduction(reduction, num_layers, schedule))  # type: ignore[arg-type]
    if stock:
        raise ValueError(f"merge setting {text!r}: sampling=stock is the default, drop it (one label per setting)")
    if kwargs:
        config = MergeConfig(**{**kwargs, **({"period": 1.0} if kwargs.get("period") == "season" else {})})  # validate
        for name in ("r", "ratio"):
            value = kwargs.get(name)
            if isinstance(value, list) and num_layers is not None and len(value) > num_layers:
                raise ValueError(
                    f"merge setting {text!r}: {name} has {len(value)} per-layer values but the model has {num_layers} "
                    "layers; give at most one value per layer"
                )
        per_layer = [v for v in (kwargs.get("r"), kwargs.get("ratio")) if isinstance(v, list)]
        if config.is_noop(num_layers or max([len(v) for v in per_layer] + [1])):
            raise ValueError(
                f"merge setting {text!r} merges nothing: give a count (r=..., ratio=... or reduction=...) above 0"
            )
    elif sampling is None:
        raise ValueError(f"merge setting {text!r} changes nothing: give a merge (k=..., ratio=...) or sampling=fast")
    return MergeSetting(label=text.replace(" ", ""), kwargs=kwargs, sampling=sampling)


def apply_setting(target: Any, s: MergeSetting, season: int | None = None) -> None:
    """Put ``target`` (a model or pipeline) in setting ``s``: as shipped, then merged, then the sampling path.

    ``season``: the dataset's seasonal period, used for ``period=season``."""
    import mergeplug

    mergeplug.remove(target)  # also switches fast sampling off
    if s.kwargs:
        kwargs = dict(s.kwargs)
        if kwargs.get("period") == "season":
            if season is None:
                raise ValueError(f"{s.label}: period=season needs the dataset's seasonal period")
            kwargs["period"] = None if season <= 1 else season  # no seasonality: no twins
        mergeplug.apply(target, **kwargs)
    if s.sampling:
        mergeplug.fast_sampling(target, exact=s.sampling == "fast")

"""Spectral pre-check: from the data alone, how much token merging a dataset can take.

The statistics (per context window, then the median over windows and series):

1. The window is the last ``context`` points the model sees (before each test window for a registered
   dataset; the end of each series for raw arrays). Missing values are filled by linear interpolation.
2. A least-squares line is removed and the window is scaled to unit variance (level, trend and scale do
   not change what merging does), then tapered with a Hann window; the power spectrum is ``|rfft|^2`` without
   the zero-frequency bin; frequencies are in cycles per time step (0 < f <= 0.5).
3. ``entropy``: spectral entropy normalised to [0, 1] (0: one sinusoid, 1: white noise); ``flatness``:
   geometric / arithmetic mean of the power; ``centroid``: power-weighted mean frequency; ``rolloff``: the
   frequency below which 85% of the power lies; ``lag1``: lag-1 autocorrelation of the detrended window.
4. ``high_share``: the share of power above the frequency that merged tokens still resolve. A token covers
   ``stride`` time steps (1 for Chronos-T5, the patch stride for patch models: 8 for the reference PatchTST,
   16 for Chronos-Bolt); after removing the fraction ``reduction`` of the tokens, one token stands for
   ``stride / (1 - reduction)`` steps, which resolves frequencies up to ``f_c = (1 - reduction) / (2 stride)``
   (its Nyquist frequency). Merging averages away what lies above ``f_c``.
5. ``predictable_high``: ``high_share`` times the lag-1 autocorrelation (clipped to [0, 1]), per window. The
   measured quantity is the *relative* WQL change: power above ``f_c`` costs accuracy in proportion to how
   much of it a model could have forecast. In a noisy series (lag-1 autocorrelation near 0) the noise floor
   dominates the error with or without merging, so the same high-frequency share costs less.

:func:`precheck` turns a statistic into an expected accuracy change (relative WQL change, merged vs unmerged)
for each calibrated merge setting with a linear map fitted by ``mergeplug-eval precheck-validate`` on measured
changes, and names the most aggressive setting expected to stay within a tolerance. Calibrations are per model
family (:data:`SHIPPED`: measured on the shipped PatchTST, Chronos-Bolt and Chronos-2 references under forecast-safe
merging, the defaults users get), with their validation figures; a calibration holds for the model it was
measured on. Given ``model=``, the pre-check takes the family's calibration and the model's context and stride,
and says so when no calibration exists for that family instead of borrowing another one's. Predictions are
monotone in the reduction (for one ``k``, removing more tokens is never predicted to cost less), and series too
short to merge under the forecast-safe token floor get "nothing will merge" instead of a prediction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .precheck_stats import PER_REDUCTION, STATISTICS, _contexts, cutoff, spectral_stats, window_stats

__all__ = [
    "STATISTICS",
    "PER_REDUCTION",
    "stat_value",
    "window_stats",
    "spectral_stats",
    "cutoff",
    "precheck",
    "recommend",
    "PrecheckResult",
    "load_calibration",
    "model_geometry",
    "SHIPPED",
]

CALIBRATION = "precheck_calibration.json"
#: model family -> the shipped calibration file (in the mergeplug package), measured with forecast-safe merging
SHIPPED = {
    "patchtst": "precheck_calibration.json",
    "chronos-bolt": "precheck_calibration_chronos-bolt.json",
    "chronos-2": "precheck_calibration_chronos-2.json",
}
#: families whose models read a series of any length (so short series give few tokens); PatchTST pads to its context
_VARIABLE_LENGTH = {"chronos-bolt": 1, "chronos-2": 1, "chronos-t5": 1}  # family -> tokens besides the patches


def load_calibration(path: str | Path | None = None, family: str | None = None) -> dict[str, Any]:
    """The calibration written by ``mergeplug-eval precheck-validate`` (default: the shipped one of ``family``, or the
    PatchTST one when no family is given)."""
    if path is None and family is not None and family not in SHIPPED:
        raise KeyError(family)
    name = SHIPPED[family] if family is not None else CALIBRATION
    p = Path(path) if path is not None else Path(str(resources.files("mergeplug"))) / name
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: run `mergeplug-eval precheck-validate` to calibrate the pre-check")
    return json.loads(p.read_text())


def model_geometry(model: Any) -> dict[str, Any]:
    """What the pre-check needs from a model: ``family``, ``context`` (the longest context it reads), ``stride``
    (time steps per token), ``min_tokens`` (the forecast-safe token floor) and ``extra_tokens`` (tokens besides
    the patches, e.g. [REG]; None for models that pad every series to their context, where short series still
    give all tokens)."""
    from .config import MergeConfig
    from .patches import find_family

    family = find_family(model)
    inner = getattr(model, "inner_model", None) or getattr(model, "model", None) or model
    context = None
    for holder in (getattr(inner, "chronos_config", None), getattr(inner, "config", None), inner):
        value = getattr(holder, "context_length", None)
        if isinstance(value, int) and value > 0:
            context = value
            break
    resolved = family.resolve(MergeConfig(ratio=0.5), model)
    return {
        "family": family.name,
        "context": context,
        "stride": max(1, int(family.steps_per_token(model))),
        "min_tokens": resolved.min_tokens or 0,
        "extra_tokens": _VARIABLE_LENGTH.get(family.name),
    }


def _longest_tokens(data: Any, context: int, stride: int, extra: int) -> int:
    """Tokens of the longest context in ``data`` (observed span, at most ``context`` steps)."""
    rows = _contexts(data, context)
    return max(math.ceil(int(np.isfinite(r).sum()) / stride) for r in rows) + extra


def stat_value(stats: Mapping[str, float], statistic: str, reduction: float) -> float:
    """The value of ``statistic`` in :func:`spectral_stats` output (at ``reduction`` for per-reduction ones)."""
    return stats[f"{statistic}@r{reduction:g}"] if statistic in PER_REDUCTION else stats[statistic]


@dataclass
class PrecheckResult:
    """Statistics of the data, the expected WQL change per calibrated setting, and the recommendation.

    Attributes:
        stats: :func:`spectral_stats` of the data.
        predictions: setting label -> expected relative WQL change (0.05 = 5% worse than unmerged).
        recommended: the setting with the largest token reduction whose expected change is within
            ``tolerance`` (None if none is).
        tolerance: the allowed relative WQL change.
        calibration: statistic, model and validation figures of the calibration used.
        outside: settings for which the data's statistic lies outside the range the calibration measured (their
            prediction is the nearest end of the measured changes, not an extrapolation).
        note: why there are no predictions (e.g. a constant series), or "" when there are.
    """

    stats: dict[str, float]
    predictions: dict[str, float] = field(default_factory=dict)
    recommended: str | None = None
    tolerance: float = 0.01
    calibration: dict[str, Any] = field(default_factory=dict)
    outside: list[str] = field(default_factory=list)
    note: str = ""

    def to_markdown(self) -> str:
        cal = self.calibration
        lines = []
        if cal.get("model"):
            lines += [
                f"Calibration: {cal['model']} ({cal.get('family') or 'family not recorded'}, context "
                f"{cal.get('context')}, {cal.get('stride')} steps per token, {cal.get('merging', 'plain')} merging); "
                f"held-out Spearman rho {heldout_rho(cal):+.2f} (leave one dataset out, pooled).",
                "",
            ]
        lines += ["| statistic | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" for k, v in self.stats.items()]
        if self.note:
            lines += ["", self.note]
        if self.predictions:
            lines += [
                "",
                f"Expected WQL change vs unmerged (with `{cal.get('statistic')}`; monotone in the reduction; other "
                "models can react differently):",
                "",
                "| setting | expected WQL change | data within the calibrated range |",
                "| --- | --- | --- |",
            ]
            lines += [
                f"| {s} | {v:+.1%} | {'no: clipped to the measured changes' if s in self.outside else 'yes'} |"
                for s, v in self.predictions.items()
            ]
            if cal.get("merging", "plain") == "safe":
                best = self.recommended or "none"
                lines += ["", f"Most aggressive forecast-safe setting within {self.tolerance:.0%}: {best}"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def recommend(
    predictions: Mapping[str, float],
    settings: Mapping[str, Mapping[str, Any]],
    tolerance: float,
    exclude: Sequence[str] = (),
) -> str | None:
    """The setting with the largest token reduction whose predicted WQL change is within ``tolerance`` (ties: the
    smaller predicted change), leaving out ``exclude`` (settings whose calibration does not cover the data); None
    if no setting is."""
    ok = [label for label, v in predictions.items() if v <= tolerance and label not in exclude]
    return max(ok, key=lambda lb: (settings[lb]["reduction"], -predictions[lb]), default=None)


def heldout_rho(calibration: Mapping[str, Any]) -> float:
    """The one correlation figure of a calibration: the Spearman rho of its held-out (leave one dataset out)
    predictions, pooled over its settings."""
    pooled = calibration.get("heldout_pooled") or {}
    return float(pooled.get("rho", float("nan")))


def precheck(
    data: Any,
    *,
    model: Any = None,
    family: str | None = None,
    context: int | None = None,
    stride: int | None = None,
    tolerance: float = 0.01,
    calibration: str | Path | Mapping[str, Any] | None = None,
) -> PrecheckResult:
    """Spectral statistics of ``data`` and the expected accuracy change of each calibrated merge setting.

    Args:
        data: a 1-D series, an (N, T) array, a list of series, or a dataset of the evaluation harness
            (``mergeplug.eval.load_dataset("m3_monthly")``: its windows' histories).
        model: the model merging would run on (a pipeline or model :func:`mergeplug.apply` takes): its family picks
            the calibration and its context, stride and token floor are used (:func:`model_geometry`).
        family: a family name (``"chronos-bolt"``, ``"patchtst"``) when there is no model object at hand.
        context / stride: context length and time steps per token of the target model (default: the model's, else
            those of the calibration's model).
        tolerance: allowed relative WQL change for the recommendation (0.01 = 1%).
        calibration: a path or dict from ``mergeplug-eval precheck-validate`` (default: the shipped calibration of
            the model's family; without a model or family, the PatchTST one, and the result says which).

    Returns:
        A :class:`PrecheckResult`; ``print(result)`` shows the statistics and the predictions. When no calibration
        exists for the model's family, or its series are too short to merge, ``predictions`` is empty and
        ``note`` says why.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
        raise ValueError(f"tolerance must be a number >= 0 (a relative WQL change, 0.01 = 1%), got {tolerance!r}")
    for name, value in (("context", context), ("stride", stride)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an int >= 1 (time steps), got {value!r}")
    geometry = model_geometry(model) if model is not None else {}
    family = family or geometry.get("family")
    if calibration is None and family is not None and family not in SHIPPED:
        context = context or geometry.get("context") or 512
        stride = stride or geometry.get("stride") or 1
        stats = spectral_stats(data, context=context, stride=stride)
        note = (
            f"No calibration exists for {family} models (shipped: {', '.join(sorted(SHIPPED))}), so there is no "
            "prediction: another family's would not transfer. Calibrate one with `mergeplug-eval precheck-validate "
            "--model <your model> --merging safe` and pass it as calibration=, or measure with `mergeplug.tune`."
        )
        return PrecheckResult(stats, {}, None, tolerance, {"family": family}, [], note)
    if isinstance(calibration, Mapping):
        cal = dict(calibration)
    else:
        cal = load_calibration(calibration, family if calibration is None else None)
    missing = [k for k in ("settings", "statistic") if k not in cal]
    if missing or not isinstance(cal.get("settings"), Mapping):
        raise ValueError(
            f"the calibration lacks {', '.join(missing) or 'a settings table'}: pass a file or dict written by "
            "`mergeplug-eval precheck-validate` (precheck_calibration.json), or leave calibration= out for the "
            "shipped one"
        )
    context = context or geometry.get("context") or int(cal.get("context", 512))
    stride = stride or geometry.get("stride") or int(cal.get("stride", 8))
    settings = cal["settings"]
    reductions = sorted({float(s["reduction"]) for s in settings.values()})
    stats = spectral_stats(data, context=context, stride=stride, reductions=reductions)
    info = {k: v for k, v in cal.items() if k != "settings"}
    if not all(math.isfinite(v) for v in stats.values()):
        note = (
            "The series is constant (or has no variation left after removing a line), so it has no spectrum to "
            "predict from: merging joins identical tokens and is not expected to change the forecast much, but the "
            "pre-check cannot say how much. Check with the evaluation harness (`mergeplug-eval run` or "
            "`mergeplug.tune`)."
        )
        return PrecheckResult(stats, {}, None, tolerance, info, [], note)
    floor = geometry.get("min_tokens", cal.get("min_tokens", 0)) if cal.get("merging") == "safe" else 0
    extra = geometry.get("extra_tokens", cal.get("extra_tokens")) if geometry else cal.get("extra_tokens")
    if floor and extra is not None:
        longest = _longest_tokens(data, context, stride, extra)
        if longest <= floor:
            note = (
                f"Nothing will merge: the longest series gives {longest} tokens ({stride} steps per token, context "
                f"{context}), and forecast-safe merging never goes below min_tokens={floor}; the model runs unmerged."
            )
            return PrecheckResult(stats, {}, None, tolerance, info, [], note)
    preds: dict[str, float] = {}
    outside: list[str] = []
    for label, s in settings.items():
        value = stat_value(stats, cal["statistic"], float(s["reduction"]))
        pred = float(s["intercept"] + s["slope"] * value)
        lo_x, hi_x = s.get("stat_range", (-math.inf, math.inf))
        lo_y, hi_y = s.get("change_range", (-math.inf, math.inf))
        if not lo_x <= value <= hi_x:
            outside.append(label)
        preds[label] = min(max(pred, lo_y), hi_y)  # never beyond what was measured
    by_k: dict[Any, list[str]] = {}
    for label, s in settings.items():
        by_k.setdefault(s.get("k"), []).append(label)
    for labels in by_k.values():  # monotone: for one k, a larger reduction never costs less
        running = -math.inf
        for label in sorted(labels, key=lambda lb: float(settings[lb]["reduction"])):
            running = max(running, preds[label])
            preds[label] = running
    plain = cal.get("merging", "plain") != "safe"
    best = None if plain else recommend(preds, settings, tolerance, exclude=outside)
    notes = []
    if outside:
        notes.append(
            f"The data's `{cal['statistic']}` lies outside the range the calibration measured for "
            f"{len(outside)} of {len(settings)} settings: their predictions are clipped to the measured changes and "
            "none of them is recommended. Measure these settings on your data (`mergeplug.tune`)."
        )
    if plain:
        notes.append(
            "This calibration measured plain merging (safe=false), which the defaults do not run: its predictions "
            "describe that mode, and it recommends nothing."
        )
    if not all("change_range" in s for s in settings.values()):
        notes.append(
            "This calibration has no measured ranges (made by an older mergeplug): predictions are not clipped."
        )
    note = " ".join(notes)
    return PrecheckResult(stats, preds, best, tolerance, info, outside, note)

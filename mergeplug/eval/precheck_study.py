"""Validation of the spectral pre-check: does a statistic of the data predict the accuracy change of merging?

``validate`` measures the relative WQL change (merged vs unmerged) of fixed merge settings with the harness
on the datasets that have a reference model and on variants of them with other spectra (added noise,
smoothing, a lower sampling rate), computes the statistics of :mod:`mergeplug.precheck` on the same contexts,
and scores them:

* descriptive: Spearman rank correlation of each statistic with the measured change, per setting, on all points;
* predictive: leave-one-dataset-out. For each base dataset, its original and all its variants are held out;
  on the other datasets the statistic with the largest mean |rho| over settings is chosen and a robust
  (Theil-Sen) line change ~ statistic is fitted per setting; the held-out points are predicted. Spearman rho (with its
  p-value) and the mean absolute error are computed on the pooled held-out predictions, per setting.

The final calibration (statistic chosen on all datasets, one line per setting, the held-out figures) is
written to ``<out>/precheck_calibration.json``; copy it to ``mergeplug/`` (next to ``precheck.py``) to ship it.

``confirm`` is the out-of-sample check of a finished calibration: it measures the same merge settings on
dataset variants the calibration never saw (other noise / smoothing / aggregation levels, fixed before
measuring), predicts each with :func:`mergeplug.precheck` and the frozen calibration, and reports Spearman rho,
the error and how often the recommended setting really stayed within the tolerance.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..precheck import (
    PER_REDUCTION,
    STATISTICS,
    load_calibration,
    model_geometry,
    precheck,
    recommend,
    spectral_stats,
    stat_value,
)
from .data import EvalDataset, load_dataset, variant
from .models import load_model
from .precheck_report import _confirm_report, _plot, _plot_confirm, _report
from .report import load_rows
from .run import run

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_BASES",
    "DEFAULT_VARIANTS",
    "FRESH_VARIANTS",
    "DEFAULT_MERGES",
    "validate",
    "confirm",
    "parse_variant",
]

# one model for every dataset, so that differences between datasets come from the data, not from how fragile
# each dataset's own model happens to be (with the per-dataset models, mergeplug:patchtst, they dominate)
DEFAULT_MODEL = "mergeplug:patchtst_global"
DEFAULT_BASES = (
    "electricity_hourly",
    "sf_traffic_hourly",
    "solar_hourly",
    "wind_hourly",
    "traffic_volume_hourly",
    "bikesharing_hourly",
    "taylor_30min",
    "m4_hourly_sample",
)
# noise adds high-frequency power, a 4-step average removes the fastest part, a 48-step (two-day) average removes
# the daily cycle too (nearly all power below the merge cut-offs), aggregation halves the sampling rate
DEFAULT_VARIANTS = (("noise", 0.1), ("noise", 0.3), ("smooth", 4), ("smooth", 48), ("aggregate", 2))
# the out-of-sample check: levels between and beyond the calibration's (fixed before they were measured), of the
# same eight series, noise drawn with another seed
CONFIRM_SEED = 1000
FRESH_VARIANTS = (("noise", 0.2), ("smooth", 12), ("aggregate", 3))
DEFAULT_MERGES = ("k=1,reduction=0.25", "k=1,reduction=0.5", "k=1,reduction=0.75", "k=global,reduction=0.75")


def parse_variant(text: str) -> tuple[str, float]:
    """``"noise0.2"`` -> ``("noise", 0.2)``; ``"smooth12"`` -> ``("smooth", 12.0)``."""
    m = re.fullmatch(r"([a-z]+)([0-9.]+)", text.strip())
    if m is None:
        raise ValueError(f"a variant is a kind and a level, e.g. noise0.2, smooth12 or aggregate3; got {text!r}")
    return m.group(1), float(m.group(2))


def _reduction(label: str) -> float:
    m = re.search(r"reduction=([0-9.]+)", label)
    if m is None:
        raise ValueError(f"precheck validation needs merge settings given as reduction=...; got {label!r}")
    return float(m.group(1))


def _k(label: str) -> int | None:
    m = re.search(r"k=([a-z0-9]+)", label)
    return None if m is None or m.group(1) in ("global", "none") else int(m.group(1))


def _spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan"), float("nan")
    res = spearmanr(x[ok], y[ok])
    return float(res.statistic), float(res.pvalue)


def _stat_names(reductions: Sequence[float]) -> list[str]:
    return [s for s in STATISTICS if s not in PER_REDUCTION] + list(PER_REDUCTION)


def _choose(points: list[dict[str, Any]], settings: list[str], names: list[str]) -> tuple[str, float]:
    """The statistic with the largest mean |Spearman rho| over settings on ``points``."""
    best, best_score = names[0], -1.0
    for name in names:
        rhos = []
        for s in settings:
            pts = [p for p in points if p["setting"] == s]
            rho, _ = _spearman([stat_value(p["stats"], name, p["reduction"]) for p in pts], [p["change"] for p in pts])
            rhos.append(abs(rho) if np.isfinite(rho) else 0.0)
        score = float(np.mean(rhos))
        if score > best_score:
            best, best_score = name, score
    return best, best_score


def _score_predictions(
    points: list[dict[str, Any]], settings: list[str]
) -> tuple[dict[str, dict[str, float]], tuple[float, float]]:
    """Per setting: Spearman rho (and p) of ``predicted`` vs measured ``change``, their MAE and the number of
    points; and the pooled (rho, p) over all settings."""
    per_setting = {}
    for s in settings:
        pts = [p for p in points if p["setting"] == s]
        rho, pval = _spearman([p["predicted"] for p in pts], [p["change"] for p in pts])
        mae = float(np.mean([abs(p["predicted"] - p["change"]) for p in pts])) if pts else float("nan")
        per_setting[s] = {"rho": rho, "p": pval, "mae": mae, "n": len(pts)}
    return per_setting, _spearman([p["predicted"] for p in points], [p["change"] for p in points])


def _fit(points: list[dict[str, Any]], name: str) -> tuple[float, float]:
    """Theil-Sen line change ~ statistic (robust: one fragile model must not set the slope for all)."""
    from scipy.stats import theilslopes

    x = np.array([stat_value(p["stats"], name, p["reduction"]) for p in points])
    y = np.array([p["change"] for p in points])
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return 0.0, float(np.median(y[ok])) if ok.any() else 0.0
    res = theilslopes(y[ok], x[ok])
    return float(res.slope), float(res.intercept)


def calibrated_ranges(points: list[dict[str, Any]], name: str) -> dict[str, list[float]]:
    """The range of the statistic (``stat_range``) and of the measured WQL change (``change_range``) over the points
    of one setting: :func:`mergeplug.precheck.precheck` never predicts outside ``change_range`` and says when the
    data's statistic lies outside ``stat_range``."""
    x = np.array([stat_value(p["stats"], name, p["reduction"]) for p in points], dtype=float)
    y = np.array([p["change"] for p in points], dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if not len(x) or not len(y):
        return {}
    return {"stat_range": [float(x.min()), float(x.max())], "change_range": [float(y.min()), float(y.max())]}


def validate(
    out: str | Path = "benchmarks/precheck",
    *,
    model: str = DEFAULT_MODEL,
    bases: Sequence[str] = DEFAULT_BASES,
    variants: Sequence[tuple[str, float]] = DEFAULT_VARIANTS,
    merges: Sequence[str] = DEFAULT_MERGES,
    context: int = 512,
    stride: int = 8,
    progress: bool = True,
    merging: str = "safe",
) -> dict[str, Any]:
    """Measure, score and calibrate the pre-check; writes ``report.md``, a plot and the calibration into ``out``.

    The harness results go to ``<out>/eval`` (a rerun resumes). ``merging``: ``"safe"`` measures the merge settings
    with the forecast-safe defaults (what users run and the shipped calibrations describe), ``"plain"`` with
    ``safe=false`` (the paper's merging). Returns the calibration dict.
    """
    if merging not in ("plain", "safe"):
        raise ValueError(f"merging must be 'plain' or 'safe', got {merging!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    datasets: list[EvalDataset] = []
    for b in bases:
        ds = load_dataset(b)
        datasets += [ds] + [variant(ds, kind, level) for kind, level in variants]
    if merging == "plain":  # the paper's merging: the forecast-safe defaults off
        merges = [m if "safe=" in m else f"{m},safe=false" for m in merges]
    run(model, datasets, list(merges), out=out / "eval", reps=1, timing_windows=8, cost_windows=0, progress=progress,
        min_time=0.0, time_budget=0.0)  # fmt: skip
    rows = load_rows(out / "eval")
    by = {(r["dataset"], r["setting"]): r for r in rows}
    reductions = sorted({_reduction(m) for m in merges})
    settings = [m.replace(" ", "") for m in merges]
    names = _stat_names(reductions)
    points: list[dict[str, Any]] = []
    stats_by_ds: dict[str, dict[str, float]] = {}
    for ds in datasets:
        stats_by_ds[ds.name] = spectral_stats(ds, context=context, stride=stride, reductions=reductions)
        for s in settings:
            r = by.get((ds.name, s))
            if r is None:
                continue
            points.append(
                {
                    "dataset": ds.name,
                    "base": ds.base or ds.name,
                    "setting": s,
                    "reduction": _reduction(s),
                    "change": r["WQL_change"],
                    "stats": stats_by_ds[ds.name],
                }
            )
    # descriptive: every statistic vs the measured change, per setting
    descriptive = {
        name: {
            s: _spearman(
                [stat_value(p["stats"], name, p["reduction"]) for p in points if p["setting"] == s],
                [p["change"] for p in points if p["setting"] == s],
            )
            for s in settings
        }
        for name in names
    }
    # predictive: leave one base dataset (with its variants) out
    heldout: list[dict[str, Any]] = []
    folds = []
    for b in bases:
        train = [p for p in points if p["base"] != b]
        test = [p for p in points if p["base"] == b]
        name, score = _choose(train, settings, names)
        folds.append({"held_out": b, "statistic": name, "train_mean_abs_rho": score})
        for s in settings:
            slope, intercept = _fit([p for p in train if p["setting"] == s], name)
            for p in test:
                if p["setting"] == s:
                    pred = intercept + slope * stat_value(p["stats"], name, p["reduction"])
                    heldout.append({**p, "predicted": pred, "statistic": name})
    per_setting, (pooled_rho, pooled_p) = _score_predictions(heldout, settings)
    # final calibration on all datasets
    name, _ = _choose(points, settings, names)
    # within one dataset (one model): do its variants rank as the statistic says?
    within = {}
    for s in settings:
        rhos = []
        for b in bases:
            pts = [p for p in points if p["setting"] == s and p["base"] == b]
            rho, _ = _spearman([stat_value(p["stats"], name, p["reduction"]) for p in pts], [p["change"] for p in pts])
            if np.isfinite(rho):
                rhos.append(rho)
        within[s] = float(np.mean(rhos)) if rhos else float("nan")
    calibration = {
        "model": model,
        "context": context,
        "stride": stride,
        "statistic": name,
        "target": "relative WQL change (merged / unmerged - 1)",
        "points": len(points),
        "datasets": [d.name for d in datasets],
        "heldout_rho": float(np.nanmean([v["rho"] for v in per_setting.values()])),
        "heldout_per_setting": per_setting,
        "heldout_pooled": {"rho": pooled_rho, "p": pooled_p},
        "within_dataset_rho": within,
        "folds": folds,
        "settings": {},
    }
    calibration["merging"] = merging
    target = load_model(model).target
    if target is not None:  # the family, token floor and extra tokens the pre-check needs for "nothing will merge"
        geometry = model_geometry(target)
        calibration.update(family=geometry["family"], min_tokens=geometry["min_tokens"],
                           extra_tokens=geometry["extra_tokens"])  # fmt: skip
    for s in settings:
        pts = [p for p in points if p["setting"] == s]
        slope, intercept = _fit(pts, name)
        calibration["settings"][s] = {
            "k": _k(s),
            "reduction": _reduction(s),
            "slope": slope,
            "intercept": intercept,
            **calibrated_ranges(pts, name),
        }
    (out / "precheck_calibration.json").write_text(json.dumps(calibration, indent=1) + "\n")
    (out / "report.md").write_text(_report(points, descriptive, folds, per_setting, calibration, settings, names))
    _plot(points, name, settings, out / "precheck_vs_change.png")
    return calibration


def confirm(
    out: str | Path = "benchmarks/precheck-confirm",
    *,
    calibration: str | Path | None = None,
    model: str | None = None,
    bases: Sequence[str] = DEFAULT_BASES,
    variants: Sequence[tuple[str, float]] = FRESH_VARIANTS,
    tolerances: Sequence[float] = (0.01, 0.05),
    progress: bool = True,
) -> dict[str, Any]:
    """Out-of-sample check of a calibration on dataset variants it was not fitted on.

    Args:
        out: output directory (harness results in ``<out>/eval``, resumable; ``confirm.json``, ``report.md``,
            ``predicted_vs_measured.png``).
        calibration: the calibration file (default: the shipped one); it is used frozen, as users get it.
        model: the model to measure (default: the calibration's model).
        bases / variants: the datasets are ``variant(base, kind, level)``; a dataset the calibration saw is
            refused (it would not be out of sample).
        tolerances: the recommendation (most aggressive setting predicted within the tolerance) is checked
            against the measured change for each.

    Returns:
        Per setting: Spearman rho and p-value of predicted vs measured change, the MAE; pooled rho; for each
        tolerance, how many recommendations held.
    """
    cal = load_calibration(calibration)
    model = model or cal["model"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # another noise seed than validate's: noise0.2 must not be 2x the calibration's noise0.1 draw
    datasets = [variant(load_dataset(b), kind, level, seed=CONFIRM_SEED) for b in bases for kind, level in variants]
    seen = sorted(set(cal.get("datasets", [])) & {d.name for d in datasets})
    if seen:
        raise ValueError(
            f"{', '.join(seen)} were used to fit the calibration, so they are not out of sample; "
            "choose other variant levels (e.g. --variants noise0.2 smooth12 aggregate3)"
        )
    settings = list(cal["settings"])
    run(model, datasets, settings, out=out / "eval", reps=1, timing_windows=8, cost_windows=0, progress=progress)
    rows = load_rows(out / "eval")
    by = {(r["dataset"], r["setting"]): r for r in rows}
    points: list[dict[str, Any]] = []
    recommended: dict[str, dict[float, str | None]] = {}
    for ds in datasets:
        pred = precheck(ds, calibration=cal)
        recommended[ds.name] = {t: recommend(pred.predictions, cal["settings"], t) for t in tolerances}
        for s in settings:
            r = by.get((ds.name, s))
            if r is not None:
                points.append(
                    {"dataset": ds.name, "base": ds.base, "setting": s, "reduction": cal["settings"][s]["reduction"],
                     "predicted": pred.predictions[s], "change": r["WQL_change"], "stats": pred.stats}
                )  # fmt: skip
    per_setting, (pooled_rho, pooled_p) = _score_predictions(points, settings)
    recs: dict[str, Any] = {}
    for tol in tolerances:
        held = total = none = 0
        for ds in dict.fromkeys(p["dataset"] for p in points):
            pts = {p["setting"]: p for p in points if p["dataset"] == ds}
            best = recommended[ds][tol]  # precheck's own rule: the most aggressive setting predicted within tol
            if best is None or best not in pts:
                none += 1
                continue
            total += 1
            held += pts[best]["change"] <= tol
        recs[f"{tol:g}"] = {"recommended": total, "held": held, "none_recommended": none}
    result = {
        "model": model,
        "calibration": {k: cal.get(k) for k in ("model", "statistic", "context", "stride", "points")},
        "datasets": [d.name for d in datasets],
        "points": len(points),
        "per_setting": per_setting,
        "pooled": {"rho": pooled_rho, "p": pooled_p},
        "recommendations": recs,
    }
    (out / "confirm.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "report.md").write_text(_confirm_report(result, points, settings))
    _plot_confirm(points, settings, out / "predicted_vs_measured.png")
    return result

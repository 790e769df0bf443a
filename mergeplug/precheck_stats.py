"""The spectral statistics of the pre-check (:func:`mergeplug.precheck.precheck`): per-window spectra of the
contexts a model would read, and the statistics that predict what merging costs on them."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["STATISTICS", "PER_REDUCTION", "cutoff", "window_stats", "spectral_stats"]

STATISTICS = ("entropy", "flatness", "centroid", "rolloff", "lag1", "high_share", "predictable_high")
PER_REDUCTION = ("high_share", "predictable_high")  # statistics that depend on the merge cut-off


def cutoff(stride: int, reduction: float) -> float:
    """Highest frequency (cycles / step) a token still resolves after removing ``reduction`` of the tokens."""
    if stride < 1:
        raise ValueError(f"stride (time steps per token) must be >= 1, got {stride}")
    if not 0.0 <= reduction < 1.0:
        raise ValueError(f"reduction must be in [0, 1), got {reduction}")
    return (1.0 - reduction) / (2.0 * stride)


def _fill(x: np.ndarray) -> np.ndarray:
    """Linear interpolation of NaNs along the last axis (rows without any value stay NaN)."""
    x = np.array(x, dtype=np.float64)
    bad = ~np.isfinite(x)
    if not bad.any():
        return x
    idx = np.arange(x.shape[-1])
    for row in np.flatnonzero(bad.any(axis=-1)):
        ok = ~bad[row]
        if ok.any():
            x[row] = np.interp(idx, idx[ok], x[row, ok])
    return x


def window_stats(windows: np.ndarray, cutoffs: Sequence[float] = ()) -> dict[str, np.ndarray]:
    """Spectral statistics of each row of ``windows``.

    Args:
        windows: (N, L) context windows, L >= 8 (NaN = missing).
        cutoffs: frequencies f_c (cycles / step) for ``high_share@f_c``.

    Returns:
        ``{name: (N,) array}`` for every name in :data:`STATISTICS` except those of :data:`PER_REDUCTION`, plus
        ``high_share@<f_c>`` and ``predictable_high@<f_c>`` per cutoff; NaN for rows that are constant or empty.
    """
    x = _fill(np.atleast_2d(windows))
    n, length = x.shape
    if length < 8:
        raise ValueError(f"windows need at least 8 points for a spectrum, got {length}")
    t = np.arange(length, dtype=np.float64)
    tc = t - t.mean()
    slope = (x - x.mean(axis=1, keepdims=True)) @ tc / (tc @ tc)
    resid = x - x.mean(axis=1, keepdims=True) - slope[:, None] * tc[None, :]
    sd = resid.std(axis=1)
    valid = np.isfinite(sd) & (sd > 1e-12 * np.maximum(np.abs(x).max(axis=1, initial=0.0), 1.0))
    z = np.where(valid[:, None], resid / np.where(valid, sd, 1.0)[:, None], 0.0)
    power = np.abs(np.fft.rfft(z * np.hanning(length)[None, :], axis=1)) ** 2
    power, freq = power[:, 1:], np.fft.rfftfreq(length)[1:]
    total = power.sum(axis=1, keepdims=True)
    p = power / np.where(total > 0, total, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(np.where(p > 0, p * np.log(p), 0.0)).sum(axis=1) / math.log(p.shape[1])
        flatness = np.exp(np.log(power + 1e-300).mean(axis=1)) / power.mean(axis=1)
    cum = np.cumsum(p, axis=1)
    out = {
        "entropy": entropy,
        "flatness": flatness,
        "centroid": p @ freq,
        "rolloff": freq[np.minimum((cum < 0.85).sum(axis=1), len(freq) - 1)],
        "lag1": (z[:, 1:] * z[:, :-1]).sum(axis=1) / np.maximum((z * z).sum(axis=1), 1e-300),
    }
    for fc in cutoffs:
        out[f"high_share@{fc:.6g}"] = share = p[:, freq > fc].sum(axis=1)
        out[f"predictable_high@{fc:.6g}"] = share * np.clip(out["lag1"], 0.0, 1.0)
    return {k: np.where(valid, v, np.nan) for k, v in out.items()}


def _contexts(data: Any, context: int) -> np.ndarray:
    """(N, context) windows from a dataset (anything with ``entries``, ``windows`` and ``prediction_length``, e.g.
    the harness' ``EvalDataset``), a 1-D / 2-D array or a list of series."""
    if isinstance(data, str):
        raise TypeError(
            f"precheck: {data!r} is a name; load the dataset first: "
            f"mergeplug.precheck(mergeplug.eval.load_dataset({data!r})) (or run mergeplug-eval precheck)"
        )
    if all(hasattr(data, a) for a in ("entries", "windows", "prediction_length")):
        rows = []
        for e in data.entries:
            x = np.asarray(e["target"], dtype=np.float64)
            for w in range(data.windows):  # the history before each test window, as the harness cuts it
                end = len(x) - data.prediction_length * (data.windows - w)
                rows.append(x[max(0, end - context) : end])
    elif isinstance(data, np.ndarray) and data.ndim == 2:
        rows = list(data[:, -context:].astype(np.float64))
    elif isinstance(data, np.ndarray) and data.ndim == 1:
        rows = [data[-context:].astype(np.float64)]
    elif isinstance(data, Sequence) and len(data) and not np.isscalar(data[0]):
        rows = [np.asarray(s, dtype=np.float64)[-context:] for s in data]
    elif isinstance(data, Sequence):
        rows = [np.asarray(data, dtype=np.float64)[-context:]]
    else:
        raise TypeError(f"precheck: unsupported data of type {type(data).__name__}; give a series, an array of "
                        "series, a list of series or a dataset (mergeplug.eval.load_dataset)")  # fmt: skip
    rows = [r for r in rows if np.isfinite(r).sum() >= 8]
    if not rows:
        raise ValueError("precheck: no series has 8 or more observed values; the spectrum needs a longer context")
    length = min(context, max(len(r) for r in rows))
    out = np.full((len(rows), length), np.nan)
    for i, r in enumerate(rows):  # shorter series are left-padded with their first value
        r = r[-length:]
        out[i, length - len(r) :] = r
        out[i, : length - len(r)] = r[np.isfinite(r)][0]
    return out


def spectral_stats(
    data: Any, *, context: int = 512, stride: int = 8, reductions: Sequence[float] = (0.25, 0.5, 0.75)
) -> dict[str, float]:
    """Median spectral statistics of ``data`` (see the module docstring); ``high_share@r<reduction>`` and
    ``predictable_high@r<reduction>`` per reduction.

    ``data``: a 1-D series, an (N, T) array, a list of series, a registered dataset name or an ``EvalDataset``.
    """
    cut = {r: cutoff(stride, r) for r in reductions}
    stats = window_stats(_contexts(data, context), list(cut.values()))
    with warnings.catch_warnings():  # constant windows have no spectrum: NaN, which precheck() explains
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {k: float(np.nanmedian(stats[k])) for k in STATISTICS if k not in PER_REDUCTION}
        for r, fc in cut.items():
            for k in PER_REDUCTION:
                out[f"{k}@r{r:g}"] = float(np.nanmedian(stats[f"{k}@{fc:.6g}"]))
    return out


# ------------------------------------------------------------------------------------------------- predicting
